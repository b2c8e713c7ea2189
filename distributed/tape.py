"""``DistributedGradientTape``: gradients averaged (or summed) over ranks, Horovod style.

The tape does one thing: it asks its communicator for a *reducer* for the gradients' layout
(:meth:`~tapeflow.distributed.base.Communicator.reducer`), packs each gradient into its bucket
as the backward sweep makes it final, tells the reducer when a bucket is complete, finishes and
unpacks. How the bytes travel (bucketed non-blocking MPI all-reduces that overlap the sweep, one
fused shared-memory reduction within a node, nothing on one process) is the reducer's business.

Buckets follow a fixed order (the reverse of the sources list, roughly the order the sweep
finishes them), so every rank reduces the same buckets in the same sequence.

Safety, on by default:
- the reducer checks the layout (every source's shape and dtype, the op, the step) across ranks
  before any data is combined: a mismatch is a ``MismatchError`` on every rank;
- ``None`` gradients travel as zeros plus a presence flag: a gradient is ``None`` only where it
  was ``None`` on every rank;
- a non-finite reduced gradient makes every rank skip the step together (``nonfinite="skip"``:
  all gradients come back ``None`` and ``tape.skipped`` is True) or raise
  (``nonfinite="raise"``), naming the ranks whose local gradients were not finite;
- the gradients returned are the caller's: they view buffers that are reused only after every
  returned gradient (and every view of it) is gone, so a gradient kept across steps is never
  overwritten, whichever subset is kept.
"""
from __future__ import annotations

import functools
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tapeflow import devices, nest, timeline
from tapeflow._backend import array_module
from tapeflow.tape import GradientTape, UnconnectedGradients
from tapeflow.tensor import _TRACE, Tensor, Variable

from .base import Communicator, Layout, Reducer
from .signature import KINDS, text_crc
from .faults import MismatchError
from .registry import get_comm

__all__ = ["DistributedGradientTape", "GradientAccumulation", "tape_factory",
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
    buf: Any = None            # this step's buffer (handed out by the reducer)
    pending: int = 0


@dataclass
class _Plan:
    buckets: list
    where: dict                # source position -> (bucket index, member index)
    reducer: Reducer
    steps: int = 0


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

    # communicator -> {(signature, options): plan}; plans (and their reducers' buffers) are
    # reused from step to step, and go when the communicator goes
    _plans: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, tape: GradientTape | None = None, comm: Communicator | None = None, *,
                 op: str = "average", bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 compression: str | None = None, nonfinite: str = "skip",
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
        self.nonfinite, self.accumulation = nonfinite, accumulation
        self.skipped = False
        self.reduced = False
        self.nonfinite_ranks: list[int] = []
        #: timings of the last reduction: ``backward_s`` (the sweep), ``exposed_wait_s`` (time
        #: after the sweep until the gradients are reduced), ``launched_during_backward``
        #: (buckets ready before the sweep ended), ``buckets``, ``bytes``, ``reduction`` (path)
        self.stats: dict[str, Any] = {}

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
        if _TRACE:
            if acc is not None:
                raise TypeError("DistributedGradientTape(accumulation=...) inside tp.function: "
                                "the accumulation count would be frozen into the trace; "
                                "accumulate eagerly, or trace one step of the group")
            return nest.pack_as(sources, self._traced(leaves, target, output_gradients, mode))
        if acc is not None and acc.count + 1 < acc.steps:
            local = self._tape._gradient_by_id(target, leaves, output_gradients)
            self._accumulate(acc, leaves, local)
            return nest.pack_as(sources, [None] * len(leaves))
        results = self._run(leaves, lambda on_final: self._tape._gradient_by_id(
            target, leaves, output_gradients, on_final=on_final), mode)
        return nest.pack_as(sources, results)

    def reduce(self, grads: list, sources: list) -> list:
        """Reduce gradients computed elsewhere (``None`` where absent) for ``sources``, as
        :meth:`gradient` would: one checked, fused reduction (``DistributedOptimizer``)."""
        leaves = self._tape._sources(list(sources))
        local = {s._id: g if isinstance(g, Tensor) else Tensor(g)
                 for s, g in zip(leaves, grads) if g is not None}
        self.skipped = self.reduced = False
        self.nonfinite_ranks = []
        return self._run(leaves, lambda on_final: local, UnconnectedGradients.NONE)

    def _run(self, leaves: list, sweep: Callable, mode) -> list:
        acc = self.accumulation
        plan = self._plan(leaves)
        pos_of = {s._id: k for k, s in enumerate(leaves)}
        plan.steps += 1
        bufs = plan.reducer.start(tag=plan.steps)  # the layout check starts here
        try:
            results = self._reduce(plan, bufs, leaves, pos_of, sweep, acc, mode)
        except BaseException as exc:
            error = self._abandon(plan, leaves, exc)
            if error is exc:
                raise
            raise error from None
        _release(plan)
        if acc is not None:
            acc.count, acc.sums = 0, {}
        self.reduced = True
        return results

    def _reduce(self, plan: _Plan, bufs: list, leaves: list, pos_of: dict, sweep: Callable,
                acc, mode) -> list:
        reducer = plan.reducer
        _begin(plan, bufs)
        ready_during = [0]

        def on_final(sid: int, g: Tensor) -> None:
            if self._pack_final(plan, pos_of[sid], g._value, acc):
                ready_during[0] += 1

        t0 = time.perf_counter()
        with timeline.span("backward", "step"):
            local = sweep(on_final)
        t_sweep = time.perf_counter()
        self._complete(plan, leaves, local, acc)
        with timeline.span("reduce (finish)", "reduce", path=reducer.path):
            finite = reducer.finish()
        self.stats = {"backward_s": t_sweep - t0,
                      "exposed_wait_s": time.perf_counter() - t_sweep,
                      "launched_during_backward": ready_during[0],
                      "buckets": len(plan.buckets), "reduction": reducer.path,
                      "shared_memory": reducer.path == "shared-memory",
                      "bytes": sum(buf.nbytes for buf in bufs)}
        if finite is False:
            self._on_nonfinite(leaves, local)
            return [None] * len(leaves)
        out = []
        for k, s in enumerate(leaves):
            g = _unpack(plan, k, s)
            if g is None and mode is UnconnectedGradients.ZERO:
                g = array_module(s._value).zeros(s.shape, s.dtype)
            out.append(None if g is None else Tensor(g))
        return out

    def _abandon(self, plan: _Plan, leaves: list, exc: BaseException) -> BaseException:
        """A reduction that will not finish: the reducer cancelled, this step's buffers let go.
        Returns the error to raise: a mismatch every tape raised becomes the detailed one
        naming the first differing tensor."""
        plan.reducer.cancel()
        _release(plan)
        if isinstance(exc, MismatchError) and _between_tapes(exc):
            return self._layout_mismatch(leaves, exc)
        return exc

    def _pack_final(self, plan: _Plan, k: int, g, acc) -> bool:
        """Pack source ``k``'s final gradient; a full bucket goes to the reducer (True)."""
        b_idx, m = plan.where[k]
        b = plan.buckets[b_idx]
        self._pack(b, m, k, g, acc)
        b.pending -= 1
        if b.pending:
            return False
        timeline.instant("bucket ready", "reduce", bucket=b_idx, bytes=b.buf.nbytes)
        plan.reducer.ready(b_idx)
        return True

    def _complete(self, plan: _Plan, leaves: list, local: dict, acc) -> None:
        """Sources the sweep never reached (unconnected here) travel as zeros, flagged absent
        unless accumulated gradients stand in for them; every bucket goes to the reducer."""
        for b_idx, b in enumerate(plan.buckets):
            if not b.pending:
                continue
            for m, k in enumerate(b.members):
                if b.buf[b.total + m]:
                    continue
                sid = leaves[k]._id
                if sid in local:
                    self._pack(b, m, k, local[sid]._value, acc)
                elif acc is not None and k in acc.sums:
                    self._pack(b, m, k, None, acc)
                else:
                    off, n = b.offsets[m], b.sizes[m]
                    b.buf[off:off + n] = 0
            b.pending = 0
            plan.reducer.ready(b_idx)

    # -- inside tp.function ----------------------------------------------------------------------
    def _traced(self, leaves: list, target, output_gradients, mode) -> list:
        """The reduction recorded into the trace as three kinds of plan nodes: start (before the
        backward sweep), pack (right after the op that makes each gradient final, so a full
        bucket is reduced while the sweep goes on, as eagerly) and finish (the reduced
        gradients). The trace is dry: nothing is communicated until the first replay."""
        tracer = _TRACE[-1]
        plan = self._plan(leaves)
        pos_of = {s._id: k for k, s in enumerate(leaves)}
        replay = _Replay(self, plan, leaves)
        tracer.effect(replay.start)
        packed: list[int] = []

        def on_final(sid: int, g: Tensor) -> None:
            packed.append(pos_of[sid])
            tracer.effect(functools.partial(replay.pack, pos_of[sid]), (g,))

        local = self._tape._gradient_by_id(target, leaves, output_gradients, on_final=on_final)
        for k, s in enumerate(leaves):
            if k not in packed and s._id in local:
                packed.append(k)
                tracer.effect(functools.partial(replay.pack, k), (local[s._id],))
        replay.present = sorted(packed)
        replay.absent = [k for k in range(len(leaves)) if k not in packed]
        outs = [Tensor(local[leaves[k]._id]._value.astype(leaves[k].dtype, copy=True))
                for k in replay.present]
        tracer.effect(replay.finish, (), tuple(outs), guard=replay.skip)
        results: list = [None] * len(leaves)
        for k, t in zip(replay.present, outs):
            results[k] = t
        if mode is UnconnectedGradients.ZERO:
            for k, s in enumerate(leaves):
                if results[k] is None:
                    results[k] = Tensor(array_module(s._value).zeros(s.shape, s.dtype))
        return results

    def _accumulate(self, acc: GradientAccumulation, leaves: list, local: dict) -> None:
        for k, s in enumerate(leaves):
            g = local.get(s._id)
            if g is not None:
                prev = acc.sums.get(k)
                acc.sums[k] = g._value.copy() if prev is None else prev + g._value
        acc.count += 1

    def _pack(self, b: _Bucket, m: int, k: int, g, acc) -> None:
        off, n = b.offsets[m], b.sizes[m]
        extra = acc.sums.get(k) if acc is not None else None
        if g is None:
            g = extra
        elif extra is not None:
            g = g + extra
        flat = g.reshape(-1)
        if type(flat) is not type(b.buf):
            flat = _stage(flat, b.buf)  # a device gradient into a host (MPI) bucket
        array_module(b.buf).copyto(b.buf[off:off + n], flat, casting="same_kind")
        b.buf[b.total + m] = 1

    def _on_nonfinite(self, leaves: list, local: dict) -> None:
        mine = [k for k, s in enumerate(leaves) if s._id in local
                and not bool(array_module(local[s._id]._value).isfinite(
                    local[s._id]._value).all())]
        reports = self.comm.allgather_object(mine)
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

    def _layout_mismatch(self, leaves: list, exc: MismatchError) -> MismatchError:
        """The detailed error when every rank reduces gradients but the layouts differ."""
        mine = {"options": [self.op, self.bucket_bytes, self.compression],
                "tensors": [[getattr(s, "name", None) if isinstance(s, Variable) else None,
                             list(map(int, s.shape)), str(np.dtype(s.dtype))] for s in leaves]}
        every = self.comm.allgather_object(mine)
        ref = every[0]
        for r, other in enumerate(every[1:], start=1):
            if other["options"] != ref["options"]:
                detail = (f"rank 0 reduces with (op, bucket_bytes, compression) = "
                          f"{tuple(ref['options'])}, rank {r} with {tuple(other['options'])}")
                break
            a, b = ref["tensors"], other["tensors"]
            if len(a) != len(b):
                detail = f"rank 0 has {len(a)} gradients, rank {r} has {len(b)}"
                break
            diff = next((k for k in range(len(a)) if a[k][1:] != b[k][1:]), None)
            if diff is not None:
                name = f" ({a[diff][0]})" if a[diff][0] else ""
                detail = (f"tensor #{diff}{name}: rank 0 {tuple(a[diff][1])} {a[diff][2]}, "
                          f"rank {r} {tuple(b[diff][1])} {b[diff][2]}")
                break
        else:
            return exc
        return MismatchError("DistributedGradientTape: ranks disagree on the gradients to reduce "
                             f"(nothing was reduced): {detail}", exc.signatures)

    # -- plans -----------------------------------------------------------------------------------
    def _plan(self, leaves: list) -> _Plan:
        sig = _signature(leaves)
        key = (sig, self.bucket_bytes, self.compression, self.op, self.nonfinite)
        plans = self._plans.setdefault(self.comm, {})
        plan = plans.get(key)
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
        layout = Layout(buckets=tuple((b.dtype, b.total + len(b.members)) for b in buckets),
                        crc=text_crc(repr((sig, self.bucket_bytes, self.compression))))
        reducer = self.comm.reducer(layout, self.op, check_finite=self.nonfinite != "ignore")
        plan = _Plan(buckets=buckets, where=where, reducer=reducer)
        plans[key] = plan
        return plan


def _begin(plan: _Plan, bufs: list) -> None:
    """This step's buffers into the buckets, presence flags cleared."""
    for b, buf in zip(plan.buckets, bufs):
        b.buf, b.pending = buf, len(b.members)
        buf[b.total:] = 0


def _release(plan: _Plan) -> None:
    """Let go of this step's buffers: only the caller's gradients keep them (leases)."""
    for b in plan.buckets:
        b.buf = None


def _unpack(plan: _Plan, k: int, s: Tensor):
    """Source ``k``'s reduced gradient (a view of its bucket, on ``s``'s device and dtype), or
    None where it was absent on every rank."""
    b_idx, m = plan.where[k]
    b = plan.buckets[b_idx]
    if b.buf[b.total + m] == 0:
        return None
    off, n = b.offsets[m], b.sizes[m]
    g = b.buf[off:off + n].reshape(s.shape)
    if type(g) is not type(s._value):
        g = _stage(g, s._value)  # a host (MPI) bucket back to the source's device
    if b.dtype != s.dtype:
        g = g.astype(s.dtype)
    return g


class _Replay:
    """A traced ``DistributedGradientTape.gradient`` as plan kernels (see ``_traced``).

    A non-finite reduced gradient sets :attr:`skip` (the plan's guard): with
    ``nonfinite="skip"`` the state changes that follow in the traced function (the optimizer
    step) are not made on that replay, on every rank, and ``tape.skipped`` is True; with
    ``"raise"`` the replay raises ``FloatingPointError`` on every rank."""

    def __init__(self, tape: DistributedGradientTape, plan: _Plan, leaves: list):
        self.tape, self.plan, self.leaves = tape, plan, leaves
        self.present: list[int] = []   # sources with a gradient here at trace time
        self.absent: list[int] = []    # the others
        self.skip = [False]
        self.active = False
        self.during = 0  # buckets handed to the reducer during the sweep, this replay

    def _fail(self, exc: BaseException) -> BaseException:
        self.active = False
        return self.tape._abandon(self.plan, self.leaves, exc)

    def start(self) -> None:
        plan, tape = self.plan, self.tape
        if self.active:  # the last replay stopped half way (an exception in the sweep)
            plan.reducer.cancel()
        tape.skipped = tape.reduced = False
        tape.nonfinite_ranks = []
        self.skip[0] = False
        self.during = 0
        plan.steps += 1
        try:
            _begin(plan, plan.reducer.start(tag=plan.steps))
        except BaseException as exc:
            raise self._fail(exc) from None
        self.active = True

    def pack(self, k: int, g) -> None:
        try:
            self.during += self.tape._pack_final(self.plan, k, g, None)
        except BaseException as exc:
            raise self._fail(exc) from None

    def finish(self) -> tuple:
        plan, tape = self.plan, self.tape
        try:
            tape._complete(plan, self.leaves, {}, None)
            finite = plan.reducer.finish()
            extra = [k for k in self.absent if _unpack(plan, k, self.leaves[k]) is not None]
            if extra:
                raise ValueError(
                    f"DistributedGradientTape inside tp.function: gradient #{extra[0]} is None "
                    "on this rank (at trace time) but not on every rank; a traced step needs "
                    "the same connected sources on every rank")
            outs = tuple(_unpack(plan, k, self.leaves[k]) for k in self.present)
        except BaseException as exc:
            raise self._fail(exc) from None
        self.active = False
        _release(plan)
        tape.stats = {"buckets": len(plan.buckets), "reduction": plan.reducer.path,
                      "launched_during_backward": self.during,
                      "shared_memory": plan.reducer.path == "shared-memory"}
        if finite is False:
            msg = (f"non-finite reduced gradient in tp.function step {plan.steps}; every rank "
                   "skips this step's updates")
            if tape.nonfinite == "raise":
                raise FloatingPointError(msg.replace("skips this step's updates",
                                                     "stops (nonfinite='raise')"))
            tape.skipped = self.skip[0] = True
            if tape.comm.rank == 0:
                print(f"tapeflow: {msg}", file=sys.stderr, flush=True)
        tape.reduced = True
        return outs


def _stage(a, like):
    """The MPI staging copy, explicit: ``a`` onto ``like``'s device (device -> host for a host
    bucket, host -> device for a gradient whose source lives on a device)."""
    return devices.to_device(a, devices.device_of(like))


def _between_tapes(exc: MismatchError) -> bool:
    """Whether every rank raised this error from a gradient reduction (so all can talk)."""
    sigs = exc.signatures
    code = KINDS.index("reduce_gradients") + 1
    return sigs is not None and all(int(row[1]) == code and not row[14] for row in sigs)


def tape_factory(comm: Communicator, **options) -> Callable[[], Any]:
    """A zero-argument tape constructor for training loops: a plain ``GradientTape`` on one
    rank, a summing ``DistributedGradientTape`` (the loop scales by the global batch) on more."""
    if comm.size == 1:
        return GradientTape
    options.setdefault("op", "sum")
    return lambda: DistributedGradientTape(GradientTape(), comm, **options)
