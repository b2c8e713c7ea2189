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

* a ``None`` dimension of an ``input_signature`` is traced once, symbolically (:mod:`symdim`):
  inside, ``x.shape`` is ``(None, 784)`` as in TensorFlow and ``tp.shape(x)`` is each call's
  shape; every op runs at the call's size and at a shadow size, the two traces are generalized
  over the size (:mod:`generalize`), and every size replays a plan made from that. A function
  that needs the size as a number (``1 / x.shape[0]``, ``range``, an ``if`` on it: errors in
  TensorFlow) is traced at its first two sizes instead, and each size where those two are not
  one computation at two sizes. With ``reduce_retracing`` a dimension whose size changed is
  relaxed the same way after a second trace (TensorFlow traces twice as well).

Differences from TensorFlow, by design of a concrete tracer: sizes 0 and 1 of a ``None``
dimension get a trace of their own (broadcasting and squeezing change the computation
there); a function that needs a ``None`` size as a number runs (traced per size) where
TensorFlow raises. A call made while an outer
``GradientTape`` records runs the Python function eagerly so the outer tape can differentiate
it; there is no AutoGraph (``if`` on a tensor is the error above, as in TF's graph mode without
AutoGraph); random draws in a trace (dropout) are made again on every replay, from the global
generator, which the dry trace does not advance.
Inside a trace a ``DistributedGradientTape`` cannot accumulate (``accumulation=``), and the
gradients it returns are the ones connected on this rank at trace time.
"""
from __future__ import annotations

import functools
import inspect
import sys
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from . import nest
from .generalize import fit
from .plan import Plan, PlanShapeError, compile_plan
from .recording import _ACTIVE
from .symdim import Dim, concrete_shape
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
        """The spec of ``t`` (inside a symbolic trace: of its value at the traced size)."""
        return cls(concrete_shape(t._value) if isinstance(t, Tensor) else t.shape, t.dtype,
                   name)

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
                 out_leaves: list, out_slots: dict, single: bool | None = None):
        self.name = name
        self.plan = plan
        self.arg_specs = arg_specs
        self._single = (isinstance(structure, Tensor) and not isinstance(structure, Variable)
                        if single is None else single)
        self._relaxed: tuple | None = None  # (specs with None dims, the Function's call)
        self._steady: Plan | None = None  # the unchecked plan, after a checked first run
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
        """The argument specs (a ``None`` dimension as given to ``get_concrete_function``)."""
        return list(self._relaxed[0] if self._relaxed is not None else self.arg_specs)

    def _call_arrays(self, arrays: list):
        results = self.plan.run(*arrays)
        if self._steady is not None:  # a plan made from a generalized trace has checked, on
            self.plan, self._steady = self._steady, None  # its first run, every shape
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
            if self._relaxed is not None and len(arrays) == len(self._relaxed[0]) and all(
                    s.is_compatible_with(a) for s, a in zip(self._relaxed[0], arrays)):
                return self._relaxed[1](*args)  # a None dimension: the same function, any size
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
        self._families: dict = {}  # structure and ranks -> _Family (relaxed dimensions)
        self._tracing_count = 0
        self._may_create = True  # variables may be created until a trace has succeeded
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

    def pretty_printed_concrete_signatures(self) -> str:
        """One block per trace: its tensor arguments and what it returns."""
        blocks = []
        for cf in dict.fromkeys(self._cache.values()):
            args = [f"    arg{i}: {_spec_text(s)}" for i, s in enumerate(
                a for a in cf.arg_specs if isinstance(a, TensorSpec))]
            outs = [_spec_text(v) for v in nest.flatten(cf.structured_outputs)]
            names = ", ".join(f"arg{i}" for i in range(len(args)))
            blocks.append("\n".join([f"{self.__name__}({names})", "  Args:", *args,
                                     "  Returns:", *(f"    {o}" for o in outs or ["None"])]))
        return "\n\n".join(blocks)

    def experimental_get_tracing_count(self) -> int:
        """How many times the Python function has been traced."""
        return self._tracing_count

    # -- calling ----------------------------------------------------------------------------
    def _canonical(self, args: tuple, kwargs: dict) -> tuple[list, list]:
        """(structure, leaves) of the call; checked against ``input_signature`` if set."""
        if self.input_signature is not None:
            if kwargs:  # bound to the function's parameters, as TensorFlow canonicalizes them
                try:
                    bound = inspect.signature(self.python_function).bind(*args, **kwargs)
                except (TypeError, ValueError) as e:
                    raise TypeError(f"{self.__name__}: {e}") from None
                if bound.kwargs:
                    raise TypeError(f"{self.__name__}: keyword-only arguments "
                                    f"{sorted(bound.kwargs)} are not allowed with an "
                                    "input_signature")
                args, kwargs = tuple(bound.args), {}
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
        if _TRACE or _ACTIVE or _RUN_EAGERLY[0]:
            # Inside another trace: inline. Under an outer eager tape: run eagerly so the tape
            # records the ops (and can differentiate through this call). With
            # tp.config.run_functions_eagerly(True): plain Python, to debug.
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
                    try:
                        return cf._call_arrays([a._value for a in args])
                    except PlanShapeError as e:
                        return self._not_general(cf, e, args, kwargs)
        structure, leaves = self._canonical(args, kwargs)
        cf = self._concrete(structure, leaves)
        if not kwargs and all(type(a) is Tensor for a in args):
            self._fast[tuple(x for a in args for x in (a._value.shape, a._value.dtype))] = cf
        arrays = [v._value if isinstance(v, Tensor) else v for v in leaves
                  if isinstance(v, (Tensor, np.ndarray)) and not isinstance(v, Variable)]
        try:
            return cf._call_arrays(arrays)
        except PlanShapeError as e:
            return self._not_general(cf, e, args, kwargs)

    def _not_general(self, cf: ConcreteFunction, error: PlanShapeError, args, kwargs):
        """A plan made for a new size from a generalized trace found, on its checked first
        run, an op whose shape is not what the generalization said (``x[:10]`` traced at
        sizes under 10): the generalization is dropped and, as nothing had changed yet, this
        size is traced; else the error is raised."""
        fam = getattr(cf, "_family", None)
        if fam is not None:
            fam.template, fam.exact = None, True
            stale = [self._cache.pop(k) for k in set(fam.made.values()) if k in self._cache]
            fam.made.clear()
            for k in [k for k, v in self._fast.items() if v in stale]:
                del self._fast[k]
        if not error.safe:
            raise RuntimeError(f"{self.__name__}: {error}; state had already changed in this "
                               "call, so it was not retried. Trace each size (no None in the "
                               "input_signature)") from None
        return self(*args, **kwargs)

    def get_concrete_function(self, *args, **kwargs) -> ConcreteFunction:
        """The trace for these arguments (Tensors, arrays or ``TensorSpec`` s), traced if new.

        With no arguments, the ``input_signature`` is used."""
        if not args and not kwargs and self.input_signature is not None:
            args = tuple(self.input_signature)
        structure, leaves = self._canonical(args, kwargs)
        if any(isinstance(v, TensorSpec) and v.shape is None for v in leaves):
            return _AnyShape(self, [v for v in leaves if isinstance(v, TensorSpec)])
        concrete = [_placeholder(v) if isinstance(v, TensorSpec) else v for v in leaves]
        tensors = [v for v in leaves if isinstance(v, (Tensor, np.ndarray, TensorSpec))
                   and not isinstance(v, Variable)]
        dims = frozenset((i, d) for i, v in enumerate(tensors) if isinstance(v, TensorSpec)
                         for d, size in enumerate(v.shape) if size is None)
        cf = self._concrete(structure, concrete, dims or None)
        if dims:  # TensorFlow's concrete function of a None dimension takes any size
            cf._relaxed = ([v if isinstance(v, TensorSpec) else TensorSpec.from_tensor(v)
                            for v in tensors], self.__call__)
        return cf

    def _concrete(self, structure: list, leaves: list,
                  dims: frozenset | None = None) -> ConcreteFunction:
        """The trace for this call: cached, made from a generalized trace, or traced
        (``dims``: ``None`` dimensions of ``get_concrete_function``'s specs)."""
        key = (_structure_key(structure), tuple(_leaf_key(v) for v in leaves))
        cf = self._cache.get(key)
        if cf is None:
            cf = self._generalized(key, structure, leaves, dims) or \
                self._trace(structure, leaves)[0]
            self._cache[key] = cf
        return cf

    # -- relaxed dimensions -----------------------------------------------------------------
    def _relaxed_dims(self) -> frozenset | None:
        """(tensor argument, axis) of every ``None`` of the input_signature."""
        if self.input_signature is None:
            return None
        return frozenset((i, d) for i, spec in enumerate(nest.flatten(self.input_signature))
                         for d, size in enumerate(spec.shape or ()) if size is None)

    def _generalized(self, key: tuple, structure: list, leaves: list,
                     dims: frozenset | None = None):
        """A trace for a call that differs from an earlier one only in relaxed dimensions (an
        input_signature's ``None``; with ``reduce_retracing``, whichever changed), all of one
        size ``n``: an input_signature's first call is traced symbolically, once for every
        size (:meth:`_trace_symbolic`); otherwise (or where that gives up) the first such call
        traces, the second traces too and the two traces are generalized over ``n``
        (:func:`generalize.fit`). Every later size is made from that without running the
        Python function. None where this does not apply: the caller traces (the traces did
        not fit, sizes 0 and 1, dimensions of different sizes). ``dims``: the ``None``
        dimensions of ``get_concrete_function``'s specs (a function without an
        input_signature: calls that fit them join that family)."""
        explicit = dims is not None
        dims = dims or self._relaxed_dims()
        if not dims and not self.reduce_retracing and not self._families:
            return None
        shapes, fkey = [], []
        for v, k in zip(leaves, key[1]):
            if isinstance(v, (Tensor, np.ndarray)) and not isinstance(v, Variable):
                shapes.append(tuple(v.shape))
                k = ("T", len(v.shape), np.dtype(v.dtype).str)
            fkey.append(k)
        fkey = (key[0], tuple(fkey))
        fam = self._families.get(fkey)
        if fam is None and not dims and not self.reduce_retracing:
            return None  # (no family of get_concrete_function's for this call)
        if fam is not None and not dims:
            dims = fam.dims
        if fam is not None and not fam.exact and fam.template is None:
            n1, shapes1 = fam.first[0], fam.first[1]
            changed = frozenset((i, d) for i, (a, b) in enumerate(zip(shapes1, shapes))
                                for d in range(len(a)) if a[d] != b[d])
            dims = dims or changed
            n1, n = _common(shapes1, dims), _common(shapes, dims)
            if n is None or not changed <= dims:
                return None
            if n1 is None or n1 < 2:
                fam = None  # a first trace of size 1 is no point to fit from: start again
        if fam is None:
            n = _common(shapes, dims) if dims else None
            if dims and (n is None or n < 2):
                return None
            if (self.input_signature is not None or explicit) and dims:
                got = self._trace_symbolic(structure, leaves, dims, n)
                if got is not None:  # traced once, for every size (as TensorFlow)
                    cf, template = got
                    fam = self._families[fkey] = _Family(dims, (n, shapes, cf, None))
                    fam.template, fam.exact = template, template is None
                    return cf
            cf, record = self._trace(structure, leaves, keep=True)
            self._families[fkey] = _Family(dims, (n, shapes, cf, record))
            return cf
        if fam.exact:
            return None
        if fam.template is None:  # the second size: trace it and fit the two
            if n < 2:
                return None
            cf1, record1 = fam.first[2], fam.first[3]
            cf, record = self._trace(structure, leaves, keep=True)
            fam.dims = dims
            fam.template = fit(record1.tracer, n1, record1.marks, record.tracer, n,
                               record.marks, record1.slots) \
                if record1.slots == record.slots else None
            fam.exact = fam.template is None
            fam.first = (n1, shapes1, cf1, None)  # (the template keeps what it needs)
            return cf
        n1, shapes1, cf1 = fam.first[:3]
        n = _common(shapes, fam.dims)
        if n is None or n < 2 or any(a[d] != b[d] for i, (a, b) in enumerate(zip(shapes1, shapes))
                                     for d in range(len(a)) if (i, d) not in fam.dims):
            return None
        return self._from_template(fam, n, cf1, key)

    def _from_template(self, fam: "_Family", n: int, cf1: ConcreteFunction,
                       key: tuple) -> ConcreteFunction:
        trace = fam.template.at(n)
        plan = compile_plan(trace, fam.template.outputs, checked=True)
        inputs = iter(trace.inputs)
        specs = [TensorSpec(trace.meta[next(inputs)][0], s.dtype, s.name)
                 if isinstance(s, TensorSpec) else s for s in cf1.arg_specs]
        slot_of = {i: fam.template.outputs[k] for i, k in cf1._out_slots.items()}
        leaves = [TensorSpec(*trace.meta[slot_of[i]]) if i in slot_of else v
                  for i, v in enumerate(trace.structure)]
        cf = ConcreteFunction(self.__name__, plan, specs, cf1.structured_outputs, leaves,
                              cf1._out_slots, single=cf1._single)
        cf._steady = compile_plan(trace, fam.template.outputs)
        cf._family = fam
        fam.made[n] = key
        if len(fam.made) > _MAX_SIZES:  # plans hold buffers of their size: keep the latest
            old = self._cache.pop(fam.made.pop(next(iter(fam.made))), None)
            for k in [k for k, v in self._fast.items() if v is old]:
                del self._fast[k]
        return cf

    # -- tracing ----------------------------------------------------------------------------
    def _trace_symbolic(self, structure: list, leaves: list, dims: frozenset, n: int):
        """Trace once with the ``None`` dimensions ``dims`` symbolic (:mod:`symdim`): the
        Python function runs once, on the call's tensors (size ``n``), every op also at a
        shadow size; ``(ConcreteFunction, Template | None)``, or None where something in the
        function needed the size as a number (the caller then traces per size)."""
        if not all(type(v._value if isinstance(v, Tensor) else v) is np.ndarray
                   for v in leaves if isinstance(v, (Tensor, np.ndarray))
                   and not isinstance(v, Variable)):
            return None  # (NumPy arrays only: CuPy's are traced per size)
        n2 = 2 * n + 1  # (odd, and far from n: n // 2 or n - 1 cannot look constant)
        tracer = Tracer(allow_variables=self._may_create, name=self.__name__, dual=(n, n2))
        inputs = []
        tensor_index = 0
        for v in leaves:
            if isinstance(v, (Tensor, np.ndarray)) and not isinstance(v, Variable):
                arr = v._value if isinstance(v, Tensor) else v
                axes = [d for i, d in dims if i == tensor_index]
                shadow = arr
                for d in axes:  # the call's rows, repeated to the shadow size
                    shadow = np.take(shadow, np.arange(n2) % n, axis=d)
                inputs.append((shadow, tuple(Dim(1) if d in axes else s
                                             for d, s in enumerate(arr.shape))))
                tensor_index += 1
        try:
            parts, tracer, out_marks, slots = self._run_trace(structure, leaves, tracer, inputs)
        except Exception:  # (whatever failed: the trace per size says it, or works)
            return None
        if tracer.symbolic_failed:
            return None  # (a first trace that failed here leaves variables to the next)
        self._may_create = False
        shadow = tracer.split()
        cf = ConcreteFunction(self.__name__, compile_plan(tracer, slots), *parts)
        tracer.release_values()
        return cf, fit(tracer, n, out_marks, shadow, n2, out_marks, slots, affine=True)

    def _trace(self, structure: list, leaves: list, keep: bool = False) -> tuple:
        """Run the Python function under a tracer: ``(ConcreteFunction, record)``, the record
        (tracer, output marks and slots, for :func:`generalize.fit`) only with ``keep``."""
        tracer = Tracer(allow_variables=self._may_create, name=self.__name__)
        (specs, out, out_leaves, out_slots), tracer, marks, slots = self._run_trace(
            structure, leaves, tracer, None)
        self._may_create = False
        plan = compile_plan(tracer, slots)
        cf = ConcreteFunction(self.__name__, plan, specs, out, out_leaves, out_slots)
        if not keep:
            return cf, None
        tracer.release_values()
        return cf, _Record(tracer, marks, slots)

    def _run_trace(self, structure: list, leaves: list, tracer: Tracer, inputs: list | None):
        """Run the Python function on ``tracer``: ``((specs, out, out_leaves, out_slots),
        tracer, output marks, output slots)``; ``inputs``: (shadow, symbolic shape) of each
        tensor argument when tracing symbolically."""
        traced_leaves = []
        specs = []
        k = 0
        for v in leaves:
            if isinstance(v, (Tensor, np.ndarray)) and not isinstance(v, Variable):
                t = Tensor(v._value if isinstance(v, Tensor) else v)
                specs.append(TensorSpec.from_tensor(t))
                if inputs is None:
                    tracer.add_input(t)
                else:
                    tracer.add_input(t, *inputs[k])
                    k += 1
                traced_leaves.append(t)
            else:
                traced_leaves.append(v)
                specs.append(v)
        args, kwargs = nest.pack_as(structure, traced_leaves)
        self._tracing_count += 1
        # (The trace is dry: the random draws it records -- dropout masks, tp.random -- are
        # undone where they are made, and every replay draws them; a Variable's initial value
        # drawn on the first trace advances the generator, as eagerly.)
        _TRACE.append(tracer)
        try:
            out = self.python_function(*args, **kwargs)
        finally:
            _TRACE.remove(tracer)
        out_leaves = nest.flatten(out)
        out_slots: dict[int, int] = {}
        slots: list[int] = []
        for i, leaf in enumerate(out_leaves):
            if isinstance(leaf, Tensor) and not isinstance(leaf, Variable):
                out_slots[i] = len(slots)
                slots.append(tracer.slot(leaf))
        marks = [_OUT if i in out_slots else v for i, v in enumerate(out_leaves)]
        return (specs, out, out_leaves, out_slots), tracer, marks, slots

    def __repr__(self) -> str:
        return f"<tp.function {self.__name__}>"


_RUN_EAGERLY = [False]  # tp.config.run_functions_eagerly
_MAX_SIZES = 8  # plans made from one generalized trace that are kept (one per size)
_OUT = object()  # a traced output's place in a kept trace's output leaves


class _Record:
    """What a trace kept to be generalized holds."""
    __slots__ = ("tracer", "marks", "slots")

    def __init__(self, tracer, marks: list, slots: list):
        self.tracer, self.marks, self.slots = tracer, marks, slots


class _Family:
    """The traces of calls that differ only in relaxed dimensions (see
    :meth:`Function._generalized`)."""

    def __init__(self, dims: frozenset | None, first: tuple):
        self.dims = dims        # (tensor argument, axis) pairs; None until known
        self.first = first      # (n, shapes, ConcreteFunction, _Record | None)
        self.template = None    # generalize.Template, from the second size on
        self.exact = False      # the two traces did not fit: each size is traced
        self.made: dict = {}    # n -> cache key of a plan made from the template


def _common(shapes: list, dims) -> int | None:
    """The one size of ``dims`` in ``shapes`` (None where they differ)."""
    sizes = {shapes[i][d] for i, d in dims}
    return sizes.pop() if len(sizes) == 1 else None


def _spec_text(v) -> str:
    if isinstance(v, TensorSpec):
        shape = "unknown" if v.shape is None else str(tuple(v.shape))
        return f"{v.dtype.name} Tensor, shape={shape}"
    return repr(v)


class _AnyShape:
    """``get_concrete_function`` of a spec of unknown rank (``TensorSpec(shape=None)``): it
    takes tensors of any shape with the spec's dtype, each shape traced once by the
    function it came from."""

    def __init__(self, function: Function, specs: list):
        self._function, self.structured_input_signature = function, list(specs)

    def __call__(self, *args):
        arrays = nest.flatten(list(args))
        if len(arrays) != len(self.structured_input_signature) or not all(
                s.is_compatible_with(_array(a)) for s, a in
                zip(self.structured_input_signature, arrays)):
            raise TypeError(f"{self._function.__name__}: concrete function called with "
                            f"{[_describe(_array(a)) for a in arrays]}; it takes "
                            f"{self.structured_input_signature}")
        return self._function(*args)


def _describe(v) -> str:
    if isinstance(v, (Tensor, np.ndarray, TensorSpec)):
        return f"{type(v).__name__}(shape={tuple(v.shape) if v.shape is not None else None}, " \
               f"dtype={np.dtype(v.dtype).name})"
    return repr(v)


def _placeholder(spec: TensorSpec) -> np.ndarray:
    """Zeros standing in for a spec when tracing without values (``None`` dims become 2:
    the smallest size a trace is generalized from)."""
    if spec.shape is None:
        raise ValueError(f"cannot trace for {spec}: its rank is unknown")
    return np.zeros(tuple(2 if d is None else d for d in spec.shape), spec.dtype)


def function(func: Callable | None = None, input_signature=None, autograph: bool = True,
             jit_compile: bool | None = None, reduce_retracing: bool = False,
             experimental_implements=None, experimental_autograph_options=None,
             experimental_attributes=None, experimental_relax_shapes: bool | None = None,
             experimental_compile: bool | None = None,
             experimental_follow_type_hints: bool | None = None) -> Function | Callable:
    """Trace ``func`` once per input signature and replay a static plan (``tf.function``).

    Usable as ``@tp.function``, ``@tp.function(input_signature=[...])`` and on methods. A
    ``None`` dimension of the ``input_signature`` is traced once for every size (``x.shape``
    is ``(None, ...)`` inside). ``reduce_retracing`` (``experimental_relax_shapes``, its old
    name): a call whose shapes differ from an earlier trace's is traced once more and then
    replayed for every size of the dimensions that changed (as TensorFlow relaxes them to
    ``None``). TensorFlow's other
    arguments (``autograph``, ``jit_compile``, ``experimental_*``) are accepted; a traced
    function here is always compiled into a plan and never converted by AutoGraph.

    >>> import tapeflow as tp
    >>> @tp.function
    ... def f(x):
    ...     return x * x + 1.0
    >>> f(tp.constant([1.0, 2.0]))
    tp.Tensor([2. 5.], shape=(2,), dtype=float32)
    """
    del autograph, jit_compile, experimental_implements, experimental_autograph_options
    del experimental_attributes, experimental_compile, experimental_follow_type_hints
    reduce_retracing = bool(reduce_retracing or experimental_relax_shapes)

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
    others = [None if isinstance(v, Tensor) else v for v in inputs]  # (no trace-time arrays)

    def kernel(*arrays) -> None:
        values = list(others)
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
    # Floats as TensorFlow prints them (C++ streams: 6 significant digits, no trailing point).
    fmt = {"float_kind": lambda x: format(x, "g")}
    if summarize == -1:
        return np.array2string(a, separator=" ", threshold=sys.maxsize, formatter=fmt)
    return np.array2string(a, separator=" ", threshold=2 * summarize, edgeitems=summarize,
                           formatter=fmt)

