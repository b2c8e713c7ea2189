"""PyTorch DistributedDataParallel (gloo) on the MLP 784-512-512-10: the comparison point for
``tapeflow-bench scaling``. Optional: needs torch, which tapeflow never depends on.

Run with the interpreter that has torch (a separate venv):
``/tmp/torchvenv/bin/python benchmarks/torch_ddp.py [--ranks 1,2] [--steps 30] [--warmup 5]``.
For each rank count the parent launches ``mpiexec -n R`` (MPICH hydra, which sets
``PMI_RANK``/``PMI_SIZE``) with ``MASTER_ADDR=127.0.0.1`` and a free port; every rank trains on
seeded synthetic data (per-rank batch 128, SGD, 1 thread per rank, no DataLoader), and rank 0
writes the median step time. Prints JSON with samples/s per rank count and the weak-scaling
efficiency ``throughput(R) / (R * throughput(1))``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _need_torch():
    try:
        import torch
    except ImportError:
        sys.exit("torch_ddp.py needs PyTorch, which is not installed for "
                 f"{sys.executable}; create a separate venv: python -m venv /tmp/torchvenv && "
                 "/tmp/torchvenv/bin/pip install torch numpy")
    return torch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file():
        return str(beside)
    found = shutil.which("mpiexec")
    if not found:
        sys.exit("torch_ddp.py: mpiexec not found (pip install mpich)")
    return found


def worker(args: argparse.Namespace) -> None:
    """One DDP rank: rank/size from MPICH's PMI environment, gloo over TCP on localhost."""
    torch = _need_torch()
    import torch.distributed as tdist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(args.threads)
    rank = int(os.environ.get("PMI_RANK", 0))
    size = int(os.environ.get("PMI_SIZE", 1))
    tdist.init_process_group("gloo", rank=rank, world_size=size)
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(args.seed * 1000 + rank)
    x = torch.rand(args.batch, 784, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    tdist.barrier()
    times = [step() for _ in range(args.steps)]
    med = torch.tensor([statistics.median(times)], dtype=torch.float64)
    tdist.all_reduce(med, op=tdist.ReduceOp.MAX)
    if rank == 0:
        t = float(med[0])
        Path(args.result).write_text(json.dumps({
            "ranks": size, "batch_per_rank": args.batch, "step_time_s": t,
            "samples_per_s": args.batch * size / t, "threads": torch.get_num_threads(),
            "torch": torch.__version__}))
    tdist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    p.add_argument("--batch", type=int, default=128, help="per-rank batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    torch = _need_torch()
    try:
        ranks = sorted({int(r) for r in args.ranks.split(",")})
        assert ranks and min(ranks) >= 1
    except (ValueError, AssertionError):
        p.error(f"--ranks takes comma-separated integers >= 1, got {args.ranks!r}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="torch-ddp-") as tmp:
        for r in ranks:
            res = Path(tmp) / f"r{r}.json"
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                       **{v: str(args.threads) for v in THREAD_VARS})
            argv_r = [_mpiexec(), "-n", str(r)]
            if r * args.threads > (os.cpu_count() or 1):
                argv_r += ["-bind-to", "none"]
            else:  # the same placement tapeflow's launcher uses
                argv_r += ["-bind-to", f"core:{args.threads}"]
            for k in ("MASTER_ADDR", "MASTER_PORT", *THREAD_VARS):
                argv_r += ["-genv", k, env[k]]
            argv_r += [sys.executable, str(Path(__file__).resolve()), "--worker",
                       "--batch", str(args.batch), "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--threads", str(args.threads),
                       "--seed", str(args.seed), "--result", str(res)]
            proc = subprocess.run(argv_r, env=env, timeout=600)
            if proc.returncode != 0:
                sys.exit(f"torch_ddp.py: {r} rank(s) failed with exit status {proc.returncode}")
            rows.append(json.loads(res.read_text()))
    base = rows[0]
    for row in rows:
        k = row["ranks"] / base["ranks"]
        row["weak_efficiency"] = row["samples_per_s"] / (k * base["samples_per_s"])
    out = {"model": "MLP 784-512-512-10", "backend": "gloo", "torch": torch.__version__,
           "steps": args.steps, "warmup": args.warmup, "statistic": "median step, max over ranks",
           "rows": rows}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
