"""``tp.nn.Module``: variable tracking with stable names, and ``Sequential``.

A module finds its Variables by walking its attributes: a Variable, a Module, or a list, tuple or
dict (nested to any depth) holding them. Everything else (ints, strings, Tensors, arrays) is
ignored. The walk is deterministic: attributes in assignment order, lists and tuples by index,
dicts by sorted key. Names join the path with dots, PyTorch ``state_dict`` style::

    Sequential([Dense(4, input_dim=3), Dense(2, input_dim=4)])
    -> "layers.0.kernel", "layers.0.bias", "layers.1.kernel", "layers.1.bias"

Names depend only on the model's structure (no global counters), so the same code gives the
same names in every run: they are the checkpoint keys. A Variable or module reachable by two
paths is listed once, under the first.

>>> import tapeflow as tp
>>> class Affine(tp.nn.Module):
...     def __init__(self):
...         self.w = tp.Variable([[2.0]])
...         self.b = tp.Variable([1.0], trainable=False)
...     def call(self, x, training=False):
...         return x @ self.w + self.b
>>> [name for name, _ in Affine().named_variables()]
['w', 'b']
"""
from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Iterable, Iterator

import numpy as np

from ..tensor import Tensor, Variable
from .keras_api import _KERAS_LAYER_KWARGS, KerasAPI
from .symbolic import KerasTensor, is_symbolic, symbolic_call

__all__ = ["Module", "Model", "Sequential", "module_class"]

# Every Module subclass by class name: what load_model rebuilds a saved architecture from.
_CLASSES: dict[str, type] = {}


class _InitArgs:
    """The arguments a module was constructed with (for ``get_config``). Not a dict or list,
    so the variable walk does not look inside it."""

    __slots__ = ("args",)

    def __init__(self, args: dict[str, Any]):
        self.args = args


def _recording(init):
    """Wrap a subclass's ``__init__`` to keep the outermost call's arguments."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        if "_init_args" not in self.__dict__:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                pass  # the real call raises the usual error
            else:
                named = dict(list(bound.arguments.items())[1:])
                for name, param in signature.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD and name in named:
                        named.update(named.pop(name))
                self.__dict__["_init_args"] = _InitArgs(named)
        init(self, *args, **kwargs)

    wrapped._records_args = True
    return wrapped


def module_class(name: str) -> type:
    """The Module subclass named ``name`` (for rebuilding a saved model)."""
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(f"no tapeflow module class named {name!r}; pass "
                         f"custom_objects={{{name!r}: YourClass}} to load_model") from None


class Module(KerasAPI):
    """Base class of layers and models: tracks Variables; ``module(x, training)`` runs ``call``.

    Subclasses define ``call(self, x, training=False)`` (``training`` may be left out of the
    signature by modules that do not use it). Calling ``super().__init__()`` is optional.
    """

    _call_takes_training = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_args", False):
            cls.__init__ = _recording(init)
        params = inspect.signature(cls.call).parameters
        cls._call_takes_training = "training" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if "build" in cls.__dict__:  # Keras's protocol: a user's build(input_shape) runs
            cls._keras_build = not cls.__module__.startswith("tapeflow.")  # on the first call

    _keras_build = False

    def __init__(self, name: str | None = None, trainable: bool = True, dtype: Any = None,
                 **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _KERAS_LAYER_KWARGS)
        if unknown:
            raise TypeError(f"{type(self).__name__}: keyword arguments not understood: "
                            f"{unknown}")
        self.name = name if name is not None else _unique_name(
            vars(type(self)).get("_default_name") or _snake(type(self).__name__))
        if not trainable or dtype is not None:  # (what add_weight uses by default)
            self._layer_defaults = {"trainable": bool(trainable), "dtype": dtype}

    # -- calling ----------------------------------------------------------------------------
    def __call__(self, x: Any, training: bool = False) -> Any:
        if type(x) is KerasTensor or type(x) in (list, tuple) and is_symbolic(x):
            return symbolic_call(self, x)  # the functional API: keras.Input and its results
        if self._keras_build and not self.__dict__.get("built", False):
            self._build_on(x)
        if self._call_takes_training:
            return self.call(x, training=training)
        return self.call(x)

    def call(self, x: Any, training: bool = False) -> Any:
        # A Module without `call` is a plain container of variables and submodules.
        raise TypeError(f"{type(self).__name__} is not callable: it defines no "
                        f"call(self, x, training=False)")

    # -- tracking ---------------------------------------------------------------------------
    def named_variables(self) -> list[tuple[str, Variable]]:
        """``[(name, Variable), ...]`` in deterministic order; names are unique and stable."""
        out: list[tuple[str, Variable]] = []
        _walk_module(self, "", out, set(), set(), None)
        names: dict[str, int] = {}
        for i, (name, _) in enumerate(out):
            if name in names:
                raise ValueError(f"{type(self).__name__}: two variables are both named {name!r} "
                                 f"(an attribute or dict key containing '.' collides with a "
                                 f"nested path); rename one")
            names[name] = i
        return out

    def named_modules(self) -> list[tuple[str, "Module"]]:
        """``[(name, Module), ...]``: this module (name ``""``) and every nested one."""
        mods: list[tuple[str, Module]] = []
        _walk_module(self, "", [], set(), set(), mods)
        return mods

    @property
    def variables(self) -> list[Variable]:
        """All tracked Variables, trainable or not, in walk order."""
        return [v for _, v in self.named_variables()]

    def to(self, device) -> "Module":
        """Move every variable of this module and its submodules to ``device`` (``"/GPU:0"``,
        ``"cpu"``) in place, and return the module. Optimizers create slots on each variable's
        device, so move a model before its first training step."""
        from ..device_ops import move_variables

        move_variables(self.variables, device)
        return self

    @property
    def trainable_variables(self) -> list[Variable]:
        return [v for _, v in self.named_variables() if v.trainable]

    @property
    def non_trainable_variables(self) -> list[Variable]:
        return [v for _, v in self.named_variables() if not v.trainable]

    # Keras's names for the same lists (``model.trainable_weights`` in its training loops)
    weights = variables
    trainable_weights = trainable_variables
    non_trainable_weights = non_trainable_variables

    @property
    def submodules(self) -> list["Module"]:
        """Every nested module (not this one), in walk order."""
        return [m for name, m in self.named_modules() if name]

    def count_params(self) -> int:
        """Number of scalars in all tracked Variables."""
        return sum(int(v.size) for v in self.variables)

    def get_weights(self) -> list[np.ndarray]:
        """Keras's ``get_weights``: host copies of every Variable, in ``variables`` order."""
        return [np.array(v.numpy(), copy=True) for v in self.variables]

    def set_weights(self, weights: list) -> None:
        """Keras's ``set_weights``: assign arrays in ``variables`` order (counts and shapes must
        match; values are cast to each Variable's dtype and device)."""
        variables = self.variables
        weights = list(weights)
        if len(weights) != len(variables):
            raise ValueError(f"{type(self).__name__}.set_weights: got {len(weights)} arrays for "
                             f"{len(variables)} variables")
        for i, (v, w) in enumerate(zip(variables, weights)):
            shape = tuple(getattr(w, "shape", np.shape(w)))
            if shape != v.shape:
                raise ValueError(f"{type(self).__name__}.set_weights: array #{i} has shape "
                                 f"{shape} but variable {v.name!r} has shape {v.shape}")
        for v, w in zip(variables, weights):
            v.assign(w if isinstance(w, Tensor) else _on_device_of(v, np.asarray(w)))

    # -- plain-array state (for checkpoints) ------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """``{name: host NumPy copy}`` of every Variable."""
        return {name: np.array(v.numpy(), copy=True) for name, v in self.named_variables()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Assign values by name. ``strict``: the names must match exactly (both ways).

        Shapes must match; values are cast to each Variable's dtype and device.
        """
        named = dict(self.named_variables())
        if strict:
            missing = sorted(set(named) - set(state))
            unexpected = sorted(set(state) - set(named))
            if missing or unexpected:
                raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}, "
                               f"unexpected {unexpected}")
        for name, v in named.items():
            if name not in state:
                continue
            value = state[name]
            shape = tuple(getattr(value, "shape", np.shape(value)))
            if shape != v.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name!r} has shape "
                                 f"{shape} but the variable has shape {v.shape}")
            if not isinstance(value, Tensor):
                value = _on_device_of(v, np.asarray(value))
            v.assign(value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '')!r}: " \
               f"{len(self.variables)} variables>"

class Model(Module):
    """Keras's ``Model``: a base class to subclass (define ``call``), or, called with
    ``inputs`` and ``outputs`` (symbolic tensors), a functional model
    (:class:`~tapeflow.nn.functional_model.Functional`)."""

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is Model and ("inputs" in kwargs or "outputs" in kwargs or len(args) >= 2):
            from .functional_model import Functional

            return super().__new__(Functional)
        return super().__new__(cls)


class Sequential(Model):
    """Layers applied in order; ``training`` is passed to each.

    >>> import tapeflow as tp
    >>> m = tp.nn.Sequential([tp.nn.Dense(4, activation="relu", input_dim=3), tp.nn.Dense(2)])
    >>> m(tp.ones((5, 3))).shape
    (5, 2)
    """

    def __init__(self, layers: Iterable[Module] = (), name: str | None = None) -> None:
        super().__init__(name)
        self.layers: list[Module] = []
        for layer in layers:
            self.add(layer)

    def add(self, layer: Module) -> None:
        if isinstance(layer, KerasTensor) and layer.input_layer is not None:
            layer = layer.input_layer  # Sequential([keras.Input(shape=...), ...])
        if not callable(layer):
            raise TypeError(f"Sequential.add: expected a Module or callable, got "
                            f"{type(layer).__name__}")
        self.layers.append(layer)
        # Keras: a first layer that declares its input shape builds the model as it grows.
        hint = getattr(self.layers[0], "input_shape_hint", None)
        if hint and None not in hint:  # (open sizes: built on the first batch instead)
            self.build(hint)

    def call(self, x: Any, training: bool = False) -> Any:
        if self.__dict__.get("_build_input_shape") is None:
            # Keras records a deferred build's input shape on the first call: what save()
            # writes, so load_model can build the model before loading its weights.
            rest = tuple(getattr(x, "shape", np.shape(x)))[1:]
            if all(isinstance(d, (int, np.integer)) for d in rest):
                self._build_input_shape = tuple(int(d) for d in rest)
        for layer in self.layers:
            x = layer(x, training=training) if isinstance(layer, Module) else layer(x)
        return x

    def build(self, input_shape: tuple[int, ...], dtype: str = "float32") -> None:
        """Create lazily built variables by running a zero batch of ``(1, *input_shape)``.

        Keras's spelling with the batch dimension, ``build((None, 784))``, works too (a
        leading ``None`` is the batch). Call it outside any ``GradientTape``.
        """
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        if any(d is None for d in shape):
            raise ValueError(f"build: input_shape {tuple(input_shape)} may have None only as "
                             "its first (batch) dimension")
        self(np.zeros((1,) + shape, dtype))
        self._build_input_shape = shape

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)" if inner else "Sequential()"


# ---------------------------------------------------------------------------- internals
_NAME_COUNTS: dict[str, int] = {}  # Keras's: dense, dense_1, ... (clear_session resets)


def _unique_name(base: str) -> str:
    n = _NAME_COUNTS.get(base, 0)
    _NAME_COUNTS[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def clear_names() -> None:
    """Start default layer names afresh (``tp.keras.backend.clear_session()``)."""
    _NAME_COUNTS.clear()


def _snake(name: str) -> str:
    """Keras's default layer name: ``Conv2D`` -> ``conv2d``, ``BatchNormalization`` ->
    ``batch_normalization`` (an underscore before a capital after a lower-case letter, or
    before a capitalised word)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _walk_module(mod: Module, prefix: str, out: list, seen_vars: set, seen_mods: set,
                 mods: list | None) -> None:
    if id(mod) in seen_mods:
        return
    seen_mods.add(id(mod))
    if mods is not None:
        mods.append((prefix, mod))
    for key, value in vars(mod).items():
        if key != "_tp_weights":
            _walk(value, _join(prefix, key), out, seen_vars, seen_mods, mods)
    for key, value in vars(mod).get("_tp_weights", {}).items():  # add_weight's, by name,
        _walk(value, _join(prefix, key), out, seen_vars, seen_mods, mods)  # unless an attribute


def _walk(obj: Any, prefix: str, out: list, seen_vars: set, seen_mods: set,
          mods: list | None) -> None:
    if isinstance(obj, Variable):
        if id(obj) not in seen_vars:
            seen_vars.add(id(obj))
            out.append((prefix, obj))
    elif isinstance(obj, Module):
        _walk_module(obj, prefix, out, seen_vars, seen_mods, mods)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            if isinstance(item, (Variable, Module, list, tuple, dict)):
                _walk(item, _join(prefix, str(i)), out, seen_vars, seen_mods, mods)
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            _walk(obj[key], _join(prefix, str(key)), out, seen_vars, seen_mods, mods)


def _on_device_of(v: Variable, arr: np.ndarray):
    from .._backend import array_module

    xp = array_module(v._value)
    return arr if xp is np else xp.asarray(arr)
