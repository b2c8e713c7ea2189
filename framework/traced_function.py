"""``tp.function``: trace a Python function once per input signature, replay a static plan.

TensorFlow's semantics (``tf.function``):

* the first call with a new *signature* traces the Python function: Python side effects
  (``print``, appending to a list) happen then, not on later calls; the trace is compiled
  into a static plan (:mod:`plan`) that every later call with that signature replays;
* the signature is the nest structure of the arguments, the shape and dtype of each Tensor
  (NumPy arrays count as Tensors), the identity of each Variable and the value of every
  other Python argument; a new signature retraces;
* ``input_signature=[tp.TensorSpec(shape, dtype), ...]`` fixes the signature: calls must
  match it (``None`` is any size), and a Python argument is an error;
* Variables may be created on the first trace only; later traces that create one raise;
* inside: ``GradientTape`` (persistent, nested), ``custom_gradient``, ``Variable.assign*``
  and ``Optimizer.apply_gradients`` are part of the plan and run on every call; so is a
  ``DistributedGradientTape``'s reduction, each bucket handed to the reducer right after the
  replayed op that completes it (overlapping the rest of the sweep, as eagerly); a non-finite
  reduced step skips the state changes that follow it (``nonfinite="skip"``);
* Python control flow on a traced tensor's value (``if loss > 0:``, ``float(t)``,
  ``t.numpy()``) raises :class:`trace.TraceError` at trace time: the branch would be frozen.

Differences from TensorFlow, by design of a concrete tracer: a ``None`` dimension of an
``input_signature`` gets one plan per concrete size met (Python side effects run once per
size, and each size counts as a trace); a call made while an outer ``GradientTape`` records
runs the Python function eagerly so the outer tape can differentiate it; there is no AutoGraph
(``if`` on a tensor is the error above, as in TF's graph mode without AutoGraph);
``reduce_retracing`` is accepted and has no effect; random draws in a trace (dropout) are made
again on every replay, from the global generator, which the dry trace does not advance.
Inside a trace a ``DistributedGradientTape`` cannot accumulate (``accumulation=``), and the
gradients it returns are the ones connected on this rank at trace time.
"""
from __future__ import annotations

import functools
import sys
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from . import nest
from . import random as tp_random
from .plan import Plan, compile_plan
from .recording import _ACTIVE
from .tensor import _TRACE, Tensor, Variable, as_dtype, to_numpy
from .trace import Tracer

__all__ = ["function", "Function", "ConcreteFunction", "TensorSpec", "print_",
           "executing_eagerly"]


class TensorSpec:
    """The shape (``None`` for any size) and dtype a ``tp.function`` argument must have.

    >>> TensorSpec([None, 784], "float32").is_compatible_with(Tensor(np.zeros((32, 784), "f4")))
    True
    """

    def __init__(self, shape: Sequence[int | None] | None, dtype="float32",
                 name: str | None = None):
        self.shape = None if shape is None else tuple(None if d is None else int(d)
                                                      for d in shape)
        self.dtype = as_dtype(dtype)
        self.name = name

    @classmethod
    def from_tensor(cls, t, name: str | None = None) -> "TensorSpec":
        return cls(t.shape, t.dtype, name)

    def is_compatible_with(self, value) -> bool:
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if isinstance(value, TensorSpec):
            if value.shape is None:
                return self.shape is None and value.dtype == self.dtype
        if dtype is None or np.dtype(dtype) != self.dtype:
            return False
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(
            a is None or a == b for a, b in zip(self.shape, shape))

    def __eq__(self, other) -> bool:
        return isinstance(other, TensorSpec) and (self.shape, self.dtype) == (other.shape,
                                                                             other.dtype)

    def __hash__(self) -> int:
        return hash((self.shape, self.dtype))

    def __repr__(self) -> str:
        return f"TensorSpec(shape={self.shape}, dtype={self.dtype.name}, name={self.name!r})"


class ConcreteFunction:
    """One trace of a :class:`Function`: its plan, argument specs and output structure."""

    def __init__(self, name: str, plan: Plan, arg_specs: list, structure: Any,
                 out_leaves: list, out_slots: dict):
        self.name = name
        self.plan = plan
        self.arg_specs = arg_specs
        self._single = isinstance(structure, Tensor) and not isinstance(structure, Variable)
        # The traced output's leaves: non-Tensors kept as-is, Tensors as their specs (the
        # trace-time arrays are not kept: one may be a Variable's array, which a kept
        # reference would stop the in-place updates of).
        self._out_leaves = [TensorSpec.from_tensor(v) if i in out_slots else v
                            for i, v in enumerate(out_leaves)]
        self.structured_outputs = (self._out_leaves[0] if self._single else
                                   nest.pack_as(structure, self._out_leaves))
        self._out_slots = out_slots     # leaf index -> position in the plan's outputs

    @property
    def structured_input_signature(self) -> list:
        return list(self.arg_specs)

    def _call_arrays(self, arrays: list):
        results = self.plan.run(*arrays)
        if self._single:
            return Tensor(results[0])
        leaves = list(self._out_leaves)
        for i, k in self._out_slots.items():
            leaves[i] = Tensor(results[k])
        return nest.pack_as(self.structured_outputs, leaves)

    def __call__(self, *args):
        """Run the plan on Tensors (or arrays) matching this trace's tensor arguments."""
        arrays = [_array(a) for a in nest.flatten(list(args))]
        specs = [s for s in self.arg_specs if isinstance(s, TensorSpec)]
        if len(arrays) != len(specs) or not all(
                s.is_compatible_with(a) and tuple(a.shape) == tuple(s.shape) or
                s.is_compatible_with(a) and None not in (s.shape or (None,))
                for s, a in zip(specs, arrays)):
            raise TypeError(f"{self.name}: concrete function called with arguments of shapes "
                            f"{[getattr(a, 'shape', None) for a in arrays]}; it was traced for "
                            f"{specs}")
        return self._call_arrays(arrays)

    def __repr__(self) -> str:
        return f"<ConcreteFunction {self.name} args={self.arg_specs}>"


def _array(a):
    if isinstance(a, Tensor):
        return a._value
    return np.asarray(a)


def _leaf_key(leaf) -> Any:
    if isinstance(leaf, Variable):
        return ("V", id(leaf))
    if isinstance(leaf, (Tensor, np.ndarray)):
        return ("T", tuple(leaf.shape), np.dtype(leaf.dtype).str)
    if isinstance(leaf, TensorSpec):
        raise TypeError("a TensorSpec is only accepted by get_concrete_function")
    try:
        hash(leaf)
    except TypeError:
        raise TypeError(f"tp.function: argument {leaf!r:.60} of type {type(leaf).__name__} is "
                        "neither a Tensor nor hashable; pass Tensors, or hashable Python "
                        "values (each value gets its own trace)") from None
    return ("P", type(leaf), leaf)


def _structure_key(s) -> Any:
    if isinstance(s, (list, tuple)):
        return (type(s).__name__, tuple(_structure_key(x) for x in s))
    if isinstance(s, dict):
        return ("dict", tuple((k, _structure_key(v)) for k, v in s.items()))
    return "."


class Function:
    """A traced callable; build it with :func:`function`."""

    def __init__(self, fn: Callable, input_signature=None, reduce_retracing: bool = False,
                 name: str | None = None):
        self.python_function = fn
        self.input_signature = None if input_signature is None else list(input_signature)
        if self.input_signature is not None:
            for s in nest.flatten(self.input_signature):
                if not isinstance(s, TensorSpec):
                    raise TypeError(f"input_signature must hold tp.TensorSpec objects, got "
                                    f"{type(s).__name__}")
        self.reduce_retracing = bool(reduce_retracing)
        self.__name__ = name or getattr(fn, "__name__", "function")
        functools.update_wrapper(self, fn)
        self._cache: dict = {}
        self._fast: dict = {}  # (shape, dtype, ...) of positional plain Tensors -> trace
        self._tracing_count = 0
        self._bound: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- methods ----------------------------------------------------------------------------
    def __get__(self, instance, owner=None):
        """A method: one bound Function (with its own traces) per instance, kept in the
        instance's ``__dict__`` (unhashable instances, dataclasses, work too), else weakly."""
        if instance is None:
            return self
        slot = f"_tp_function_{id(self):x}"
        store = getattr(instance, "__dict__", None)
        bound = store.get(slot) if store is not None else self._bound.get(instance)
        if bound is None:
            bound = Function(functools.partial(self.python_function, instance),
                             self.input_signature, self.reduce_retracing, self.__name__)
            if store is not None:
                store[slot] = bound
            else:
                self._bound[instance] = bound
        return bound

    def experimental_get_tracing_count(self) -> int:
        """How many times the Python function has been traced."""
        return self._tracing_count

    # -- calling ----------------------------------------------------------------------------
    def _canonical(self, args: tuple, kwargs: dict) -> tuple[list, list]:
        """(structure, leaves) of the call; checked against ``input_signature`` if set."""
        if self.input_signature is not None:
            if kwargs:
                raise TypeError(f"{self.__name__}: keyword arguments are not allowed with an "
                                "input_signature")
            specs = nest.flatten(self.input_signature)
            leaves = nest.flatten(list(args))
            if len(leaves) != len(specs) or not all(
                    isinstance(v, (Tensor, np.ndarray, TensorSpec)) and s.is_compatible_with(v)
                    for s, v in zip(specs, leaves)):
                raise ValueError(
                    f"{self.__name__}: Python inputs incompatible with input_signature: got "
                    f"{[_describe(v) for v in leaves]}, expected {specs}")
            return [list(args), {}], leaves
        structure = [list(args), dict(sorted(kwargs.items()))]
        return structure, nest.flatten(structure)

    def __call__(self, *args, **kwargs):
        if _TRACE or _ACTIVE:
            # Inside another trace: inline. Under an outer eager tape: run eagerly so the tape
            # records the ops (and can differentiate through this call).
            return self.python_function(*args, **kwargs)
        if not kwargs:  # fast path: positional plain Tensors, keyed by shapes and dtypes
            fast = []
            for a in args:
                if type(a) is not Tensor:
                    break
                fast.append(a._value.shape)
                fast.append(a._value.dtype)
            else:
                cf = self._fast.get(tuple(fast))
                if cf is not None:
                    return cf._call_arrays([a._value for a in args])
        structure, leaves = self._canonical(args, kwargs)
        key = (_structure_key(structure), tuple(_leaf_key(v) for v in leaves))
        cf = self._cache.get(key)
        if cf is None:
            cf = self._trace(structure, leaves)
            self._cache[key] = cf
        if not kwargs and all(type(a) is Tensor for a in args):
            self._fast[tuple(x for a in args for x in (a._value.shape, a._value.dtype))] = cf
        arrays = [v._value if isinstance(v, Tensor) else v for v in leaves
                  if isinstance(v, (Tensor, np.ndarray)) and not isinstance(v, Variable)]
        return cf._call_arrays(arrays)

    def get_concrete_function(self, *args, **kwargs) -> ConcreteFunction:
        """The trace for these arguments (Tensors, arrays or ``TensorSpec`` s), traced if new.

        With no arguments, the ``input_signature`` is used."""
        if not args and not kwargs and self.input_signature is not None:
            args = tuple(self.input_signature)
        structure, leaves = self._canonical(args, kwargs)
        concrete = [_placeholder(v) if isinstance(v, TensorSpec) else v for v in leaves]
        key = (_structure_key(structure), tuple(_leaf_key(v) for v in concrete))
        cf = self._cache.get(key)
        if cf is None:
            cf = self._trace(structure, concrete)
            self._cache[key] = cf
        return cf

    # -- tracing ----------------------------------------------------------------------------
    def _trace(self, structure: list, leaves: list) -> ConcreteFunction:
        tracer = Tracer(allow_variables=self._tracing_count == 0, name=self.__name__)
        traced_leaves = []
        specs = []
        for v in leaves:
            if isinstance(v, (Tensor, np.ndarray)) and not isinstance(v, Variable):
                t = Tensor(v._value if isinstance(v, Tensor) else v)
                tracer.add_input(t)
                traced_leaves.append(t)
                specs.append(TensorSpec.from_tensor(t))
            else:
                traced_leaves.append(v)
                specs.append(v)
        args, kwargs = nest.pack_as(structure, traced_leaves)
        self._tracing_count += 1
        rng_state = tp_random.get_state()
        _TRACE.append(tracer)
        try:
            out = self.python_function(*args, **kwargs)
        finally:
            _TRACE.remove(tracer)
            # The trace is dry: random draws made while tracing (dropout masks) do not advance
            # the global generator; the first call's replay draws them.
            tp_random.set_state(rng_state)
        out_leaves = nest.flatten(out)
        out_slots: dict[int, int] = {}
        slots: list[int] = []
        for i, leaf in enumerate(out_leaves):
            if isinstance(leaf, Tensor) and not isinstance(leaf, Variable):
                out_slots[i] = len(slots)
                slots.append(tracer.slot(leaf))
        plan = compile_plan(tracer, slots)
        return ConcreteFunction(self.__name__, plan, specs, out, out_leaves, out_slots)

    def __repr__(self) -> str:
        return f"<tp.function {self.__name__}>"


def _describe(v) -> str:
    if isinstance(v, (Tensor, np.ndarray, TensorSpec)):
        return f"{type(v).__name__}(shape={tuple(v.shape) if v.shape is not None else None}, " \
               f"dtype={np.dtype(v.dtype).name})"
    return repr(v)


def _placeholder(spec: TensorSpec) -> np.ndarray:
    """Zeros standing in for a spec when tracing without values (``None`` dims become 1)."""
    if spec.shape is None:
        raise ValueError(f"cannot trace for {spec}: its rank is unknown")
    return np.zeros(tuple(1 if d is None else d for d in spec.shape), spec.dtype)


def function(func: Callable | None = None, input_signature=None,
             reduce_retracing: bool = False, **_ignored) -> Function | Callable:
    """Trace ``func`` once per input signature and replay a static plan (``tf.function``).

    Usable as ``@tp.function``, ``@tp.function(input_signature=[...])`` and on methods.

    >>> import tapeflow as tp
    >>> @tp.function
    ... def f(x):
    ...     return x * x + 1.0
    >>> f(tp.constant([1.0, 2.0]))
    tp.Tensor([2. 5.], shape=(2,), dtype=float32)
    """
    def decorate(fn: Callable) -> Function:
        return Function(fn, input_signature, reduce_retracing)
    return decorate if func is None else decorate(func)


def executing_eagerly() -> bool:
    """``tf.executing_eagerly``: False while ``tp.function`` traces a function (its body runs
    once, to be replayed), True otherwise."""
    return not _TRACE


def print_(*inputs: Any, output_stream: Any = None, sep: str = " ", end: str = "\n",
           summarize: int = 3, name: str | None = None) -> None:
    """``tf.print`` (``tp.print``): print tensors and other values every time this runs; inside
    ``tp.function`` on every call, with that call's values (Python's ``print`` runs only while
    tracing). ``output_stream``: ``sys.stderr`` (the default, as TensorFlow), ``sys.stdout``,
    any object with ``write``, or ``"file://PATH"`` (appended). Tensors print like NumPy
    arrays, with ``summarize`` items at each end of a long axis (``-1``: all).

    >>> import tapeflow as tp, sys
    >>> tp.print("x:", tp.constant([1, 2, 3]), output_stream=sys.stdout)
    x: [1 2 3]
    """
    del name
    if summarize is not None and summarize != -1 and summarize < 0:
        raise ValueError(f"tp.print: summarize must be -1 or >= 0, got {summarize}")

    def emit(values) -> None:
        text = sep.join(_printable(v, summarize) for v in values) + end
        stream = sys.stderr if output_stream is None else output_stream
        if isinstance(stream, str):
            if not stream.startswith("file://"):
                raise ValueError(f"tp.print: output_stream {stream!r} is not a stream or a "
                                 "'file://PATH'")
            with open(stream[len("file://"):], "a", encoding="utf-8") as f:
                f.write(text)
            return
        stream.write(text)
        if hasattr(stream, "flush"):
            stream.flush()

    if not _TRACE:
        emit(inputs)
        return
    where = [i for i, v in enumerate(inputs) if isinstance(v, Tensor)]

    def kernel(*arrays) -> None:
        values = list(inputs)
        for i, a in zip(where, arrays):
            values[i] = a
        emit(values)
    _TRACE[-1].effect(kernel, tuple(inputs[i] for i in where))


def _printable(v: Any, summarize: int) -> str:
    if isinstance(v, Tensor):
        v = v._value
    if isinstance(v, str) or not hasattr(v, "shape"):
        return str(v)
    a = to_numpy(v)
    if summarize == -1:
        return np.array2string(a, separator=" ", threshold=sys.maxsize)
    return np.array2string(a, separator=" ", threshold=2 * summarize, edgeitems=summarize)

