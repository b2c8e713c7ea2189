"""mpiexec command lines: exact argv lists, thread budgets, argument checks, and one real run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tapeflow.distributed import launcher
from tapeflow.distributed.launcher import (
    find_mpiexec, mpiexec_argv, run_mpiexec, threads_per_rank,
)


def test_argv_exact_contents():
    argv = mpiexec_argv(2, ["python", "-m", "tapeflow.launch.train"], mpiexec="/opt/mpiexec",
                        cores=8)
    assert argv == ["/opt/mpiexec", "-n", "2", "-bind-to", "core:4",
                    "-genv", "OMP_NUM_THREADS", "4",
                    "-genv", "OPENBLAS_NUM_THREADS", "4",
                    "-genv", "MKL_NUM_THREADS", "4",
                    "python", "-m", "tapeflow.launch.train"]


def test_argv_env_override_extra_and_oversubscribe():
    argv = mpiexec_argv(4, ["app", "--flag value"], mpiexec="mpiexec", cores=2,
                        env={"OMP_NUM_THREADS": 3, "TAPEFLOW_STALL_TIMEOUT": "5"},
                        oversubscribe=True, extra=("-hosts", "a,b"))
    assert argv == ["mpiexec", "-n", "4", "-bind-to", "none",
                    "-genv", "OMP_NUM_THREADS", "3",
                    "-genv", "OPENBLAS_NUM_THREADS", "1",
                    "-genv", "MKL_NUM_THREADS", "1",
                    "-genv", "TAPEFLOW_STALL_TIMEOUT", "5",
                    "-hosts", "a,b", "app", "--flag value"]  # one argv item, never split


@pytest.mark.parametrize("env, bind, expected", [
    ({}, True, ["-bind-to", "core:2"]),                          # the threads each rank runs
    ({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, True,
     ["-bind-to", "core:1"]),
    ({"OPENBLAS_NUM_THREADS": "16"}, True, ["-bind-to", "core:2"]),  # never past cores // np
    ({}, False, []),                                              # placement left to the OS
])
def test_ranks_are_bound_to_their_cores_unless_asked_not_to(env, bind, expected):
    argv = mpiexec_argv(4, ["app"], mpiexec="mpiexec", cores=8, env=env, bind=bind)
    assert argv[3:3 + len(expected)] == expected
    assert ("-bind-to" in argv) == bool(expected)


@pytest.mark.parametrize("np_, cores, expected", [(1, 8, 8), (2, 8, 4), (3, 8, 2), (8, 8, 1),
                                                  (16, 8, 1), (2, 1, 1)])
def test_threads_per_rank(np_, cores, expected):
    assert threads_per_rank(np_, cores) == expected


def test_threads_per_rank_defaults_to_this_machine():
    assert 1 <= threads_per_rank(1) <= (os.cpu_count() or 1)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_invalid_np(bad):
    with pytest.raises(ValueError, match=f"integer >= 1, got {bad!r}"):
        mpiexec_argv(bad, ["python"], mpiexec="mpiexec")
    with pytest.raises(ValueError, match="integer >= 1"):
        threads_per_rank(bad)


def test_oversubscription_needs_consent_and_command_is_required():
    with pytest.raises(ValueError, match="oversubscribe=True"):
        mpiexec_argv(3, ["python"], mpiexec="mpiexec", cores=2)
    with pytest.raises(ValueError, match="command to run is empty"):
        mpiexec_argv(1, [], mpiexec="mpiexec")


def test_find_mpiexec_prefers_the_interpreters_directory(tmp_path, monkeypatch):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert find_mpiexec() == str(fake)
    fake.unlink()
    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install mpich"):
        find_mpiexec()


def test_run_mpiexec_two_ranks(capfd, mpiexec):
    script = ("import os; from mpi4py import MPI; "
              "print(f'hello from rank {MPI.COMM_WORLD.rank} of {MPI.COMM_WORLD.size} "
              "threads={os.environ[\"OMP_NUM_THREADS\"]}', flush=True)")
    code = run_mpiexec(2, [sys.executable, "-c", script], mpiexec=mpiexec, oversubscribe=True,
                       timeout=60)
    out = capfd.readouterr().out
    assert code == 0
    threads = threads_per_rank(2)
    for rank in (0, 1):
        assert f"hello from rank {rank} of 2 threads={threads}" in out
    assert Path(mpiexec).name.startswith("mpiexec")


# --------------------------------------------------------------------------- supervision
_RANK_SCRIPT = """
import os, signal, subprocess, sys, time
rank = os.environ.get("PMI_RANK", "0")
mode = sys.argv[1]
# a grandchild in its own session: what a careless rank leaves behind
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if mode == "stubborn":
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
else:
    def stop(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # the first signal decides
        with open(os.path.join(sys.argv[2], f"stopped-{rank}"), "w") as f:
            f.write(str(signum))
        sys.exit(128 + signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, stop)
# announced only once the handlers are in place: a signal from now on is the test's
with open(os.path.join(sys.argv[2], f"pids-{rank}"), "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_job(tmp_path: Path, mpiexec: str, job_env: dict, mode: str, grace: float):
    """A launcher process running run_mpiexec(2, the script above) in its own process."""
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    driver = (f"import sys; from tapeflow.distributed.launcher import run_mpiexec; "
              f"sys.exit(run_mpiexec(2, [sys.executable, {str(script)!r}, {mode!r}, "
              f"{str(tmp_path)!r}], mpiexec={mpiexec!r}, oversubscribe=True, grace={grace}))")
    proc = subprocess.Popen([sys.executable, "-c", driver], env=job_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pids-*"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the ranks did not start within 60 s"
        time.sleep(0.05)
    time.sleep(1.0)  # let the launcher see its descendants (it looks every 0.2 s) under load
    pids = [int(x) for f in tmp_path.glob("pids-*") for x in f.read_text().split()]
    return proc, pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_to_the_launcher_reaches_every_rank_and_no_process_outlives_it(
        tmp_path, mpiexec, job_env, sig):
    proc, pids = _start_job(tmp_path, mpiexec, job_env, "polite", grace=30)
    assert all(_alive(pid) for pid in pids)
    start = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert time.monotonic() - start < 10
    # both ranks got it first as it was sent (SIGTERM through mpiexec came later), and
    # mpiexec printed no banner
    assert [(tmp_path / f"stopped-{r}").read_text() for r in (0, 1)] == [str(int(sig))] * 2
    assert out == err == "", (out, err)
    time.sleep(0.2)
    assert [pid for pid in pids if _alive(pid)] == []  # ranks and their grandchildren


def test_a_job_that_ignores_the_signal_is_killed_after_the_grace_period(tmp_path, mpiexec,
                                                                        job_env):
    proc, pids = _start_job(tmp_path, mpiexec, job_env, "stubborn", grace=1.0)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    waited = time.monotonic() - start
    assert proc.returncode == 128 + signal.SIGTERM
    assert 1.0 <= waited < 10, waited
    time.sleep(0.2)
    assert [pid for pid in pids if _alive(pid)] == []


def test_a_second_signal_kills_at_once(tmp_path, mpiexec, job_env):
    proc, pids = _start_job(tmp_path, mpiexec, job_env, "stubborn", grace=60)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert time.monotonic() - start < 10
    time.sleep(0.2)
    assert [pid for pid in pids if _alive(pid)] == []


def test_inside_mpi_job_reads_the_launchers_variables():
    assert launcher.inside_mpi_job({"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert launcher.inside_mpi_job({"OMPI_COMM_WORLD_SIZE": "4"})
    assert not launcher.inside_mpi_job({"PATH": "/usr/bin"})
