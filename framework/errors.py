"""``tp.errors``: TensorFlow's error classes, fitted into Python's hierarchy.

Where TensorFlow raises ``InvalidArgumentError`` (incompatible shapes, an index out of range, a
dtype mix, a label outside the classes), tapeflow raises :class:`InvalidArgumentError`. It is a
``ValueError``, so both ``except tp.errors.InvalidArgumentError`` (TF style) and
``except ValueError`` (Python style) catch it. Where tapeflow raised ``TypeError`` or
``IndexError`` before, the error is also an instance of that class, so existing ``except``
clauses keep working. Cases where TensorFlow itself raises ``ValueError`` stay ``ValueError``.

>>> import tapeflow as tp
>>> try:
...     tp.constant([1.0, 2.0]) + tp.constant([1.0, 2.0, 3.0])
... except tp.errors.InvalidArgumentError as e:
...     print(type(e).__name__)
InvalidArgumentError
"""
from __future__ import annotations

__all__ = ["OpError", "InvalidArgumentError", "InvalidArgumentTypeError",
           "InvalidArgumentIndexError"]


class OpError(Exception):
    """Base of the errors an operation raises (``tf.errors.OpError``)."""


class InvalidArgumentError(OpError, ValueError):
    """An operation got an argument it cannot use (``tf.errors.InvalidArgumentError``)."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """A dtype mix (TensorFlow: ``InvalidArgumentError``; also a ``TypeError``)."""


class InvalidArgumentIndexError(InvalidArgumentError, IndexError):
    """An index out of range (TensorFlow: ``InvalidArgumentError``; also an ``IndexError``)."""
