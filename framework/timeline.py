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
from typing import Any, Iterator

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
        text = json.dumps(ev, separators=(",", ":"))
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


@contextlib.contextmanager
def _span(w: _Writer, name: str, cat: str, args: dict) -> Iterator[None]:
    t = w.now_us()
    try:
        yield
    finally:
        ev = {"name": name, "cat": cat, "ph": "X", "ts": round(t, 3),
              "dur": round(w.now_us() - t, 3), "pid": w.rank, "tid": threading.get_ident() % 100000}
        if args:
            ev["args"] = args
        w.event(ev)


def span(name: str, cat: str = "step", **args: Any):
    """A context manager recording one phase (no-op when no timeline is on)."""
    w = _writer
    if w is None:
        return _NULL
    return _span(w, name, cat, args)


def instant(name: str, cat: str = "step", **args: Any) -> None:
    """A point in time (e.g. a bucket's reduction launched)."""
    w = _writer
    if w is None:
        return
    ev = {"name": name, "cat": cat, "ph": "i", "s": "t", "ts": round(w.now_us(), 3),
          "pid": w.rank, "tid": threading.get_ident() % 100000}
    if args:
        ev["args"] = args
    w.event(ev)
