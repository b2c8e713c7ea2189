"""Real multi-rank jobs end to end: ``tapeflow-train`` under ``mpiexec`` (argv lists, no shell).

* world-size invariance of the CLI: 1 (plain python), 2 and 4 (oversubscribed) ranks follow the
  same per-step loss trajectory on a tiny MNIST-shaped IDX dataset;
* an exception on rank 1 mid-training ends the whole job quickly, naming rank 1;
* a 2-rank run resumed from its epoch-1 checkpoint ends exactly like an uninterrupted one.

Run by plain pytest (not under mpiexec: each test starts its own jobs).
"""
from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tapeflow.distributed.launcher import mpiexec_argv

N_TRAIN, N_TEST, BATCH = 1600, 128, 32  # 50 steps per epoch
STEPS = N_TRAIN // BATCH
JOB_TIMEOUT = 120


@pytest.fixture
def run(mpiexec, job_env, tmp_path):
    """Run ``command`` alone (np_ == 0) or on ``np_`` ranks through ``mpiexec_argv``."""
    env = {**job_env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TAPEFLOW_CACHE_DIR": str(tmp_path / "cache"),
           "TAPEFLOW_STALL_TIMEOUT": "60"}
    env.pop("TAPEFLOW_DATA_DIR", None)

    def run_(np_: int, command: list[str], timeout: float = JOB_TIMEOUT
             ) -> subprocess.CompletedProcess:
        argv = command
        if np_:
            argv = mpiexec_argv(np_, command, mpiexec=mpiexec, oversubscribe=True,
                                env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                                     "MKL_NUM_THREADS": "1"})
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path)
    return run_


# -- a tiny MNIST-shaped dataset in IDX format ---------------------------------------------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    folder = root / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_TRAIN + N_TEST, 28, 28), dtype=np.uint8)
    # learnable labels: which of 10 fixed random projections of the image is largest
    proj = rng.standard_normal((28 * 28, 10))
    labels = (images.reshape(len(images), -1) / 255.0 @ proj).argmax(axis=1).astype(np.uint8)
    _write_idx(folder / "train-images-idx3-ubyte.gz", images[:N_TRAIN])
    _write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:N_TRAIN])
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", images[N_TRAIN:])
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[N_TRAIN:])
    return root


def _require_cli_flags(*flags: str) -> None:
    from tapeflow.launch.train import build_parser

    known = set(build_parser()._option_string_actions)
    missing = [f for f in flags if f not in known]
    if missing:
        pytest.skip(f"tapeflow-train lacks {missing} (needed to train on custom IDX files and "
                    "log every step)")


def _train_cmd(data_dir: Path, metrics: Path, *extra: str) -> list[str]:
    _require_cli_flags("--no-verify", "--no-download", "--log-every")
    return [sys.executable, "-m", "tapeflow.launch.train", "--data-dir", str(data_dir),
            "--no-verify", "--no-download", "--model", "mlp", "--hidden", "32",
            "--batch-size", str(BATCH), "--no-progress", "--metrics", str(metrics), *extra]


def _records(path: Path) -> tuple[dict[int, dict], list[dict]]:
    """(step records by step, epoch records) from a metrics JSON-lines file."""
    steps, epochs = {}, []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "start":  # one per process start (run id, time)
            continue
        if "test_loss" in rec:
            epochs.append(rec)
        else:
            steps[rec["step"]] = rec
    return steps, epochs


def _ok(job: subprocess.CompletedProcess, what: str) -> None:
    assert job.returncode == 0, f"{what} failed ({job.returncode}):\n{job.stdout}\n{job.stderr}"


# -- 1. world-size invariance ---------------------------------------------------------------------

def test_cli_loss_trajectory_does_not_depend_on_the_number_of_ranks(data_dir, tmp_path, run):
    runs = {}
    for np_ in (1, 2, 4):
        metrics = tmp_path / f"m{np_}.jsonl"
        cmd = _train_cmd(data_dir, metrics, "--epochs", "1", "--log-every", "1")
        job = run(0 if np_ == 1 else np_, cmd)
        _ok(job, f"{np_}-rank run")
        assert f"{np_} rank" in job.stdout  # rank 0 alone prints the banner
        assert job.stdout.count("tapeflow-train:") == 1
        runs[np_] = _records(metrics)
    ref_steps, ref_epochs = runs[1]
    assert sorted(ref_steps) == list(range(1, STEPS + 1))
    ref = np.array([ref_steps[s]["loss"] for s in range(1, STEPS + 1)])
    assert np.isfinite(ref).all() and ref[-10:].mean() < ref[:10].mean()
    for np_ in (2, 4):
        steps, epochs = runs[np_]
        assert sorted(steps) == list(range(1, STEPS + 1)), f"{np_} ranks: one line per step"
        losses = np.array([steps[s]["loss"] for s in range(1, STEPS + 1)])
        np.testing.assert_allclose(losses, ref, rtol=1e-5, err_msg=f"{np_} ranks vs 1")
        acc = np.array([steps[s]["accuracy"] for s in range(1, STEPS + 1)])
        ref_acc = np.array([ref_steps[s]["accuracy"] for s in range(1, STEPS + 1)])
        np.testing.assert_allclose(acc, ref_acc, atol=1.5 / BATCH)
        assert len(epochs) == len(ref_epochs) == 1
        for key in ("loss", "test_loss"):
            assert epochs[0][key] == pytest.approx(ref_epochs[0][key], rel=1e-5), key
        for key in ("accuracy", "test_accuracy"):
            assert epochs[0][key] == pytest.approx(ref_epochs[0][key], abs=1.5 / N_TEST), key


# -- 2. an exception on one rank ends the job -----------------------------------------------------

_FAIL_ON_RANK_1 = """
    import numpy as np
    import tapeflow as tp
    from tapeflow import distributed as dist, optimizers
    from tapeflow.training import Trainer

    comm = dist.init("mpi")  # a failure on any rank ends the job, by default

    class Failing(Trainer):
        def train_step(self, x, y, global_count):
            if self.comm.rank == 1 and self.step == 5:
                raise RuntimeError("injected failure at step 5")
            return super().train_step(x, y, global_count)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((640, 20)).astype(np.float32)
    y = rng.integers(0, 10, 640)
    t = Failing(tp.nn.mlp([20, 16, 10], seed=0), optimizers.get("sgd", learning_rate=0.1),
                x, y, x[:64], y[:64], batch_size=32, comm=comm,
                gradient_tape=dist.tape_factory(comm), progress=False, log_every=0)
    t.fit(1000)
    print("training finished on rank", comm.rank, flush=True)
"""


def test_exception_on_rank_1_mid_training_ends_the_job(tmp_path, run):
    t0 = time.monotonic()
    job = run(2, [sys.executable, "-c", textwrap.dedent(_FAIL_ON_RANK_1)], timeout=30)
    elapsed = time.monotonic() - t0
    assert job.returncode != 0
    assert elapsed < 30
    assert "tapeflow: rank 1/2 failed: RuntimeError: injected failure at step 5" in job.stderr
    assert "training finished" not in job.stdout


# -- 3. resume under 2 ranks ------------------------------------------------------------------------

def test_resume_on_two_ranks_matches_an_uninterrupted_run(data_dir, tmp_path, run):
    common = ("--log-every", "10")
    part = tmp_path / "resumed.jsonl"
    first = run(2, _train_cmd(data_dir, part, "--epochs", "1", "--checkpoint-dir",
                              str(tmp_path / "ck"), *common))
    _ok(first, "epoch 1")
    second = run(2, _train_cmd(data_dir, part, "--epochs", "2", "--resume", "--checkpoint-dir",
                               str(tmp_path / "ck"), *common))
    _ok(second, "resumed epoch 2")
    assert "resumed from" in second.stdout and f"step {STEPS}" in second.stdout
    whole = tmp_path / "whole.jsonl"
    full = run(2, _train_cmd(data_dir, whole, "--epochs", "2", "--checkpoint-dir",
                             str(tmp_path / "ck_whole"), *common))
    _ok(full, "uninterrupted run")
    steps_r, epochs_r = _records(part)
    steps_w, epochs_w = _records(whole)
    assert [e["epoch"] for e in epochs_r] == [e["epoch"] for e in epochs_w] == [1, 2]
    assert epochs_r[-1]["step"] == epochs_w[-1]["step"] == 2 * STEPS
    for a, b in zip(epochs_r, epochs_w):
        for key in ("loss", "accuracy", "test_loss", "test_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["epoch"], key)
    assert sorted(steps_r) == sorted(steps_w) == list(range(10, 2 * STEPS + 1, 10))
    for s in steps_w:
        assert steps_r[s]["loss"] == pytest.approx(steps_w[s]["loss"], rel=1e-6), s
