"""``DistributedGradientTape``: gradients averaged (or summed) over ranks, Horovod style.

Gradients are packed into fused buckets in a fixed order (the reverse of the sources list,
which is roughly the order the backward sweep finishes them) and each bucket's non-blocking
all-reduce starts as soon as its last gradient is final, while the sweep goes on with earlier
layers. Buckets are launched strictly in order, so every rank issues the same collectives in the
same sequence.

When the communicator reduces such buffers through shared memory (ranks on one node, see
:mod:`tapeflow.distributed.shm`), the plan is *fused* instead: the sweep packs gradients
straight into this rank's shared slot, and one blocking reduction after the sweep sums (or
averages) every bucket in place and tests finiteness on the way. Nothing is launched early
there: a shared-memory reduction is CPU work that would only compete with the sweep, and MPI
libraries on CPUs advance non-blocking collectives only inside MPI calls anyway (measured: 0 %
hidden). On the 2-core benchmark machine this path took the 2-rank weak-scaling efficiency of
the 784-512-512-10 MLP from 77-88 % to a median of 91.0 % over 44 rounds (BENCHMARKS.md).

Safety, on by default:
- before any reduction the ranks compare the count, shapes and dtypes of their sources (one tiny
  all-reduce); a mismatch is a ``ValueError`` on every rank naming the ranks and tensors;
- ``None`` gradients travel as zeros plus a presence flag: a gradient is ``None`` only where it
  was ``None`` on every rank;
- a non-finite reduced gradient makes every rank skip the step together (``nonfinite="skip"``:
  all gradients come back ``None`` and ``tape.skipped`` is True) or raise
  (``nonfinite="raise"``), naming the ranks whose local gradients were not finite.
"""
from __future__ import annotations

import sys
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tapeflow import nest
from tapeflow.tape import GradientTape, UnconnectedGradients
from tapeflow.tensor import Tensor
from tapeflow.training import sync_optimizer_state, sync_variables

from .comm import Communicator, get_comm

__all__ = ["DistributedGradientTape", "GradientAccumulation", "broadcast_variables",
           "broadcast_optimizer_state", "average_metrics", "tape_factory",
           "DEFAULT_BUCKET_BYTES"]

DEFAULT_BUCKET_BYTES = 1 << 20  # 1 MiB: small enough to overlap on MNIST-sized models
_NONFINITE = ("skip", "raise", "ignore")


@dataclass
class _Bucket:
    dtype: np.dtype            # dtype on the wire (float16 with compression)
    members: list              # source positions, in packing order
    offsets: list              # element offset of each member
    sizes: list
    total: int                 # elements of gradient data; presence flags follow
    buf: Any = None
    lent: bool = False         # buf lies in the communicator's shared memory (fused plans)
    pending: int = 0
    handle: Any = None


@dataclass
class _Plan:
    buckets: list
    where: dict                # source position -> (bucket index, member index)
    signature: tuple
    fused: bool = False        # one blocking shared-memory reduction at the end, not per bucket
    nbytes: tuple = ()         # bytes of each bucket's buffer (gradients and presence flags)


class GradientAccumulation:
    """Accumulate local gradients over ``steps`` backward passes, then reduce once.

    Pass the same object to each step's ``DistributedGradientTape``; ``gradient`` returns
    ``None`` for every source (and ``tape.reduced`` is False) until the last pass of a group.
    """

    def __init__(self, steps: int):
        if steps < 1:
            raise ValueError(f"GradientAccumulation: steps must be >= 1, got {steps}")
        self.steps = steps
        self.count = 0
        self.sums: dict[int, Any] = {}


def _signature(leaves: list) -> tuple:
    return tuple((tuple(s.shape), s.dtype.str) for s in leaves)


class DistributedGradientTape:
    """Wrap a ``GradientTape``; ``gradient()`` returns gradients reduced over all ranks.

    >>> import tapeflow as tp, tapeflow.distributed as dist
    >>> w = tp.Variable([1.0, 2.0])
    >>> with dist.DistributedGradientTape(tp.GradientTape(), dist.init("local")) as tape:
    ...     loss = tp.reduce_sum(w * w)
    >>> tape.gradient(loss, w).numpy().tolist()
    [2.0, 4.0]
    """

    _plans: dict = {}  # (comm id, signature, options) -> _Plan, shared: buffers are reused

    def __init__(self, tape: GradientTape | None = None, comm: Communicator | None = None, *,
                 op: str = "average", bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 compression: str | None = None, check: bool = True, nonfinite: str = "skip",
                 accumulation: GradientAccumulation | None = None):
        if op not in ("average", "sum"):
            raise ValueError(f"DistributedGradientTape: op must be 'average' or 'sum', got {op!r}")
        if compression not in (None, "fp16"):
            raise ValueError(f"DistributedGradientTape: compression must be None or 'fp16', got "
                             f"{compression!r}")
        if nonfinite not in _NONFINITE:
            raise ValueError(f"DistributedGradientTape: nonfinite must be one of {_NONFINITE}, "
                             f"got {nonfinite!r}")
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
        self._tape = tape if tape is not None else GradientTape()
        self.comm = comm if comm is not None else get_comm()
        self.op, self.bucket_bytes, self.compression = op, int(bucket_bytes), compression
        self.check, self.nonfinite, self.accumulation = check, nonfinite, accumulation
        self.skipped = False
        self.reduced = False
        self.nonfinite_ranks: list[int] = []
        #: timings of the last reduction: ``backward_s`` (the sweep), ``exposed_wait_s`` (time
        #: spent waiting for all-reduces after the sweep ended), ``launched_during_backward``
        #: (buckets started before the sweep ended), ``buckets``, ``bytes``
        self.stats: dict[str, float] = {}

    # -- delegation: everything but gradient() is the wrapped tape's ---------------------------
    def __enter__(self) -> "DistributedGradientTape":
        self._tape.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._tape.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tape, name)

    # -- the reduction ---------------------------------------------------------------------------
    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients: str | UnconnectedGradients = "none"):
        """Like ``GradientTape.gradient``, with every gradient reduced over the ranks."""
        mode = UnconnectedGradients(unconnected_gradients)
        leaves = self._tape._sources(sources)
        self.skipped = self.reduced = False
        self.nonfinite_ranks = []  # of this call only (a persistent tape is called again)
        acc = self.accumulation
        if acc is not None and acc.count + 1 < acc.steps:
            local = self._tape._gradient_by_id(target, leaves, output_gradients)
            self._accumulate(acc, leaves, local)
            return nest.pack_as(sources, [None] * len(leaves))
        sig = _signature(leaves)
        plan = self._plan(leaves, sig)
        pos_of = {s._id: k for k, s in enumerate(leaves)}
        # Buckets launch in index order; `launched` is how many have been started. The
        # signature check runs non-blocking under the sweep and is completed before the first
        # bucket is launched, so a mismatch is still reported before any reduction.
        state: dict[str, Any] = {"launched": 0}
        if self.check and self.comm.size > 1:
            state["check"] = (self._start_check(sig), leaves, sig)

        def on_final(sid: int, g: Tensor) -> None:
            k = pos_of[sid]
            b_idx, m = plan.where[k]
            b = plan.buckets[b_idx]
            self._pack(b, m, k, g._value, acc)
            b.pending -= 1
            if not plan.fused:
                self._launch_ready(plan, state)

        self._lend(plan)
        for b in plan.buckets:
            b.pending = len(b.members)
            if not b.lent:
                b.buf = self._buffer(b)
            b.buf[b.total:] = 0  # presence flags
        t0 = time.perf_counter()
        local = self._tape._gradient_by_id(target, leaves, output_gradients, on_final=on_final)
        t_sweep = time.perf_counter()
        during = state["launched"]
        # Sources the sweep never reached (unconnected here) travel as zeros, flagged absent.
        for b in plan.buckets:
            if b.pending:
                for m, k in enumerate(b.members):
                    if leaves[k]._id not in local or b.buf[b.total + m] == 0:
                        if leaves[k]._id in local:
                            self._pack(b, m, k, local[leaves[k]._id]._value, acc)
                        elif acc is not None and k in acc.sums:
                            self._pack(b, m, k, None, acc)
                        else:
                            off, n = b.offsets[m], b.sizes[m]
                            b.buf[off:off + n] = 0
                b.pending = 0
        if "check" in state:  # complete the signature check before any reduction
            self._finish_check(*state.pop("check"))
        if plan.fused:  # one blocking reduction: averaging and the finiteness test included
            finite = self.comm.allreduce_many_([b.buf for b in plan.buckets], op=self.op,
                                               check_finite=self.nonfinite != "ignore")
            results = self._finish(plan, leaves, local, mode, finite=finite, averaged=True)
        else:
            self._launch_ready(plan, state)
            results = self._finish(plan, leaves, local, mode)
        self.stats = {"backward_s": t_sweep - t0,
                      "exposed_wait_s": time.perf_counter() - t_sweep,
                      "launched_during_backward": during, "buckets": len(plan.buckets),
                      "shared_memory": plan.fused,
                      "bytes": sum(b.buf.nbytes for b in plan.buckets)}
        if acc is not None:
            acc.count, acc.sums = 0, {}
        self.reduced = True
        return nest.pack_as(sources, results)

    def _accumulate(self, acc: GradientAccumulation, leaves: list, local: dict) -> None:
        for k, s in enumerate(leaves):
            g = local.get(s._id)
            if g is not None:
                prev = acc.sums.get(k)
                acc.sums[k] = g._value.copy() if prev is None else prev + g._value
        acc.count += 1

    def _pack(self, b: _Bucket, m: int, k: int, g, acc) -> None:
        off, n = b.offsets[m], b.sizes[m]
        view = b.buf[off:off + n]
        extra = acc.sums.get(k) if acc is not None else None
        if g is None:
            g = extra
        elif extra is not None:
            g = g + extra
        np.copyto(view, g.reshape(-1), casting="same_kind")
        b.buf[b.total + m] = 1

    def _launch_ready(self, plan: _Plan, state: dict) -> None:
        buckets = plan.buckets
        while state["launched"] < len(buckets) and buckets[state["launched"]].pending == 0:
            if "check" in state:
                self._finish_check(*state.pop("check"))
            b = buckets[state["launched"]]
            b.handle = self.comm.iallreduce_(b.buf, op="sum")
            state["launched"] += 1

    def _finish(self, plan: _Plan, leaves: list, local: dict, mode, *,
                 finite: bool | None = None, averaged: bool = False) -> list:
        """Complete the buckets' reductions and unpack the results (views of the buckets).

        ``finite`` and ``averaged`` come from a fused reduction that already tested finiteness
        (``None``: not tested) and averaged; otherwise both happen here."""
        scale = 1.0 / self.comm.size if self.op == "average" and not averaged else None
        if finite is None:
            finite = True
        for b in plan.buckets:
            if b.handle is not None:
                b.handle.wait()
                b.handle = None
                if self.nonfinite != "ignore":
                    finite = finite and bool(np.isfinite(b.buf[:b.total]).all())
        if not finite:
            self._on_nonfinite(leaves, local)
            return [None] * len(leaves)
        if scale is not None:  # average in place: the results are views of the buckets
            for b in plan.buckets:
                if b.dtype != np.float16:
                    b.buf[:b.total] *= np.asarray(scale, dtype=b.dtype)
        out = []
        for k, s in enumerate(leaves):
            b_idx, m = plan.where[k]
            b = plan.buckets[b_idx]
            if b.buf[b.total + m] == 0:
                out.append(Tensor(np.zeros(s.shape, s.dtype)) if mode is
                           UnconnectedGradients.ZERO else None)
                continue
            off, n = b.offsets[m], b.sizes[m]
            g = b.buf[off:off + n].reshape(s.shape)
            if b.dtype != s.dtype:
                g = g.astype(s.dtype)
                if scale is not None:
                    g *= np.asarray(scale, dtype=g.dtype)
            out.append(Tensor(g))
        return out

    def _on_nonfinite(self, leaves: list, local: dict) -> None:
        mine = [k for k, s in enumerate(leaves) if s._id in local
                and not bool(np.isfinite(local[s._id]._value).all())]
        reports = self.comm.allgather_json(mine)
        self.nonfinite_ranks = [r for r, bad in enumerate(reports) if bad]
        detail = "; ".join(f"rank {r}: tensors {bad}" for r, bad in enumerate(reports) if bad)
        detail = detail or "no local non-finite values: the reduction overflowed"
        msg = (f"non-finite gradient on rank(s) {self.nonfinite_ranks} ({detail}); every rank "
               f"skips this step")
        if self.nonfinite == "raise":
            raise FloatingPointError(msg.replace("every rank skips this step",
                                                 "stopping (nonfinite='raise')"))
        self.skipped = True
        if self.comm.rank == 0:
            print(f"tapeflow: {msg}", file=sys.stderr, flush=True)

    # -- checks and plans --------------------------------------------------------------------
    _crc: dict = {}

    def _start_check(self, sig: tuple):
        h = self._crc.get(sig)
        if h is None:
            h = self._crc[sig] = float(zlib.crc32(repr(sig).encode()))
        return self.comm.iallreduce(np.array([h, -h]), op="max")

    def _finish_check(self, handle, leaves: list, sig: tuple) -> None:
        both = handle.wait()
        if both[0] == -both[1]:
            return
        sigs = self.comm.allgather_json([[list(shape), dt] for shape, dt in sig])
        lines = []
        ref = sigs[0]
        for r, other in enumerate(sigs[1:], start=1):
            if len(other) != len(ref):
                lines.append(f"rank 0 has {len(ref)} gradients, rank {r} has {len(other)}")
                continue
            for k, (a, b) in enumerate(zip(ref, other)):
                if a != b:
                    lines.append(f"tensor #{k} ({getattr(leaves[k], 'name', 'tensor')}): rank 0 "
                                 f"{tuple(a[0])} {np.dtype(a[1])}, rank {r} {tuple(b[0])} "
                                 f"{np.dtype(b[1])}")
        raise ValueError("DistributedGradientTape: ranks disagree on the gradients to reduce "
                         "(nothing was reduced): " + "; ".join(lines))

    def _plan(self, leaves: list, sig: tuple) -> _Plan:
        key = (id(self.comm), sig, self.bucket_bytes, self.compression)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        buckets: list[_Bucket] = []
        where = {}
        cur = None
        for k in reversed(range(len(leaves))):
            s = leaves[k]
            wire = np.dtype(np.float16) if self.compression == "fp16" else np.dtype(s.dtype)
            n = int(np.prod(s.shape, dtype=np.int64))
            if cur is None or cur.dtype != wire or (
                    cur.total and (cur.total + n) * wire.itemsize > self.bucket_bytes):
                cur = _Bucket(dtype=wire, members=[], offsets=[], sizes=[], total=0)
                buckets.append(cur)
            where[k] = (len(buckets) - 1, len(cur.members))
            cur.members.append(k)
            cur.offsets.append(cur.total)
            cur.sizes.append(n)
            cur.total += n
        nbytes = tuple((b.total + len(b.members)) * b.dtype.itemsize for b in buckets)
        dtypes = {b.dtype for b in buckets}
        fused = len(dtypes) == 1 and self.comm.reduces_in_shared_memory(sum(nbytes), dtypes.pop())
        plan = _Plan(buckets=buckets, where=where, signature=sig, fused=fused, nbytes=nbytes)
        self._plans[key] = plan
        return plan

    def _lend(self, plan: _Plan) -> None:
        """Fused plans pack straight into the communicator's shared memory when it is free:
        no copy into the reduction, results read back in place."""
        if not plan.fused:
            return
        for b in plan.buckets:  # drop last call's views, so only the user's can keep it busy
            if b.lent:
                b.buf, b.lent = None, False
        whole = self.comm.shared_buffer(sum(plan.nbytes))
        if whole is None:
            return
        off = 0
        for b, n in zip(plan.buckets, plan.nbytes):
            b.buf, b.lent = whole[off:off + n].view(b.dtype), True
            off += n

    @staticmethod
    def _buffer(b: _Bucket):
        # Reuse the bucket's buffer (MPI registers a buffer's memory once; fresh buffers cost
        # milliseconds) unless gradients returned last step still view it: then copy-on-write.
        if b.buf is not None and sys.getrefcount(b.buf) <= 3:
            return b.buf
        return np.empty(b.total + len(b.members), dtype=b.dtype)


def tape_factory(comm: Communicator, **options) -> Callable[[], Any]:
    """A zero-argument tape constructor for training loops: a plain ``GradientTape`` on one
    rank, a summing ``DistributedGradientTape`` (the loop scales by the global batch) on more."""
    if comm.size == 1:
        return GradientTape
    options.setdefault("op", "sum")
    return lambda: DistributedGradientTape(GradientTape(), comm, **options)


def broadcast_variables(variables, root: int = 0, comm: Communicator | None = None) -> None:
    """Give every rank ``root``'s values (call at start and after restoring a checkpoint)."""
    sync_variables(variables, comm if comm is not None else get_comm(), root)


def broadcast_optimizer_state(optimizer, root: int = 0, comm: Communicator | None = None) -> None:
    """Give every rank ``root``'s optimizer state (after a restore on ``root``)."""
    sync_optimizer_state(optimizer, comm if comm is not None else get_comm(), root)


def average_metrics(metrics: dict, comm: Communicator | None = None) -> dict:
    """Average float metrics over ranks (for logs), in one reduction."""
    comm = comm if comm is not None else get_comm()
    keys = sorted(metrics)
    vals = comm.allreduce(np.array([float(metrics[k]) for k in keys]), op="average")
    return dict(zip(keys, (float(v) for v in vals)))
