"""The timeline: ``tapeflow-train --timeline`` writes a Chrome trace with the step's phases."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tapeflow import timeline


def test_spans_and_instants_stream_to_valid_json(tmp_path):
    path = timeline.start(tmp_path / "t.json")
    assert timeline.active()
    with timeline.span("forward", batch=3):
        timeline.instant("bucket ready", "reduce", bucket=0)
    timeline.stop()
    assert not timeline.active()
    events = json.loads(path.read_text())
    spans = [e for e in events if e["name"] == "forward"]
    assert len(spans) == 1 and spans[0]["ph"] == "X" and spans[0]["args"] == {"batch": 3}
    assert spans[0]["dur"] >= 0
    assert any(e["name"] == "bucket ready" and e["ph"] == "i" for e in events)
    with timeline.span("ignored"):  # off: a no-op
        pass
    assert "ignored" not in path.read_text()


def test_rank_files():
    assert timeline.path_for_rank("run.json", 0, 1) == Path("run.json")
    assert timeline.path_for_rank("out/run.json", 3, 4) == Path("out/run.rank3.json")


def test_cli_timeline_has_every_phase(tmp_path):
    root = os.environ.get("TAPEFLOW_DATA_DIR")
    if not root or not (Path(root) / "mnist").is_dir():
        pytest.skip("needs the MNIST files under $TAPEFLOW_DATA_DIR/mnist")
    trace = tmp_path / "trace.json"
    job = subprocess.run(
        [sys.executable, "-m", "tapeflow.launch.train", "--data-dir", root, "--model", "mlp",
         "--hidden", "32", "--epochs", "1", "--train-limit", "256", "--test-limit", "64",
         "--batch-size", "64", "--no-progress", "--checkpoint-dir", str(tmp_path / "ck"),
         "--timeline", str(trace), "--eager"],  # eager steps: each phase separately
        capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr[-2000:]
    names = {e["name"] for e in json.loads(trace.read_text())}
    assert {"data", "forward", "gradient (backward + reduction)", "optimizer",
            "checkpoint"} <= names
