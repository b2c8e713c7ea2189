"""``tp.keras.models``: ``Sequential``, ``Model``, ``load_model`` and ``save_model``.

A saved model is one safetensors file: the weights and optimizer arrays as tensors, the
architecture and compile settings as JSON in its header. Loading runs no code from the file.
"""
from . import Model, Sequential  # noqa: F401
from .engine import load_model, save_model  # noqa: F401

__all__ = ["Sequential", "Model", "load_model", "save_model"]
