"""``tp.train``: TensorFlow's object checkpoints (``tf.train.Checkpoint``,
``tf.train.CheckpointManager``, ``tf.train.latest_checkpoint``) on tapeflow's checkpoint module.

``Checkpoint(model=model, optimizer=opt, step=tp.Variable(0))`` tracks modules (by variable
name), optimizers (their state: slots and step count) and Variables; ``save(prefix)`` writes
the next numbered checkpoint into the prefix's folder (``<folder>/ckpt-<n>``, atomically:
safetensors + a checksummed manifest, no pickle) and returns its path, which ``restore``
takes, as does ``latest_checkpoint(folder)``. A restore checks every name, shape and dtype
before it changes anything; ``restore(None)`` (no checkpoint yet) does nothing, as in
TensorFlow's "restore or initialize" idiom.

>>> import tapeflow as tp, tempfile
>>> v = tp.Variable(1.0)
>>> ckpt = tp.train.Checkpoint(v=v)
>>> path = ckpt.save(tempfile.mkdtemp() + "/ckpt")
>>> _ = v.assign(5.0); _ = ckpt.restore(path); float(v.numpy())
1.0
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint as ck
from .tensor import Variable, to_numpy

__all__ = ["Checkpoint", "CheckpointManager", "latest_checkpoint"]


class _Status:
    """What ``Checkpoint.restore`` returns (TensorFlow's load status)."""

    def __init__(self, path: Path | None, unused: list[str]):
        self.path, self.unused = path, unused

    def assert_consumed(self) -> "_Status":
        if self.unused:
            raise AssertionError(f"{self.path}: saved values not restored into any object: "
                                 f"{self.unused}")
        return self

    def assert_existing_objects_matched(self) -> "_Status":
        return self

    def expect_partial(self) -> "_Status":
        return self


class Checkpoint:
    """Track objects by keyword (see the module docstring)."""

    def __init__(self, root: Any = None, **objects: Any) -> None:
        if root is not None:
            objects = {"root": root, **objects}
        for name, obj in objects.items():
            if not (isinstance(obj, Variable) or hasattr(obj, "named_variables")
                    or hasattr(obj, "get_state")):
                raise TypeError(f"tp.train.Checkpoint: {name}={type(obj).__name__} is not a "
                                "Variable, a module or an optimizer")
        self._objects = objects
        self.save_counter = Variable(np.int64(0), trainable=False, name="save_counter")

    def __getattr__(self, name: str) -> Any:  # ckpt.step, ckpt.model: the tracked objects
        objects = self.__dict__.get("_objects", {})
        if name in objects:
            return objects[name]
        raise AttributeError(f"tp.train.Checkpoint tracks no object named {name!r}")

    def _arrays(self) -> tuple[dict, dict]:
        tensors, scalars = {}, {}
        for name, obj in self._objects.items():
            if isinstance(obj, Variable):
                tensors[name] = to_numpy(obj._value)
            elif hasattr(obj, "named_variables"):
                for key, v in obj.named_variables():
                    tensors[f"{name}/{key}"] = to_numpy(v._value)
            else:
                for key, v in obj.get_state().items():
                    if hasattr(v, "shape") and not isinstance(v, np.generic):
                        tensors[f"{name}/{key}"] = to_numpy(v)
                    else:
                        scalars[f"{name}/{key}"] = v.item() if isinstance(v, np.generic) else v
        return tensors, scalars

    def write(self, file_prefix: str | os.PathLike, number: int | None = None,
              keep: int | None = None) -> str:
        """Write checkpoint ``number`` (default: the save counter) into the prefix's folder
        (keeping the newest ``keep``, default all); the save counter is not advanced."""
        tensors, scalars = self._arrays()
        step = int(self.save_counter.numpy()) if number is None else int(number)
        path = ck.save(Path(file_prefix).parent, step, tensors=tensors, keep=keep,
                       extra={"tp.train.Checkpoint": scalars,
                              "save_counter": int(self.save_counter.numpy())})
        return str(path)

    def save(self, file_prefix: str | os.PathLike) -> str:
        """Advance the save counter and write that numbered checkpoint; its path."""
        self.save_counter.assign_add(1)
        return self.write(file_prefix)

    def restore(self, save_path: str | os.PathLike | None) -> _Status:
        """Assign a checkpoint's values to the tracked objects (``None``: nothing to do)."""
        if save_path is None:
            return _Status(None, [])
        loaded = ck.load(save_path)
        saved, scalars = dict(loaded.tensors), dict(loaded.extra.get("tp.train.Checkpoint", {}))
        plan: list[tuple[Any, Any]] = []
        for name, obj in self._objects.items():
            if isinstance(obj, Variable):
                plan.append((obj, _take(saved, name, obj, loaded.path)))
            elif hasattr(obj, "named_variables"):
                for key, v in obj.named_variables():
                    plan.append((v, _take(saved, f"{name}/{key}", v, loaded.path)))
            else:
                prefix = f"{name}/"
                state = {k[len(prefix):]: saved.pop(k) for k in list(saved)
                         if k.startswith(prefix)}
                state.update({k[len(prefix):]: scalars.pop(k) for k in list(scalars)
                              if k.startswith(prefix)})
                plan.append((obj, state))
        for target, value in plan:  # (everything checked above before anything changes)
            if isinstance(target, Variable):
                target.assign(value)
            else:
                target.set_state(value)
        self.save_counter.assign(int(loaded.extra.get("save_counter", loaded.step)))
        return _Status(loaded.path, sorted(saved) + sorted(scalars))


def _take(saved: dict, key: str, var: Variable, path: Path) -> np.ndarray:
    if key not in saved:
        raise ck.CheckpointError(f"{path}: no value saved for {key!r}")
    value = saved.pop(key)
    if tuple(value.shape) != tuple(var.shape) or value.dtype != np.dtype(var.dtype):
        raise ck.CheckpointError(f"{path}: {key!r} is saved with shape {value.shape} dtype "
                                 f"{value.dtype}, the variable has shape {tuple(var.shape)} "
                                 f"dtype {np.dtype(var.dtype)}")
    return value


class CheckpointManager:
    """TensorFlow's ``CheckpointManager``: numbered saves of ``checkpoint`` into
    ``directory``, keeping the newest ``max_to_keep``."""

    def __init__(self, checkpoint: Checkpoint, directory: str | os.PathLike,
                 max_to_keep: int | None = 5, checkpoint_name: str = "ckpt", **_: Any) -> None:
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"CheckpointManager: max_to_keep must be >= 1 or None, got "
                             f"{max_to_keep}")
        self.checkpoint, self.directory = checkpoint, Path(directory)
        self.max_to_keep = max_to_keep

    @property
    def checkpoints(self) -> list[str]:
        return [str(p) for p in ck.list_checkpoints(self.directory)] \
            if self.directory.exists() else []

    @property
    def latest_checkpoint(self) -> str | None:
        return latest_checkpoint(self.directory)

    def save(self, checkpoint_number: int | None = None, **_: Any) -> str:
        """Save (numbered ``checkpoint_number``, else the next save count); older ones beyond
        ``max_to_keep`` are removed."""
        self.checkpoint.save_counter.assign_add(1)
        number = int(self.checkpoint.save_counter.numpy()) if checkpoint_number is None \
            else int(checkpoint_number)
        return self.checkpoint.write(self.directory / "ckpt", number, keep=self.max_to_keep)


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint's path in ``checkpoint_dir``, or None."""
    if not Path(checkpoint_dir).exists():
        return None
    path = ck.latest(checkpoint_dir)
    return None if path is None else str(path)
