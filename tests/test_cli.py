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
    # training settings do not matter to an evaluation; the model's do (checked up front)
    assert cli.main([*common, "--evaluate-only", "--optimizer", "adam", "--batch-size", "20",
                     "--seed", "9", "--train-limit", "100"]) == 0
    assert f"test accuracy {trained}" in capsys.readouterr().out


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
@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    """A checkpoint directory after one epoch of the small MLP (hidden 32, batch 50, sgd)."""
    folder = tmp_path_factory.mktemp("trained")
    assert cli.main(_mlp_args(data_root, "--epochs", "1", "--checkpoint-dir",
                              str(folder / "ck"))) == 0
    return folder / "ck"


def _mistakes(tmp: Path, data: Path, trained: Path) -> list[tuple[list[str], str]]:
    """(argv, expected message) for the mistakes a user makes; paths are created here."""
    a_file = tmp / "a-file"
    a_file.write_text("not a directory")
    empty = tmp / "empty"
    empty.mkdir()
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    for src in ckpt.list_checkpoints(trained):
        dst = corrupt / src.name
        dst.mkdir()
        for f in src.iterdir():
            raw = bytearray(f.read_bytes())
            if f.name == ckpt.TENSORS_FILE:
                raw[-3] ^= 0xFF
            dst.joinpath(f.name).write_bytes(bytes(raw))
    base = _mlp_args(data, "--epochs", "2")
    resume = [*base, "--checkpoint-dir", str(trained), "--resume"]
    return [
        (["--hidden", "0"], "--hidden needs comma-separated integers >= 1; got '0'"),
        (["--hidden", "abc"], "--hidden takes comma-separated integers such as 512,512"),
        (["--epochs", "0"], "expected a positive integer, got 0"),
        (["--epochs"], "argument --epochs: expected one argument"),
        (["--log-every", "0"], "expected a positive integer, got 0"),
        (["--batch-size", "x"], "expected a positive integer, got 'x'"),
        (["--keep", "0"], "expected a positive integer, got 0"),
        (["--checkpoint-every", "-1"], "expected a positive integer, got -1"),
        (["--test-limit", "0"], "expected a positive integer, got 0"),
        (["--resume"], "--resume needs --checkpoint-dir DIR"),
        (["--evaluate-only"], "--evaluate-only needs --checkpoint-dir DIR"),
        (["--optimizer", "adam", "--momentum", "0.9"],
         "--momentum applies to sgd and rmsprop, not adam; use --opt-arg NAME=VALUE"),
        (["--optimizer", "adam", "--nesterov"], "--nesterov applies to --optimizer sgd only"),
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
        (["--lr", "0"], "--lr must be positive, got 0.0"),
        (["--lr", "nan"], "expected a finite number, got 'nan'"),
        (["--lr", "inf"], "expected a finite number, got 'inf'"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
        (["--weight-decay", "-0.1"], "--weight-decay must be >= 0, got -0.1"),
        (["--clip-norm", "0"], "--clip-norm must be positive, got 0.0"),
        (["--decay-rate", "0"], "--decay-rate must be positive, got 0.0"),
        (["--warmup-steps", "-5"], "expected an integer >= 0, got -5"),
        (["--opt-arg", "beta_1"], "--opt-arg takes NAME=VALUE (e.g. beta_1=0.95)"),
        (["--opt-arg", "beta_1=high"], "value 'high' is not a number"),
        (["--opt-arg", "bogus=1"], "bad --opt-arg for sgd"),
        (["--optimizer", "adam", "--opt-arg", "beta_1=1.5"],
         "--opt-arg beta_1 must be in [0, 1), got 1.5"),
        (["--optimizer", "adam", "--opt-arg", "beta_2=nan"], "value 'nan' is not finite"),
        (["--optimizer", "adam", "--opt-arg", "epsilon=0"],
         "--opt-arg epsilon must be positive, got 0.0"),
        (["--optimizer", "nope"], "invalid choice: 'nope'"),
        (["--model", "resnet"], "invalid choice: 'resnet'"),
        (["--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["--schedule", "step"], "invalid choice: 'step'"),
        (["--resume", "maybe", "--checkpoint-dir", str(empty)], "invalid choice: 'maybe'"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag (see tapeflow-train --help)"),
        (["--np", "0"], "expected a positive integer, got 0"),
        (["--np", "4096"], "--np 4096 is more ranks than the"),
        (["--np", "2", "--batch-size", "1", "--oversubscribe"],
         "--batch-size 1 is the global batch and must be at least the number of ranks (2)"),
        (["--data-dir", str(tmp / "nowhere")], "nowhere is not a directory"),
        (["--data-dir", str(empty), "--no-download"], "Missing files:"),
        (["--data-dir", str(data), "--epochs", "1"], "not the canonical file"),
        ([*base, "--checkpoint-dir", str(a_file)], "is a file, not a directory"),
        ([*base, "--checkpoint-dir", str(a_file / "sub")], "is a file, not a directory"),
        ([*base, "--metrics", str(empty)], "is a directory: give a file name"),
        ([*base, "--metrics", str(a_file / "m.jsonl")], "is a file, not a directory"),
        ([*base, "--checkpoint-dir", str(empty), "--resume"],
         "--resume: no usable checkpoint in"),
        ([*base, "--checkpoint-dir", str(corrupt), "--resume"], "checksum mismatch"),
        ([*base, "--checkpoint-dir", str(empty), "--evaluate-only"],
         "--evaluate-only: no usable checkpoint in"),
        ([*resume, "--hidden", "64"], "trained with --hidden 32, this run has --hidden 64"),
        ([*resume, "--model", "cnn"], "trained with --model mlp, this run has --model cnn"),
        ([*resume, "--batch-size", "60"], "trained with --batch-size 50, this run has "
                                          "--batch-size 60"),
        ([*resume, "--optimizer", "adam"], "trained with --optimizer sgd, this run has "
                                           "--optimizer adam"),
        ([*resume, "--seed", "3"], "trained with --seed 0, this run has --seed 3"),
        ([*resume, "--dataset", "fashion-mnist"], "trained with --dataset mnist"),
    ]


N_MISTAKES = 53


def test_every_mistake_is_one_line_exit_2_before_training(tmp_path, data_root, trained, capsys):
    """The count asserted here is the figure reported for the issue: all of them clean."""
    mistakes = _mistakes(tmp_path, data_root, trained)
    assert len(mistakes) == N_MISTAKES
    clean = []
    for argv, message in mistakes:
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        ok = (info.value.code == 2 and len(lines) == 1 and message in lines[0]
              and lines[0].startswith("tapeflow-train: error: ") and "epoch 1/" not in
              captured.out and "Traceback" not in captured.err)
        clean.append(ok)
        assert ok, (argv, message, captured)
    assert sum(clean) == N_MISTAKES


def test_a_checkpoint_dir_in_use_by_another_run_is_refused(tmp_path, capsys):
    with ckpt.DirectoryLock(tmp_path / "busy"):
        err = _error(capsys, ["--checkpoint-dir", str(tmp_path / "busy")])
    assert f"in use by another run (pid {os.getpid()})" in err


def test_np_inside_an_mpiexec_job_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    err = _error(capsys, ["--np", "2"])
    assert "--np starts its own mpiexec job and cannot run inside one" in err
    monkeypatch.setenv("PMI_RANK", "1")  # the other ranks exit 2 too, silently
    assert _error(capsys, ["--np", "2"]) == ""


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "(default: 128)" in out and "examples:" in out and "--resume auto" in out
    assert "tapeflow-plot runs/a/metrics.jsonl -o curves.png" in out


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


def test_mistakes_under_mpiexec_print_one_line_from_rank_0(tmp_path, mpiexec, job_env):
    job_env.update(_env(tmp_path))
    for argv, message in ((["--batch-size", "1"], "must be at least the number of ranks (2)"),
                          (["--np", "2"], "cannot run inside one")):
        cmd = [mpiexec, "-n", "2", sys.executable, "-m", "tapeflow.launch.train", *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, env=job_env, timeout=120)
        assert done.returncode == 2, done
        assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("tapeflow-train: error: ") and message in done.stderr


def test_ranks_of_one_job_do_not_probe_the_checkpoint_lock(tmp_path, monkeypatch):
    """Each rank probing the lock took it from the other now and then: rank 0 failed alone
    ("in use by another run (pid unknown)") while rank 1 waited in MPI start-up for ever.
    Inside a job the probe is left to the trainer (rank 0 locks, every rank hears)."""
    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    with ckpt.DirectoryLock(busy):
        args = cli.build_parser().parse_args(["--checkpoint-dir", str(busy)])
        cli.validate(args)  # no refusal from a rank's argument check
        monkeypatch.setenv("PMI_SIZE", "1")
        monkeypatch.setenv("PMI_RANK", "0")
        with pytest.raises(cli.UsageError, match="in use by another run"):
            cli.validate(args)


def test_a_job_on_a_checkpoint_dir_in_use_ends_on_every_rank(tmp_path, data_root, mpiexec,
                                                            job_env):
    job_env.update(_env(tmp_path))
    busy = tmp_path / "busy"
    busy.mkdir()
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "tapeflow.launch.train",
           *_mlp_args(data_root, "--epochs", "1", "--checkpoint-dir", str(busy))]
    with ckpt.DirectoryLock(busy):
        done = subprocess.run(cmd, capture_output=True, text=True, env=job_env, timeout=120)
    assert done.returncode != 0, done
    assert f"in use by another run (pid {os.getpid()})" in done.stderr, done.stderr
    assert "epoch 1/" not in done.stdout


def test_ctrl_c_on_np_2_saves_once_prints_one_line_and_leaves_no_process(tmp_path, data_root):
    from tapeflow.distributed import launcher

    if launcher.cpu_count() < 2:
        pytest.skip("needs two cores for two ranks")
    metrics, checkpoints = tmp_path / "m.jsonl", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "tapeflow.launch.train", "--np", "2",
           *_mlp_args(data_root, "--epochs", "1000", "--log-every", "1",
                      "--metrics", str(metrics), "--checkpoint-dir", str(checkpoints))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no metrics within 120 s"
            time.sleep(0.05)
        ranks = [pid for pid in launcher._descendants(proc.pid)
                 if "tapeflow.launch.train" in Path(f"/proc/{pid}/cmdline").read_text()
                 and not Path(f"/proc/{pid}/comm").read_text().startswith("mpiexec")]
        assert len(ranks) == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err == "" and "Traceback" not in out
    tail = [line for line in out.splitlines() if not line.startswith(("tapeflow-train: mlp",
                                                                      "epoch "))]
    assert len(tail) == 1 and tail[0].startswith("interrupted at step "), out
    assert " by SIGINT: checkpoint saved to " in tail[0]
    step = int(tail[0].split("interrupted at step ")[1].split(" ")[0])
    assert ckpt.restore_latest(checkpoints).step == step
    time.sleep(0.2)
    assert [pid for pid in ranks if Path(f"/proc/{pid}").exists()] == []
