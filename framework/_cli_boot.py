"""The command-line tools' first act: a stop signal during their imports ends them with one line.

``tapeflow-train``, ``tapeflow-bench`` and ``tapeflow-plot`` import the whole package before
their ``main`` can take over SIGINT/SIGTERM/SIGHUP; Ctrl-C in that half second used to print
a traceback of whatever module was loading. ``tapeflow/__init__`` calls :func:`guard` before
anything else, and only when the process is one of those tools (judged by ``sys.argv[0]``), so
importing tapeflow as a library never touches signal handlers. Their ``main`` replaces these
handlers with its own.
"""
from __future__ import annotations

import os
import signal
import sys

__all__ = ["guard", "CLI_NAMES"]

CLI_NAMES = ("tapeflow-train", "tapeflow-bench", "tapeflow-plot")


def _stop(signum, frame) -> None:
    del frame
    prog = os.path.basename(sys.argv[0])
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    sys.stderr.write(f"{prog}: stopped by {name} before it started\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def guard() -> None:
    """Install the one-line stop handlers when this process is one of the CLI tools."""
    if not sys.argv or os.path.basename(sys.argv[0]) not in CLI_NAMES:
        return
    try:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(s) in (signal.default_int_handler, signal.SIG_DFL):
                signal.signal(s, _stop)
    except ValueError:  # not the main thread
        pass
