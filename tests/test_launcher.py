"""mpiexec command lines: exact argv lists, thread budgets, argument checks, and one real run."""
from __future__ import annotations

import os
import sys
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
