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

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

__all__ = ["find_mpiexec", "threads_per_rank", "mpiexec_argv", "run_mpiexec", "THREAD_ENV_VARS"]

# BLAS/OpenMP pools that would otherwise each start one thread per core in every rank.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _check_np(np: int) -> int:
    if isinstance(np, bool) or not isinstance(np, int) or np < 1:
        raise ValueError(f"the number of ranks must be an integer >= 1, got {np!r}")
    return np


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / cgroup CPU sets
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
                **options) -> int:
    """Run :func:`mpiexec_argv` ``(np, command, **options)`` and return its exit status.

    ``timeout`` (seconds) raises :class:`subprocess.TimeoutExpired` after killing the job.
    """
    return subprocess.run(mpiexec_argv(np, command, **options), timeout=timeout).returncode
