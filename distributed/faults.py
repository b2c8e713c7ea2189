"""Faults of multi-rank jobs, in one place: the wait loop, stall reports, mismatches, aborts.

A job of several ranks fails in ways a single process cannot: one rank raises while the others
wait in a collective, one rank stalls, ranks call different collectives. Each becomes a message
naming the rank and a non-zero end of the whole job, never a hang or garbage:

* **Failure on one rank** (on by default from ``dist.init()``; opt out with
  ``init(abort_on_failure=False)`` or ``$TAPEFLOW_ABORT_ON_FAILURE=0``): an uncaught exception
  (any thread), ``sys.exit(n)`` with ``n != 0``, SIGTERM/SIGHUP with no handler of the user's,
  or a termination signal arriving while the rank is stuck in a collective print
  ``tapeflow: rank R/N failed: ...`` and call ``MPI_Abort``: ``mpiexec`` ends every rank. A
  rank that finishes while others still wait for it is caught by the exit protocol: at exit
  every rank takes part in one last checked collective (kind ``exit``), so a rank still
  calling something else gets a :class:`MismatchError` naming the finished rank, and the
  finished rank aborts the job. Exit clean-up never blocks on a collective that some rank will
  not join. (A rank killed outright, e.g. SIGKILL, is reported by ``mpiexec`` itself, which
  ends the others at once.) Before ``init()``, from the import of ``tapeflow.distributed``
  on, an uncaught exception on one rank ends the job as well (:func:`guard_startup`).
* **Stalls**: :class:`Waiter` is the only loop that waits on other ranks (MPI requests,
  shared-memory counters, the cross-node step, barriers, the exit protocol). After
  ``$TAPEFLOW_STALL_WARN`` s (default 60) it reports which ranks have not arrived and what each
  is doing (from the :class:`StatusBoard`: which collective, which step, or computing); after
  ``$TAPEFLOW_STALL_TIMEOUT`` s (default 600, like PyTorch's NCCL watchdog) it aborts the job
  naming them. It spins briefly, then sleeps with a growing pause, so a rank waiting for a slow
  neighbour costs well under 5 % of a core.
* **Mismatches**: collectives exchange signatures first (:mod:`tapeflow.distributed.signature`);
  a difference raises :class:`MismatchError` on every rank.

How the board works (checked with the ``mpich`` wheel): every rank owns four int64 in an RMA
window (``MPI_Win_allocate``) in one long passive-target epoch (``Lock_all``): publishing is a
local store. A stalled rank reads the others with request-based ``Rget``; a rank that does not
answer within ``_PROBE_S`` is outside MPI (computing or hung) and is reported as such.
"""
from __future__ import annotations

import atexit
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np

__all__ = [
    "MismatchError", "Waiter", "StatusBoard", "stall_settings", "abort", "install",
    "uninstall", "guard_startup", "STALL_WARN_ENV", "STALL_TIMEOUT_ENV", "ABORT_ENV",
]

STALL_WARN_ENV = "TAPEFLOW_STALL_WARN"
STALL_TIMEOUT_ENV = "TAPEFLOW_STALL_TIMEOUT"
ABORT_ENV = "TAPEFLOW_ABORT_ON_FAILURE"
_DEFAULT_WARN_S = 60.0
_DEFAULT_TIMEOUT_S = 600.0

# The wait loop: spin on the test (yielding the CPU) for _SPIN_S, then sleep with a pause that
# doubles from _SLEEP_MIN_S to _SLEEP_MAX_S. Sleeping from the start starves MPI's progress
# engine (a 2.6 MB allreduce on two ranks took 16 ms with sleeps against 0.5 ms blocking);
# spinning first matches a blocking call, and the yield keeps 4 ranks on 2 cores fast. Waits
# longer than a second sleep up to _SLEEP_LONG_S between tests: a few per cent of a core at most.
_SPIN_S = 0.02
_SLEEP_MIN_S = 50e-6
_SLEEP_MAX_S = 2e-3
_SLEEP_LONG_S = 20e-3   # pause once a wait passed 1 s: a slow neighbour, latency no longer counts
_SPIN_CHECKS = 1 << 30  # marks the end of the spin phase
_PROBE_S = 0.25        # how long a stalled rank waits for the others' status
_ABORT_GRACE_S = 0.5   # pause between the last message and MPI_Abort (mpiexec forwards output)
_STUCK_AFTER_SIGNAL_S = 5.0  # a termination signal during a wait this long ends the job
_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)

# what a rank is doing, as published on the board
COMPUTING, WAITING, EXITING = 0, 1, 2


class MismatchError(ValueError):
    """Ranks called different collectives, or one collective with different sizes, dtypes, ops
    or roots; raised on every rank before anything is combined, naming the first differing
    rank and both calls. ``signatures`` holds every rank's encoded signature (or ``None``)."""

    def __init__(self, message: str, signatures: Any = None):
        super().__init__(message)
        self.signatures = signatures


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"{env}={raw!r} is not a number of seconds (0 turns it off)") from None
    if value < 0:
        raise ValueError(f"{env} must be >= 0 seconds (0 turns it off), got {value}")
    return value


def stall_settings(warn: float | None = None, timeout: float | None = None) -> tuple[float, float]:
    """Seconds before a waiting collective is reported and before it aborts the job (0 = never),
    from the arguments, else ``$TAPEFLOW_STALL_WARN`` / ``$TAPEFLOW_STALL_TIMEOUT``, else 60 / 600.
    """
    warn = _seconds(STALL_WARN_ENV, _DEFAULT_WARN_S) if warn is None else float(warn)
    timeout = _seconds(STALL_TIMEOUT_ENV, _DEFAULT_TIMEOUT_S) if timeout is None else float(timeout)
    if warn < 0 or timeout < 0:
        raise ValueError(f"stall warn/timeout must be >= 0 seconds, got {warn}, {timeout}")
    return warn, timeout


# -- aborting -------------------------------------------------------------------------------------

def abort(message: str, code: int = 1) -> None:
    """Write ``message`` to stderr in one piece, give mpiexec time to forward it, abort the job."""
    try:
        sys.stdout.flush()
        sys.stderr.write(message if message.endswith("\n") else message + "\n")
        sys.stderr.flush()
        time.sleep(_ABORT_GRACE_S)
    finally:
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(code if 0 < code < 256 else 1)


# -- the status board -----------------------------------------------------------------------------

class StatusBoard:
    """Each rank's ``(seq, kind, state, tag)``, readable by the others without their help.

    ``comm`` is an mpi4py communicator; creation is collective. Without RMA support the board
    is empty and reports say the ranks are unknown."""

    def __init__(self, comm: Any, kinds: tuple):
        from mpi4py import MPI

        self._MPI, self._comm, self._kinds = MPI, comm, kinds
        self._rank, self._size = comm.Get_rank(), comm.Get_size()
        self._win = self._mem = None
        self._pending: dict[int, tuple[Any, np.ndarray]] = {}
        try:
            win = MPI.Win.Allocate(32, 8, comm=comm)
            win.Lock_all()
            self._mem = np.frombuffer(win.tomemory(), dtype=np.int64)
            self._mem[:] = 0
            win.Sync()
            self._win = win
        except Exception:  # noqa: BLE001 - no RMA: reports say "unknown"
            self._win = None
        comm.Barrier()  # every slot holds zeros before anyone reads one

    def publish(self, seq: int, kind: int, state: int, tag: int = 0) -> None:
        mem = self._mem
        if mem is not None:  # a local store: stale reads only delay a report
            mem[0], mem[1], mem[2], mem[3] = seq, kind, state, tag

    def set_state(self, state: int) -> None:
        if self._mem is not None:
            self._mem[2] = state

    def read(self, request_test: Callable[[], Any] | None = None) -> dict[int, tuple] | None:
        """``rank -> (seq, kind, state, tag)`` of the ranks that answered (``None``: no RMA)."""
        if self._win is None:
            return None
        MPI = self._MPI
        for target in range(self._size):
            if target != self._rank and target not in self._pending:
                buf = np.zeros(4, dtype=np.int64)
                req = self._win.Rget([buf, MPI.INT64_T], target, target=(0, 4, MPI.INT64_T))
                self._pending[target] = (req, buf)
        seen = {self._rank: tuple(int(v) for v in self._mem)}
        deadline = time.monotonic() + _PROBE_S
        while True:
            for target, (req, buf) in list(self._pending.items()):
                if req.Test():
                    seen[target] = tuple(int(v) for v in buf)
                    del self._pending[target]
            if not self._pending or time.monotonic() > deadline:
                return seen
            if request_test is not None:
                request_test()  # keep the stalled collective progressing meanwhile
            time.sleep(_SLEEP_MIN_S)

    def describe(self, r: int, status: tuple | None) -> str:
        if status is None:
            return f"rank {r} (no answer: outside MPI, computing or hung)"
        seq, kind, state, tag = status
        name = self._kinds[kind - 1] if 0 < kind <= len(self._kinds) else "collective"
        step = f", step {tag}" if tag else ""
        if state == WAITING:
            return f"rank {r} (waiting in {name} #{seq}{step})"
        if state == EXITING:
            return f"rank {r} (finished its program; waiting at exit)"
        return f"rank {r} (computing since {name} #{seq}{step})" if seq else \
            f"rank {r} (computing; no collective yet)"

    def close(self) -> None:
        """Free the window (collective)."""
        if self._win is not None:
            win, self._win, self._mem = self._win, None, None
            win.Unlock_all()  # completes any Rget still in flight
            self._pending.clear()
            win.Free()


# -- the one wait loop ----------------------------------------------------------------------------

class Waiter:
    """Waits for other ranks; every waiting path of the package goes through :meth:`wait`."""

    def __init__(self, rank: int, size: int, board: StatusBoard | None = None,
                 warn: float | None = None, timeout: float | None = None):
        self.rank, self.size, self.board = rank, size, board
        self.warn, self.timeout = stall_settings(warn, timeout)

    def wait(self, test: Callable[[], bool], what: str, seq: int = 0,
             missing: Callable[[], list[int]] | None = None, *, may_abort: bool = True) -> None:
        """Return once ``test()`` is true. ``what`` names the collective for reports,
        ``missing`` lists the ranks not arrived when the waiter knows (shared-memory counters);
        otherwise the board is asked. ``may_abort=False`` only reports (the exit protocol)."""
        if test():
            return
        start = time.monotonic()
        warn_at = start + self.warn if self.warn > 0 else float("inf")
        abort_at = start + self.timeout if self.timeout > 0 and may_abort else float("inf")
        spin_until = start + _SPIN_S
        pause = _SLEEP_MIN_S
        spins = 0
        _Signals.drain()  # only a signal that comes while waiting counts
        signalled, signal_at = 0, None
        while not test():
            spins += 1
            if spins & 63 and spins < _SPIN_CHECKS:  # the spin phase: test as often as we can
                _sched_yield()
                continue
            now = time.monotonic()
            if now >= warn_at or now >= abort_at:
                fatal = now >= abort_at
                self._report(what, seq, now - start, missing, test, fatal)
                warn_at = now + self.warn if self.warn > 0 else float("inf")
            got = _Signals.drain()
            if got and may_abort:
                signalled = got
                signal_at = signal_at or now
            if signal_at is not None and now - signal_at > _STUCK_AFTER_SIGNAL_S:
                name = signal.Signals(signalled).name
                self._report(what, seq, now - start, missing, test, False)
                abort(f"tapeflow: rank {self.rank}/{self.size} received {name} while stuck in "
                      f"{what} #{seq}; ending the job", 128 + signalled)
            if now < spin_until:
                _sched_yield()
                continue
            spins = _SPIN_CHECKS  # from now on every pass checks the clock and sleeps
            time.sleep(pause)
            pause = min(2 * pause, _SLEEP_MAX_S if now - start < 1.0 else _SLEEP_LONG_S)

    def _report(self, what: str, seq: int, waited: float, missing, test, fatal: bool) -> None:
        if missing is not None:
            who = missing()
            status = self.board.read(test) if self.board is not None else None
            desc = ", ".join(self.board.describe(r, (status or {}).get(r)) if self.board
                             else f"rank {r}" for r in who)
        elif self.board is not None:
            status = self.board.read(test)
            if status is None:
                desc = "unknown (this MPI has no RMA windows)"
            else:
                late = [r for r in range(self.size) if r != self.rank and (
                    r not in status or status[r][0] < seq or status[r][2] != WAITING)]
                desc = ", ".join(self.board.describe(r, status.get(r)) for r in late) or \
                    "none (they are inside the collective; the transport is slow)"
        else:
            desc = "unknown"
        message = (f"tapeflow: rank {self.rank}/{self.size} has waited {waited:.1f} s in {what} "
                   f"#{seq}; not arrived: {desc}")
        if fatal:
            abort(message + f"\ntapeflow: rank {self.rank} ends the job ({STALL_TIMEOUT_ENV}="
                  f"{self.timeout:g} s)")
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


# -- signals: a termination signal that arrives while a rank is stuck ends the job ---------------

class _Signals:
    """A self-pipe set as Python's signal wakeup fd: every signal with a Python handler writes
    its number there, whichever handler the program installed (e.g. a trainer's graceful
    stop). The wait loop reads it to learn that a signal came while it was stuck."""

    _read_fd: int | None = None

    @classmethod
    def install(cls) -> None:
        if cls._read_fd is not None or threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        try:
            old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(r), os.close(w)
            return
        if old != -1:  # someone else's (an event loop): leave it to them
            signal.set_wakeup_fd(old)
            os.close(r), os.close(w)
            return
        cls._read_fd = r

    @classmethod
    def drain(cls) -> int:
        """The last termination signal received since the previous call (0: none)."""
        if cls._read_fd is None:
            return 0
        try:
            data = os.read(cls._read_fd, 512)
        except (BlockingIOError, OSError):
            return 0
        got = 0
        for b in data:
            if b in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                got = b
        return got


# -- hooks: exceptions, exit codes, termination signals -------------------------------------------

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _who() -> tuple[Any, int]:
    comm = _state.get("comm")
    return (getattr(comm, "rank", "?"), int(getattr(comm, "size", 1))) if comm else ("?", 1)


def _parallel() -> bool:
    comm = _state.get("comm")
    return comm is not None and getattr(comm, "size", 1) > 1 and _state.get("enabled", False)


def _sys_hook(exc_type, exc, tb) -> None:
    if not _parallel():
        return _state.get("sys", sys.__excepthook__)(exc_type, exc, tb)
    rank, size = _who()
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    abort(f"{text}tapeflow: rank {rank}/{size} failed: {exc_type.__name__}: {exc}; ending "
          f"the job", 130 if exc_type is KeyboardInterrupt else 1)


def _thread_hook(args) -> None:
    if args.exc_type is SystemExit or not _parallel():  # threading ignores SystemExit; so do we
        return _state.get("thread", threading.__excepthook__)(args)
    rank, size = _who()
    name = args.thread.name if args.thread is not None else "?"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value,
                                              args.exc_traceback))
    abort(f"{text}tapeflow: rank {rank}/{size} failed in thread {name}: "
          f"{args.exc_type.__name__}: {args.exc_value}; ending the job")


def _exit(code: Any = None) -> None:
    """``sys.exit`` that remembers the status, so the exit protocol can report it."""
    _state["exit_code"] = code
    raise SystemExit(code)


def _status_of(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1  # sys.exit("message") prints the message and exits 1


def _on_signal(signum, frame) -> None:
    del frame
    rank, size = _who()
    abort(f"tapeflow: rank {rank}/{size} received {signal.Signals(signum).name}; ending the job",
          128 + signum)


def _at_exit() -> None:
    """The exit protocol (runs before mpi4py's MPI_Finalize: atexit is last-in first-out)."""
    comm = _state.get("comm")
    if comm is None or not _state.get("enabled") or getattr(comm, "size", 1) <= 1:
        if comm is not None and hasattr(comm, "_exit_close"):
            comm._exit_close(clean=True)
        return
    rank, size = comm.rank, comm.size
    status = _status_of(_state.get("exit_code"))
    if status != 0:
        abort(f"tapeflow: rank {rank}/{size} exited with status {status}; ending the job", status)
    try:
        comm._exit_rendezvous()
    except MismatchError as exc:
        abort(f"tapeflow: rank {rank}/{size} finished while another rank still calls a "
              f"collective ({exc}); ending the job")
    except Exception as exc:  # noqa: BLE001 - never hang at exit
        abort(f"tapeflow: rank {rank}/{size} could not finish cleanly ({type(exc).__name__}: "
              f"{exc}); ending the job")


def enabled_by_default() -> bool:
    return os.environ.get(ABORT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def installed() -> bool:
    """Whether :func:`install` registered a communicator."""
    return _state.get("comm") is not None


def install(comm: Any, enabled: bool = True) -> None:
    """Make failures on any rank of ``comm`` end the whole job (see the module docstring).

    Called by ``dist.init()``; ``enabled=False`` keeps the exit clean-up (which never blocks)
    but no abort. Installing again only updates the communicator."""
    with _lock:
        _state["comm"], _state["enabled"] = comm, bool(enabled)
        if "sys" in _state:
            return
        _state["sys"], _state["thread"], _state["exit"] = (sys.excepthook, threading.excepthook,
                                                           sys.exit)
        sys.excepthook, threading.excepthook, sys.exit = _sys_hook, _thread_hook, _exit
        atexit.register(_at_exit)
        if enabled and getattr(comm, "size", 1) > 1:
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGHUP):
                    if signal.getsignal(sig) == signal.SIG_DFL:
                        signal.signal(sig, _on_signal)
                        _state.setdefault("signals", []).append(sig)
            if not faulthandler.is_enabled():
                faulthandler.enable()  # a segfault prints every thread's traceback
            _Signals.install()


def guard_startup() -> None:
    """Before ``dist.init()``, in a rank of a job of several ranks: an uncaught exception ends
    the whole job too. Without it the other ranks wait for ever in MPI start-up (``mpiexec``
    does not end a job whose rank exits before MPI starts). Called when
    ``tapeflow.distributed`` is imported; the failing rank starts MPI only to abort."""
    from .launcher import job_place

    rank, size = job_place()
    if size <= 1 or _startup or not enabled_by_default():
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb) -> None:
        previous(exc_type, exc, tb)  # the traceback first, as Python prints it
        mpi = sys.modules.get("mpi4py.MPI")
        if installed() or (mpi is not None and mpi.Is_finalized()):
            return  # dist.init()'s handling is in charge, or MPI is over
        abort(f"tapeflow: rank {rank}/{size} failed before dist.init(): {exc_type.__name__}: "
              f"{exc}; ending the job")
    sys.excepthook = hook
    _startup.append(hook)


_startup: list = []


def uninstall() -> None:
    """Restore what :func:`install` replaced (no-op if not installed)."""
    with _lock:
        if "sys" in _state:
            if sys.excepthook is _sys_hook:
                sys.excepthook = _state["sys"]
            if threading.excepthook is _thread_hook:
                threading.excepthook = _state["thread"]
            if sys.exit is _exit:
                sys.exit = _state["exit"]
            atexit.unregister(_at_exit)
            for sig in _state.get("signals", []):
                if signal.getsignal(sig) is _on_signal:
                    signal.signal(sig, signal.SIG_DFL)
        _state.clear()


def forget(comm: Any, successor: Any = None) -> None:
    """``comm`` was closed: the exit protocol runs on ``successor`` instead (or not at all)."""
    with _lock:
        if _state.get("comm") is comm:
            _state["comm"] = successor
