"""Learning-rate schedules: callables ``schedule(step) -> float`` (Keras 3 semantics).

``step`` is the optimizer's ``iterations`` before the update (0 for the first step), as in
Keras. Every schedule has ``get_config()``; :func:`serialize` / :func:`deserialize` turn one
into a JSON-able dict and back, so checkpoints can store them without pickle.

Example:
    >>> s = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    >>> round(s(10), 6)
    0.05
    >>> deserialize(serialize(s))(10) == s(10)
    True
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import math
from typing import Any, Callable, Sequence, Union

__all__ = [
    "LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay",
    "LinearWarmup", "PolynomialDecay", "InverseTimeDecay", "CosineDecayRestarts", "serialize",
    "deserialize",
]


class LearningRateSchedule(ABC):
    """Base class: subclasses implement ``__call__(step) -> float`` and ``get_config()``."""

    @abstractmethod
    def __call__(self, step: int) -> float:
        """The learning rate at optimizer step ``step`` (0-based)."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LearningRateSchedule":
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


LearningRate = Union[float, LearningRateSchedule, Callable[[int], float]]


class ExponentialDecay(LearningRateSchedule):
    """``lr(step) = initial_learning_rate * decay_rate ** (step / decay_steps)``; with
    ``staircase=True`` the exponent is ``floor(step / decay_steps)``."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False) -> None:
        if decay_steps <= 0:
            raise ValueError(f"{type(self).__name__}: decay_steps must be > 0, got "
                             f"{decay_steps}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = decay_steps
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)

    def __call__(self, step: int) -> float:
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate**p

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                "PiecewiseConstantDecay: values must have exactly one more entry than "
                f"boundaries; got {len(boundaries)} boundaries and {len(values)} values")
        if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
            raise ValueError(f"PiecewiseConstantDecay: boundaries must increase, got "
                             f"{list(boundaries)}")
        self.boundaries = list(boundaries)
        self.values = [float(v) for v in values]

    def __call__(self, step: int) -> float:
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values}


class CosineDecay(LearningRateSchedule):
    """Cosine decay with optional linear warm-up (Keras 3).

    Without ``warmup_target``: ``lr = initial * ((1 - alpha) * c + alpha)`` with
    ``c = 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps))``.
    With ``warmup_target``: for ``step < warmup_steps`` rise linearly from
    ``initial_learning_rate`` to ``warmup_target``; then decay from ``warmup_target`` as
    above over ``step - warmup_steps`` (capped at ``decay_steps``).
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0,
                 warmup_target: float | None = None, warmup_steps: int = 0) -> None:
        if decay_steps <= 0:
            raise ValueError(f"CosineDecay: decay_steps must be > 0, got {decay_steps}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = decay_steps
        self.alpha = float(alpha)
        self.warmup_target = None if warmup_target is None else float(warmup_target)
        self.warmup_steps = warmup_steps

    def _decay(self, step: float, from_lr: float) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, self.decay_steps) / self.decay_steps))
        return from_lr * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step: int) -> float:
        if self.warmup_target is None:
            return self._decay(step, self.initial_learning_rate)
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.initial_learning_rate + (
                self.warmup_target - self.initial_learning_rate) * frac
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


class LinearWarmup(LearningRateSchedule):
    """Linear warm-up in front of a constant or a schedule.

    For ``step < warmup_steps``: ``initial + (target(0) - initial) * step / warmup_steps``;
    afterwards ``target(step - warmup_steps)``, so the wrapped schedule starts after the
    warm-up (continuous at ``step == warmup_steps``). ``target`` is a float or a schedule.
    """

    def __init__(self, schedule_or_lr: float | LearningRateSchedule, warmup_steps: int,
                 initial: float = 0.0) -> None:
        if warmup_steps < 0:
            raise ValueError(f"LinearWarmup: warmup_steps must be >= 0, got {warmup_steps}")
        if not isinstance(schedule_or_lr, (int, float, LearningRateSchedule)):
            raise TypeError("LinearWarmup: schedule_or_lr must be a float or a "
                            f"LearningRateSchedule, got {type(schedule_or_lr).__name__}")
        self.target = (schedule_or_lr if isinstance(schedule_or_lr, LearningRateSchedule)
                       else float(schedule_or_lr))
        self.warmup_steps = warmup_steps
        self.initial = float(initial)

    def _target(self, step: float) -> float:
        return self.target(step) if callable(self.target) else self.target

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.initial + (self._target(0) - self.initial) * step / self.warmup_steps
        return self._target(step - self.warmup_steps)

    def get_config(self) -> dict[str, Any]:
        target = serialize(self.target) if callable(self.target) else self.target
        return {"schedule_or_lr": target, "warmup_steps": self.warmup_steps,
                "initial": self.initial}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LinearWarmup":
        config = dict(config)
        if isinstance(config["schedule_or_lr"], dict):
            config["schedule_or_lr"] = deserialize(config["schedule_or_lr"])
        return cls(**config)


class PolynomialDecay(LearningRateSchedule):
    """Polynomial decay from ``initial_learning_rate`` to ``end_learning_rate`` (Keras)::

        step' = min(step, decay_steps)                       (cycle=False)
        decay_steps' = decay_steps * ceil(step / decay_steps)  (cycle=True; 1 period at step 0)
        lr = (initial - end) * (1 - step' / decay_steps') ** power + end
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int,
                 end_learning_rate: float = 0.0001, power: float = 1.0,
                 cycle: bool = False) -> None:
        if decay_steps <= 0:
            raise ValueError(f"PolynomialDecay: decay_steps must be > 0, got {decay_steps}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = decay_steps
        self.end_learning_rate = float(end_learning_rate)
        self.power = float(power)
        self.cycle = bool(cycle)

    def __call__(self, step: int) -> float:
        steps = self.decay_steps
        if self.cycle:
            steps = steps * max(math.ceil(step / steps), 1)
        else:
            step = min(step, steps)
        frac = 1.0 - step / steps
        return ((self.initial_learning_rate - self.end_learning_rate) * frac**self.power
                + self.end_learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "end_learning_rate": self.end_learning_rate,
                "power": self.power, "cycle": self.cycle}


class InverseTimeDecay(ExponentialDecay):
    """``lr = initial_learning_rate / (1 + decay_rate * step / decay_steps)`` (Keras); with
    ``staircase=True`` the ratio ``step / decay_steps`` is floored. (Same arguments as
    :class:`ExponentialDecay`, another decay law.)"""

    def __call__(self, step: int) -> float:
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate / (1.0 + self.decay_rate * p)


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR, Loshchilov & Hutter), Keras semantics.

    The first period lasts ``first_decay_steps``; each next one ``t_mul`` times longer and
    starting ``m_mul`` times lower. Within a period at fraction ``f``:
    ``lr = initial * ((1 - alpha) * 0.5 * m_mul**i * (1 + cos(pi * f)) + alpha)``.
    """

    def __init__(self, initial_learning_rate: float, first_decay_steps: int,
                 t_mul: float = 2.0, m_mul: float = 1.0, alpha: float = 0.0) -> None:
        if first_decay_steps <= 0:
            raise ValueError(f"CosineDecayRestarts: first_decay_steps must be > 0, got "
                             f"{first_decay_steps}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.first_decay_steps = first_decay_steps
        self.t_mul = float(t_mul)
        self.m_mul = float(m_mul)
        self.alpha = float(alpha)

    def _period(self, fraction: float) -> tuple[int, float]:
        """(restart index, fraction of the way through that period)."""
        if self.t_mul == 1.0:
            i = math.floor(fraction)
            return i, fraction - i
        i = math.floor(math.log(1.0 - fraction * (1.0 - self.t_mul)) / math.log(self.t_mul))
        done = (1.0 - self.t_mul**i) / (1.0 - self.t_mul)  # periods before i, in first periods
        return i, (fraction - done) / self.t_mul**i

    def __call__(self, step: int) -> float:
        i, frac = self._period(step / self.first_decay_steps)
        cosine = 0.5 * self.m_mul**i * (1.0 + math.cos(math.pi * frac))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate,
                "first_decay_steps": self.first_decay_steps, "t_mul": self.t_mul,
                "m_mul": self.m_mul, "alpha": self.alpha}


_REGISTRY = {c.__name__: c for c in
             (ExponentialDecay, PiecewiseConstantDecay, CosineDecay, LinearWarmup, PolynomialDecay,
              InverseTimeDecay, CosineDecayRestarts)}


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """``{"class_name": ..., "config": {...}}``, JSON-able."""
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config: dict[str, Any]) -> LearningRateSchedule:
    """Inverse of :func:`serialize` (only the schedules of this module; no code is run)."""
    name = config.get("class_name")
    if name not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name].from_config(config["config"])
