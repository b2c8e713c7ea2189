"""The suite's own reporting: MPI tests leave a single-process run quietly, and an MPI run
reports once, with every rank's failures shown (tests/conftest.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_TESTS = '''
import os
import pytest

@pytest.mark.mpi
def test_mpi_only():
    assert os.environ.get("PMI_RANK") != "1", "rank 1 disagrees"

def test_everywhere():
    assert True
'''


@pytest.fixture
def suite(tmp_path) -> Path:
    folder = tmp_path / "tests"
    folder.mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), folder / "conftest.py")
    (folder / "test_sample.py").write_text(_TESTS)
    return folder


def test_single_process_run_deselects_mpi_tests_without_a_line_each(suite):
    done = subprocess.run([sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider",
                           str(suite)], capture_output=True, text=True, timeout=120,
                          cwd=suite.parent)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 1 deselected" in done.stdout
    assert "SKIPPED" not in done.stdout and "with-mpi" in done.stdout  # the header says how


def test_mpi_run_reports_once_with_the_failure_of_rank_1(suite, mpiexec, job_env):
    done = subprocess.run([mpiexec, "-n", "2", "-bind-to", "none", sys.executable, "-m",
                           "pytest", "--with-mpi", "-q", "-p", "no:cacheprovider", str(suite)],
                          capture_output=True, text=True, timeout=300, env=job_env,
                          cwd=suite.parent)
    out = done.stdout
    assert done.returncode != 0, out
    assert out.count("[100%]") == 1  # one progress line: rank 1 is silent
    assert out.count("all 2 ranks: 1 failed, 3 passed") == 1
    assert "rank 1: 1 failed" in out and "rank 1 disagrees" in out
