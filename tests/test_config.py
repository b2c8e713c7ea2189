"""tp.config: the tf.config calls TensorFlow programs make at start-up."""
from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info

import tapeflow as tp


def test_devices_list_the_cpu_and_no_gpu_here():
    cpus = tp.config.list_physical_devices("CPU")
    assert [(d.name, d.device_type) for d in cpus] == [("/physical_device:CPU:0", "CPU")]
    if tp.config.list_physical_devices("GPU") == []:  # (a machine with CuPy + CUDA lists them)
        assert tp.config.list_logical_devices() == [("/device:CPU:0", "CPU")]
    assert tp.config.experimental.list_physical_devices("gpu") == \
        tp.config.list_physical_devices("GPU")


def test_run_functions_eagerly_runs_the_python_every_call_until_switched_off():
    calls = []

    @tp.function
    def f(x):
        calls.append(1)
        return x * 2.0
    try:
        tp.config.run_functions_eagerly(True)
        assert tp.config.functions_run_eagerly()
        assert [float(f(tp.constant(1.0))) for _ in range(2)] == [2.0, 2.0]
        assert len(calls) == 2 and f.experimental_get_tracing_count() == 0
    finally:
        tp.config.run_functions_eagerly(False)
    f(tp.constant(1.0))
    f(tp.constant(1.0))
    assert len(calls) == 3 and f.experimental_get_tracing_count() == 1


def test_intra_op_threads_limit_blas_and_memory_growth_is_read_back():
    before = tp.config.threading.get_intra_op_parallelism_threads()
    try:
        tp.config.threading.set_intra_op_parallelism_threads(1)
        assert tp.config.threading.get_intra_op_parallelism_threads() == 1
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
    finally:
        tp.config.threading.set_intra_op_parallelism_threads(before)
    tp.config.threading.set_inter_op_parallelism_threads(2)
    assert tp.config.threading.get_inter_op_parallelism_threads() == 2
    with pytest.raises(ValueError, match="not a GPU"):
        tp.config.experimental.set_memory_growth(tp.config.list_physical_devices("CPU")[0],
                                                 True)
