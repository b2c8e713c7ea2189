"""``Trainer`` under MPI: global-batch semantics make the run independent of the world size.

Each rank trains with ``tape_factory(comm)`` and, as the reference, a LOCAL ``Trainer``
(``comm=None``) on the same data; per-step global losses must agree within float summation
order, and every rank must end with identical parameters.

    OMP_NUM_THREADS=1 mpiexec -n 2 python -m pytest --with-mpi -q tests/distributed
"""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import optimizers
from tapeflow.distributed import LocalCommunicator, broadcast_variables, tape_factory
from tapeflow.training import Trainer

N_TRAIN, N_TEST, FEATURES = 800, 101, 20


def _dataset():
    rng = np.random.default_rng(1234)
    teacher = rng.standard_normal((FEATURES, 10)).astype(np.float32)
    x = rng.standard_normal((N_TRAIN + N_TEST, FEATURES)).astype(np.float32)
    y = (x @ teacher + 0.5 * rng.standard_normal((len(x), 10))).argmax(axis=1).astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


class _Recording(Trainer):
    """Records each step's (summed loss, correct, shard size) on this rank."""

    def __post_init__(self):
        super().__post_init__()
        self.records: list[tuple[float, int, int]] = []

    def train_step(self, x, y, global_count):
        loss, correct = super().train_step(x, y, global_count)
        self.records.append((loss, correct, len(x)))
        return loss, correct


def _trainer(comm, batch_size, data=None, cls=_Recording, traced=False):
    xtr, ytr, xte, yte = data if data is not None else _dataset()
    model = tp.nn.mlp([FEATURES, 16, 10], seed=0)
    opt = optimizers.get("sgd", learning_rate=0.1, momentum=0.9)
    kwargs = {} if comm is None else {"comm": comm, "gradient_tape": tape_factory(comm)}
    t = cls(model, opt, xtr, ytr, xte, yte, batch_size=batch_size, seed=5, progress=False,
            log=lambda s: None, log_every=0, use_function=traced, **kwargs)
    if comm is not None:
        broadcast_variables(model.variables, root=0, comm=comm)
    return t


def _global_step_losses(trainer, comm) -> np.ndarray:
    """Per step: the sum over ranks of the shard losses / the global batch (= global mean)."""
    rec = np.array(trainer.records, np.float64).reshape(-1, 3)
    totals = comm.allreduce(np.ascontiguousarray(rec), op="sum")
    return totals[:, 0] / totals[:, 2]


def _params(trainer) -> np.ndarray:
    return np.concatenate([v.numpy().ravel() for v in trainer.variables])


def _assert_identical_on_all_ranks(comm, params: np.ndarray) -> None:
    parts = comm.allgather(params[None])  # one row per rank
    assert parts.shape == (comm.size, params.size)
    for r, p in enumerate(parts):
        np.testing.assert_array_equal(p, parts[0], err_msg=f"rank {r} parameters differ")


def _check_world_size_invariance(comm, batch_size, epochs, traced=False):
    dist_t = _trainer(comm, batch_size, traced=traced)
    dist_res = dist_t.fit(epochs)
    ref = _trainer(None, batch_size)
    ref_res = ref.fit(epochs)
    steps = epochs * -(-N_TRAIN // batch_size)
    assert dist_t.step == ref.step == steps
    losses = _global_step_losses(dist_t, comm)
    ref_losses = np.array([r[0] / r[2] for r in ref.records])
    assert len(losses) == steps and np.isfinite(losses).all()
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert losses[-1] < losses[0]  # it trained
    # every rank processed its own shard: the shard sizes add up to the global batches
    counts = comm.allreduce(np.array([r[2] for r in dist_t.records], np.float64), op="sum")
    expected = [min(batch_size, N_TRAIN - s * batch_size) for s in range(steps // epochs)]
    np.testing.assert_array_equal(counts, expected * epochs)
    params = _params(dist_t)
    _assert_identical_on_all_ranks(comm, params)
    np.testing.assert_allclose(params, _params(ref), rtol=1e-4, atol=1e-5)
    for d, r in zip(dist_res, ref_res):
        assert d.steps == r.steps and d.epoch == r.epoch
        for name in ("train_loss", "test_loss"):
            assert getattr(d, name) == pytest.approx(getattr(r, name), rel=1e-5), name
        for name in ("train_accuracy", "test_accuracy"):
            assert getattr(d, name) == pytest.approx(getattr(r, name), abs=1.5 / N_TEST), name
    assert dist_t.skipped_steps == 0


# ``traced``: each step through tp.function, the reduction part of the replayed plan
@pytest.mark.mpi
@pytest.mark.parametrize("traced", [False, True])
def test_fifty_steps_match_a_single_process(comm, traced):
    # 800 examples, global batch 32: 25 steps per epoch, 50 steps in all
    _check_world_size_invariance(comm, batch_size=32, epochs=2, traced=traced)


@pytest.mark.mpi
@pytest.mark.parametrize("traced", [False, True])
def test_uneven_split_of_the_global_batch(comm, traced):
    # 33 does not divide by 2 or 4: shards of 17 + 16 (or 9 + 8 + 8 + 8); last batch 8
    _check_world_size_invariance(comm, batch_size=33, epochs=1, traced=traced)


@pytest.mark.mpi
def test_traced_steps_train_exactly_like_eager_ones_on_every_rank(comm):
    eager, traced = _trainer(comm, 33), _trainer(comm, 33, traced=True)
    eager.fit(1)
    traced.fit(1)
    assert [r[0] for r in traced.records] == [r[0] for r in eager.records]
    np.testing.assert_array_equal(_params(traced), _params(eager))


@pytest.mark.mpi
def test_evaluation_is_exact(comm):
    xtr, ytr, xte, yte = _dataset()
    t = _trainer(comm, 32)
    ref = _trainer(None, 32)
    for v, rv in zip(t.variables, ref.variables):
        np.testing.assert_array_equal(v.numpy(), rv.numpy())
    for batch in (1000, 7):  # one batch per rank, and several ragged ones
        loss, acc = t.evaluate(xte, yte, batch_size=batch)
        ref_loss, ref_acc = ref.evaluate(xte, yte, batch_size=batch)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        assert acc == ref_acc  # an exact count: no example missing or counted twice
    # and against a direct computation over the 101 examples
    logits = ref.model(tp.constant(xte), training=False).numpy().astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(len(yte)), yte].mean(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == yte).mean(), abs=1e-12)
    assert len(yte) == N_TEST


@pytest.mark.mpi
def test_batch_smaller_than_world_is_refused(comm):
    if comm.size == 1:
        pytest.skip("every batch of >= 1 example is valid on one rank")
    with pytest.raises(ValueError, match="global batch"):
        _trainer(comm, comm.size - 1)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nonfinite_step_is_skipped_by_every_rank(comm, traced):
    from tapeflow import data

    xtr, ytr, xte, yte = _dataset()
    xtr = xtr.copy()
    first = next(data.batches(N_TRAIN, 32, seed=5, epoch=0))
    xtr[first[-1], 0] = np.nan  # one example in the last rank's shard of step 1
    t = _trainer(comm, 32, data=(xtr, ytr, xte, yte), traced=traced)
    t.fit(1)
    assert t.skipped_steps == 1  # on every rank, not only the last
    params = _params(t)
    assert np.isfinite(params).all()
    _assert_identical_on_all_ranks(comm, params)


def test_local_trainer_with_local_communicator_matches_no_comm():
    # plain pytest: the distributed code path with a size-1 communicator
    a = _trainer(LocalCommunicator(), 33)
    b = _trainer(None, 33)
    a.fit(1)
    b.fit(1)
    np.testing.assert_array_equal(_params(a), _params(b))
    assert [r[0] for r in a.records] == [r[0] for r in b.records]


@pytest.mark.mpi
@pytest.mark.parametrize("traced", [False, True])
def test_last_batch_smaller_than_the_world(comm, traced):
    # 65 examples, global batch 32: the last batch has 1 example, so ranks 1.. get empty shards;
    # a 1-example test set leaves ranks 1.. without evaluation work
    xtr, ytr, xte, yte = _dataset()
    data = (xtr[:65], ytr[:65], xte[:1], yte[:1])
    dist_t, ref = _trainer(comm, 32, data=data, traced=traced), _trainer(None, 32, data=data)
    d_res, r_res = dist_t.fit(2), ref.fit(2)
    assert dist_t.step == ref.step == 6
    np.testing.assert_allclose(_global_step_losses(dist_t, comm),
                               [r[0] / r[2] for r in ref.records], rtol=1e-5)
    for d, r in zip(d_res, r_res):
        assert d.train_loss == pytest.approx(r.train_loss, rel=1e-5)
        assert d.test_loss == pytest.approx(r.test_loss, rel=1e-5)
        assert d.test_accuracy == r.test_accuracy
    _assert_identical_on_all_ranks(comm, _params(dist_t))
