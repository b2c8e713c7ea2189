"""Keras's ``model.summary()``: one row per layer (name, type, output shape, parameters) and
the parameter totals.

Output shapes of a ``Sequential`` come from running one zero example through its layers (no
tape records it); other modules show ``?`` for them, as Keras shows for subclassed models.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..nn import modules

__all__ = ["summary"]


def summary(model: Any, line_length: int | None = None, positions: Any = None,
            print_fn: Callable[[str], Any] | None = None, expand_nested: bool = False,
            show_trainable: bool = False, layer_range: Any = None) -> None:
    """Print the table (``print_fn`` gets one line per call, as in tf.keras)."""
    del positions, expand_nested, layer_range
    if not model.variables:
        raise ValueError(f"{type(model).__name__} has not been built yet, so it has no "
                         "parameters to summarize: call build((None, ...)) or call the model "
                         "on a batch first")
    layers = list(model.layers)
    shapes = _output_shapes(model, layers)
    width = line_length or 78
    cols = [int(width * 0.42), int(width * 0.33)]
    if show_trainable:
        cols = [int(width * 0.38), int(width * 0.3)]
    cols[0] = max(cols[0], 2 + max((len(f"{getattr(m, 'name', '')}_00 ({type(m).__name__})")
                                    for m in layers), default=0))
    cols[1] = max(cols[1], 2 + max(map(len, shapes), default=0))
    width = max(width, sum(cols) + 10 + (12 if show_trainable else 0))
    out = print if print_fn is None else print_fn
    rule = "=" * width

    def row(name: str, shape: str, params: str, train: str = "") -> str:
        text = f"{name:<{cols[0]}}{shape:<{cols[1]}}"
        text += f"{params:>{width - sum(cols) - (12 if show_trainable else 0)}}"
        return text + (f"{train:>12}" if show_trainable else "")

    out(f'Model: "{model.name}"')
    out("_" * width)
    out(row("Layer (type)", "Output Shape", "Param #", "Trainable"))
    out(rule)
    for i, (layer, shape) in enumerate(zip(layers, shapes)):
        name = getattr(layer, "name", None) or type(layer).__name__.lower()
        count = layer.count_params() if isinstance(layer, modules.Module) else 0
        trainable = isinstance(layer, modules.Module) and any(
            v.trainable for v in layer.variables)
        out(row(f"{name} ({type(layer).__name__})", shape, f"{count:,}",
                ("Y" if trainable else "N") if count else "-"))
        out(rule if i == len(layers) - 1 else "_" * width)
    total = model.count_params()
    train = sum(int(v.size) for v in model.trainable_variables)
    nbytes = sum(int(v.size) * np.dtype(v.dtype).itemsize for v in model.variables)
    tbytes = sum(int(v.size) * np.dtype(v.dtype).itemsize for v in model.trainable_variables)
    out(f"Total params: {total:,} ({_size(nbytes)})")
    out(f"Trainable params: {train:,} ({_size(tbytes)})")
    out(f"Non-trainable params: {total - train:,} ({_size(nbytes - tbytes)})")
    out("_" * width)


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.2f} B"


def _output_shapes(model: Any, layers: list) -> list[str]:
    """``(None, ...)`` per layer of a built Sequential or a functional model, else ``?``."""
    if hasattr(model, "layer_output_shapes"):
        return model.layer_output_shapes()
    shape = getattr(model, "_build_input_shape", None)
    if shape is None and layers:
        shape = getattr(layers[0], "input_shape_hint", None)
    if not isinstance(model, modules.Sequential) or shape is None or None in shape:
        return ["?"] * len(layers)
    from tapeflow import Tensor

    x, out = Tensor(np.zeros((1, *shape), "float32")), []
    for layer in layers:
        x = layer(x, training=False) if isinstance(layer, modules.Module) else layer(x)
        out.append(str((None, *x.shape[1:])))
    return out
