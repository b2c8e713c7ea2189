"""Seeded random numbers (``tp.random``): one global generator, reproducible and saveable."""
from __future__ import annotations

import numpy as np

from .devices import place  # drawn on the host (seeded), then on the tp.device scope's device
from .tensor import Tensor, as_dtype

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
    g = generator(seed)
    return Tensor(place(g.uniform(minval, maxval, size=tuple(shape)).astype(as_dtype(dtype))))


def normal(shape, mean=0.0, stddev=1.0, dtype="float32", seed=None) -> Tensor:
    g = generator(seed)
    return Tensor(place(g.normal(mean, stddev, size=tuple(shape)).astype(as_dtype(dtype))))


def get_state() -> dict:
    """The generator's state as plain JSON-able data (for checkpoints; no pickle)."""
    return _gen.bit_generator.state


def set_state(state: dict) -> None:
    """Restore a state from :func:`get_state`."""
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    global _gen
    _gen = np.random.Generator(bitgen)
