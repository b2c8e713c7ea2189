"""Seeded random numbers (``tp.random``): one global generator, reproducible and saveable."""
from __future__ import annotations

import numpy as np

from .devices import place  # drawn on the host (seeded), then on the tp.device scope's device
from .tensor import _TRACE, Tensor, as_dtype

__all__ = ["set_seed", "uniform", "normal", "generator", "get_state", "set_state"]

_gen = np.random.default_rng(0)


def set_seed(seed: int) -> None:
    """Reseed the global generator (``tf.random.set_seed``)."""
    global _gen
    _gen = np.random.default_rng(int(seed))


def generator(seed: int | None = None) -> np.random.Generator:
    """The global generator, or a fresh one for an explicit ``seed``."""
    return _gen if seed is None else np.random.default_rng(int(seed))


def uniform(shape, minval=0.0, maxval=1.0, dtype="float32", seed=None) -> Tensor:
    """Uniform draws in ``[minval, maxval)``; inside ``tp.function``, fresh ones every call."""
    shape, dtype = tuple(shape), as_dtype(dtype)
    return _drawn(lambda: (place(generator(seed).uniform(minval, maxval, size=shape)
                                 .astype(dtype)),))


def normal(shape, mean=0.0, stddev=1.0, dtype="float32", seed=None) -> Tensor:
    """Normal draws; inside ``tp.function``, fresh ones every call."""
    shape, dtype = tuple(shape), as_dtype(dtype)
    return _drawn(lambda: (place(generator(seed).normal(mean, stddev, size=shape)
                                 .astype(dtype)),))


def _drawn(draw) -> Tensor:
    """``draw()``'s array as a Tensor; while ``tp.function`` traces, a value drawn again on
    every call (as TensorFlow's stateful random ops), and the trace's own draw is undone so
    the generator advances once per call, as eagerly."""
    if not _TRACE:
        return Tensor(draw()[0])
    t = Tensor(undone(draw)[0])
    _TRACE[-1].effect(draw, (), (t,))
    return t


def undone(draw, *args):
    """``draw(*args)`` with the global generator left as it was (a draw made while tracing,
    which every replay makes again)."""
    state = get_state()
    try:
        return draw(*args)
    finally:
        set_state(state)


def get_state() -> dict:
    """The generator's state as plain JSON-able data (for checkpoints; no pickle)."""
    return _gen.bit_generator.state


def set_state(state: dict) -> None:
    """Restore a state from :func:`get_state`."""
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    global _gen
    _gen = np.random.Generator(bitgen)
