"""Trainer: exact resume after SIGINT, checkpoints, metrics lines, evaluation, keep-N.

Everything runs in one process on a tiny in-memory dataset, so the whole file takes seconds.
"""
from __future__ import annotations

import json
import os
import signal
import warnings

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import checkpoint as ckpt
from tapeflow import optimizers
from tapeflow.nn.layers import Dense, Dropout, Flatten, Sequential
from tapeflow.training import EpochResult, Interrupted, Trainer

N_FEATURES, N_CLASSES = 20, 10
BATCH = 32
N_TRAIN = 250  # not a multiple of BATCH: every epoch ends with a ragged batch of 26
STEPS_PER_EPOCH = -(-N_TRAIN // BATCH)  # 8


def synthetic(n: int, seed: int = 0, noise: float = 0.6):
    """Ten Gaussian blobs in 20 dimensions: float32 features, int64 labels."""
    rng = np.random.default_rng(1234)  # the same class centres for every split
    centres = rng.normal(0.0, 1.0, (N_CLASSES, N_FEATURES))
    r = np.random.default_rng(seed)
    y = r.integers(0, N_CLASSES, n).astype(np.int64)
    x = (centres[y] + noise * r.normal(0.0, 1.0, (n, N_FEATURES))).astype(np.float32)
    return x, y


X_TRAIN, Y_TRAIN = synthetic(N_TRAIN, seed=1)
X_TEST, Y_TEST = synthetic(64, seed=2)


def mlp_model():
    return tp.nn.mlp([N_FEATURES, 16, N_CLASSES], seed=0)


def dropout_model():
    rng = np.random.default_rng(0)
    return Sequential([Flatten(), Dense(16, activation="relu", input_dim=N_FEATURES, seed=rng),
                       Dropout(0.3), Dense(N_CLASSES, input_dim=16, seed=rng)])


def sgd():
    return optimizers.SGD(0.1, momentum=0.9)


def adam():
    return optimizers.Adam(0.01)


def make_trainer(model, optimizer, directory=None, **kw):
    kw.setdefault("log_every", 0)
    return Trainer(model, optimizer, X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, batch_size=BATCH, seed=7,
                   checkpoint_dir=None if directory is None else str(directory),
                   progress=False, log=lambda s: None, **kw)


def record_steps(trainer: Trainer, *, stop_at: int | None = None, signum=signal.SIGINT):
    """Wrap ``trainer.train_step``: collect each step's returned (summed) loss; at global step
    ``stop_at`` send ``signum`` to this very process, as Ctrl-C or `kill` would."""
    losses: list[float] = []
    inner = trainer.train_step

    def step(x, y, global_count):
        loss, correct = inner(x, y, global_count)
        losses.append(loss)
        if stop_at is not None and trainer.step + 1 == stop_at:  # trainer.step counts after
            os.kill(os.getpid(), signum)
        return loss, correct

    trainer.train_step = step
    return losses


def params(model):
    return [v.numpy().copy() for v in model.trainable_variables]


# --------------------------------------------------------------------------- resume exactness
@pytest.mark.parametrize("model_fn, opt_fn", [(mlp_model, sgd), (mlp_model, adam),
                                              (dropout_model, adam)],
                         ids=["sgd-momentum", "adam", "dropout-adam"])
def test_resume_after_sigint_is_bitwise_identical(tmp_path, model_fn, opt_fn):
    epochs, stop_at = 3, 11  # step 11 = epoch 2, batch 3 of 8

    # the reference: one uninterrupted run
    tp.random.set_seed(123)
    ref_model = model_fn()
    ref = make_trainer(ref_model, opt_fn(), tmp_path / "ref", checkpoint_every=5)
    ref_losses = record_steps(ref)
    results = ref.fit(epochs)
    assert [r.epoch for r in results] == [1, 2, 3]
    assert len(ref_losses) == ref.step == epochs * STEPS_PER_EPOCH

    # the same run, stopped by SIGINT in the middle of epoch 2
    tp.random.set_seed(123)
    first = make_trainer(model_fn(), opt_fn(), tmp_path / "run", checkpoint_every=5)
    losses = record_steps(first, stop_at=stop_at)
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as info:
        first.fit(epochs)
    assert signal.getsignal(signal.SIGINT) is handler_before  # fit put the handler back
    assert info.value.signum == signal.SIGINT
    assert info.value.checkpoint is not None
    assert info.value.checkpoint.name == f"ckpt-{stop_at:09d}"
    assert len(losses) == stop_at
    saved = ckpt.load(info.value.checkpoint)
    assert (saved.step, saved.epoch, saved.position) == (stop_at, 1, stop_at - STEPS_PER_EPOCH)
    assert {k: saved.extra[k] for k in ("seed", "batch_size")} == {"seed": 7, "batch_size": BATCH}
    # the epoch's running sums so far: summed loss, correct, examples seen (3 batches of 32)
    assert saved.extra["epoch_sums"][2] == (stop_at - STEPS_PER_EPOCH) * BATCH

    # a fresh process would start with other weights and another RNG state: restore fixes both
    tp.random.set_seed(999)
    resumed_model = model_fn()
    for v in resumed_model.trainable_variables:
        v.assign(np.zeros_like(v.numpy()))
    resumed = make_trainer(resumed_model, opt_fn(), tmp_path / "run", checkpoint_every=5)
    assert resumed.restore() is True
    assert (resumed.step, resumed.epoch, resumed.position) == (stop_at, 1, 3)
    more = record_steps(resumed)
    results = resumed.fit(epochs)
    assert [r.epoch for r in results] == [2, 3]

    assert losses + more == ref_losses  # == on floats: bitwise the same trajectory
    for a, b in zip(params(resumed_model), params(ref_model)):
        np.testing.assert_array_equal(a, b)
    assert resumed.optimizer.iterations == ref.optimizer.iterations == 24
    assert resumed.fit(epochs) == []  # already done: nothing to run


def test_sigterm_without_checkpoint_dir_raises_interrupted_without_path():
    trainer = make_trainer(mlp_model(), sgd())
    losses = record_steps(trainer, stop_at=2, signum=signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        trainer.fit(1)
    assert info.value.signum == signal.SIGTERM and info.value.checkpoint is None
    assert len(losses) == 2 and (trainer.step, trainer.position) == (2, 2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_interrupt_at_the_end_of_an_epoch_resumes_into_the_next(tmp_path):
    tp.random.set_seed(0)
    ref_model = mlp_model()
    ref = make_trainer(ref_model, sgd())
    ref_losses = record_steps(ref)
    ref.fit(2)

    first = make_trainer(mlp_model(), sgd(), tmp_path)
    losses = record_steps(first, stop_at=STEPS_PER_EPOCH)
    with pytest.raises(Interrupted) as info:
        first.fit(2)
    saved = ckpt.load(info.value.checkpoint)
    assert saved.step == STEPS_PER_EPOCH
    resumed_model = mlp_model()
    resumed = make_trainer(resumed_model, sgd(), tmp_path)
    assert resumed.restore()
    more = record_steps(resumed)
    resumed.fit(2)
    assert losses + more == ref_losses
    assert resumed.step == 2 * STEPS_PER_EPOCH and resumed.epoch == 2
    for a, b in zip(params(resumed_model), params(ref_model)):
        np.testing.assert_array_equal(a, b)


def test_restore_without_checkpoints_returns_false(tmp_path):
    assert make_trainer(mlp_model(), sgd(), tmp_path / "empty").restore() is False
    assert make_trainer(mlp_model(), sgd()).restore() is False


# --------------------------------------------------------------------------- metrics
def test_metrics_file_has_step_and_epoch_lines(tmp_path):
    path = tmp_path / "logs" / "metrics.jsonl"  # the parent folder is created
    trainer = make_trainer(mlp_model(), sgd(), metrics_path=str(path), log_every=1)
    losses = record_steps(trainer)
    results = trainer.fit(2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    start, lines = lines[0], lines[1:]
    assert start["event"] == "start" and start["resumed"] is False and start["step"] == 0
    assert len({r["run"] for r in [start, *lines]}) == 1 and len(start["run"]) == 12
    times = [r["time"] for r in lines]
    assert times == sorted(times) and start["time"] <= times[0]
    assert "event" not in lines[1] and start["start_time"].endswith("Z")
    step_lines = [r for r in lines if "test_accuracy" not in r]
    epoch_lines = [r for r in lines if "test_accuracy" in r]
    assert [r["step"] for r in step_lines] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for r in step_lines:
        assert {"step", "epoch", "loss", "accuracy", "learning_rate",
                "samples_per_second"} <= set(r)
        assert r["epoch"] == 1 + (r["step"] - 1) // STEPS_PER_EPOCH
        assert r["learning_rate"] == pytest.approx(0.1)
        assert r["samples_per_second"] > 0 and 0 <= r["accuracy"] <= 1
    # each step line's loss is that step's mean loss (the last batch of an epoch holds 26)
    sizes = ([BATCH] * (STEPS_PER_EPOCH - 1) + [N_TRAIN % BATCH]) * 2
    assert [r["loss"] for r in step_lines] == [s / n for s, n in zip(losses, sizes)]
    assert [r["epoch"] for r in epoch_lines] == [1, 2]
    for r, res in zip(epoch_lines, results):
        assert isinstance(res, EpochResult)
        assert r["step"] == res.epoch * STEPS_PER_EPOCH
        assert r["test_accuracy"] == res.test_accuracy and r["test_loss"] == res.test_loss
        assert r["loss"] == pytest.approx(sum(losses[(res.epoch - 1) * STEPS_PER_EPOCH:
                                                     res.epoch * STEPS_PER_EPOCH]) / N_TRAIN)
        assert {"accuracy", "learning_rate", "samples_per_second", "epoch_seconds"} <= set(r)
    assert results[-1].steps == STEPS_PER_EPOCH


def test_log_every_thins_the_step_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    make_trainer(mlp_model(), sgd(), metrics_path=str(path), log_every=3).fit(1)
    lines = [json.loads(line) for line in path.read_text().splitlines()][1:]
    assert [r["step"] for r in lines if "test_accuracy" not in r] == [3, 6]
    assert sum("test_accuracy" in r for r in lines) == 1


def test_resume_after_a_crash_does_not_repeat_steps_in_the_metrics(tmp_path):
    """kill -9 after step 7 (checkpoint at 6): the resumed run drops its steps 7.. and
    writes them once; another run's records in the same file are kept."""
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"run": "other", "step": 50, "loss": 1.0}) + "\n")
    first = make_trainer(mlp_model(), sgd(), tmp_path / "ck", checkpoint_every=3,
                         metrics_path=str(path), log_every=1)
    original_step = first.train_step
    calls = []

    def crash_after_seven(*a):
        if len(calls) == 7:
            with open(path, "a") as f:
                f.write('{"run": "cut-off li')  # a line half written by kill -9
            raise KeyboardInterrupt  # stands in for kill -9: no checkpoint at step 7
        calls.append(1)
        return original_step(*a)

    first.train_step = crash_after_seven
    with pytest.raises(KeyboardInterrupt):
        first.fit(2)
    first.close()
    steps_before = [json.loads(x).get("step") for x in path.read_text().splitlines()[1:-1]]
    assert steps_before == [0, 1, 2, 3, 4, 5, 6, 7]
    second = make_trainer(mlp_model(), sgd(), tmp_path / "ck", metrics_path=str(path),
                          log_every=1)
    assert second.restore() and second.step == 6
    second.fit(2)
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert records[0] == {"run": "other", "step": 50, "loss": 1.0}
    ours = [r for r in records[1:] if "event" not in r and "test_accuracy" not in r]
    assert [r["step"] for r in ours] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    starts = [r for r in records if r.get("event") == "start"]
    assert [(r["resumed"], r["step"]) for r in starts] == [(False, 0), (True, 6)]
    assert len({r["run"] for r in records[1:]}) == 1  # the resumed run keeps its id


# --------------------------------------------------------------------------- checkpoints
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
    trainer = make_trainer(mlp_model(), sgd(), tmp_path, checkpoint_every=3, keep_checkpoints=3)
    trainer.fit(1)  # checkpoints at steps 3, 6 and 8 (the end of the epoch)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == \
        [f"ckpt-{s:09d}" for s in (3, 6, 8)]
    good = ckpt.load(tmp_path / f"ckpt-{6:09d}")
    newest = tmp_path / f"ckpt-{8:09d}" / ckpt.TENSORS_FILE
    raw = bytearray(newest.read_bytes())
    raw[-5] ^= 0xFF  # a flipped byte in the tensor data: same size, wrong SHA-256
    newest.write_bytes(bytes(raw))

    model = mlp_model()
    fresh = make_trainer(model, sgd(), tmp_path)
    with pytest.warns(UserWarning, match=r"skipping corrupt checkpoint .*ckpt-000000008"):
        assert fresh.restore()
    assert (fresh.step, fresh.epoch, fresh.position) == (6, 0, 6)
    for name, var in model.named_variables():
        np.testing.assert_array_equal(var.numpy(), good.tensors[f"model/{name}"])


def test_keep_checkpoints_is_respected(tmp_path):
    trainer = make_trainer(mlp_model(), sgd(), tmp_path, checkpoint_every=1, keep_checkpoints=2)
    trainer.fit(1)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == [f"ckpt-{s:09d}" for s in (STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".lock"]


# --------------------------------------------------------------------------- evaluation
def test_evaluate_is_exact_for_a_ragged_last_batch():
    model = mlp_model()
    trainer = make_trainer(model, sgd())
    trainer.fit(1)
    x, y = synthetic(101, seed=5)
    loss, acc = trainer.evaluate(x, y, batch_size=32)  # batches of 32, 32, 32, 5

    logits = model(tp.constant(x), training=False).numpy().astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -log_probs[np.arange(101), y].mean()
    expected_correct = int((logits.argmax(axis=1) == y).sum())
    assert acc == expected_correct / 101  # exact: every example counted once
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert trainer.evaluate(x, y) == pytest.approx((loss, acc), rel=1e-6)  # one batch of 101


# --------------------------------------------------------------------------- sanity
def test_mlp_learns_a_separable_problem():
    x, y = synthetic(512, seed=3, noise=0.3)
    xt, yt = synthetic(128, seed=4, noise=0.3)
    trainer = Trainer(mlp_model(), optimizers.Adam(0.01), x, y, xt, yt, batch_size=64,
                      progress=False, log=lambda s: None)
    results = trainer.fit(5)
    assert results[-1].train_accuracy > 0.9
    assert results[-1].test_accuracy > 0.9
    assert results[-1].train_loss < results[0].train_loss


def test_trainer_checks_its_arguments():
    with pytest.raises(ValueError, match="differ in length"):
        Trainer(mlp_model(), sgd(), X_TRAIN, Y_TRAIN[:-1], X_TEST, Y_TEST)


def test_trainer_logs_one_line_per_epoch():
    lines: list[str] = []
    trainer = Trainer(mlp_model(), sgd(), X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, batch_size=BATCH,
                      progress=False, log=lines.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit(2)
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ")


def test_mid_epoch_resume_reports_the_whole_epochs_metrics(tmp_path):
    ref = make_trainer(mlp_model(), sgd(), tmp_path / "ref")
    expected = ref.fit(2)[1]
    first = make_trainer(mlp_model(), sgd(), tmp_path / "run")
    record_steps(first, stop_at=STEPS_PER_EPOCH + 3)
    with pytest.raises(Interrupted):
        first.fit(2)
    resumed = make_trainer(mlp_model(), sgd(), tmp_path / "run")
    assert resumed.restore()
    got = resumed.fit(2)[0]
    assert got.epoch == 2
    assert got.train_loss == pytest.approx(expected.train_loss, rel=1e-12)
    assert got.train_accuracy == expected.train_accuracy


@pytest.mark.parametrize("change", [{"seed": 8}, {"batch_size": 16}])
def test_resume_refuses_another_seed_or_batch_size(tmp_path, change):
    make_trainer(mlp_model(), sgd(), tmp_path).fit(1)
    kw = {"batch_size": BATCH, "seed": 7, **change}
    other = Trainer(mlp_model(), sgd(), X_TRAIN, Y_TRAIN, X_TEST, Y_TEST,
                    checkpoint_dir=str(tmp_path), progress=False, log=lambda s: None, **kw)
    key = next(iter(change))
    with pytest.raises(ValueError, match=f"trained with {key}"):
        other.restore()


def test_a_new_run_removes_the_temp_folder_of_a_killed_save(tmp_path):
    junk = tmp_path / ".tmp-ckpt-killed"  # seconds old: the one-hour rule would keep it
    junk.mkdir()
    (junk / ckpt.TENSORS_FILE).write_bytes(b"x" * 5000)
    make_trainer(mlp_model(), sgd(), tmp_path).fit(1)
    assert not junk.exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [f"ckpt-{STEPS_PER_EPOCH:09d}"]


def test_a_resumed_epoch_reports_the_rate_of_its_own_samples(tmp_path):
    metrics = tmp_path / "m.jsonl"
    first = make_trainer(mlp_model(), sgd(), tmp_path / "ck", metrics_path=str(metrics))
    record_steps(first, stop_at=6)
    with pytest.raises(Interrupted):
        first.fit(1)
    second = make_trainer(mlp_model(), sgd(), tmp_path / "ck", metrics_path=str(metrics))
    assert second.restore() and second.step == 6
    result = second.fit(1)[0]
    # samples/s times the epoch's seconds is what this process trained: steps 7 and 8 only
    assert result.samples_per_second * result.seconds == pytest.approx(N_TRAIN - 6 * BATCH)
    epoch = [json.loads(x) for x in metrics.read_text().splitlines()][-1]
    assert epoch["samples_per_second"] == result.samples_per_second
    assert epoch["loss"] == pytest.approx(result.train_loss)  # the whole epoch's loss
