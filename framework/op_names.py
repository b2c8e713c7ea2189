"""TensorFlow's ``name=`` argument on every public op (``tf.constant(3.0, name="x")``,
``tf.reduce_mean(loss, name="loss")``): accepted and ignored (tapeflow has no graph to name
nodes in), so TensorFlow code runs with only the import changed.

:func:`accept_name` replaces, in a public namespace, each function that has no ``name``
parameter by a thin wrapper that takes one; the implementation modules keep their functions,
so tapeflow's own calls pay nothing. One wrapper per function: ``tp.math.add is tp.add``.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable

__all__ = ["accept_name", "public"]

_WRAPPED: dict[Callable, Callable] = {}
_NOT_OPS = {"function", "custom_gradient", "executing_eagerly", "as_dtype", "to_device",
            "get_activation", "mlp", "mnist_cnn", "set_seed", "get_state", "set_state",
            "generator", "device"}


def _with_name(fn: Callable) -> Callable:
    wrapper = _WRAPPED.get(fn)
    if wrapper is None:
        @functools.wraps(fn)
        def wrapper(*args: Any, name: str | None = None, **kwargs: Any) -> Any:
            if name is not None and not isinstance(name, str):
                raise TypeError(f"{fn.__name__}: name must be a string, got "
                                f"{type(name).__name__}")
            return fn(*args, **kwargs)
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        params.append(inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default=None))
        wrapper.__signature__ = sig.replace(parameters=params)
        _WRAPPED[fn] = wrapper
    return wrapper


def accept_name(namespace: Any, names: Iterable[str]) -> None:
    """Give every op function among ``names`` of ``namespace`` a ``name`` parameter."""
    for n in names:
        fn = getattr(namespace, n, None)
        if not inspect.isfunction(fn) or n in _NOT_OPS or n.startswith("_"):
            continue
        params = inspect.signature(fn).parameters.values()
        if any(p.name == "name" or p.kind is p.VAR_KEYWORD for p in params):
            continue
        setattr(namespace, n, _with_name(fn))


def public(fn: Any) -> Any:
    """The public form of ``fn`` (its wrapper if it got one), else ``fn``."""
    return _WRAPPED.get(fn, fn)
