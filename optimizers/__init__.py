"""tapeflow.optimizers: Keras-style optimizers over pure update rules, gradient clipping and
learning-rate schedules.

Example:
    >>> import tapeflow.optimizers as optim
    >>> opt = optim.get("adam", learning_rate=optim.CosineDecay(1e-3, decay_steps=1000))
    >>> type(opt).__name__, opt.current_learning_rate
    ('Adam', 0.001)
"""

from __future__ import annotations

from typing import Any

from . import rules, schedules
from .algorithms import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, Nadam, RMSprop
from .base import Optimizer
from .clip import clip_by_global_norm, clip_by_norm, clip_by_value, global_norm
from .schedules import (CosineDecay, CosineDecayRestarts, ExponentialDecay,
                        InverseTimeDecay, LearningRateSchedule, LinearWarmup,
                        PiecewiseConstantDecay, PolynomialDecay)

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam",
    "Lion",
    "clip_by_norm", "clip_by_global_norm", "clip_by_value", "global_norm",
    "LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay",
    "LinearWarmup", "PolynomialDecay", "InverseTimeDecay", "CosineDecayRestarts", "get",
    "NAMES", "rules", "schedules",
]

_BY_NAME: dict[str, type[Optimizer]] = {
    "sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad,
    "adadelta": Adadelta, "adamax": Adamax, "nadam": Nadam, "lion": Lion,
}
#: the names :func:`get` accepts (for command-line choices)
NAMES: tuple[str, ...] = tuple(_BY_NAME)


def get(name: str, **kwargs: Any) -> Optimizer:
    """The optimizer called ``name`` (case-insensitive, e.g. ``"sgd"``, ``"adamw"``), built
    with ``kwargs``. Raises ``ValueError`` listing the valid names."""
    cls = _BY_NAME.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(NAMES)}")
    return cls(**kwargs)
