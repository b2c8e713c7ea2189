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


@primitive("conv2d", save_args=True)
def conv2d_p(x, w, strides, dilations):
    """Cross-correlation of NHWC ``x`` with ``w`` of shape (kh, kw, Cin, Cout), VALID."""
    kh, kw, cin, cout = w.shape
    patches = P.extract_patches_p.fwd(x, (kh, kw), strides, dilations)
    n, oh, ow = patches.shape[:3]
    out = patches.reshape(n * oh * ow, kh * kw * cin) @ w.reshape(kh * kw * cin, cout)
    return out.reshape(n, oh, ow, cout)


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
    xp = array_module(g)
    kh, kw, cin, cout = w.shape
    n, oh, ow, _ = g.shape
    dx = xp.zeros(shape, dtype=g.dtype)
    g2 = g.reshape(n * oh * ow, cout)
    part = xp.empty((n * oh * ow, cin), dtype=g.dtype)
    view = part.reshape(n, oh, ow, cin)
    for i in range(kh):
        for j in range(kw):
            xp.matmul(g2, w[i, j].T, out=part)
            dx[_window(i, j, oh, ow, strides, dilations)] += view
    return dx


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
    xp = array_module(x)
    (kh, kw), cin = ksize, x.shape[3]
    n, oh, ow, cout = g.shape
    g2 = g.reshape(n * oh * ow, cout)
    if kh * kw * cin <= _ONE_GEMM_MAX_K:
        # Few input channels (a first layer): the per-tap GEMMs would be matrix-vector
        # products; the whole patch matrix is small, so one GEMM does it.
        cols = P.extract_patches_p.fwd(x, (kh, kw), strides, dilations)
        return (cols.reshape(n * oh * ow, kh * kw * cin).T @ g2).reshape(kh, kw, cin, cout)
    dw = xp.empty((kh, kw, cin, cout), dtype=g.dtype)
    tap = xp.empty((n, oh, ow, cin), dtype=x.dtype)
    tap2 = tap.reshape(n * oh * ow, cin)
    for i in range(kh):
        for j in range(kw):
            tap[...] = x[_window(i, j, oh, ow, strides, dilations)]
            xp.matmul(tap2.T, g2, out=dw[i, j])
    return dw


@conv2d_backprop_filter_p.defvjp
def _(gy, ans, xs, shapes, needs, ksize, strides, dilations):
    # Bilinear in (x, g): <gy, F(x, g)> = <conv2d(x, gy), g>.
    x, g = xs
    return (conv2d_backprop_input_p(g, gy, shape=shapes[0], strides=strides,
                                    dilations=dilations) if needs[0] else None,
            conv2d_p(x, gy, strides=strides, dilations=dilations) if needs[1] else None)
