"""Convolution and pooling paths: the 1-channel (small patch) GEMM layouts and the max-pooling
mask kept from the forward, against references, finite differences and tp.function replays."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import conv as CV
from tapeflow import primitives_ext as PX
from tapeflow.testing import check_grads

R = np.random.default_rng(7)


def _reference(x, w, g, strides, dilations):
    """conv2d and both of its gradients through extract_patches and einsum, in float64."""
    kh, kw = w.shape[:2]
    pat = tp.PRIMITIVES["extract_patches"].fwd(x, (kh, kw), strides, dilations)
    y = np.einsum("nhwijc,ijco->nhwo", pat, w)
    gw = np.einsum("nhwijc,nhwo->ijco", pat, g)
    gpat = np.einsum("nhwo,ijco->nhwijc", g, w)
    gx = tp.PRIMITIVES["patches_transpose"].fwd(gpat, x.shape, (kh, kw), strides, dilations)
    return y, gx, gw


# cin 1: the per-tap layout; cin 3 (K = 27): one GEMM on the patch matrix; cin 8 (K = 72):
# one GEMM per filter tap.
@pytest.mark.parametrize("cin", [1, 3, 8])
@pytest.mark.parametrize("ksize,strides,dilations", [((3, 3), (1, 1), (1, 1)),
                                                      ((2, 3), (2, 1), (1, 2)),
                                                      ((3, 2), (1, 3), (2, 1))])
@pytest.mark.parametrize("block_bytes", [None, 1])  # whole batch, one image per block
def test_every_layout_matches_the_patch_reference(monkeypatch, cin, ksize, strides, dilations,
                                                  block_bytes):
    if block_bytes is not None:
        monkeypatch.setattr(CV, "_BLOCK_BYTES", block_bytes)
    x = R.normal(size=(3, 9, 10, cin))
    w = R.normal(size=ksize + (cin, 4))
    oh, ow = CV._out_hw(x.shape, ksize, strides, dilations)
    g = R.normal(size=(3, oh, ow, 4))
    y, gx, gw = _reference(x, w, g, strides, dilations)
    np.testing.assert_allclose(CV._conv(x, w, strides, dilations), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(CV._backprop_input(g, w, x.shape, strides, dilations), gx,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(CV._backprop_filter(x, g, ksize, strides, dilations), gw,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ksize,strides,dilations,padding", [
    (3, 1, 1, "VALID"), (3, 2, 1, "SAME"), (3, 1, 2, "SAME"), ((2, 3), (2, 1), 1, "VALID"),
    (3, (1, 2), (2, 1), "VALID")])
def test_one_channel_conv2d_gradients_to_second_order(ksize, strides, dilations, padding):
    kh, kw = (ksize, ksize) if isinstance(ksize, int) else ksize
    x = R.normal(size=(2, 7, 8, 1))
    w = R.normal(size=(kh, kw, 1, 3))
    check_grads(lambda a, b: tp.nn.conv2d(a, b, strides=strides, padding=padding,
                                          dilations=dilations), [x, w], order=2)


def test_one_channel_gradient_primitives_to_second_order():
    s, d = (2, 1), (1, 2)
    x = R.normal(size=(2, 7, 8, 1))
    w = R.normal(size=(3, 2, 1, 3))
    g = R.normal(size=(2,) + CV._out_hw(x.shape, (3, 2), s, d) + (3,))
    check_grads(lambda a, b: CV.conv2d_backprop_input_p(a, b, shape=x.shape, strides=s,
                                                        dilations=d), [g, w], order=2)
    check_grads(lambda a, b: CV.conv2d_backprop_filter_p(a, b, ksize=(3, 2), strides=s,
                                                         dilations=d), [x, g], order=2)


def _first_max_pool_grad(x, k, s, g):
    """Max pooling's input gradient by loops: each window's upstream value goes to its first
    maximum in row-major order (none if the window's maximum is NaN)."""
    out = np.zeros_like(x)
    n, oh, ow, c = g.shape
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    win = x[b, i * s:i * s + k, j * s:j * s + k, ch]
                    hit = np.flatnonzero(win.reshape(-1) == win.max())
                    if hit.size:
                        p, q = divmod(int(hit[0]), k)
                        out[b, i * s + p, j * s + q, ch] += g[b, i, j, ch]
    return out


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (3, 2), (1, 1)])
def test_pooling_ties_send_each_window_gradient_to_its_first_maximum(k, s):
    # Small integers: most windows hold ties, many all-equal (as zeros after a relu do).
    x = R.integers(0, 3, size=(2, 7, 7, 3)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan  # a NaN window passes no gradient
    xt = tp.constant(x)
    with tp.GradientTape() as tape:
        tape.watch(xt)
        y = tp.nn.max_pool2d(xt, k, s)
    g = R.integers(-9, 10, size=y.shape).astype(np.float32)  # (overlaps add up exactly)
    got = tape.gradient(y, xt, output_gradients=tp.constant(g)).numpy()
    np.testing.assert_array_equal(got, _first_max_pool_grad(x, k, s, g))
    if k == 2:  # (the NaN is in windows of every case but k=1's)
        assert np.isnan(y.numpy()[0, 0, 0, 0])


def test_pooling_gradients_to_second_order_on_both_window_paths():
    x = R.permutation(2 * 6 * 6 * 2).reshape(2, 6, 6, 2) * 0.1
    check_grads(lambda a: tp.nn.max_pool2d(a, 2), [x], order=2)               # tiles
    check_grads(lambda a: tp.nn.max_pool2d(a, 3, 2, "SAME"), [x], order=2)    # patches


@pytest.mark.parametrize("k,s,padding", [(3, 2, "VALID"), (3, 1, "SAME"), (2, 1, "VALID")])
def test_overlapping_pooling_gradient_equals_the_patch_composition_bit_for_bit(k, s, padding):
    # The old path: extract_patches, a float mask times g, then extract_patches' transpose.
    x = R.integers(0, 4, size=(2, 7, 6, 3)).astype(np.float32)
    xt = tp.constant(x)
    with tp.GradientTape() as tape:
        tape.watch(xt)
        y = tp.nn.max_pool2d(xt, k, s, padding)
    g = R.normal(size=y.shape).astype(np.float32)
    got = tape.gradient(y, xt, output_gradients=tp.constant(g)).numpy()
    xp = tp.nn.functional._padded(xt, (k, k), (s, s), padding, -np.inf, "max_pool2d", (1, 1))
    pat = tp.PRIMITIVES["extract_patches"].fwd(xp.numpy(), (k, k), (s, s))
    mask = PX._first_max_mask(pat, pat.max(axis=(3, 4)), (3, 4)).astype(np.float32)
    gpat = g[:, :, :, None, None, :] * mask
    want = tp.PRIMITIVES["patches_transpose"].fwd(gpat, xp.shape, (k, k), (s, s))
    if padding == "SAME":
        top, left = (xp.shape[1] - x.shape[1]) // 2, (xp.shape[2] - x.shape[2]) // 2
        want = want[:, top:top + x.shape[1], left:left + x.shape[2]]
    np.testing.assert_array_equal(got, want)


def test_the_mask_is_made_in_the_forward_and_only_when_a_tape_records(monkeypatch):
    calls = []
    made = PX._first_max_mask

    def counting(*args, **kwargs):
        calls.append(1)
        return made(*args, **kwargs)
    monkeypatch.setattr(PX, "_first_max_mask", counting)
    x = tp.constant(R.normal(size=(2, 4, 4, 3)))
    np.testing.assert_array_equal(tp.nn.max_pool2d(x, 2).numpy(),
                                  x.numpy().reshape(2, 2, 2, 2, 2, 3).max(axis=(2, 4)))
    assert calls == []                        # nothing records: no mask
    with tp.GradientTape() as tape:
        tape.watch(x)
        y = tp.nn.max_pool2d(x, 2)
    assert calls == [1]                       # made in the forward
    g = tape.gradient(y, x)
    assert calls == [1]                       # the sweep used the kept mask
    assert float(tp.reduce_sum(g)) == 2 * 2 * 2 * 3


def _cnn(seed=0):
    rng = np.random.default_rng(seed)
    return [tp.Variable(rng.normal(size=s).astype("f4") * 0.3)
            for s in [(3, 3, 1, 4), (4,), (2, 3, 1, 3), (3,), (3, 3, 4, 2), (2,)]]


def _cnn_grads(vs, x):
    """Gradients of a loss through 1-channel convolutions (strided, dilated, SAME) and
    max pooling with ties (relu zeros), for the Variables and the input image."""
    k1, b1, k2, b2, k3, b3 = vs
    with tp.GradientTape() as tape:
        tape.watch(x)
        h = tp.nn.relu(tp.nn.conv2d(x, k1) + b1)
        h = tp.nn.max_pool2d(h, 2)
        h2 = tp.nn.relu(tp.nn.conv2d(x, k2, strides=(2, 1), padding="SAME", dilations=(1, 2))
                        + b2)
        h2 = tp.nn.max_pool2d(h2, 3, 2, "SAME")
        h = tp.nn.conv2d(h, k3, padding="SAME") + b3
        loss = tp.reduce_sum(h * h) + tp.reduce_sum(h2 * h2)
    return [loss] + tape.gradient(loss, vs + [x])


def test_one_channel_cnn_gradients_replay_bit_for_bit_like_eager():
    vs = _cnn()
    traced = tp.function(lambda x: _cnn_grads(vs, x))
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = tp.constant(np.round(rng.normal(size=(3, 10, 9, 1)), 1).astype("f4"))
        eager = [t.numpy() for t in _cnn_grads(vs, x)]
        replay = [t.numpy() for t in traced(x)]
        for a, b in zip(eager, replay):
            np.testing.assert_array_equal(a, b)
    assert traced.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_one_channel_cnn_plan_step_allocates_no_full_size_array(padding):
    # convolutions and pooling (tiles and overlapping windows), with SAME padding too (the
    # plan pads into a buffer it keeps)
    k1, b1, k2, b2 = _cnn()[:4]
    side = 6 if padding == "SAME" else 5
    w = tp.Variable(np.full((side * side * 4, 2), 0.01, "f4"))

    @tp.function
    def step(x):
        with tp.GradientTape() as tape:
            h = tp.nn.relu(tp.nn.conv2d(x, k1, strides=2, padding=padding) + b1)
            h = tp.reshape(tp.nn.max_pool2d(h, 2, padding=padding), (x.shape[0], -1))
            h2 = tp.nn.conv2d(x, k2, strides=(1, 2), dilations=(2, 1), padding=padding) + b2
            h2 = tp.nn.max_pool2d(h2, 3, 2, padding)
            loss = tp.reduce_sum(h @ w) + tp.reduce_sum(h2 * h2)
        for v, g in zip([k1, b1, k2, b2, w], tape.gradient(loss, [k1, b1, k2, b2, w])):
            v.assign_sub(1e-3 * g)
        return loss
    x = tp.constant(np.random.default_rng(2).normal(size=(256, 21, 21, 1)).astype("f4"))
    for _ in range(3):
        step(x)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(3):
            step(x)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # The smallest full-size array is the tiled pooling mask, 256 x 10 x 10 x 4 bools =
    # 100 KiB (the first convolution's output is 400 KiB, its patch block 512 KiB, the
    # overlapping pooling's gradient 765 KiB); what remains is
    # NumPy's iterator buffers for broadcasting and casting ufuncs (8192 elements each: the
    # gradient's float32 x bool-mask product holds two) and small objects.
    assert peak < 80 * 1024, peak
