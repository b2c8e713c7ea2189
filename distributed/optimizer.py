"""``DistributedOptimizer``: any tapeflow optimizer, with gradients reduced over the ranks first.

Horovod's other spelling of data parallelism: compute local gradients with a plain
``GradientTape``, and let the wrapped optimizer's ``apply_gradients`` reduce them (one checked,
fused reduction through the communicator's reducer, like ``DistributedGradientTape``'s) before
it updates. With ``backward_passes_per_step=k`` the local gradients of ``k`` calls are summed
and reduced once, on the k-th call, which alone updates the variables.

>>> import tapeflow as tp, tapeflow.distributed as dist
>>> from tapeflow import optimizers
>>> w = tp.Variable([1.0, 2.0])
>>> opt = dist.DistributedOptimizer(optimizers.SGD(learning_rate=0.5))
>>> with tp.GradientTape() as tape:
...     loss = tp.reduce_sum(w * w)
>>> opt.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
>>> w.numpy().tolist()
[0.0, 0.0]
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from tapeflow.tape import GradientTape
from tapeflow.tensor import Tensor
from tapeflow.trace import replayed

from .base import Communicator
from .registry import get_comm
from .tape import DEFAULT_BUCKET_BYTES, DistributedGradientTape

__all__ = ["DistributedOptimizer"]


class DistributedOptimizer:
    """Wrap ``optimizer``; ``apply_gradients`` reduces (``op``: average or sum) and updates.

    Everything else (``learning_rate``, ``iterations``, ``get_state``...) is the wrapped
    optimizer's. ``compression="fp16"`` sends float16 on the wire. ``skipped`` is True after a
    step that every rank skipped because a reduced gradient was not finite."""

    def __init__(self, optimizer: Any, op: str = "average", compression: str | None = None,
                 backward_passes_per_step: int = 1, comm: Communicator | None = None,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, nonfinite: str = "skip"):
        if int(backward_passes_per_step) < 1:
            raise ValueError("DistributedOptimizer: backward_passes_per_step must be >= 1, got "
                             f"{backward_passes_per_step}")
        self._optimizer = optimizer
        self._comm = comm if comm is not None else get_comm()
        self._reducer = DistributedGradientTape(GradientTape(), self._comm, op=op,
                                                bucket_bytes=bucket_bytes,
                                                compression=compression, nonfinite=nonfinite)
        self.backward_passes_per_step = int(backward_passes_per_step)
        self._passes = 0
        self._sums: dict[int, np.ndarray] = {}
        self.skipped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)

    @property
    def optimizer(self) -> Any:
        """The wrapped optimizer."""
        return self._optimizer

    @replayed  # inside tp.function: the reduction and the update run on every replay
    def apply_gradients(self, grads_and_vars: Iterable) -> None:
        pairs = list(grads_and_vars)
        variables = [v for _, v in pairs]
        grads = [g for g, _ in pairs]
        self._passes += 1
        if self.backward_passes_per_step > 1:
            for k, g in enumerate(grads):
                if g is not None:
                    value = g._value if isinstance(g, Tensor) else np.asarray(g)
                    prev = self._sums.get(k)
                    self._sums[k] = value.copy() if prev is None else prev + value
            if self._passes < self.backward_passes_per_step:
                return
            grads = [Tensor(self._sums[k]) if k in self._sums else None
                     for k in range(len(variables))]
            self._sums = {}
        self._passes = 0
        reduced = self._reducer.reduce(grads, variables)
        self.skipped = self._reducer.skipped
        if self.skipped:
            return
        self._optimizer.apply_gradients(zip(reduced, variables))
