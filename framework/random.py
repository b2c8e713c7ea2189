"""Seeded random numbers (``tp.random``): one global generator, reproducible and saveable."""
from __future__ import annotations

import numpy as np

from .devices import place  # drawn on the host (seeded), then on the tp.device scope's device
from .symdim import has_dim
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
    return _drawn("uniform", shape, minval, maxval, as_dtype(dtype), seed)


def normal(shape, mean=0.0, stddev=1.0, dtype="float32", seed=None) -> Tensor:
    """Normal draws; inside ``tp.function``, fresh ones every call."""
    return _drawn("normal", shape, mean, stddev, as_dtype(dtype), seed)


def _draw(_anchor=None, *, law, shape, a, b, dtype, seed):
    arr = getattr(generator(seed), law)(a, b, size=shape).astype(dtype)
    return place(arr) if _anchor is None else arr


def _drawn(law: str, shape, a, b, dtype, seed) -> Tensor:
    """A draw of ``shape`` as a Tensor; while ``tp.function`` traces, a value drawn again on
    every call (as TensorFlow's stateful random ops), and the trace's own draws are undone
    so the generator advances once per call, as eagerly. A shape with a ``None`` dimension
    of a symbolic trace is drawn in each call's size."""
    if not _TRACE:
        return Tensor(_draw(law=law, shape=tuple(int(d) for d in shape), a=a, b=b,
                            dtype=dtype, seed=seed))
    from . import ops
    shape = ops._shape_arg(shape)
    if has_dim(shape):
        return ops.sized(_traced_draw, shape, law=law, a=a, b=b, dtype=dtype, seed=seed)

    def draw():
        return (_draw(law=law, shape=shape, a=a, b=b, dtype=dtype, seed=seed),)
    t = Tensor(undone(draw)[0])
    _TRACE[-1].effect(draw, (), (t,))
    return t


def _traced_draw(anchor, shape, **params):
    if _TRACE:
        return undone(lambda: _draw(anchor, shape=shape, **params))
    return _draw(anchor, shape=shape, **params)


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
