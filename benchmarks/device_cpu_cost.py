"""What the device work costs on the CPU: eager per-op cost and training steps, before vs after.

Not a test. Each variant is a tapeflow source tree (a folder holding an importable ``tapeflow``
package, given as ``NAME=PATH``; ``NAME=`` is the installed one). Every round runs one worker
process per variant, in alternating order, with one BLAS thread; the table gives each figure's
median over the rounds, its spread (min-max) and the ratio to the first variant::

    python benchmarks/device_cpu_cost.py --variant before=/tmp/before/site \\
        --variant after=/tmp/after/site --rounds 7 --json cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _per_call(fn, n: int, repeats: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` blocks of ``n`` calls."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def _step(tp, optimizers, F, model, x, y, opt):
    def step():
        with tp.GradientTape() as tape:
            loss = tp.reduce_mean(F.sparse_softmax_cross_entropy_with_logits(
                y, model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
    return step


def worker() -> dict:
    import numpy as np

    import tapeflow as tp
    from tapeflow import optimizers
    from tapeflow.nn import functional as F

    rng = np.random.default_rng(0)
    a = tp.constant(np.ones(10, np.float32))
    b = tp.constant(np.full(10, 0.5, np.float32))
    m = tp.constant(rng.random((8, 8), dtype=np.float32))
    v = tp.Variable(np.ones(10, np.float32))
    us = {}
    eager = {
        "add tensor+tensor": lambda: a + b, "multiply tensor*2.0": lambda: a * 2.0,
        "constant from list": lambda: tp.constant([1.0, 2.0, 3.0]),
        "relu": lambda: tp.nn.relu(a), "reduce_sum": lambda: tp.reduce_sum(a),
        "matmul 8x8": lambda: m @ m, "getitem slice": lambda: a[1:3],
        "equal (comparison)": lambda: tp.equal(a, b), "zeros((10,))": lambda: tp.zeros((10,)),
        "variable assign_add": lambda: v.assign_add(b),
    }
    for name, fn in eager.items():
        us[f"eager {name} (us)"] = _per_call(fn, 2000) * 1e6

    x = tp.Variable(np.ones(10, np.float32))

    def taped():
        with tp.GradientTape() as tape:
            y = x
            for _ in range(200):
                y = y + b
        return tape.gradient(y, x)
    us["recorded add fwd+bwd per op (us)"] = _per_call(taped, 20) / 200 * 1e6

    for name, make, shape, n in (
            ("MLP 784-512-512-10 b128 step (ms)", lambda: tp.nn.mlp([784, 512, 512, 10], seed=0),
             (128, 784), 10),
            ("MLP 784-128-10 b32 step (ms)", lambda: tp.nn.mlp([784, 128, 10], seed=0),
             (32, 784), 60),
            ("CNN mnist b32 step (ms)", lambda: tp.nn.mnist_cnn(seed=0), (32, 28, 28, 1), 2)):
        model = make()
        xs = tp.constant(rng.random(shape, dtype=np.float32))
        ys = tp.constant(rng.integers(0, 10, shape[0]))
        opt = optimizers.Adam(learning_rate=1e-3)
        us[name] = _per_call(_step(tp, optimizers, F, model, xs, ys, opt), n, 3) * 1e3
    return us


def _load_variants(variants) -> dict:
    """Import each variant's ``tapeflow`` into one process: ``{name: its sys.modules entries}``.

    Swapping those entries back into ``sys.modules`` before a timing block makes the lazy
    imports inside functions resolve to the same variant."""
    import importlib

    loaded = {}
    for name, path in variants:
        for key in [k for k in sys.modules if k == "tapeflow" or k.startswith("tapeflow.")]:
            del sys.modules[key]
        sys.path.insert(0, path)
        try:
            importlib.import_module("tapeflow")
            importlib.import_module("tapeflow.optimizers")
            importlib.import_module("tapeflow.nn.functional")
        finally:
            sys.path.remove(path)
        loaded[name] = {k: m for k, m in sys.modules.items()
                        if k == "tapeflow" or k.startswith("tapeflow.")}
    return loaded


def _use(mods: dict):
    sys.modules.update(mods)
    return mods["tapeflow"]


def inprocess(variants, rounds: int) -> dict:
    """Eager per-op costs of every variant in one process, interleaved block by block (each
    block ~2000 calls), so machine noise falls on all variants alike."""
    import numpy as np

    loaded = _load_variants(variants)
    cases = {}
    for name, mods in loaded.items():
        tp = _use(mods)
        optimizers = mods["tapeflow.optimizers"]
        a = tp.constant(np.ones(10, np.float32))
        b = tp.constant(np.full(10, 0.5, np.float32))
        v = tp.Variable(np.ones(10, np.float32))
        w = tp.Variable(np.ones(10, np.float32))
        opt = optimizers.SGD(learning_rate=0.01)
        gw = [(b, w)]

        from tapeflow.nn import functional as F  # noqa: N812 (this variant's, swapped in)

        mlp = tp.nn.mlp([784, 128, 10], seed=0)
        xs = tp.constant(np.random.default_rng(0).random((32, 784), dtype=np.float32))
        ys = tp.constant(np.arange(32) % 10)
        mlp_step = _step(tp, optimizers, F, mlp, xs, ys, optimizers.SGD(learning_rate=0.01))

        def taped(tp=tp, v=v, b=b):
            with tp.GradientTape() as tape:
                y = v
                for _ in range(50):
                    y = y + b
            return tape.gradient(y, v)
        cases[name] = {
            "add tensor+tensor": (lambda a=a, b=b: a + b, 1),
            "multiply tensor*2.0": (lambda a=a: a * 2.0, 1),
            "constant from list": (lambda tp=tp: tp.constant([1.0, 2.0, 3.0]), 1),
            "convert_to_tensor(ndarray)": (
                lambda tp=tp, h=np.ones(3, np.float32): tp.convert_to_tensor(h), 1),
            "relu": (lambda tp=tp, a=a: tp.nn.relu(a), 1),
            "reduce_sum": (lambda tp=tp, a=a: tp.reduce_sum(a), 1),
            "equal (comparison)": (lambda tp=tp, a=a, b=b: tp.equal(a, b), 1),
            "zeros((10,))": (lambda tp=tp: tp.zeros((10,)), 1),
            "variable assign_add": (lambda v=w, b=b: v.assign_add(b), 1),
            "SGD apply_gradients, 1 variable": (lambda opt=opt, gw=gw: opt.apply_gradients(gw), 1),
            "recorded add fwd+bwd per op": (taped, 50),
            "MLP 784-128-10 b32 SGD step": (mlp_step, 100),  # (us per step / 100, see below)
        }
    times: dict = {(n, c): [] for n in loaded for c in cases[variants[0][0]]}
    for r in range(rounds):
        order = list(loaded) if r % 2 == 0 else list(loaded)[::-1]
        for case in cases[variants[0][0]]:
            for name in order:
                _use(loaded[name])
                fn, per = cases[name][case]
                calls = max(2000 // per, 20)
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[(name, case)].append((time.perf_counter() - t0) / (calls * per) * 1e6)
    out = {f"eager {c} (us, in-process)": {n: times[(n, c)] for n in loaded}
           for c in cases[variants[0][0]]}
    step = out.pop("eager MLP 784-128-10 b32 SGD step (us, in-process)")
    out["MLP 784-128-10 b32 SGD step (ms, in-process)"] = {
        n: [t * 100 / 1e3 for t in vals] for n, vals in step.items()}
    return out


def paired_ratios(per_variant: dict, base: str) -> dict:
    """Median over rounds of each variant's time / the base's time in the same round (the
    blocks of one round run back to back, so slow drift of the machine cancels)."""
    return {n: statistics.median(a / b for a, b in zip(vals, per_variant[base]))
            for n, vals in per_variant.items() if n != base}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--inprocess", type=int, default=0, metavar="BLOCKS",
                   help="eager per-op costs only, all variants in one process, BLOCKS "
                        "interleaved blocks each (every variant needs a PATH)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker()))
        return {}
    variants = [tuple(v.split("=", 1)) for v in args.variant] or [("installed", "")]
    runs: dict = {name: [] for name, _ in variants}
    paired: dict = {}
    if args.inprocess:
        for _ in range(args.rounds):
            for name, _ in variants:
                runs[name].append({})
        for metric, per_variant in inprocess(variants, args.inprocess).items():
            paired[metric] = paired_ratios(per_variant, variants[0][0])
            for name, vals in per_variant.items():
                # one "run" per round-median group: rounds folded into `rounds` groups
                k = max(1, len(vals) // args.rounds)
                for i in range(args.rounds):
                    group = vals[i * k:(i + 1) * k] or vals[-k:]
                    runs[name][i][metric] = statistics.median(group)
    for r in range(args.rounds if not args.inprocess else 0):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, path in order:
            env = {**os.environ, **_THREADS}
            if path:
                env["PYTHONPATH"] = path
            out = subprocess.run([sys.executable, __file__, "--worker"], env=env, check=True,
                                 capture_output=True, text=True, cwd="/")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    import numpy as np

    base = variants[0][0]
    table = {}
    for metric in runs[base][0]:
        row = {}
        for name, _ in variants:
            vals = [run[metric] for run in runs[name]]
            row[name] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        for name, _ in variants[1:]:
            row[f"{name}/{base}"] = (paired[metric][name] if args.inprocess
                                     else row[name]["median"] / row[base]["median"])
        table[metric] = row
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "python": sys.version.split()[0], "numpy": np.__version__, "threads": 1,
           "rounds": args.rounds, "variants": dict(variants), "table": table}
    names = [n for n, _ in variants]
    print(f"{'metric':<40}" + "".join(f"{n:>22}" for n in names) + "".join(
        f"{n + '/' + base:>14}" for n in names[1:]))
    for metric, row in table.items():
        cells = "".join(f"{row[n]['median']:9.3f} [{row[n]['min']:.2f}-{row[n]['max']:.2f}]"
                        .rjust(22) for n in names)
        ratios = "".join(f"{row[f'{n}/{base}']:14.3f}" for n in names[1:])
        print(f"{metric:<40}{cells}{ratios}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
