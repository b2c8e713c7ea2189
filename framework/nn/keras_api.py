"""Keras's layer and model API on every ``tp.nn.Module`` (the :class:`KerasAPI` base).

* the custom-layer protocol: ``build(input_shape)`` before the first call, ``add_weight`` in
  tf.keras's and Keras 3's argument orders, ``layers`` / ``get_layer``;
* the model methods: ``compile`` / ``fit`` / ``evaluate`` / ``predict`` / ``save`` /
  ``save_weights`` / ``load_weights`` / ``summary``, and what ``compile`` was given
  (``optimizer``, ``loss``, ``metrics_names``).

The model methods need the training loop, the optimizers and the communicator, which sit above
this layer: they are implemented in :mod:`tapeflow.keras.engine` (the Keras facade, the top
layer) and imported on first use. This is the one place where ``tp.nn`` reaches up.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import Tensor, TensorShape, Variable
from . import init as _init

__all__ = ["KerasAPI"]


class _FromCompile:
    """A model's compile settings (``model.optimizer``): not a data descriptor, so a module
    that keeps its own ``self.optimizer`` keeps it."""

    def __init__(self, get: Any, default: Any) -> None:
        self.get, self.default = get, default

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        compiled = obj.__dict__.get("_compiled")
        return self.get(compiled) if compiled is not None else self.default


class _Layers:
    """Keras's ``model.layers`` for any module: its direct sublayers (attributes, and modules
    in list, tuple or dict attributes), in attribute order. Not a data descriptor, so a
    ``Sequential``'s own ``self.layers`` list takes its place."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        found: list = []
        module = _module()

        def visit(value: Any) -> None:
            if isinstance(value, module):
                if all(value is not m for m in found):
                    found.append(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    visit(item)
            elif isinstance(value, dict):
                for item in value.values():
                    visit(item)
        for value in vars(obj).values():
            visit(value)
        return found


# What Keras layers take in ``super().__init__(**kwargs)`` besides name/trainable/dtype.
_KERAS_LAYER_KWARGS = {"input_shape", "input_dim", "batch_input_shape", "batch_size",
                       "autocast", "dynamic", "activity_regularizer", "weights"}
_ADD_WEIGHT_TF = ("name", "shape", "dtype", "initializer", "regularizer", "trainable")
_ADD_WEIGHT_KERAS3 = ("shape", "initializer", "dtype", "trainable")


def _module() -> type:
    from .modules import Module

    return Module


def _engine():
    from ..keras import engine

    return engine


class KerasAPI:
    """Keras's methods of layers and models; :class:`~tapeflow.nn.Module` derives from it."""

    layers = _Layers()

    def _build_on(self, x: Any) -> None:
        """Keras: ``build(input_shape)`` once, before the first ``call`` (a list of shapes for
        a list of inputs)."""
        def shape(v):
            return TensorShape(np.shape(v._value if isinstance(v, Tensor) else v))
        self.build([shape(v) for v in x] if isinstance(x, (list, tuple)) else shape(x))
        self.built = True

    def build(self, input_shape: Any = None) -> None:
        """Keras's ``build``: a layer creates its weights here (``add_weight``), called with
        the input's shape before the first call; ``super().build(input_shape)`` marks it
        built. A model that does not define ``build`` is built by running a zero batch of
        ``input_shape`` (with or without the ``None`` batch dimension) through it."""
        self.built = True
        if input_shape is None or type(self).build is not KerasAPI.build \
                or type(self).call is _module().call:
            return
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        self(np.zeros((1, *shape), "float32"))
        self._build_input_shape = shape

    def add_weight(self, *args: Any, **kwargs: Any) -> Variable:
        """Keras's ``add_weight``: a Variable tracked by this module (listed in ``variables``
        under its ``name`` unless also kept as an attribute). Both orders are accepted:
        Keras 3's ``add_weight(shape, initializer, dtype, trainable, ..., name=)`` and tf.keras's
        ``add_weight(name, shape, dtype, initializer, regularizer, trainable, ...)``. The
        initializer defaults to ``glorot_uniform`` for floats, ``zeros`` otherwise."""
        order = (_ADD_WEIGHT_TF if args and isinstance(args[0], str) else _ADD_WEIGHT_KERAS3)
        if len(args) > len(order):
            raise TypeError(f"add_weight takes at most {len(order)} positional arguments")
        for key, value in zip(order, args):
            if key in kwargs:
                raise TypeError(f"add_weight got multiple values for {key!r}")
            kwargs[key] = value
        defaults = self.__dict__.get("_layer_defaults", {})
        shape = tuple(int(d) for d in (kwargs.get("shape") or ()))
        dtype = np.dtype(kwargs.get("dtype") or defaults.get("dtype") or "float32")
        init = kwargs.get("initializer") or (
            "glorot_uniform" if dtype.kind == "f" else "zeros")
        value = _init.get(init)(shape, dtype=dtype.name) if isinstance(init, str) or \
            isinstance(init, _init.Initializer) else init(shape, dtype=dtype.name)
        store = self.__dict__.setdefault("_tp_weights", {})
        name = kwargs.get("name") or f"weight_{len(store)}"
        key, i = name, 0
        while key in store:
            i += 1
            key = f"{name}_{i}"
        trainable = bool(kwargs.get("trainable", True)) and defaults.get("trainable", True)
        value = value._value if isinstance(value, Tensor) else value
        var = Variable(np.asarray(value, dtype=dtype) if isinstance(value, np.ndarray) or
                       np.isscalar(value) else value, trainable=trainable, name=name)
        store[key] = var
        return var

    add_variable = add_weight

    # -- Keras's model API (tapeflow.keras.engine; see the module docstring) ----------------
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, as JSON data (nested modules as configs)."""
        return _engine().module_config(self)

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None,
                **kwargs: Any) -> None:
        """Keras's ``compile``: see :func:`tapeflow.keras.engine.compile`."""
        _engine().compile(self, optimizer, loss, metrics, **kwargs)

    def fit(self, x: Any = None, y: Any = None, **kwargs: Any):
        """Keras's ``fit``, returning a ``History``: see :func:`tapeflow.keras.engine.fit`."""
        return _engine().fit(self, x, y, **kwargs)

    def evaluate(self, x: Any = None, y: Any = None, **kwargs: Any):
        """Keras's ``evaluate``: see :func:`tapeflow.keras.engine.evaluate`."""
        return _engine().evaluate(self, x, y, **kwargs)

    def predict(self, x: Any, **kwargs: Any) -> np.ndarray:
        """Keras's ``predict``: see :func:`tapeflow.keras.engine.predict`."""
        return _engine().predict(self, x, **kwargs)

    def get_layer(self, name: str | None = None, index: int | None = None) -> Any:
        """Keras's ``get_layer``: a direct layer by name or by index."""
        layers = self.layers
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"get_layer: index {index} is out of range for a model with "
                                 f"{len(layers)} layers")
            return layers[index]
        for layer in layers:
            if getattr(layer, "name", None) == name:
                return layer
        raise ValueError(f"get_layer: no layer named {name!r}; the layers are "
                         f"{[getattr(m, 'name', None) for m in layers]}")

    def save_weights(self, filepath: Any, overwrite: bool = True) -> None:
        """Keras's ``save_weights``: see :func:`tapeflow.keras.engine.save_weights`."""
        _engine().save_weights(self, filepath, overwrite)

    def load_weights(self, filepath: Any, skip_mismatch: bool = False, **kwargs: Any) -> None:
        """Keras's ``load_weights``: see :func:`tapeflow.keras.engine.load_weights`."""
        _engine().load_weights(self, filepath, skip_mismatch)

    # What compile() was given (None before); a module's own attribute of the name wins.
    optimizer = _FromCompile(lambda c: c.optimizer, None)
    loss = _FromCompile(lambda c: c.loss, None)
    metrics_names = _FromCompile(lambda c: ["loss", *c.metric_fns], [])  # (Keras 2's)

    def summary(self, line_length: int | None = None, positions: Any = None,
                print_fn: Any = None, **kwargs: Any) -> None:
        """Keras's ``summary``: layers, output shapes, parameter counts and totals (see
        :func:`tapeflow.keras.summary.summary`)."""
        from ..keras import summary

        summary.summary(self, line_length, positions, print_fn, **kwargs)

    def save(self, filepath: Any, **kwargs: Any) -> None:
        """Architecture, weights and optimizer state in one safetensors file (the JSON config
        in its header; no pickle). ``tp.keras.models.load_model(filepath)`` reads it back."""
        _engine().save_model(self, filepath, **kwargs)
