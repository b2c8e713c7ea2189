"""2-D convolution as primitives with GEMM-shaped rules (NHWC, VALID on an already padded input).

``conv2d`` runs its forward as im2col + one GEMM (the same arithmetic as composing
``extract_patches``, ``reshape`` and ``matmul``). Its rules avoid the composition's full-size
temporaries:

* the input gradient is a *shifted GEMM*: for each filter tap ``(i, j)``,
  ``g @ W[i, j].T`` (a ``(N*OH*OW, Cin)`` block) is added into the strided window of ``dx``
  it came from -- no ``(N*OH*OW, kh*kw*Cin)`` patch gradient and no scatter pass over it;
* the filter gradient is one GEMM per tap on that tap's input window, copied into one reused
  buffer of ``N*OH*OW*Cin`` elements rather than the whole patch matrix.

Each rule is itself a primitive with a rule (``conv2d_backprop_input``,
``conv2d_backprop_filter``), so nested tapes differentiate convolutions to any order.
"""
from __future__ import annotations

import numpy as np

from ._backend import array_module
from . import primitives as P
from .recording import primitive

__all__: list[str] = []  # internal: tp.nn.conv2d is the public entry point


def _window(i, j, oh, ow, strides, dilations):
    """Index of the input pixels filter tap ``(i, j)`` meets, for every output pixel."""
    (sh, sw), (dh, dw) = strides, dilations
    r, q = i * dh, j * dw
    return (slice(None), slice(r, r + sh * (oh - 1) + 1, sh), slice(q, q + sw * (ow - 1) + 1, sw))


# Filter gradients with at most this many patch columns (kh*kw*Cin) use one GEMM on the patch
# matrix: for the MNIST CNN's first layer (128x28x28x1 -> 32, 3x3, one thread) nine per-tap
# GEMMs took 46 ms, one GEMM 10 ms. (Its forward keeps the K=9 GEMM: nine broadcast
# multiply-adds took 253 ms against the GEMM's 42 ms.)
_ONE_GEMM_MAX_K = 32


def _patches(x, ksize, strides, dilations, out=None):
    """``extract_patches`` of ``x``, into ``out`` if given (the same copies)."""
    if out is None:
        return P.extract_patches_p.fwd(x, ksize, strides, dilations)
    oh, ow = out.shape[1:3]
    for i in range(ksize[0]):
        for j in range(ksize[1]):
            out[:, :, :, i, j, :] = x[_window(i, j, oh, ow, strides, dilations)]
    return out


def _conv(x, w, strides, dilations, out=None, work=None):
    kh, kw, cin, cout = w.shape
    patches = _patches(x, (kh, kw), strides, dilations, work)
    n, oh, ow = patches.shape[:3]
    cols, w2 = patches.reshape(n * oh * ow, kh * kw * cin), w.reshape(kh * kw * cin, cout)
    if out is None:
        return (cols @ w2).reshape(n, oh, ow, cout)
    array_module(x).matmul(cols, w2, out=out.reshape(n * oh * ow, cout))
    return out


def _backprop_input(g, w, shape, strides, dilations, out=None, part=None):
    xp = array_module(g)
    kh, kw, cin, cout = w.shape
    n, oh, ow, _ = g.shape
    if out is None:
        out = xp.zeros(shape, dtype=g.dtype)
    else:
        out[...] = 0
    g2 = g.reshape(n * oh * ow, cout)
    if part is None:
        part = xp.empty((n * oh * ow, cin), dtype=g.dtype)
    view = part.reshape(n, oh, ow, cin)
    for i in range(kh):
        for j in range(kw):
            xp.matmul(g2, w[i, j].T, out=part)
            out[_window(i, j, oh, ow, strides, dilations)] += view
    return out


def _backprop_filter(x, g, ksize, strides, dilations, out=None, work=None):
    xp = array_module(x)
    (kh, kw), cin = ksize, x.shape[3]
    n, oh, ow, cout = g.shape
    g2 = g.reshape(n * oh * ow, cout)
    if out is None:
        out = xp.empty((kh, kw, cin, cout), dtype=g.dtype)
    if kh * kw * cin <= _ONE_GEMM_MAX_K:
        # Few input channels (a first layer): the per-tap GEMMs would be matrix-vector
        # products; the whole patch matrix is small, so one GEMM does it.
        cols = _patches(x, (kh, kw), strides, dilations, work)
        xp.matmul(cols.reshape(n * oh * ow, kh * kw * cin).T, g2,
                  out=out.reshape(kh * kw * cin, cout))
        return out
    tap = xp.empty((n, oh, ow, cin), dtype=x.dtype) if work is None else work
    tap2 = tap.reshape(n * oh * ow, cin)
    for i in range(kh):
        for j in range(kw):
            tap[...] = x[_window(i, j, oh, ow, strides, dilations)]
            xp.matmul(tap2.T, g2, out=out[i, j])
    return out


@primitive("conv2d", save_args=True)
def conv2d_p(x, w, strides, dilations):
    """Cross-correlation of NHWC ``x`` with ``w`` of shape (kh, kw, Cin, Cout), VALID."""
    return _conv(x, w, strides, dilations)


@conv2d_p.defvjp
def _(g, ans, xs, shapes, needs, strides, dilations):
    x, w = xs
    gx = conv2d_backprop_input_p(g, w, shape=shapes[0], strides=strides,
                                 dilations=dilations) if needs[0] else None
    gw = conv2d_backprop_filter_p(x, g, ksize=shapes[1][:2], strides=strides,
                                  dilations=dilations) if needs[1] else None
    return gx, gw


@primitive("conv2d_backprop_input", save_args=True)
def conv2d_backprop_input_p(g, w, shape, strides, dilations):
    """The input gradient of ``conv2d`` for output gradient ``g``: one GEMM per filter tap,
    added into the input window that tap read."""
    return _backprop_input(g, w, shape, strides, dilations)


@conv2d_backprop_input_p.defvjp
def _(gy, ans, xs, shapes, needs, shape, strides, dilations):
    # conv2d_backprop_input(g, w) is bilinear: its transpose in g is conv2d(., w), in w the
    # filter gradient of a convolution of gy whose output gradient is g.
    g, w = xs
    return (conv2d_p(gy, w, strides=strides, dilations=dilations) if needs[0] else None,
            conv2d_backprop_filter_p(gy, g, ksize=shapes[1][:2], strides=strides,
                                     dilations=dilations) if needs[1] else None)


@primitive("conv2d_backprop_filter", save_args=True)
def conv2d_backprop_filter_p(x, g, ksize, strides, dilations):
    """The filter gradient of ``conv2d`` at input ``x`` for output gradient ``g``."""
    return _backprop_filter(x, g, ksize, strides, dilations)


@conv2d_backprop_filter_p.defvjp
def _(gy, ans, xs, shapes, needs, ksize, strides, dilations):
    # Bilinear in (x, g): <gy, F(x, g)> = <conv2d(x, gy), g>.
    x, g = xs
    return (conv2d_backprop_input_p(g, gy, shape=shapes[0], strides=strides,
                                    dilations=dilations) if needs[0] else None,
            conv2d_p(x, gy, strides=strides, dilations=dilations) if needs[1] else None)


# ---------------------------------------------------------------- tp.function plan kernels
# ``factory(input_metas, out_meta, params, in_slots, shared) -> kernel(*arrays, out)``: the
# same functions, with their workspaces (the patch matrix, a tap's window) made once.
def _conv_kernel(metas, out_meta, params, ins, shared):
    (_, dt), (wshape, _) = metas
    n, oh, ow, _ = out_meta[0]
    work = np.empty((n, oh, ow) + tuple(wshape[:3]), dt)
    s, d = params["strides"], params["dilations"]
    return lambda x, w, out: _conv(x, w, s, d, out=out, work=work)


def _backprop_input_kernel(metas, out_meta, params, ins, shared):
    (gshape, dt), (wshape, _) = metas
    part = np.empty((int(np.prod(gshape[:3])), wshape[2]), dt)
    shape, s, d = params["shape"], params["strides"], params["dilations"]
    return lambda g, w, out: _backprop_input(g, w, shape, s, d, out=out, part=part)


def _backprop_filter_kernel(metas, out_meta, params, ins, shared):
    (xshape, dt), (gshape, _) = metas
    (kh, kw), cin = params["ksize"], xshape[3]
    n, oh, ow, _ = gshape
    one_gemm = kh * kw * cin <= _ONE_GEMM_MAX_K
    work = np.empty((n, oh, ow, kh, kw, cin) if one_gemm else (n, oh, ow, cin), dt)
    k, s, d = params["ksize"], params["strides"], params["dilations"]
    return lambda x, g, out: _backprop_filter(x, g, k, s, d, out=out, work=work)


PLAN_KERNELS = {"conv2d": _conv_kernel, "conv2d_backprop_input": _backprop_input_kernel,
                "conv2d_backprop_filter": _backprop_filter_kernel}
