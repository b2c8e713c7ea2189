"""2-D convolution as primitives with GEMM-shaped rules (NHWC, VALID on an already padded input).

``conv2d`` runs its forward as im2col + one GEMM (the same arithmetic as composing
``extract_patches``, ``reshape`` and ``matmul``). Its rules avoid the composition's full-size
temporaries:

* the input gradient is a *shifted GEMM*: for each filter tap ``(i, j)``,
  ``g @ W[i, j].T`` (a ``(N*OH*OW, Cin)`` block) is added into the strided window of ``dx``
  it came from -- no ``(N*OH*OW, kh*kw*Cin)`` patch gradient and no scatter pass over it;
* the filter gradient is one GEMM per tap on that tap's input window, copied into one reused
  buffer of ``N*OH*OW*Cin`` elements rather than the whole patch matrix;
* with few patch columns (``kh*kw*Cin <= 32``, a first layer) per-tap GEMMs would be
  matrix-vector products, so both gradients use one GEMM on the (small) patch matrix or its
  gradient; with one input channel the patch matrix is kept transposed, one contiguous row
  per filter tap, in the forward and the filter gradient.

Everything runs over the batch in cache-sized blocks, in workspaces a ``tp.function`` plan
allocates once (``PLAN_KERNELS``).

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


# Filter and input gradients with at most this many patch columns (kh*kw*Cin) use one GEMM on
# the patch matrix (or its gradient): for the MNIST CNN's first layer (128x28x28x1 -> 32, 3x3,
# one thread) nine per-tap GEMMs took 46 ms for the filter gradient, one GEMM 10 ms; the input
# gradient's nine per-tap GEMMs are matrix-vector products that each read all of g.
_ONE_GEMM_MAX_K = 32
# Convolutions run over the batch in blocks whose patch matrix (or tap window) stays within
# this many bytes, so each block's copy is still in cache when its GEMM reads it. On the MNIST
# CNN's second layer (one thread, 1 MiB L2) the forward fell from 124 to 58 ms, the input
# gradient from 116 to 76 ms and the filter gradient from 100 to 62 ms against whole-batch
# temporaries (medians of 5, interleaved); 256 KiB-2 MiB blocks were all close.
_BLOCK_BYTES = 512 << 10


def _patches(x, ksize, strides, dilations, out=None):
    """``extract_patches`` of ``x``, into ``out`` if given (the same copies)."""
    if out is None:
        return P.extract_patches_p.fwd(x, ksize, strides, dilations)
    oh, ow = out.shape[1:3]
    for i in range(ksize[0]):
        for j in range(ksize[1]):
            out[:, :, :, i, j, :] = x[_window(i, j, oh, ow, strides, dilations)]
    return out


def _taps(x, ksize, strides, dilations, out):
    """One input channel: the patch matrix transposed, ``out`` (kh*kw, m, oh, ow), one
    contiguous row per filter tap (nine plain window copies for 3x3, no interleaving)."""
    oh, ow = out.shape[2:]
    for i in range(ksize[0]):
        for j in range(ksize[1]):
            out[i * ksize[1] + j] = x[_window(i, j, oh, ow, strides, dilations)][..., 0]
    return out


def _chunk(n: int, per_image: int) -> int:
    """Images per block so that a block's largest temporary stays within ``_BLOCK_BYTES``."""
    return max(1, min(n, _BLOCK_BYTES // max(per_image, 1)))


def _blocks(n: int, oh: int, ow: int, width: int, itemsize: int) -> tuple[int, int]:
    """(images per block, elements of the block's workspace) for ``width`` values per output
    pixel: what the eager functions allocate and the plan kernels allocate once."""
    c = _chunk(n, oh * ow * width * itemsize)
    return c, c * oh * ow * width


def _work(xp, work, elements: int, dtype):
    """The first ``elements`` of the flat workspace ``work`` (made now if None)."""
    return xp.empty(elements, dtype=dtype) if work is None else work.reshape(-1)[:elements]


# The 1-channel first layer (MNIST's 3x3 -> 32): its forward is a K=9 GEMM whose time is
# writing the output (one thread, 128 images: the GEMM within 2x of filling the output array,
# nine broadcast multiply-adds 10-20x slower, a banded "Toeplitz" GEMM over image rows or
# block-diagonal GEMMs over 2-8 pixels slower still). What helps is the patch layout: one
# contiguous row per tap (plain window copies), read by the GEMM as a transposed operand.
def _conv(x, w, strides, dilations, out=None, work=None):
    xp = array_module(x)
    kh, kw, cin, cout = w.shape
    k = kh * kw * cin
    n = x.shape[0]
    oh, ow = _out_hw(x.shape, (kh, kw), strides, dilations)
    if out is None:
        out = xp.empty((n, oh, ow, cout), dtype=x.dtype)
    c, size = _blocks(n, oh, ow, k, x.itemsize)
    work = _work(xp, work, size, x.dtype)
    w2 = w.reshape(k, cout)
    for s in range(0, n, c):
        m = min(n, s + c) - s
        block = work[:m * oh * ow * k]
        if cin == 1:
            taps = _taps(x[s:s + m], (kh, kw), strides, dilations, block.reshape(k, m, oh, ow))
            cols = taps.reshape(k, m * oh * ow).T
        else:
            cols = _patches(x[s:s + m], (kh, kw), strides, dilations,
                            block.reshape(m, oh, ow, kh, kw, cin)).reshape(m * oh * ow, k)
        xp.matmul(cols, w2, out=out[s:s + m].reshape(m * oh * ow, cout))
    return out


def _backprop_input(g, w, shape, strides, dilations, out=None, work=None):
    xp = array_module(g)
    kh, kw, cin, cout = w.shape
    n, oh, ow, _ = g.shape
    if out is None:
        out = xp.zeros(shape, dtype=g.dtype)
    else:
        out[...] = 0
    k = kh * kw * cin
    one_gemm = k <= _ONE_GEMM_MAX_K
    c, size = _blocks(n, oh, ow, k if one_gemm else cin, g.itemsize)
    work = _work(xp, work, size, g.dtype)
    for s in range(0, n, c):
        m = min(n, s + c) - s
        g2, dx = g[s:s + m].reshape(m * oh * ow, cout), out[s:s + m]
        block = work[:m * oh * ow * (k if one_gemm else cin)]
        if one_gemm:
            # Few patch columns (a first layer): the per-tap GEMMs would be matrix-vector
            # products each reading all of g; one GEMM makes the block's patch gradient and
            # each tap's slice of it is added into the window it came from.
            cols = block.reshape(m * oh * ow, k)
            xp.matmul(g2, w.reshape(k, cout).T, out=cols)
            cols = cols.reshape(m, oh, ow, kh, kw, cin)
            for i in range(kh):
                for j in range(kw):
                    dx[_window(i, j, oh, ow, strides, dilations)] += cols[:, :, :, i, j]
            continue
        part = block.reshape(m * oh * ow, cin)
        view = part.reshape(m, oh, ow, cin)
        for i in range(kh):
            for j in range(kw):
                xp.matmul(g2, w[i, j].T, out=part)
                dx[_window(i, j, oh, ow, strides, dilations)] += view
    return out


def _backprop_filter(x, g, ksize, strides, dilations, out=None, work=None, part=None):
    xp = array_module(x)
    (kh, kw), cin = ksize, x.shape[3]
    n, oh, ow, cout = g.shape
    k = kh * kw * cin
    if out is None:
        out = xp.empty((kh, kw, cin, cout), dtype=g.dtype)
    one_gemm = k <= _ONE_GEMM_MAX_K
    c, size = _blocks(n, oh, ow, k if one_gemm else cin, x.itemsize)
    work = _work(xp, work, size, x.dtype)
    if part is None:
        part = xp.empty((k, cout) if one_gemm else (cin, cout), dtype=g.dtype)
    for s in range(0, n, c):
        m = min(n, s + c) - s
        g2 = g[s:s + m].reshape(m * oh * ow, cout)
        if one_gemm:
            # Few input channels (a first layer): per-tap GEMMs would be matrix-vector
            # products; the block's patch matrix is small, so one GEMM does it.
            block = work[:m * oh * ow * k]
            if cin == 1:
                cols_t = _taps(x[s:s + m], ksize, strides, dilations,
                               block.reshape(k, m, oh, ow)).reshape(k, m * oh * ow)
            else:
                cols_t = _patches(x[s:s + m], ksize, strides, dilations,
                                  block.reshape(m, oh, ow, kh, kw, cin)).reshape(
                                      m * oh * ow, k).T
            dst = out.reshape(k, cout)
            xp.matmul(cols_t, g2, out=dst if s == 0 else part)
            if s:
                dst += part
            continue
        tap = work[:m * oh * ow * cin].reshape(m, oh, ow, cin)
        tap2 = tap.reshape(m * oh * ow, cin)
        for i in range(kh):
            for j in range(kw):
                tap[...] = x[s:s + m][_window(i, j, oh, ow, strides, dilations)]
                xp.matmul(tap2.T, g2, out=out[i, j] if s == 0 else part)
                if s:
                    out[i, j] += part
    return out


def _out_hw(shape, ksize, strides, dilations) -> tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw) = ksize, strides, dilations
    return (shape[1] - (kh - 1) * dh - 1) // sh + 1, (shape[2] - (kw - 1) * dw - 1) // sw + 1


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
def _contiguous(kernel, metas):
    """``kernel`` with its array inputs made C-contiguous in buffers kept for the purpose: a
    gradient arriving as a strided view (the slice a SAME padding's gradient takes) would
    otherwise be copied by a reshape into a new array on every replay."""
    bufs = [None] * len(metas)

    def run(*arrays, out):
        fixed = []
        for i, a in enumerate(arrays):
            if not a.flags.c_contiguous:
                if bufs[i] is None:
                    bufs[i] = np.empty(metas[i][0], metas[i][1])
                np.copyto(bufs[i], a)
                a = bufs[i]
            fixed.append(a)
        return kernel(*fixed, out=out)
    return run


def _conv_kernel(metas, out_meta, params, ins, shared):
    (xshape, dt), (wshape, _) = metas
    n, oh, ow, _ = out_meta[0]
    work = np.empty(_blocks(n, oh, ow, int(np.prod(wshape[:3])), np.dtype(dt).itemsize)[1], dt)
    s, d = params["strides"], params["dilations"]
    return _contiguous(lambda x, w, out: _conv(x, w, s, d, out=out, work=work), metas)


def _backprop_input_kernel(metas, out_meta, params, ins, shared):
    (gshape, dt), (wshape, _) = metas
    n, oh, ow, _ = gshape
    k = int(np.prod(wshape[:3]))
    width = k if k <= _ONE_GEMM_MAX_K else wshape[2]
    work = np.empty(_blocks(n, oh, ow, width, np.dtype(dt).itemsize)[1], dt)
    shape, s, d = params["shape"], params["strides"], params["dilations"]
    return _contiguous(lambda g, w, out: _backprop_input(g, w, shape, s, d, out=out,
                                                         work=work), metas)


def _backprop_filter_kernel(metas, out_meta, params, ins, shared):
    (xshape, dt), (gshape, _) = metas
    (kh, kw), cin = params["ksize"], xshape[3]
    n, oh, ow, cout = gshape
    k = kh * kw * cin
    width = k if k <= _ONE_GEMM_MAX_K else cin
    work = np.empty(_blocks(n, oh, ow, width, np.dtype(dt).itemsize)[1], dt)
    part = np.empty((width, cout), dt)
    ks, s, d = params["ksize"], params["strides"], params["dilations"]
    return _contiguous(lambda x, g, out: _backprop_filter(x, g, ks, s, d, out=out, work=work,
                                                          part=part), metas)


PLAN_KERNELS = {"conv2d": _conv_kernel, "conv2d_backprop_input": _backprop_input_kernel,
                "conv2d_backprop_filter": _backprop_filter_kernel}
