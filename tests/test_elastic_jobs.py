"""Elastic restarts: ``tapeflow-train --np 2 --max-restarts 1`` after a rank is SIGKILLed.

The launcher ends the rest of the job, relaunches it from the newest good checkpoint, and,
because batches are global and a resume is exact, the run ends where an uninterrupted run
ends. Uses the real MNIST files from ``$TAPEFLOW_DATA_DIR`` (a few thousand images of them).
Run by plain pytest: it starts its own jobs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMON = ["--model", "mlp", "--hidden", "64", "--batch-size", "32", "--epochs", "3",
          "--train-limit", "3200", "--test-limit", "500", "--no-progress", "--log-every", "20",
          "--checkpoint-every", "20", "--seed", "3"]


@pytest.fixture
def data_dir() -> str:
    root = os.environ.get("TAPEFLOW_DATA_DIR")
    if not root or not (Path(root) / "mnist").is_dir():
        pytest.skip("needs the MNIST files under $TAPEFLOW_DATA_DIR/mnist")
    return root


def _cmd(data_dir: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tapeflow.launch.train", "--np", "2", "--oversubscribe",
            "--data-dir", data_dir, "--checkpoint-dir", str(out / "ck"),
            "--metrics", str(out / "metrics.jsonl"), *COMMON, *extra]


def _epochs(path: Path) -> list[dict]:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in recs if "test_loss" in r]


def _ranks_of(marker: str) -> list[int]:
    """PIDs of the training ranks whose command line mentions ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [c.decode(errors="replace") for c in cmd]
        is_rank = (any("tapeflow.launch.train" in part for part in text)  # -m or the -c stub
                   and not Path(text[0]).name.startswith(("mpiexec", "mpirun")))
        if is_rank and marker in " ".join(text) and "--np" not in text:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_killed_rank_restarts_from_the_checkpoint_and_ends_like_an_uninterrupted_run(
        data_dir, tmp_path, job_env):
    env = {**job_env, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    full = subprocess.run(_cmd(data_dir, whole), env=env, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    hit = tmp_path / "elastic"
    proc = subprocess.Popen(_cmd(data_dir, hit, "--max-restarts", "1"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            if any((hit / "ck").glob("*step*")) or any(p.name.startswith("ckpt")
                                                       for p in (hit / "ck").glob("*")):
                ranks = _ranks_of(str(hit / "ck"))
                if len(ranks) == 2:
                    killed = max(ranks)
                    os.kill(killed, signal.SIGKILL)  # as the OOM killer would
            time.sleep(0.02)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no checkpoint appeared before the run ended"
    assert proc.returncode == 0, err[-3000:]
    assert "the job failed" in err and "restart 1 of 1 from the newest good checkpoint" in err
    assert "finished after 1 restart" in err
    a, b = _epochs(hit / "metrics.jsonl"), _epochs(whole / "metrics.jsonl")
    assert [e["epoch"] for e in a][-3:] == [e["epoch"] for e in b] == [1, 2, 3]
    for key in ("loss", "test_loss", "test_accuracy"):
        assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-6), key


def test_max_restarts_needs_np_and_a_checkpoint_dir():
    job = subprocess.run([sys.executable, "-m", "tapeflow.launch.train", "--np", "2",
                          "--max-restarts", "2"], capture_output=True, text=True, timeout=60)
    assert job.returncode == 2
    assert job.stderr.strip().splitlines()[-1].startswith("tapeflow-train: error: --max-restarts")
