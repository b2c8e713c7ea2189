"""Convolutions computed over the batch in blocks give the whole-batch results."""
from __future__ import annotations

import numpy as np
import pytest

from tapeflow import conv as CV
from tapeflow.testing import check_grads


@pytest.mark.parametrize("cin,strides,dilations", [(3, (1, 1), (1, 1)), (5, (2, 1), (1, 2)),
                                                   (1, (1, 1), (1, 1))])
def test_blocked_convolution_matches_one_block(monkeypatch, cin, strides, dilations):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 9, 8, cin))
    w = rng.normal(size=(3, 2, cin, 4))
    whole = CV._conv(x, w, strides, dilations)
    g = rng.normal(size=whole.shape)
    whole_in = CV._backprop_input(g, w, x.shape, strides, dilations)
    whole_f = CV._backprop_filter(x, g, (3, 2), strides, dilations)
    monkeypatch.setattr(CV, "_BLOCK_BYTES", 1)  # one image per block
    assert CV._chunk(7, 100) == 1
    np.testing.assert_allclose(CV._conv(x, w, strides, dilations), whole, rtol=1e-12)
    np.testing.assert_allclose(CV._backprop_input(g, w, x.shape, strides, dilations),
                               whole_in, rtol=1e-12)
    np.testing.assert_allclose(CV._backprop_filter(x, g, (3, 2), strides, dilations), whole_f,
                               rtol=1e-12, atol=1e-12)
    check_grads(lambda a, b: CV.conv2d_p(a, b, strides=strides, dilations=dilations),
                [x[:3], w])
