"""A stop signal while a command-line tool is still importing tapeflow ends it with one line;
importing tapeflow as a library leaves the signal handlers alone."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)


def test_a_signal_during_the_tools_imports_is_one_line():
    job = _run("""
        import os, signal, sys, time
        sys.argv[0] = "/usr/bin/tapeflow-train"
        import tapeflow                      # the guard is the package's first statement
        os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C came before main() took over
        time.sleep(5)
        print("not stopped")
    """)
    assert job.returncode == 128 + signal.SIGINT
    assert job.stderr.strip().splitlines() == [
        "tapeflow-train: stopped by SIGINT before it started"]
    assert "not stopped" not in job.stdout


def test_importing_the_library_leaves_signal_handlers_alone():
    job = _run("""
        import signal
        import tapeflow
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        print("ok")
    """)
    assert job.returncode == 0, job.stderr
    assert job.stdout.strip() == "ok"
