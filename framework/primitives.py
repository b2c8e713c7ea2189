"""The closed set of primitives: each forward on raw arrays, followed at once by its rule.

Forwards are written once against the array module ``xp`` of their input (NumPy or CuPy).
Rules are written with primitives applied to Tensors, so an outer tape records them and
higher-order derivatives work. Rules may return broadcast-shaped gradients: the sweep reduces
them to each input's shape (``tape._unbroadcast``), so no rule does that itself.

Everything else (softmax, losses, dense layers, reduce_mean, clip_by_value, conv2d, ...) is
composed from these and carries no rule of its own.
"""
from __future__ import annotations

import operator

import numpy as np

from ._backend import array_module
from .recording import _ACTIVE, derived, primitive
from .tensor import Tensor

__all__: list[str] = []  # internal: the public names live in tapeflow.ops


def _c(value, like: Tensor) -> Tensor:
    """An unrecorded constant with ``like``'s dtype, on ``like``'s device."""
    xp = array_module(like._value)
    return Tensor(xp.asarray(value, dtype=like._value.dtype))


def _mask(cond, like: Tensor) -> Tensor:
    """A boolean constant to multiply ``like`` by (no gradient flows into it).

    Kept as bool: ``float * bool`` keeps the float dtype and saves a conversion pass.
    """
    return Tensor(cond)


def _positive(a):
    """The mask ``a > 0`` (a raw-array helper for rules, applied through ``derived``)."""
    return a > 0


# ---------------------------------------------------------------- elementwise, binary
@primitive("add")
def add_p(x, y):
    return x + y


@add_p.defvjp
def _(g, ans, xs, shapes, needs):
    return g, g


@primitive("subtract")
def subtract_p(x, y):
    return x - y


@subtract_p.defvjp
def _(g, ans, xs, shapes, needs):
    return g, (negative_p(g) if needs[1] else None)


@primitive("multiply", save_args=True)
def multiply_p(x, y):
    return x * y


@multiply_p.defvjp
def _(g, ans, xs, shapes, needs):
    x, y = xs
    return (multiply_p.call2(g, y) if needs[0] else None,
            multiply_p.call2(g, x) if needs[1] else None)


@primitive("divide", save_args=True)
def divide_p(x, y):
    return x / y


@divide_p.defvjp
def _(g, ans, xs, shapes, needs):
    # d(x/y)/dy = -x / y^2
    x, y = xs
    gx = divide_p(g, y) if needs[0] else None
    gy = negative_p(divide_p(multiply_p(g, x), multiply_p(y, y))) if needs[1] else None
    return gx, gy


@primitive("pow", save_args=True, save_ans=True)
def pow_p(x, y):
    return x ** y


@pow_p.defvjp
def _(g, ans, xs, shapes, needs):
    # d/dx = y x^(y-1);  d/dy = x^y log x, defined as 0 where x <= 0 (TensorFlow's choice).
    x, y = xs
    gx = multiply_p(g, multiply_p(y, pow_p(x, subtract_p(y, _c(1, y))))) if needs[0] else None
    gy = None
    if needs[1]:
        pos = derived(_positive, x)
        safe_x = where_p(pos, x, _c(1, x))
        gy = multiply_p(g, multiply_p(ans, multiply_p(log_p(safe_x), pos)))
    return gx, gy


@primitive("maximum", save_args=True)
def maximum_p(x, y):
    return array_module(x).maximum(x, y)


@maximum_p.defvjp
def _(g, ans, xs, shapes, needs):
    # Ties send the gradient to x (TensorFlow's convention).
    x, y = xs
    return (multiply_p(g, derived(operator.ge, x, y)) if needs[0] else None,
            multiply_p(g, derived(operator.lt, x, y)) if needs[1] else None)


@primitive("minimum", save_args=True)
def minimum_p(x, y):
    return array_module(x).minimum(x, y)


@minimum_p.defvjp
def _(g, ans, xs, shapes, needs):
    x, y = xs
    return (multiply_p(g, derived(operator.le, x, y)) if needs[0] else None,
            multiply_p(g, derived(operator.gt, x, y)) if needs[1] else None)


# The arithmetic forwards are the C-level operators (no Python frame per op); the functions
# above document them and serve as the registry's names.
add_p.fwd, subtract_p.fwd, multiply_p.fwd = operator.add, operator.sub, operator.mul
divide_p.fwd, pow_p.fwd = operator.truediv, operator.pow


# ---------------------------------------------------------------- elementwise, unary
@primitive("negative")
def negative_p(x):
    return -x


@negative_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (negative_p(g),)


@primitive("abs", save_args=True)
def abs_p(x):
    return abs(x)


@abs_p.defvjp
def _(g, ans, xs, shapes, needs):
    # Through the sign primitive (whose own derivative is zero), so a second derivative is
    # zeros rather than None, as in TensorFlow.
    return (multiply_p(g, sign_p(xs[0])),)


@primitive("sign", save_args=True)
def sign_p(x):
    return array_module(x).sign(x)


@sign_p.defvjp
def _(g, ans, xs, shapes, needs):
    # Piecewise constant: the derivative is 0 (a.e.), given as zeros, not None (TensorFlow).
    # Built as g * sign(x) * 0 so the zeros stay connected to x and g: differentiating them
    # again gives zeros too, as TensorFlow's second derivatives of sign/abs/relu do.
    return (multiply_p(multiply_p(g, sign_p(xs[0])), _c(0, g)),)


@primitive("square", save_args=True)
def square_p(x):
    return x * x


@square_p.defvjp
def _(g, ans, xs, shapes, needs):
    x = xs[0]
    return (multiply_p(g, multiply_p(x, _c(2, x))),)


@primitive("sqrt", save_ans=True)
def sqrt_p(x):
    return array_module(x).sqrt(x)


def _is_zero(a):
    return a == 0


@sqrt_p.defvjp
def _(g, ans, xs, shapes, needs):
    # Where the cotangent is 0 the result is 0, even at x = 0 (1/0) or x < 0 (NaN): TensorFlow's
    # SqrtGrad does the same, so where(x > 0, sqrt(x), 0) has gradient 0 off its branch.
    zero = derived(_is_zero, g)
    return (where_p(zero, _c(0, g), divide_p(g, multiply_p(ans, _c(2, ans)))),)


@primitive("exp", save_ans=True)
def exp_p(x):
    return array_module(x).exp(x)


@exp_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (multiply_p(g, ans),)


@primitive("log", save_args=True)
def log_p(x):
    return array_module(x).log(x)


@log_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (divide_p(g, xs[0]),)


@primitive("log1p", save_args=True)
def log1p_p(x):
    return array_module(x).log1p(x)


@log1p_p.defvjp
def _(g, ans, xs, shapes, needs):
    x = xs[0]
    return (divide_p(g, add_p(x, _c(1, x))),)


@primitive("sin", save_args=True)
def sin_p(x):
    return array_module(x).sin(x)


@sin_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (multiply_p(g, cos_p(xs[0])),)


@primitive("cos", save_args=True)
def cos_p(x):
    return array_module(x).cos(x)


@cos_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (negative_p(multiply_p(g, sin_p(xs[0]))),)


@primitive("tanh", save_ans=True)
def tanh_p(x):
    return array_module(x).tanh(x)


@tanh_p.defvjp
def _(g, ans, xs, shapes, needs):
    # 1 - tanh^2, from the saved output: no second exp.
    return (multiply_p(g, subtract_p(_c(1, ans), square_p(ans))),)


@primitive("sigmoid", save_ans=True)
def sigmoid_p(x):
    xp = array_module(x)
    # Stable on both tails: exp only ever sees non-positive arguments.
    e = xp.exp(-abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


@sigmoid_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (multiply_p(g, multiply_p(ans, subtract_p(_c(1, ans), ans))),)


@primitive("relu", save_ans=True)
def relu_p(x):
    return array_module(x).maximum(x, 0)


@relu_p.defvjp
def _(g, ans, xs, shapes, needs):
    # NOTE: the mask is (ans > 0) from the output, so relu'(0) = 0 like TensorFlow; written as
    # maximum(x, 0) the tie rule would send the gradient to x at 0. While an outer tape records,
    # the mask is sign(ans) through the sign primitive, so the second derivative is zeros
    # (TensorFlow's ReluGradGrad), not None; otherwise a bool mask (np.sign costs twice as much).
    if _ACTIVE:
        return (multiply_p.call2(g, sign_p(ans)),)
    return (multiply_p.call2(g, derived(_positive, ans)),)


@primitive("cast")
def cast_p(x, dtype, src):
    return x.astype(dtype)


@cast_p.defvjp
def _(g, ans, xs, shapes, needs, dtype, src):
    # Only float->float casts are ever recorded (integer outputs are not differentiable).
    return (cast_p(g, dtype=src, src=dtype),)


@primitive("where", save_args=True)
def where_p(cond, x, y):
    return array_module(x).where(cond, x, y)


@where_p.defvjp
def _(g, ans, xs, shapes, needs):
    cond = xs[0]
    zero = _c(0, g)
    return (None,
            where_p(cond, g, zero) if needs[1] else None,
            where_p(cond, zero, g) if needs[2] else None)


# ---------------------------------------------------------------- linear algebra
def _mT(t: Tensor) -> Tensor:
    nd = t._value.ndim
    return transpose_p(t, perm=tuple(range(nd - 2)) + (nd - 1, nd - 2))


@primitive("matmul", save_args=True)
def matmul_p(x, y):
    return x @ y


@matmul_p.defvjp
def _(g, ans, xs, shapes, needs):
    # Batch dimensions broadcast like NumPy; the sweep sums them back to each input's shape.
    x, y = xs
    return (matmul_p.call2(g, _mT(y)) if needs[0] else None,
            matmul_p.call2(_mT(x), g) if needs[1] else None)


# ---------------------------------------------------------------- reductions
def _kept_shape(shape: tuple, axis) -> tuple:
    if axis is None:
        return (1,) * len(shape)
    return tuple(1 if i in axis else d for i, d in enumerate(shape))


@primitive("reduce_sum")
def reduce_sum_p(x, axis, keepdims):
    return x.sum(axis=axis, keepdims=keepdims)


@reduce_sum_p.defvjp
def _(g, ans, xs, shapes, needs, axis, keepdims):
    shape = shapes[0]
    if not keepdims:
        g = reshape_p(g, shape=_kept_shape(shape, axis))
    return (broadcast_to_p(g, shape=shape),)


def _extremum_weight(x, ans, axis, kept):
    hit = x == ans.reshape(kept)
    return (hit / hit.sum(axis=axis, keepdims=True)).astype(x.dtype)


def _extremum_vjp(g, ans, xs, shapes, needs, axis, keepdims):
    # Ties share the gradient equally (TensorFlow's convention for reduce_max/min).
    kept = _kept_shape(shapes[0], axis)
    weight = derived(_extremum_weight, xs[0], ans, axis=axis, kept=kept)
    return (multiply_p(reshape_p(g, shape=kept), weight),)


@primitive("reduce_max", save_args=True, save_ans=True)
def reduce_max_p(x, axis, keepdims):
    return x.max(axis=axis, keepdims=keepdims)


@primitive("reduce_min", save_args=True, save_ans=True)
def reduce_min_p(x, axis, keepdims):
    return x.min(axis=axis, keepdims=keepdims)


reduce_max_p.defvjp(_extremum_vjp)
reduce_min_p.defvjp(_extremum_vjp)


# ---------------------------------------------------------------- shape and indexing
@primitive("reshape")
def reshape_p(x, shape):
    return x.reshape(shape)


@reshape_p.defvjp
def _(g, ans, xs, shapes, needs, shape):
    return (reshape_p(g, shape=shapes[0]),)


@primitive("transpose")
def transpose_p(x, perm):
    return x.transpose(perm)


@transpose_p.defvjp
def _(g, ans, xs, shapes, needs, perm):
    return (transpose_p(g, perm=tuple(np.argsort(perm).tolist())),)


@primitive("broadcast_to")
def broadcast_to_p(x, shape):
    return array_module(x).broadcast_to(x, shape)


@broadcast_to_p.defvjp
def _(g, ans, xs, shapes, needs, shape):
    return (g,)  # the sweep sums the broadcast axes back


def _is_advanced(index: tuple) -> bool:
    return any(not isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in index)


@primitive("getitem")
def getitem_p(x, index):
    return x[index]


@getitem_p.defvjp
def _(g, ans, xs, shapes, needs, index):
    return (scatter_add_p(g, index=index, shape=shapes[0]),)


@primitive("scatter_add")
def scatter_add_p(g, index, shape):
    """Transpose of getitem: zeros of ``shape`` with ``g`` added at ``index`` (repeats add)."""
    xp = array_module(g)
    out = xp.zeros(shape, dtype=g.dtype)
    if _is_advanced(index):
        xp.add.at(out, index, g)  # (CuPy >= 13 has ufunc.at, as cupyx.scatter_add)
    else:
        out[index] = g
    return out


@scatter_add_p.defvjp
def _(g, ans, xs, shapes, needs, index, shape):
    return (getitem_p(g, index=index),)


@primitive("take")
def take_p(x, indices, axis):
    """``x`` at integer ``indices`` along ``axis`` (``tf.gather``), the indices an input: a
    traced gather reads each call's indices (``getitem``'s are a static parameter)."""
    return array_module(x).take(x, indices, axis=axis)


@take_p.defvjp
def _(g, ans, xs, shapes, needs, axis):
    return (take_grad_p(g, xs[1], shape=shapes[0], axis=axis), None)


@primitive("take_grad")
def take_grad_p(g, indices, shape, axis):
    """Transpose of take: zeros of ``shape`` with ``g`` added at ``indices`` along ``axis``
    (repeated indices add)."""
    xp = array_module(g)
    out = xp.zeros(shape, dtype=g.dtype)
    xp.add.at(out, (slice(None),) * axis + (indices,), g)
    return out


@take_grad_p.defvjp
def _(g, ans, xs, shapes, needs, shape, axis):
    return (take_p(g, xs[1], axis=axis), None)


take_p.save_args = take_grad_p.save_args = True


@primitive("take_along", save_args=True)
def take_along_p(x, indices, axis):
    """``take_along_axis(x, indices, axis)`` (sort, top_k), the indices an input."""
    return array_module(x).take_along_axis(x, indices, axis=axis)


@take_along_p.defvjp
def _(g, ans, xs, shapes, needs, axis):
    return (take_along_grad_p(g, xs[1], shape=shapes[0], axis=axis), None)


@primitive("take_along_grad", save_args=True)
def take_along_grad_p(g, indices, shape, axis):
    """Transpose of take_along: zeros of ``shape`` with ``g`` added where each entry was
    taken from (repeated indices add)."""
    xp = array_module(g)
    out = xp.zeros(shape, dtype=g.dtype)
    ax = axis % len(shape)
    index = tuple(indices if i == ax else
                  xp.arange(d).reshape((-1,) + (1,) * (len(shape) - 1 - i))
                  for i, d in enumerate(indices.shape))
    xp.add.at(out, index, g)
    return out


@take_along_grad_p.defvjp
def _(g, ans, xs, shapes, needs, shape, axis):
    return (take_along_p(g, xs[1], axis=axis), None)


@primitive("concat")
def concat_p(*xs, axis):
    return array_module(xs[0]).concatenate(xs, axis=axis)


@concat_p.defvjp
def _(g, ans, xs, shapes, needs, axis):
    out, start = [], 0
    lead = (slice(None),) * axis
    for need, shape in zip(needs, shapes):
        stop = start + shape[axis]
        out.append(getitem_p(g, index=lead + (slice(start, stop),)) if need else None)
        start = stop
    return tuple(out)


@primitive("pad")
def pad_p(x, paddings, constant_values):
    return array_module(x).pad(x, paddings, constant_values=constant_values)


@pad_p.defvjp
def _(g, ans, xs, shapes, needs, paddings, constant_values):
    index = tuple(slice(lo, lo + d) for (lo, _), d in zip(paddings, shapes[0]))
    return (getitem_p(g, index=index),)


# ---------------------------------------------------------------- convolution windows
def _out_size(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1


_NO_DILATION = (1, 1)


@primitive("extract_patches")
def extract_patches_p(x, ksize, strides, dilations=_NO_DILATION):
    """NHWC windows: (N, H, W, C) -> (N, OH, OW, kh, kw, C); ``ksize``/``strides``/``dilations``
    = (h, w). Window element (i, j) sits at offset (i * dh, j * dw) from the window's corner."""
    (kh, kw), (sh, sw), (dh, dw) = ksize, strides, dilations
    n, h, w, c = x.shape
    oh, ow = _out_size(h, (kh - 1) * dh + 1, sh), _out_size(w, (kw - 1) * dw + 1, sw)
    out = array_module(x).empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            r, q = i * dh, j * dw
            out[:, :, :, i, j, :] = x[:, r:r + sh * (oh - 1) + 1:sh, q:q + sw * (ow - 1) + 1:sw]
    return out


@extract_patches_p.defvjp
def _(g, ans, xs, shapes, needs, ksize, strides, dilations=_NO_DILATION):
    return (patches_transpose_p(g, shape=shapes[0], ksize=ksize, strides=strides,
                                dilations=dilations),)


@primitive("patches_transpose")
def patches_transpose_p(g, shape, ksize, strides, dilations=_NO_DILATION):
    """Transpose of extract_patches: add every window back onto an image of ``shape``."""
    (kh, kw), (sh, sw), (dh, dw) = ksize, strides, dilations
    _, oh, ow = g.shape[:3]
    out = array_module(g).zeros(shape, dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):
            r, q = i * dh, j * dw
            out[:, r:r + sh * (oh - 1) + 1:sh, q:q + sw * (ow - 1) + 1:sw] += g[:, :, :, i, j, :]
    return out


@patches_transpose_p.defvjp
def _(g, ans, xs, shapes, needs, shape, ksize, strides, dilations=_NO_DILATION):
    return (extract_patches_p(g, ksize=ksize, strides=strides, dilations=dilations),)


# ---------------------------------------------------------------- fused loss
def _pick(xp, a, labels):
    """``a[..., labels]`` per row: the label's entry along the last axis."""
    flat = a.reshape(-1, a.shape[-1])
    return flat[xp.arange(flat.shape[0]), labels.reshape(-1)].reshape(a.shape[:-1])


@primitive("sparse_softmax_cross_entropy", save_args=True)
def sparse_softmax_xent_p(logits, labels):
    """Per-example ``logsumexp(logits) - logits[label]``, stable for any logit range.

    Fused (rather than composed from log_softmax) so the forward never forms the full
    log-probability matrix and the rule is the classic ``softmax - onehot``.
    """
    xp = array_module(logits)
    z = logits - logits.max(axis=-1, keepdims=True)
    return xp.log(xp.exp(z).sum(axis=-1)) - _pick(xp, z, labels)


@sparse_softmax_xent_p.defvjp
def _(g, ans, xs, shapes, needs):
    logits, labels = xs
    g = reshape_p(g, shape=g._value.shape + (1,))
    if _ACTIVE:
        # An outer tape is recording: build softmax from primitives so it is differentiated
        # again (Hessians of the loss). The shift is a constant: softmax ignores it.
        e = exp_p(subtract_p.call2(logits, derived(_row_max, logits)))
        p = divide_p.call2(e, reduce_sum_p(e, axis=(logits._value.ndim - 1,), keepdims=True))
        return multiply_p.call2(g, subtract_p.call2(p, derived(_onehot, logits, labels))), None
    # Nothing records this sweep: softmax - onehot in one raw-array pass (one derived value,
    # which a tp.function plan runs as one fused kernel).
    return multiply_p.call2(g, derived(_softmax_minus_onehot, logits, labels)), None


def _row_max(lv):
    return lv.max(axis=-1, keepdims=True)


def _onehot(lv, labels):
    xp = array_module(lv)
    onehot = xp.zeros(lv.shape, dtype=lv.dtype)
    flat = onehot.reshape(-1, lv.shape[-1])
    flat[xp.arange(flat.shape[0]), labels.reshape(-1)] = 1
    return onehot


def _softmax_minus_onehot(lv, labels, out=None):
    """``softmax(lv) - onehot(labels)`` along the last axis, into ``out`` if given."""
    xp = array_module(lv)
    e = xp.subtract(lv, lv.max(axis=-1, keepdims=True), out=out)
    xp.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    flat = e.reshape(-1, lv.shape[-1])
    flat[xp.arange(flat.shape[0]), labels.reshape(-1)] -= 1
    return e
