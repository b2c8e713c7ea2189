"""Callbacks of the training loop (``tp.keras.callbacks``): Keras's hooks and the usual ones.

The loop (:class:`tapeflow.training.Trainer`, behind ``model.fit`` and ``tapeflow-train``)
calls ``on_train_begin``, ``on_epoch_begin``, ``on_train_batch_begin``/``_end``,
``on_epoch_end`` and ``on_train_end`` on every rank, in the same order. Each callback sees
``self.model``, ``self.params`` (``epochs``, ``steps``, ``verbose``) and ``self.trainer``.

Logs hold *global* figures, the same on every rank: epoch logs the epoch's ``loss`` and
metrics over all ranks' examples and ``val_``/``test_`` figures; batch logs carry ``batch``,
``size`` and ``step``, and every ``log_every`` steps also that global batch's ``loss``,
metrics, ``learning_rate`` and ``samples_per_second``. So a decision taken from logs
(early stopping, the best checkpoint) is taken alike on every rank, and files are written by
rank 0 only.

The Horovod-style callbacks take the communicator from the loop (``trainer.comm``); nothing
here imports ``tapeflow.distributed``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import checkpoint as ckpt

__all__ = ["Callback", "CallbackList", "History", "ProgbarLogger", "ModelCheckpoint",
           "EarlyStopping", "LearningRateScheduler", "CSVLogger", "JSONLLogger",
           "BroadcastGlobalVariablesCallback", "MetricAverageCallback",
           "LearningRateWarmupCallback", "progress_bar"]


class Callback:
    """Keras's callback interface; override the hooks you need."""

    model: Any = None
    trainer: Any = None
    params: dict = {}

    def set_trainer(self, trainer: Any, params: dict) -> None:
        self.trainer, self.model, self.params = trainer, trainer.model, dict(params)

    @property
    def is_root(self) -> bool:
        return self.trainer is None or self.trainer.comm.rank == 0

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None: ...

    def close(self) -> None:
        """Release files and bars, also when training ends by an exception."""


class CallbackList(Callback):
    """Calls each hook on every callback, in order."""

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be tp.keras.callbacks.Callback instances, got "
                                f"{type(cb).__name__}")

    def set_trainer(self, trainer: Any, params: dict) -> None:
        for cb in self.callbacks:
            cb.set_trainer(trainer, params)

    def _each(name: str) -> Callable:  # noqa: N805 - builds the methods below
        def hook(self, *args: Any) -> None:
            for cb in self.callbacks:
                getattr(cb, name)(*args)
        hook.__name__ = name
        return hook

    on_train_begin = _each("on_train_begin")
    on_train_end = _each("on_train_end")
    on_epoch_begin = _each("on_epoch_begin")
    on_epoch_end = _each("on_epoch_end")
    on_train_batch_begin = _each("on_train_batch_begin")
    on_train_batch_end = _each("on_train_batch_end")
    close = _each("close")


class History(Callback):
    """Keras's History: ``history.history["loss"]`` lists each epoch's value; ``.epoch`` the
    0-based epoch numbers. ``model.fit`` returns it."""

    def __init__(self, exclude: Iterable[str] = ()) -> None:
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.exclude = frozenset(exclude)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            if key not in self.exclude:
                self.history.setdefault(key, []).append(value)


# --------------------------------------------------------------------------- progress
def progress_bar(total: int, initial: int, desc: str):
    """A tqdm bar on stderr; under mpiexec (no terminal) a fixed width of at most 100."""
    import shutil

    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    ncols = None if tty else min(shutil.get_terminal_size((100, 24)).columns, 100)
    return tqdm(total=total, initial=initial, unit="step", desc=desc, leave=False,
                dynamic_ncols=tty, ncols=ncols)


class ProgbarLogger(Callback):
    """A progress bar per epoch on rank 0, with the latest global loss and samples/s."""

    def __init__(self) -> None:
        self._bar = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.is_root:
            self._bar = progress_bar(self.params.get("steps", 0), self.trainer.position,
                                     f"epoch {epoch + 1}/{self.params.get('epochs', '?')}")

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if logs and "loss" in logs:
                self._bar.set_postfix(loss=f"{logs['loss']:.4f}",
                                      samples_s=f"{logs.get('samples_per_second', 0):,.0f}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------- files
class JSONLLogger(Callback):
    """Metrics as JSON lines (what ``tapeflow-train --metrics`` writes; ``tapeflow-plot``
    draws them): a ``{"event": "start"}`` record per process start, a record per logged step
    and per epoch, each with the ``run`` id (kept across resumes) and a Unix ``time``. On a
    resume, this run's records after the restored step are dropped first, so no step appears
    twice. Rank 0 writes; the file is appended to."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.trainer._on_root(self._open)
        t = self.trainer
        self._write({"event": "start", "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime()),
                     "step": t.step, "epoch": t.epoch, "resumed": t.resumed_from is not None,
                     "ranks": t.comm.size, "batch_size": t.batch_size, "seed": t.seed,
                     "steps_per_epoch": t.steps_per_epoch, "config": t.config})

    def _open(self) -> None:
        resumed, run = self.trainer.resumed_from, self.trainer.run_id
        if resumed is not None and self.path.is_file():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by kill -9
                if not (record.get("run") == run and record.get("step", 0) > resumed):
                    kept.append(line if line.endswith("\n") else line + "\n")
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, record: dict) -> None:
        if self._file is not None:
            record = {"run": self.trainer.run_id, "time": round(time.time(), 3), **record}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if logs and "loss" in logs:
            self._write({"step": logs["step"], "epoch": self.trainer.epoch + 1,
                         **{k: v for k, v in logs.items() if k not in ("batch", "size", "step")}})

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._write({"epoch": epoch + 1, "step": self.trainer.step, **(logs or {})})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CSVLogger(Callback):
    """Keras's CSVLogger: one row per epoch (``epoch`` then the logs' keys, sorted), rank 0."""

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False):
        self.filename, self.separator, self.append = Path(filename), separator, append
        self._file = self._writer = None
        self._keys: list[str] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        def open_file():
            exists = self.append and self.filename.is_file() and self.filename.stat().st_size
            self.filename.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.filename, "a" if self.append else "w",  # noqa: SIM115
                              newline="", encoding="utf-8")
            self._has_header = bool(exists)
        self.trainer._on_root(open_file)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._file is None:
            return
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
            self._writer = csv.DictWriter(self._file, ["epoch", *self._keys],
                                          delimiter=self.separator, extrasaction="ignore")
            if not self._has_header:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch, **{k: logs.get(k, "NA") for k in self._keys}})
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ModelCheckpoint(Callback):
    """Save model and optimizer state into ``directory`` with the checkpoint module (atomic:
    temp folder, fsync, one rename; safetensors + a checksummed JSON manifest).

    ``save_freq="epoch"`` saves after each epoch, an int every that many steps.
    ``save_best_only`` saves only when ``monitor`` improved (``mode`` "min", "max" or "auto":
    max for accuracy-like names). ``keep`` newest checkpoints are kept. Collective: every
    rank runs it, rank 0 writes, holding the directory's lock while training runs.

    Keras's form, a model *file* (``"ckpt-{epoch:02d}.keras"``, ``"best.h5"``: a name with a
    ``{...}`` field or a ``.keras`` / ``.h5`` / ``.safetensors`` suffix), saves the whole model
    (``model.save``; ``save_weights_only``: ``model.save_weights``) to that name formatted with
    the epoch (from 1) and the logs. That form is not collective: rank 0 writes and the other
    ranks do nothing, so Horovod's pattern of adding it on rank 0 only works.
    """

    def __init__(self, directory: str | os.PathLike, monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto",
                 save_freq: str | int = "epoch", keep: int | None = 3, verbose: int = 0,
                 save_weights_only: bool = False, initial_value_threshold: float | None = None):
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"ModelCheckpoint: save_freq must be 'epoch' or a positive int, "
                             f"got {save_freq!r}")
        name = os.fspath(directory)
        self.file_template = name if "{" in name or name.endswith(
            (".keras", ".h5", ".safetensors")) else None
        self.save_weights_only = bool(save_weights_only)
        self.directory, self.monitor, self.save_best_only = Path(directory), monitor, \
            save_best_only
        self.better = _comparison(monitor, mode)
        self.best: float | None = initial_value_threshold
        self.save_freq, self.keep, self.verbose = save_freq, keep, verbose
        self.saved: list[Path] = []
        self._lock: ckpt.DirectoryLock | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Rank 0 locks the directory (a second run into it is refused) and removes the temp
        folders of saves that were killed midway."""
        if self.file_template is not None:
            return  # (Keras's file form: nothing to lock, nothing collective)

        def take():
            lock = ckpt.DirectoryLock(self.directory).acquire()
            ckpt.remove_leftovers(self.directory)
            return lock
        self._lock = self.trainer._on_root(take)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if isinstance(self.save_freq, int) and self.trainer.step % self.save_freq == 0:
            self._save()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq != "epoch":
            return
        if self.save_best_only:
            value = (logs or {}).get(self.monitor)
            if value is None:
                raise KeyError(f"ModelCheckpoint: monitor {self.monitor!r} is not in the logs "
                               f"({sorted(logs or {})}); pass validation data or monitor "
                               "'loss'")
            if self.best is not None and not self.better(value, self.best):
                return
            self.best = value
        self._save(logs, epoch)

    def _save(self, logs: dict | None = None, epoch: int | None = None) -> None:
        if self.file_template is not None:
            if not self.is_root:
                return
            epoch = self.trainer.epoch if epoch is None else epoch
            path = Path(self.file_template.format(epoch=epoch + 1, batch=self.trainer.step,
                                                  **(logs or {})))
            path.parent.mkdir(parents=True, exist_ok=True)
            (self.model.save_weights if self.save_weights_only else self.model.save)(path)
            self.saved.append(path)
            if self.verbose:
                print(f"ModelCheckpoint: saved {path}")
            return
        path = self.trainer.save_checkpoint(directory=self.directory, keep=self.keep)
        if path is not None:
            self.saved.append(path)
            if self.verbose:
                print(f"ModelCheckpoint: saved {path}")


def _comparison(monitor: str, mode: str) -> Callable[[float, float], bool]:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if any(k in monitor for k in ("acc", "auc", "precision", "recall")) \
            else "min"
    return (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)


# --------------------------------------------------------------------------- control
class EarlyStopping(Callback):
    """Keras's EarlyStopping: stop when ``monitor`` has not improved by more than
    ``min_delta`` for ``patience`` epochs; ``restore_best_weights`` puts the best epoch's
    weights back at the end. The logs are global, so every rank stops at the same epoch."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False, start_from_epoch: int = 0,
                 verbose: int = 0):
        better = _comparison(monitor, mode)
        sign = 1.0 if better(1.0, 0.0) else -1.0
        self.monitor, self.patience, self.baseline = monitor, patience, baseline
        self.improved = lambda value, best: better(value - sign * abs(min_delta), best)
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, start_from_epoch
        self.verbose = verbose
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best: float | None = None
        self.best_weights: list | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best, self.best_weights = None, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"EarlyStopping: monitor {self.monitor!r} is not in the logs "
                           f"({sorted(logs or {})})")
        if epoch < self.start_from_epoch:
            return
        reference = self.best if self.best is not None else self.baseline
        if reference is None or self.improved(value, reference):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = self.model.stop_training = True
            if self.verbose and self.is_root:
                print(f"EarlyStopping: stopped after epoch {epoch + 1}; best {self.monitor} "
                      f"{self.best} at epoch {self.best_epoch + 1}")

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def _set_lr(optimizer: Any, value: float) -> None:
    if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and value > 0):
        raise ValueError(f"learning rate must be a positive finite number, got {value!r}")
    optimizer.learning_rate = float(value)


class LearningRateScheduler(Callback):
    """Keras's LearningRateScheduler: before each epoch, ``learning_rate =
    schedule(epoch, current_learning_rate)`` (``schedule(epoch)`` with one argument works too)."""

    def __init__(self, schedule: Callable[..., float], verbose: int = 0):
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        opt = self.trainer.optimizer
        try:
            lr = self.schedule(epoch, float(opt.current_learning_rate))
        except TypeError:
            lr = self.schedule(epoch)
        _set_lr(opt, lr)
        if self.verbose and self.is_root:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")


# --------------------------------------------------------------------------- Horovod's
class BroadcastGlobalVariablesCallback(Callback):
    """Horovod's: at the start of training every rank takes ``root_rank``'s model weights (and,
    after the first step created them, its optimizer state). ``model.fit`` already does this;
    the callback is for loops that do not."""

    def __init__(self, root_rank: int = 0):
        self.root_rank = root_rank
        self._done = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        comm = self.trainer.comm
        if comm.size > 1:
            comm.broadcast_variables(list(self.model.variables), self.root_rank)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        comm = self.trainer.comm
        if not self._done and comm.size > 1:
            comm.broadcast_optimizer_state(self.trainer.optimizer, self.root_rank)
        self._done = True


class MetricAverageCallback(Callback):
    """Horovod's: each epoch's numeric logs averaged over ranks. tapeflow's logs are already
    global (equal on every rank), so this changes nothing there; it averages any figures that
    other callbacks added per rank."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        comm = self.trainer.comm
        if logs is None or comm.size == 1:
            return
        keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float, np.floating)))
        values = comm.allreduce(np.array([float(logs[k]) for k in keys], np.float64),
                                op="average")
        logs.update({k: float(v) for k, v in zip(keys, values)})


class LearningRateWarmupCallback(Callback):
    """Horovod's warm-up: over the first ``warmup_epochs`` epochs the learning rate rises from
    ``initial_lr / size`` to ``initial_lr`` (``initial_lr`` is the rate scaled for ``size``
    ranks, e.g. ``0.01 * size``): ``lr = initial_lr / size * (e * (size - 1) / warmup + 1)``
    with the fractional epoch ``e``, updated every step."""

    def __init__(self, initial_lr: float, warmup_epochs: int = 5, verbose: int = 0):
        if warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be >= 1, got {warmup_epochs}")
        self.initial_lr, self.warmup_epochs, self.verbose = float(initial_lr), warmup_epochs, \
            verbose

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        t = self.trainer
        e = t.epoch + batch / max(t.steps_per_epoch, 1)
        if e <= self.warmup_epochs:
            size = t.comm.size
            _set_lr(t.optimizer, self.initial_lr / size * (e * (size - 1) / self.warmup_epochs
                                                           + 1))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.warmup_epochs:
            _set_lr(self.trainer.optimizer, self.initial_lr)
            if self.verbose and self.is_root:
                print(f"Epoch {epoch + 1}: finished learning-rate warm-up to {self.initial_lr}")
