"""tapeflow: tape-based automatic differentiation on NumPy/CuPy with MPI data parallelism.

>>> import tapeflow as tp
>>> w = tp.Variable([[1.0], [2.0]])
>>> with tp.GradientTape() as tape:
...     loss = tp.reduce_sum((tp.constant([[3.0, 4.0]]) @ w) ** 2)
>>> tape.gradient(loss, w).numpy().ravel().tolist()
[66.0, 88.0]
"""
import sys as _sys

from ._cli_boot import guard as _guard

_guard()  # tapeflow-train & co.: Ctrl-C while this package loads ends them with one line
from . import checkpoint, data, errors, nn, random, testing  # noqa: E402
from . import train_api as train  # noqa: E402  (tf.train's checkpoints)
from . import config  # noqa: E402
from .array_ops import *  # noqa: F401,F403
from .array_ops import __all__ as _array_ops_all
from .clip_ops import clip_by_global_norm, clip_by_norm
from .control_flow import cond, numpy_function, py_function
from .custom import custom_gradient
from .devices import DeviceSpec, device
from .device_ops import to_device
from .traced_function import Function, TensorSpec, executing_eagerly, function
from .traced_function import print_ as print  # tf.print; kept out of __all__ (the builtin)
from .math_ops import *  # noqa: F401,F403
from .math_ops import __all__ as _math_ops_all
from .ops import *  # noqa: F401,F403
from .ops import __all__ as _ops_all
from . import linalg, math  # noqa: E402  (after the ops they re-export)
from .tape import PRIMITIVES, GradientTape, UnconnectedGradients, stop_gradient
from .tensor import Tensor, TensorShape, Variable, as_dtype, constant, convert_to_tensor

float16, float32, float64 = "float16", "float32", "float64"
int8, int16, int32, int64, uint8 = "int8", "int16", "int32", "int64", "uint8"
# tp.bool is tf.bool; left out of __all__ so `from tapeflow import *` never shadows the builtin
bool_ = bool = "bool"

newaxis = None  # tf.newaxis: x[..., tp.newaxis]
Module = nn.Module  # tf.Module: variables / trainable_variables / submodules of what it holds


def is_tensor(x) -> bool:
    """``tf.is_tensor``: whether ``x`` is a tp.Tensor (Variables included)."""
    return isinstance(x, Tensor)


__version__ = "0.1.0"

__all__ = sorted(set(_ops_all) | set(_array_ops_all) | set(_math_ops_all) | {
    "clip_by_norm", "clip_by_global_norm", "Tensor", "TensorShape", "Variable", "constant",
    "convert_to_tensor", "as_dtype",
    "GradientTape", "UnconnectedGradients", "custom_gradient", "stop_gradient", "PRIMITIVES",
    "cond", "py_function", "numpy_function",
    "device", "DeviceSpec", "to_device",
    "data", "nn", "random", "testing", "errors", "math", "linalg", "keras", "checkpoint",
    "train", "config",
    "optimizers", "distributed", "function", "Function", "TensorSpec", "executing_eagerly",
    "newaxis", "is_tensor", "Module",
    "float16", "float32",
    "float64", "int8", "int16", "int32", "int64", "uint8", "bool_",
})


# TensorFlow's `name=` on every public op (accepted, ignored): tp, tp.math, tp.linalg, tp.nn,
# tp.random.
from . import op_names as _op_names  # noqa: E402

for _space in (_sys.modules[__name__], math, linalg, nn, random):
    _op_names.accept_name(_space, getattr(_space, "__all__", ()))
del _space


# Subpackages of higher layers, reachable as attributes (`tp.optimizers.SGD`) but imported on
# first use, so `import tapeflow` stays at the bottom layer and no framework module imports
# them: tp.keras is the Keras-style facade over every layer (optimizers and the training loop
# included); tp.optimizers and tp.distributed are the layers above the framework.
_LAZY_SUBPACKAGES = ("keras", "optimizers", "distributed")


# TensorFlow's top-level aliases of tf.keras modules (tf.losses, tf.metrics, ...).
_KERAS_ALIASES = ("losses", "metrics", "initializers", "callbacks")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES or name in _KERAS_ALIASES:
        import importlib

        where = "keras." if name in _KERAS_ALIASES else ""
        return importlib.import_module(f".{where}{name}", __name__)
    raise AttributeError(f"module 'tapeflow' has no attribute {name!r}")
