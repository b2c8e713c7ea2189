"""Intra-node all-reduce through an MPI-3 shared-memory window (hierarchical across nodes).

Ranks on one node write their buffers into a shared window; each then reduces its own
``1/local_size`` slice straight from its neighbours' memory (with several nodes, that slice is
next all-reduced over MPI among the ranks holding the same slice on every node), and every rank
reads the finished slices back. Per rank that is one copy in, one ``1/local_size`` reduction
and one copy out, with no message protocol in between: on the 2-core benchmark machine a
2.68 MB float32 ``allreduce_`` took 0.43-0.73 ms this way against 0.64-0.84 ms for the MPI
library's own ``Allreduce`` (1.15-1.5x; BENCHMARKS.md), and the distributed tape, which packs
straight into the window (:meth:`SharedMemoryReducer.lend`), skips the copy in as well.

Synchronisation is three counters per call in a small control window (one cache line per rank):
arrived (buffer written, with its size, dtype and op published), reduced, read out. The last
one is waited for lazily, at the start of the next call, so a call costs two waits. A rank
that waits longer than the stall timeout reports which ranks have not arrived, from those same
counters. Mismatched sizes, dtypes or ops are a ``MismatchError`` (a ``ValueError``) on every
rank before anything is reduced: nothing hangs and nothing is corrupted. (Both ranks must take
this path to meet: buffers of at least ``min_bytes`` on every rank.)

Every wait (arrival, reduction, read-out, the cross-node step) goes through the package's one
wait loop (:class:`~tapeflow.distributed.faults.Waiter`), which sleeps instead of spinning once a
wait grows long and reports or aborts a stall naming the ranks that have not arrived.

Arrays lent out of the shared window (:meth:`SharedMemoryEngine.lend`) are leases: the slot is
lent again only after the lease and every view of it are gone (a ``weakref.finalize``), so a
result the caller keeps is never overwritten.
"""
from __future__ import annotations

import platform
import weakref
from typing import Any, Sequence

import numpy as np

from .base import all_finite
from .faults import MismatchError, Waiter

__all__ = ["SharedMemoryEngine", "DEFAULT_MIN_BYTES"]

#: Buffers smaller than this go through MPI, whose small-message path is already a few us.
DEFAULT_MIN_BYTES = 64 << 10
_OPS = {"sum": 0, "average": 1, "max": 2, "min": 3, "product": 4}
_UFUNC = {"sum": np.add, "average": np.add, "max": np.maximum, "min": np.minimum,
          "product": np.multiply}
_DTYPE_CODES = {np.dtype(np.float16): 1, np.dtype(np.float32): 2, np.dtype(np.float64): 3,
                np.dtype(np.int32): 4, np.dtype(np.int64): 5}
_DTYPE_OF_CODE = {c: d for d, c in _DTYPE_CODES.items()}
_ALIGN = 16          # slice boundaries on multiples of 16 elements (one 64-byte line of float32)
_ROW = 8             # int64 slots per rank in the control window: 64 bytes, one cache line
_COUNT, _NBYTES, _DTYPE, _OP, _FINITE, _OFFSET = 0, 1, 2, 3, 4, 5
_TSO_MACHINES = ("x86_64", "amd64", "i386", "i686")


_KEPT: list = []  # windows still viewed by a caller's arrays when their engine closed


class SharedMemoryEngine:
    """All-reduce of NumPy buffers over ``comm`` (an mpi4py intra-communicator) through shared
    memory within each node. Creation is collective over ``comm``.

    ``enabled`` is False (and nothing is allocated) when each node holds a single rank, when
    nodes hold different numbers of ranks, or when the MPI library cannot allocate shared
    windows; callers then use MPI. ``node_size`` groups ranks ``r // node_size`` as "nodes"
    instead of asking MPI which ranks share memory (tests use it to exercise the cross-node
    step on one machine).
    """

    def __init__(self, comm: Any, waiter: Waiter, *, node_size: int | None = None,
                 min_bytes: int = DEFAULT_MIN_BYTES):
        from mpi4py import MPI

        self._MPI = MPI
        self.min_bytes = int(min_bytes)
        self._waiter = waiter
        self._world = comm.Get_size()
        self._node = self._cross = self._ctl_win = self._data_win = None
        self._segments: list[np.ndarray] = []  # each rank's whole segment, as uint8
        self._slot = 0        # bytes per slot: a segment is [scratch slot | lendable slot]
        self._retired: list = []  # outgrown windows; results may still view them
        self._lent: weakref.ref | None = None   # the last lease lend() handed out
        self._lent_addr = 0
        self._retired_leases: list = []  # weak references to leases into outgrown windows
        self._calls = 0
        self.enabled = False
        rank = comm.Get_rank()
        if node_size is None:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        else:
            if node_size < 1:
                raise ValueError(f"node_size must be >= 1, got {node_size}")
            node = comm.Split(color=rank // node_size, key=rank)
        sizes = np.empty(self._world, dtype=np.int64)
        comm.Allgather([np.array([node.Get_size()], dtype=np.int64), MPI.INT64_T],
                       [sizes, MPI.INT64_T])
        if sizes.min() < 2 or sizes.min() != sizes.max():
            node.Free()
            return
        ok = np.array([1], dtype=np.int64)
        try:
            me, local = node.Get_rank(), node.Get_size()
            ctl_win = MPI.Win.Allocate_shared(local * _ROW * 8 if me == 0 else 0, 8, comm=node)
        except Exception:  # no shared windows in this MPI: every rank must agree to fall back
            ok[0], ctl_win = 0, None
        comm.Allreduce(MPI.IN_PLACE, [ok, MPI.INT64_T], op=MPI.MIN)
        if not ok[0]:
            if ctl_win is not None:
                ctl_win.Free()
            node.Free()
            return
        self._node, self._me, self._local = node, me, local
        self._ctl_win = ctl_win
        ctl_win.Lock_all(MPI.MODE_NOCHECK)
        # x86 keeps stores in program order and loads in program order (TSO), which is all the
        # counters need: data written before a counter is seen by whoever sees the counter.
        # Elsewhere MPI_Win_sync is the memory barrier; it also polls MPI's progress engine,
        # which cost ~10 us per call mid-step here, so x86 skips it.
        self._fence = ((lambda: None) if platform.machine().lower() in _TSO_MACHINES
                       else ctl_win.Sync)
        mem, _ = ctl_win.Shared_query(0)
        self._ctl = np.frombuffer(mem, dtype=np.int64, count=local * _ROW).reshape(local, _ROW)
        self._ctl[me] = 0
        ctl_win.Sync()
        node.Barrier()
        ctl_win.Sync()
        ranks = np.empty(local, dtype=np.int64)
        node.Allgather([np.array([rank], dtype=np.int64), MPI.INT64_T], [ranks, MPI.INT64_T])
        self.node_ranks = [int(r) for r in ranks]  # world rank of each local rank (reports)
        cross = comm.Split(color=me, key=rank)     # the ranks holding slice `me` on every node
        if cross.Get_size() > 1:
            self._cross = cross
        else:
            cross.Free()
        self.enabled = True

    @property
    def nodes(self) -> int:
        """Number of nodes (groups of ranks sharing memory); 1 when the job is on one node."""
        return 1 if self._cross is None else self._cross.Get_size()

    def eligible(self, nbytes: int, dtype: np.dtype) -> bool:
        """Whether a reduction of ``nbytes`` of ``dtype`` takes the shared-memory path."""
        return self.enabled and nbytes >= self.min_bytes and np.dtype(dtype) in _DTYPE_CODES

    # -- synchronisation ------------------------------------------------------------------------
    def _publish(self, value: int) -> None:
        self._fence()                           # my data writes become visible first
        self._ctl[self._me, _COUNT] = value
        self._fence()

    def _arrived(self, target: int) -> bool:
        item = self._ctl.item  # scalar reads: a NumPy reduction over the strided column cost
        for r in range(self._local):  # ~5 us per call mid-step, this ~0.1 us per rank
            if item(r, _COUNT) < target:
                return False
        return True

    def _wait(self, target: int, phase: str) -> None:
        if not self._arrived(target):
            item = self._ctl.item
            self._waiter.wait(
                lambda: self._arrived(target), f"shared-memory all-reduce ({phase})",
                (target + 2) // 3,
                missing=lambda: [self.node_ranks[r] for r in range(self._local)
                                 if item(r, _COUNT) < target])
        self._fence()                           # then read what they wrote

    # -- zero-copy staging ------------------------------------------------------------------------
    def lend(self, nbytes: int) -> np.ndarray | None:
        """A writable uint8 lease of ``nbytes`` in this rank's own shared segment, or ``None``.

        Buffers carved from it, in order and back to back from its start, and passed to the
        next :meth:`allreduce_` are reduced where they lie: nothing is copied in, only the
        other ranks' slices are copied back, and the buffers hold the result afterwards.
        ``None`` when the slot is too small (the next reduction grows it) or the previous lease
        (or any view of it) is still alive: the caller then reduces private buffers, and
        nothing it holds is overwritten. Local, not collective; it waits until the other ranks
        have read this rank's previous result out of the slot."""
        if not self.enabled or self._slot < nbytes:
            return None
        if self._lent is not None and self._lent() is not None:
            return None
        self._wait(3 * self._calls, "previous read-out")
        mem = memoryview(self._segments[self._me])[self._slot:self._slot + nbytes]
        whole = np.frombuffer(mem, dtype=np.uint8)  # views of it keep it alive, not the segment
        self._lent = weakref.ref(whole)
        self._lent_addr = whole.__array_interface__["data"][0]
        return whole

    def _in_lent_slot(self, flat: list) -> bool:
        if self._lent is None or self._lent() is None or self._slot == 0:
            return False
        addr = self._lent_addr
        for f in flat:
            if f.__array_interface__["data"][0] != addr:
                return False
            addr += f.nbytes
        return True

    # -- the reduction --------------------------------------------------------------------------
    def allreduce_(self, bufs: Sequence[np.ndarray], op: str = "sum", *,
                   check_finite: bool = False) -> bool | None:
        """Reduce the C-contiguous ``bufs`` (one dtype) in place over every rank, as one
        collective: their concatenation is what is reduced. ``op``: any of ``_OPS``.

        With ``check_finite``, return whether every reduced value is finite (the same answer on
        every rank; each rank tests its own slice while it is in cache)."""
        dtype = bufs[0].dtype
        flat = [b.reshape(-1) for b in bufs]
        total = sum(f.size for f in flat)
        nbytes = total * dtype.itemsize
        base = 3 * self._calls
        self._calls += 1
        self._wait(base, "previous read-out")  # nobody still reads the slices I overwrite
        fits = self._slot >= nbytes
        in_place = fits and self._in_lent_slot(flat)
        if fits and not in_place:
            self._copy_in(flat, dtype)
        row = self._ctl[self._me]
        row[_NBYTES], row[_DTYPE], row[_OP] = nbytes, _DTYPE_CODES[dtype], _OPS[op]
        row[_OFFSET] = self._slot if in_place else 0
        self._publish(base + 1)
        self._wait(base + 1, "arrival")
        meta = self._ctl[:, _NBYTES:_OP + 1].tolist()
        if any(m != meta[self._me] for m in meta):
            self._publish(base + 3)  # keep the counters in step: every rank raises here
            raise MismatchError(self._mismatch(meta))
        if not fits:  # every rank sees the same sizes, so every rank grows the window
            self._grow(nbytes)
            self._copy_in(flat, dtype)
            self._ctl_win.Sync()
            self._node.Barrier()
            self._ctl_win.Sync()
        offsets = self._ctl[:, _OFFSET]
        segs = [s[o:o + nbytes].view(dtype) for s, o in zip(self._segments, offsets)]
        lo, hi = self._slice(total, self._me)
        part = 1
        if hi > lo:
            with np.errstate(all="ignore"):  # inf/NaN are reported by the finiteness test
                part = self._reduce_slice(segs, lo, hi, op, dtype, check_finite)
        self._ctl[self._me, _FINITE] = part
        self._publish(base + 2)
        self._wait(base + 2, "reduction")
        bounds = [self._slice(total, r) for r in range(self._local)]
        if in_place:  # my slice is done where it lies; fetch the others'
            for r, (a, b) in enumerate(bounds):
                if r != self._me and a < b:
                    segs[self._me][a:b] = segs[r][a:b]
            flat = []
        off = 0
        for f in flat:
            end = off + f.size
            for r, (a, b) in enumerate(bounds):
                a, b = max(a, off), min(b, end)
                if a < b:
                    f[a - off:b - off] = segs[r][a:b]
            off = end
        result = None
        if check_finite:
            item = self._ctl.item
            result = all(item(r, _FINITE) for r in range(self._local))
        self._publish(base + 3)
        return result

    def _slice(self, total: int, r: int) -> tuple[int, int]:
        per = -(-total // self._local)
        per = -(-per // _ALIGN) * _ALIGN
        return min(total, r * per), min(total, (r + 1) * per)

    def _copy_in(self, flat: list, dtype: np.dtype) -> None:
        mine = self._segments[self._me]
        off = 0
        for f in flat:
            n = f.nbytes
            np.copyto(mine[off:off + n].view(dtype), f)
            off += n

    def _reduce_slice(self, segs: list, lo: int, hi: int, op: str, dtype: np.dtype,
                      check_finite: bool) -> int:
        ufunc = _UFUNC[op]
        order = [self._me] + [r for r in range(self._local) if r != self._me]
        if dtype == np.float16:  # accumulate in float32, like the MPI path
            acc = segs[order[0]][lo:hi].astype(np.float32)
            for r in order[1:]:
                ufunc(acc, segs[r][lo:hi], out=acc)
        else:
            acc = segs[self._me][lo:hi]
            for r in order[1:]:
                ufunc(acc, segs[r][lo:hi], out=acc)
        if self._cross is not None:  # the cross-node step, watched like every other wait
            MPI = self._MPI
            mpi_type = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE,
                        np.dtype(np.int32): MPI.INT32_T, np.dtype(np.int64): MPI.INT64_T}
            mpi_op = {"max": MPI.MAX, "min": MPI.MIN, "product": MPI.PROD}.get(op, MPI.SUM)
            req = self._cross.Iallreduce(MPI.IN_PLACE, [acc, mpi_type[acc.dtype]], op=mpi_op)
            self._waiter.wait(req.Test, "shared-memory all-reduce (cross-node step)",
                              self._calls)
        if op == "average":
            if acc.dtype.kind == "f":
                np.multiply(acc, acc.dtype.type(1.0 / self._world), out=acc)
            else:
                np.divide(acc, self._world, out=acc)
        if acc.dtype != dtype:
            np.copyto(segs[self._me][lo:hi], acc, casting="unsafe")
        return int(all_finite(acc)) if check_finite else 1

    def _mismatch(self, meta: list) -> str:
        ops = {v: k for k, v in _OPS.items()}
        parts = [f"rank {self.node_ranks[r]}: {int(n)} bytes of "
                 f"{_DTYPE_OF_CODE.get(int(d), '?')}, op {ops.get(int(o), '?')}"
                 for r, (n, d, o) in enumerate(meta)]
        return ("shared-memory all-reduce: ranks passed different buffers (nothing was "
                "reduced): " + "; ".join(parts))

    def _grow(self, nbytes: int) -> None:
        """Allocate a larger data window (collective over the node): two slots of ``nbytes``
        per rank. The old window is kept until :meth:`close`, as results may still view it."""
        MPI = self._MPI
        if self._data_win is not None:
            self._retired.append(self._data_win)
        if self._lent is not None:
            self._retired_leases.append(self._lent)
        slot = -(-max(nbytes, 1 << 20) // 4096) * 4096
        win = MPI.Win.Allocate_shared(2 * slot, 1, comm=self._node)
        win.Lock_all(MPI.MODE_NOCHECK)
        self._segments = [np.frombuffer(win.Shared_query(r)[0], dtype=np.uint8, count=2 * slot)
                          for r in range(self._local)]
        self._data_win, self._slot = win, slot
        self._lent, self._lent_addr = None, 0

    def _free_data(self) -> None:
        """Free the data windows, unless some rank still holds a lease into them (then they
        stay mapped until exit rather than leave dangling arrays)."""
        MPI = self._MPI
        wins = self._retired + ([self._data_win] if self._data_win is not None else [])
        if not wins:
            return
        leases = self._retired_leases + ([self._lent] if self._lent is not None else [])
        held = np.array([any(ref() is not None for ref in leases)], dtype=np.int64)
        self._node.Allreduce(MPI.IN_PLACE, [held, MPI.INT64_T], op=MPI.MAX)
        self._segments, self._slot, self._data_win, self._retired = [], 0, None, []
        self._lent, self._retired_leases = None, []
        if held[0]:
            _KEPT.extend(wins)  # mapped until exit: arrays the caller holds still view them
            return
        for win in wins:
            win.Unlock_all()
            win.Free()

    def close(self) -> None:
        """Free the windows and communicators (collective)."""
        if not self.enabled:
            return
        self.enabled = False
        self._free_data()
        self._ctl = None
        win, self._ctl_win = self._ctl_win, None
        win.Unlock_all()
        win.Free()
        if self._cross is not None:
            self._cross.Free()
            self._cross = None
        self._node.Free()
        self._node = None
