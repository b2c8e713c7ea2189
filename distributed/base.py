"""The communicator interface, the reducer interface and the pieces every implementation shares.

A :class:`Communicator` is a group of ``size`` processes with collectives named after MPI
(``allreduce``, ``allgather``, ``broadcast``, ``barrier``, plus JSON-safe object variants).
Gradient reduction is a strategy the communicator owns: :meth:`Communicator.reducer` returns a
:class:`Reducer` for a gradient layout, and the distributed tape only packs, says "ready",
finishes and unpacks. How the bytes travel (MPI buckets, a shared-memory window, nothing at all
on one process) is the reducer's business.

Every collective is *checked*: before any data is combined the ranks exchange a
:class:`~tapeflow.distributed.signature.Signature` (kind, op, dtype, shape, root and a
per-communicator sequence number) and raise :class:`~tapeflow.distributed.faults.MismatchError`
on every rank when they differ.

Ownership is explicit. Arrays handed to the caller are either fresh or *leases* from a
:class:`LeasePool`: a pooled buffer goes back to the pool only when the lease and every view of
it are gone (a ``weakref.finalize`` on the lease), so nothing a caller holds is ever written
again, and a buffer nobody holds is reused at the same address (MPI registers memory by
address: a fresh 2.6 MB buffer per all-reduce cost 2.5 ms more than a reused one).
"""
from __future__ import annotations

import re
import threading
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..trace import replayed
from .faults import MismatchError
from .signature import REDUCE_OPS, check_op, check_root

__all__ = ["Communicator", "Reducer", "Layout", "LeasePool", "REDUCE_OPS", "all_finite"]


def all_finite(a: np.ndarray) -> bool:
    """Whether every value of host array ``a`` is finite, without a temporary of its size
    (``isfinite(a).all()`` makes a bool array as large as a gradient bucket on every step):
    NaN propagates through ``max``/``min`` and an infinity is one of them."""
    if a.dtype.kind != "f" or a.size == 0:
        return True
    return bool(np.isfinite(a.max()) and np.isfinite(a.min()))

# -- buffers with explicit ownership --------------------------------------------------------------

class LeasePool:
    """Byte buffers lent out as *leases*; a buffer is reused only after its lease died.

    ``take(nbytes)`` returns a writable uint8 array. Views of it (``.view(float32)``, slices,
    reshapes) keep it alive; once the lease and all its views are gone a finaliser returns the
    memory to the pool, where the next ``take`` of the same size finds it at the same address.
    At most ``max_bytes`` of idle buffers are kept."""

    def __init__(self, max_bytes: int = 256 << 20):
        self._free: dict[int, list[np.ndarray]] = {}
        self._idle = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        nbytes = int(nbytes)
        with self._lock:
            free = self._free.get(nbytes)
            raw = free.pop() if free else None
            if raw is not None:
                self._idle -= nbytes
        if raw is None:
            raw = np.empty(max(nbytes, 1), dtype=np.uint8)
        lease = np.frombuffer(memoryview(raw)[:nbytes], dtype=np.uint8)
        weakref.finalize(lease, self._give, raw, nbytes)
        return lease

    def _give(self, raw: np.ndarray, nbytes: int) -> None:
        with self._lock:
            if self._idle + nbytes <= self._max:
                self._free.setdefault(nbytes, []).append(raw)
                self._idle += nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._idle = 0


# -- gradient layouts and reducers ----------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """What a reducer reduces: buckets of ``(dtype, elements)``, in launch order.

    ``crc`` fingerprints everything ranks must agree on (every source's shape and dtype)."""

    buckets: tuple          # ((np.dtype, count), ...)
    crc: int

    @property
    def nbytes(self) -> tuple:
        return tuple(int(n) * np.dtype(d).itemsize for d, n in self.buckets)

    @property
    def count(self) -> int:
        return sum(int(n) for _, n in self.buckets)


def check_layout_op(layout: Layout, op: str) -> None:
    """``ValueError`` unless every bucket of ``layout`` can be reduced by ``op``."""
    problem = next((p for d, _ in layout.buckets
                    if (p := check_op(op, np.dtype(d), "reducer"))), None)
    if problem:
        raise ValueError(problem)


class Reducer(ABC):
    """Reduces the buckets of one :class:`Layout` over the ranks, once per :meth:`start`.

    The protocol, per step::

        bufs = reducer.start(tag)       # one writable array per bucket, owned by this step
        ...pack bucket i into bufs[i]...; reducer.ready(i)     # in any order
        finite = reducer.finish()       # bufs now hold the reduced values

    ``start`` begins the signature check (every rank must reduce the same layout with the same
    op); ``ready`` may launch a bucket's reduction while the caller keeps computing; ``finish``
    completes everything, applies the op (``"average"`` included) and returns whether every
    reduced value is finite (``None`` when not asked). The arrays from ``start`` are the
    caller's: the reducer never writes them after ``finish``."""

    def __init__(self, layout: Layout, op: str, check_finite: bool):
        self.layout, self.op, self.check_finite = layout, op, check_finite

    @abstractmethod
    def start(self, tag: int = 0) -> list:
        """Begin one reduction; return one array per bucket to pack into."""

    def ready(self, bucket: int) -> None:
        """Bucket ``bucket`` is fully packed (its reduction may start now)."""
        del bucket

    @abstractmethod
    def finish(self) -> bool | None:
        """Complete the reduction; True when every reduced value is finite."""

    def cancel(self) -> None:
        """Give up the reduction begun by :meth:`start` (the caller failed mid-step). The
        other ranks' matching reduction is not completed: the job is expected to end."""

    path = "reducer"  # a short name of how the bytes travel (for stats and benchmarks)


# -- the interface --------------------------------------------------------------------------------

def _collectives():
    from . import collectives  # the Tensor-level layer; it imports tapeflow lazily itself

    return collectives


def even_splits(n: int, size: int, what: str) -> list[int]:
    if n % size:
        raise ValueError(f"{what}: the first dimension ({n}) does not split evenly over {size} "
                         "ranks; pass splits=[rows for rank 0, rows for rank 1, ...]")
    return [n // size] * size

class Communicator(ABC):
    """A group of ``size`` processes; collectives must be called by every rank in the same order.

    Reductions take ``op`` in :data:`REDUCE_OPS` (``"average"`` needs a float dtype). Arrays and
    Tensors are accepted; results come back as the same kind, always freshly allocated.
    Collectives on one communicator are called from one thread at a time: a second thread that
    enters while another is inside gets a ``RuntimeError`` at once (use :meth:`dup` for a
    communicator per thread).
    """

    @property
    @abstractmethod
    def rank(self) -> int:
        """This process's index in ``[0, size)``."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of processes."""

    @property
    @abstractmethod
    def local_rank(self) -> int:
        """Index among the processes on this node (e.g. to pick a GPU)."""

    @property
    @abstractmethod
    def local_size(self) -> int:
        """Number of processes on this node."""

    @property
    def cross_rank(self) -> int:
        """Index of this node among the nodes."""
        return self.rank // max(self.local_size, 1)

    @property
    def cross_size(self) -> int:
        """Number of nodes."""
        return max(1, self.size // max(self.local_size, 1))

    @property
    @abstractmethod
    def backend(self) -> str:
        """The registry name: ``"mpi"``, ``"local"``, ..."""

    # -- collectives on arrays and Tensors (differentiable under a tape; collectives.py) -------
    def allreduce(self, x: Any, op: str = "average") -> Any:
        """``x`` reduced over all ranks (a new array or Tensor on every rank)."""
        return _collectives().allreduce(self, x, op)

    def grouped_allreduce(self, xs: Sequence, op: str = "average") -> list:
        """Several arrays or Tensors reduced as one checked collective (fused per dtype)."""
        return _collectives().grouped_allreduce(self, xs, op)

    def allgather(self, x: Any) -> Any:
        """Every rank's ``x`` concatenated along axis 0 in rank order; first dimensions may
        differ, dtype and the other dimensions must agree (a scalar gives a vector)."""
        return _collectives().allgather(self, x)

    def broadcast(self, x: Any = None, root: int = 0) -> Any:
        """Root's ``x`` on every rank (elsewhere ``x`` may be ``None``; if given it must match
        root's shape and dtype)."""
        return _collectives().broadcast(self, x, root)

    def alltoall(self, x: Any, splits: Any = None) -> Any:
        """Send ``splits[r]`` rows of ``x`` to rank ``r`` and gather what every rank sends
        here; ``(gathered, received_splits)`` when ``splits`` is given."""
        return _collectives().alltoall(self, x, splits)

    def reducescatter(self, x: Any, op: str = "sum") -> Any:
        """``x`` reduced (``sum`` or ``average``) and split along axis 0 over the ranks."""
        return _collectives().reducescatter(self, x, op)

    # -- what an implementation provides (NumPy arrays in and out) ------------------------------
    @abstractmethod
    def _allreduce(self, arr: np.ndarray, op: str) -> np.ndarray:
        """A fresh array: ``arr`` reduced by ``op`` over the ranks."""

    @abstractmethod
    def _grouped_allreduce(self, arrs: list, op: str) -> list:
        """Fresh arrays: each of ``arrs`` reduced, as one checked collective."""

    @abstractmethod
    def _allgather(self, arr: np.ndarray) -> list:
        """Every rank's array, by rank."""

    @abstractmethod
    def _broadcast(self, arr: np.ndarray | None, root: int) -> np.ndarray:
        """Root's array."""

    @abstractmethod
    def _alltoall(self, arr: np.ndarray, splits: list | None) -> tuple[np.ndarray, list]:
        """The gathered rows and how many came from each rank."""

    @abstractmethod
    def _reducescatter(self, arr: np.ndarray, op: str) -> np.ndarray:
        """This rank's rows of the reduction."""

    @abstractmethod
    def allgather_object(self, obj: Any) -> list:
        """Every rank's JSON-serialisable ``obj`` (round-tripped through JSON; never pickle)."""

    @abstractmethod
    def broadcast_object(self, obj: Any = None, root: int = 0) -> Any:
        """Root's JSON-serialisable ``obj`` on every rank."""

    @abstractmethod
    def barrier(self) -> None:
        """Return once every rank has entered the barrier."""

    @abstractmethod
    def reducer(self, layout: Layout, op: str = "average", *,
                check_finite: bool = False) -> Reducer:
        """A :class:`Reducer` for ``layout`` (local; the reductions it runs are collective)."""

    @abstractmethod
    def new_group(self, ranks: Sequence[int]) -> "Communicator | None":
        """A communicator over ``ranks`` (collective: every rank calls it with the same list);
        ``None`` on ranks outside the group."""

    @abstractmethod
    def _join(self) -> int:
        """Answer other ranks' collectives until every rank joined (see ``dist.join``)."""

    def close(self) -> None:
        """Release the communicator's resources (collective for MPI)."""

    # -- built on the collectives above ------------------------------------------------------
    @replayed  # inside tp.function: run on every replay, in its place (after the update)
    def broadcast_variables(self, variables: Sequence, root: int = 0) -> None:
        """Assign ``root``'s value to each Variable on every rank, after checking that every
        rank passes the same count, names, shapes and dtypes (a ``MismatchError`` naming the
        first difference otherwise, on every rank)."""
        variables = list(variables)
        root = check_root(root, self.size)
        desc = [[stable_name(v), list(map(int, v.shape)), str(np.dtype(v.dtype))]
                for v in variables]
        agree_on_descriptions(self, desc, root, "broadcast_variables", "variable")
        if self.size == 1:
            return
        for v in variables:
            v.assign(self.broadcast(v._value, root=root))

    @replayed
    def broadcast_optimizer_state(self, optimizer: Any, root: int = 0) -> None:
        """Give every rank ``root``'s optimizer state (arrays broadcast, scalars as JSON).

        Checked first, on every rank: the optimizer class must match root's, and a rank that
        already has state (slots) must have root's entries, shapes and dtypes (a rank with no
        state yet, e.g. before its first step, takes root's as it is)."""
        root = check_root(root, self.size)
        state = optimizer.get_state()
        arrays = sorted(k for k, v in state.items() if hasattr(v, "shape"))
        desc = [type(optimizer).__name__,
                [[k, list(map(int, np.shape(state[k]))), str(np.asarray(state[k]).dtype)]
                 for k in arrays]]
        every = self.allgather_object(desc)
        ref = every[root]
        for r, (kind, entries) in enumerate(every):
            if kind != ref[0]:
                raise MismatchError(f"broadcast_optimizer_state: rank {root} has a {ref[0]} "
                                    f"optimizer, rank {r} a {kind}")
            if entries and entries != ref[1]:
                _raise_first_difference(ref[1], entries, root, r, "broadcast_optimizer_state",
                                        "state entry")
        if self.size == 1:
            return
        scalars = self.broadcast_object(
            {k: v for k, v in state.items() if not hasattr(v, "shape")}, root=root)
        names = self.broadcast_object(arrays, root=root)
        received = {k: self.broadcast(np.asarray(state[k]) if self.rank == root else None,
                                      root=root) for k in names}
        if self.rank != root:
            optimizer.set_state({**scalars, **received})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank}/{self.size} backend={self.backend!r}>"


_AUTO_NAME = re.compile(r"^Variable(_\d+)?(:\d+)?$")


def stable_name(v: Any) -> str | None:
    """A variable's name when the user chose it; ``None`` for an automatic one (its counter
    depends on how many variables a process created before, which ranks need not agree on)."""
    name = getattr(v, "name", None)
    return None if name is None or _AUTO_NAME.match(str(name)) else str(name)


def _raise_first_difference(ref: list, other: list, root: int, r: int, what: str,
                            noun: str) -> None:
    if len(other) != len(ref):
        raise MismatchError(f"{what}: rank {root} has {len(ref)} {noun}s, rank {r} has "
                            f"{len(other)} (nothing was broadcast)")
    for k, (a, b) in enumerate(zip(ref, other)):
        if a != b:
            raise MismatchError(
                f"{what}: {noun} #{k} differs (nothing was broadcast): rank {root} has "
                f"{a[0]!r} shape {tuple(a[1])} {a[2]}, rank {r} has {b[0]!r} shape "
                f"{tuple(b[1])} {b[2]}")


def agree_on_descriptions(comm: Communicator, desc: list, root: int, what: str,
                          noun: str) -> None:
    """Raise a ``MismatchError`` on every rank unless every rank's ``desc`` equals root's."""
    every = comm.allgather_object(desc)
    for r, other in enumerate(every):
        if other != every[root]:
            _raise_first_difference(every[root], other, root, r, what, noun)
