"""``tp.custom_gradient``: a function that supplies its own vector-Jacobian product."""
from __future__ import annotations

import functools
import inspect
from typing import Callable

from . import nest
from .recording import _ACTIVE, Primitive, _record
from .tape import GradientTape
from .tensor import Tensor, Variable, convert_to_tensor

__all__ = ["custom_gradient"]


def custom_gradient(f: Callable | None = None):
    """Decorate ``f(*x) -> (y, grad_fn)`` so tapes use ``grad_fn`` instead of ``f``'s internals.

    ``grad_fn(upstream)`` returns one gradient per input (a list if several). If ``f`` reads
    trainable Variables, ``grad_fn(upstream, variables=None)`` must return
    ``(input_grads, variable_grads)``, as in TensorFlow. ``grad_fn`` is written with tapeflow
    ops, so nested tapes can differentiate it again.

    >>> import tapeflow as tp
    >>> @tp.custom_gradient
    ... def clip_grad(x):
    ...     return tp.identity(x), lambda g: tp.clip_by_value(g, -1.0, 1.0)
    """
    if f is None:
        return custom_gradient

    @functools.wraps(f)
    def wrapped(*args, **kwargs):
        xs = [convert_to_tensor(a) for a in args]
        # Run f with a probe tape that lists the trainable variables f reads (they become
        # extra inputs of the recorded op). Outer tapes keep recording f's internals, as in
        # TensorFlow's eager mode: values f computes and grad_fn closes over (log1pexp's
        # exp(x)) must stay connected to x, or a second derivative through grad_fn is lost.
        outer = list(_ACTIVE)
        probe = GradientTape(watch_accessed_variables=True)
        try:
            with probe:
                y, grad_fn = f(*xs, **kwargs)
        finally:
            _ACTIVE[:] = outer
        # Variables passed as inputs get input gradients, not `variables=` ones (TensorFlow).
        variables = [v for v in probe.watched_variables()
                     if v.trainable and all(v is not a for a in xs)]
        if variables and "variables" not in inspect.signature(grad_fn).parameters:
            raise TypeError(f"custom_gradient: {f.__name__} reads trainable variables "
                            f"{[v.name for v in variables]} but its grad_fn has no `variables` "
                            "keyword argument to return their gradients")
        ys = nest.flatten(y)
        if len(ys) != 1 or not isinstance(ys[0], Tensor):
            raise TypeError(f"custom_gradient: {f.__name__} must return one Tensor and a "
                            f"grad_fn, got {type(y).__name__}")
        out = Tensor(ys[0]._value)
        if _ACTIVE and out._value.dtype.kind == "f":
            prim = Primitive(f"custom_gradient({f.__name__})", None)
            prim.defvjp(_make_rule(f.__name__, grad_fn, len(xs), variables))
            _record(prim, tuple(xs) + tuple(variables), out, {})
        return out

    return wrapped


def _make_rule(name: str, grad_fn: Callable, n_inputs: int, variables: list):
    def rule(g, ans, saved, shapes, needs):
        if variables:
            in_grads, var_grads = grad_fn(g, variables=variables)
            var_grads = list(var_grads)
        else:
            in_grads, var_grads = grad_fn(g), []
        in_grads = list(in_grads) if isinstance(in_grads, (list, tuple)) else [in_grads]
        if len(in_grads) != n_inputs or len(var_grads) != len(variables):
            raise ValueError(f"custom_gradient({name}): grad_fn returned {len(in_grads)} input "
                             f"gradients and {len(var_grads)} variable gradients; expected "
                             f"{n_inputs} and {len(variables)}")
        return tuple(None if gi is None else convert_to_tensor(gi)
                     for gi in in_grads + var_grads)
    return rule
