"""Neural-network functions (``tp.nn.relu``, ``tp.nn.conv2d``, ...), composed from primitives.

Only ``relu``, ``softplus``, the window maximum of pooling and the sparse softmax cross-entropy
are primitives of their own (for speed, numerical stability or TensorFlow's tie rule);
everything else here carries no derivative rule. Activations live in :mod:`activations`.
"""
from __future__ import annotations

import numpy as np

from .. import math_ops, ops
from .. import devices as _device
from .._backend import array_module
from .. import primitives as P
from .. import primitives_ext as PX
from ..conv import conv2d_backprop_input_p, conv2d_p
from ..errors import InvalidArgumentError
from ..recording import derived
from ..symdim import plain
from ..tensor import _TRACE
from ..tensor import Tensor, convert_to_tensor

__all__ = ["relu", "sigmoid", "softmax", "log_softmax", "sparse_softmax_cross_entropy_with_logits",
           "softmax_cross_entropy_with_logits", "sigmoid_cross_entropy_with_logits", "conv2d",
           "conv2d_transpose",
           "max_pool2d", "avg_pool2d", "max_pool", "avg_pool", "dropout", "bias_add",
           "embedding_lookup", "compute_average_loss", "top_k"]

relu = ops.relu
sigmoid = ops.sigmoid
top_k = math_ops.top_k


def _shifted(logits: Tensor, axis: int) -> Tensor:
    # Subtracting the (constant) max changes neither softmax nor its gradient, and keeps exp
    # from overflowing.
    return ops.subtract(logits, ops.stop_gradient(ops.reduce_max(logits, axis, keepdims=True)))


def softmax(logits, axis: int = -1) -> Tensor:
    z = ops.exp(_shifted(convert_to_tensor(logits), axis))
    return ops.divide(z, ops.reduce_sum(z, axis, keepdims=True))


def log_softmax(logits, axis: int = -1) -> Tensor:
    z = _shifted(convert_to_tensor(logits), axis)
    return ops.subtract(z, ops.log(ops.reduce_sum(ops.exp(z), axis, keepdims=True)))


def sparse_softmax_cross_entropy_with_logits(labels, logits) -> Tensor:
    """Per-example cross-entropy of integer ``labels`` (shape ``logits.shape[:-1]``)."""
    logits = convert_to_tensor(logits)
    labels = convert_to_tensor(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"sparse_softmax_cross_entropy_with_logits: labels must be integers, "
                        f"got {labels.dtype}")
    if logits.dtype.kind != "f":
        raise TypeError(f"sparse_softmax_cross_entropy_with_logits: logits must be float, got "
                        f"{logits.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"sparse_softmax_cross_entropy_with_logits: labels shape {labels.shape}"
                         f" must equal logits shape without its last axis, {logits.shape[:-1]}")
    lv = plain(labels._value)
    n_classes = logits.shape[-1]
    if type(lv) is not np.ndarray:
        # On a device, as TensorFlow on a GPU: the labels are not read on the host; a label out
        # of range gives a NaN loss row (checked on the device, computed with label 0).
        bad = derived(_out_of_range, labels, n=n_classes)
        losses = P.sparse_softmax_xent_p(logits, derived(_zero_where, labels, bad))
        return ops.where(bad, derived(_nans_like, losses), losses)
    if lv.size and (int(lv.min()) < 0 or int(lv.max()) >= n_classes):
        raise InvalidArgumentError(f"sparse_softmax_cross_entropy_with_logits: labels must lie in "
                         f"[0, {n_classes}), got values from {int(lv.min())} to {int(lv.max())}")
    return P.sparse_softmax_xent_p(logits, labels)


def _out_of_range(lv, n: int):
    return (lv < 0) | (lv >= n)


def _zero_where(lv, bad):
    return lv * ~bad


def _nans_like(a):
    return array_module(a).full_like(a, np.nan)


def softmax_cross_entropy_with_logits(labels, logits, axis: int = -1) -> Tensor:
    """Cross-entropy of a probability distribution ``labels`` (differentiable in both)."""
    logits = convert_to_tensor(logits)
    labels = ops.cast(convert_to_tensor(labels), logits.dtype)
    if labels.shape != logits.shape:
        raise ValueError(f"softmax_cross_entropy_with_logits: labels shape {labels.shape} must "
                         f"equal logits shape {logits.shape}")
    return ops.negative(ops.reduce_sum(ops.multiply(labels, log_softmax(logits, axis)), axis))


def sigmoid_cross_entropy_with_logits(labels=None, logits=None) -> Tensor:
    """Elementwise ``-z log(sigmoid(x)) - (1 - z) log(1 - sigmoid(x))`` for logits ``x`` and
    targets ``z`` in [0, 1], computed as ``max(x, 0) - x z + log(1 + exp(-|x|))``."""
    if labels is None or logits is None:
        raise ValueError("sigmoid_cross_entropy_with_logits needs both labels= and logits=")
    x = convert_to_tensor(logits)
    if x.dtype.kind != "f":
        raise TypeError(f"sigmoid_cross_entropy_with_logits: logits must be float, got {x.dtype}")
    z = ops.cast(convert_to_tensor(labels), x.dtype)
    if z.shape != x.shape:
        raise ValueError(f"sigmoid_cross_entropy_with_logits: labels shape {z.shape} must equal "
                         f"logits shape {x.shape}")
    # Written with where (as TensorFlow does) so the derivative at x = 0 is sigmoid(0) - z.
    nonneg = ops.greater_equal(x, 0)
    zeros = ops.zeros_like(x)
    relu_logits = ops.where(nonneg, x, zeros)
    neg_abs = ops.where(nonneg, ops.negative(x), x)
    return ops.add(ops.subtract(relu_logits, ops.multiply(x, z)), ops.log1p(ops.exp(neg_abs)))


def bias_add(value, bias) -> Tensor:
    """``value + bias`` with ``bias`` 1-D, matching the last axis of ``value`` (NHWC)."""
    x = convert_to_tensor(value)
    b = bias if isinstance(bias, Tensor) else convert_to_tensor(bias, x.dtype)
    if b.ndim != 1 or x.ndim < 2 or x.shape[-1] != b.shape[0]:
        raise InvalidArgumentError(f"bias_add: bias must be 1-D with the size of value's last "
                                   f"axis; got bias {b.shape} for value {x.shape}")
    return ops.add(x, b)


def embedding_lookup(params, ids) -> Tensor:
    """Rows of ``params`` at integer ``ids`` (any shape): ``params[ids]``; repeated ids add up
    in the gradient."""
    return ops.gather(params, ids, axis=0)


def _pair(v, name: str) -> tuple[int, int]:
    v = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(v) == 4:  # TensorFlow's [1, h, w, 1] form
        v = v[1:3]
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"{name} must be a positive int or (h, w), got {v}")
    return int(v[0]), int(v[1])


def _same_padding(x: Tensor, ksize, strides, fill) -> Tensor:
    pads = []
    for n, k, s in zip(x.shape[1:3], ksize, strides):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    if not any(lo or hi for lo, hi in pads):
        return x
    return ops.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)


def _windows(x: Tensor, ksize, strides, padding: str, fill, op: str,
             dilations=(1, 1)) -> Tensor:
    x = _padded(x, ksize, strides, padding, fill, op, dilations)
    if tuple(dilations) == (1, 1):
        return P.extract_patches_p(x, ksize=ksize, strides=strides)
    return P.extract_patches_p(x, ksize=ksize, strides=strides, dilations=tuple(dilations))


def _padded(x: Tensor, ksize, strides, padding: str, fill, op: str, dilations) -> Tensor:
    """``x`` checked and, for ``"SAME"``, padded so that VALID windows cover it."""
    if x.ndim != 4:
        raise ValueError(f"{op} expects NHWC input of rank 4, got shape {x.shape}")
    padding = padding.upper()
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"{op}: padding must be 'VALID' or 'SAME', got {padding!r}")
    span = tuple((k - 1) * d + 1 for k, d in zip(ksize, dilations))  # a dilated window's extent
    if padding == "SAME":
        x = _same_padding(x, span, strides, fill)
    if x.shape[1] < span[0] or x.shape[2] < span[1]:
        raise ValueError(f"{op}: window {span} is larger than the input {x.shape[1:3]}")
    return x


def conv2d(input, filters, strides=1, padding: str = "VALID", data_format: str = "NHWC",
           dilations=1) -> Tensor:
    """2-D convolution (cross-correlation, like TensorFlow) in NHWC.

    ``filters`` has shape (kh, kw, in_channels, out_channels); ``dilations`` spreads the
    filter's taps ``d - 1`` pixels apart (atrous convolution). Forward: window extraction and
    one matmul (im2col); gradients: one GEMM per filter tap (see ``tapeflow.conv``).
    """
    if data_format != "NHWC":
        raise ValueError(f"conv2d: only data_format='NHWC' is supported, got {data_format!r}")
    x = convert_to_tensor(input)
    w = convert_to_tensor(filters)
    if w.ndim != 4:
        raise ValueError(f"conv2d: filters must have shape (kh, kw, in, out), got {w.shape}")
    if x.ndim == 4 and x.shape[-1] != w.shape[2]:
        raise ValueError(f"conv2d: input has {x.shape[-1]} channels (shape {x.shape}) but "
                         f"filters expect {w.shape[2]} (shape {w.shape})")
    if x.dtype != w.dtype:
        raise TypeError(f"conv2d: input is {x.dtype} but filters are {w.dtype}")
    strides, dilations = _pair(strides, "strides"), _pair(dilations, "dilations")
    x = _padded(x, w.shape[:2], strides, padding, 0, "conv2d", dilations)
    # One primitive whose rules are GEMM-shaped (framework/conv.py): no patch-sized gradient.
    return conv2d_p(x, w, strides=strides, dilations=dilations)


def conv2d_transpose(input, filters, output_shape, strides=1, padding: str = "SAME",
                     data_format: str = "NHWC", dilations=1) -> Tensor:
    """The transpose of :func:`conv2d` (``tf.nn.conv2d_transpose``): the input gradient of a
    convolution of an ``output_shape`` image, for output gradient ``input``. ``filters`` has
    shape ``(kh, kw, output_channels, in_channels)``, as TensorFlow's."""
    if data_format != "NHWC":
        raise ValueError(f"conv2d_transpose: only data_format='NHWC' is supported, got "
                         f"{data_format!r}")
    x, w = convert_to_tensor(input), convert_to_tensor(filters)
    out = tuple(ops._shape_arg(output_shape))
    if w.ndim != 4 or x.ndim != 4 or len(out) != 4 or x.shape[-1] != w.shape[3] \
            or out[-1] != w.shape[2]:
        raise ValueError(f"conv2d_transpose: input {x.shape}, filters {w.shape} (kh, kw, out, "
                         f"in) and output_shape {out} do not fit")
    if x.dtype != w.dtype:
        raise TypeError(f"conv2d_transpose: input is {x.dtype} but filters are {w.dtype}")
    strides, dilations = _pair(strides, "strides"), _pair(dilations, "dilations")
    span = tuple((k - 1) * d + 1 for k, d in zip(w.shape[:2], dilations))
    pads = [(0, 0), (0, 0)]
    if padding.upper() == "SAME":
        for i, (n, k, s) in enumerate(zip(out[1:3], span, strides)):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads[i] = (total // 2, total - total // 2)
    elif padding.upper() != "VALID":
        raise ValueError(f"conv2d_transpose: padding must be 'VALID' or 'SAME', got {padding!r}")
    padded = (out[0], out[1] + sum(pads[0]), out[2] + sum(pads[1]), out[3])
    want = tuple((p - k) // s + 1 for p, k, s in zip(padded[1:3], span, strides))
    if tuple(x.shape[1:3]) != want:
        raise ValueError(f"conv2d_transpose: output_shape {out} with strides {strides} and "
                         f"{padding} padding is the transpose of a {want} image, not of the "
                         f"input's {tuple(x.shape[1:3])}")
    y = conv2d_backprop_input_p(x, w, shape=padded, strides=strides, dilations=dilations)
    if pads == [(0, 0), (0, 0)]:
        return y
    (t, _), (le, _) = pads
    return y[:, t:t + out[1], le:le + out[2], :]


def max_pool2d(input, ksize, strides=None, padding: str = "VALID") -> Tensor:
    """Max pooling in NHWC. Ties send the whole gradient to the first maximum of the window
    (TensorFlow's MaxPoolGrad), unlike ``reduce_max``, which shares it."""
    x = convert_to_tensor(input)
    ksize = _pair(ksize, "ksize")
    strides = ksize if strides is None else _pair(strides, "strides")
    if x.ndim == 4 and padding.upper() == "VALID" and ksize == strides \
            and x.shape[1] % ksize[0] == 0 and x.shape[2] % ksize[1] == 0:
        # Non-overlapping windows tile the image: a reshape exposes them without copying.
        n, h, w, c = x.shape
        tiles = ops.reshape(x, (n, h // ksize[0], ksize[0], w // ksize[1], ksize[1], c))
        return PX.window_max(tiles, axis=(2, 4))
    # Overlapping windows: max and gradient on a strided view of the (padded) image.
    x = _padded(x, ksize, strides, padding, -np.inf, "max_pool2d", (1, 1))
    return PX.max_pool(x, ksize, strides)


def avg_pool2d(input, ksize, strides=None, padding: str = "VALID") -> Tensor:
    """Average pooling in NHWC. With ``"SAME"`` padding each window averages only the input
    pixels it covers (padding is not counted), as TensorFlow does."""
    x = convert_to_tensor(input)
    ksize = _pair(ksize, "ksize")
    strides = ksize if strides is None else _pair(strides, "strides")
    patches = _windows(x, ksize, strides, padding, 0, "avg_pool2d")
    total = ops.reduce_sum(patches, axis=(3, 4))
    if padding.upper() == "VALID":
        return ops.multiply(total, 1.0 / (ksize[0] * ksize[1]))
    ones = Tensor(array_module(x._value).ones((1,) + x.shape[1:3] + (1,), dtype=x.dtype))
    counts = ops.reduce_sum(_windows(ones, ksize, strides, padding, 0, "avg_pool2d"),
                            axis=(3, 4))
    return ops.divide(total, counts)


def _four_d(pool, name: str):
    def op(input, ksize, strides=None, padding: str = "VALID", data_format: str = "NHWC"):
        x = convert_to_tensor(input)
        if x.ndim != 4 or data_format != "NHWC":
            raise ValueError(f"{name}: only 2-D pooling of NHWC input is supported, got shape "
                             f"{x.shape} with data_format={data_format!r}")
        return pool(x, ksize, strides, padding)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"``tf.nn.{name}`` for NHWC input: :func:`{pool.__name__}`."
    return op


max_pool = _four_d(max_pool2d, "max_pool")
avg_pool = _four_d(avg_pool2d, "avg_pool")


def compute_average_loss(per_example_loss, sample_weight=None,
                         global_batch_size: int | None = None) -> Tensor:
    """``sum(per_example_loss * sample_weight) / global_batch_size`` (default: the number of
    examples here), TensorFlow's helper for custom training loops."""
    loss = convert_to_tensor(per_example_loss)
    if sample_weight is not None:
        loss = ops.multiply(loss, ops.cast(convert_to_tensor(sample_weight), loss.dtype))
    if global_batch_size is None:  # (traced per call where the batch is a None dimension)
        return ops.divide(ops.reduce_sum(loss), ops.shape_constant(loss, _leading, loss.dtype))
    n = int(global_batch_size)
    if n <= 0:
        raise ValueError(f"compute_average_loss: global_batch_size must be positive, got {n}")
    return ops.divide(ops.reduce_sum(loss), float(n))


def _leading(shape: tuple) -> float:
    return float(shape[0]) if shape else 1.0


def dropout(x, rate: float, noise_shape=None, seed=None) -> Tensor:
    """Zero each element with probability ``rate`` and scale the rest by 1/(1-rate)."""
    from .. import random as tp_random

    x = convert_to_tensor(x)
    if not 0 <= rate < 1:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    if rate == 0:
        return x
    noise = None if noise_shape is None else tuple(noise_shape)

    def draw(xv):
        # (derived from x: a tp.function replay draws a fresh mask on every call, of the
        # call's shape; the trace's own draws are undone) drawn by the seeded host
        # generator, then copied to x's device
        if _TRACE:
            return tp_random.undone(draw_now, xv)
        return draw_now(xv)

    def draw_now(xv):
        shape = xv.shape if noise is None else noise
        drawn = tp_random.generator(seed).uniform(0.0, 1.0, size=shape).astype(xv.dtype)
        keep = _device.to_device(drawn, _device.device_of(xv)) >= rate
        return keep.astype(xv.dtype) / xv.dtype.type(1 - rate)
    return ops.multiply(x, derived(draw, x))
