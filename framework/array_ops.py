"""TensorFlow's array ops beyond the core library: shape queries, splitting and tiling,
gathers and masks, sorting, einsum and tensordot, creation helpers and norms.

All differentiable ones are compositions of primitives (getitem, reshape, broadcast_to,
concat, einsum), so they carry no rule of their own.

>>> import tapeflow as tp
>>> [t.shape for t in tp.split(tp.zeros((6, 2)), [1, -1, 2])]
[(1, 2), (3, 2), (2, 2)]
"""
from __future__ import annotations

import math
import string
from typing import Sequence

import numpy as np

from . import ops
from . import primitives as P
from . import primitives_ext as PX
from . import devices as _device
from ._backend import array_module
from .errors import InvalidArgumentError, InvalidArgumentIndexError
from .recording import derived
from .symdim import has_dim, plain
from .tensor import _TRACE, Tensor, _to_array, as_dtype, convert_to_tensor

__all__ = [
    "shape", "size", "rank", "split", "tile", "repeat", "unstack", "einsum", "tensordot",
    "gather_nd", "boolean_mask", "sort", "argsort", "reverse", "eye", "fill", "norm",
]


# ---------------------------------------------------------------- shape queries
def shape(input, out_type="int32") -> Tensor:
    """The shape as a 1-D integer Tensor (``tf.shape``); where a ``None`` dimension is traced
    symbolically, each call's own shape."""
    x = convert_to_tensor(input)
    if _TRACE and _TRACE[-1].dual is not None:
        return derived(_shape_of, x, dtype=as_dtype(out_type))
    return Tensor(np.asarray(x.shape, dtype=as_dtype(out_type)))


def size(input, out_type="int32") -> Tensor:
    """The number of elements as a scalar integer Tensor (each call's own, as ``shape``)."""
    x = convert_to_tensor(input)
    if _TRACE and _TRACE[-1].dual is not None:
        return derived(_size_of, x, dtype=as_dtype(out_type))
    return Tensor(np.asarray(x.size, dtype=as_dtype(out_type)))


def _shape_of(a, dtype):
    return np.asarray(a.shape, dtype=dtype)


def _size_of(a, dtype):
    return np.asarray(a.size, dtype=dtype)


_shape_of._tp_shape_only = _size_of._tp_shape_only = True  # (trace.Tracer.symbolic_value)


def rank(input) -> Tensor:
    """The number of dimensions as a scalar int32 Tensor."""
    return Tensor(np.asarray(convert_to_tensor(input).ndim, dtype=np.int32))


# ---------------------------------------------------------------- split / tile / repeat
def _axis(axis, x: Tensor, op: str) -> int:
    if x.ndim == 0:
        raise InvalidArgumentError(f"{op}: input must have rank >= 1, got a scalar")
    return ops._axes(int(axis), x.ndim, op)[0]


def split(value, num_or_size_splits, axis: int = 0, num=None) -> list:
    """Split along ``axis`` into ``num_or_size_splits`` equal parts (an int) or parts of the
    given sizes (a list; one entry may be -1 for the rest)."""
    x = convert_to_tensor(value)
    ax = _axis(axis, x, "split")
    n = x.shape[ax]
    if isinstance(num_or_size_splits, (int, np.integer)):
        k = int(num_or_size_splits)
        if k <= 0 or n % k:
            raise InvalidArgumentError(f"split: {k} parts do not evenly divide dimension {ax} "
                                       f"of size {n} (shape {x.shape})")
        sizes = [n // k] * k
    else:
        sizes = [int(s) for s in (num_or_size_splits.numpy() if isinstance(
            num_or_size_splits, Tensor) else num_or_size_splits)]
        if sizes.count(-1) > 1 or any(s < -1 for s in sizes):
            raise InvalidArgumentError(f"split: sizes {sizes} may hold at most one -1 and no "
                                       f"other negative entry")
        if -1 in sizes:
            sizes[sizes.index(-1)] = n - (sum(sizes) + 1)
        if sum(sizes) != n or min(sizes, default=0) < 0:
            raise InvalidArgumentError(f"split: sizes {sizes} do not add up to dimension {ax} "
                                       f"of size {n} (shape {x.shape})")
    out, start = [], 0
    lead = (slice(None),) * ax
    for s in sizes:
        out.append(P.getitem_p(x, index=lead + (slice(start, start + s),)))
        start += s
    return out


def tile(input, multiples) -> Tensor:
    """Repeat the whole tensor ``multiples[i]`` times along axis ``i``."""
    x = convert_to_tensor(input)
    reps = list(ops._shape_arg(multiples))
    if len(reps) != x.ndim or min(reps, default=0) < 0:
        raise InvalidArgumentError(f"tile: multiples {reps} must have one non-negative entry "
                                   f"per axis of the input of shape {x.shape}")
    # (d0, d1) -> (1, d0, 1, d1) -> broadcast (m0, d0, m1, d1) -> (m0*d0, m1*d1)
    spread = ops.reshape(x, tuple(v for d in x.shape for v in (1, d)))
    big = ops.broadcast_to(spread, tuple(v for m, d in zip(reps, x.shape) for v in (m, d)))
    return ops.reshape(big, tuple(m * d for m, d in zip(reps, x.shape)))


def repeat(input, repeats, axis=None) -> Tensor:
    """Repeat each element ``repeats`` times (an int, or one count per element along
    ``axis``); ``axis=None`` flattens first."""
    x = convert_to_tensor(input)
    if axis is None:
        x, axis = ops.reshape(x, (-1,)), 0
    ax = _axis(axis, x, "repeat")
    # (the counts decide the shape: host values, read explicitly if given as a tensor)
    counts = np.asarray(repeats.numpy() if isinstance(repeats, Tensor) else repeats
                        ).astype(np.int64).reshape(-1)
    n = x.shape[ax]
    if counts.size == 1:
        counts = np.repeat(counts, n)
    if counts.size != n or (counts < 0).any():
        raise InvalidArgumentError(f"repeat: repeats must be one non-negative int or {n} of "
                                   f"them for axis {ax} of shape {x.shape}, got {counts.size}")
    index = ops._like(x._value, np.repeat(np.arange(n), counts))
    return P.getitem_p(x, index=(slice(None),) * ax + (index,))


def unstack(value, num=None, axis: int = 0) -> list:
    """The slices along ``axis`` as a list of tensors of one rank less."""
    x = convert_to_tensor(value)
    ax = _axis(axis, x, "unstack")
    if num is not None and int(num) != x.shape[ax]:
        raise InvalidArgumentError(f"unstack: num={num} but dimension {ax} of shape {x.shape} "
                                   f"has size {x.shape[ax]}")
    lead = (slice(None),) * ax
    return [P.getitem_p(x, index=lead + (i,)) for i in range(x.shape[ax])]


# ---------------------------------------------------------------- einsum / tensordot
def _explicit_equation(equation: str, ranks: list) -> str:
    """Spell out ``...`` with letters and add the implicit output (NumPy's rules)."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(ranks):
        raise InvalidArgumentError(f"einsum: equation {equation!r} names {len(ins)} inputs but "
                                   f"{len(ranks)} were given")
    free = [ch for ch in string.ascii_letters if ch not in eq]
    n_ell = max((r - (len(s) - 3) for s, r in zip(ins, ranks) if "..." in s), default=0)
    ell = "".join(free[:n_ell])
    spelled = []
    for s, r in zip(ins, ranks):
        if "..." in s:
            k = r - (len(s) - 3)
            s = s.replace("...", ell[n_ell - k:] if k else "")
        if len(s) != r or not all(ch in string.ascii_letters for ch in s):
            raise InvalidArgumentError(f"einsum: subscripts {s!r} do not fit an input of rank "
                                       f"{r} in {equation!r}")
        spelled.append(s)
    if arrow:
        out = out.replace("...", ell)
    else:
        counts = {ch: "".join(spelled).count(ch) for ch in "".join(spelled)}
        out = ell + "".join(sorted(ch for ch, c in counts.items() if c == 1 and ch not in ell))
    return ",".join(spelled) + "->" + out


def einsum(equation: str, *inputs) -> Tensor:
    """Einstein summation (``tf.einsum``): ``tp.einsum("ij,jk->ik", a, b)``; ellipses and
    implicit outputs follow NumPy. Differentiable in every input."""
    xs = [convert_to_tensor(x) for x in inputs]
    if not xs:
        raise InvalidArgumentError("einsum needs at least one input")
    dtypes = {x.dtype for x in xs}
    if len(dtypes) != 1:
        raise InvalidArgumentError(f"einsum: inputs must share one dtype, got "
                                   f"{sorted(map(str, dtypes))}")
    eq = _explicit_equation(equation, [x.ndim for x in xs])
    sizes: dict = {}
    for s, x in zip(eq.split("->")[0].split(","), xs):
        for ch, d in zip(s, x.shape):
            if sizes.setdefault(ch, d) != d:
                raise InvalidArgumentError(f"einsum: index {ch!r} has sizes {sizes[ch]} and {d} "
                                           f"in {equation!r} (shapes {[x.shape for x in xs]})")
    return PX.einsum_p(*xs, equation=eq)


def tensordot(a, b, axes) -> Tensor:
    """Contract ``axes`` of ``a`` with ``axes`` of ``b``: an int ``n`` (the last ``n`` of ``a``
    with the first ``n`` of ``b``) or a pair of axis lists."""
    a, b = convert_to_tensor(a), convert_to_tensor(b)
    if isinstance(axes, (int, np.integer)):
        n = int(axes)
        ax_a, ax_b = list(range(a.ndim - n, a.ndim)), list(range(n))
    else:
        ax_a, ax_b = ([axes[0]] if isinstance(axes[0], (int, np.integer)) else list(axes[0]),
                      [axes[1]] if isinstance(axes[1], (int, np.integer)) else list(axes[1]))
    ax_a = [a_ % max(a.ndim, 1) for a_ in ax_a]
    ax_b = [b_ % max(b.ndim, 1) for b_ in ax_b]
    if len(ax_a) != len(ax_b) or any(a.shape[i] != b.shape[j] for i, j in zip(ax_a, ax_b)):
        raise InvalidArgumentError(f"tensordot: axes {ax_a} of shape {a.shape} do not match "
                                   f"axes {ax_b} of shape {b.shape}")
    letters = iter(string.ascii_letters)
    sa = [next(letters) for _ in range(a.ndim)]
    sb = [next(letters) for _ in range(b.ndim)]
    for i, j in zip(ax_a, ax_b):
        sb[j] = sa[i]
    out = [c for i, c in enumerate(sa) if i not in ax_a] + \
          [c for j, c in enumerate(sb) if j not in ax_b]
    return einsum(f"{''.join(sa)},{''.join(sb)}->{''.join(out)}", a, b)


# ---------------------------------------------------------------- gathers and masks
def gather_nd(params, indices, batch_dims: int = 0) -> Tensor:
    """Gather slices of ``params`` at the index tuples in the last axis of ``indices``."""
    x = convert_to_tensor(params)
    idx = convert_to_tensor(indices)
    if batch_dims:
        raise InvalidArgumentError("gather_nd: batch_dims > 0 is not supported; gather per "
                                   "batch entry or fold the batch into the indices")
    if idx.dtype.kind not in "iu" or idx.ndim < 1 or idx.shape[-1] > x.ndim:
        raise InvalidArgumentError(f"gather_nd: indices must be integers whose last axis "
                                   f"(size {idx.shape[-1] if idx.ndim else '-'}) is at most "
                                   f"the rank {x.ndim} of params; got {idx.dtype} {idx.shape}")
    raw = plain(idx._value)
    for k in range(raw.shape[-1]):
        col = raw[..., k]
        if col.size and (int(col.min()) < 0 or int(col.max()) >= x.shape[k]):
            raise InvalidArgumentIndexError(
                f"gather_nd: indices[..., {k}] has values outside [0, {x.shape[k]}) for "
                f"params of shape {x.shape}")
    depth = raw.shape[-1]
    if _TRACE and _TRACE[-1].is_traced(idx):  # each call's indices: flat rows of x, taken
        lead = x.shape[:depth]
        flat = ops.reshape(x, (-1,) + tuple(x.shape[depth:]))
        return P.take_p(flat, derived(_flat_index, idx, dims=tuple(lead)), axis=0)
    return P.getitem_p(x, index=tuple(raw[..., k] for k in range(depth)))


def _flat_index(idx, dims: tuple):
    """Row-major flat positions of the index tuples in ``idx``'s last axis."""
    return array_module(idx).ravel_multi_index(tuple(idx[..., k] for k in range(len(dims))),
                                               dims)


def boolean_mask(tensor, mask, axis: int = 0) -> Tensor:
    """The entries of ``tensor`` where the bool ``mask`` (matching ``tensor.shape[axis:...]``)
    is True, flattened over the masked axes."""
    x = convert_to_tensor(tensor)
    m = convert_to_tensor(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"boolean_mask: mask must be bool, got {m.dtype}")
    ax = ops._axes(int(axis), x.ndim, "boolean_mask")[0] if x.ndim else 0
    if m.ndim == 0 or tuple(x.shape[ax:ax + m.ndim]) != tuple(m.shape):
        raise InvalidArgumentError(f"boolean_mask: mask shape {m.shape} must match the "
                                   f"tensor's shape {x.shape} from axis {ax}")
    if _TRACE:
        _TRACE[-1].value_shaped("boolean_mask", m)
    hits = array_module(m._value).nonzero(m._value)
    return P.getitem_p(x, index=(slice(None),) * ax + tuple(hits))


# ---------------------------------------------------------------- sorting and reversing
def _direction(direction: str, op: str) -> bool:
    d = str(direction).upper()
    if d not in ("ASCENDING", "DESCENDING"):
        raise ValueError(f"{op}: direction must be 'ASCENDING' or 'DESCENDING', got "
                         f"{direction!r}")
    return d == "DESCENDING"


def _order(a, axis: int, descending: bool):
    key = -a if descending and a.dtype.kind not in "ub" else a
    if descending and a.dtype.kind in "ub":
        key = a.max() - a if a.size else a
    return key.argsort(axis=axis, kind="stable")


def argsort(values, axis: int = -1, direction: str = "ASCENDING", stable: bool = False,
            name=None) -> Tensor:
    """Indices (int32) that sort ``values`` along ``axis`` (ties keep their order)."""
    x = convert_to_tensor(values)
    ax = _axis(axis, x, "argsort")
    desc = _direction(direction, "argsort")
    return derived(lambda a: _order(a, ax, desc).astype(np.int32), x)


def sort(values, axis: int = -1, direction: str = "ASCENDING", name=None) -> Tensor:
    """``values`` sorted along ``axis``; differentiable (each gradient goes back to where its
    value came from)."""
    x = convert_to_tensor(values)
    ax = _axis(axis, x, "sort")
    return P.take_along_p(x, argsort(x, ax, direction), axis=ax)


def reverse(tensor, axis) -> Tensor:
    """Reverse the order along each axis in ``axis`` (a list of ints)."""
    x = convert_to_tensor(tensor)
    axes = ops._axes(list(axis), x.ndim, "reverse") or ()
    return P.getitem_p(x, index=tuple(slice(None, None, -1) if i in axes else slice(None)
                                      for i in range(x.ndim)))


# ---------------------------------------------------------------- creation
def eye(num_rows: int, num_columns: int | None = None, batch_shape: Sequence[int] | None = None,
        dtype="float32") -> Tensor:
    """An identity matrix (or a batch of them)."""
    e = np.eye(int(num_rows), None if num_columns is None else int(num_columns),
               dtype=as_dtype(dtype))
    if batch_shape:
        e = np.broadcast_to(e, tuple(int(b) for b in batch_shape) + e.shape).copy()
    return Tensor(e)


def fill(dims, value, dtype=None) -> Tensor:
    """A tensor of shape ``dims`` filled with ``value`` (its dtype from ``value``, as TF)."""
    v = _to_array(value, dtype)
    if v.ndim:
        raise InvalidArgumentError(f"fill: value must be a scalar, got shape {v.shape}")
    dims = ops._shape_arg(dims)
    if has_dim(dims):
        return ops.sized(ops.filled, dims, dtype=v.dtype, fill=v)
    return Tensor(_device.place(array_module(v).full(dims, v, dtype=v.dtype)))


def norm(tensor, ord="euclidean", axis=None, keepdims: bool = False) -> Tensor:
    """Vector norms (``ord`` = ``"euclidean"``/2, 1, ``np.inf``, any p > 0) over ``axis`` (an
    int, or None for the whole tensor) and matrix norms (``"fro"``/``"euclidean"``, 1,
    ``np.inf``) over a pair of axes. The spectral norm (``ord=2`` on matrices) needs an SVD
    and is not supported."""
    x = convert_to_tensor(tensor)
    if x.dtype.kind != "f":
        raise TypeError(f"norm expects a float tensor, got {x.dtype}")
    matrix = axis is not None and not isinstance(axis, (int, np.integer)) and len(axis) == 2
    if matrix:
        r, c = ops._axes(axis[0], x.ndim, "norm")[0], ops._axes(axis[1], x.ndim, "norm")[0]
        if ord in ("fro", "euclidean"):
            return ops.sqrt(ops.reduce_sum(ops.square(x), (r, c), keepdims=keepdims))
        if ord in (1, np.inf):
            inner, outer = (r, c) if ord == 1 else (c, r)
            sums = ops.reduce_sum(ops.abs(x), inner, keepdims=True)
            out = ops.reduce_max(sums, outer, keepdims=True)
            return out if keepdims else ops.squeeze(out, (r, c))
        raise ValueError(f"norm: matrix ord must be 'fro', 'euclidean', 1 or inf, got {ord!r}")
    if ord in ("euclidean", 2, 2.0):
        return ops.sqrt(ops.reduce_sum(ops.square(x), axis, keepdims=keepdims))
    if ord == np.inf:
        return ops.reduce_max(ops.abs(x), axis, keepdims=keepdims)
    if isinstance(ord, (int, float)) and ord > 0 and not math.isinf(ord):
        p = float(ord)
        total = ops.reduce_sum(ops.pow(ops.abs(x), p), axis, keepdims=keepdims)
        return ops.pow(total, 1.0 / p)
    raise ValueError(f"norm: ord must be 'euclidean', a positive number or inf, got {ord!r}")
