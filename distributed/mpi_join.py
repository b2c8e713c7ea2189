"""How a rank inside ``dist.join()`` answers the other ranks' MPI collectives.

A joined rank takes part in every collective the active ranks call, learning what it is from
their signatures alone: reductions get neutral values (:func:`neutral`), broadcasts are
received, gathers get no rows (``None`` for objects), barriers are joined. Collectives that
need the joined rank's own data (``alltoall``, ``reducescatter``, ``grouped_allreduce``...) are a
``MismatchError`` on every rank. See :mod:`tapeflow.distributed.join` for the user's side.
"""
from __future__ import annotations

import numpy as np

from .faults import MismatchError
from .signature import DTYPES, KINDS, Signature, json_bytes

__all__ = ["JoinAnswers", "JOINABLE", "neutral"]

#: what a joined rank can take part in: it needs nothing but the signature
_JOIN_CODE = KINDS.index("join") + 1
JOINABLE = ("reduce_gradients", "allreduce", "broadcast", "broadcast_object", "allgather",
            "allgather_object", "barrier")


def neutral(op: str, dtype: np.dtype, count: int) -> np.ndarray:
    """``count`` values of ``dtype`` that leave a reduction by ``op`` unchanged."""
    if op in ("max", "min"):
        info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
        value = info.min if op == "max" else info.max
        if dtype.kind == "f":
            value = -np.inf if op == "max" else np.inf
        return np.full(count, value, dtype=dtype)
    return np.full(count, 1 if op == "product" else 0, dtype=dtype)


class JoinAnswers:
    """The joined side of ``dist.join`` for :class:`~tapeflow.distributed.mpi.MPICommunicator`
    (a mixin: it uses the communicator's signature exchange, wait loop and reductions)."""

    def _join(self) -> int:
        """Answer the other ranks' collectives with neutral contributions until every rank has
        joined; return how many collectives this rank answered (see :mod:`.join`)."""
        self._enter("join")
        served = 0
        try:
            while True:
                a = self._agree_start(Signature("join"))
                self.waiter.wait(a.request.Test, "join", self._seq)
                sigs = a.sigs
                active = [r for r in range(self._size) if sigs[r][1] != _JOIN_CODE]
                if not active:
                    return served
                self._joined = [r for r in range(self._size) if r not in active]
                self._answer(Signature.decode(sigs[active[0]]))
                served += 1
        finally:
            self._joined = []
            self._leave()

    def _answer(self, sig: dict) -> None:
        """Take part in the active ranks' collective ``sig`` as a joined rank."""
        MPI, kind = self._MPI, sig["kind"]
        if kind not in JOINABLE:
            raise MismatchError(f"join on rank {self._rank}: the other ranks called {kind}, "
                                "which a joined rank cannot take part in")
        if sig["root"] is not None and sig["root"] in self._joined:
            raise MismatchError(f"join on rank {self._rank}: the other ranks broadcast from "
                                f"rank {sig['root']}, which has joined")
        if kind in ("reduce_gradients", "allreduce"):
            # what the active ranks reduce with (see reducers.joined_reduce for gradients)
            op, dtype, count = sig["op"], sig["dtype"], sig["count"]
            wire = "sum" if kind == "reduce_gradients" and op == "average" else op
            self._reduce_into(neutral(op, dtype, count), wire, "join")
        elif kind == "broadcast":
            header = np.zeros(66, dtype=np.int64)
            self._wait(self._comm.Ibcast([header, MPI.INT64_T], root=sig["root"]), "join")
            dtype = DTYPES[int(header[0])]
            data = np.empty(tuple(int(d) for d in header[2:2 + header[1]]), dtype)
            if data.nbytes:
                self._wait(self._comm.Ibcast([data.reshape(-1).view(np.uint8), MPI.BYTE],
                                             root=sig["root"]), "join")
        elif kind == "broadcast_object":
            length = np.zeros(1, dtype=np.int64)
            self._wait(self._comm.Ibcast([length, MPI.INT64_T], root=sig["root"]), "join")
            data = np.empty(int(length[0]), dtype=np.uint8)
            self._wait(self._comm.Ibcast([data, MPI.BYTE], root=sig["root"]), "join")
        elif kind == "allgather":  # no rows from this rank
            pairs = np.empty((self._size, 2), dtype=np.int64)
            self._wait(self._comm.Iallgather([np.zeros(2, np.int64), MPI.INT64_T],
                                             [pairs, MPI.INT64_T]), "join")
            counts = [int(n) for n in pairs[:, 1]]
            displs = [int(d) for d in np.cumsum([0] + counts[:-1])]
            recv = np.empty(sum(counts), dtype=np.uint8)
            self._wait(self._comm.Iallgatherv([np.zeros(0, np.uint8), MPI.BYTE],
                                              [recv, (counts, displs), MPI.BYTE]), "join")
        elif kind == "allgather_object":  # JSON null from this rank
            mine = json_bytes(None)
            lengths = np.empty(self._size, dtype=np.int64)
            self._wait(self._comm.Iallgather([np.array([mine.size], np.int64), MPI.INT64_T],
                                             [lengths, MPI.INT64_T]), "join")
            counts = [int(n) for n in lengths]
            displs = [int(d) for d in np.cumsum([0] + counts[:-1])]
            recv = np.empty(sum(counts), dtype=np.uint8)
            self._wait(self._comm.Iallgatherv([mine, MPI.BYTE], [recv, (counts, displs),
                                                                 MPI.BYTE]), "join")
