"""Elastic restarts for ``tapeflow-train --np N --max-restarts K``.

When a rank dies (killed, out of memory, a node lost) the job ends (the failure handling of
``tapeflow.distributed`` makes sure no rank hangs) and this loop starts it again with
``--resume auto``, from the newest good checkpoint in ``--checkpoint-dir``, up to ``K`` times.
Batches are drawn from ``(seed, epoch)`` as global batches and a resume is exact, so a run
that was restarted ends where an uninterrupted run ends; ``--checkpoint-every`` bounds the
work a restart repeats.

Not restarted: a clean exit, a usage or configuration error (status 2: it would fail again),
and a stop asked for by the user (SIGINT/SIGTERM/SIGHUP to the launcher).
"""
from __future__ import annotations

import signal
import sys
from typing import Callable, Sequence

__all__ = ["run_elastic", "final_status", "USER_STOP"]

#: statuses the launcher returns when it was itself asked to stop (SIGINT/SIGTERM/SIGHUP)
USER_STOP = frozenset(128 + s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


def final_status(code: int, stopped_by_user: bool) -> bool:
    """Whether a job's exit status ends the elastic loop."""
    return code == 0 or code == 2 or stopped_by_user


def _describe(code: int) -> str:
    if code > 128:
        try:
            return f"a rank ended by {signal.Signals(code - 128).name} (status {code})"
        except ValueError:
            pass
    return f"status {code}"


def run_elastic(command: Sequence[str], max_restarts: int,
                launch: Callable[[list[str]], tuple[int, bool]],
                say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
                prog: str = "tapeflow-train") -> int:
    """Run ``launch(command)`` and relaunch with ``--resume auto`` after a failure.

    ``launch`` returns ``(status, stopped_by_user)``. Returns the last status."""
    command = list(command)
    attempt = 0
    while True:
        argv = command if attempt == 0 else _with_resume_auto(command)
        code, stopped = launch(argv)
        if final_status(code, stopped):
            if attempt and code == 0:
                say(f"{prog}: finished after {attempt} restart{'s' if attempt > 1 else ''}")
            return code
        if attempt >= max_restarts:
            say(f"{prog}: the job failed ({_describe(code)}); no restarts left "
                f"(--max-restarts {max_restarts})")
            return code
        attempt += 1
        say(f"{prog}: the job failed ({_describe(code)}); restart {attempt} of {max_restarts} "
            "from the newest good checkpoint")


def _with_resume_auto(command: list[str]) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(command):
        if skip:
            skip = False
            continue
        if a == "--resume":
            if i + 1 < len(command) and command[i + 1] in ("require", "auto"):
                skip = True
            continue
        if a.startswith("--resume="):
            continue
        out.append(a)
    return out + ["--resume", "auto"]
