"""The optimizers: each declares its hyperparameters once and names its pure rule.

All take the keyword-only options of :class:`~tapeflow.optimizers.base.Optimizer`
(``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``name``). Defaults and
formulas are Keras 3's; each rule's docstring in ``rules.py`` gives the exact update.

Example:
    >>> import numpy as np, tapeflow as tp
    >>> w = tp.Variable(np.array([1.0, 2.0], np.float32))
    >>> opt = SGD(learning_rate=0.1)
    >>> opt.apply_gradients([(np.array([1.0, 1.0], np.float32), w)])
    1
    >>> w.numpy()
    array([0.9, 1.9], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass

from . import rules
from .base import Optimizer
from .schedules import LearningRate

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam", "Lion"]


@dataclass(eq=False)
class SGD(Optimizer):
    """Gradient descent with optional momentum (Keras): ``v <- momentum * v - lr * g``;
    ``p <- p + v``, or with ``nesterov=True`` ``p <- p + momentum * v - lr * g``.
    With ``momentum=0``: ``p <- p - lr * g``. ``weight_decay`` is decoupled (Keras 3):
    ``p <- p - p * weight_decay * lr`` before the update."""

    learning_rate: LearningRate = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    rule_factory = staticmethod(rules.sgd)

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1], got {self.momentum}")
        super().__post_init__()


@dataclass(eq=False)
class Adam(Optimizer):
    """Adam (Kingma & Ba), Keras epsilon placement: with
    ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``,
    ``p <- p - alpha * m / (sqrt(v) + epsilon)``; ``amsgrad`` uses ``max`` of past ``v``."""

    learning_rate: LearningRate = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    amsgrad: bool = False
    rule_factory = staticmethod(rules.adam)


@dataclass(eq=False)
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), Keras 3: before the Adam
    update, ``p <- p - p * weight_decay * lr``. Signature as Keras:
    ``AdamW(learning_rate=0.001, weight_decay=0.004, beta_1=0.9, ...)``."""

    weight_decay: float | None = 0.004


@dataclass(eq=False)
class RMSprop(Optimizer):
    """RMSprop (Hinton), Keras: ``v <- rho v + (1-rho) g^2``,
    ``p <- p - lr * g / sqrt(v + epsilon)`` (epsilon inside the root); ``centered`` subtracts
    the squared mean gradient inside the root; ``momentum`` accumulates the increments."""

    learning_rate: LearningRate = 0.001
    rho: float = 0.9
    momentum: float = 0.0
    epsilon: float = 1e-7
    centered: bool = False
    rule_factory = staticmethod(rules.rmsprop)


@dataclass(eq=False)
class Adagrad(Optimizer):
    """Adagrad, Keras: ``acc <- acc + g^2`` (from ``initial_accumulator_value``),
    ``p <- p - lr * g / sqrt(acc + epsilon)``."""

    learning_rate: LearningRate = 0.001
    initial_accumulator_value: float = 0.1
    epsilon: float = 1e-7
    rule_factory = staticmethod(rules.adagrad)


@dataclass(eq=False)
class Adadelta(Optimizer):
    """Adadelta (Zeiler), Keras: ``delta = -sqrt(adv + eps) * g / sqrt(ag + eps)``,
    ``p <- p + lr * delta`` (note Keras's default lr=0.001, not the paper's 1.0)."""

    learning_rate: LearningRate = 0.001
    rho: float = 0.95
    epsilon: float = 1e-7
    rule_factory = staticmethod(rules.adadelta)


@dataclass(eq=False)
class Adamax(Optimizer):
    """Adamax, Keras: ``u <- max(beta_2 u, |g|)``,
    ``p <- p - lr * m / ((1 - beta_1^t) * (u + epsilon))``."""

    learning_rate: LearningRate = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    rule_factory = staticmethod(rules.adamax)


@dataclass(eq=False)
class Nadam(Optimizer):
    """Nadam (Dozat), Keras's momentum-cache form with decay 0.96:
    ``p <- p - lr * m_hat / (sqrt(v_hat) + epsilon)``; see :func:`rules.nadam`."""

    learning_rate: LearningRate = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    rule_factory = staticmethod(rules.nadam)


@dataclass(eq=False)
class Lion(Optimizer):
    """Lion (Chen et al. 2023), Keras: ``p <- p - lr * sign(beta_1 m + (1 - beta_1) g)``, then
    ``m <- beta_2 m + (1 - beta_2) g``. Sign updates have a large norm: use a learning rate
    3-10x smaller than AdamW's (Keras's advice)."""

    learning_rate: LearningRate = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.99
    rule_factory = staticmethod(rules.lion)

    def __post_init__(self) -> None:
        if not 0.0 < self.beta_1 <= 1.0:
            raise ValueError(f"Lion: beta_1 must be in (0, 1], got {self.beta_1}")
        super().__post_init__()
