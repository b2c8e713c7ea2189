"""Build and run ``mpiexec`` command lines as argv lists (never a shell string).

The syntax is MPICH's Hydra launcher, which the ``mpich`` wheel installs next to the Python
interpreter: ``-n N`` and ``-genv NAME VALUE``.

>>> argv = mpiexec_argv(2, ["python", "train.py"], mpiexec="mpiexec", cores=8)
>>> argv[:5]
['mpiexec', '-n', '2', '-bind-to', 'core:4']
>>> argv[5:8], argv[-2:]
(['-genv', 'OMP_NUM_THREADS', '4'], ['python', 'train.py'])
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

__all__ = ["find_mpiexec", "threads_per_rank", "mpiexec_argv", "run_mpiexec", "run_job",
           "inside_mpi_job", "cpu_count", "THREAD_ENV_VARS", "FORWARDED_SIGNALS"]

# BLAS/OpenMP pools that would otherwise each start one thread per core in every rank.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _check_np(np: int) -> int:
    if isinstance(np, bool) or not isinstance(np, int) or np < 1:
        raise ValueError(f"the number of ranks must be an integer >= 1, got {np!r}")
    return np


def cpu_count() -> int:
    """The cores this process may run on (respects taskset / cgroup CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_cpu_count = cpu_count

# Variables an MPI launcher sets in each rank (MPICH/Hydra, Open MPI, PMIx, Slurm's PMI).
# (MS-MPI's MPI_LOCALNRANKS too). The one place that knows them.
_JOB_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_JOB_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
_JOB_HINT_VARS = (*_JOB_RANK_VARS, "PMI_FD", "HYDRA_CONTROL_FD", "MPI_LOCALNRANKS",
                  "MPI_LOCALNRANKIDS")


def job_place(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(rank, size)`` as the launcher announced them, known before MPI starts; ``(0, 1)``
    outside a job."""
    environ = os.environ if environ is None else environ

    def first(names: tuple[str, ...], default: int) -> int:
        for name in names:
            value = environ.get(name, "")
            if value.strip().isdigit():
                return int(value)
        return default
    return first(_JOB_RANK_VARS, 0), first(_JOB_SIZE_VARS, 1)


def inside_mpi_job(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started as a rank of an MPI job (``mpiexec``'s variables)."""
    environ = os.environ if environ is None else environ
    return any(name in environ for name in (*_JOB_SIZE_VARS, *_JOB_HINT_VARS))


def find_mpiexec() -> str:
    """The ``mpiexec`` next to ``sys.executable`` (the ``mpich`` wheel's), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found:
        return found
    raise FileNotFoundError(f"mpiexec not found next to {sys.executable} nor on PATH; "
                            "`pip install mpich` installs one next to the interpreter")


def threads_per_rank(np: int, cores: int | None = None) -> int:
    """Threads each of ``np`` ranks may use so that together they fill ``cores`` (>= 1)."""
    _check_np(np)
    cores = _cpu_count() if cores is None else cores
    return max(1, cores // np)


def mpiexec_argv(np: int, command: Sequence[str], *, mpiexec: str | None = None,
                 env: Mapping[str, str] | None = None, oversubscribe: bool = False,
                 extra: Iterable[str] = (), cores: int | None = None,
                 bind: bool = True) -> list[str]:
    """The argv that runs ``command`` on ``np`` ranks.

    Each rank gets ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` =
    :func:`threads_per_rank`; ``env`` adds or overrides variables (``-genv``). More ranks than
    ``cores`` (default: this machine's) is an error unless ``oversubscribe``, which also adds
    ``-bind-to none`` so time-shared ranks are not pinned to the same cores. Otherwise each
    rank is bound to as many cores as it has BLAS threads (``-bind-to core:T``): unbound ranks
    were moved between cores by the scheduler, and the 2-rank weak-scaling efficiency of the
    benchmark MLP fell from 89-93 % to 77-92 % (BENCHMARKS.md). ``bind=False`` leaves placement
    to the OS (e.g. when several jobs share a machine). ``extra`` goes before the command (e.g.
    ``("-hosts", "a,b")``).
    """
    _check_np(np)
    command = [str(part) for part in command]
    if not command:
        raise ValueError("mpiexec_argv: the command to run is empty")
    cores = _cpu_count() if cores is None else cores
    if np > cores and not oversubscribe:
        raise ValueError(f"{np} ranks on {cores} cores would oversubscribe this machine; "
                         "pass oversubscribe=True to time-share the cores")
    threads = str(threads_per_rank(np, cores))
    variables = {name: threads for name in THREAD_ENV_VARS}
    variables.update({str(k): str(v) for k, v in (env or {}).items()})
    argv = [mpiexec or find_mpiexec(), "-n", str(np)]
    if np > cores:
        argv += ["-bind-to", "none"]
    elif bind:
        per_rank = max(_positive_or(variables.get(name), 1) for name in THREAD_ENV_VARS)
        argv += ["-bind-to", f"core:{max(1, min(per_rank, cores // np))}"]
    for name, value in variables.items():
        argv += ["-genv", name, value]
    return argv + [str(part) for part in extra] + command


def _positive_or(text: str | None, default: int) -> int:
    try:
        value = int(text) if text is not None else default
    except ValueError:
        return default
    return value if value > 0 else default


def run_mpiexec(np: int, command: Sequence[str], *, timeout: float | None = None,
                grace: float = 30.0, **options) -> int:
    """Run :func:`mpiexec_argv` ``(np, command, **options)`` under :func:`run_job`.

    Returns the job's exit status, or ``128 + signum`` when a signal stopped it.
    ``timeout`` (seconds) raises :class:`subprocess.TimeoutExpired` after killing the job.
    """
    return run_job(mpiexec_argv(np, command, **options), timeout=timeout, grace=grace)


# SIGINT (Ctrl-C), SIGTERM (kill, batch schedulers), SIGHUP (the terminal went away).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _become_subreaper() -> None:
    """Linux: orphaned descendants (ranks whose mpiexec died) are re-parented to this process,
    so they can still be found and stopped. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (ppid first), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[1:]
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live descendant of ``root`` (empty where /proc is absent)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[0]), []).append((int(entry), fields[18]))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def _kill_all(processes: Mapping[int, str]) -> None:
    """SIGKILL each recorded process that is still the same one (same start time), then
    collect the status of those that are children of this process (no zombies left)."""
    for pid, started in processes.items():
        fields = _stat(pid)
        if fields is not None and fields[18] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for pid in processes:
        fields = _stat(pid)
        if fields is not None and int(fields[0]) == os.getpid():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


_TERM_DELAY_S = 0.5  # after the local ranks got the real signal, before mpiexec gets SIGTERM

# The processes that start ranks: MPICH's Hydra proxy, Open MPI's daemons.
_RANK_PARENTS = ("hydra_pmi_proxy", "orted", "prted")


def _send_to_ranks(processes: Mapping[int, str], signum: int) -> int:
    """Send ``signum`` to the ranks among ``processes`` (children of a local MPI proxy);
    returns how many were sent it."""
    sent = 0
    for pid, started in processes.items():
        fields = _stat(pid)
        if fields is None or fields[18] != started:
            continue
        try:
            with open(f"/proc/{fields[0]}/comm", encoding="ascii", errors="replace") as f:
                parent = f.read().strip()
            if parent in _RANK_PARENTS:
                os.kill(pid, signum)
                sent += 1
        except OSError:
            pass
    return sent


def run_job(argv: Sequence[str], *, timeout: float | None = None, grace: float = 30.0,
            poll: float = 0.2) -> int:
    """Run a job launcher (``mpiexec ...``) and stay responsible for every process it starts.

    SIGINT, SIGTERM and SIGHUP received here are passed on to the job: as they are to the
    ranks on this machine, then (half a second later where there were local ranks to tell) as
    SIGTERM to mpiexec, which forwards it to every rank without a banner (tapeflow-train saves
    a checkpoint on the first one it gets). The job is waited for.
    A job still running ``grace`` seconds after the signal, or a
    second signal, is killed (SIGKILL) with every process it started. Descendants are tracked
    while the job runs, and on Linux orphans re-parent here, so none outlives this call.
    Returns the job's status, or ``128 + signum`` of the first signal that stopped it.
    """
    signals: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, lambda signum, frame: signals.append(signum))
                    for s in FORWARDED_SIGNALS}
    _become_subreaper()
    before = set(_descendants(os.getpid()))  # e.g. a test runner's other children: not ours
    started = time.monotonic()
    tracked: dict[int, str] = {}
    stop_sent = term_at = None
    timed_out = False
    proc = None
    try:
        # Its own session: a terminal's Ctrl-C reaches only this process, which passes it on.
        proc = subprocess.Popen(list(argv), start_new_session=True)
        while True:
            try:
                proc.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pass
            tracked.update(_descendants(proc.pid))
            now = time.monotonic()
            if signals and stop_sent is None:
                stop_sent = now
                # Local ranks learn the real signal; mpiexec passes SIGTERM to every rank (and
                # to the remote ones), a moment later where local ranks were told, so a loaded
                # machine cannot hand them the SIGTERM first.
                told = _send_to_ranks(tracked, signals[0])
                term_at = now + (_TERM_DELAY_S if told else 0.0)
            if term_at is not None and now >= term_at:
                term_at = None
                proc.send_signal(signal.SIGTERM)
            if stop_sent is not None and (len(signals) > 1 or now - stop_sent > grace):
                break  # a second signal, or the grace period is over: killed below
            if timeout is not None and now - started > timeout:
                timed_out = True
                break
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        tracked.update({pid: t for pid, t in _descendants(os.getpid()).items()
                        if pid not in before})
        _kill_all(tracked)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if timed_out:
        raise subprocess.TimeoutExpired(list(argv), timeout)
    return 128 + signals[0] if signals else proc.returncode
