"""GPU benchmark: MLP step at batch 128, CNN step, ``tp.function`` replay, NCCL all-reduce.

Not a test. On a GPU machine with the ``gpu`` extra, one command (well under 8 minutes)::

    python -m pytest tests/test_gpu.py -q && python benchmarks/gpu_bench.py --json gpu.json

(``mpiexec -n N python benchmarks/gpu_bench.py`` measures NCCL across N GPUs, one per rank.)
Times are medians of interleaved rounds, each ended by a device synchronize; the CPU figure of
the same step is measured in the same run for the ratio. Without CuPy or a GPU it prints why
and exits 0, writing ``{"skipped": reason}`` to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time


def _timed(fn, sync, steps: int, rounds: int) -> list[float]:
    fn()
    sync()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        out.append((time.perf_counter() - t0) / steps)
    return out


def _case(tp, where, make, x_h, y_h):
    from tapeflow import optimizers
    from tapeflow.nn import functional as F

    from device_cpu_cost import _step  # (this folder: the same training step)

    model = make().to(where)
    with tp.device(where):
        x, y = tp.constant(x_h), tp.constant(y_h)
    return _step(tp, optimizers, F, model, x, y,
                 optimizers.SGD(learning_rate=0.01, momentum=0.9))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    import numpy as np

    import tapeflow as tp
    from tapeflow._backend import cupy_or_none

    cp = cupy_or_none()
    if cp is None:
        reason = "no GPU: needs CuPy (pip install 'tapeflow[gpu]') and a CUDA device"
        print(f"gpu_bench: skipped ({reason})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"skipped": reason}, f)
        return {"skipped": reason}
    props = cp.cuda.runtime.getDeviceProperties(0)
    res: dict = {"device": props["name"].decode(), "cupy": cp.__version__,
                 "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "numpy": np.__version__, "python": sys.version.split()[0],
                 "machine": platform.machine(), "rounds": args.rounds, "rows": []}
    sync = cp.cuda.Device().synchronize
    rng = np.random.default_rng(0)
    cases = [
        ("mlp 784-512-512-10 b128", lambda: tp.nn.mlp([784, 512, 512, 10], seed=0),
         rng.random((128, 784), dtype=np.float32), 50),
        ("cnn mnist b128", lambda: tp.nn.mnist_cnn(seed=0),
         rng.random((128, 28, 28, 1), dtype=np.float32), 5),
    ]
    for name, make, x_h, steps in cases:
        y_h = rng.integers(0, 10, len(x_h))
        gpu = _timed(_case(tp, "/GPU:0", make, x_h, y_h), sync, steps, args.rounds)
        cpu = _timed(_case(tp, "cpu", make, x_h, y_h), lambda: None, max(1, steps // 10), 3)
        row = {"case": name, "gpu_ms": statistics.median(gpu) * 1e3,
               "gpu_spread_ms": (max(gpu) - min(gpu)) * 1e3,
               "cpu_ms": statistics.median(cpu) * 1e3}
        row["speedup"] = row["cpu_ms"] / row["gpu_ms"]
        res["rows"].append(row)
        print(f"{name:>26}: GPU {row['gpu_ms']:8.3f} ms  CPU {row['cpu_ms']:8.3f} ms  "
              f"x{row['speedup']:.1f}")
    # tp.function replay of the MLP step (the plan is NumPy's today: report what happens)
    try:
        step = _case(tp, "/GPU:0", cases[0][1], cases[0][2], rng.integers(0, 10, 128))
        fn = tp.function(step)
        t = _timed(fn, sync, 50, args.rounds)
        res["rows"].append({"case": "tp.function replay mlp b128",
                            "gpu_ms": statistics.median(t) * 1e3})
        print(f"{'tp.function replay mlp b128':>26}: GPU {statistics.median(t) * 1e3:8.3f} ms")
    except Exception as exc:  # noqa: BLE001 (a benchmark reports, it does not fail)
        res["rows"].append({"case": "tp.function replay mlp b128",
                            "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"tp.function replay on GPU failed: {type(exc).__name__}: {exc}"[:300])
    res["nccl"] = _nccl_bandwidth(cp, args.rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


def _nccl_bandwidth(cp, rounds: int) -> dict:
    """Bus bandwidth of NCCL all-reduce (float32) through the reducer, 1 MiB to 64 MiB."""
    import numpy as np

    from tapeflow.distributed.base import Layout
    from tapeflow.distributed.nccl import NCCLCommunicator

    comm = NCCLCommunicator()
    out = {"ranks": comm.size, "rows": []}
    try:
        for mib in (1, 4, 16, 64):
            n = mib * (1 << 20) // 4
            reducer = comm.reducer(Layout(buckets=((np.dtype(np.float32), n),), crc=mib), "sum")

            def once():
                bufs = reducer.start()
                bufs[0].fill(1.0)
                reducer.ready(0)
                reducer.finish()
            times = _timed(once, cp.cuda.Device().synchronize, 10, rounds)
            t = statistics.median(times)
            busbw = 2 * (comm.size - 1) / max(comm.size, 1) * n * 4 / t / 1e9
            out["rows"].append({"mib": mib, "ms": t * 1e3, "bus_gb_s": busbw})
            if comm.rank == 0:
                print(f"NCCL all-reduce {mib:3d} MiB on {comm.size} rank(s): {t * 1e3:8.3f} ms "
                      f"(bus {busbw:.1f} GB/s)")
    finally:
        comm.close()
    return out


if __name__ == "__main__":
    main()
