"""What the timeline costs: the MLP step with ``TAPEFLOW_TIMELINE`` on and off, interleaved.

    python benchmarks/timeline_cost.py            # one process
    mpiexec -n 2 python benchmarks/timeline_cost.py

The step is the training loop's (784-512-512-10 MLP, batch 128 per rank, SGD) with the same
phases it marks (data, forward, gradient, optimizer) inside a ``DistributedGradientTape``
(which marks backward, each bucket and the reduction). Rounds alternate off and on; the
median of the per-round ratios is reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

import tapeflow as tp
from tapeflow import distributed as dist
from tapeflow import optimizers, timeline
from tapeflow.nn import functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    comm = dist.init()
    model = tp.nn.mlp([784, 512, 512, 10], seed=0)
    variables = list(model.trainable_variables)
    opt = optimizers.SGD(learning_rate=0.01)
    rng = np.random.default_rng(comm.rank)
    data = rng.standard_normal((128, 784)).astype(np.float32)
    labels = rng.integers(0, 10, 128)

    def step() -> None:
        with timeline.span("data"):
            x, y = tp.constant(data), tp.constant(labels)
        with timeline.span("forward"), dist.DistributedGradientTape(tp.GradientTape(),
                                                                    comm) as tape:
            loss = tp.reduce_mean(F.sparse_softmax_cross_entropy_with_logits(y, model(x)))
        with timeline.span("gradient"):
            grads = tape.gradient(loss, variables)
        with timeline.span("optimizer"):
            opt.apply_gradients(zip(grads, variables))

    def timed() -> float:
        comm.barrier()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        return (time.perf_counter() - t) / args.steps

    tmp = tempfile.mkdtemp(prefix="tapeflow-timeline-")
    tmp = comm.broadcast_object(tmp, root=0)
    for _ in range(5):
        step()
    off, on = [], []
    for _ in range(args.rounds):
        timeline.stop()
        off.append(timed())
        timeline.start(f"{tmp}/trace.json", comm.rank, comm.size)
        on.append(timed())
    timeline.stop()
    ratios = [b / a for a, b in zip(off, on)]
    worst = comm.allreduce(np.array([statistics.median(ratios)]), op="max")[0]
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "step_ms_off": round(1e3 * statistics.median(off), 3),
                          "step_ms_on": round(1e3 * statistics.median(on), 3),
                          "median_on_off_ratio": round(float(worst), 4),
                          "per_round_ratios": [round(r, 4) for r in ratios]}, indent=2))


if __name__ == "__main__":
    main()
