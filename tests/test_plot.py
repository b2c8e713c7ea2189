"""``tapeflow-plot``: runs read from metrics files (grouped, deduplicated), a PNG drawn, and
one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from tapeflow.launch import plot  # noqa: E402


def _write(path: Path, run: str, steps: int = 6, per_epoch: int = 3, extra: str = "") -> Path:
    lines = [{"run": run, "time": 1.0, "event": "start", "step": 0, "epoch": 0,
              "steps_per_epoch": per_epoch}]
    for s in range(1, steps + 1):
        lines.append({"run": run, "time": 1.0 + s, "step": s, "epoch": 1 + (s - 1) // per_epoch,
                      "loss": 1.0 / s, "accuracy": 0.5 + s / 100})
        if s % per_epoch == 0:
            lines.append({"run": run, "time": 1.0 + s, "step": s, "epoch": s // per_epoch,
                          "loss": 0.9 / s, "accuracy": 0.6, "test_loss": 1.1 / s,
                          "test_accuracy": 0.55})
    with open(path, "a") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines) + extra)
    return path


def test_runs_are_grouped_by_id_and_a_cut_line_is_skipped(tmp_path):
    a = _write(tmp_path / "a.jsonl", "run-one-id", extra='{"run": "run-one-id", "st')
    _write(a, "second-run")
    b = _write(tmp_path / "b.jsonl", "run-three")
    runs, skipped = plot.read_runs([a, b])
    assert skipped == 1
    assert [r.label for r in runs] == ["a run-on", "a second", "b run-th"]
    for r in runs:
        assert [x["step"] for x in r.steps] == [1, 2, 3, 4, 5, 6]
        assert [x["epoch"] for x in r.epochs] == [1, 2] and r.steps_per_epoch == 3
        assert [r.x(x, "epoch") for x in r.steps] == [1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2]


def test_png_is_written_and_reported(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", "r1")
    out = tmp_path / "figs" / "curves.png"
    assert plot.main([str(a), "-o", str(out), "--x", "epoch", "--title", "t"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert capsys.readouterr().out == f"tapeflow-plot: wrote {out}: 1 run, 8 points\n"


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("empty", "no metrics records"),
    ("out-dir", "is a directory"),
    ("out-jpg", "give a name ending in .png"),
])
def test_mistakes_are_one_line(tmp_path, capsys, case, message):
    good = _write(tmp_path / "good.jsonl", "r")
    (tmp_path / "empty.jsonl").write_text("not json\n")
    argv = {"missing": [str(tmp_path / "nope.jsonl")], "empty": [str(tmp_path / "empty.jsonl")],
            "out-dir": [str(good), "-o", str(tmp_path) + "/x.png/"],
            "out-jpg": [str(good), "-o", str(tmp_path / "c.jpg")]}[case]
    if case == "out-dir":
        (tmp_path / "x.png").mkdir()
        argv[-1] = str(tmp_path / "x.png")
    with pytest.raises(SystemExit) as info:
        plot.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("tapeflow-plot: error: ") and message in err


def test_steps_written_twice_by_an_older_resume_are_drawn_once(tmp_path):
    metrics = _write(tmp_path / "m.jsonl", "same", steps=3)
    _write(metrics, "same", steps=6)  # steps 1..3 again, then 4..6
    runs, _ = plot.read_runs([metrics])
    assert len(runs) == 1 and [x["step"] for x in runs[0].steps] == [1, 2, 3, 4, 5, 6]
    assert [x["epoch"] for x in runs[0].epochs] == [1, 2]
