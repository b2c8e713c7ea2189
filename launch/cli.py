"""What the command-line tools share: one-line errors, argument types and path checks.

Every user mistake ends with one line, ``<prog>: error: <what was wrong and what to do>``, and
exit status 2 (argparse's convention), without a usage block or a traceback. Under ``mpiexec``
only rank 0 prints it (every rank runs the same checks on the same arguments, so all exit).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path
from typing import Callable, NoReturn

__all__ = ["Parser", "HelpFormatter", "UsageError", "launcher_rank", "launcher_size",
           "positive_int", "nonnegative_int", "finite_float", "positive_float", "int_list",
           "check_writable_dir", "check_writable_file", "plural", "Stopped", "stop_on_signals",
           "signal_name", "fail"]

def launcher_rank() -> int:
    """This process's rank as mpiexec announced it (0 outside a job), known before MPI init."""
    from tapeflow.distributed.launcher import job_place  # (imported when first asked)

    return job_place()[0]


def launcher_size() -> int:
    """The job's size as mpiexec announced it (1 outside a job), known before MPI init."""
    from tapeflow.distributed.launcher import job_place

    return job_place()[1]


class UsageError(Exception):
    """A mistake in the command line or its files: reported as one line, exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has one worth showing: not None/False) and keeps
    the examples in the description and epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, argparse.SUPPRESS)
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        if isinstance(default, (tuple, list)):
            default = ",".join(map(str, default))
        return f"{text} (default: {default})".strip()


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message``, exit 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        if message.startswith(("unrecognized arguments", "the following arguments")):
            message += f" (see {self.prog} --help)"
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` on rank 0 (one line) and exit with status 2."""
    if launcher_rank() == 0:
        sys.stdout.flush()
        sys.stderr.write(f"{prog}: error: {' '.join(str(message).split())}\n")
        sys.stderr.flush()
    sys.exit(2)


def plural(n: int, word: str) -> str:
    """``plural(1, "rank")`` -> ``"1 rank"``; ``plural(2, "epoch")`` -> ``"2 epochs"``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


# --------------------------------------------------------------------------- argument types
def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def finite_float(text: str) -> float:
    """A float that is not nan or inf (range checks come with each option)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_list(flag: str, minimum: int = 1) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated integers >= ``minimum`` such as ``512,512``."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(p) for p in text.split(",") if p.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes comma-separated integers such as 512,512; got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(
                f"{flag} needs comma-separated integers >= {minimum}; got {text!r}")
        return values

    return parse


# --------------------------------------------------------------------------- paths
def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _creatable(path: Path, flag: str, what: str) -> None:
    base = _first_existing(path.parent)
    if not base.is_dir():
        raise UsageError(f"{flag} {path}: cannot create the {what}: {base} is a file, not a "
                         "directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot create the {what}: {base} is not writable")


def check_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """A directory that exists and is writable, or can be created; else :class:`UsageError`."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag} {path} is a file, not a directory: give a directory "
                             "(it is created if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path}: directory is not writable")
        return
    _creatable(path, flag, "directory")


def check_writable_file(path: str | os.PathLike, flag: str) -> None:
    """A file that exists and is writable, or can be created; else :class:`UsageError`."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory: give a file name such as "
                         f"{path / 'metrics.jsonl'}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{flag} {path}: file is not writable")
        return
    _creatable(path, flag, "file")


# --------------------------------------------------------------------------- signals
def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Stopped(BaseException):
    """SIGINT/SIGTERM/SIGHUP arrived before the training loop took over the signals."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal_name(self.signum)


def _ignore(signum, frame) -> None:
    """A Python-level no-op (not SIG_IGN: a signal already pending would then be reported as
    'ignored due to race condition')."""


def _raise_stopped(signum, frame) -> NoReturn:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _ignore)  # the first signal decides; a launcher may send more
    raise Stopped(signum)


def stop_on_signals() -> None:
    """From now on SIGINT, SIGTERM and SIGHUP raise :class:`Stopped` (main thread only)."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _raise_stopped)
