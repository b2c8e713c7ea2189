"""``tp.keras.utils``: ``to_categorical`` and ``set_random_seed``."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import random as tp_random
from ..tensor import Tensor, as_dtype

__all__ = ["to_categorical", "set_random_seed", "clear_session"]


def to_categorical(x: Any, num_classes: int | None = None, dtype="float32") -> np.ndarray:
    """One-hot rows (a NumPy array, as Keras returns) for integer class labels ``x``; a
    trailing axis of size 1 is dropped first. ``num_classes`` defaults to ``max(x) + 1``."""
    labels = np.asarray(x.numpy() if isinstance(x, Tensor) else x)
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(labels == np.trunc(labels)):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"to_categorical: labels must be integer classes, got dtype "
                             f"{labels.dtype}")
    if labels.ndim > 1 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    n = int(labels.max()) + 1 if num_classes is None and labels.size else int(num_classes or 0)
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(f"to_categorical: labels must lie in [0, {n}), got values from "
                         f"{int(labels.min())} to {int(labels.max())}")
    return (np.arange(n) == labels[..., None]).astype(as_dtype(dtype))


def set_random_seed(seed: int) -> None:
    """Seed tapeflow's global generator (``tp.random.set_seed``)."""
    tp_random.set_seed(seed)


def clear_session(free_memory: bool = True) -> None:
    """Keras's ``clear_session``: default layer names start again (``dense``, ``dense_1``)."""
    from ..nn import modules

    modules.clear_names()
