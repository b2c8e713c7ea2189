"""CPU cost of waiting: one rank sleeps while the others wait for it in a collective.

    mpiexec -n 2 python benchmarks/wait_cost.py --seconds 10

Rank 1 sleeps ``--seconds`` before entering a barrier (and, in a second round, a 2.68 MB
shared-memory all-reduce); rank 0 is already waiting there. Rank 0 prints the CPU time it
used while waiting, as a share of one core. The wait loop spins for 20 ms, then sleeps with a
pause growing to 2 ms (distributed/faults.py), so a long wait should cost a few per cent.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tapeflow import distributed as dist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    comm = dist.init()
    if comm.size < 2:
        raise SystemExit("run under mpiexec -n 2 (or more)")
    rows = {}
    for what, call in (("barrier", lambda: dist.barrier()),
                       ("allreduce 2.68 MB", lambda: dist.allreduce(
                           np.ones(670_000, np.float32), op="sum"))):
        dist.barrier()
        if comm.rank == 1:
            time.sleep(args.seconds)
        cpu0, wall0 = time.process_time(), time.monotonic()
        call()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        rows[what] = {"wait_s": round(wall, 3), "cpu_s": round(cpu, 4),
                      "core_share": round(cpu / wall, 4)}
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "sleeping_rank": 1, "waiting_rank": 0,
                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
