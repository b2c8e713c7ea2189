"""``tapeflow-bench``: the scaling subcommand end to end (1 and 2 ranks) and its argument errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("mpi4py")

from tapeflow.distributed.launcher import find_mpiexec  # noqa: E402
from tapeflow.launch import bench  # noqa: E402

BENCH = [sys.executable, "-m", "tapeflow.launch.bench"]


def _have_mpiexec() -> bool:
    try:
        find_mpiexec()
        return True
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _have_mpiexec(), reason="needs mpiexec (pip install mpich)")
def test_scaling_writes_json_and_png(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        BENCH + ["scaling", "--ranks", "1,2", "--steps", "3", "--warmup", "1", "--hidden", "32",
                 "--mode", "both", "--comm-repeats", "3", "--repeats", "3",
                 "--warmup-seconds", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "scaling.json").read_text())
    assert {"machine", "config", "modes"} <= set(result)
    assert result["config"]["hidden"] == [32]
    assert set(result["modes"]) == {"weak", "strong"}
    for mode, rows in result["modes"].items():
        assert [r["ranks"] for r in rows] == [1, 2]
        for r in rows:
            for key in ("batch_per_rank", "global_batch", "step_time_s", "samples_per_s",
                        "efficiency", "backward_s", "exposed_wait_s", "standalone_comm_s",
                        "hidden_fraction"):
                assert key in r, (mode, key)
            assert isinstance(r["efficiency"], float) and 0 < r["efficiency"] < 2
            assert r["step_time_s"] > 0 and r["samples_per_s"] > 0
        assert rows[0]["efficiency"] == pytest.approx(1.0)
        base = rows[0]
        for r in rows:  # three interleaved rounds; each point reports its median round
            assert len(r["efficiency_rounds"]) == 3 and len(r["step_time_rounds_s"]) == 3
            assert r["step_time_s"] == sorted(r["step_time_rounds_s"])[1]
            # the efficiency is computed from the very throughputs the table shows
            expected = (r["samples_per_s"] / (2 * base["samples_per_s"]) if mode == "weak"
                        and r["ranks"] == 2 else base["step_time_s"] / (r["ranks"]
                                                                        * r["step_time_s"]))
            assert r["efficiency"] == pytest.approx(expected)
            assert min(r["efficiency_rounds"]) <= r["efficiency_round_median"] \
                <= max(r["efficiency_rounds"])
            assert sorted(r["samples_per_s_rounds"])[1] == pytest.approx(r["samples_per_s"])
        assert rows[1]["hidden_fraction"] is None or 0 <= rows[1]["hidden_fraction"] <= 1
    weak, strong = result["modes"]["weak"], result["modes"]["strong"]
    assert [r["global_batch"] for r in weak] == [128, 256]
    assert [r["global_batch"] for r in strong] == [256, 256]
    assert [r["batch_per_rank"] for r in strong] == [256, 128]
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "samples/s" in proc.stdout
    # the table's efficiency column is the figure in the JSON (and in the plot)
    for mode, rows in result["modes"].items():
        line = next(x for x in proc.stdout.splitlines()
                    if x.split()[:2] == [mode, "2"] and len(x.split()) > 8)
        assert f"{100 * rows[1]['efficiency']:6.1f}" in line
        assert f"{100 * min(rows[1]['efficiency_rounds']):.1f}-" in line


def test_out_at_a_file_is_one_line_before_any_benchmark(tmp_path, capsys):
    a_file = tmp_path / "results"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as e:
        bench.main(["scaling", "--out", str(a_file)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("tapeflow-bench scaling: error: --out ") and "is a file" in err
    with pytest.raises(SystemExit):
        bench.main(["allreduce", "--json", str(tmp_path)])
    assert "--json" in capsys.readouterr().err


def test_missing_matplotlib_is_reported_before_the_benchmark(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(bench, "run_scaling", lambda args: pytest.fail("benchmark ran"))
    with pytest.raises(SystemExit) as e:
        bench.main(["scaling", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "pip install matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["scaling", "--ranks", "0"], "--ranks"),
    (["scaling", "--ranks", "abc"], "--ranks"),
    (["scaling", "--ranks", "1,-2"], "--ranks"),
    (["scaling", "--hidden", "x"], "--hidden"),
    (["scaling", "--steps", "0"], "--steps"),
    (["scaling", "--mode", "sideways"], "--mode"),
    (["allreduce", "--ranks", "zero"], "--ranks"),
    (["allreduce", "--mb", "-1"], "--mb"),
])
def test_argument_errors_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and err.count("\n") == 1 and err.startswith("tapeflow-bench")


def test_cli_argument_error_exit_status():
    proc = subprocess.run(BENCH + ["scaling", "--ranks", "0"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "--ranks" in proc.stderr


@pytest.mark.parametrize("shapes, limit, expected", [
    ([(784, 512), (512,), (512, 512), (512,), (512, 10), (10,)], 1 << 20,
     [10 + 5120 + 512 + 3, 262144 + 1, 512 + 1, 401408 + 1]),
    ([(4,), (4,)], 8, [5, 5]),
    ([(4,), (4,)], 1 << 20, [10]),
])
def test_bucket_sizes_follow_the_tape_plan(shapes, limit, expected):
    assert bench.bucket_sizes(shapes, limit) == expected


def test_bucket_sizes_match_distributed_tape():
    import tapeflow as tp
    from tapeflow import distributed as dist

    w = [tp.Variable(tp.ones((300, 200))), tp.Variable(tp.ones((200,))),
         tp.Variable(tp.ones((200, 50)))]
    with dist.DistributedGradientTape(tp.GradientTape(), dist.init("local"),
                                      bucket_bytes=100_000) as tape:
        loss = tp.reduce_sum(w[0]) + tp.reduce_sum(w[1]) + tp.reduce_sum(w[2])
    tape.gradient(loss, w)
    sizes = bench.bucket_sizes([tuple(v.shape) for v in w], 100_000)
    assert len(sizes) == tape.stats["buckets"]
    assert 4 * sum(sizes) == tape.stats["bytes"]


def test_step_forwards_arguments_to_step_time_script():
    proc = subprocess.run(BENCH + ["step", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--repeats" in proc.stdout


@pytest.mark.skipif(not _have_mpiexec(), reason="needs mpiexec (pip install mpich)")
@pytest.mark.parametrize("hidden, path", [("8", "mpi"), ("128", "shared-memory")])
def test_allreduce_compares_the_tape_with_a_raw_allreduce(tmp_path, hidden, path):
    # 784-8-10 has 25 KB of gradients (MPI's small-message path); 784-128-10 has 407 KB
    out = tmp_path / "allreduce.json"
    proc = subprocess.run(
        BENCH + ["allreduce", "--ranks", "2", "--hidden", hidden, "--repeats", "5",
                 "--warmup-seconds", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["reduction"] == path
    assert result["grad_bytes"] == 4 * (785 * int(hidden) + (int(hidden) + 1) * 10)
    assert result["raw_bytes"] == result["grad_bytes"]
    assert result["tape_s"] > 0 and result["raw_s"] > 0
    assert result["ratio"] == pytest.approx(result["tape_GBps"] / result["raw_GBps"])
    assert result["comm_allreduce_s"] > 0
    assert result["comm_path"] == ("shared-memory" if path == "shared-memory" else "mpi")
    assert "bandwidth ratio tape/raw" in proc.stdout
