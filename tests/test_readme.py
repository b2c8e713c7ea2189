"""The README's examples run as written (so they stay true), and the names it promises exist."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _example(name: str) -> str:
    """The python block that follows ``<!-- example: NAME ... -->`` in the README."""
    text = README.read_text()
    m = re.search(rf"<!-- example: {re.escape(name)}[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README has no example {name}"
    return m.group(1)


@pytest.fixture(scope="module")
def mnist_env() -> dict:
    """An environment where MNIST is found locally (else the test is skipped: no download)."""
    import tapeflow as tp

    try:
        tp.data.load_mnist(download=False)
    except tp.data.DatasetError:
        pytest.skip("MNIST is not available locally (set TAPEFLOW_DATA_DIR)")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if env.get("TAPEFLOW_DATA_DIR"):  # the examples run in other folders: no relative path
        env["TAPEFLOW_DATA_DIR"] = os.path.abspath(env["TAPEFLOW_DATA_DIR"])
    return env


def _accuracies(out: str) -> list[float]:
    return [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", out)]


def test_five_line_tape_example():
    text = README.read_text()
    block = re.search(r"## GradientTape in five lines\s*```python\n(.*?)```", text, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[66. 88.]"


def test_custom_loop_example_trains_mnist(tmp_path, mnist_env):
    script = tmp_path / "custom_loop.py"
    script.write_text(_example("custom_loop.py"))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600, env=mnist_env)
    assert done.returncode == 0, done.stderr
    accuracies = _accuracies(done.stdout)
    assert len(accuracies) == 2 and accuracies[-1] > 0.96, done.stdout


def test_trainer_example_writes_checkpoints_metrics_and_csv(tmp_path, mnist_env):
    script = tmp_path / "trainer.py"
    script.write_text(_example("trainer.py"))
    for run in (1, 2):  # the second run resumes from the first one's checkpoint
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=600, env=mnist_env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert _accuracies(done.stdout)[-1] > 0.95, done.stdout
    runs = tmp_path / "runs" / "b"
    rows = (runs / "epochs.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch,") and rows[1].startswith("0,")
    assert sorted(p.name for p in runs.glob("ckpt-*")) == ["ckpt-000000469"]
    assert "resumed from" in done.stdout and "epoch 1/1" not in done.stdout  # nothing left


def _on_two_ranks(example: str, tmp_path, env: dict, mpiexec: str) -> str:
    """Run a README example under ``mpiexec -n 2``; its standard output."""
    from tapeflow.distributed.launcher import cpu_count

    script = tmp_path / example
    script.write_text(_example(example))
    env = {k: v for k, v in env.items() if not k.startswith(("PMI_", "HYDRA_"))}
    cmd = [mpiexec, "-n", "2", *(["-bind-to", "none"] if cpu_count() < 2 else []),
           sys.executable, str(script)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_distributed_loop_example_on_two_ranks(tmp_path, mnist_env, mpiexec):
    out = _on_two_ranks("distributed_loop.py", tmp_path, mnist_env, mpiexec)
    assert out.count("on 2 rank(s)") == 2, out  # printed by rank 0 only
    assert _accuracies(out)[-1] > 0.96, out


def test_function_example_traces_twice_and_trains_on_two_ranks(tmp_path, mnist_env, mpiexec):
    out = _on_two_ranks("function_loop.py", tmp_path, mnist_env, mpiexec)
    assert out.count("traces") == 1 and out.startswith("2 traces, "), out  # rank 0 prints
    assert _accuracies(out)[-1] > 0.95, out


def test_fit_example_runs_unchanged_on_two_ranks(tmp_path, mnist_env, mpiexec):
    out = _on_two_ranks("fit.py", tmp_path, mnist_env, mpiexec)
    lines = [x for x in out.splitlines() if x.startswith("epoch ")]
    assert [x.split(":")[0] for x in lines] == ["epoch 1/1"], out  # rank 0 prints
    assert float(lines[-1].split("val loss ")[1].split(" acc ")[1].split()[0]) > 0.94


def test_the_namespaces_the_readme_promises():
    code = ("import sys, tapeflow as tp\n"
            "assert 'tapeflow.optimizers' not in sys.modules  # imported on first use only\n"
            "print(tp.optimizers.Adam.__name__, tp.data.load_mnist.__name__,\n"
            "      tp.checkpoint.save.__name__, tp.distributed.init.__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Adam", "load_mnist", "save", "init"]


def test_license_is_the_apache_2_text():
    text = (README.parent / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202
