"""Checkpoints: tensors in safetensors, metadata in JSON, committed atomically (``tp.checkpoint``).

Layout of a checkpoint directory (one entry per saved step)::

    <directory>/ckpt-000001234/tensors.safetensors   every array (safetensors: no pickle)
    <directory>/ckpt-000001234/manifest.json         step, epoch, position, RNG state, scalars,
                                                     user metadata, tensor list, SHA-256 of the
                                                     tensor file and of the manifest itself
    <directory>/.lock                                held (flock) by the run writing here

Writing is crash safe: both files go into a hidden temp directory ``.tmp-ckpt-*``, each file
and the directory are fsynced, and one ``os.rename`` of the directory is the commit point
(atomic on POSIX), followed by an fsync of the parent. The manifest is written last. Readers
list only ``ckpt-<step>`` entries, so they never see a half-written checkpoint; "latest" is
derived by listing (no pointer file that could disagree with the directory).

Loading never runs code: the tensor file is parsed by safetensors (a JSON header and raw
bytes), the manifest by :mod:`json`; the file's SHA-256 and the tensor list are checked
against the manifest, and any mismatch is a :class:`CheckpointError` naming the file. The
manifest carries the SHA-256 of its own canonical JSON (``manifest_sha256``), so a damaged
step, epoch or batch position is refused too, not silently trusted.

Leftover temp directories of a save that was killed midway are removed by
:func:`remove_leftovers` (called by a run that holds :class:`DirectoryLock`) and, as a
fallback, by any later save once they are an hour old.

One process (rank 0) writes; every rank may read.

>>> import numpy as np, tempfile
>>> d = tempfile.mkdtemp()
>>> p = save(d, 10, tensors={"w": np.arange(3.0)}, epoch=1, extra={"note": "hi"})
>>> ck = load(p)
>>> ck.step, ck.epoch, ck.tensors["w"].tolist(), ck.extra
(10, 1, [0.0, 1.0, 2.0], {'note': 'hi'})
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import safetensors.numpy as st

from . import random as _random
from ._backend import to_numpy

__all__ = [
    "FORMAT_VERSION", "TENSORS_FILE", "MANIFEST_FILE", "Checkpoint", "CheckpointError",
    "save", "load", "latest", "list_checkpoints", "restore_latest",
    "save_training_state", "restore_training_state", "DirectoryLock", "remove_leftovers",
    "read_manifest", "LOCK_FILE",
]

# 2: the manifest carries manifest_sha256 (a version-1 manifest had no checksum of its own).
FORMAT_VERSION = 2
LOCK_FILE = ".lock"
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"
_PREFIX = "ckpt-"
_NAME_RE = re.compile(r"^ckpt-(\d+)$")
_TMP_PREFIX = ".tmp-ckpt-"
_OLD_PREFIX = ".old-ckpt-"
_STALE_SECONDS = 3600.0  # leftover temp dirs older than this are removed by the next save
_log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit what it is restored into."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: arrays by name plus the manifest's metadata."""

    path: Path
    step: int
    tensors: dict[str, np.ndarray]
    epoch: int = 0
    position: Any = 0
    rng_state: dict | None = None
    extra: dict = field(default_factory=dict)
    optimizer_scalars: dict | None = None
    format_version: int = FORMAT_VERSION


# --------------------------------------------------------------------------- helpers
def _jsonable(obj: Any, what: str) -> Any:
    """``obj`` as plain JSON data (NumPy scalars/arrays become Python numbers/lists)."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{what}: dict keys must be str, got {k!r}")
            out[k] = _jsonable(v, f"{what}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{what}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{what}: {type(obj).__name__} is not JSON-serialisable "
                    "(checkpoints store plain data only, never pickle)")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation in ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _step_dir(directory: Path, step: int) -> Path:
    return directory / f"{_PREFIX}{step:09d}"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Committed checkpoint entries in ``directory``, oldest step first (not verified)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        m = _NAME_RE.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m[1]), entry))
    return [p for _, p in sorted(found)]


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON, without its own ``manifest_sha256`` field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(path: str | os.PathLike) -> dict:
    """The verified manifest of checkpoint directory ``path`` (its own checksum checked; the
    tensor file is not read). Raises :class:`CheckpointError` naming the file."""
    return _read_manifest(Path(path))


def _read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST_FILE
    try:
        text = mpath.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{mpath}: manifest is missing (incomplete or damaged "
                              "checkpoint)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath}: cannot read manifest: {e}") from e
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath}: manifest is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{mpath}: manifest is not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version != FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: unsupported format_version {version!r} (this "
                              f"tapeflow reads {FORMAT_VERSION}; version 1 had no manifest "
                              "checksum)")
    recorded = manifest.get("manifest_sha256")
    try:
        actual = _manifest_digest(manifest)
    except ValueError as e:  # nan/inf smuggled into the JSON
        raise CheckpointError(f"{mpath}: manifest holds a non-finite number: {e}") from e
    if recorded != actual:
        raise CheckpointError(f"{mpath}: manifest checksum mismatch: SHA-256 {actual}, "
                              f"manifest says {recorded!r} (the manifest is damaged)")
    for key, kind in (("step", int), ("epoch", int), ("sha256", str), ("tensors", dict)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise CheckpointError(f"{mpath}: manifest field {key!r} is missing or not "
                                  f"a {kind.__name__}")
    return manifest


def _is_committed(path: Path) -> bool:
    """Cheap validity check (manifest parses, tensor file has the recorded size)."""
    try:
        manifest = _read_manifest(path)
        size = manifest.get("size")
        return size is None or (path / TENSORS_FILE).stat().st_size == size
    except (CheckpointError, OSError):
        return False


def _remove_stale(directory: Path, max_age: float = _STALE_SECONDS) -> list[Path]:
    now, removed = time.time(), []
    for entry in directory.iterdir():
        if entry.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and entry.is_dir():
            try:
                if now - entry.stat().st_mtime >= max_age:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            except OSError:
                pass
    return removed


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Remove every temp directory a killed save left in ``directory``, whatever its age.

    Only safe while no other process saves there: call it holding :class:`DirectoryLock`.
    An ``.old-ckpt-*`` directory whose checkpoint never came back (killed between the two
    renames of a replacing save) is moved back first. Returns the removed paths.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    for entry in directory.glob(f"{_OLD_PREFIX}*/{_PREFIX}*"):
        if _NAME_RE.match(entry.name) and not (directory / entry.name).exists():
            os.rename(entry, directory / entry.name)
    return _remove_stale(directory, max_age=0.0)


class DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/.lock`` for the run that writes checkpoints.

    A second run on the same directory (say a ``--resume`` started while the first job still
    trains) gets a :class:`CheckpointError` naming the holder's pid at once. The lock goes
    away with the process, even after ``kill -9``. Where ``fcntl`` is missing it does nothing.

    >>> import tempfile
    >>> with DirectoryLock(tempfile.mkdtemp()):
    ...     pass
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        try:
            import fcntl
        except ImportError:  # not POSIX
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(f"{self.path.parent} is in use by another run (pid {holder}):"
                                  " wait for it to end, stop it, or use another directory"
                                  ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _prune(directory: Path, keep: int) -> None:
    """Delete checkpoints older than the ``keep`` newest good ones (bad newer ones stay)."""
    good = 0
    for path in reversed(list_checkpoints(directory)):
        if good >= keep:
            _log.info("removing old checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
        elif _is_committed(path):
            good += 1


# --------------------------------------------------------------------------- save / load
def save(directory: str | os.PathLike, step: int, *, tensors: Mapping[str, Any], epoch: int = 0,
         position: Any = 0, rng_state: dict | None = None, extra: dict | None = None,
         optimizer_scalars: dict | None = None, keep: int | None = 3) -> Path:
    """Write checkpoint ``step`` into ``directory`` atomically and return its path.

    ``tensors`` maps names to arrays (NumPy, CuPy or anything with ``.numpy()``); ``extra`` and
    ``optimizer_scalars`` must be JSON-able. After the commit, only the ``keep`` newest good
    checkpoints are kept (``None`` keeps all). Saving a step that exists replaces it, again
    without a moment where a half-written one is visible.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep!r}")
    step = int(step)
    arrays: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty str, got {name!r}")
        if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
            value = value.numpy()
        a = np.asarray(to_numpy(value))
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
        arrays[name] = a if a.flags.c_contiguous else a.copy(order="C")
    manifest: dict[str, Any] = {
        "format": "tapeflow-checkpoint",
        "format_version": FORMAT_VERSION,
        "step": step,
        "epoch": int(epoch),
        "position": _jsonable(position, "position"),
        "rng_state": _jsonable(rng_state, "rng_state"),
        "optimizer_scalars": _jsonable(optimizer_scalars, "optimizer_scalars"),
        "extra": _jsonable(extra or {}, "extra"),
        "tensors": {k: {"shape": list(a.shape), "dtype": a.dtype.name}
                    for k, a in arrays.items()},
        "tensors_file": TENSORS_FILE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale(directory)
    final = _step_dir(directory, step)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=directory))
    old: Path | None = None
    try:
        tpath = tmp / TENSORS_FILE
        st.save_file(arrays, str(tpath))
        _fsync_file(tpath)
        digest = hashlib.sha256()
        with open(tpath, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        manifest["sha256"] = digest.hexdigest()
        manifest["size"] = tpath.stat().st_size
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        mpath = tmp / MANIFEST_FILE
        with open(mpath, "w", encoding="utf-8") as f:  # the manifest is written last
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # move the old one aside first: rename can't replace a full dir
            old = Path(tempfile.mkdtemp(prefix=_OLD_PREFIX, dir=directory)) / final.name
            os.rename(final, old)
        os.rename(tmp, final)  # the commit point
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not final.exists():
            os.rename(old, final)  # put the replaced checkpoint back
            shutil.rmtree(old.parent, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)
    if keep is not None:
        _prune(directory, keep)
    return final


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and verify one checkpoint directory (as returned by :func:`save`).

    Raises :class:`CheckpointError` naming the file when the manifest is missing or invalid,
    the tensor file is missing, truncated, fails its SHA-256, or its tensors differ from the
    manifest's list (names, shapes, dtypes).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    manifest = _read_manifest(path)
    tpath = path / manifest.get("tensors_file", TENSORS_FILE)
    if tpath.parent != path:
        raise CheckpointError(f"{path / MANIFEST_FILE}: invalid tensors_file entry")
    try:
        data = tpath.read_bytes()  # hash and parse the same bytes
    except FileNotFoundError:
        raise CheckpointError(f"{tpath}: tensor file is missing") from None
    except OSError as e:
        raise CheckpointError(f"{tpath}: cannot read tensor file: {e}") from e
    size = manifest.get("size")
    if size is not None and len(data) != size:
        raise CheckpointError(f"{tpath}: file is truncated or resized: {len(data)} bytes, "
                              f"manifest says {size} (checksum cannot match)")
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest["sha256"]:
        raise CheckpointError(f"{tpath}: checksum mismatch: SHA-256 {actual}, manifest says "
                              f"{manifest['sha256']} (file is corrupt)")
    try:
        arrays = st.load(data)
    except Exception as e:  # SafetensorError and friends: a malformed file
        raise CheckpointError(f"{tpath}: not a valid safetensors file: {e}") from e
    listed = manifest["tensors"]
    missing, unlisted = sorted(set(listed) - set(arrays)), sorted(set(arrays) - set(listed))
    if missing or unlisted:
        raise CheckpointError(f"{tpath}: tensors do not match the manifest: missing from file "
                              f"{missing}, not in manifest {unlisted}")
    for name, spec in listed.items():
        a = arrays[name]
        if not isinstance(spec, dict) or list(a.shape) != spec.get("shape") \
                or a.dtype.name != spec.get("dtype"):
            raise CheckpointError(f"{tpath}: tensor {name!r} has shape {list(a.shape)} dtype "
                                  f"{a.dtype.name}, manifest says {spec!r}")
    return Checkpoint(
        path=path, step=manifest["step"], tensors=arrays, epoch=manifest.get("epoch", 0),
        position=manifest.get("position", 0), rng_state=manifest.get("rng_state"),
        extra=manifest.get("extra") or {}, optimizer_scalars=manifest.get("optimizer_scalars"),
        format_version=manifest["format_version"])


def latest(directory: str | os.PathLike) -> Path | None:
    """The newest committed checkpoint in ``directory`` (manifest present and readable; the
    checksum is verified by :func:`load`), or ``None``."""
    for path in reversed(list_checkpoints(directory)):
        if _is_committed(path):
            return path
    return None


def restore_latest(directory: str | os.PathLike) -> Checkpoint | None:
    """Load the newest checkpoint that verifies, newest first; each bad one is reported with
    a ``UserWarning`` naming the file and the problem. ``None`` when there is none."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load(path)
        except CheckpointError as e:
            msg = f"skipping corrupt checkpoint {path}: {e}"
            _log.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
    return None


# --------------------------------------------------------------------------- training state
def _named_variables(model: Any) -> list[tuple[str, Any]]:
    """``(name, variable)`` pairs from ``model.named_variables()``, a dict or a list."""
    if hasattr(model, "named_variables"):
        pairs = list(model.named_variables())
    elif isinstance(model, Mapping):
        pairs = list(model.items())
    elif hasattr(model, "variables"):
        variables = model.variables() if callable(model.variables) else model.variables
        pairs = [(f"var_{i}", v) for i, v in enumerate(variables)]
    elif isinstance(model, Iterable):
        pairs = [(f"var_{i}", v) for i, v in enumerate(model)]
    else:
        raise TypeError(f"cannot find variables of {type(model).__name__}: expected "
                        "named_variables(), a dict name -> Variable, or a list of Variables")
    names = [n for n, _ in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CheckpointError(f"duplicate variable names {dup}")
    return [(str(n), v) for n, v in pairs]


def _value(var: Any) -> np.ndarray:
    return to_numpy(var.numpy() if hasattr(var, "numpy") else var)


def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "dtype")
                                         and not isinstance(v, np.generic))


def save_training_state(directory: str | os.PathLike, step: int, *, model: Any,
                        optimizer: Any = None, epoch: int = 0, position: Any = 0,
                        extra: dict | None = None, keep: int | None = 3) -> Path:
    """Save model variables (``"model/<name>"``), optimizer state (arrays as
    ``"optimizer/<key>"``, scalars in the manifest) and ``tp.random``'s state."""
    tensors = {f"model/{name}": _value(v) for name, v in _named_variables(model)}
    scalars = None
    if optimizer is not None:
        scalars = {}
        for key, v in optimizer.get_state().items():
            if _is_array(v):
                tensors[f"optimizer/{key}"] = to_numpy(v)
            else:
                scalars[key] = v
    return save(directory, step, tensors=tensors, epoch=epoch, position=position,
                rng_state=_random.get_state(), extra=extra, optimizer_scalars=scalars,
                keep=keep)


def restore_training_state(checkpoint: Checkpoint | str | os.PathLike, *, model: Any,
                           optimizer: Any = None, restore_rng: bool = True,
                           strict: bool = True) -> Checkpoint:
    """Assign a checkpoint's values to ``model`` (and ``optimizer``, ``tp.random``).

    Every variable is checked before any is changed: a shape or dtype mismatch, or a model
    variable absent from the checkpoint, is a :class:`CheckpointError` naming it. With
    ``strict``, checkpoint variables the model lacks are an error too. Returns the checkpoint.
    """
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load(checkpoint)
    pairs = _named_variables(model)
    saved = {k[len("model/"):]: a for k, a in ck.tensors.items() if k.startswith("model/")}
    missing = [n for n, _ in pairs if n not in saved]
    if missing:
        raise CheckpointError(f"{ck.path}: model variables missing from the checkpoint: "
                              f"{missing}")
    unexpected = sorted(set(saved) - {n for n, _ in pairs})
    if strict and unexpected:
        raise CheckpointError(f"{ck.path}: checkpoint variables not in the model: {unexpected}")
    for name, var in pairs:
        have, got = _value(var), saved[name]
        if have.shape != got.shape or have.dtype != got.dtype:
            raise CheckpointError(f"{ck.path}: variable {name!r}: model has shape "
                                  f"{have.shape} dtype {have.dtype}, checkpoint has shape "
                                  f"{got.shape} dtype {got.dtype}")
    if optimizer is not None:
        if ck.optimizer_scalars is None:
            raise CheckpointError(f"{ck.path}: checkpoint has no optimizer state")
        state = dict(ck.optimizer_scalars)
        state.update({k[len("optimizer/"):]: a for k, a in ck.tensors.items()
                      if k.startswith("optimizer/")})
        try:
            optimizer.set_state(state)
        except ValueError as e:
            raise CheckpointError(f"{ck.path}: optimizer state does not fit: {e}") from e
    for name, var in pairs:
        var.assign(saved[name])
    if restore_rng and ck.rng_state is not None:
        _random.set_state(ck.rng_state)
    return ck
