"""Gradients the caller keeps are never overwritten, whichever of them it keeps.

The distributed tape reuses its reduction buffers from step to step (pool leases on the MPI
path, a lease of this rank's slot in the shared window on the shared-memory path), so these
tests hold every subset of one bucket's gradients across later steps and compare them with
copies, on the shared-memory path, with ``shared_memory=False`` and on one process.

    python -m pytest tests/distributed/test_mpi_held.py                 # the local cases
    OMP_NUM_THREADS=1 mpiexec -n 2 python -m pytest --with-mpi -q tests/distributed
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import tapeflow as tp
from tapeflow.distributed import DistributedGradientTape, LocalCommunicator


def _mean(arrays):
    return np.mean(np.stack(arrays), axis=0)


def _held_model():
    """Three variables whose gradients share one bucket of > 64 KiB (the shared-memory path)."""
    rng = np.random.default_rng(42)
    w1 = tp.Variable(rng.standard_normal((120, 100)).astype(np.float32) * 0.1, name="w1")
    w2 = tp.Variable(rng.standard_normal((100, 60)).astype(np.float32) * 0.1, name="w2")
    b2 = tp.Variable(np.zeros(60, np.float32), name="b2")
    return [w1, w2, b2]


def _held_loss(vs, r: int, step: int):
    x = np.random.default_rng([r, step, 3]).standard_normal((4, 120)).astype(np.float32)
    h = tp.tanh(tp.matmul(tp.constant(x), vs[0]))
    return tp.reduce_sum(tp.square(tp.matmul(h, vs[1]) + vs[2]))


_HELD_EXPECTED: dict = {}


def _held_expected(size: int, step: int) -> list:
    """The mean over ranks of each rank's plain-tape gradients at ``step``."""
    if (size, step) not in _HELD_EXPECTED:
        per_rank = []
        for r in range(size):
            vs = _held_model()
            with tp.GradientTape() as tape:
                loss = _held_loss(vs, r, step)
            per_rank.append([g.numpy() for g in tape.gradient(loss, vs)])
        _HELD_EXPECTED[size, step] = [_mean([p[k] for p in per_rank]) for k in range(3)]
    return _HELD_EXPECTED[size, step]


_SUBSETS = [s for n in range(4) for s in itertools.combinations(range(3), n)]


@pytest.mark.parametrize("held", _SUBSETS, ids=lambda s: "hold-" + ("-".join(map(str, s))
                                                                     or "none"))
@pytest.mark.parametrize("path", [pytest.param("shared-memory", marks=pytest.mark.mpi),
                                  pytest.param("mpi", marks=pytest.mark.mpi), "local"])
def test_held_gradients_never_change(request, path, held):
    if path == "local":
        comm = LocalCommunicator()
    else:
        comm = request.getfixturevalue("comm" if path == "shared-memory" else "mpi_only")
    vs = _held_model()

    def step(s):
        with DistributedGradientTape(tp.GradientTape(), comm) as tape:
            loss = _held_loss(vs, comm.rank, s)
        grads = tape.gradient(loss, vs)
        assert tape.stats["buckets"] == 1 and not tape.skipped
        return grads, tape.stats["reduction"]

    step(0)  # warm-up: the plan exists and the shared window has grown
    grads, reduction = step(0)
    assert reduction == ("local" if path == "local" else "shared-memory"
                         if getattr(comm, "shared_memory", False) else "mpi")
    kept = {k: grads[k] for k in held}
    copies = {k: grads[k].numpy().copy() for k in held}
    del grads
    for s in (1, 2, 3):
        later, _ = step(s)
        for k, g in enumerate(later):  # the reused buffers hold this step's results
            np.testing.assert_allclose(g.numpy(), _held_expected(comm.size, s)[k], rtol=1e-5,
                                       atol=1e-6)
        for k in held:
            np.testing.assert_array_equal(kept[k].numpy(), copies[k], err_msg=f"gradient {k}")
        del later
    for k in held:
        np.testing.assert_allclose(copies[k], _held_expected(comm.size, 0)[k], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.mpi
def test_a_gradient_held_on_one_rank_only_and_after_close(comm):
    if comm.backend != "mpi":
        pytest.skip("MPI only")
    from tapeflow.distributed import MPICommunicator

    own = MPICommunicator(stall_timeout=60)
    vs = _held_model()

    def step(s):
        with DistributedGradientTape(tp.GradientTape(), own) as tape:
            loss = _held_loss(vs, own.rank, s)
        return tape.gradient(loss, vs)

    step(0)
    first = step(0)
    held = first[1] if own.rank == 0 else None  # ranks hold different things
    copy = first[1].numpy().copy()
    del first
    for s in (1, 2):
        later = step(s)
        np.testing.assert_allclose(later[0].numpy(), _held_expected(own.size, s)[0], rtol=1e-5,
                                   atol=1e-6)
    huge = own.allreduce(np.ones(3_000_000, np.float32), "sum")  # the window grows
    own.close()  # results still held view the old windows: they stay mapped and unchanged
    np.testing.assert_array_equal(huge[::100_000], own.size)
    for k, g in enumerate(later):
        np.testing.assert_allclose(g.numpy(), _held_expected(own.size, 2)[k], rtol=1e-5,
                                   atol=1e-6)
    if held is not None:
        np.testing.assert_array_equal(held.numpy(), copy)
    np.testing.assert_allclose(copy, _held_expected(own.size, 0)[1], rtol=1e-5, atol=1e-6)
