"""The registry's second room: the primitives TensorFlow users reach for beyond the core set.

Same conventions as :mod:`primitives`: each forward on raw arrays (written once against the
array module ``xp``), followed at once by its rule, written with primitives so outer tapes
record it (higher-order derivatives). Grouped by kind: elementwise special functions, scans
and products, linear algebra, window maxima.

Raw-array values a rule needs (masks) come from :func:`recording.derived`, so a ``tp.function``
replay recomputes them.
"""
from __future__ import annotations

import functools
import math
import string

import numpy as np

from . import primitives as P
from ._backend import array_module, special_module
from .recording import _ACTIVE, _auto_watch, derived, primitive
from .tensor import Tensor

__all__: list[str] = []  # internal: the public names live in tapeflow.math_ops / array_ops

_c = P._c


# ---------------------------------------------------------------- elementwise, special
@primitive("expm1", save_ans=True)
def expm1_p(x):
    return array_module(x).expm1(x)


@expm1_p.defvjp
def _(g, ans, xs, shapes, needs):
    # d/dx (e^x - 1) = e^x = ans + 1 (from the saved output: no second exp)
    return (P.multiply_p(g, P.add_p(ans, _c(1, ans))),)


@primitive("tan", save_ans=True)
def tan_p(x):
    return array_module(x).tan(x)


@tan_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (P.multiply_p(g, P.add_p(_c(1, ans), P.square_p(ans))),)  # 1 + tan^2


@primitive("atan", save_args=True)
def atan_p(x):
    return array_module(x).arctan(x)


@atan_p.defvjp
def _(g, ans, xs, shapes, needs):
    x = xs[0]
    return (P.divide_p(g, P.add_p(_c(1, x), P.square_p(x))),)


@primitive("sinh", save_args=True)
def sinh_p(x):
    return array_module(x).sinh(x)


@sinh_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (P.multiply_p(g, cosh_p(xs[0])),)


@primitive("cosh", save_args=True)
def cosh_p(x):
    return array_module(x).cosh(x)


@cosh_p.defvjp
def _(g, ans, xs, shapes, needs):
    return (P.multiply_p(g, sinh_p(xs[0])),)


_erf_scalar = np.vectorize(math.erf, otypes=[np.float64])


@primitive("erf", save_args=True)
def erf_p(x):
    xp = array_module(x)
    if xp is np:
        # NumPy has no erf: math.erf per element (exact to double precision; slower than a
        # ufunc, which is why gelu's default tanh-free form costs more than approximate=True).
        return _erf_scalar(x).astype(x.dtype, copy=False)
    return special_module(xp).erf(x)


@erf_p.defvjp
def _(g, ans, xs, shapes, needs):
    x = xs[0]  # d/dx erf(x) = 2/sqrt(pi) exp(-x^2)
    return (P.multiply_p(g, P.multiply_p(P.exp_p(P.negative_p(P.square_p(x))),
                                         _c(2.0 / math.sqrt(math.pi), x))),)


@primitive("softplus", save_args=True)
def softplus_p(x):
    xp = array_module(x)
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): exp never overflows.
    return (xp.maximum(x, 0) + xp.log1p(xp.exp(-abs(x)))).astype(x.dtype, copy=False)


@softplus_p.defvjp
def _(g, ans, xs, shapes, needs):
    # A primitive (not max + log1p(exp(-|x|))) because the composition's derivative at 0 would
    # be relu'(0) - sign(0)/2 = 0 instead of sigmoid(0) = 1/2.
    return (P.multiply_p(g, P.sigmoid_p(xs[0])),)


# ---------------------------------------------------------------- scans and products
def _shift(xp, c, axis: int):
    """Exclusive scan from an inclusive one along ``axis``: drop the last, put the identity
    first (0 for sums, 1 for products, passed in as ``c``'s first slice)."""
    idx_head = [slice(None)] * c.ndim
    idx_head[axis] = slice(0, 1)
    idx_body = [slice(None)] * c.ndim
    idx_body[axis] = slice(0, -1)
    return xp.concatenate([c[tuple(idx_head)], c[tuple(idx_body)]], axis=axis)


def _scan(x, axis: int, exclusive: bool, reverse: bool, product: bool):
    xp = array_module(x)
    if reverse:
        x = xp.flip(x, axis)
    if product:
        c = xp.cumprod(x, axis=axis, dtype=x.dtype)
    else:
        c = xp.cumsum(x, axis=axis, dtype=x.dtype)
    if exclusive and x.shape[axis]:
        c = _shift(xp, c, axis)
        head = [slice(None)] * c.ndim
        head[axis] = slice(0, 1)
        c[tuple(head)] = 1 if product else 0
    if reverse:
        c = xp.flip(c, axis)
    return xp.ascontiguousarray(c)


@primitive("cumsum")
def cumsum_p(x, axis, exclusive, reverse):
    return _scan(x, axis, exclusive, reverse, product=False)


@cumsum_p.defvjp
def _(g, ans, xs, shapes, needs, axis, exclusive, reverse):
    # The transpose of a running sum is the running sum taken the other way.
    return (cumsum_p(g, axis=axis, exclusive=exclusive, reverse=not reverse),)


@primitive("cumprod", save_args=True, save_ans=True)
def cumprod_p(x, axis, exclusive, reverse):
    return _scan(x, axis, exclusive, reverse, product=True)


def _is_zero(a):
    return a == 0


def _div_no_nan(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0`` (and no NaN in the gradient there)."""
    zero = derived(_is_zero, den)
    safe = P.where_p(zero, _c(1, den), den)
    return P.where_p(zero, _c(0, num), P.divide_p(num, safe))


@cumprod_p.defvjp
def _(g, ans, xs, shapes, needs, axis, exclusive, reverse):
    # TensorFlow's rule: d/dx_j = sum_{i reached by j} g_i ans_i / x_j; entries with x_j = 0
    # get 0 (TensorFlow's div_no_nan), exact whenever no input is zero.
    back = cumsum_p(P.multiply_p(g, ans), axis=axis, exclusive=exclusive, reverse=not reverse)
    return (_div_no_nan(back, xs[0]),)


def _kept(shape: tuple, axis) -> tuple:
    return tuple(1 if axis is None or i in axis else d for i, d in enumerate(shape))


@primitive("reduce_prod", save_args=True)
def reduce_prod_p(x, axis, keepdims):
    return x.prod(axis=axis, keepdims=keepdims, dtype=x.dtype)


@reduce_prod_p.defvjp
def _(g, ans, xs, shapes, needs, axis, keepdims):
    # d prod / d x_j = product of the others: exclusive running products from both ends
    # (TensorFlow's _ProdGrad), so zeros in x are handled exactly (no division).
    x = xs[0]
    shape = shapes[0]
    nd = len(shape)
    red = tuple(range(nd)) if axis is None else tuple(axis)
    kept = tuple(i for i in range(nd) if i not in red)
    perm = red + kept
    xt = P.transpose_p(x, perm=perm)
    n_red = math.prod(shape[i] for i in red)
    flat = P.reshape_p(xt, shape=(n_red, math.prod(shape[i] for i in kept)))
    left = cumprod_p(flat, axis=0, exclusive=True, reverse=False)
    right = cumprod_p(flat, axis=0, exclusive=True, reverse=True)
    others = P.reshape_p(P.multiply_p(left, right), shape=tuple(shape[i] for i in perm))
    others = P.transpose_p(others, perm=tuple(np.argsort(perm).tolist()))
    return (P.multiply_p(P.reshape_p(g, shape=_kept(shape, axis)), others),)


# ---------------------------------------------------------------- einsum
@primitive("einsum", save_args=True)
def einsum_p(*xs, equation):
    """``equation`` is explicit (``"ab,bc->ac"``, no ellipsis): ``ops.einsum`` normalises it."""
    return array_module(xs[0]).einsum(equation, *xs)


def _unused_letter(used: set) -> str:
    for ch in string.ascii_letters:
        if ch not in used:
            used.add(ch)
            return ch
    raise ValueError("einsum: more than 52 distinct indices")


def _einsum_operand_grad(g: Tensor, out: str, ins: list, xs: tuple, k: int,
                         shape: tuple) -> Tensor:
    """Gradient for operand ``k``: contract ``g`` with the other operands onto ``k``'s indices.

    Indices that only operand ``k`` has (summed away) come back by broadcasting; a repeated
    index (a diagonal, ``"ii->i"``) comes back by multiplying with an identity matrix.
    """
    mine = ins[k]
    operands = [g] + [xs[j] for j in range(len(ins)) if j != k]
    subs = [out] + [ins[j] for j in range(len(ins)) if j != k]
    used = set("".join(ins) + out)
    target = []
    for i, (ch, d) in enumerate(zip(mine, shape)):
        if ch in mine[:i]:  # repeated index: a fresh letter tied to the first by an identity
            new = _unused_letter(used)
            operands.append(Tensor(array_module(g._value).eye(d, dtype=g._value.dtype)))
            subs.append(ch + new)
            target.append(new)
        else:
            target.append(ch)
    reachable = set("".join(subs))
    extra = [ch for ch in target if ch not in reachable]
    target_str = "".join(target)
    present = "".join(ch for ch in target_str if ch not in extra)
    grad = einsum_p(*operands, equation=",".join(subs) + "->" + present)
    if extra:  # indices summed away inside operand k alone: broadcast back along them
        grad = P.reshape_p(grad, shape=tuple(1 if ch in extra else d
                                             for ch, d in zip(target_str, shape)))
        grad = P.broadcast_to_p(grad, shape=shape)
    return grad


@einsum_p.defvjp
def _(g, ans, xs, shapes, needs, equation):
    lhs, out = equation.split("->")
    ins = lhs.split(",")
    return tuple(_einsum_operand_grad(g, out, ins, xs, k, shapes[k]) if needs[k] else None
                 for k in range(len(ins)))


# ---------------------------------------------------------------- linear algebra
@primitive("matrix_inverse", save_ans=True)
def matrix_inverse_p(x):
    return array_module(x).linalg.inv(x)


@matrix_inverse_p.defvjp
def _(g, ans, xs, shapes, needs):
    # d(A^-1) = -A^-1 dA A^-1, so the cotangent is -A^-T g A^-T.
    inv_t = P._mT(ans)
    return (P.negative_p(P.matmul_p(inv_t, P.matmul_p(g, inv_t))),)


@primitive("det", save_args=True, save_ans=True)
def det_p(x):
    return array_module(x).linalg.det(x)


@det_p.defvjp
def _(g, ans, xs, shapes, needs):
    # Jacobi's formula: d det(A) / dA = det(A) A^-T.
    scale = P.reshape_p(P.multiply_p(g, ans), shape=ans._value.shape + (1, 1))
    return (P.multiply_p(scale, P._mT(matrix_inverse_p(xs[0]))),)


# ---------------------------------------------------------------- window maxima (pooling)
def _window_max(x, axis: tuple):
    """Max over the window axes ``axis``, keeping no dims (what ``ndarray.max`` runs)."""
    return x.max(axis=axis)


def _window_views(a, axis: tuple) -> list:
    """``a``'s slices at each window position (row-major over ``axis``), window axes kept."""
    views = []
    for pos in np.ndindex(*[a.shape[i] for i in axis]):
        index = [slice(None)] * a.ndim
        for i, p in zip(axis, pos):
            index[i] = slice(p, p + 1)
        views.append(a[tuple(index)])
    return views


def _first_max_mask(x, ans, axis: tuple, out=None, taken=None):
    """True at the first maximum (row-major over ``axis``) of each window of ``x``, whose
    maxima are ``ans``; False elsewhere (everywhere in a window whose maximum is NaN).

    One broadcast comparison of ``x`` with its window maxima, then ties cleared on the bool
    mask itself, one window position at a time: a hit is kept only if no earlier position of
    its window hit. ``out`` (x's shape, bool) and ``taken`` (one window position's shape,
    bool) are a tp.function plan's buffers if given.
    """
    xp = array_module(x)
    kept = _kept(x.shape, axis)
    if out is None:
        out = xp.empty(x.shape, dtype=bool)
    xp.equal(x, ans.reshape(kept), out=out)
    hits = _window_views(out, axis)
    if len(hits) > 2 and taken is None:
        taken = xp.empty(kept, dtype=bool)
    for k in range(1, len(hits)):
        before = hits[0] if k == 1 else taken  # any hit at an earlier position
        xp.greater(hits[k], before, out=hits[k])  # hit and not taken before
        if k < len(hits) - 1:
            xp.logical_or(before, hits[k], out=taken)
    return out


@primitive("window_max", save_args=True)
def window_max_p(x, ans, first, axis):
    """The window maxima ``ans`` of ``x`` over ``axis`` with the first-maximum mask ``first``
    the forward kept for the rule; build it with :func:`window_max`, which computes both."""
    return ans


@window_max_p.defvjp
def _(g, ans, xs, shapes, needs, axis):
    # TensorFlow's MaxPoolGrad: the whole gradient goes to one input per window, the first
    # maximum in row-major window order (reduce_max instead splits ties equally). The mask
    # was made in the forward, where x was just read: the sweep does not scan x again.
    return P.multiply_p(P.reshape_p(g, shape=_kept(shapes[0], axis)), xs[2]), None, None


def _recorded(x: Tensor) -> bool:
    """Whether a tape records ``x`` (a float tensor one of them watches)."""
    return x._value.dtype.kind == "f" and any(
        x._id in tape._watched or (type(x) is not Tensor and _auto_watch(tape, x))
        for tape in _ACTIVE)


def window_max(x: Tensor, axis: tuple) -> Tensor:
    """Max of ``x`` over the window axes ``axis`` (a tuple), keeping no dims: pooling's
    reduction over tiles. When a tape records ``x``, the forward also keeps the first-maximum
    mask its gradient needs (both are :func:`derived` values, so a tp.function plan computes
    them once per step, into buffers, and never in the backward sweep)."""
    ans = derived(_window_max, x, axis=axis)
    if not _recorded(x):
        return ans  # nothing records x: no gradient will be asked for
    return window_max_p(x, ans, derived(_first_max_mask, x, ans, axis=axis), axis=axis)


# Overlapping (or not tiling) windows: a strided view of the image, never a copy of patches.
def _sliding(x, ksize, strides):
    """NHWC ``x``'s VALID windows as an (n, oh, ow, kh, kw, c) strided view (no copy; it
    never leaves this module, so nothing writes through it)."""
    (kh, kw), (sh, sw) = ksize, strides
    n, h, w, c = x.shape
    s0, s1, s2, s3 = x.strides
    return array_module(x).lib.stride_tricks.as_strided(
        x, (n, (h - kh) // sh + 1, (w - kw) // sw + 1, kh, kw, c),
        (s0, s1 * sh, s2 * sw, s1, s2, s3))


def _pool_max(x, ksize, strides):
    return _sliding(x, ksize, strides).max(axis=(3, 4))


def _pool_first_max(x, ans, ksize, strides, out=None, taken=None):
    """The first-maximum mask of each window, (n, oh, ow, kh, kw, c) bools."""
    return _first_max_mask(_sliding(x, ksize, strides), ans, (3, 4), out=out, taken=taken)


@primitive("max_pool", save_args=True)
def max_pool_p(x, ans, first, ksize, strides):
    """VALID max pooling of NHWC ``x``: the maxima ``ans`` and first-maximum mask ``first``
    that :func:`max_pool` computed on a strided view of x's windows."""
    return ans


@max_pool_p.defvjp
def _(g, ans, xs, shapes, needs, ksize, strides):
    # As window_max's rule, with the windows overlapping: no patch-sized gradient, each
    # window's g is added at its first maximum directly.
    return (max_pool_grad_p(g, xs[2], shape=shapes[0], ksize=ksize, strides=strides),
            None, None)


def _pool_scatter(g, first, shape, ksize, strides, out=None, part=None):
    """Max pooling's input gradient: for each window position (i, j), ``g`` where (i, j) is
    its window's first maximum, added into the strided window of the image it read (the
    same additions, in the same order, as extract_patches' transpose of the masked g)."""
    xp = array_module(g)
    if out is None:
        out = xp.zeros(shape, dtype=g.dtype)
    else:
        out[...] = 0
    if part is None:
        part = xp.empty(g.shape, dtype=g.dtype)
    (kh, kw), (sh, sw) = ksize, strides
    oh, ow = g.shape[1:3]
    for i in range(kh):
        for j in range(kw):
            xp.multiply(g, first[:, :, :, i, j], out=part)
            out[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += part
    return out


@primitive("max_pool_grad", save_args=True)
def max_pool_grad_p(g, first, shape, ksize, strides):
    """The input gradient of :func:`max_pool` for output gradient ``g``."""
    return _pool_scatter(g, first, shape, ksize, strides)


@max_pool_grad_p.defvjp
def _(gy, ans, xs, shapes, needs, shape, ksize, strides):
    # Linear in g: its transpose reads gy at each window's first maximum.
    picked = P.multiply_p(P.extract_patches_p(gy, ksize=ksize, strides=strides), xs[1])
    return P.reduce_sum_p(picked, axis=(3, 4), keepdims=False), None


def max_pool(x: Tensor, ksize: tuple, strides: tuple) -> Tensor:
    """VALID max pooling of NHWC ``x`` (padded already for SAME) over a strided view of its
    windows; like :func:`window_max`, the forward keeps the first-maximum mask when a tape
    records ``x``."""
    ans = derived(_pool_max, x, ksize=ksize, strides=strides)
    if not _recorded(x):
        return ans
    first = derived(_pool_first_max, x, ans, ksize=ksize, strides=strides)
    return max_pool_p(x, ans, first, ksize=ksize, strides=strides)


# ---------------------------------------------------------------- tp.function plan kernels
# ``factory(input_metas, out_meta, params, in_slots, shared) -> kernel(*arrays, out)``.
def _window_max_kernel(metas, out_meta, params, ins, shared):
    return functools.partial(np.maximum.reduce, axis=params["axis"])


def _first_max_kernel(metas, out_meta, params, ins, shared):
    axis = params["axis"]
    taken = np.empty(_kept(metas[0][0], axis), bool)
    return lambda x, ans, out: _first_max_mask(x, ans, axis, out=out, taken=taken)


def _pool_max_kernel(metas, out_meta, params, ins, shared):
    k, s = params["ksize"], params["strides"]
    return lambda x, out: np.maximum.reduce(_sliding(x, k, s), axis=(3, 4), out=out)


def _pool_first_max_kernel(metas, out_meta, params, ins, shared):
    k, s = params["ksize"], params["strides"]
    n, oh, ow, kh, kw, c = out_meta[0]
    taken = np.empty((n, oh, ow, 1, 1, c), bool)
    return lambda x, ans, out: _pool_first_max(x, ans, k, s, out=out, taken=taken)


def _pool_grad_kernel(metas, out_meta, params, ins, shared):
    (gshape, dt), _ = metas
    part = np.empty(gshape, dt)
    shape, k, s = params["shape"], params["ksize"], params["strides"]
    return lambda g, first, out: _pool_scatter(g, first, shape, k, s, out=out, part=part)


PLAN_KERNELS = {_window_max: _window_max_kernel, _first_max_mask: _first_max_kernel,
                _pool_max: _pool_max_kernel, _pool_first_max: _pool_first_max_kernel,
                "max_pool_grad": _pool_grad_kernel}
