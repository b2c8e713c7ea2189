"""The training loop behind ``tapeflow-train``, reusable from Python and under MPI.

Global-batch semantics: each step draws a *global* batch from the permutation of
``(seed, epoch)``; a data-parallel run splits it across ranks (uneven splits allowed). Every
rank differentiates the *sum* of its examples' losses divided by the global batch size, so
summing the gradients over ranks gives exactly the global mean gradient: 1, 2 or 4 ranks follow
the same trajectory up to float summation order. With one process the reduction is a no-op.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import checkpoint as ckpt
from . import data as tp_data
from . import ops
from . import random as tp_random
from .nn import functional as F
from .tape import GradientTape
from .tensor import Tensor

__all__ = ["Trainer", "EpochResult", "Interrupted", "sync_variables", "sync_optimizer_state"]


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


class _NoComm:
    """The single-process stand-in for a communicator (sum over one rank is the identity)."""

    rank, size = 0, 1

    def allreduce(self, x, op="sum"):
        return x

    def broadcast(self, x=None, root=0):
        return x

    def broadcast_object(self, obj=None, root=0):
        return obj


@dataclass
class Trainer:
    """Train ``model`` with ``optimizer`` on ``(x_train, y_train)``; evaluate on the test split.

    ``gradient_tape`` builds the tape (a ``DistributedGradientTape`` factory under MPI) and
    ``comm`` is used for metrics, evaluation sums and agreeing on interruption.

    ``config`` (JSON data, e.g. the model and optimizer names) is stored in each checkpoint;
    :meth:`restore` refuses a checkpoint whose config, seed or batch size differ. Metrics are
    JSON lines: a ``{"event": "start", ...}`` record per process start, then step and epoch
    records, each with the ``run`` id (kept across resumes) and a Unix ``time``; resuming
    drops this run's records after the restored step, so no step appears twice.
    """

    model: Any
    optimizer: Any
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
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
    to_device: Callable[[np.ndarray], Any] = staticmethod(lambda a: a)
    step: int = 0
    epoch: int = 0
    position: int = 0
    skipped_steps: int = 0
    stop_check_every: int = 10
    config: dict | None = None
    run_id: str | None = None
    _stop_signal: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.comm is None:
            self.comm = _NoComm()
        if self.batch_size < self.comm.size:
            raise ValueError(f"--batch-size {self.batch_size} is the global batch and must be at "
                             f"least the number of ranks ({self.comm.size})")
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"images and labels differ in length: train {len(self.x_train)} vs "
                             f"{len(self.y_train)}, test {len(self.x_test)} vs {len(self.y_test)}")
        self.variables = list(self.model.trainable_variables)
        self._epoch_sums = [0.0, 0.0, 0.0]  # this rank's loss sum, correct, seen this epoch
        self._metrics_file = None
        self._lock: ckpt.DirectoryLock | None = None
        self._resumed_from: int | None = None

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.x_train) / self.batch_size)

    # ---------------------------------------------------------------- one step
    def train_step(self, x, y, global_count: int) -> tuple[float, int]:
        """One optimizer step on this rank's shard; returns (summed loss, correct) of the shard."""
        xt, yt = Tensor(self.to_device(x)), Tensor(self.to_device(y))
        with self.gradient_tape() as tape:
            logits = self.model(xt, training=True)
            losses = F.sparse_softmax_cross_entropy_with_logits(yt, logits)
            loss = ops.multiply(ops.reduce_sum(losses), 1.0 / global_count)
        grads = tape.gradient(loss, self.variables)
        if getattr(tape, "skipped", False):
            # A non-finite gradient on some rank: every rank skips this update together (the
            # distributed tape has reported which ranks and tensors).
            self.skipped_steps += 1
        else:
            self.optimizer.apply_gradients(zip(grads, self.variables))
        correct = int((logits._value.argmax(axis=-1) == yt._value).sum())
        return float(loss._value) * global_count, correct

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
        """Exact mean loss and accuracy: each rank takes a disjoint contiguous range."""
        part = tp_data.shard_range(len(x), self.comm.rank, self.comm.size)
        loss_sum, correct = 0.0, 0
        for start in range(part.start, part.stop, batch_size):
            stop = min(start + batch_size, part.stop)
            logits = self.model(Tensor(self.to_device(x[start:stop])), training=False)
            yt = Tensor(self.to_device(y[start:stop]))
            loss_sum += float(ops.reduce_sum(
                F.sparse_softmax_cross_entropy_with_logits(yt, logits))._value)
            correct += int((logits._value.argmax(axis=-1) == yt._value).sum())
        totals = self.comm.allreduce(np.array([loss_sum, correct], np.float64), op="sum")
        return float(totals[0]) / len(x), float(totals[1]) / len(x)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the checkpoint (atomically). Collective: every rank must call it."""
        if not self.checkpoint_dir:
            return None
        # The epoch's running sums, so a mid-epoch resume reports the whole epoch's metrics.
        sums = self.comm.allreduce(np.array(self._epoch_sums, np.float64), op="sum")
        if not self.is_root:
            return None
        return ckpt.save_training_state(
            self.checkpoint_dir, self.step, model=self.model, optimizer=self.optimizer,
            epoch=self.epoch, position=self.position, keep=self.keep_checkpoints,
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

    def restore(self) -> bool:
        """Restore the newest good checkpoint (falling back past corrupt ones).

        Rank 0 reads it and broadcasts model, optimizer and RNG state and the position, so the
        other ranks need no access to the checkpoint directory. A checkpoint that does not fit
        this run (config, seed, batch size, variable shapes, a batch position past the epoch)
        is a :class:`~tapeflow.checkpoint.CheckpointError` on every rank.
        """
        if not self.checkpoint_dir:
            return False
        self._take_directory()

        def read():
            found = ckpt.restore_latest(self.checkpoint_dir)
            if found is None:
                return None
            problem = self.compatibility_problem(found.extra, found.path)
            if problem is None and not 0 <= int(found.position) <= self.steps_per_epoch:
                problem = (f"checkpoint {found.path}: batch position {found.position} is "
                           f"outside the epoch's {self.steps_per_epoch} batches")
            if problem is not None:
                raise ckpt.CheckpointError(problem)
            ckpt.restore_training_state(found, model=self.model, optimizer=self.optimizer)
            return {"path": str(found.path), "step": found.step, "epoch": found.epoch,
                    "position": int(found.position), "rng": tp_random.get_state(),
                    "extra": found.extra}

        meta = self.comm.broadcast_object(self._on_root(read), root=0)
        if meta is None:
            return False
        extra = meta["extra"]
        if self.is_root and meta["position"]:
            self._epoch_sums = list(extra.get("epoch_sums", [0.0, 0.0, 0.0]))
        if self.comm.size > 1:
            self._broadcast_state(meta)
        self.step, self.epoch, self.position = meta["step"], meta["epoch"], meta["position"]
        self.run_id = extra.get("run_id") or self.run_id
        self._resumed_from = self.step
        if self.is_root:
            self.log(f"resumed from {meta['path']}: step {self.step}, epoch {self.epoch + 1}, "
                     f"batch {self.position}")
        return True

    def _broadcast_state(self, meta: dict) -> None:
        sync_variables(self.model.variables, self.comm)
        sync_optimizer_state(self.optimizer, self.comm)
        if not self.is_root:
            tp_random.set_state(meta["rng"])

    # ---------------------------------------------------------------- metrics and signals
    def _metric(self, record: dict) -> None:
        if self._metrics_file is not None:
            record = {"run": self.run_id, "time": round(time.time(), 3), **record}
            self._metrics_file.write(json.dumps(record) + "\n")
            self._metrics_file.flush()

    def _open_metrics(self) -> None:
        """Rank 0 opens the metrics file for appending; on resume this run's records after
        the restored step are dropped first (they would appear twice)."""
        path = Path(self.metrics_path)
        if self._resumed_from is not None and path.is_file():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by kill -9
                if not (record.get("run") == self.run_id
                        and record.get("step", 0) > self._resumed_from):
                    kept.append(line if line.endswith("\n") else line + "\n")
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._metrics_file = open(path, "a", encoding="utf-8")

    def _on_signal(self, signum, frame) -> None:
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
    def fit(self, epochs: int) -> list[EpochResult]:
        """Train until ``epochs`` complete epochs (counting any restored ones).

        SIGINT, SIGTERM and SIGHUP stop it at a step every rank agrees on, after a checkpoint
        is saved: :class:`Interrupted` is raised."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self._take_directory()
            if self.run_id is None:
                self.run_id = self.comm.broadcast_object(
                    uuid.uuid4().hex[:12] if self.is_root else None, root=0)
            if self.metrics_path:
                self._on_root(self._open_metrics)
            self._metric({"event": "start", "start_time": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": self.step, "epoch": self.epoch,
                "resumed": self._resumed_from is not None, "ranks": self.comm.size,
                "steps_per_epoch": self.steps_per_epoch,
                "batch_size": self.batch_size, "seed": self.seed, "config": self.config})
            results = []
            while self.epoch < epochs:
                results.append(self._run_epoch(epochs))
            return results
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self._metrics_file is not None:
                self._metrics_file.close()
                self._metrics_file = None
            self.close()

    def _progress_bar(self, epochs: int):
        if not (self.progress and self.is_root):
            return None
        from tqdm.auto import tqdm

        import shutil
        import sys

        # Under mpiexec stderr is a pipe with no width: a fixed, modest width then.
        tty = sys.stderr.isatty()
        ncols = None if tty else min(shutil.get_terminal_size((100, 24)).columns, 100)
        return tqdm(total=self.steps_per_epoch, initial=self.position, unit="step",
                    desc=f"epoch {self.epoch + 1}/{epochs}", leave=False, dynamic_ncols=tty,
                    ncols=ncols)

    def _run_epoch(self, epochs: int) -> EpochResult:
        n = len(self.x_train)
        order = list(tp_data.batches(n, self.batch_size, seed=self.seed, epoch=self.epoch))
        bar = self._progress_bar(epochs)
        t0 = time.perf_counter()
        window_t, window_samples = t0, 0
        if self.position == 0:
            self._epoch_sums = [0.0, 0.0, 0.0]
        loss_sum, correct, seen = self._epoch_sums
        seen_here = 0  # samples of this process only: a resumed epoch's rate is not inflated
        lr = self.optimizer.current_learning_rate
        for b in range(self.position, len(order)):
            global_idx = order[b]
            mine = tp_data.shard_indices(global_idx, self.comm.rank, self.comm.size)
            loss_b, correct_b = self.train_step(self.x_train[mine], self.y_train[mine],
                                                len(global_idx))
            loss_sum, correct, seen = loss_sum + loss_b, correct + correct_b, seen + len(mine)
            self._epoch_sums = [loss_sum, correct, seen]
            window_samples += len(global_idx)
            seen_here += len(global_idx)
            self.step += 1
            self.position = b + 1
            if bar is not None:
                bar.update(1)
            if self.log_every and self.step % self.log_every == 0:
                now = time.perf_counter()
                rate = window_samples / max(now - window_t, 1e-9)
                window_t, window_samples = now, 0
                lr = self.optimizer.current_learning_rate
                # the global batch's loss and accuracy, not rank 0's shard: logs do not depend
                # on the number of ranks (every rank logs at the same steps)
                step_totals = np.array([loss_b, correct_b, len(mine)], np.float64)
                if self.comm.size > 1:
                    step_totals = self.comm.allreduce(step_totals, op="sum")
                step_loss = float(step_totals[0]) / max(float(step_totals[2]), 1.0)
                step_acc = float(step_totals[1]) / max(float(step_totals[2]), 1.0)
                self._metric({"step": self.step, "epoch": self.epoch + 1, "loss": step_loss,
                              "accuracy": step_acc, "learning_rate": lr,
                              "samples_per_second": rate})
                if bar is not None:
                    bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{rate:,.0f}")
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save_checkpoint()
            if self._should_stop():
                path = self.save_checkpoint()
                if bar is not None:
                    bar.close()
                raise Interrupted(self._stop_signal, path)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        totals = self.comm.allreduce(np.array([loss_sum, correct, seen], np.float64), op="sum")
        test_loss, test_acc = self.evaluate(self.x_test, self.y_test)
        result = EpochResult(epoch=self.epoch + 1, train_loss=totals[0] / max(totals[2], 1),
                             train_accuracy=totals[1] / max(totals[2], 1), test_loss=test_loss,
                             test_accuracy=test_acc, seconds=seconds,
                             samples_per_second=seen_here / max(seconds, 1e-9),
                             steps=len(order))
        self.epoch += 1
        self.position = 0
        self.save_checkpoint()
        self._metric({"epoch": result.epoch, "step": self.step, "loss": result.train_loss,
                      "accuracy": result.train_accuracy, "test_loss": test_loss,
                      "test_accuracy": test_acc, "learning_rate": lr,
                      "samples_per_second": result.samples_per_second,
                      "epoch_seconds": seconds})
        if self.is_root:
            self.log(f"epoch {result.epoch}/{epochs}: loss {result.train_loss:.4f} "
                     f"acc {result.train_accuracy:.4f} | test loss {test_loss:.4f} "
                     f"acc {test_acc:.4f} | {seconds:.1f}s, "
                     f"{result.samples_per_second:,.0f} samples/s")
        return result
