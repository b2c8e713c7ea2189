"""``tapeflow-plot``: training curves from tapeflow-train --metrics files, as a PNG.

    tapeflow-plot runs/a/metrics.jsonl -o curves.png
    tapeflow-plot runs/a/metrics.jsonl runs/b/metrics.jsonl -o compare.png --x epoch

Two panels, loss and accuracy, against the step (or the epoch with ``--x epoch``): the
training curve from the step records (thin), each epoch's training figure (circles) and its
test figure (squares). Each run (a run id; a resumed run keeps its id) is one colour, so
several runs or files overlay. Lines cut by a crash are skipped and counted.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tapeflow.launch.cli import HelpFormatter, Parser, UsageError, check_writable_file, fail

__all__ = ["Run", "read_runs", "plot_runs", "main"]

PROG = "tapeflow-plot"


@dataclass
class Run:
    """The records of one run id in one metrics file."""

    label: str
    steps: list[dict] = field(default_factory=list)    # step records
    epochs: list[dict] = field(default_factory=list)   # epoch-end records
    steps_per_epoch: int | None = None

    def x(self, record: dict, axis: str) -> float:
        if axis == "step":
            return record["step"]
        if "test_loss" in record:  # an epoch-end record
            return float(record["epoch"])
        per = self.steps_per_epoch or 0
        return record["step"] / per if per else float(record["epoch"])


def read_runs(paths: list[str | Path]) -> tuple[list[Run], int]:
    """The runs in ``paths`` (in order of first appearance) and the number of skipped lines.

    Raises :class:`UsageError` for a missing or unreadable file, or one with no records."""
    runs: dict[tuple[str, str], Run] = {}
    skipped = 0
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file (write one with tapeflow-train --metrics "
                             f"{path})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: cannot read: {e}") from None
        found = 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                skipped += 1
                continue
            run_id = str(record.get("run") or "-")
            run = runs.get((str(path), run_id))
            if run is None:
                label = f"{path.stem} {run_id[:6]}" if run_id != "-" else path.stem
                run = runs[(str(path), run_id)] = Run(label)
            found += 1
            if record.get("event") == "start":
                run.steps_per_epoch = record.get("steps_per_epoch") or run.steps_per_epoch
            elif "test_loss" in record:
                run.epochs.append(record)
            elif "loss" in record:
                run.steps.append(record)
        if not found:
            raise UsageError(f"{path}: no metrics records (expected JSON lines written by "
                             "tapeflow-train --metrics)")
    for run in runs.values():
        if run.steps_per_epoch is None and run.epochs:
            first = min(run.epochs, key=lambda r: r["epoch"])
            run.steps_per_epoch = first["step"] // max(first["epoch"], 1) or None
        # a resume rewrites the steps after its checkpoint: keep the last record of a step
        run.steps = sorted({r["step"]: r for r in run.steps}.values(), key=lambda r: r["step"])
        run.epochs = sorted({r["epoch"]: r for r in run.epochs}.values(),
                            key=lambda r: r["epoch"])
    return list(runs.values()), skipped


def plot_runs(runs: list[Run], out: str | Path, axis: str = "step", title: str | None = None
              ) -> None:
    """Draw loss and accuracy of every run into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        c = colors[i % len(colors)]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            if run.steps:
                ax.plot([run.x(r, axis) for r in run.steps], [r[key] for r in run.steps],
                        color=c, lw=0.8, alpha=0.45, label=f"{run.label} train (steps)")
            if run.epochs:
                xs = [run.x(r, axis) if axis == "epoch" else r["step"] for r in run.epochs]
                ax.plot(xs, [r[key] for r in run.epochs], "o-", color=c, ms=4, lw=1.2,
                        label=f"{run.label} train (epoch)")
                ax.plot(xs, [r[f"test_{key}"] for r in run.epochs], "s--", color=c, ms=4,
                        lw=1.2, label=f"{run.label} test")
    for ax, name in ((ax_loss, "loss (cross-entropy)"), (ax_acc, "accuracy")):
        ax.set_xlabel(axis)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_acc.set_ylim(top=1.0)
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=7, loc="upper right")
    ax_acc.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
               epilog=__doc__.split("\n\n")[1], formatter_class=HelpFormatter)
    p.add_argument("metrics", nargs="+", help="metrics files (JSON lines) from tapeflow-train")
    p.add_argument("-o", "--out", default="curves.png", help="the PNG to write")
    p.add_argument("--x", choices=("step", "epoch"), default="step", dest="axis",
                   help="horizontal axis")
    p.add_argument("--title", help="figure title")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if not args.out.lower().endswith(".png"):
            raise UsageError(f"-o {args.out}: the output is a PNG; give a name ending in .png")
        check_writable_file(args.out, "-o")
        runs, skipped = read_runs(args.metrics)
        import matplotlib  # noqa: F401
    except UsageError as e:
        fail(PROG, str(e))
    except ImportError:
        fail(PROG, "drawing needs matplotlib: pip install matplotlib")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot_runs(runs, args.out, args.axis, args.title)
    note = f" ({skipped} unreadable lines skipped)" if skipped else ""
    points = sum(len(r.steps) + len(r.epochs) for r in runs)
    print(f"{PROG}: wrote {args.out}: {len(runs)} run{'s' if len(runs) != 1 else ''}, "
          f"{points} points{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
