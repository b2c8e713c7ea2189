"""The one training loop: behind ``model.fit``, ``tapeflow-train`` and direct use, under MPI too.

Global-batch semantics: each step draws a *global* batch from the permutation of
``(seed, epoch)``; a data-parallel run splits it across ranks (uneven splits allowed). Every
rank differentiates the *sum* of its examples' losses divided by the global batch size, so
summing the gradients over ranks gives exactly the global mean gradient: 1, 2 or 4 ranks follow
the same trajectory up to float summation order. With one process the reduction is a no-op.

The loop takes every service of a higher layer as an argument: the optimizer, the gradient
tape factory (a ``DistributedGradientTape`` one under MPI) and the communicator, so it imports
neither ``tapeflow.optimizers`` nor ``tapeflow.distributed``. Callbacks
(:mod:`tapeflow.callbacks`) see global figures, equal on every rank.
"""
from __future__ import annotations

import math
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import callbacks as cbks
from . import checkpoint as ckpt
from . import data as tp_data
from . import devices
from . import ops
from . import random as tp_random
from . import timeline
from .nn import functional as F
from .tape import GradientTape
from .tensor import Tensor
from .traced_function import function

__all__ = ["Trainer", "EpochResult", "Interrupted", "sync_variables", "sync_optimizer_state",
           "sparse_accuracy", "sparse_cross_entropy", "evaluate_logs"]


def sync_variables(variables, comm, root: int = 0) -> None:
    """Assign ``root``'s value of each Variable on every rank of ``comm`` (the communicator
    checks first that every rank passes the same variables)."""
    if comm.size > 1:
        comm.broadcast_variables(list(variables), root)


def sync_optimizer_state(optimizer, comm, root: int = 0) -> None:
    """Give every rank ``root``'s optimizer state (checked by the communicator first)."""
    if comm.size > 1:
        comm.broadcast_optimizer_state(optimizer, root)


class Interrupted(Exception):
    """Raised by :meth:`Trainer.fit` after SIGINT/SIGTERM/SIGHUP, once a checkpoint is saved."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"stopped by signal {signum}; checkpoint: {checkpoint}")


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    samples_per_second: float
    steps: int
    logs: dict = field(default_factory=dict)


class _NoComm:
    """The single-process stand-in for a communicator (sum over one rank is the identity)."""

    rank, size = 0, 1

    def allreduce(self, x, op="sum"):
        return x

    def broadcast(self, x=None, root=0):
        return x

    def broadcast_object(self, obj=None, root=0):
        return obj

    def broadcast_variables(self, variables, root=0):
        pass

    def broadcast_optimizer_state(self, optimizer, root=0):
        pass


def sparse_cross_entropy(labels, logits) -> Tensor:
    """The default per-example loss: softmax cross-entropy of integer labels and logits."""
    return F.sparse_softmax_cross_entropy_with_logits(labels, logits)


def sparse_accuracy(labels, outputs) -> np.ndarray:
    """The default metric: 1.0 where the largest output is the label's, else 0.0."""
    return (_host(outputs).argmax(axis=-1) == _host(labels)).astype(np.float64)


def _host(x) -> np.ndarray:
    value = x._value if isinstance(x, Tensor) else x
    return value.get() if hasattr(value, "get") else np.asarray(value)


def evaluate_logs(model: Any, x: np.ndarray, y: np.ndarray,
                  loss_fn: Callable[[Any, Any], Any] = sparse_cross_entropy,
                  metric_fns: dict | None = None, comm: Any = None, batch_size: int = 1000,
                  prefix: str = "", to_device: Callable[[np.ndarray], Any] | None = None
                  ) -> dict[str, float]:
    """Exact mean loss and metrics of ``model`` over ``(x, y)`` in inference mode: each rank
    takes a disjoint contiguous range and the sums are added over ranks (``comm``). Keys:
    ``loss`` and the metric names, after ``prefix``."""
    comm = comm or _NoComm()
    if to_device is None:  # batches go where the model's variables live
        to_device = devices.batch_placer(model.variables)
    metric_fns = {"accuracy": sparse_accuracy} if metric_fns is None else metric_fns
    part = tp_data.shard_range(len(x), comm.rank, comm.size)
    sums = np.zeros(len(metric_fns) + 1)
    for start in range(part.start, part.stop, batch_size):
        stop = min(start + batch_size, part.stop)
        outputs = model(Tensor(to_device(x[start:stop])), training=False)
        yt = Tensor(to_device(y[start:stop]))
        sums += [float(np.sum(_host(loss_fn(yt, outputs)))),
                 *(float(np.sum(fn(yt, outputs))) for fn in metric_fns.values())]
    totals = comm.allreduce(sums, op="sum")
    names = ["loss", *metric_fns]
    return {prefix + k: float(v) / max(len(x), 1) for k, v in zip(names, totals)}


@dataclass
class Trainer:
    """Train ``model`` with ``optimizer`` on ``(x_train, y_train)``; evaluate on the test split.

    ``gradient_tape`` builds the tape (a ``DistributedGradientTape`` factory under MPI) and
    ``comm`` is used for metrics, evaluation sums and agreeing on interruption.

    ``loss_fn(labels, outputs)`` gives per-example losses (default: sparse softmax
    cross-entropy of logits); ``metric_fns`` maps names to per-example metric functions
    (default ``{"accuracy": sparse_accuracy}``). ``x_test`` may be ``None`` (no evaluation);
    its figures are logged as ``<eval_prefix>loss`` etc. (``"test_"``; ``model.fit`` uses
    ``"val_"``). ``callbacks`` (:mod:`tapeflow.callbacks`) run on every rank; a callback may
    set ``trainer.stop_training`` to end training after the epoch.

    ``config`` (JSON data, e.g. the model and optimizer names) is stored in each checkpoint;
    :meth:`restore` refuses a checkpoint whose config, seed or batch size differ.
    ``metrics_path`` adds a :class:`~tapeflow.callbacks.JSONLLogger`, ``progress`` a
    :class:`~tapeflow.callbacks.ProgbarLogger`. ``use_function`` runs each step through
    ``tp.function`` (traced once per batch shape, then a static plan; on several ranks the
    distributed tape's reduction is part of the plan and overlaps the replayed sweep).
    """

    model: Any
    optimizer: Any
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    batch_size: int = 128
    seed: int = 0
    comm: Any = None
    gradient_tape: Callable[[], Any] = GradientTape
    checkpoint_dir: str | None = None
    keep_checkpoints: int = 3
    checkpoint_every: int | None = None
    metrics_path: str | None = None
    log_every: int = 50
    progress: bool = True
    log: Callable[[str], None] = print
    # the explicit copy of each batch to the model's device (default: where its variables are)
    to_device: Callable[[np.ndarray], Any] | None = None
    step: int = 0
    epoch: int = 0
    position: int = 0
    skipped_steps: int = 0
    stop_check_every: int = 10
    config: dict | None = None
    run_id: str | None = None
    loss_fn: Callable[[Any, Any], Any] = staticmethod(sparse_cross_entropy)
    metric_fns: dict | None = None
    callbacks: Sequence[Any] = ()
    eval_prefix: str = "test_"
    shuffle: bool = True
    stop_training: bool = False
    use_function: bool = False
    _stop_signal: int | None = field(default=None, init=False, repr=False)
    _step_fn: Any = field(default=None, init=False, repr=False)
    _step_tapes: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.comm is None:
            self.comm = _NoComm()
        if self.to_device is None:
            self.to_device = devices.batch_placer(self.model.variables)
        if self.batch_size < self.comm.size:
            raise ValueError(f"the global batch size {self.batch_size} must be at least the "
                             f"number of ranks ({self.comm.size})")
        if len(self.x_train) != len(self.y_train):
            raise ValueError(f"inputs and labels differ in length: {len(self.x_train)} vs "
                             f"{len(self.y_train)}")
        if self.x_test is not None and len(self.x_test) != len(self.y_test):
            raise ValueError(f"evaluation inputs and labels differ in length: "
                             f"{len(self.x_test)} vs {len(self.y_test)}")
        if self.metric_fns is None:
            self.metric_fns = {"accuracy": sparse_accuracy}
        self.variables = list(self.model.trainable_variables)
        self._epoch_sums = self._zero_sums()  # this rank's loss, metric sums, seen
        self._lock: ckpt.DirectoryLock | None = None
        self.resumed_from: int | None = None
        self.restored_path: str | None = None

    def _zero_sums(self) -> list[float]:
        return [0.0] * (len(self.metric_fns) + 2)

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.x_train) / self.batch_size)

    # ---------------------------------------------------------------- one step
    def _traced(self) -> bool:
        """Whether steps run through ``tp.function`` (a distributed tape's reduction is part
        of the replay, overlapping its backward sweep)."""
        return self.use_function

    def _function_step(self, xt: Tensor, yt: Tensor, scale: float):
        if self._step_fn is None:
            tapes = self._step_tapes

            def step(xt, yt, scale):
                tape = self.gradient_tape()
                tapes.append(tape)  # one per trace: each replay says whether it skipped
                with tape:
                    outputs = self.model(xt, training=True)
                    loss = ops.multiply(ops.reduce_sum(self.loss_fn(yt, outputs)), scale)
                grads = tape.gradient(loss, self.variables)
                # Skipped on a replay whose reduced gradients are not finite (every rank).
                self.optimizer.apply_gradients(zip(grads, self.variables))
                return loss, outputs
            self._step_fn = function(step)
        for tape in self._step_tapes:
            if getattr(tape, "skipped", False):
                tape.skipped = False
        with timeline.span("step (tp.function)"):
            out = self._step_fn(xt, yt, scale)
        if any(getattr(tape, "skipped", False) for tape in self._step_tapes):
            self.skipped_steps += 1
        return out

    def train_step(self, x, y, global_count: int) -> np.ndarray:
        """One optimizer step on this rank's shard; returns its sums: loss, each metric."""
        xt, yt = Tensor(self.to_device(x)), Tensor(self.to_device(y))
        if self._traced():
            # The same step traced once per batch shape and replayed as a static plan: the
            # same losses and weights as the eager step below, bit for bit.
            loss, outputs = self._function_step(xt, yt, 1.0 / global_count)
            return np.array([float(_host(loss)) * global_count,
                             *(float(np.sum(fn(yt, outputs))) for fn in self.metric_fns.values())])
        with timeline.span("forward"), self.gradient_tape() as tape:
            outputs = self.model(xt, training=True)
            loss = ops.multiply(ops.reduce_sum(self.loss_fn(yt, outputs)), 1.0 / global_count)
        with timeline.span("gradient (backward + reduction)"):
            grads = tape.gradient(loss, self.variables)
        if getattr(tape, "skipped", False):
            # A non-finite gradient on some rank: every rank skips this update together (the
            # distributed tape has reported which ranks and tensors).
            self.skipped_steps += 1
        else:
            with timeline.span("optimizer"):
                self.optimizer.apply_gradients(zip(grads, self.variables))
        return np.array([float(_host(loss)) * global_count,
                         *(float(np.sum(fn(yt, outputs))) for fn in self.metric_fns.values())])

    # ---------------------------------------------------------------- evaluation
    def evaluate_logs(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000,
                      prefix: str = "") -> dict[str, float]:
        """Exact mean loss and metrics over ``(x, y)`` (see :func:`evaluate_logs`)."""
        return evaluate_logs(self.model, x, y, self.loss_fn, self.metric_fns, self.comm,
                             batch_size=batch_size, prefix=prefix, to_device=self.to_device)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
        """``(loss, accuracy)`` over ``(x, y)`` (see :meth:`evaluate_logs`)."""
        logs = self.evaluate_logs(x, y, batch_size)
        return logs["loss"], logs.get("accuracy", float("nan"))

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, directory: str | Path | None = None,
                        keep: int | None = None) -> Path | None:
        """Rank 0 writes the checkpoint (atomically) into ``directory`` (default
        ``checkpoint_dir``). Collective: every rank must call it."""
        with timeline.span("checkpoint"):
            return self._save_checkpoint(directory, keep)

    def _save_checkpoint(self, directory: str | Path | None, keep: int | None) -> Path | None:
        directory = directory or self.checkpoint_dir
        if not directory:
            return None
        # The epoch's running sums, so a mid-epoch resume reports the whole epoch's metrics.
        sums = self.comm.allreduce(np.array(self._epoch_sums, np.float64), op="sum")
        if not self.is_root:
            return None
        return ckpt.save_training_state(
            directory, self.step, model=self.model, optimizer=self.optimizer,
            epoch=self.epoch, position=self.position,
            keep=self.keep_checkpoints if keep is None else keep,
            extra={"seed": self.seed, "batch_size": self.batch_size, "run_id": self.run_id,
                   "config": self.config, "epoch_sums": [float(v) for v in sums]})

    def _on_root(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on rank 0; a CheckpointError or OSError there is raised on every
        rank (as CheckpointError), so no rank is left waiting in a collective."""
        result, error = None, None
        if self.is_root:
            try:
                result = action()
            except (ckpt.CheckpointError, OSError) as e:
                error = str(e)
        error = self.comm.broadcast_object(error, root=0)
        if error is not None:
            raise ckpt.CheckpointError(error)
        return result

    def _take_directory(self) -> None:
        """Rank 0 locks the checkpoint directory and removes temp dirs of killed saves."""
        if not self.checkpoint_dir or self._lock is not None:
            return

        def take():
            lock = ckpt.DirectoryLock(self.checkpoint_dir).acquire()
            ckpt.remove_leftovers(self.checkpoint_dir)
            return lock

        self._lock = self._on_root(take) or ckpt.DirectoryLock(self.checkpoint_dir)

    def close(self) -> None:
        """Release the checkpoint directory (done by :meth:`fit` when it returns)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def compatibility_problem(self, extra: dict, path: Any) -> str | None:
        """Why a checkpoint whose manifest holds ``extra`` cannot continue this run, or None."""
        mine = {"seed": self.seed, "batch_size": self.batch_size, **(self.config or {})}
        saved = {"seed": extra.get("seed"), "batch_size": extra.get("batch_size"),
                 **(extra.get("config") or {})}
        for key, value in mine.items():
            if key in saved and saved[key] is not None and saved[key] != value:
                return (f"checkpoint {path} was trained with {key} {saved[key]}, this run uses "
                        f"{value}: use the same setting, or a new checkpoint directory")
        return None

    def restore(self, weights_only: bool = False) -> bool:
        """Restore the newest good checkpoint (falling back past corrupt ones).

        Rank 0 reads it and broadcasts model, optimizer and RNG state and the position, so the
        other ranks need no access to the checkpoint directory. A checkpoint that does not fit
        this run (config, seed, batch size, variable shapes, a batch position past the epoch)
        is a :class:`~tapeflow.checkpoint.CheckpointError` on every rank. ``weights_only``
        (to evaluate a checkpoint): only the model's variables, whatever the run's settings
        and optimizer; the directory is not locked.
        """
        if not self.checkpoint_dir:
            return False
        if not weights_only:
            self._take_directory()

        def read():
            found = ckpt.restore_latest(self.checkpoint_dir)
            if found is None:
                return None
            problem = None if weights_only else self.compatibility_problem(found.extra,
                                                                           found.path)
            if problem is None and not 0 <= int(found.position) <= self.steps_per_epoch \
                    and not weights_only:
                problem = (f"checkpoint {found.path}: batch position {found.position} is "
                           f"outside the epoch's {self.steps_per_epoch} batches")
            if problem is not None:
                raise ckpt.CheckpointError(problem)
            ckpt.restore_training_state(found, model=self.model,
                                        optimizer=None if weights_only else self.optimizer,
                                        restore_rng=not weights_only)
            return {"path": str(found.path), "step": found.step, "epoch": found.epoch,
                    "position": int(found.position), "rng": tp_random.get_state(),
                    "extra": found.extra}

        meta = self.comm.broadcast_object(self._on_root(read), root=0)
        if meta is None:
            return False
        extra = meta["extra"]
        saved_sums = list(extra.get("epoch_sums") or [])
        if self.is_root and meta["position"] and len(saved_sums) == len(self._epoch_sums):
            self._epoch_sums = saved_sums
        if self.comm.size > 1 and weights_only:
            sync_variables(self.model.variables, self.comm)
        elif self.comm.size > 1:
            self._broadcast_state(meta)
        self.step, self.epoch, self.position = meta["step"], meta["epoch"], meta["position"]
        self.run_id = extra.get("run_id") or self.run_id
        self.resumed_from, self.restored_path = self.step, meta["path"]
        if self.is_root and not weights_only:
            self.log(f"resumed from {meta['path']}: step {self.step}, epoch {self.epoch + 1}, "
                     f"batch {self.position}")
        return True

    def _broadcast_state(self, meta: dict) -> None:
        sync_variables(self.model.variables, self.comm)
        sync_optimizer_state(self.optimizer, self.comm)
        if not self.is_root:
            tp_random.set_state(meta["rng"])

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is None:  # the first one names the stop (a launcher may add one)
            self._stop_signal = signum

    def _should_stop(self) -> bool:
        flag = np.array([0 if self._stop_signal is None else self._stop_signal], np.float64)
        if self.comm.size > 1:
            # Every rank must stop at the same step: agree every `stop_check_every` steps (a
            # step count all ranks share), not every step, to keep a sync point off the loop.
            if self.step % self.stop_check_every:
                return False
            flag = self.comm.allreduce(flag, op="max")
        if flag[0] and self._stop_signal is None:
            self._stop_signal = int(flag[0])
        return bool(flag[0])

    # ---------------------------------------------------------------- the loop
    def _callback_list(self, epochs: int) -> cbks.CallbackList:
        extra = []
        if self.metrics_path:
            extra.append(cbks.JSONLLogger(self.metrics_path))
        if self.progress and not any(isinstance(c, cbks.ProgbarLogger) for c in self.callbacks):
            extra.append(cbks.ProgbarLogger())
        callbacks = cbks.CallbackList([*extra, *self.callbacks])
        callbacks.set_trainer(self, {"epochs": epochs, "steps": self.steps_per_epoch,
                                     "verbose": int(self.progress)})
        return callbacks

    def fit(self, epochs: int) -> list[EpochResult]:
        """Train until ``epochs`` complete epochs (counting any restored ones), or until a
        callback sets ``stop_training``.

        SIGINT, SIGTERM and SIGHUP stop it at a step every rank agrees on, after a checkpoint
        is saved: :class:`Interrupted` is raised."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        callbacks = self._callback_list(epochs)
        self.stop_training = False
        try:  # Keras callbacks stop training through the model
            self.model.stop_training = False
        except AttributeError:
            pass
        try:
            self._take_directory()
            if self.run_id is None:
                self.run_id = self.comm.broadcast_object(
                    uuid.uuid4().hex[:12] if self.is_root else None, root=0)
            callbacks.on_train_begin({})
            results: list[EpochResult] = []
            while self.epoch < epochs and not (
                    self.stop_training or getattr(self.model, "stop_training", False)):
                results.append(self._run_epoch(epochs, callbacks))
            callbacks.on_train_end(results[-1].logs if results else {})
            return results
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            callbacks.close()
            self.close()

    def _run_epoch(self, epochs: int, callbacks: cbks.CallbackList) -> EpochResult:
        n = len(self.x_train)
        order = list(tp_data.batches(n, self.batch_size, seed=self.seed, epoch=self.epoch,
                                     shuffle=self.shuffle))
        callbacks.on_epoch_begin(self.epoch, {})
        t0 = time.perf_counter()
        window_t, window_samples = t0, 0
        if self.position == 0:
            self._epoch_sums = self._zero_sums()
        sums = np.array(self._epoch_sums, np.float64)
        seen_here = 0  # samples of this process only: a resumed epoch's rate is not inflated
        names = ["loss", *self.metric_fns]
        for b in range(self.position, len(order)):
            callbacks.on_train_batch_begin(b, {})
            global_idx = order[b]
            with timeline.span("data", step=self.step + 1):
                mine = tp_data.shard_indices(global_idx, self.comm.rank, self.comm.size)
                xb, yb = self.x_train[mine], self.y_train[mine]
            step_sums = self.train_step(xb, yb, len(global_idx))
            sums += [*step_sums, len(mine)]
            self._epoch_sums = [float(v) for v in sums]
            window_samples += len(global_idx)
            seen_here += len(global_idx)
            self.step += 1
            self.position = b + 1
            logs: dict[str, Any] = {"batch": b, "size": len(global_idx), "step": self.step}
            if self.log_every and self.step % self.log_every == 0:
                now = time.perf_counter()
                rate = window_samples / max(now - window_t, 1e-9)
                window_t, window_samples = now, 0
                # the global batch's figures, not rank 0's shard: logs do not depend on the
                # number of ranks (every rank logs at the same steps)
                totals = np.array([*step_sums, len(mine)], np.float64)
                if self.comm.size > 1:
                    totals = self.comm.allreduce(totals, op="sum")
                count = max(float(totals[-1]), 1.0)
                logs.update({k: float(v) / count for k, v in zip(names, totals)})
                logs.update(learning_rate=self.optimizer.current_learning_rate,
                            samples_per_second=rate)
            callbacks.on_train_batch_end(b, logs)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save_checkpoint()
            if self._should_stop():
                path = self.save_checkpoint()
                callbacks.close()
                raise Interrupted(self._stop_signal, path)
        seconds = time.perf_counter() - t0
        totals = self.comm.allreduce(np.array(self._epoch_sums, np.float64), op="sum")
        count = max(float(totals[-1]), 1.0)
        logs = {k: float(v) / count for k, v in zip(names, totals)}
        if self.x_test is not None:
            logs.update(self.evaluate_logs(self.x_test, self.y_test, prefix=self.eval_prefix))
        logs.update(learning_rate=self.optimizer.current_learning_rate,
                    samples_per_second=seen_here / max(seconds, 1e-9), epoch_seconds=seconds)
        nan = float("nan")
        result = EpochResult(
            epoch=self.epoch + 1, train_loss=logs["loss"],
            train_accuracy=logs.get("accuracy", nan),
            test_loss=logs.get(self.eval_prefix + "loss", nan),
            test_accuracy=logs.get(self.eval_prefix + "accuracy", nan), seconds=seconds,
            samples_per_second=logs["samples_per_second"], steps=len(order), logs=logs)
        self.epoch += 1
        self.position = 0
        self.save_checkpoint()
        callbacks.on_epoch_end(result.epoch - 1, logs)
        if self.is_root and self.log is not None:
            self.log(self.epoch_line(result, epochs))
        return result

    def epoch_line(self, result: EpochResult, epochs: int) -> str:
        """``epoch 2/10: loss 0.1234 acc 0.9650 | test loss ... acc ... | 3.1s, 20,000
        samples/s``"""
        names = [k for k in self.metric_fns if k in result.logs]
        shown = " ".join(f"{'acc' if k == 'accuracy' else k} {result.logs[k]:.4f}"
                         for k in names)
        line = f"epoch {result.epoch}/{epochs}: loss {result.train_loss:.4f} {shown}".rstrip()
        p = self.eval_prefix
        if p + "loss" in result.logs:
            ev = " ".join(f"{'acc' if k == 'accuracy' else k} {result.logs[p + k]:.4f}"
                          for k in names if p + k in result.logs)
            line += f" | {p.rstrip('_')} loss {result.logs[p + 'loss']:.4f} {ev}".rstrip()
        return (f"{line} | {result.seconds:.1f}s, {result.samples_per_second:,.0f} "
                f"samples/s")
