"""A Chrome-trace timeline of each step's phases (opens in Perfetto or ``chrome://tracing``).

``TAPEFLOW_TIMELINE=run.json`` (read by ``tapeflow.distributed.init``) or
``tapeflow-train --timeline run.json`` turns it on; each rank writes its own file
(``run.json`` on one rank, ``run.rank0.json``, ``run.rank1.json``... on several), with the
rank as the trace's process id. Phases come from the training loop (data, forward, backward,
optimizer, checkpoint) and the distributed tape (each bucket ready, its reduction launched,
the wait for it, unpacking). Events are streamed to the file as they end, so a run of any
length keeps no history in memory; the file is valid JSON once the run ends (a killed run
leaves the closing bracket out, which both viewers accept).

Off, a phase costs one global lookup (:func:`span` returns a shared no-op context).

>>> from tapeflow import timeline
>>> with timeline.span("forward"):
...     pass
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["TIMELINE_ENV", "start", "stop", "span", "instant", "active", "path_for_rank"]

TIMELINE_ENV = "TAPEFLOW_TIMELINE"
_NULL = contextlib.nullcontext()


class _Writer:
    def __init__(self, path: Path, rank: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.rank = path, rank
        self._file = open(path, "w", encoding="utf-8", buffering=1 << 16)
        self._file.write("[\n")
        self._first = True
        self._lock = threading.Lock()
        self._t0 = time.perf_counter_ns()
        self.event({"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                    "args": {"name": f"rank {rank}"}})

    def now_us(self) -> float:
        return (time.perf_counter_ns() - self._t0) / 1e3

    def event(self, ev: dict) -> None:
        self.write(json.dumps(ev, separators=(",", ":")))

    def write(self, text: str) -> None:
        """Append one encoded event."""
        with self._lock:
            if self._file is None:
                return
            self._file.write(text if self._first else ",\n" + text)
            self._first = False

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write("\n]\n")
                self._file.close()
                self._file = None


_writer: _Writer | None = None


def path_for_rank(path: str | os.PathLike, rank: int, size: int) -> Path:
    """The file of ``rank``: ``path`` itself on one rank, ``stem.rankR.suffix`` on several."""
    p = Path(path)
    if size <= 1:
        return p
    return p.with_name(f"{p.stem}.rank{rank}{p.suffix or '.json'}")


def start(path: str | os.PathLike, rank: int = 0, size: int = 1) -> Path:
    """Record phases from now on into this rank's file (an open timeline is closed first)."""
    global _writer
    stop()
    target = path_for_rank(path, rank, size)
    _writer = _Writer(target, rank)
    return target


def stop() -> None:
    """Close the file (also done at exit)."""
    global _writer
    if _writer is not None:
        _writer.close()
        _writer = None


atexit.register(stop)


def active() -> bool:
    """Whether a timeline is being recorded."""
    return _writer is not None


_QUOTED: dict[str, str] = {}


def _q(text: str) -> str:
    """``text`` as a JSON string (cached: phase names repeat every step)."""
    q = _QUOTED.get(text)
    if q is None:
        q = _QUOTED[text] = json.dumps(text)
    return q


def _args(args: dict) -> str:
    """``,"args":{...}`` for an event (integers, the common case, without json.dumps)."""
    if not args:
        return ""
    if all(type(v) is int for v in args.values()):
        return ',"args":{' + ",".join(f"{_q(k)}:{v}" for k, v in args.items()) + "}"
    return f',"args":{json.dumps(args)}'


class _Span:
    """One phase in flight; written as a complete ("X") event when it ends."""

    __slots__ = ("w", "name", "cat", "args", "t0")

    def __init__(self, w: _Writer, name: str, cat: str, args: dict):
        self.w, self.name, self.cat, self.args = w, name, cat, args

    def __enter__(self) -> "_Span":
        self.t0 = time.perf_counter_ns()
        return self

    def __exit__(self, *exc) -> None:
        w = self.w
        t0, t1 = self.t0 - w._t0, time.perf_counter_ns() - w._t0
        args = _args(self.args)
        w.write(f'{{"name":{_q(self.name)},"cat":{_q(self.cat)},"ph":"X","ts":{t0 / 1e3:.3f},'
                f'"dur":{(t1 - t0) / 1e3:.3f},"pid":{w.rank},"tid":{threading.get_ident() % 100000}'
                f'{args}}}')


def span(name: str, cat: str = "step", **args: Any):
    """A context manager recording one phase (no-op when no timeline is on)."""
    w = _writer
    if w is None:
        return _NULL
    return _Span(w, name, cat, args)


def instant(name: str, cat: str = "step", **args: Any) -> None:
    """A point in time (e.g. a bucket's reduction launched)."""
    w = _writer
    if w is None:
        return
    w.write(f'{{"name":{_q(name)},"cat":{_q(cat)},"ph":"i","s":"t","ts":{w.now_us():.3f},'
            f'"pid":{w.rank},"tid":{threading.get_ident() % 100000}{_args(args)}}}')
