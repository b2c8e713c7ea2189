"""Layers (``Dense``, ``Conv2D``, ``MaxPool2D``, ``Flatten``, ``Reshape``, ``Dropout``,
``Activation``) and the model builders ``mlp`` and ``mnist_cnn``.

Layers with weights create them at construction when the input size is given (``input_dim``,
``input_channels``), otherwise on their first call, from the input's last axis (Keras's lazy
build). Until then their ``variables`` list is empty, so an optimizer or checkpoint made from a
lazily built model would miss them: give the input size, or call ``Sequential.build``. The
builders always give it, so their models are complete the moment they exist.

Weights are float32 by default (``dtype=`` changes it). Inputs are converted to the layer's
dtype, float Tensors of another float dtype included (Keras casts a float64 input to a float32
kernel's dtype). ``input_shape=`` (Keras's first-layer argument, without the batch axis) builds
a layer at construction; a ``Sequential`` whose first layer has one is built as layers are added.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from .. import ops
from .._backend import array_module
from ..tensor import Tensor, Variable, as_dtype, convert_to_tensor
from ..op_names import public
from . import activations as A
from . import functional as F
from . import init
from .modules import Module, Sequential

__all__ = ["Dense", "Conv2D", "Conv2DTranspose", "MaxPool2D", "MaxPooling2D", "Flatten", "Reshape", "Dropout",
           "Activation", "get_activation", "mlp", "mnist_cnn"]

ActivationLike = str | Callable[[Tensor], Tensor] | None
Seed = int | np.random.Generator | None

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "relu": F.relu, "sigmoid": F.sigmoid, "tanh": ops.tanh, "softmax": F.softmax,
    "log_softmax": F.log_softmax, "linear": None, "gelu": A.gelu, "elu": A.elu, "selu": A.selu,
    "silu": A.silu, "swish": A.silu, "leaky_relu": A.leaky_relu, "relu6": A.relu6,
    "softplus": A.softplus, "softsign": A.softsign, "exponential": ops.exp,
}


def _shape_hint(input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """Keras's ``input_shape`` (no batch axis) as a tuple of ints (None for a size left open,
    ``(None, None, 3)`` for images of any size), or None."""
    if input_shape is None:
        return None
    if isinstance(input_shape, (int, np.integer)):
        return (int(input_shape),)
    return tuple(None if d is None else int(d) for d in input_shape)


def _as_layer_dtype(x: Any, dtype: np.dtype) -> Any:
    """Cast float inputs to the layer's float dtype (Keras autocasting); leave the rest."""
    if isinstance(x, Tensor):
        return ops.cast(x, dtype) if x.dtype.kind == "f" and x.dtype != dtype else x
    return x


def get_activation(activation: ActivationLike) -> Callable[[Tensor], Tensor] | None:
    """An activation by name (``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"softmax"``, ``"linear"``),
    a callable as is, or ``None`` (identity)."""
    if activation is None or callable(activation):
        return activation
    if isinstance(activation, str) and activation in _ACTIVATIONS:
        # the public function (tp.nn.relu, with its name= argument), not the one it wraps
        return public(_ACTIVATIONS[activation])
    raise ValueError(f"unknown activation {activation!r}; expected None, a callable or one of "
                     f"{sorted(_ACTIVATIONS)}")


def _reshape(x: Any, shape: tuple[int, ...]) -> Any:
    """Reshape a Tensor with the (differentiable) op; leave other arrays un-converted."""
    if isinstance(x, Tensor):
        return ops.reshape(x, shape)
    if not hasattr(x, "reshape"):
        x = np.asarray(x)
    return x.reshape(shape)


def _on_device(arr: np.ndarray, like: Any) -> Any:
    """Put a freshly initialised host array on the device of input ``like`` (lazy builds)."""
    value = like._value if isinstance(like, Tensor) else like
    xp = array_module(value)
    return arr if xp is np else xp.asarray(arr)


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    v = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"{what} must be a positive int or a pair (h, w), got {v}")
    return int(v[0]), int(v[1])


def _padding(padding: str, layer: str) -> str:
    p = str(padding).upper()
    if p not in ("VALID", "SAME"):
        raise ValueError(f"{layer}: padding must be 'valid' or 'same', got {padding!r}")
    return p


class _KernelLayer(Module):
    """What Dense and Conv2D share: kernel + optional bias, initializers, activation, lazy build.

    ``seed``: an int, a NumPy Generator, or ``None`` for ``tp.random``'s global generator.
    """

    def __init__(self, activation: ActivationLike, use_bias: bool,
                 kernel_initializer: str | Callable, bias_initializer: str | Callable,
                 dtype: str, seed: Seed, name: str | None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        self.kernel: Variable | None = None
        self.bias: Variable | None = None
        self.activation = get_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = init.get(kernel_initializer)
        self.bias_initializer = init.get(bias_initializer)
        self.dtype = as_dtype(dtype)
        self._seed = seed

    @property
    def built(self) -> bool:
        return self.kernel is not None

    def _create(self, shape: tuple, like: Any, bias_size: int | None = None) -> None:
        """Initialise ``kernel`` of ``shape`` and ``bias`` of its last dimension (or
        ``bias_size``) with Keras's fans."""
        rng = init.as_generator(self._seed)
        fan_in, fan_out = init.compute_fans(shape)
        w = self.kernel_initializer(shape, fan_in, fan_out, rng, self.dtype)
        self.kernel = Variable(_on_device(w, like), name="kernel")
        if self.use_bias:
            size = shape[-1] if bias_size is None else bias_size
            b = self.bias_initializer((size,), fan_in, fan_out, rng, self.dtype)
            self.bias = Variable(_on_device(b, like), name="bias")

    def _input(self, x: Any, rank: int, layout: str) -> Tensor:
        """``x`` in the layer's dtype, checked to be of ``rank``; builds the layer from its
        last axis on the first call."""
        x = _as_layer_dtype(x, self.dtype) if isinstance(x, Tensor) else \
            convert_to_tensor(x, self.dtype)
        if x.ndim != rank:
            raise ValueError(f"{type(self).__name__} expects {layout} input of rank {rank}, "
                             f"got shape {x.shape}")
        if self.kernel is None:
            self.build(int(x.shape[-1]), x)
        return x

    def _bias_activation(self, y: Tensor) -> Tensor:
        if self.bias is not None:
            y = ops.add(y, self.bias)
        return y if self.activation is None else self.activation(y)


class Dense(_KernelLayer):
    """``y = activation(x @ kernel + bias)``; ``kernel`` has shape ``(in, units)``.

    Built at construction if ``input_dim`` is given, else on the first call from
    ``x.shape[-1]``.
    """

    def __init__(self, units: int, activation: ActivationLike = None, use_bias: bool = True,
                 kernel_initializer: str | Callable = "glorot_uniform",
                 bias_initializer: str | Callable = "zeros", input_dim: int | None = None,
                 dtype: str = "float32", seed: Seed = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, dtype,
                         seed, name, input_shape)
        if int(units) < 1:
            raise ValueError(f"Dense: units must be positive, got {units}")
        self.units = int(units)
        if input_dim is None and self.input_shape_hint:
            input_dim = self.input_shape_hint[-1]
        if input_dim is not None:
            self.build(int(input_dim))

    def build(self, input_dim: int, like: Any = None) -> None:
        """Create ``kernel`` ``(input_dim, units)`` and ``bias`` ``(units,)``."""
        if input_dim < 1:
            raise ValueError(f"Dense: input dimension must be positive, got {input_dim}")
        self._create((input_dim, self.units), like)

    def call(self, x: Any, training: bool = False) -> Tensor:
        if self.kernel is None:
            if not hasattr(x, "shape"):
                x = np.asarray(x)
            self.build(int(x.shape[-1]), x)
        x = _as_layer_dtype(x, self.dtype)
        try:
            y = ops.matmul(x, self.kernel)
        except ValueError as e:
            raise ValueError(f"Dense({self.units}) expects inputs with last axis "
                             f"{self.kernel.shape[0]}, got shape {np.shape(x)}: {e}") from None
        return self._bias_activation(y)

    def __repr__(self) -> str:
        inp = self.kernel.shape[0] if self.kernel is not None else "?"
        return f"Dense({inp} -> {self.units})"


class Conv2D(_KernelLayer):
    """2-D convolution over NHWC input; ``kernel`` has shape ``(kh, kw, in, filters)``.

    ``padding`` is ``"valid"`` or ``"same"`` (TensorFlow's). Built at construction if
    ``input_channels`` is given, else on the first call from ``x.shape[-1]``.
    """

    def __init__(self, filters: int, kernel_size: int | Sequence[int], strides=1,
                 padding: str = "valid", activation: ActivationLike = None,
                 use_bias: bool = True, kernel_initializer: str | Callable = "glorot_uniform",
                 bias_initializer: str | Callable = "zeros", input_channels: int | None = None,
                 dtype: str = "float32", seed: Seed = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None, dilation_rate=1) -> None:
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, dtype,
                         seed, name, input_shape)
        self.dilation_rate = _pair(dilation_rate, "Conv2D dilation_rate")
        if input_channels is None and self.input_shape_hint:
            input_channels = self.input_shape_hint[-1]
        if int(filters) < 1:
            raise ValueError(f"Conv2D: filters must be positive, got {filters}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "Conv2D kernel_size")
        self.strides = _pair(strides, "Conv2D strides")
        self.padding = _padding(padding, "Conv2D")
        if input_channels is not None:
            self.build(int(input_channels))

    def build(self, input_channels: int, like: Any = None) -> None:
        """Create ``kernel`` ``(kh, kw, input_channels, filters)`` and ``bias`` ``(filters,)``."""
        if input_channels < 1:
            raise ValueError(f"Conv2D: input channels must be positive, got {input_channels}")
        self._create((*self.kernel_size, input_channels, self.filters), like)

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = self._input(x, 4, "NHWC")
        y = F.conv2d(x, self.kernel, self.strides, self.padding, dilations=self.dilation_rate)
        return self._bias_activation(y)

    def __repr__(self) -> str:
        inp = self.kernel.shape[2] if self.kernel is not None else "?"
        kh, kw = self.kernel_size
        return (f"Conv2D({inp} -> {self.filters}, {kh}x{kw}, strides={self.strides}, "
                f"padding={self.padding.lower()!r})")


class Conv2DTranspose(_KernelLayer):
    """Transposed 2-D convolution over NHWC input (Keras's; "deconvolution"): each input pixel
    spreads ``kernel`` ``(kh, kw, filters, in)`` over a ``strides``-spaced output window. The
    output is ``in * stride`` (``"same"``) or ``in * stride + max(k - stride, 0)``
    (``"valid"``) pixels on a side, as Keras computes it."""

    def __init__(self, filters: int, kernel_size: int | Sequence[int], strides=1,
                 padding: str = "valid", activation: ActivationLike = None,
                 use_bias: bool = True, kernel_initializer: str | Callable = "glorot_uniform",
                 bias_initializer: str | Callable = "zeros", dtype: str = "float32",
                 seed: Seed = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, dtype,
                         seed, name, input_shape)
        if int(filters) < 1:
            raise ValueError(f"Conv2DTranspose: filters must be positive, got {filters}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "Conv2DTranspose kernel_size")
        self.strides = _pair(strides, "Conv2DTranspose strides")
        self.padding = _padding(padding, "Conv2DTranspose")
        if self.input_shape_hint:
            self.build(int(self.input_shape_hint[-1]))

    def build(self, input_channels: int, like: Any = None) -> None:
        """Create ``kernel`` ``(kh, kw, filters, input_channels)`` and ``bias``
        ``(filters,)``."""
        self._create((*self.kernel_size, self.filters, int(input_channels)), like,
                     bias_size=self.filters)

    def call(self, x: Any, training: bool = False) -> Tensor:
        x = self._input(x, 4, "NHWC")
        side = [n * s + (0 if self.padding == "SAME" else max(k - s, 0))
                for n, k, s in zip(x.shape[1:3], self.kernel_size, self.strides)]
        y = F.conv2d_transpose(x, self.kernel, (x.shape[0], *side, self.filters),
                               self.strides, self.padding)
        return self._bias_activation(y)


class MaxPool2D(Module):
    """Max pooling over NHWC windows; ``strides`` defaults to ``pool_size``."""

    _default_name = "max_pooling2d"  # Keras names this layer by its long spelling

    def __init__(self, pool_size: int | Sequence[int] = 2, strides=None, padding: str = "valid",
                 name: str | None = None, input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        self.pool_size = _pair(pool_size, "MaxPool2D pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, "MaxPool2D strides")
        self.padding = _padding(padding, "MaxPool2D")

    def call(self, x: Any, training: bool = False) -> Tensor:
        return F.max_pool2d(x, self.pool_size, self.strides, self.padding)

    def __repr__(self) -> str:
        return f"MaxPool2D({self.pool_size}, strides={self.strides})"


MaxPooling2D = MaxPool2D  # Keras's long name


class Flatten(Module):
    """``(N, ...) -> (N, prod(...))``; a no-op on ``(N, d)`` input."""

    def __init__(self, name: str | None = None, input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)

    def call(self, x: Any, training: bool = False) -> Any:
        shape = x.shape if hasattr(x, "shape") else np.shape(x)
        if len(shape) < 1:
            raise ValueError("Flatten expects a batch axis; got a scalar")
        return _reshape(x, (shape[0], -1)) if len(shape) != 2 else x

    def __repr__(self) -> str:
        return "Flatten()"


class Reshape(Module):
    """``(N, ...) -> (N, *target_shape)`` (the batch axis is kept)."""

    def __init__(self, target_shape: Sequence[int], name: str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        self.target_shape = tuple(int(d) for d in target_shape)

    def call(self, x: Any, training: bool = False) -> Any:
        shape = x.shape if hasattr(x, "shape") else np.shape(x)
        target = self.target_shape
        known = math.prod(d for d in target if d != -1)
        size = math.prod(shape[1:]) if len(shape) >= 1 else 0
        if target.count(-1) == 1 and known and not size % known:  # Keras: one -1, inferred
            target = tuple(size // known if d == -1 else d for d in target)
        if len(shape) < 1 or size != math.prod(target) or -1 in target:
            raise ValueError(f"Reshape: input of shape {tuple(shape)} cannot become "
                             f"(N, {', '.join(map(str, self.target_shape))})")
        return _reshape(x, (shape[0], *target))

    def __repr__(self) -> str:
        return f"Reshape({self.target_shape})"


class Dropout(Module):
    """Zero inputs with probability ``rate`` (scaling the rest by ``1/(1-rate)``) when
    ``training=True``; the identity otherwise. Masks come from ``tp.random``'s global
    generator, so ``tp.random.set_seed`` reproduces them."""

    def __init__(self, rate: float, noise_shape: Sequence[int] | None = None,
                 name: str | None = None, input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.noise_shape = noise_shape

    def call(self, x: Any, training: bool = False) -> Any:
        if not training or self.rate == 0:
            return x
        return F.dropout(x, self.rate, noise_shape=self.noise_shape)

    def __repr__(self) -> str:
        return f"Dropout({self.rate})"


class Activation(Module):
    """An activation function as a layer."""

    def __init__(self, activation: ActivationLike, name: str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__(name)
        self.input_shape_hint = _shape_hint(input_shape)
        self.activation = get_activation(activation)

    def call(self, x: Any, training: bool = False) -> Any:
        return x if self.activation is None else self.activation(x)


# ---------------------------------------------------------------------------- builders
def mlp(sizes: Sequence[int], activation: ActivationLike = "relu", seed: int | None = None,
        dtype: str = "float32") -> Sequential:
    """A fully built multi-layer perceptron; the last layer is linear (logits).

    ``sizes = [784, 512, 512, 10]`` gives ``Flatten`` then three ``Dense`` layers; inputs may
    be ``(N, 784)`` or images ``(N, 28, 28[, 1])``. ``seed=None`` draws from ``tp.random``.

    >>> m = mlp([784, 512, 512, 10], seed=0)
    >>> m.count_params(), [n for n, _ in m.named_variables()][:2]
    (669706, ['layers.1.kernel', 'layers.1.bias'])
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp: sizes must list at least an input and an output size, all "
                         f"positive, got {sizes}")
    rng = init.as_generator(seed)
    layers: list[Module] = [Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(Dense(n_out, activation=None if last else activation, input_dim=n_in,
                            dtype=dtype, seed=rng))
    return Sequential(layers, name="mlp")


def mnist_cnn(seed: int | None = None, dtype: str = "float32", num_classes: int = 10,
              input_shape: tuple[int, int, int] = (28, 28, 1)) -> Sequential:
    """Keras's MNIST convnet, fully built: conv3x3-32 relu, conv3x3-64 relu, maxpool 2,
    flatten, dense 128 relu, dense ``num_classes`` (logits). Padding is valid, so a 28x28 input
    goes 26 -> 24 -> 12 and flattens to 12*12*64 = 9216. Accepts ``(N, 28, 28, 1)``,
    ``(N, 28, 28)`` or ``(N, 784)``. 1,199,882 parameters.
    """
    h, w, c = (int(d) for d in input_shape)
    rng = init.as_generator(seed)
    flat = ((h - 4) // 2) * ((w - 4) // 2) * 64
    return Sequential([
        Reshape((h, w, c)),
        Conv2D(32, 3, activation="relu", input_channels=c, dtype=dtype, seed=rng),
        Conv2D(64, 3, activation="relu", input_channels=32, dtype=dtype, seed=rng),
        MaxPool2D(2),
        Flatten(),
        Dense(128, activation="relu", input_dim=flat, dtype=dtype, seed=rng),
        Dense(num_classes, input_dim=128, dtype=dtype, seed=rng),
    ], name="mnist_cnn")
