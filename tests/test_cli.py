"""``tapeflow-train`` end to end on a tiny MNIST-shaped dataset written as gzipped IDX files.

In-process runs call ``tapeflow.launch.train.main(argv)``; SIGINT handling and the ``--np``
relaunch run real subprocesses. No network: the cache points into tmp and downloads fail fast.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tapeflow import checkpoint as ckpt
from tapeflow.launch import train as cli

N_TRAIN, N_TEST = 300, 100
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _split(n: int, seed: int):
    """Dim noise plus a bright 6x6 patch whose place depends on the label: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 5)
        images[i, 2 + 12 * r:8 + 12 * r, 1 + 5 * c:7 + 5 * c] = 255
    return images, labels


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """``<root>/mnist/`` holding the four canonical file names (gzipped, not real MNIST)."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "mnist"
    folder.mkdir()
    train, test = _split(N_TRAIN, 0), _split(N_TEST, 1)
    for stem, array in zip(STEMS, (*train, *test)):
        (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx(array), mtime=0))
    return root


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No real dataset from the user's cache or $TAPEFLOW_DATA_DIR; any download fails at once;
    no abort hooks left behind for later test files."""
    monkeypatch.setenv("TAPEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TAPEFLOW_DATA_DIR", raising=False)
    monkeypatch.setenv("TAPEFLOW_DATA_MIRROR", (tmp_path / "no-mirror").as_uri())
    yield
    # main() installs the MPI failure hooks into this very process: put sys.excepthook back
    from tapeflow.distributed import faults

    faults.uninstall()


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(TAPEFLOW_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TAPEFLOW_DATA_DIR", None)
    return env


def _lines(path: Path) -> list[dict]:
    """The step and epoch records (not the per-process start records)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if "event" not in r]


def _mlp_args(data_root: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_root), "--no-verify", "--model", "mlp", "--hidden", "32",
            "--batch-size", "50", "--no-progress", *extra]


def _error(capsys, argv: list[str]) -> str:
    """Run main(argv), expect an argparse-style exit 2, return stderr."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------- training runs
def test_mlp_epoch_then_resume_to_epoch_two(tmp_path, data_root, capsys):
    metrics, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    common = _mlp_args(data_root, "--metrics", str(metrics), "--checkpoint-dir",
                       str(checkpoints), "--log-every", "2")
    assert cli.main([*common, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "300 train / 100 test" in out and "epoch 1/1" in out and "done: 6 steps" in out
    assert [p.name for p in ckpt.list_checkpoints(checkpoints)] == ["ckpt-000000006"]
    first = _lines(metrics)
    assert [r["step"] for r in first if "test_accuracy" not in r] == [2, 4, 6]  # --log-every 2
    assert [r["epoch"] for r in first if "test_accuracy" in r] == [1]

    assert cli.main([*common, "--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 6, epoch 2" in out
    assert "epoch 1/2" not in out and "epoch 2/2" in out and "done: 12 steps" in out
    lines = _lines(metrics)  # appended to, not overwritten
    assert lines[:len(first)] == first
    steps = [r["step"] for r in lines if "test_accuracy" not in r]
    assert steps == [2, 4, 6, 8, 10, 12]
    epochs = [r for r in lines if "test_accuracy" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[-1]["test_accuracy"] > 0.5  # the bright patch gives the label away
    saved = ckpt.load(ckpt.latest(checkpoints))
    assert (saved.step, saved.epoch, saved.position) == (12, 2, 0)


def test_resume_auto_with_an_empty_checkpoint_dir_starts_from_scratch(tmp_path, data_root,
                                                                      capsys):
    argv = _mlp_args(data_root, "--checkpoint-dir", str(tmp_path / "none"), "--resume", "auto",
                     "--epochs", "1", "--train-limit", "100", "--test-limit", "20")
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "starting from scratch" in out and "(100 train / 20 test)" in out
    assert "1 rank, global batch 50" in out and "1 epoch," in out


def test_evaluate_only_reports_the_checkpoints_test_accuracy(tmp_path, data_root, capsys):
    common = _mlp_args(data_root, "--checkpoint-dir", str(tmp_path / "ck"))
    assert cli.main([*common, "--epochs", "1"]) == 0
    trained = capsys.readouterr().out.split("test accuracy ")[1].split(",")[0]
    assert cli.main([*common, "--evaluate-only"]) == 0
    out = capsys.readouterr().out
    assert f"at step 6 (epoch 1): test accuracy {trained}, test loss" in out
    assert "100 images" in out and "epoch 1/" not in out


def test_cnn_on_a_few_images(data_root, capsys):
    argv = ["--data-dir", str(data_root), "--no-verify", "--model", "cnn", "--epochs", "1",
            "--train-limit", "64", "--test-limit", "32", "--batch-size", "32", "--no-progress",
            "--optimizer", "adam"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "cnn (1,199,882 parameters)" in out and "(64 train / 32 test)" in out
    assert "done: 2 steps" in out


def test_custom_files_need_no_verify(data_root, capsys):
    """The tiny files are not the real MNIST: verified loading refuses them and says why."""
    argv = ["--data-dir", str(data_root), "--epochs", "1", "--no-progress"]
    err = _error(capsys, argv)
    assert "not the canonical file" in err and "--no-verify" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("argv, message", [
    (["--hidden", "0"], "--hidden needs comma-separated integers >= 1; got '0'"),
    (["--hidden", "abc"], "--hidden takes comma-separated integers such as 512,512"),
    (["--epochs", "0"], "expected a positive integer, got 0"),
    (["--log-every", "0"], "expected a positive integer, got 0"),
    (["--batch-size", "x"], "expected a positive integer, got 'x'"),
    (["--resume"], "--resume needs --checkpoint-dir DIR"),
    (["--optimizer", "adam", "--momentum", "0.9"],
     "--momentum applies to sgd and rmsprop, not adam; use --opt-arg NAME=VALUE"),
    (["--optimizer", "adam", "--nesterov"], "--nesterov applies to --optimizer sgd only"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--opt-arg", "beta_1"], "--opt-arg takes NAME=VALUE (e.g. beta_1=0.95)"),
    (["--opt-arg", "beta_1=high"], "value 'high' is not a number"),
    (["--opt-arg", "bogus=1"], "bad --opt-arg for sgd"),
    (["--optimizer", "nope"], "invalid choice: 'nope'"),
    (["--warmup-steps", "-5"], "expected an integer >= 0, got -5"),
])
def test_argument_errors_exit_2_and_name_the_fix(capsys, argv, message):
    assert message in _error(capsys, argv)


def test_device_gpu_without_cupy_says_how_to_install(capsys):
    from tapeflow._backend import cupy_or_none

    if cupy_or_none() is not None:
        pytest.skip("CuPy and a GPU are present here")
    err = _error(capsys, ["--device", "gpu"])
    assert "pip install 'tapeflow[gpu]'" in err and "--device cpu" in err


def test_missing_data_dir_names_the_files_and_where_to_put_them(tmp_path, capsys):
    err = _error(capsys, ["--data-dir", str(tmp_path / "nowhere")])
    assert "nowhere is not a directory" in err
    for stem in STEMS:
        assert f"{stem}.gz" in err


@pytest.mark.parametrize("download", [False, True], ids=["no-download", "download-fails"])
def test_data_dir_without_the_files(tmp_path, capsys, download):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["--data-dir", str(empty), "--no-progress", "--epochs", "1"]
    err = _error(capsys, argv if download else [*argv, "--no-download"])
    assert "Missing files:" in err and "Put them into" in err and str(empty) in err
    for stem in STEMS:
        assert f"{stem}.gz" in err
    if download:
        assert "download failed" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- subprocesses
def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path, data_root):
    metrics, checkpoints = tmp_path / "m.jsonl", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "tapeflow.launch.train",
           *_mlp_args(data_root, "--epochs", "1000", "--log-every", "1",
                      "--metrics", str(metrics), "--checkpoint-dir", str(checkpoints))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while not (metrics.exists() and '"loss"' in metrics.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no metrics line within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGINT == 130, err
    assert "Traceback" not in err
    assert "interrupted at step" in out and "checkpoint saved to" in out
    assert "by SIGINT" in out and len(err.strip().splitlines()) <= 1, err  # at most a bar
    step = int(out.split("interrupted at step ")[1].split(" ")[0])
    newest = ckpt.restore_latest(checkpoints)
    assert newest is not None and newest.step == step
    assert newest.epoch < 1000 and newest.position <= 6


def test_np_2_relaunches_under_mpiexec_and_follows_the_same_trajectory(tmp_path, data_root,
                                                                      capfd, monkeypatch):
    """--batch-size is the global batch: 2 ranks match 1 rank up to float summation order."""
    from tapeflow.distributed import launcher

    try:
        launcher.find_mpiexec()
    except FileNotFoundError:
        pytest.skip("mpiexec is not installed")
    if launcher._cpu_count() < 2:
        pytest.skip("needs two cores for two ranks")
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    runs = {}
    for ranks in (1, 2):
        folder = tmp_path / f"np{ranks}"
        argv = ["--np", str(ranks), *_mlp_args(data_root, "--epochs", "2", "--hidden", "16",
                                               "--log-every", "1",
                                               "--metrics", str(folder / "m.jsonl"),
                                               "--checkpoint-dir", str(folder / "ckpt"))]
        assert cli.main(argv) == 0
        out = capfd.readouterr().out
        assert f"{ranks} rank{'s' if ranks > 1 else ''}, global batch 50" in out
        assert out.count("done: 12 steps") == 1  # logs on rank 0 only
        assert [p.name for p in ckpt.list_checkpoints(folder / "ckpt")] == \
            ["ckpt-000000006", "ckpt-000000012"]
        runs[ranks] = (_lines(folder / "m.jsonl"),
                       ckpt.load(folder / "ckpt" / "ckpt-000000012").tensors)
    (lines1, tensors1), (lines2, tensors2) = runs[1], runs[2]
    assert len(lines1) == len(lines2) == 12 + 2
    # step lines too report the global batch (not rank 0's half), epoch lines the whole epoch
    for one, two in zip(lines1, lines2, strict=True):
        assert (one["step"], one["epoch"]) == (two["step"], two["epoch"])
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert two["accuracy"] == pytest.approx(one["accuracy"], abs=0.025)  # one near-tie flip
        if "test_loss" in one:
            assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-3)
    assert tensors1.keys() == tensors2.keys()
    for name in tensors1:
        np.testing.assert_allclose(tensors2[name], tensors1[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
