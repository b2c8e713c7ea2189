"""``tapeflow-bench``: data-parallel scaling, fused all-reduce bandwidth and step-time benchmarks.

    tapeflow-bench scaling --ranks 1,2 --model mlp --hidden 512,512 --mode weak --out bench/
    tapeflow-bench allreduce --ranks 2
    tapeflow-bench step                # runs benchmarks/step_time.py of a source checkout

``scaling`` launches, for every rank count R, ``mpiexec -n R python -m tapeflow.launch.bench
_worker ...`` (R = 1 too, so every point runs the same code path). Each worker trains on seeded
synthetic data with a ``DistributedGradientTape(op="average")`` and SGD; rank 0 writes the
timings to a JSON file named by the parent. Weak scaling keeps the per-rank batch fixed (global
batch R*b); strong scaling keeps the global batch b*max(ranks) fixed and splits it over R.
Efficiency: weak ``throughput(R) / (R * throughput(1))``; strong ``time(1) / (R * time(R))``
(against the smallest rank count when 1 is not listed). Writes ``scaling.json`` and
``scaling.png`` to ``--out`` and prints a table.

``--repeats N`` runs N rounds over all rank counts, interleaved so load drift on a shared
machine hits every point alike. Each point reports its median round (by step time), and the
efficiency is computed from exactly the throughputs in the table (``samples/s(R) / (R/R0 *
samples/s(R0))``), so table, JSON and plot agree. The spread is the efficiency within each
round (a ratio measured under one load): its minimum and maximum are printed and drawn as
error bars, and every round's value is kept in the JSON. The "hidden" column is the share of the
standalone communication time that the backward sweep hid; it is "-" on the shared-memory path,
which runs after the sweep by design (it needs the CPU it would overlap with).

``allreduce`` compares the bandwidth of the ``DistributedGradientTape`` path (packing, the
signature check, fused buckets, unpacking and averaging) on an MLP's gradient tensors with a raw
mpi4py ``Allreduce(IN_PLACE)`` of one buffer of the same total size (median of many runs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from tapeflow.launch.cli import (
    HelpFormatter, Parser, UsageError, check_writable_dir, check_writable_file, fail, int_list,
    nonnegative_int, plural, positive_float, positive_int,
)

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_INPUT_DIM = 784
_CLASSES = 10


def _default_bucket_bytes() -> int:
    from tapeflow.distributed.tape import DEFAULT_BUCKET_BYTES

    return DEFAULT_BUCKET_BYTES


def build_parser() -> argparse.ArgumentParser:
    """The ``tapeflow-bench`` argument parser (public subcommands and the hidden workers)."""
    p = Parser(prog="tapeflow-bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", metavar="{scaling,allreduce,step}")
    sub.required = True

    s = sub.add_parser("scaling", help="weak/strong scaling over rank counts (JSON + PNG)",
                       formatter_class=HelpFormatter)
    s.add_argument("--ranks", type=int_list("--ranks"), default=(1, 2),
                   help="comma-separated rank counts")
    s.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    s.add_argument("--hidden", type=int_list("--hidden"), default=(512, 512),
                   help="MLP hidden widths")
    s.add_argument("--batch-per-rank", type=positive_int, default=128,
                   help="weak: the per-rank batch; strong: global batch = this * max(ranks)")
    s.add_argument("--steps", type=positive_int, default=30, help="timed steps")
    s.add_argument("--warmup", type=nonnegative_int, default=5, help="untimed steps")
    s.add_argument("--warmup-seconds", type=float, default=1.0,
                   help="keep warming up at least this long (idle vCPUs start slow)")
    s.add_argument("--mode", choices=("weak", "strong", "both"), default="weak")
    s.add_argument("--out", default="bench-results", help="output folder")
    s.add_argument("--threads-per-rank", type=positive_int, default=1,
                   help="BLAS/OpenMP threads per rank")
    s.add_argument("--bucket-bytes", type=positive_int, default=None,
                   help="fused bucket size (default: DistributedGradientTape's)")
    s.add_argument("--comm-repeats", type=positive_int, default=20,
                   help="repeats of the standalone blocking all-reduce measurement")
    s.add_argument("--repeats", type=positive_int, default=1,
                   help="rounds over all rank counts (interleaved, so load drift hits every "
                        "point alike); each point reports its median round")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--timeout", type=positive_float, default=600.0,
                   help="seconds allowed per mpiexec run")

    a = sub.add_parser("allreduce", help="fused tape all-reduce vs one raw MPI Allreduce",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("--ranks", type=positive_int, default=2)
    a.add_argument("--hidden", type=int_list("--hidden"), default=(512, 512),
                   help="MLP 784-<hidden>-10 whose gradient tensors are reduced")
    a.add_argument("--mb", type=positive_float, default=None,
                   help="size of the raw buffer in MB (1e6 bytes); default: exactly the "
                        "gradients' total (784-512-512-10: 2.68 MB). Bandwidths are compared.")
    a.add_argument("--bucket-bytes", type=positive_int, default=None)
    a.add_argument("--repeats", type=positive_int, default=100)
    a.add_argument("--warmup-seconds", type=float, default=1.0,
                   help="warm up at least this long before timing (idle vCPUs start slow)")
    a.add_argument("--threads-per-rank", type=positive_int, default=1)
    a.add_argument("--json", help="also write the result to this file")
    a.add_argument("--timeout", type=positive_float, default=600.0)

    sub.add_parser("step", help="run benchmarks/step_time.py (source checkouts only); "
                   "further arguments go to it", add_help=False)

    w = sub.add_parser("_worker")  # one rank of a scaling point (launched by `scaling`)
    w.add_argument("--model", default="mlp")
    w.add_argument("--hidden", type=int_list("--hidden"), default=(512, 512))
    w.add_argument("--batch", type=int, required=True, help="this rank's batch")
    w.add_argument("--steps", type=int, required=True)
    w.add_argument("--warmup", type=int, required=True)
    w.add_argument("--warmup-seconds", type=float, default=1.0)
    w.add_argument("--bucket-bytes", type=int, required=True)
    w.add_argument("--comm-repeats", type=int, default=20)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--result", required=True)

    aw = sub.add_parser("_allreduce_worker")
    aw.add_argument("--hidden", type=int_list("--hidden"), default=(512, 512))
    aw.add_argument("--nbytes", type=int, default=0)
    aw.add_argument("--bucket-bytes", type=int, required=True)
    aw.add_argument("--repeats", type=int, required=True)
    aw.add_argument("--warmup-seconds", type=float, default=1.0)
    aw.add_argument("--result", required=True)
    return p


# -- shared helpers ------------------------------------------------------------------------------

def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def machine_info() -> dict[str, Any]:
    """CPU model name, core count, Python and NumPy versions (for the result files)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from tapeflow.distributed.launcher import _cpu_count

    import numpy as np

    return {"cpu": model, "cores": _cpu_count(), "python": sys.version.split()[0],
            "numpy": np.__version__, "load_avg": list(os.getloadavg())}


def bucket_sizes(shapes: Sequence[tuple[int, ...]], bucket_bytes: int,
                 itemsize: int = 4) -> list[int]:
    """Element counts of the fused buckets ``DistributedGradientTape`` builds for ``shapes``
    (sources in order; buckets are filled from the last source), presence flags included."""
    import numpy as np

    sizes: list[int] = []
    total = members = 0
    for shape in reversed(list(shapes)):
        n = int(np.prod(shape, dtype=np.int64))
        if members and (total + n) * itemsize > bucket_bytes:
            sizes.append(total + members)
            total = members = 0
        total += n
        members += 1
    if members:
        sizes.append(total + members)
    return sizes


def _launch(ranks: int, command: list[str], threads: int, timeout: float) -> None:
    """Run ``command`` on ``ranks`` ranks with ``threads`` BLAS threads each; raise on failure."""
    from tapeflow.distributed.launcher import _cpu_count, mpiexec_argv

    env = {name: str(threads) for name in _THREAD_VARS}
    argv = mpiexec_argv(ranks, command, env=env, oversubscribe=ranks > _cpu_count())
    child_env = dict(os.environ, **env)
    proc = subprocess.run(argv, timeout=timeout, env=child_env)
    if proc.returncode != 0:
        raise RuntimeError(f"mpiexec -n {ranks} failed with exit status {proc.returncode}: "
                           f"{' '.join(argv)}")


# -- scaling -------------------------------------------------------------------------------------

def _build_model(model: str, hidden: Sequence[int], seed: int):
    import tapeflow as tp

    if model == "mlp":
        return tp.nn.mlp([_INPUT_DIM, *hidden, _CLASSES], seed=seed)
    return tp.nn.mnist_cnn(seed=seed)


def _synthetic(model: str, batch: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batch, _INPUT_DIM) if model == "mlp" else (batch, 28, 28, 1)
    return (rng.random(shape, dtype=np.float32),
            rng.integers(0, _CLASSES, batch).astype(np.int64))


def scaling_worker(args: argparse.Namespace) -> int:
    """One rank of a scaling point: warmup + timed steps, then the standalone comm estimate."""
    import numpy as np

    import tapeflow as tp
    from tapeflow import distributed as dist
    from tapeflow import optimizers
    from tapeflow.nn import functional as F

    comm = dist.init("auto")
    model = _build_model(args.model, args.hidden, args.seed)
    variables = list(model.trainable_variables)
    dist.broadcast_variables(variables, root=0, comm=comm)
    opt = optimizers.SGD(learning_rate=0.01)
    x, y = _synthetic(args.model, args.batch, args.seed * 1000 + comm.rank)
    xt, yt = tp.constant(x), tp.constant(y)

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        with dist.DistributedGradientTape(tp.GradientTape(), comm, op="average",
                                          bucket_bytes=args.bucket_bytes) as tape:
            logits = model(xt, training=True)
            loss = tp.reduce_mean(F.sparse_softmax_cross_entropy_with_logits(yt, logits))
        t1 = time.perf_counter()
        grads = tape.gradient(loss, variables)
        t2 = time.perf_counter()
        opt.apply_gradients(zip(grads, variables))
        t3 = time.perf_counter()
        return {"step_s": t3 - t0, "forward_s": t1 - t0, "gradient_s": t2 - t1,
                "apply_s": t3 - t2, **{k: float(v) for k, v in tape.stats.items() if k != "reduction"}}

    for _ in range(args.warmup):
        step()
    warm_until = time.perf_counter() + args.warmup_seconds  # idle vCPUs start slow
    while comm.allreduce(np.array([time.perf_counter() < warm_until], np.int64), op="max")[0]:
        step()
    comm.barrier()
    records = [step() for _ in range(args.steps)]
    # mean step time of an uninterrupted loop (no per-step bookkeeping), as a cross-check
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(max(1, args.steps // 3)):
        step()
    wall = (time.perf_counter() - t0) / max(1, args.steps // 3)

    med = {k: _median([r[k] for r in records]) for k in records[0]}
    # The standalone estimate: blocking all-reduces of buffers of the buckets' sizes, one after
    # the other, as if nothing overlapped.
    sizes = bucket_sizes([tuple(v.shape) for v in variables], args.bucket_bytes,
                         np.dtype(variables[0].dtype).itemsize)
    shared = bool(records[-1].get("shared_memory", 0.0))
    # the communicator's reducer for buckets of these sizes, as the tape would use it
    reducer = comm.reducer(dist.Layout(tuple((np.dtype(np.float32), n) for n in sizes), 0),
                           "sum")

    def reduce_all() -> None:
        for i, buf in enumerate(reducer.start()):
            buf.fill(1.0)
            reducer.ready(i)
        reducer.finish()

    comm_times = []
    if comm.size > 1:
        for _ in range(3):
            reduce_all()
        for _ in range(args.comm_repeats):
            comm.barrier()
            t = time.perf_counter()
            reduce_all()
            comm_times.append(time.perf_counter() - t)
    standalone = _median(comm_times) if comm_times else 0.0
    # Slowest rank decides the step: take the maximum over ranks of each median.
    keys = sorted(med)
    worst = comm.allreduce(np.array([med[k] for k in keys] + [wall, standalone], np.float64),
                           op="max")
    med = dict(zip(keys, (float(v) for v in worst[:len(keys)])))
    wall, standalone = float(worst[-2]), float(worst[-1])
    if comm.rank == 0:
        hidden = None
        if standalone > 0 and not shared:  # a shared-memory reduction is never in flight
            hidden = min(1.0, max(0.0, 1.0 - med["exposed_wait_s"] / standalone))
        global_batch = args.batch * comm.size
        result = {"ranks": comm.size, "batch_per_rank": args.batch, "global_batch": global_batch,
                  "step_time_s": med["step_s"], "loop_step_time_s": wall,
                  "samples_per_s": global_batch / med["step_s"],
                  "forward_s": med["forward_s"], "gradient_s": med["gradient_s"],
                  "apply_s": med["apply_s"], "backward_s": med.get("backward_s"),
                  "exposed_wait_s": med.get("exposed_wait_s"),
                  "standalone_comm_s": standalone, "hidden_fraction": hidden,
                  "buckets": int(med.get("buckets", 0)), "bucket_bytes": args.bucket_bytes,
                  "grad_bytes": int(med.get("bytes", 0)),
                  "launched_during_backward": med.get("launched_during_backward"),
                  "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                  "reduction": ("shared-memory" if shared else "mpi") if comm.size > 1 else None}
        Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


def _efficiencies(rows: list[dict], mode: str) -> None:
    base = min(rows, key=lambda r: r["ranks"])
    for r in rows:
        r["efficiency"] = _efficiency(r, base, mode)
        r["ideal_samples_per_s"] = base["samples_per_s"] * r["ranks"] / base["ranks"]


def _median_round(runs: list[dict]) -> dict:
    """The round with the median step time (a real measurement, not a mix of rounds)."""
    order = sorted(runs, key=lambda r: r["step_time_s"])
    return dict(order[(len(order) - 1) // 2], rounds=len(runs),
                step_time_rounds_s=[r["step_time_s"] for r in runs])


def _efficiency(row: dict, base: dict, mode: str) -> float:
    k = row["ranks"] / base["ranks"]
    if mode == "weak":
        return row["samples_per_s"] / (k * base["samples_per_s"])
    return base["step_time_s"] / (k * row["step_time_s"])


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scaling(result: dict, path: Path) -> None:
    """Two panels: samples/s vs ranks (with the ideal line) and efficiency vs ranks, each
    point with its per-round min-max as error bars; the same numbers as the table."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, rows in result["modes"].items():
        ranks = [r["ranks"] for r in rows]
        sps = [r["samples_per_s"] for r in rows]
        lo = [v - min(r.get("samples_per_s_rounds") or [v]) for v, r in zip(sps, rows)]
        hi = [max(r.get("samples_per_s_rounds") or [v]) - v for v, r in zip(sps, rows)]
        ax1.errorbar(ranks, sps, yerr=[lo, hi], fmt="o-", capsize=4, label=f"{mode}")
        ax1.plot(ranks, [r["ideal_samples_per_s"] for r in rows], "--", alpha=0.6,
                 label=f"{mode} ideal")
        eff = [100 * r["efficiency"] for r in rows]
        lo = [e - 100 * min(r.get("efficiency_rounds") or [e / 100]) for e, r in zip(eff, rows)]
        hi = [100 * max(r.get("efficiency_rounds") or [e / 100]) - e for e, r in zip(eff, rows)]
        ax2.errorbar(ranks, eff, yerr=[[max(v, 0) for v in lo], [max(v, 0) for v in hi]],
                     fmt="o-", capsize=4, label=f"{mode} (bars: min-max over rounds)")
        for x, y in zip(ranks, eff):
            ax2.annotate(f"{y:.1f} %", (x, y), textcoords="offset points", xytext=(6, -12),
                         fontsize=8)
    ax1.set_xlabel("ranks")
    ax1.set_ylabel("samples/s (global)")
    ax1.set_title(f"{result['config']['model_desc']} throughput")
    ax1.legend()
    ax2.axhline(100, color="gray", ls="--", lw=1)
    ax2.set_xlabel("ranks")
    ax2.set_ylabel("scaling efficiency (%)")
    ax2.set_ylim(0, 120)
    ax2.set_title("efficiency")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(sorted({r["ranks"] for rows in result["modes"].values() for r in rows}))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_scaling(args: argparse.Namespace) -> dict:
    """Launch every scaling point, compute efficiencies, write ``scaling.json``/``.png``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _pyplot()  # fail now, not after the benchmark, if matplotlib is missing
    bucket = args.bucket_bytes or _default_bucket_bytes()
    ranks = sorted(set(args.ranks))
    modes = ("weak", "strong") if args.mode == "both" else (args.mode,)
    top = max(ranks)
    cache: dict[tuple[int, int], list[dict]] = {}
    result: dict[str, Any] = {
        "machine": machine_info(),
        "config": {"model": args.model, "hidden": list(args.hidden),
                   "model_desc": (f"MLP {'-'.join(map(str, [_INPUT_DIM, *args.hidden, _CLASSES]))}"
                                  if args.model == "mlp" else "MNIST CNN"),
                   "batch_per_rank": args.batch_per_rank, "steps": args.steps,
                   "warmup": args.warmup, "threads_per_rank": args.threads_per_rank,
                   "bucket_bytes": bucket, "ranks": ranks,
                   "launch": "mpiexec -n R (R = 1 included)", "statistic": "median per step, "
                   "max over ranks; median over rounds", "repeats": args.repeats},
        "modes": {}}
    with tempfile.TemporaryDirectory(prefix="tapeflow-bench-") as tmp:
        for mode in modes:
            rows = []
            for r in ranks:
                if mode == "weak":
                    per_rank = args.batch_per_rank
                else:
                    per_rank = max(1, args.batch_per_rank * top // r)
                key = (r, per_rank)
                cache.setdefault(key, [])
                rows.append(key)
            todo = [k for k in rows if not cache[k]]
            for rnd in range(args.repeats):  # rounds: every point once per round
                for r, per_rank in todo:
                    res_file = Path(tmp) / f"r{r}_b{per_rank}_{rnd}.json"
                    cmd = [sys.executable, "-m", "tapeflow.launch.bench", "_worker",
                           "--model", args.model, "--hidden", ",".join(map(str, args.hidden)),
                           "--batch", str(per_rank), "--steps", str(args.steps),
                           "--warmup", str(args.warmup), "--bucket-bytes", str(bucket),
                           "--warmup-seconds", str(args.warmup_seconds),
                           "--comm-repeats", str(args.comm_repeats), "--seed", str(args.seed),
                           "--result", str(res_file)]
                    print(f"[{mode}] round {rnd + 1}/{args.repeats}: {plural(r, 'rank')}, "
                          f"batch/rank {per_rank} ...", flush=True)
                    _launch(r, cmd, args.threads_per_rank, args.timeout)
                    cache[(r, per_rank)].append(json.loads(res_file.read_text()))
            keys, rows = rows, [dict(_median_round(cache[k]), mode=mode) for k in rows]
            _efficiencies(rows, mode)  # from the reported throughputs: table == plot
            for row, k in zip(rows, keys):
                # Each round measures every point back to back, so a round's efficiency is a
                # ratio taken under one load: their spread is shown next to the figure.
                row["samples_per_s_rounds"] = [one["samples_per_s"] for one in cache[k]]
                row["efficiency_rounds"] = [_efficiency(one, first, mode)
                                            for one, first in zip(cache[k], cache[keys[0]])]
                row["efficiency_round_median"] = statistics.median(row["efficiency_rounds"])
            result["modes"][mode] = rows
    (out / "scaling.json").write_text(json.dumps(result, indent=2))
    plot_scaling(result, out / "scaling.png")
    print_table(result)
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")
    return result


def print_table(result: dict) -> None:
    """The scaling results as a plain-text table."""
    m, c = result["machine"], result["config"]
    print(f"{c['model_desc']}, {plural(c['threads_per_rank'], 'BLAS thread')}/rank, bucket "
          f"{c['bucket_bytes']} B, {c['steps']} timed steps; {m['cpu']}, {m['cores']} cores")
    head = (f"{'mode':>6} {'ranks':>5} {'b/rank':>6} {'global':>6} {'step ms':>8} "
            f"{'samples/s':>10} {'eff %':>6} {'bwd ms':>7} {'wait ms':>7} {'comm ms':>7} "
            f"{'hidden':>6}")
    head += f" {'eff min-max':>12}"
    print(head)
    print("-" * len(head))
    for mode, rows in result["modes"].items():
        for r in rows:
            hid = "-" if r["hidden_fraction"] is None else f"{r['hidden_fraction']:.2f}"
            print(f"{mode:>6} {r['ranks']:>5} {r['batch_per_rank']:>6} {r['global_batch']:>6} "
                  f"{1e3 * r['step_time_s']:8.2f} {r['samples_per_s']:10.0f} "
                  f"{100 * r['efficiency']:6.1f} {1e3 * (r['backward_s'] or 0):7.2f} "
                  f"{1e3 * (r['exposed_wait_s'] or 0):7.2f} "
                  f"{1e3 * r['standalone_comm_s']:7.2f} {hid:>6} "
                  f"{_spread(r.get('efficiency_rounds') or [r['efficiency']]):>12}")
        for r in rows:
            if len(r.get("efficiency_rounds", ())) > 1:
                spread = ", ".join(f"{100 * e:.1f}" for e in r["efficiency_rounds"])
                print(f"{mode:>6} {r['ranks']:>5} ranks: efficiency per round {spread} %; "
                      f"reduction path: {r.get('reduction') or 'none'}")
    print("eff % = samples/s / (ranks/base ranks * base samples/s), from this table's columns; "
          "min-max: the efficiency within each round")


def _spread(values: Sequence[float]) -> str:
    return f"{100 * min(values):.1f}-{100 * max(values):.1f}"


# -- allreduce bandwidth -------------------------------------------------------------------------

def allreduce_worker(args: argparse.Namespace) -> int:
    """Time the tape's fused reduction of an MLP's gradients vs one raw ``Allreduce``."""
    import numpy as np
    from mpi4py import MPI

    import tapeflow as tp
    from tapeflow import distributed as dist

    comm = dist.init("auto")
    model = tp.nn.mlp([_INPUT_DIM, *args.hidden, _CLASSES], seed=0)
    variables = list(model.trainable_variables)
    grad_bytes = sum(int(v.size) * 4 for v in variables)
    nbytes = args.nbytes or grad_bytes
    raw = np.ones(nbytes // 4, np.float32)
    world = MPI.COMM_WORLD

    def loss_fn():
        total = None
        for v in variables:  # d/dv sum(v) = ones: the backward sweep costs a memset per tensor
            s = tp.reduce_sum(v)
            total = s if total is None else total + s
        return total

    def tape_once() -> tuple[float, dict]:
        t = time.perf_counter()
        with dist.DistributedGradientTape(tp.GradientTape(), comm, op="average",
                                          bucket_bytes=args.bucket_bytes) as tape:
            loss = loss_fn()
        tape.gradient(loss, variables)
        return time.perf_counter() - t, tape.stats

    def local_once() -> float:
        t = time.perf_counter()
        with tp.GradientTape() as tape:
            loss = loss_fn()
        tape.gradient(loss, variables)
        return time.perf_counter() - t

    def raw_once() -> float:
        t = time.perf_counter()
        world.Allreduce(MPI.IN_PLACE, [raw, MPI.FLOAT], op=MPI.SUM)
        return time.perf_counter() - t

    same = np.ones_like(raw)

    def comm_once() -> float:  # the communicator on the same buffer (shared memory if it can)
        t = time.perf_counter()
        comm.allreduce(same, op="sum")
        return time.perf_counter() - t

    tape_once(), raw_once(), local_once()
    warm_until = time.perf_counter() + args.warmup_seconds  # idle vCPUs start slow
    while comm.allreduce(np.array([time.perf_counter() < warm_until], np.int64), op="max")[0]:
        tape_once(), raw_once(), local_once(), comm_once()
    t_tape, t_raw, t_local, t_comm = [], [], [], []
    stats: dict = {}
    for _ in range(args.repeats):  # interleaved, so a load burst hits both alike
        world.Barrier()
        dt, stats = tape_once()
        t_tape.append(dt)
        world.Barrier()
        t_raw.append(raw_once())
        t_local.append(local_once())
        world.Barrier()
        t_comm.append(comm_once())
    vals = comm.allreduce(np.array([_median(t_tape), _median(t_raw), _median(t_local),
                                    _median(t_comm)]), op="max")
    tape_s, raw_s, local_s, comm_s = (float(v) for v in vals[:4])
    if comm.rank == 0:
        bw_tape = grad_bytes / tape_s
        bw_raw = nbytes / raw_s
        comm_only = max(tape_s - local_s, 1e-12)
        result = {"ranks": comm.size, "grad_tensors": len(variables), "grad_bytes": grad_bytes,
                  "raw_bytes": nbytes, "bucket_bytes": args.bucket_bytes,
                  "buckets": stats.get("buckets"), "repeats": args.repeats,
                  "tape_s": tape_s, "raw_s": raw_s, "local_backward_s": local_s,
                  "tape_GBps": bw_tape / 1e9, "raw_GBps": bw_raw / 1e9,
                  "ratio": bw_tape / bw_raw,
                  "ratio_excluding_local_backward": (grad_bytes / comm_only) / bw_raw,
                  "reduction": "shared-memory" if stats.get("shared_memory") else "mpi",
                  "comm_allreduce_s": comm_s, "comm_vs_raw_speedup": raw_s / comm_s,
                  "comm_path": "shared-memory" if getattr(comm, "shared_memory", False)
                  and raw.nbytes >= 64 << 10 else "mpi"}
        Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


def run_allreduce(args: argparse.Namespace) -> dict:
    """Launch the bandwidth comparison on ``--ranks`` ranks and print the ratio."""
    bucket = args.bucket_bytes or _default_bucket_bytes()
    nbytes = int(args.mb * 1e6) // 4 * 4 if args.mb else 0
    with tempfile.TemporaryDirectory(prefix="tapeflow-bench-") as tmp:
        res_file = Path(tmp) / "allreduce.json"
        cmd = [sys.executable, "-m", "tapeflow.launch.bench", "_allreduce_worker",
               "--hidden", ",".join(map(str, args.hidden)), "--nbytes", str(nbytes),
               "--bucket-bytes", str(bucket), "--repeats", str(args.repeats),
               "--warmup-seconds", str(args.warmup_seconds),
               "--result", str(res_file)]
        _launch(args.ranks, cmd, args.threads_per_rank, args.timeout)
        result = json.loads(res_file.read_text())
    result["machine"] = machine_info()
    print(f"{result['ranks']} ranks, {result['grad_tensors']} gradient tensors, "
          f"{result['grad_bytes'] / 1e6:.2f} MB in {plural(result['buckets'], 'bucket')} of <= "
          f"{bucket} B; raw buffer {result['raw_bytes'] / 1e6:.2f} MB; median of "
          f"{result['repeats']}")
    print(f"  DistributedGradientTape ({result['reduction']} path): "
          f"{1e3 * result['tape_s']:.3f} ms "
          f"({result['tape_GBps']:.2f} GB/s; local backward alone "
          f"{1e3 * result['local_backward_s']:.3f} ms)")
    print(f"  raw Allreduce(IN_PLACE): {1e3 * result['raw_s']:.3f} ms "
          f"({result['raw_GBps']:.2f} GB/s)")
    print(f"  communicator allreduce of the same buffer ({result['comm_path']} path): "
          f"{1e3 * result['comm_allreduce_s']:.3f} ms ({result['comm_vs_raw_speedup']:.2f}x "
          f"the raw Allreduce's speed)")
    print(f"  bandwidth ratio tape/raw: {result['ratio']:.3f} (excluding the local backward: "
          f"{result['ratio_excluding_local_backward']:.3f}); target >= 0.80")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


# -- step ----------------------------------------------------------------------------------------

def run_step(rest: Sequence[str]) -> int:
    """Run ``benchmarks/step_time.py`` (from the source checkout this package was installed
    from) with the arguments ``rest``; its exit status."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "step_time.py"
    if not script.is_file():
        print(f"tapeflow-bench step: {script} not found; `step` needs a source checkout "
              "(pip install -e)", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, str(script), *rest]).returncode


# -- entry point ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``tapeflow-bench`` entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["step"]:  # everything after `step` belongs to step_time.py
        return run_step(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "scaling":
        from tapeflow.distributed.launcher import _cpu_count

        try:
            check_writable_dir(args.out, "--out")
        except UsageError as e:
            fail("tapeflow-bench scaling", str(e))
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("tapeflow-bench scaling", "drawing scaling.png needs matplotlib: "
                 "pip install matplotlib")

        if max(args.ranks) > _cpu_count():
            print(f"tapeflow-bench: note: {max(args.ranks)} ranks on {_cpu_count()} cores are "
                  "time-shared (oversubscribed); efficiencies will be low", file=sys.stderr)
        run_scaling(args)
        return 0
    if args.command == "allreduce":
        if args.json:
            try:
                check_writable_file(args.json, "--json")
            except UsageError as e:
                fail("tapeflow-bench allreduce", str(e))
        run_allreduce(args)
        return 0
    if args.command == "_worker":
        return scaling_worker(args)
    if args.command == "_allreduce_worker":
        return allreduce_worker(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
