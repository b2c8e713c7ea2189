"""What the collective signature check costs on the 2-rank MLP step.

    mpiexec -n 2 python benchmarks/check_cost.py

Every collective first exchanges a 128-byte signature (one ``Iallgather``); the distributed
tape does one per step, posted at the start of the backward sweep and completed before the
first bucket moves. This times, interleaved over rounds: the full step of the 784-512-512-10
MLP at batch 128 per rank (forward, backward, reduction, SGD update), and a bare signature
exchange (``barrier()`` is exactly one exchange). The cost bound is exchange / step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import tapeflow as tp
from tapeflow import distributed as dist
from tapeflow import optimizers
from tapeflow.nn import functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    comm = dist.init()
    model = tp.nn.mlp([784, 512, 512, 10], seed=0)
    variables = list(model.trainable_variables)
    opt = optimizers.SGD(learning_rate=0.01)
    rng = np.random.default_rng(comm.rank)
    x = tp.constant(rng.standard_normal((128, 784)).astype(np.float32))
    y = tp.constant(rng.integers(0, 10, 128))

    def step() -> None:
        with dist.DistributedGradientTape(tp.GradientTape(), comm) as tape:
            loss = tp.reduce_mean(F.sparse_softmax_cross_entropy_with_logits(y, model(x)))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for _ in range(5):
        step()
    steps, checks = [], []
    for _ in range(args.rounds):
        comm.barrier()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        steps.append((time.perf_counter() - t) / args.steps)
        comm.barrier()
        t = time.perf_counter()
        for _ in range(200):
            comm.barrier()
        checks.append((time.perf_counter() - t) / 200)
    med = comm.allreduce(np.array([statistics.median(steps), statistics.median(checks)]),
                         op="max")
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "step_ms": round(1e3 * med[0], 3),
                          "signature_exchange_us": round(1e6 * med[1], 2),
                          "check_share_of_step_pct": round(100 * med[1] / med[0], 3),
                          "rounds": args.rounds,
                          "step_ms_per_round": [round(1e3 * s, 3) for s in steps],
                          "exchange_us_per_round": [round(1e6 * c, 2) for c in checks]},
                         indent=2))


if __name__ == "__main__":
    main()
