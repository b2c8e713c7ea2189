"""The public op library, with TensorFlow's names and NumPy broadcasting.

Each function converts its arguments (Python scalars take the other operand's dtype; two
tensors must agree on dtype, as in TensorFlow), validates shapes with errors that name the op,
and applies a primitive. Functions without a primitive of their own are compositions.
"""
from __future__ import annotations

import builtins
import functools
import math
from typing import Sequence

import numpy as np

from . import devices as _device
from .devices import _OPEN as _SCOPES  # (a list: how many tp.device scopes are open)
from . import primitives as P
from .device_ops import to_device as _to_device
from ._backend import array_module
from .errors import InvalidArgumentError, InvalidArgumentIndexError, InvalidArgumentTypeError
from .recording import _ACTIVE, _NO_PARAMS, _new, _record2, derived, stop_gradient
from .symdim import Dim, broadcast_shapes, concrete_shape, has_dim, plain, shape_value
from .tensor import (_TRACE, Tensor, Variable, VariableSlice, _next_id, _to_array, as_dtype,
                     constant, convert_to_tensor)

__all__ = [
    "add", "subtract", "multiply", "divide", "pow", "negative", "abs", "square", "sqrt", "exp",
    "log", "log1p", "sin", "cos", "tanh", "sigmoid", "relu", "maximum", "minimum", "where",
    "clip_by_value", "matmul", "reduce_sum", "reduce_mean", "reduce_max", "reduce_min",
    "reshape", "transpose", "expand_dims", "squeeze", "concat", "stack", "broadcast_to",
    "gather", "one_hot", "cast", "ones", "zeros", "ones_like", "zeros_like", "linspace", "range",
    "floor", "round", "sign", "equal", "not_equal", "less", "less_equal", "greater",
    "greater_equal", "argmax", "argmin", "identity", "pad", "floordiv", "mod", "logical_and",
    "logical_or", "logical_not", "stop_gradient", "floormod",
]

_SCALARS = (int, float, bool, np.generic)


def _like(ref, arr: np.ndarray):
    """Put a host array on ``ref``'s device."""
    xp = array_module(ref)
    return arr if xp is np else xp.asarray(arr)


def _as_operand(v, other: Tensor, op: str) -> Tensor:
    """Convert a non-Tensor operand next to Tensor ``other`` (it takes ``other``'s dtype)."""
    od = other._value.dtype
    if isinstance(v, _SCALARS) and (od.kind == "f" or not isinstance(v, (float, np.floating))):
        return Tensor(array_module(other._value).asarray(v, dtype=od))
    arr = _to_array(v)
    if arr.dtype != od and arr.dtype.kind == od.kind:
        arr = arr.astype(od)  # a NumPy float64 array next to a float32 tensor: follow the tensor
    if arr.dtype != od:
        raise InvalidArgumentTypeError(f"{op}: cannot combine a {od} tensor with a {arr.dtype} "
                                       f"value; cast one side with tp.cast")
    return Tensor(_like(other._value, arr))


def _pair(x, y, op: str) -> tuple[Tensor, Tensor]:
    if isinstance(x, Tensor):
        if isinstance(y, Tensor):
            if x._value.dtype is not y._value.dtype and x._value.dtype != y._value.dtype:
                raise InvalidArgumentTypeError(
                    f"{op}: dtype mismatch: x is {x.dtype} with shape {x.shape}, y is {y.dtype} "
                    f"with shape {y.shape}; cast one with tp.cast")
            return x, y
        return x, _as_operand(y, x, op)
    if isinstance(y, Tensor):
        return _as_operand(x, y, op), y
    return _pair(convert_to_tensor(x), y, op)


def _check_broadcast(x: Tensor, y: Tensor, op: str) -> None:
    try:
        np.broadcast_shapes(concrete_shape(x._value), concrete_shape(y._value))
    except ValueError:
        raise InvalidArgumentError(f"{op}: shapes {x.shape} and {y.shape} are not "
                                   f"broadcast-compatible") from None


def _binary(prim, op: str):
    def fn(x, y) -> Tensor:
        # Fast path: two tensors of one dtype (Variables included). ``prim.call2`` inlined, so
        # the common op costs one Python frame besides the recording.
        if _TRACE and _TRACE[-1].dual is not None:
            x, y = _pair(x, y, op)
            return _TRACE[-1].apply(prim, prim.fwd, (x, y), _NO_PARAMS)
        try:
            xv, yv = x._value, y._value
        except AttributeError:
            x, y = _pair(x, y, op)
            xv, yv = x._value, y._value
        else:
            if xv.dtype is not yv.dtype and xv.dtype != yv.dtype:
                _pair(x, y, op)  # raises the dtype error
        xshape, yshape = xv.shape, yv.shape
        if xshape != yshape:
            _check_broadcast(x, y, op)
        out = _new(Tensor)
        out._value = value = prim.fwd(xv, yv)  # (looked up per call: tests swap it)
        out._id = _next_id()
        if _ACTIVE and value.dtype.kind == "f":
            if len(_ACTIVE) == 1 and type(x) is Tensor and type(y) is Tensor:
                # One tape, two plain tensors (no Variable to watch or snapshot): ``_record2``
                # inlined.
                tape = _ACTIVE[0]
                watched = tape._watched
                xid, yid = x._id, y._id
                if xid in watched or yid in watched:
                    oid = out._id
                    tape._ops.append((prim, (xid, yid), (xshape, yshape),
                                      (x, y) if prim.save_args else None, oid,
                                      out if prim.save_ans else None, _NO_PARAMS))
                    watched.add(oid)
            else:
                _record2(prim, x, y, out, xshape, yshape)
        if _TRACE:
            _TRACE[-1].node(prim, prim.fwd, (x, y), _NO_PARAMS, out)
        return out
    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = f"Elementwise ``{op}`` with NumPy broadcasting; differentiable in both inputs."
    return fn


add = _binary(P.add_p, "add")
subtract = _binary(P.subtract_p, "subtract")
multiply = _binary(P.multiply_p, "multiply")
divide = _binary(P.divide_p, "divide")
pow = _binary(P.pow_p, "pow")
maximum = _binary(P.maximum_p, "maximum")
minimum = _binary(P.minimum_p, "minimum")


def _unary(prim, op: str, float_only: bool = True):
    def fn(x) -> Tensor:
        x = convert_to_tensor(x)
        if float_only and x._value.dtype.kind != "f":
            raise TypeError(f"{op} expects a float tensor, got {x.dtype}; cast it with "
                            f"tp.cast(x, 'float32')")
        return prim(x)
    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = f"Elementwise ``{op}``."
    return fn


negative = _unary(P.negative_p, "negative", float_only=False)
abs = _unary(P.abs_p, "abs", float_only=False)
square = _unary(P.square_p, "square", float_only=False)
sqrt = _unary(P.sqrt_p, "sqrt")
exp = _unary(P.exp_p, "exp")
log = _unary(P.log_p, "log")
log1p = _unary(P.log1p_p, "log1p")
sin = _unary(P.sin_p, "sin")
cos = _unary(P.cos_p, "cos")
tanh = _unary(P.tanh_p, "tanh")
sigmoid = _unary(P.sigmoid_p, "sigmoid")
relu = _unary(P.relu_p, "relu", float_only=False)


def identity(x) -> Tensor:
    """``x`` itself (tensors are immutable); a Variable is read into a Tensor. Inside a
    ``tp.device`` scope, like TensorFlow's, a copy on that device (differentiable)."""
    x = convert_to_tensor(x)
    spec = _device.current_device()
    if spec is not None and spec != _device.device_of(x._value):
        return _to_device(x, spec)
    return add(x, 0) if isinstance(x, Variable) else x


_NDARRAY = np.ndarray


def _of_module(np_fn):
    """``np_fn`` on NumPy arrays; the same-named function of the array's own module else."""
    name = np_fn.__name__

    def call(a, *rest):
        return np_fn(a, *rest) if type(a) is np.ndarray else getattr(array_module(a), name)(
            a, *rest)
    call.__name__ = name
    return call


def _raw(op_fn, name: str | None = None):
    """An op whose result carries no gradient (comparisons, integer arithmetic, rounding)."""
    np_fn, any_fn = op_fn, _of_module(op_fn)

    def fn(x, y=None) -> Tensor:
        if y is None:
            x = convert_to_tensor(x)
            return derived(np_fn if type(x._value) is _NDARRAY else any_fn, x)
        x, y = _pair(x, y, fn.__name__)
        return derived(np_fn if type(x._value) is _NDARRAY else any_fn, x, y)
    fn.__name__ = fn.__qualname__ = name or op_fn.__name__
    return fn


equal = _raw(np.equal)
not_equal = _raw(np.not_equal)
less = _raw(np.less)
less_equal = _raw(np.less_equal)
greater = _raw(np.greater)
greater_equal = _raw(np.greater_equal)
floordiv = _raw(np.floor_divide)
mod = _raw(np.mod)
logical_and = _raw(np.logical_and)
logical_or = _raw(np.logical_or)
logical_not = _raw(np.logical_not)
floormod = mod
# Piecewise constant: TensorFlow gives these a None gradient, so they are not recorded (their
# result is a constant to every tape), unlike sign, whose gradient TensorFlow defines as zeros.
floor = _raw(np.floor, "floor")
round = _raw(np.round, "round")  # half to even, like TensorFlow
sign = _unary(P.sign_p, "sign", float_only=False)


def _coordinates(c):
    return array_module(c).argwhere(c).astype(np.int64)


def where(condition, x=None, y=None) -> Tensor:
    """Elements of ``x`` where ``condition`` holds, else of ``y`` (all three broadcast).

    With ``condition`` alone: the int64 coordinates ``(N, rank)`` of its True entries.
    """
    cond = convert_to_tensor(condition)
    if cond._value.dtype != np.bool_:
        raise TypeError(f"where: condition must be bool, got {cond.dtype}")
    if x is None and y is None:
        if _TRACE:
            _TRACE[-1].value_shaped("where(condition) (the coordinates of its True entries)",
                                    cond)
        return derived(_coordinates, cond)
    if x is None or y is None:
        raise ValueError("where: give both x and y, or neither (for the coordinates of the "
                         "True entries)")
    x, y = _pair(x, y, "where")
    try:
        broadcast_shapes(cond.shape, x.shape, y.shape)
    except ValueError:
        raise InvalidArgumentError(f"where: shapes condition {cond.shape}, x {x.shape}, y "
                                   f"{y.shape} are not broadcast-compatible") from None
    return P.where_p(cond, x, y)


def clip_by_value(t, clip_value_min, clip_value_max) -> Tensor:
    """Clamp to [min, max]; the gradient passes where the value was inside the range."""
    return minimum(maximum(t, clip_value_min), clip_value_max)


def matmul(a, b, transpose_a: bool = False, transpose_b: bool = False) -> Tensor:
    """Matrix product over the last two axes (leading batch axes broadcast)."""
    a, b = _pair(a, b, "matmul")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs tensors of rank >= 2, got shapes {a.shape} and {b.shape}")
    if transpose_a:
        a = P._mT(a)
    if transpose_b:
        b = P._mT(b)
    if a.shape[-1] != b.shape[-2]:
        raise InvalidArgumentError(f"matmul: inner dimensions differ: a has shape {a.shape}, b "
                                   f"has shape {b.shape} ({a.shape[-1]} != {b.shape[-2]})")
    return P.matmul_p.call2(a, b)


# ---------------------------------------------------------------- reductions
def _axes(axis, ndim: int, op: str):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor of rank {ndim}")
        out.append(a % builtins.max(ndim, 1))
    return tuple(sorted(set(out)))


def _reduction(prim, op: str):
    def fn(input_tensor, axis=None, keepdims: bool = False) -> Tensor:
        x = convert_to_tensor(input_tensor)
        return prim(x, axis=_axes(axis, x.ndim, op), keepdims=bool(keepdims))
    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = f"``{op}`` over ``axis`` (all axes if None)."
    return fn


_reduce_sum_float = _reduction(P.reduce_sum_p, "reduce_sum")


def reduce_sum(input_tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Sum over ``axis`` (all axes if None). Integer tensors keep their dtype (TensorFlow),
    where NumPy would widen int32 to int64."""
    x = convert_to_tensor(input_tensor)
    if x._value.dtype.kind in "iu":
        axes = _axes(axis, x.ndim, "reduce_sum")
        return derived(lambda a: a.sum(axis=axes, keepdims=bool(keepdims), dtype=a.dtype), x)
    return _reduce_sum_float(x, axis, keepdims)


reduce_max = _reduction(P.reduce_max_p, "reduce_max")
reduce_min = _reduction(P.reduce_min_p, "reduce_min")


def reduce_mean(input_tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis``; integer tensors give the (truncated) integer mean, like TensorFlow."""
    x = convert_to_tensor(input_tensor)
    axes = _axes(axis, x.ndim, "reduce_mean")
    if x.dtype.kind != "f":  # (the count from each call's array: a None size is not a number)
        return derived(_integer_mean, x, axes=axes, keepdims=bool(keepdims))
    count = x.size if axes is None else math.prod(x.shape[a] for a in axes)
    s = P.reduce_sum_p(x, axis=axes, keepdims=bool(keepdims))
    if isinstance(count, Dim):  # a None dimension traced symbolically: 1/n of each call
        return P.multiply_p(s, shape_constant(x, functools.partial(_inverse_count, axes),
                                              s.dtype))
    return P.multiply_p(s, P._c(1.0 / count if count else np.nan, s))


def _integer_mean(a, axes, keepdims: bool):
    count = a.size if axes is None else math.prod(a.shape[i] for i in axes)
    return (a.sum(axis=axes, keepdims=keepdims) // builtins.max(count, 1)).astype(a.dtype)


def shape_constant(x: Tensor, fn, dtype) -> Tensor:
    """``fn(x.shape)`` (a number computed from a shape: a count, its inverse) as a scalar of
    ``dtype``; inside ``tp.function`` with ``x``'s ``None`` dimension traced symbolically, a
    value computed from each call's shape (the number itself would freeze one batch size)."""
    if _TRACE and _TRACE[-1].dual is not None and has_dim(x.shape):
        return derived(shape_value, x, of=fn, dtype=as_dtype(dtype))
    return Tensor(array_module(x._value).asarray(fn(x.shape), dtype=as_dtype(dtype)))


def _inverse_count(axes, shape: tuple) -> float:
    count = math.prod(shape if axes is None else (shape[a] for a in axes))
    return 1.0 / count if count else np.nan


def argmax(input, axis: int = 0, output_type="int64") -> Tensor:
    dtype = as_dtype(output_type)
    return derived(lambda a: a.argmax(axis=axis).astype(dtype), convert_to_tensor(input))


def argmin(input, axis: int = 0, output_type="int64") -> Tensor:
    dtype = as_dtype(output_type)
    return derived(lambda a: a.argmin(axis=axis).astype(dtype), convert_to_tensor(input))


# ---------------------------------------------------------------- shapes
def reshape(tensor, shape) -> Tensor:
    x = convert_to_tensor(tensor)
    shape = _shape_arg(shape)
    size = math.prod(d for d in shape if d != -1)
    if shape.count(-1) > 1 or (shape.count(-1) == 0 and size != x.size) or \
            (shape.count(-1) == 1 and (size == 0 or x.size % size)):
        raise InvalidArgumentError(f"reshape: cannot reshape a tensor of shape {x.shape} "
                                   f"({x.size} elements) to {shape}")
    if -1 in shape:
        shape = tuple(x.size // size if d == -1 else d for d in shape)
    if shape == x.shape:
        return x if not isinstance(x, Variable) else identity(x)
    return P.reshape_p(x, shape=shape)


def transpose(a, perm=None) -> Tensor:
    x = convert_to_tensor(a)
    perm = tuple(reversed(builtins.range(x.ndim))) if perm is None else tuple(int(p) for p in perm)
    if sorted(perm) != list(builtins.range(x.ndim)):
        raise ValueError(f"transpose: perm {perm} is not a permutation of the {x.ndim} axes of "
                         f"a tensor of shape {x.shape}")
    return P.transpose_p(x, perm=perm)


def expand_dims(input, axis: int) -> Tensor:
    x = convert_to_tensor(input)
    if not -x.ndim - 1 <= axis <= x.ndim:
        raise ValueError(f"expand_dims: axis {axis} out of range for shape {x.shape}")
    axis = axis % (x.ndim + 1)
    return P.reshape_p(x, shape=x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(input, axis=None) -> Tensor:
    x = convert_to_tensor(input)
    axes = _axes(axis, x.ndim, "squeeze")
    if axes is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"squeeze: axis {a} of shape {x.shape} has size {x.shape[a]}, not 1")
    return P.reshape_p(x, shape=tuple(d for i, d in enumerate(x.shape) if i not in axes))


def broadcast_to(input, shape) -> Tensor:
    x = convert_to_tensor(input)
    shape = _shape_arg(shape)
    try:
        if broadcast_shapes(x.shape, shape) != shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {shape}") from None
    return P.broadcast_to_p(x, shape=shape)


def concat(values: Sequence, axis: int) -> Tensor:
    ts = [convert_to_tensor(v) for v in values]
    if not ts:
        raise ValueError("concat needs at least one tensor")
    first = ts[0]
    axis = _axes(axis, first.ndim, "concat")[0]
    for t in ts[1:]:
        if t.dtype != first.dtype or t.ndim != first.ndim or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ValueError(f"concat: tensors must match in dtype and in every dimension but "
                             f"axis {axis}: got {first.shape} {first.dtype} and "
                             f"{t.shape} {t.dtype}")
    return P.concat_p(*ts, axis=axis)


def stack(values: Sequence, axis: int = 0) -> Tensor:
    ts = [convert_to_tensor(v) for v in values]
    if not ts:
        raise ValueError("stack needs at least one tensor")
    shapes = {t.shape for t in ts}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors must have the same shape, got {sorted(shapes)}")
    return concat([expand_dims(t, axis) for t in ts], axis=axis)


def pad(tensor, paddings, mode: str = "CONSTANT", constant_values=0) -> Tensor:
    """Pad each axis by ``paddings[i] = (before, after)``. ``mode``: ``"CONSTANT"`` (with
    ``constant_values``), ``"REFLECT"`` (mirror without the edge; pads < the axis size) or
    ``"SYMMETRIC"`` (mirror with the edge; pads <= the axis size), as TensorFlow."""
    x = convert_to_tensor(tensor)
    paddings = tuple((int(lo), int(hi)) for lo, hi in (
        paddings.numpy().tolist() if isinstance(paddings, Tensor) else paddings))
    if len(paddings) != x.ndim or builtins.min((v for p in paddings for v in p), default=0) < 0:
        raise InvalidArgumentError(f"pad: paddings must hold one non-negative (before, after) "
                                   f"row per axis; got {paddings} for a tensor of rank {x.ndim}")
    mode = str(mode).upper()
    if mode == "CONSTANT":
        return P.pad_p(x, paddings=paddings, constant_values=constant_values)
    if mode not in ("REFLECT", "SYMMETRIC"):
        raise ValueError(f"pad: mode must be 'CONSTANT', 'REFLECT' or 'SYMMETRIC', got {mode!r}")
    # Mirror padding is a gather along each axis (repeated indices add up in the backward).
    for ax, (lo, hi) in enumerate(paddings):
        n = x.shape[ax]
        limit = n - 1 if mode == "REFLECT" else n
        if lo > limit or hi > limit:
            raise InvalidArgumentError(f"pad: {mode} padding {(lo, hi)} of axis {ax} must be at "
                                       f"most {limit} for size {n} (shape {x.shape})")
        if lo or hi:
            index = _like(x._value, np.pad(np.arange(n), (lo, hi), mode=mode.lower()))
            x = P.getitem_p(x, index=(slice(None),) * ax + (index,))
    return x


def _index(item, like=None) -> tuple:
    """A raw index; its arrays on the device of ``like`` (the indexed array), as TF does."""
    items = item if isinstance(item, tuple) else (item,)
    out = []
    for i in items:
        if isinstance(i, Tensor):
            i = i._value
        elif isinstance(i, list):
            i = np.asarray(i)
        if like is not None and hasattr(i, "shape") and type(i) is not type(like):
            i = _like(like, i)
        out.append(i)
    return tuple(out)


def _getitem(self: Tensor, item) -> Tensor:
    if _TRACE and isinstance(item, Tensor) and item.dtype.kind in "iu" and item.ndim <= 1 \
            and _TRACE[-1].is_traced(item):
        return gather(self, item)  # x[i] with a traced i: each call's i (a view would freeze)
    index = _index(item, self._value)
    try:
        self._value[index]
    except IndexError as e:
        raise InvalidArgumentIndexError(f"index {item!r:.80} is invalid for a tensor of shape "
                                        f"{self.shape}: {e}") from None
    return P.getitem_p(self, index=index)


def _variable_getitem(self: Variable, item) -> VariableSlice:
    """``v[item]``: the recorded slice, which can also be assigned into ``v`` (TensorFlow)."""
    out = _getitem(self, item)
    view = VariableSlice.__new__(VariableSlice)
    view._value, view._id = out._value, out._id  # the same tensor to every tape
    view._var, view._index, view._item = self, _index(item, self._value), item
    return view


def gather(params, indices, axis: int = 0) -> Tensor:
    """``params`` sliced by integer ``indices`` along ``axis`` (repeated indices add in backward)."""
    x = convert_to_tensor(params)
    idx = convert_to_tensor(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"gather: indices must be integers, got {idx.dtype}")
    axis = _axes(axis, x.ndim, "gather")[0]
    n = concrete_shape(x._value)[axis]
    iv = plain(idx._value)
    if iv.size and (int(iv.min()) < -n or int(iv.max()) >= n):
        raise InvalidArgumentIndexError(f"gather: indices out of range [0, {n}) for axis "
                                        f"{axis} of shape {x.shape}")
    if _TRACE and _TRACE[-1].is_traced(idx):  # each call's indices, read by the plan
        return P.take_p(x, idx, axis=axis)
    return P.getitem_p(x, index=(slice(None),) * axis + (_like(x._value, idx._value),))


def one_hot(indices, depth: int, on_value=1.0, off_value=0.0, axis: int = -1,
            dtype="float32") -> Tensor:
    dtype = as_dtype(dtype)

    def hot(idx):
        xp = array_module(idx)
        on = xp.arange(depth) == idx[..., None]  # out-of-range indices: an all-off row (TF)
        out = xp.where(on, on_value, off_value).astype(dtype)
        return out if axis == -1 else xp.moveaxis(out, -1, axis)
    return derived(hot, convert_to_tensor(indices))


def cast(x, dtype) -> Tensor:
    """Change dtype. Float->float is differentiable; anything ending in an integer is not."""
    x = convert_to_tensor(x)
    dtype = as_dtype(dtype)
    if x.dtype == dtype:
        return x
    return P.cast_p(x, dtype=dtype, src=x.dtype)


# ---------------------------------------------------------------- creation
def _shape_arg(shape) -> tuple:
    """A shape given as an int (TensorFlow accepts ``tp.zeros(2)``), a sequence or a Tensor
    (items may be scalar Tensors: ``[tp.shape(x)[0], 10]``); inside a symbolic trace, sizes
    computed from a ``None`` dimension are :class:`symdim.Dim` s."""
    if isinstance(shape, Tensor):
        shape = _dim_value(shape)
    if isinstance(shape, (int, np.integer, Dim)):
        return (_dim_value(shape),)
    return tuple(_dim_value(d) for d in shape)


def _dim_value(d):
    """A size (or a list of them, for a vector Tensor): an int, or a Dim inside a symbolic
    trace (of a Dim, or of a tensor computed from shapes there)."""
    if isinstance(d, Dim):
        return d
    if isinstance(d, Tensor):
        if _TRACE and _TRACE[-1].dual is not None and _TRACE[-1].is_traced(d):
            return _TRACE[-1].symbolic_value(d)
        return d.numpy().tolist() if d.ndim else int(d)
    return int(d)


def sized(kernel, shape: tuple, **params) -> Tensor:
    """``kernel(anchor, shape=shape, **params)``, a new array of a shape with ``Dim`` s, as a
    traced value of a symbolic trace: computed at every size (the ``Dim`` s made sizes), made
    on every call of the plan."""
    return derived(kernel, _TRACE[-1].anchor(), shape=shape, **params)


def filled(_, shape, dtype, fill):
    """``np.full``, a :func:`sized` kernel (its first argument the anchor)."""
    return np.full(shape, fill, dtype=dtype)


def zeros(shape, dtype="float32") -> Tensor:
    shape = _shape_arg(shape)
    if has_dim(shape):
        return sized(filled, shape, dtype=as_dtype(dtype), fill=0)
    arr = np.zeros(shape, dtype=as_dtype(dtype))
    return Tensor(_device.place(arr) if _SCOPES[0] else arr)


def ones(shape, dtype="float32") -> Tensor:
    shape = _shape_arg(shape)
    if has_dim(shape):
        return sized(filled, shape, dtype=as_dtype(dtype), fill=1)
    arr = np.ones(shape, dtype=as_dtype(dtype))
    return Tensor(_device.place(arr) if _SCOPES[0] else arr)


def zeros_like(input, dtype=None) -> Tensor:
    return _filled_like(input, dtype, 0)


def ones_like(input, dtype=None) -> Tensor:
    return _filled_like(input, dtype, 1)


def _filled_like(input, dtype, fill) -> Tensor:
    t = convert_to_tensor(input)
    dt = t.dtype if dtype is None else as_dtype(dtype)
    if _TRACE and _TRACE[-1].dual is not None and has_dim(t.shape):
        return derived(_full_of, t, dtype=dt, fill=fill)  # (each call's shape)
    v = t._value
    return Tensor(array_module(v).full(v.shape, fill, dtype=dt))


def _full_of(a, dtype, fill):
    return array_module(a).full(a.shape, fill, dtype=dtype)


def linspace(start, stop, num: int) -> Tensor:
    return Tensor(_device.place(np.linspace(float(start), float(stop), int(num),
                                            dtype=np.float32)))


def range(start, limit=None, delta=1, dtype=None) -> Tensor:
    if limit is None:
        start, limit = 0, start
    if dtype is None:
        floats = any(isinstance(v, float) for v in (start, limit, delta))
        dtype = "float32" if floats else "int32"
    return Tensor(_device.place(np.arange(start, limit, delta).astype(as_dtype(dtype))))


# ---------------------------------------------------------------- Python operators
def _rev(fn):
    return lambda self, other: fn(other, self)


def _install_operators() -> None:
    T = Tensor
    T.__add__, T.__radd__ = add, _rev(add)
    T.__sub__, T.__rsub__ = subtract, _rev(subtract)
    T.__mul__, T.__rmul__ = multiply, _rev(multiply)
    T.__truediv__, T.__rtruediv__ = divide, _rev(divide)
    T.__pow__, T.__rpow__ = pow, _rev(pow)
    T.__matmul__, T.__rmatmul__ = matmul, _rev(matmul)
    T.__floordiv__, T.__rfloordiv__ = floordiv, _rev(floordiv)
    T.__mod__, T.__rmod__ = mod, _rev(mod)
    T.__neg__ = negative
    T.__pos__ = lambda self: self
    T.__abs__ = abs
    T.__lt__, T.__le__, T.__gt__, T.__ge__ = less, less_equal, greater, greater_equal
    T.__eq__, T.__ne__ = equal, not_equal
    T.__and__, T.__or__, T.__invert__ = logical_and, logical_or, logical_not
    T.__getitem__ = _getitem
    Variable.__getitem__ = _variable_getitem
    T.T = property(lambda self: transpose(self))


_install_operators()
