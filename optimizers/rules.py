"""Pure update rules (optax style), written once against the array module ``xp``.

Each factory takes an optimizer's hyperparameters and returns a :class:`Rule`, a pair of pure
functions::

    init(param) -> state                         # dict of slot name -> array (like param)
    update(grad, state, param, lr, step) -> (update, new_state)

and the new parameter is ``param - update`` (Keras's ``assign_sub``). ``step`` is the 1-based
count of updates (Keras's ``iterations + 1``); ``lr`` is the learning rate for this step, a
Python float. Rules never modify ``grad`` or ``param``. ``state`` is consumed: a rule may update
its arrays in place and return them as the new state (each fresh full-size array costs a pass of
page faults per step), so the old state must not be used after ``update``. Hyperparameters are cast to the parameter's dtype, so float32 stays float32.
Step-dependent scalars (``beta ** step`` ...) are computed in float64 on the host, then cast.

Every rule follows the Keras 3 source (``keras/src/optimizers/*.py``); the formulas, including
where epsilon sits, are in each docstring. Decoupled weight decay is not part of the rules: the
stateful optimizer applies :func:`decoupled_weight_decay` before the rule, as Keras 3 does.

Example:
    >>> import numpy as np
    >>> rule = adam()
    >>> p = np.ones(3, np.float32); g = np.full(3, 0.5, np.float32)
    >>> upd, state = rule.update(g, rule.init(p), p, lr=0.1, step=1)
    >>> (p - upd).round(4), (p - upd).dtype       # the first Adam step moves by ~lr
    (array([0.9, 0.9, 0.9], dtype=float32), dtype('float32'))
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from tapeflow._backend import array_module

Array = Any  # numpy.ndarray or cupy.ndarray
State = dict[str, Array]

__all__ = [
    "Rule", "sgd", "adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "lion",
    "decoupled_weight_decay", "xp_of",
]


class Rule(NamedTuple):
    """An update rule: ``init(param) -> state`` and
    ``update(grad, state, param, lr, step) -> (update, new_state)``; new param = param - update.
    """

    init: Callable[[Array], State]
    update: Callable[[Array, State, Array, float, int], tuple[Array, State]]


def xp_of(a: Array):
    """The array module of ``a``: numpy for NumPy arrays, cupy for CuPy arrays (cupy stays
    optional), the registered module of another device array (the device tests' stand-in)."""
    return array_module(a)


def _c(value: float, like: Array):
    """``value`` as a scalar of ``like``'s dtype (a NumPy scalar works for CuPy arrays too)."""
    return like.dtype.type(value)

def _moments(xp, grad: Array, state: State, param: Array, beta_1: float, beta_2: float):
    """Adam's moment updates, Keras style: ``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``."""
    m = grad - state["momentum"]
    m *= _c(1.0 - beta_1, param)
    m += state["momentum"]
    v = xp.square(grad)
    v -= state["velocity"]
    v *= _c(1.0 - beta_2, param)
    v += state["velocity"]
    return m, v



def decoupled_weight_decay(param: Array, lr: float, weight_decay: float) -> Array:
    """Keras 3 weight decay, applied before the update: ``p <- p - p * (wd * lr)``."""
    return param - param * _c(weight_decay * lr, param)


def sgd(momentum: float = 0.0, nesterov: bool = False) -> Rule:
    """SGD with optional (Nesterov) momentum, Keras semantics.

    momentum == 0: ``p <- p - lr * g`` (no state).
    momentum > 0: ``v <- momentum * v - lr * g``; then ``p <- p + v``, or with Nesterov
    ``p <- p + momentum * v - lr * g`` (using the new ``v``).
    """

    def init(param: Array) -> State:
        if momentum == 0:
            return {}
        return {"momentum": xp_of(param).zeros_like(param)}

    def update(grad, state, param, lr, step):
        upd = grad * _c(lr, param)  # the only full-size allocation
        if momentum == 0:
            return upd, {}
        mu = _c(momentum, param)
        v = state["momentum"]
        v *= mu
        upd -= v                     # lr * g - mu * v_old == -v_new
        xp_of(param).negative(upd, out=v)
        if nesterov:
            upd *= mu                # -mu * v_new
            upd += grad * _c(lr, param)  # p - upd == p + mu * v_new - lr * g
        return upd, {"momentum": v}

    return Rule(init, update)


def adam(beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
         amsgrad: bool = False) -> Rule:
    """Adam with Keras's epsilon placement ("epsilon hat", outside the square root)::

        m <- m + (g - m) * (1 - beta_1)
        v <- v + (g^2 - v) * (1 - beta_2)
        (amsgrad: v_hat <- max(v_hat, v), and v_hat replaces v below)
        alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        p <- p - alpha * m / (sqrt(v) + epsilon)
    """

    def init(param: Array) -> State:
        xp = xp_of(param)
        state = {"momentum": xp.zeros_like(param), "velocity": xp.zeros_like(param)}
        if amsgrad:
            state["velocity_hat"] = xp.zeros_like(param)
        return state

    def update(grad, state, param, lr, step):
        xp = xp_of(param)
        m, v = _moments(xp, grad, state, param, beta_1, beta_2)
        new_state = {"momentum": m, "velocity": v}
        if amsgrad:
            v = xp.maximum(state["velocity_hat"], v)
            new_state["velocity_hat"] = v
        alpha = lr * math.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
        denom = xp.sqrt(v)
        denom += _c(epsilon, param)
        upd = m * _c(alpha, param)
        upd /= denom
        return upd, new_state

    return Rule(init, update)


def rmsprop(rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7,
            centered: bool = False) -> Rule:
    """RMSprop, Keras semantics (epsilon *inside* the square root)::

        v <- rho * v + (1 - rho) * g^2
        centered: mg <- rho * mg + (1 - rho) * g;  denom = v - mg^2 + epsilon
        otherwise:                                 denom = v + epsilon
        increment = lr * g / sqrt(denom)
        momentum > 0: mom <- momentum * mom + increment;  p <- p - mom
        otherwise:                                        p <- p - increment
    """

    def init(param: Array) -> State:
        xp = xp_of(param)
        state = {"velocity": xp.zeros_like(param)}
        if momentum > 0:
            state["momentum"] = xp.zeros_like(param)
        if centered:
            state["average_gradient"] = xp.zeros_like(param)
        return state

    def update(grad, state, param, lr, step):
        xp = xp_of(param)
        r, one_r = _c(rho, param), _c(1.0 - rho, param)
        v = state["velocity"] * r
        v += one_r * xp.square(grad)
        new_state = {"velocity": v}
        if centered:
            mg = state["average_gradient"] * r
            mg += one_r * grad
            new_state["average_gradient"] = mg
            denom = v - xp.square(mg)
        else:
            denom = v.copy()
        denom += _c(epsilon, param)
        upd = grad * _c(lr, param)
        upd /= xp.sqrt(denom, out=denom)
        if momentum > 0:
            mom = state["momentum"] * _c(momentum, param)
            mom += upd
            new_state["momentum"] = mom
            upd = mom
        return upd, new_state

    return Rule(init, update)


def adagrad(initial_accumulator_value: float = 0.1, epsilon: float = 1e-7) -> Rule:
    """Adagrad, Keras semantics (epsilon inside the square root)::

        acc <- acc + g^2            (acc starts at initial_accumulator_value)
        p <- p - lr * g / sqrt(acc + epsilon)
    """

    def init(param: Array) -> State:
        return {"accumulator": xp_of(param).full_like(param, initial_accumulator_value)}

    def update(grad, state, param, lr, step):
        xp = xp_of(param)
        acc = xp.square(grad)
        acc += state["accumulator"]
        denom = acc + _c(epsilon, param)
        upd = grad * _c(lr, param)
        upd /= xp.sqrt(denom, out=denom)
        return upd, {"accumulator": acc}

    return Rule(init, update)


def adadelta(rho: float = 0.95, epsilon: float = 1e-7) -> Rule:
    """Adadelta, Keras semantics (``rms(x) = sqrt(x + epsilon)``)::

        ag <- rho * ag + (1 - rho) * g^2
        delta = -rms(adv) * g / rms(ag)
        adv <- rho * adv + (1 - rho) * delta^2
        p <- p + lr * delta
    """

    def init(param: Array) -> State:
        xp = xp_of(param)
        return {"accumulated_grad": xp.zeros_like(param),
                "accumulated_delta_var": xp.zeros_like(param)}

    def update(grad, state, param, lr, step):
        xp = xp_of(param)
        r, one_r, eps = _c(rho, param), _c(1.0 - rho, param), _c(epsilon, param)
        ag = state["accumulated_grad"] * r
        ag += one_r * xp.square(grad)
        adv_old = state["accumulated_delta_var"]
        neg_delta = xp.sqrt(adv_old + eps) * grad  # -delta: what gets subtracted (times lr)
        neg_delta /= xp.sqrt(ag + eps)
        adv = adv_old * r
        adv += one_r * xp.square(neg_delta)
        neg_delta *= _c(lr, param)
        return neg_delta, {"accumulated_grad": ag, "accumulated_delta_var": adv}

    return Rule(init, update)


def adamax(beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Rule:
    """Adamax (infinity-norm Adam), Keras semantics::

        m <- m + (g - m) * (1 - beta_1)
        u <- max(beta_2 * u, |g|)
        p <- p - lr * m / ((1 - beta_1^t) * (u + epsilon))
    """

    def init(param: Array) -> State:
        xp = xp_of(param)
        return {"momentum": xp.zeros_like(param), "norm": xp.zeros_like(param)}

    def update(grad, state, param, lr, step):
        xp = xp_of(param)
        m = grad - state["momentum"]
        m *= _c(1.0 - beta_1, param)
        m += state["momentum"]
        u = xp.maximum(state["norm"] * _c(beta_2, param), xp.abs(grad))
        denom = u + _c(epsilon, param)
        upd = m * _c(lr / (1.0 - beta_1**step), param)
        upd /= denom
        return upd, {"momentum": m, "norm": u}

    return Rule(init, update)


def nadam(beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Rule:
    """Nadam with Keras's momentum-cache schedule (decay 0.96; Dozat 2015)::

        u_t     = beta_1 * (1 - 0.5 * 0.96^t)
        u_{t+1} = beta_1 * (1 - 0.5 * 0.96^(t+1))
        prod_t  = prod_{t-1} * u_t            (prod_0 = 1; kept in the state)
        m <- m + (g - m) * (1 - beta_1)
        v <- v + (g^2 - v) * (1 - beta_2)
        m_hat = u_{t+1} * m / (1 - prod_t * u_{t+1}) + (1 - u_t) * g / (1 - prod_t)
        v_hat = v / (1 - beta_2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + epsilon)

    ``prod`` is a float64 host scalar per parameter (Keras keeps one for the whole optimizer,
    in the variables' dtype); they agree unless a variable's gradient is skipped on some step.
    """

    def init(param: Array) -> State:
        xp = xp_of(param)
        return {"momentum": xp.zeros_like(param), "velocity": xp.zeros_like(param),
                "u_product": np.ones((), np.float64)}

    def update(grad, state, param, lr, step):
        xp = xp_of(param)
        u_t = beta_1 * (1.0 - 0.5 * 0.96**step)
        u_t1 = beta_1 * (1.0 - 0.5 * 0.96 ** (step + 1))
        prod = float(state["u_product"]) * u_t
        m, v = _moments(xp, grad, state, param, beta_1, beta_2)
        m_hat = m * _c(u_t1 / (1.0 - prod * u_t1), param)
        m_hat += grad * _c((1.0 - u_t) / (1.0 - prod), param)
        denom = v * _c(1.0 / (1.0 - beta_2**step), param)
        denom = xp.sqrt(denom, out=denom)
        denom += _c(epsilon, param)
        m_hat *= _c(lr, param)
        m_hat /= denom
        return m_hat, {"momentum": m, "velocity": v, "u_product": np.asarray(prod, np.float64)}

    return Rule(init, update)


def lion(beta_1: float = 0.9, beta_2: float = 0.99) -> Rule:
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), Keras::

        p <- p - lr * sign(beta_1 * m + (1 - beta_1) * g)
        m <- beta_2 * m + (1 - beta_2) * g

    The update's direction interpolates with ``beta_1``; the carried momentum uses ``beta_2``.
    """

    def init(param: Array) -> State:
        return {"momentum": xp_of(param).zeros_like(param)}

    def update(grad, state, param, lr, step):
        xp = xp_of(param)
        m = state["momentum"]
        upd = m * _c(beta_1, param)
        upd += grad * _c(1.0 - beta_1, param)
        xp.sign(upd, out=upd)
        upd *= _c(lr, param)
        m *= _c(beta_2, param)
        m += grad * _c(1.0 - beta_2, param)
        return upd, {"momentum": m}

    return Rule(init, update)
