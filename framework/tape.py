"""The reverse sweep and ``GradientTape``; recording itself lives in :mod:`recording`.

A tape is a list of records in execution order. Backward walks it once in reverse (no
topological sort, no recursion). Each record is a tuple
``(prim, input_ids, input_shapes, saved_inputs, output_id, saved_output, params)`` and keeps
only what the primitive's rule asked for (``save_args`` / ``save_ans``).

Derivative rules are written with tapeflow ops, so a sweep run while an outer tape records is
recorded by that tape: nested tapes give higher-order derivatives.
"""
from __future__ import annotations

import contextlib
import enum
from typing import Callable

import numpy as np

from . import nest, ops
from . import primitives as P
from .recording import (  # noqa: F401  (re-exported: the tape's historical names)
    _ACTIVE, PRIMITIVES, Primitive, _record, _record2, primitive, stop_gradient)
from .tensor import Tensor, Variable, convert_to_tensor

__all__ = ["GradientTape", "Primitive", "PRIMITIVES", "primitive", "stop_gradient",
           "UnconnectedGradients"]


class UnconnectedGradients(str, enum.Enum):
    """What ``gradient`` returns for a source the target does not depend on."""
    NONE = "none"
    ZERO = "zero"


_MODES = {"none": UnconnectedGradients.NONE, "zero": UnconnectedGradients.ZERO}


def _unbroadcast(g: Tensor, shape: tuple) -> Tensor:
    """Sum ``g`` over the axes along which an input of ``shape`` was broadcast."""
    gshape = g._value.shape
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and gshape[lead + i] != 1)
    if axes:
        g = P.reduce_sum_p(g, axis=axes, keepdims=False)
    if g._value.shape != shape:
        g = P.reshape_p(g, shape=shape)
    return g


def _sweep(ops_list: list, seeds: dict, source_ids: set, watched: set,
           on_final: Callable[[int, Tensor], None] | None = None,
           relevant: set | None = None) -> dict:
    """Reverse sweep from ``seeds`` (id -> cotangent); returns id -> gradient for sources.

    ``relevant``, if given, is the set of ids that depend on a source (the caller knows it when
    every watched root is a source: then it is ``watched``); else a forward pass finds it.

    ``on_final(source_id, grad)``, if given, is called as soon as a source's gradient can no
    longer change: right after the sweep passes the earliest op that reads the source. A
    data-parallel tape starts reducing that gradient while the sweep goes on.
    """
    if relevant is None or on_final is not None:
        relevant, first_use = _relevant(ops_list, source_ids, watched, on_final is not None)
    if not relevant:
        return {}
    grads = {k: v for k, v in seeds.items() if k in relevant}
    if on_final is None:
        _sweep_span(ops_list, grads, source_ids, relevant)
        return grads
    # Sweep the record in spans that end (going backwards) at the earliest op reading a source,
    # and report those sources' gradients between spans.
    final_at: dict[int, list] = {}
    for sid, n in first_use.items():
        final_at.setdefault(n, []).append(sid)
    end = len(ops_list)
    for n in sorted(final_at, reverse=True):
        _sweep_span(ops_list[n:end], grads, source_ids, relevant)
        _report(final_at[n], grads, on_final)
        end = n
    _sweep_span(ops_list[:end], grads, source_ids, relevant)
    return grads


def _relevant(ops_list: list, source_ids: set, watched: set, uses: bool) -> tuple[set, dict]:
    """A forward pass over the record: the ids that depend on a source and (if ``uses``) the
    index of the earliest op that reads each source."""
    relevant = {i for i in source_ids if i in watched}
    first_use: dict[int, int] = {}
    if not relevant:
        return relevant, first_use
    for n, entry in enumerate(ops_list):
        for i in entry[1]:
            if i in relevant:
                relevant.add(entry[4])
                if uses:
                    for j in entry[1]:
                        if j in source_ids and j not in first_use:
                            first_use[j] = n
                break
    return relevant, first_use


def _sweep_span(ops_list: list, grads: dict, source_ids: set, relevant: set) -> None:
    """Run the records of ``ops_list`` backwards, accumulating cotangents into ``grads``."""
    add = P.add_p.call2
    pop, get = grads.pop, grads.get
    for prim, ids, shapes, saved, out_id, ans, params in reversed(ops_list):
        # (only ids that depend on a source ever get a cotangent: no relevance test needed)
        g = pop(out_id, None)
        if g is None:
            continue
        if out_id in source_ids:
            grads[out_id] = g  # a source's gradient stays
        rule = prim.vjp
        if rule is None:
            raise LookupError(f"no derivative rule for operation {prim.name!r}: it cannot be "
                              "differentiated; wrap its input in tp.stop_gradient if no gradient "
                              "should flow through it")
        if len(ids) == 2:
            # Unrolled for two inputs (arithmetic, matmul): no zip, no per-input tuples.
            a, b = ids
            na, nb = a in relevant, b in relevant
            if params:
                ga, gb = rule(g, ans, saved, shapes, (na, nb), **params)
            else:
                ga, gb = rule(g, ans, saved, shapes, (na, nb))
            if na and ga is not None:
                if ga._value.shape != shapes[0]:
                    ga = _unbroadcast(ga, shapes[0])
                prev = get(a)
                grads[a] = ga if prev is None else add(prev, ga)
            if nb and gb is not None:
                if gb._value.shape != shapes[1]:
                    gb = _unbroadcast(gb, shapes[1])
                prev = get(b)
                grads[b] = gb if prev is None else add(prev, gb)
            continue
        needs = tuple([i in relevant for i in ids])
        if params:
            in_grads = rule(g, ans, saved, shapes, needs, **params)
        else:
            in_grads = rule(g, ans, saved, shapes, needs)
        for aid, gk, shape, need in zip(ids, in_grads, shapes, needs):
            if gk is None or not need:
                continue
            if gk._value.shape != shape:
                gk = _unbroadcast(gk, shape)
            prev = get(aid)
            grads[aid] = gk if prev is None else add(prev, gk)


def _report(source_ids: list, grads: dict, on_final) -> None:
    for sid in source_ids:
        g = grads.get(sid)
        if g is not None:
            on_final(sid, g)


class GradientTape:
    """Record operations to differentiate them, with TensorFlow's ``tf.GradientTape`` semantics.

    >>> import tapeflow as tp
    >>> x = tp.Variable(3.0)
    >>> with tp.GradientTape() as tape:
    ...     y = x * x
    >>> tape.gradient(y, x)
    tp.Tensor(6.0, shape=(), dtype=float32)
    """

    def __init__(self, persistent: bool = False, watch_accessed_variables: bool = True):
        self._persistent = bool(persistent)
        self._watch_accessed = bool(watch_accessed_variables)
        self._ops: list | None = []
        self._watched: set[int] = set()
        self._roots: set[int] = set()  # ids watched directly (not as a recorded op's output)
        self._variables: list[Variable] = []
        self._recording = False

    # -- context --------------------------------------------------------------------------
    def __enter__(self) -> "GradientTape":
        if self._recording:
            raise RuntimeError("this GradientTape is already recording (nested `with` of the "
                               "same tape)")
        self._check_alive("enter")
        self._recording = True
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self._recording = False
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    @contextlib.contextmanager
    def stop_recording(self):
        """Temporarily stop recording on this tape (other tapes keep recording)."""
        if not self._recording:
            raise ValueError("stop_recording() called on a tape that is not recording; use it "
                             "inside the tape's `with` block")
        idx = _ACTIVE.index(self)
        _ACTIVE.pop(idx)
        try:
            yield
        finally:
            if self._recording:
                _ACTIVE.insert(min(idx, len(_ACTIVE)), self)

    def reset(self) -> None:
        """Forget everything recorded and watched so far (recording continues)."""
        self._ops = []
        self._watched = set()
        self._roots = set()
        self._variables = []

    # -- watching -------------------------------------------------------------------------
    def _watch_one(self, t: Tensor) -> None:
        if t._value.dtype.kind != "f":
            return  # integer and bool tensors are not differentiable: never watched
        if t._id not in self._watched:
            self._watched.add(t._id)
            self._roots.add(t._id)
            if isinstance(t, Variable):
                self._variables.append(t)

    def watch(self, tensor) -> None:
        """Watch a Tensor, a Variable (also non-trainable) or a nested structure of them."""
        self._check_alive("watch")
        for leaf in nest.flatten(tensor):
            if not isinstance(leaf, Tensor):
                raise TypeError(f"GradientTape.watch expects Tensors or Variables, got "
                                f"{type(leaf).__name__}: {leaf!r:.60}. Convert it first with "
                                f"tp.constant(...)")
            self._watch_one(leaf)

    def watched_variables(self) -> tuple:
        """Variables watched so far, in the order they were created (TensorFlow's order)."""
        return tuple(sorted(self._variables, key=lambda v: v._id))

    # -- gradients ------------------------------------------------------------------------
    def _check_alive(self, what: str) -> None:
        if self._ops is None:
            raise RuntimeError(f"GradientTape.{what}: a non-persistent GradientTape can only be "
                               "used to compute one set of gradients; its record has been "
                               "released. Use tp.GradientTape(persistent=True) to call "
                               "gradient() more than once.")

    def _run(self, seeds: dict, source_ids: set, on_final=None) -> dict:
        """Sweep with this tape paused, unless it is persistent: then, as in TensorFlow, a
        ``gradient()`` called inside its own ``with`` block is recorded by it, so the result
        can be differentiated again with the same tape."""
        # Every watched id is a root or the output of a recorded op reading a watched id, so when
        # every root is a source, everything watched depends on a source: the sweep needs no
        # forward pass to find what does. (Ops a persistent tape records during its own sweep
        # only add new ids, which no earlier record reads.)
        relevant = self._watched if self._roots <= source_ids else None
        if self._persistent:
            return _sweep(self._ops, seeds, source_ids, self._watched, on_final, relevant)
        idx = _ACTIVE.index(self) if self in _ACTIVE else None
        if idx is not None:
            _ACTIVE.pop(idx)
        try:
            return _sweep(self._ops, seeds, source_ids, self._watched, on_final, relevant)
        finally:
            if idx is not None:
                _ACTIVE.insert(min(idx, len(_ACTIVE)), self)

    def _release_if_done(self) -> None:
        if not self._persistent:
            self._ops = None
            self._watched = set()
            self._roots = set()
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            self._recording = False

    @staticmethod
    def _sources(sources) -> list:
        leaves = nest.flatten(sources)
        for s in leaves:
            if not isinstance(s, Tensor):
                raise TypeError(f"gradient sources must be Tensors or Variables, got "
                                f"{type(s).__name__}: {s!r:.60}")
        return leaves

    @staticmethod
    def _finish(leaves, grads, mode: "UnconnectedGradients") -> list:
        out = []
        for s in leaves:
            g = grads.get(s._id)
            if g is None and mode is UnconnectedGradients.ZERO:
                g = ops.zeros_like(s)
            out.append(g)
        return out

    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients: str | UnconnectedGradients = "none"):
        """Gradient of ``target`` (summed if non-scalar or a list) w.r.t. ``sources``.

        ``sources`` may be a Tensor/Variable or any nesting of lists, tuples and dicts of them;
        the result has the same structure. ``output_gradients`` weights the target(s).
        """
        mode = _MODES.get(unconnected_gradients) or UnconnectedGradients(unconnected_gradients)
        leaves = self._sources(sources)
        grads = self._gradient_by_id(target, leaves, output_gradients)
        return nest.pack_as(sources, self._finish(leaves, grads, mode))

    def _gradient_by_id(self, target, leaves: list, output_gradients=None,
                        on_final=None) -> dict:
        """The sweep behind ``gradient``: source id -> gradient (absent if unconnected)."""
        self._check_alive("gradient")
        targets = nest.flatten(target)
        if not targets or any(t is None for t in targets):
            raise ValueError(f"gradient target must be a Tensor or a structure of Tensors, got "
                             f"{target!r:.80}")
        targets = [convert_to_tensor(t) for t in targets]
        if output_gradients is None:
            ogs = [None] * len(targets)
        else:
            ogs = nest.flatten(output_gradients)
            if len(ogs) != len(targets):
                raise ValueError(f"output_gradients has {len(ogs)} entries but target has "
                                 f"{len(targets)}")
        seeds = self._seeds(targets, ogs)
        source_ids = {s._id for s in leaves}
        grads = self._run(seeds, source_ids, on_final)
        for sid in source_ids & seeds.keys() - grads.keys():
            # A target that is itself a source, read by nothing recorded (``result = v0``):
            # its gradient is its output gradient, as in TensorFlow.
            grads[sid] = seeds[sid]
            if on_final is not None:
                on_final(sid, seeds[sid])
        self._release_if_done()
        return grads

    @staticmethod
    def _seeds(targets, ogs) -> dict:
        seeds: dict[int, Tensor] = {}
        for t, og in zip(targets, ogs):
            if og is None:
                og = ops.ones_like(t)
            else:
                og = convert_to_tensor(og, dtype=t.dtype)
                if og.shape != t.shape:
                    raise ValueError(f"output_gradients shape {og.shape} does not match the "
                                     f"target's shape {t.shape}")
            prev = seeds.get(t._id)
            seeds[t._id] = og if prev is None else ops.add(prev, og)
        return seeds

    def jacobian(self, target, sources, unconnected_gradients="none",
                 parallel_iterations=None, experimental_use_pfor=True):
        """d target[i...] / d source[j...], shaped ``target.shape + source.shape`` per source."""
        self._check_alive("jacobian")
        mode = UnconnectedGradients(unconnected_gradients)
        target = convert_to_tensor(target)
        leaves = self._sources(sources)
        ids = {s._id for s in leaves}
        n = int(np.prod(target.shape, dtype=np.int64))
        rows: list[list] = [[] for _ in leaves]
        for i in range(n):
            seed = np.zeros(n, dtype=target.dtype)
            seed[i] = 1
            seed_t = Tensor(ops._like(target._value, seed.reshape(target.shape)))
            grads = self._run({target._id: seed_t}, ids)
            for k, s in enumerate(leaves):
                rows[k].append(grads.get(s._id))
        self._release_if_done()
        out = []
        for s, col in zip(leaves, rows):
            if all(g is None for g in col):
                out.append(ops.zeros(target.shape + s.shape, dtype=s.dtype)
                           if mode is UnconnectedGradients.ZERO else None)
                continue
            col = [ops.zeros_like(s) if g is None else g for g in col]
            stacked = ops.stack(col) if col else ops.zeros((0,) + s.shape, dtype=s.dtype)
            out.append(ops.reshape(stacked, target.shape + s.shape))
        return nest.pack_as(sources, out)

    def batch_jacobian(self, target, source, unconnected_gradients="none",
                       parallel_iterations=None, experimental_use_pfor=True):
        """Per-example Jacobian: ``result[b, i..., j...] = d target[b, i...] / d source[b, j...]``.

        Assumes, like TensorFlow, that example ``b`` of the target depends only on example ``b``
        of the source.
        """
        self._check_alive("batch_jacobian")
        mode = UnconnectedGradients(unconnected_gradients)
        target = convert_to_tensor(target)
        if target.ndim < 1 or source.ndim < 1 or target.shape[0] != source.shape[0]:
            raise ValueError(f"batch_jacobian needs target and source with the same leading "
                             f"batch dimension, got shapes {target.shape} and {source.shape}")
        batch = target.shape[0]
        inner = int(np.prod(target.shape[1:], dtype=np.int64))
        cols = []
        for j in range(inner):
            seed = np.zeros((batch, inner), dtype=target.dtype)
            seed[:, j] = 1
            seed_t = Tensor(ops._like(target._value, seed.reshape(target.shape)))
            cols.append(self._run({target._id: seed_t}, {source._id}).get(source._id))
        self._release_if_done()
        if all(g is None for g in cols):
            if mode is UnconnectedGradients.ZERO:
                return ops.zeros(target.shape + source.shape[1:], dtype=source.dtype)
            return None
        cols = [ops.zeros_like(source) if g is None else g for g in cols]
        stacked = ops.stack(cols, axis=1)  # (batch, inner, *source.shape[1:])
        return ops.reshape(stacked, target.shape + source.shape[1:])
