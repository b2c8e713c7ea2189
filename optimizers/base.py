"""The stateful Keras-style optimizer: one thin object over a pure update rule (``rules.py``).

A subclass is a dataclass that declares its hyperparameters once, as typed fields with
defaults, and names its rule factory; the base class passes exactly those fields to the
factory. Options every optimizer has (``weight_decay``, ``clipnorm``, ``clipvalue``,
``global_clipnorm``, ``name``) are keyword-only fields of the base class::

    @dataclasses.dataclass(eq=False)
    class Adam(Optimizer):
        learning_rate: LearningRate = 0.001
        beta_1: float = 0.9
        ...
        rule_factory = staticmethod(rules.adam)

One step of :meth:`Optimizer.apply_gradients`, in Keras 3 order: drop ``None`` gradients;
cast each gradient to its variable's dtype; clip (``clipnorm`` per gradient, ``global_clipnorm``
over all of them, or ``clipvalue`` elementwise: at most one is set); decoupled weight decay
``p <- p - p * wd * lr``; the rule's update ``p <- p - update``; ``iterations += 1``.
The learning rate of a step is ``learning_rate(iterations)`` for a schedule (0 on the first
step), as in Keras.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import KW_ONLY, dataclass
from typing import Any, Callable, ClassVar, Iterable

import numpy as np

from tapeflow import devices
from tapeflow.trace import replayed

from . import clip, rules, schedules
from .rules import Rule, State, xp_of
from .schedules import LearningRate

__all__ = ["Optimizer"]

_SLOT_KEY = re.compile(r"^(\d+)/(\w+)$")


def _to_numpy(a: Any) -> np.ndarray:
    """A host (NumPy) copy of ``a``."""
    return a.get() if hasattr(a, "get") and xp_of(a) is not np else np.array(a, copy=True)


def _on_device_of(g: Any, var: Any, name: str) -> Any:
    """A host (NumPy) gradient copied to its variable's device, as ``Variable.assign`` does; a
    gradient on another device is refused (copying across devices is explicit)."""
    src, dst = devices.device_of(g), devices.device_of(var._value)
    if src.device_type != "CPU":
        raise ValueError(f"{name}: gradient on {src} for variable "
                         f"{getattr(var, 'name', None)!r} on {dst}; copy it explicitly")
    return devices.to_device(g, dst)


def _describe(var: Any, index: int) -> str:
    return f"variable #{index} ({getattr(var, 'name', None)!r}, shape {tuple(var.shape)})"


@dataclass(eq=False)
class Optimizer:
    """Base class. ``learning_rate`` is a float or a schedule (any callable of the step).

    Args:
        learning_rate: float, or ``schedule(step) -> float``.
        weight_decay: decoupled weight decay applied before the update, as in Keras 3:
            ``p <- p - p * weight_decay * lr`` (``None`` or 0 disables it).
        clipnorm: clip each gradient to this L2 norm (:func:`clip.clip_by_norm`).
        clipvalue: clip each gradient elementwise to ``[-clipvalue, clipvalue]``.
        global_clipnorm: clip all gradients together by their global norm. At most one of
            ``clipnorm``, ``clipvalue`` and ``global_clipnorm`` may be set (Keras 3).
        name: optional name (default: the class name).
    """

    learning_rate: LearningRate = 0.001
    _: KW_ONLY
    weight_decay: float | None = None
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None
    name: str | None = None

    #: ``rules.<name>``: called with this class's own hyperparameter fields as keywords.
    rule_factory: ClassVar[Callable[..., Rule]]

    def __post_init__(self) -> None:
        clips = {k: getattr(self, k) for k in ("clipnorm", "clipvalue", "global_clipnorm")
                 if getattr(self, k) is not None}
        if len(clips) > 1:  # Keras 3 refuses any two of them together
            raise ValueError(
                f"{type(self).__name__}: only one of clipnorm, clipvalue and global_clipnorm "
                f"can be set; got " + ", ".join(f"{k}={v}" for k, v in clips.items()))
        for opt in ("clipnorm", "clipvalue", "global_clipnorm"):
            value = getattr(self, opt)
            if value is not None and not value > 0:
                raise ValueError(f"{type(self).__name__}: {opt} must be > 0, got {value}")
        if not (callable(self.learning_rate) or isinstance(self.learning_rate, (int, float))):
            raise TypeError(f"{type(self).__name__}: learning_rate must be a float or a "
                            f"schedule, got {type(self.learning_rate).__name__}")
        if self.name is None:
            self.name = type(self).__name__
        self.iterations: int = 0
        self._variables: list[Any] = []          # in the order first seen
        self._index: dict[int, int] = {}         # id(variable) -> position
        self._slots: list[State] = []            # per position
        self._pending: dict[int, dict[str, np.ndarray]] = {}  # from set_state, not yet built

    # ---------------------------------------------------------------- hyperparameters
    @classmethod
    def hyperparameter_names(cls) -> list[str]:
        """The fields this subclass adds (those passed to ``rule_factory``)."""
        names = cls.__dict__.get("_hyperparameter_names")
        if names is None:  # computed once per class: dataclasses.fields is slow per step
            base = {f.name for f in dataclasses.fields(Optimizer)}
            names = tuple(f.name for f in dataclasses.fields(cls) if f.name not in base)
            setattr(cls, "_hyperparameter_names", names)
        return list(names)

    def rule(self) -> Rule:
        """The pure update rule for the current hyperparameters (rebuilt only when they change)."""
        values = tuple(getattr(self, k) for k in type(self).hyperparameter_names())
        cached = self.__dict__.get("_rule_cache")
        if cached is None or cached[0] != values:
            rule = type(self).rule_factory(**dict(zip(self.hyperparameter_names(), values)))
            cached = self.__dict__["_rule_cache"] = (values, rule)
        return cached[1]

    @property
    def current_learning_rate(self) -> float:
        """The learning rate the next :meth:`apply_gradients` will use."""
        lr = self.learning_rate
        return float(lr(self.iterations) if callable(lr) else lr)

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument, JSON-able (a schedule is :func:`schedules.serialize`d)."""
        config = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.learning_rate, schedules.LearningRateSchedule):
            config["learning_rate"] = schedules.serialize(self.learning_rate)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Optimizer":
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)

    # ---------------------------------------------------------------- applying gradients
    def build(self, variables: Iterable[Any]) -> None:
        """Create (or restore, after :meth:`set_state`) the state of ``variables``, in order.
        Called by :meth:`apply_gradients`; call it yourself to inspect state before a step."""
        self._build(variables, self.rule())

    def _build(self, variables: Iterable[Any], rule: Rule) -> None:
        index = self._index
        for var in variables:
            if id(var) not in index:
                self._register(var, rule)
        if self._pending:
            first = min(self._pending)
            raise ValueError(
                f"{self.name}: the restored state holds variable #{first} and up, but this "
                f"optimizer has only seen {len(self._variables)} variables; the state belongs "
                f"to a different model (or pass all variables to build()/apply_gradients)")

    def _register(self, var: Any, rule: Rule) -> None:
        i = len(self._variables)
        fresh = rule.init(var._value)
        if i in self._pending:
            fresh = self._restore_slots(i, var, fresh, self._pending[i])
            del self._pending[i]
        self._index[id(var)] = i
        self._variables.append(var)
        self._slots.append(fresh)

    def _restore_slots(self, i: int, var: Any, fresh: State,
                       saved: dict[str, np.ndarray]) -> State:
        """``saved`` checked against ``fresh`` (names, shapes) and moved to its device/dtype."""
        if set(saved) != set(fresh):
            raise ValueError(
                f"{self.name}: state for {_describe(var, i)} has slots {sorted(saved)}, "
                f"expected {sorted(fresh)} (was it saved by a differently configured "
                f"optimizer?)")
        for k, a in saved.items():
            if tuple(a.shape) != tuple(fresh[k].shape):
                raise ValueError(
                    f"{self.name}: state for {_describe(var, i)}: slot {k!r} has shape "
                    f"{tuple(a.shape)}, expected {tuple(fresh[k].shape)}")
        # Copies: rules update state in place, which must never reach the caller's arrays.
        return {k: xp_of(fresh[k]).array(a, dtype=fresh[k].dtype, copy=True)
                for k, a in saved.items()}

    def _raw_gradient(self, grad: Any, var: Any) -> Any:
        g = getattr(grad, "_value", grad)  # Tensor or raw array
        p = var._value
        if not hasattr(g, "shape"):
            g = xp_of(p).asarray(g)
        elif type(g) is not type(p):
            g = _on_device_of(g, var, self.name)
        if g.shape != p.shape:
            raise ValueError(f"{self.name}: gradient of shape {tuple(g.shape)} does not match "
                             f"variable {getattr(var, 'name', None)!r} of shape "
                             f"{tuple(p.shape)}")
        return g if g.dtype == p.dtype else g.astype(p.dtype)

    def _clip(self, grads: list[Any]) -> list[Any]:
        if self.clipnorm is not None:
            grads = [clip.clip_by_norm(g, self.clipnorm) for g in grads]
        elif self.global_clipnorm is not None:
            grads, _ = clip.clip_by_global_norm(grads, self.global_clipnorm)
        elif self.clipvalue is not None:
            grads = [clip.clip_by_value(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    @replayed  # inside tp.function: recorded at trace time, run on every replay
    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Any]]) -> int:
        """Apply one step to every ``(gradient, variable)`` pair; ``None`` gradients are
        skipped. Returns ``iterations`` after the step. An empty list is a no-op; a list whose
        gradients are all ``None`` is an error (nothing would train)."""
        pairs = list(grads_and_vars)
        live = [(g, v) for g, v in pairs if g is not None]
        if not live:
            if not pairs:
                return self.iterations
            names = [getattr(v, "name", None) for _, v in pairs]
            raise ValueError(f"{self.name}: no gradients provided for any variable {names}")
        variables = [v for _, v in live]
        grads = self._clip([self._raw_gradient(g, v) for g, v in live])
        rule = self.rule()
        # every variable gets its position, even one whose gradient is None this step, so
        # positions do not depend on which gradients happened to be missing
        self._build([v for _, v in pairs], rule)
        lr = self.current_learning_rate
        step = self.iterations + 1
        wd = self.weight_decay
        for g, var in zip(grads, variables):
            i = self._index[id(var)]
            p = var._value
            if wd:
                p = rules.decoupled_weight_decay(p, lr, wd)
                upd, self._slots[i] = rule.update(g, self._slots[i], p, lr, step)
                p -= upd
                # p is a fresh array here, owned by nobody else
                var._value = p
            else:
                upd, self._slots[i] = rule.update(g, self._slots[i], p, lr, step)
                del p
                # copy-on-write: in place unless a tape snapshot or user array shares the buffer
                var._subtract_(upd)
        self.iterations += 1
        return self.iterations

    def _tp_replay_apply_gradients(self, grads_and_vars,
                                   _tp_scratch: tuple = ()) -> Callable | None:
        """For a ``tp.function`` plan: ``kernel(*gradient_arrays)`` doing this step's
        :meth:`apply_gradients` for these variables with preallocated buffers, or ``None``
        (the plan then calls :meth:`apply_gradients` itself). Plain SGD only (no momentum,
        clipping or weight decay): ``lr * g`` into a buffer, then ``p -= buffer``, eager's
        arithmetic exactly. ``_tp_scratch`` (from the plan, one flag per gradient) marks the
        gradient arrays that are the plan's own buffers read by nothing after this call:
        ``lr * g`` goes into them in place, a smaller working set than a separate buffer.
        Any other configuration at run time falls back to the eager step.
        """
        pairs = list(grads_and_vars)
        if not self._plain_sgd() or any(not hasattr(g, "_value")
                                        or tuple(g.shape) != tuple(v.shape)
                                        or g.dtype != v.dtype for g, v in pairs):
            return None
        variables = [v for _, v in pairs]
        scratch = tuple(_tp_scratch) if len(_tp_scratch) == len(pairs) else \
            (False,) * len(pairs)
        # per variable: (variable, where lr * g goes (None: into g), its array module)
        work = [(v, None if s else xp_of(v._value).empty_like(v._value), xp_of(v._value))
                for v, s in zip(variables, scratch)]
        built: list = []
        scaled: list = [None, []]  # the learning rate last used; it in each variable's dtype

        def kernel(*grads) -> None:
            if not self._plain_sgd():
                self.apply_gradients(zip(grads, variables))
                return
            if not built:
                self._build(variables, self.rule())
                built.append(True)
            lr = self.current_learning_rate
            if lr != scaled[0]:
                scaled[:] = lr, [rules._c(lr, v._value) for v in variables]
            for g, (var, buf, xp), c in zip(grads, work, scaled[1]):
                upd = g if buf is None else buf
                xp.multiply(g, c, out=upd)
                var._subtract_(upd)
            self.iterations += 1
        return kernel

    def _plain_sgd(self) -> bool:
        """Whether a step is ``p -= lr * g`` alone (what the fused replay kernel does)."""
        return type(self).rule_factory is rules.sgd and not getattr(self, "momentum", 0) \
            and not self.weight_decay and self.clipnorm is None and self.clipvalue is None \
            and self.global_clipnorm is None

    # ---------------------------------------------------------------- state
    def variables(self) -> list[Any]:
        """The model variables this optimizer has state for, in position order."""
        return list(self._variables)

    def get_state(self) -> dict[str, Any]:
        """A flat dict: ``"iterations"`` (int), ``"optimizer"`` (class name), and for the
        variable at position ``i`` (order first seen) each slot as ``"i/<slot>"`` -> NumPy
        array. JSON scalars + arrays: store it with safetensors/npz + JSON, never pickle."""
        state: dict[str, Any] = {"optimizer": type(self).__name__,
                                 "iterations": int(self.iterations)}
        for i, slots in enumerate(self._slots):
            for k, a in slots.items():
                state[f"{i}/{k}"] = _to_numpy(a)
        # State restored by set_state for variables not seen yet is still this optimizer's
        # state: leaving it out would lose it in a save or broadcast before the first step.
        for i, slots in self._pending.items():
            for k, a in slots.items():
                state[f"{i}/{k}"] = _to_numpy(a)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s dict. Variables already seen are checked (slot names,
        shapes) now; later ones when first seen. Raises ``ValueError`` saying what
        mismatched; nothing is changed when the check of the seen variables fails."""
        saved_name = state.get("optimizer", type(self).__name__)
        if saved_name != type(self).__name__:
            raise ValueError(f"{self.name}: state was saved by a {saved_name} optimizer, "
                             f"not {type(self).__name__}")
        if "iterations" not in state:
            raise ValueError(f"{self.name}: state has no 'iterations' entry")
        per_var: dict[int, dict[str, np.ndarray]] = {}
        for key, value in state.items():
            if key in ("optimizer", "iterations"):
                continue
            match = _SLOT_KEY.match(key)
            if match is None:
                raise ValueError(f"{self.name}: unexpected state entry {key!r}; expected "
                                 "'iterations', 'optimizer' or '<position>/<slot>'")
            per_var.setdefault(int(match[1]), {})[match[2]] = np.array(value)  # a copy
        rule = self.rule()
        restored = {}
        for i, var in enumerate(self._variables):
            restored[i] = self._restore_slots(i, var, rule.init(var._value), per_var.pop(i, {}))
        for i, slots in restored.items():
            self._slots[i] = slots
        self._pending = per_var
        self.iterations = int(state["iterations"])
