"""Faults end to end: each test launches a real multi-rank job with mpiexec (argv list, no shell).

Safe by default, from ``dist.init()``: an exception, ``sys.exit(n)``, a rank finishing early, a
killed rank, a stalled rank, uneven step counts and a termination signal while stuck each end
the whole job quickly with a non-zero status and a message naming the rank. Time bounds are
generous (a loaded CI machine), and are what the issue promises: 10 s, or the stall timeout.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tapeflow.distributed import faults
from tapeflow.distributed.faults import stall_settings
from tapeflow.distributed.launcher import mpiexec_argv
from tapeflow.distributed.local import LocalCommunicator


@pytest.fixture
def run_job(mpiexec, job_env):
    """Run a Python script on ``np`` ranks; returns (CompletedProcess, seconds)."""
    def run(script: str, env: dict[str, str] | None = None, timeout: float = 60,
            np: int = 2) -> tuple[subprocess.CompletedProcess, float]:
        argv = mpiexec_argv(np, [sys.executable, "-c", textwrap.dedent(script)],
                            mpiexec=mpiexec, oversubscribe=True)
        t0 = time.monotonic()
        job = subprocess.run(argv, env={**job_env, **(env or {})}, capture_output=True,
                             text=True, timeout=timeout)
        return job, time.monotonic() - t0
    return run


# The README's Horovod-style loop; FAULT decides what rank 1 does at step 2.
_LOOP = """
    import os, sys, time, signal, threading
    import numpy as np
    import tapeflow as tp
    from tapeflow import distributed as dist
    from tapeflow import optimizers

    FAULT = {fault!r}
    comm = dist.init()
    model = tp.nn.mlp([20, 16, 4], seed=comm.rank)
    dist.broadcast_variables(model.variables, root=0)
    opt = optimizers.SGD(learning_rate=0.1)
    x = tp.constant(np.ones((8, 20), np.float32) * (comm.rank + 1))
    steps = 6 - (1 if FAULT == "one step fewer" and comm.rank == 1 else 0)
    for step in range(steps):
        if comm.rank == 1 and step == 2:
            if FAULT == "raise":
                raise RuntimeError("disk full on purpose")
            if FAULT == "thread":
                t = threading.Thread(target=lambda: 1 / 0, name="loader")
                t.start(); t.join(); time.sleep(30)
            if FAULT == "exit 3":
                sys.exit(3)
            if FAULT == "leave early":
                break
            if FAULT == "sigkill":
                open(os.environ["PID_FILE"], "w").write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            if FAULT == "sleep":
                time.sleep(120)
        with dist.DistributedGradientTape(tp.GradientTape()) as tape:
            loss = tp.reduce_mean(model(x) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
    if FAULT == "one step fewer":
        dist.allreduce(np.array([1.0]), op="sum")   # rank 1 evaluates; rank 0 still steps
    print(f"rank {{comm.rank}} finished", flush=True)
"""


def _loop(fault: str) -> str:
    return _LOOP.format(fault=fault)


def test_a_clean_job_exits_zero(run_job):
    job, _ = run_job(_loop("none"))
    assert job.returncode == 0, job.stderr
    assert "rank 0 finished" in job.stdout and "rank 1 finished" in job.stdout
    assert "tapeflow:" not in job.stderr


def test_exception_on_one_rank_ends_the_job(run_job):
    job, seconds = run_job(_loop("raise"))
    assert job.returncode != 0
    assert seconds < 10
    assert "tapeflow: rank 1/2 failed: RuntimeError: disk full on purpose" in job.stderr
    assert "rank 0 finished" not in job.stdout


def test_exception_on_one_rank_before_init_ends_the_job(run_job):
    # mpiexec alone leaves rank 0 waiting in MPI start-up for ever (checked: a hang)
    job, seconds = run_job("""
        import os
        import tapeflow.distributed as dist
        if os.environ["PMI_RANK"] == "1":
            raise FileNotFoundError("shard1.npy on purpose")
        comm = dist.init()
        comm.barrier()
        print("rank 0 finished", flush=True)
    """, timeout=120)
    assert job.returncode != 0
    assert seconds < 10
    assert ("tapeflow: rank 1/2 failed before dist.init(): FileNotFoundError: shard1.npy on "
            "purpose") in job.stderr
    assert "rank 0 finished" not in job.stdout


def test_exception_in_a_thread_ends_the_job(run_job):
    job, seconds = run_job(_loop("thread"))
    assert job.returncode != 0
    assert seconds < 10
    assert "tapeflow: rank 1/2 failed in thread loader: ZeroDivisionError" in job.stderr


def test_sys_exit_with_a_status_ends_the_job(run_job):
    job, seconds = run_job(_loop("exit 3"))
    assert job.returncode == 3
    assert seconds < 10
    assert "tapeflow: rank 1/2 exited with status 3" in job.stderr


def test_a_rank_leaving_its_loop_early_ends_the_job(run_job):
    job, seconds = run_job(_loop("leave early"))
    assert job.returncode != 0
    assert seconds < 10
    assert "tapeflow: rank 1/2 finished while another rank still calls a collective" in job.stderr
    assert "rank 0 called reduce_gradients" in job.stderr


def test_a_killed_rank_ends_the_job(run_job, tmp_path):
    pid_file = tmp_path / "pid"
    job, seconds = run_job(_loop("sigkill"), env={"PID_FILE": str(pid_file)})
    assert job.returncode != 0
    assert seconds < 10
    # mpiexec speaks for a killed process: it names its PID and the signal
    out = job.stdout + job.stderr
    assert pid_file.read_text() in out and "signal 9" in out


def test_one_step_fewer_is_a_named_mismatch(run_job):
    job, seconds = run_job(_loop("one step fewer"))
    assert job.returncode != 0
    assert seconds < 10
    assert "MismatchError" in job.stderr
    assert "rank 0 called reduce_gradients" in job.stderr and "called allreduce" in job.stderr
    assert "finished" not in job.stdout


def test_a_sleeping_rank_is_reported_then_the_job_ends(run_job):
    job, seconds = run_job(_loop("sleep"), env={"TAPEFLOW_STALL_WARN": "1",
                                                "TAPEFLOW_STALL_TIMEOUT": "3"})
    assert job.returncode != 0
    assert seconds < 20
    assert "tapeflow: rank 0/2 has waited" in job.stderr
    assert "not arrived: rank 1 (computing since reduce_gradients" in job.stderr
    assert "rank 0 ends the job (TAPEFLOW_STALL_TIMEOUT=3 s)" in job.stderr


def test_opting_out_leaves_a_failed_rank_to_the_stall_timeout(run_job):
    job, seconds = run_job(_loop("raise"), env={"TAPEFLOW_ABORT_ON_FAILURE": "0",
                                                "TAPEFLOW_STALL_WARN": "0",
                                                "TAPEFLOW_STALL_TIMEOUT": "3"})
    assert job.returncode != 0
    assert "rank 1/2 failed" not in job.stderr          # no abort on the exception...
    assert "RuntimeError: disk full on purpose" in job.stderr
    assert "ends the job (TAPEFLOW_STALL_TIMEOUT=3 s)" in job.stderr  # ...the watchdog ends it


_STUCK_WITH_A_HANDLER = """
    import os, signal, time
    import numpy as np
    from tapeflow import distributed as dist

    stop = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))  # a trainer's graceful stop
    comm = dist.init()
    open(os.environ["READY"] + str(comm.rank), "w").close()
    if comm.rank == 1:
        while True:          # frozen outside any collective; ignores the stop request
            time.sleep(1)
    dist.barrier()
"""


def test_sigterm_ends_a_job_stuck_in_a_collective(mpiexec, job_env, tmp_path):
    argv = mpiexec_argv(2, [sys.executable, "-c", textwrap.dedent(_STUCK_WITH_A_HANDLER)],
                        mpiexec=mpiexec, oversubscribe=True)
    ready = str(tmp_path / "ready")
    proc = subprocess.Popen(argv, env={**job_env, "READY": ready}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not all(os.path.exists(ready + str(r)) for r in range(2)):
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # mpiexec forwards it to both ranks
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=30)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert seconds < 15
    assert "tapeflow: rank 0/2 received SIGTERM while stuck in barrier" in err


_WAIT_COST = """
    import time
    import numpy as np
    from tapeflow import distributed as dist

    comm = dist.init()
    dist.barrier()
    if comm.rank == 1:
        time.sleep(3)
    cpu0, wall0 = time.process_time(), time.monotonic()
    dist.barrier()
    if comm.rank == 0:
        print(f"cpu {time.process_time() - cpu0:.4f} wall {time.monotonic() - wall0:.4f}")
"""


def test_a_waiting_rank_sleeps_instead_of_spinning(run_job):
    job, _ = run_job(_WAIT_COST)
    assert job.returncode == 0, job.stderr
    cpu, wall = (float(v) for v in job.stdout.split()[1::2])
    assert wall > 2
    # benchmarks/wait_cost.py measures the real figure (well under 5 % of a core); this only
    # catches a wait loop that spins (it would use ~100 %)
    assert cpu / wall < 0.25, (cpu, wall)


_CROSS_NODE_STALL = """
    import time
    import numpy as np
    from tapeflow import distributed as dist

    comm = dist.init("mpi", node_size=2)   # ranks 0,1 and 2,3 act as two nodes
    if comm.rank == 3:
        time.sleep(120)
    dist.allreduce(np.ones(100_000, np.float32), op="sum")  # the shared-memory path
"""


def test_a_stall_across_emulated_nodes_names_the_rank(run_job):
    job, seconds = run_job(_CROSS_NODE_STALL, np=4, env={"TAPEFLOW_STALL_WARN": "1",
                                                         "TAPEFLOW_STALL_TIMEOUT": "4"})
    assert job.returncode != 0
    assert seconds < 30
    assert "not arrived: rank 3 (computing" in job.stderr


# -- in-process: settings and hooks ---------------------------------------------------------------

def test_stall_settings_from_environment(monkeypatch):
    monkeypatch.delenv("TAPEFLOW_STALL_WARN", raising=False)
    monkeypatch.delenv("TAPEFLOW_STALL_TIMEOUT", raising=False)
    assert stall_settings() == (60.0, 600.0)
    monkeypatch.setenv("TAPEFLOW_STALL_WARN", "5")
    monkeypatch.setenv("TAPEFLOW_STALL_TIMEOUT", "0")
    assert stall_settings() == (5.0, 0.0)
    assert stall_settings(2, 7) == (2.0, 7.0)
    monkeypatch.setenv("TAPEFLOW_STALL_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="TAPEFLOW_STALL_TIMEOUT='soon'"):
        stall_settings()
    monkeypatch.setenv("TAPEFLOW_STALL_TIMEOUT", "-1")
    with pytest.raises(ValueError, match=">= 0"):
        stall_settings()


def test_install_is_idempotent_and_uninstall_restores(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: seen.append(args[0]))
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    faults.uninstall()
    original_sys, original_thread, original_exit = sys.excepthook, threading.excepthook, sys.exit
    try:
        faults.install(LocalCommunicator())
        hook = sys.excepthook
        faults.install(LocalCommunicator())
        assert sys.excepthook is hook is not original_sys
        assert threading.excepthook is not original_thread
        # one process: the previous hooks still run, nothing aborts
        sys.excepthook(ValueError, ValueError("x"), None)
        thread = threading.Thread(target=lambda: 1 / 0)
        thread.start()
        thread.join()
        assert seen == [ValueError, ZeroDivisionError]
        with pytest.raises(SystemExit) as exc:
            sys.exit(4)  # the wrapper remembers the status, then exits as usual
        assert exc.value.code == 4 and faults._state["exit_code"] == 4
    finally:
        faults.uninstall()
    assert sys.excepthook is original_sys and threading.excepthook is original_thread
    assert sys.exit is original_exit
    faults.uninstall()  # a second uninstall is a no-op
