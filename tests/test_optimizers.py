"""tapeflow.optimizers: update rules against independent NumPy references, convergence on a
parabola and on Rosenbrock, clipping, schedules, state round trips, and dtype preservation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tapeflow as tp
import tapeflow.optimizers as optim
from tapeflow.optimizers import rules

# ------------------------------------------------------------------------------------------
# (a) each rule, step by step, against a few lines of NumPy of the published (Keras) formula.
# A reference takes (p, g, s, t, lr, **hyper) with s a dict it keeps its own state in, t the
# 1-based step, and returns the new p. Written independently of optimizers/rules.py.


def ref_sgd(p, g, s, t, lr, momentum=0.0, nesterov=False):
    if momentum == 0:
        return p - lr * g
    s["v"] = momentum * s.get("v", 0.0) - lr * g
    return p + momentum * s["v"] - lr * g if nesterov else p + s["v"]


def ref_adam(p, g, s, t, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False):
    s["m"] = beta_1 * s.get("m", 0.0) + (1 - beta_1) * g
    s["v"] = beta_2 * s.get("v", 0.0) + (1 - beta_2) * g**2
    v = s["v"]
    if amsgrad:
        v = s["vhat"] = np.maximum(s.get("vhat", 0.0), s["v"])
    lr_t = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    return p - lr_t * s["m"] / (np.sqrt(v) + epsilon)


def ref_rmsprop(p, g, s, t, lr, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    s["ms"] = rho * s.get("ms", 0.0) + (1 - rho) * g**2
    denom = s["ms"]
    if centered:
        s["mg"] = rho * s.get("mg", 0.0) + (1 - rho) * g
        denom = s["ms"] - s["mg"] ** 2
    step = lr * g / np.sqrt(denom + epsilon)
    if momentum > 0:
        s["mom"] = momentum * s.get("mom", 0.0) + step
        step = s["mom"]
    return p - step


def ref_adagrad(p, g, s, t, lr, initial_accumulator_value=0.1, epsilon=1e-7):
    s["acc"] = s.get("acc", initial_accumulator_value) + g**2
    return p - lr * g / np.sqrt(s["acc"] + epsilon)


def ref_adadelta(p, g, s, t, lr, rho=0.95, epsilon=1e-7):
    s["eg2"] = rho * s.get("eg2", 0.0) + (1 - rho) * g**2
    dx = -np.sqrt(s.get("edx2", 0.0) + epsilon) / np.sqrt(s["eg2"] + epsilon) * g
    s["edx2"] = rho * s.get("edx2", 0.0) + (1 - rho) * dx**2
    return p + lr * dx


def ref_adamax(p, g, s, t, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    s["m"] = beta_1 * s.get("m", 0.0) + (1 - beta_1) * g
    s["u"] = np.maximum(beta_2 * s.get("u", 0.0), np.abs(g))
    return p - (lr / (1 - beta_1**t)) * s["m"] / (s["u"] + epsilon)


def ref_nadam(p, g, s, t, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    mu_t = beta_1 * (1 - 0.5 * 0.96**t)
    mu_next = beta_1 * (1 - 0.5 * 0.96 ** (t + 1))
    s["prod"] = s.get("prod", 1.0) * mu_t
    s["m"] = beta_1 * s.get("m", 0.0) + (1 - beta_1) * g
    s["v"] = beta_2 * s.get("v", 0.0) + (1 - beta_2) * g**2
    m_hat = mu_next * s["m"] / (1 - s["prod"] * mu_next) + (1 - mu_t) * g / (1 - s["prod"])
    v_hat = s["v"] / (1 - beta_2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + epsilon)


def ref_lion(p, g, s, t, lr, beta_1=0.9, beta_2=0.99):
    m = s.get("m", 0.0)
    p = p - lr * np.sign(beta_1 * m + (1 - beta_1) * g)
    s["m"] = beta_2 * m + (1 - beta_2) * g
    return p


# id -> (optimizer name, hyperparameters, reference, weight decay)
RULE_CASES = {
    "sgd": ("sgd", {}, ref_sgd, 0.0),
    "sgd-momentum": ("sgd", {"momentum": 0.9}, ref_sgd, 0.0),
    "sgd-nesterov-wd": ("sgd", {"momentum": 0.8, "nesterov": True}, ref_sgd, 0.1),
    "adam": ("adam", {}, ref_adam, 0.0),
    "adam-amsgrad": ("adam", {"amsgrad": True, "beta_2": 0.9}, ref_adam, 0.0),
    "adamw": ("adamw", {}, ref_adam, 0.004),
    "rmsprop": ("rmsprop", {}, ref_rmsprop, 0.0),
    "rmsprop-centered-momentum": ("rmsprop", {"centered": True, "momentum": 0.5},
                                  ref_rmsprop, 0.0),
    "adagrad": ("adagrad", {"initial_accumulator_value": 0.5}, ref_adagrad, 0.0),
    "adadelta": ("adadelta", {"rho": 0.9}, ref_adadelta, 0.0),
    "adamax": ("adamax", {}, ref_adamax, 0.0),
    "nadam": ("nadam", {}, ref_nadam, 0.0),
    "lion": ("lion", {}, ref_lion, 0.0),
    "lion-betas-wd": ("lion", {"beta_1": 0.8, "beta_2": 0.9}, ref_lion, 0.05),
}


def _grads(steps, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(steps)]


def _reference_run(ref, hyper, wd, p0, grads, lr_at):
    p, s = p0.astype(np.float64), {}
    for t, g in enumerate(grads, start=1):
        lr = lr_at(t - 1)  # Keras: the schedule sees iterations before the update
        p = p - lr * wd * p  # Keras 3 decoupled weight decay, before the update
        p = ref(p, g, s, t, lr, **hyper)
    return p


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("case", list(RULE_CASES))
def test_rule_matches_reference(case, dtype, rtol):
    name, hyper, ref, wd = RULE_CASES[case]
    p0 = np.random.default_rng(1).normal(size=(3, 4))
    grads = _grads(5, (3, 4))
    var = tp.Variable(p0.astype(dtype))
    kwargs = dict(hyper, learning_rate=0.1)
    if name != "adamw":
        kwargs["weight_decay"] = wd
    opt = optim.get(name, **kwargs)
    s, p = {}, p0.astype(np.float64)
    for t, g in enumerate(grads, start=1):
        grad = tp.constant(g.astype(dtype)) if t % 2 else g.astype(dtype)  # Tensor or array
        opt.apply_gradients([(grad, var)])
        p = ref(p - 0.1 * wd * p, g.astype(dtype).astype(np.float64), s, t, 0.1, **hyper)
        np.testing.assert_allclose(var.numpy(), p, rtol=rtol, atol=rtol, err_msg=f"step {t}")
        assert var.numpy().dtype == dtype
    assert opt.iterations == 5


@pytest.mark.parametrize("name", ["sgd", "adam", "nadam"])
def test_schedule_is_evaluated_at_iterations_before_the_step(name):
    _, hyper, ref, _ = RULE_CASES[name]
    schedule = optim.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    p0, grads = np.ones(4), _grads(5, (4,))
    var = tp.Variable(p0.copy())
    opt = optim.get(name, learning_rate=schedule)
    for g in grads:
        opt.apply_gradients([(g, var)])
    expected = _reference_run(ref, hyper, 0.0, p0, grads, schedule)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_rules_leave_grad_and_param_alone(case):
    # State is consumed (rules may update it in place); gradients and parameters never change.
    name, hyper, _, _ = RULE_CASES[case]
    rule = getattr(rules, "adam" if name == "adamw" else name)(**hyper)
    p, g = np.arange(1.0, 7.0).reshape(2, 3), np.linspace(-1, 1, 6).reshape(2, 3)
    state = rule.init(p)
    for t in (1, 2):
        before = [p.copy(), g.copy()]
        upd, new_state = rule.update(g, state, p, 0.1, t)
        assert np.array_equal(p, before[0]) and np.array_equal(g, before[1])
        assert upd.shape == p.shape and set(new_state) == set(state)
        state = new_state


# ------------------------------------------------------------------------------------------
# (b) convergence: every optimizer on a parabola and on Rosenbrock, in float32.

C = np.array([1.0, -2.0, 3.0])


def parabola_grad(x):
    return 2 * (x - C.astype(x.dtype))


def rosenbrock_grad(p):
    x, y = p
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)], p.dtype)


# name -> (kwargs on the parabola, (kwargs, steps) on Rosenbrock)
CONVERGENCE = {
    "sgd": ({"learning_rate": 0.1}, ({"learning_rate": 1e-3, "momentum": 0.9}, 2000)),
    "sgd-nesterov": ({"learning_rate": 0.05, "momentum": 0.5, "nesterov": True},
                     ({"learning_rate": 1e-3, "momentum": 0.9, "nesterov": True}, 2000)),
    "adam": ({"learning_rate": 0.1}, ({"learning_rate": 0.02}, 2000)),
    "adam-amsgrad": ({"learning_rate": 0.1, "amsgrad": True},
                     ({"learning_rate": 0.02, "amsgrad": True}, 2000)),
    "adamw": ({"learning_rate": 0.1, "weight_decay": 1e-4},
              ({"learning_rate": 0.02, "weight_decay": 1e-4}, 2000)),
    "rmsprop": ({"learning_rate": 0.05}, ({"learning_rate": 1e-3, "momentum": 0.9}, 2000)),
    "rmsprop-centered": ({"learning_rate": 0.05, "centered": True},
                         ({"learning_rate": 1e-3, "momentum": 0.9, "centered": True}, 2000)),
    "adagrad": ({"learning_rate": 0.5}, ({"learning_rate": 0.1}, 5000)),
    "adadelta": ({"learning_rate": 10.0},
                 ({"learning_rate": optim.CosineDecay(1.0, decay_steps=5000)}, 5000)),
    "adamax": ({"learning_rate": 0.1}, ({"learning_rate": 0.02}, 2000)),
    "nadam": ({"learning_rate": 0.1}, ({"learning_rate": 0.01}, 3000)),
    # sign steps: a decaying learning rate lets the fixed step size settle
    "lion": ({"learning_rate": optim.CosineDecay(0.05, decay_steps=500)},
             ({"learning_rate": optim.CosineDecay(0.01, decay_steps=4000)}, 4000)),
}


def _minimise(case, kwargs, grad_fn, x0, steps):
    var = tp.Variable(np.array(x0, np.float32))
    opt = optim.get(case.split("-")[0], **kwargs)
    for _ in range(steps):
        opt.apply_gradients([(grad_fn(var.numpy()), var)])
    assert var.numpy().dtype == np.float32
    return var.numpy()


@pytest.mark.parametrize("case", list(CONVERGENCE))
def test_converges_on_parabola(case):
    x = _minimise(case, CONVERGENCE[case][0], parabola_grad, [0.0, 0.0, 0.0], 500)
    np.testing.assert_allclose(x, C, atol=1e-3)


@pytest.mark.parametrize("case", list(CONVERGENCE))
def test_converges_on_rosenbrock(case):
    kwargs, steps = CONVERGENCE[case][1]
    x = _minimise(case, kwargs, rosenbrock_grad, [0.0, 0.0], steps)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-2)


# ------------------------------------------------------------------------------------------
# (c) None gradients, clipping options and clipping functions, with exact numbers.


def test_apply_gradients_skips_none_and_counts_iterations():
    a, b = tp.Variable(np.ones(2)), tp.Variable(np.ones(3))
    opt = optim.SGD(learning_rate=0.5, momentum=0.9)
    assert opt.apply_gradients([(None, a), (np.full(3, 2.0), b)]) == 1
    np.testing.assert_array_equal(a.numpy(), np.ones(2))
    np.testing.assert_array_equal(b.numpy(), np.zeros(3))
    assert opt.iterations == 1
    assert opt.variables() == [a, b]  # positions given in order, None gradient or not
    opt.apply_gradients([(np.ones(2), a), (None, b)])
    np.testing.assert_array_equal(a.numpy(), np.full(2, 0.5))
    np.testing.assert_array_equal(b.numpy(), np.zeros(3))
    assert opt.iterations == 2


def test_apply_gradients_empty_all_none_and_bad_shape():
    v = tp.Variable(np.ones(2), name="w")
    opt = optim.Adam()
    assert opt.apply_gradients([]) == 0
    with pytest.raises(ValueError, match="no gradients provided.*'w'"):
        opt.apply_gradients([(None, v)])
    with pytest.raises(ValueError, match=r"\(3,\).*'w'.*\(2,\)"):
        opt.apply_gradients([(np.ones(3), v)])
    assert opt.iterations == 0


def _sgd_step(grads, values, **kwargs):
    """New values after one plain SGD step with lr=1, i.e. values - processed gradients."""
    variables = [tp.Variable(np.array(v, np.float64)) for v in values]
    optim.SGD(learning_rate=1.0, **kwargs).apply_gradients(zip(grads, variables))
    return [v.numpy() for v in variables]


def test_clipnorm_clips_each_gradient():
    out = _sgd_step([np.array([3.0, 4.0]), np.array([0.3, 0.4])], [[0.0, 0.0]] * 2, clipnorm=1.0)
    np.testing.assert_allclose(out[0], [-0.6, -0.8])
    np.testing.assert_allclose(out[1], [-0.3, -0.4])  # already below the norm: unchanged


def test_clipvalue_clips_elementwise():
    out = _sgd_step([np.array([3.0, -4.0, 0.2])], [[0.0, 0.0, 0.0]], clipvalue=0.5)
    np.testing.assert_allclose(out[0], [-0.5, 0.5, -0.2])


def test_global_clipnorm_scales_all_gradients_together():
    grads = [np.array([3.0]), None, np.array([4.0])]
    out = _sgd_step(grads, [[0.0], [7.0], [0.0]], global_clipnorm=2.5)
    np.testing.assert_allclose(out[0], [-1.5])
    np.testing.assert_array_equal(out[1], [7.0])
    np.testing.assert_allclose(out[2], [-2.0])


def test_clipnorm_and_global_clipnorm_are_exclusive():
    with pytest.raises(ValueError, match="clipnorm.*global_clipnorm"):
        optim.Adam(clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(ValueError, match="clipvalue must be > 0"):
        optim.SGD(clipvalue=-1.0)


def test_clip_by_global_norm_returns_true_norm_and_passes_none():
    grads = [np.array([3.0, 0.0], np.float32), None, np.array([[4.0]], np.float32)]
    clipped, norm = optim.clip_by_global_norm(grads, 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert clipped[1] is None
    np.testing.assert_allclose(clipped[0], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped[2], [[0.8]], rtol=1e-6)
    assert clipped[0].dtype == np.float32 and clipped[2].shape == (1, 1)
    unchanged, norm = optim.clip_by_global_norm(grads, 10.0)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_array_equal(unchanged[0], grads[0])
    assert optim.clip_by_global_norm([None], 1.0)[0] == [None]


def test_clip_by_norm_and_value():
    np.testing.assert_allclose(optim.clip_by_norm(np.array([3.0, 4.0]), 2.0), [1.2, 1.6])
    np.testing.assert_array_equal(optim.clip_by_norm(np.zeros(3), 1.0), np.zeros(3))
    np.testing.assert_array_equal(optim.clip_by_value(np.array([-2.0, 0.5, 9.0]), -1, 1),
                                  [-1.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="greater than"):
        optim.clip_by_value(np.ones(2), 1.0, 0.0)


def test_clip_functions_return_tensors_for_tensors():
    t = tp.constant(np.array([3.0, 4.0], np.float32))
    out = optim.clip_by_norm(t, 1.0)
    assert isinstance(out, tp.Tensor) and out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), [0.6, 0.8], rtol=1e-6)
    out = optim.clip_by_value(t, 0.0, 3.5)
    assert isinstance(out, tp.Tensor)
    np.testing.assert_array_equal(out.numpy(), [3.0, 3.5])
    clipped, norm = optim.clip_by_global_norm([t, None], 2.5)
    assert isinstance(clipped[0], tp.Tensor) and isinstance(norm, tp.Tensor)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped[0].numpy(), [1.5, 2.0], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# (d) schedules


@pytest.mark.parametrize("schedule,steps,expected", [
    (optim.ExponentialDecay(0.1, 10, 0.5), [0, 5, 10, 25], [0.1, 0.1 * 0.5**0.5, 0.05,
                                                           0.1 * 0.5**2.5]),
    (optim.ExponentialDecay(0.1, 10, 0.5, staircase=True), [0, 9, 10, 25], [0.1, 0.1, 0.05,
                                                                           0.025]),
    (optim.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]), [0, 10, 11, 20, 21, 1000],
     [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]),
    (optim.CosineDecay(1.0, 100), [0, 50, 100, 200], [1.0, 0.5, 0.0, 0.0]),
    (optim.CosineDecay(2.0, 100, alpha=0.1), [0, 50, 100], [2.0, 2.0 * (0.45 + 0.1), 0.2]),
    (optim.CosineDecay(0.0, 100, warmup_target=1.0, warmup_steps=10),
     [0, 5, 10, 60, 110, 500], [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]),
    (optim.LinearWarmup(0.1, 10), [0, 5, 10, 100], [0.0, 0.05, 0.1, 0.1]),
    (optim.LinearWarmup(optim.CosineDecay(1.0, 100), 10, initial=0.5),
     [0, 5, 10, 60, 110], [0.5, 0.75, 1.0, 0.5, 0.0]),
])
def test_schedule_values(schedule, steps, expected):
    assert [schedule(s) for s in steps] == pytest.approx(expected, abs=1e-12)
    again = optim.schedules.deserialize(json.loads(json.dumps(
        optim.schedules.serialize(schedule))))
    assert [again(s) for s in steps] == [schedule(s) for s in steps]


def test_schedule_validation():
    with pytest.raises(ValueError, match="2 boundaries and 2 values"):
        optim.PiecewiseConstantDecay([1, 2], [1.0, 0.5])
    with pytest.raises(ValueError, match="decay_steps"):
        optim.CosineDecay(1.0, 0)


def test_optimizer_config_round_trips_through_json():
    opt = optim.AdamW(optim.LinearWarmup(optim.ExponentialDecay(0.1, 10, 0.9), 5),
                      weight_decay=0.01, beta_1=0.8, global_clipnorm=1.0)
    config = json.loads(json.dumps(opt.get_config()))
    again = optim.AdamW.from_config(config)
    assert again.get_config() == opt.get_config()
    assert [again.learning_rate(s) for s in (0, 3, 9)] == [opt.learning_rate(s)
                                                           for s in (0, 3, 9)]


def test_get_by_name():
    assert isinstance(optim.get("RMSprop", rho=0.8), optim.RMSprop)
    with pytest.raises(ValueError, match="sgd, adam, adamw, rmsprop"):
        optim.get("lbfgs")


# ------------------------------------------------------------------------------------------
# (e) get_state / set_state


def _run(opt, variables, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        opt.apply_gradients([(rng.normal(size=v.shape).astype(np.float32), v)
                             for v in variables])


def _make(case):
    name, hyper, _, wd = RULE_CASES[case]
    kwargs = dict(hyper, learning_rate=optim.ExponentialDecay(0.05, 2, 0.9), clipnorm=1.0)
    if name != "adamw":
        kwargs["weight_decay"] = wd
    return optim.get(name, **kwargs)


def _model():
    return [tp.Variable(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), name="w"),
            tp.Variable(np.ones(4, np.float32), name="b")]


@pytest.mark.parametrize("build_first", [False, True])
@pytest.mark.parametrize("case", list(RULE_CASES))
def test_state_round_trip_is_bitwise(case, build_first):
    a_vars, a = _model(), _make(case)
    _run(a, a_vars, 3, seed=0)
    state = a.get_state()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
    assert scalars["iterations"] == 3

    b_vars, b = [tp.Variable(v.numpy(), name=v.name) for v in a_vars], _make(case)
    if build_first:
        b.build(b_vars)
    b.set_state({**scalars, **arrays})
    for arr in arrays.values():  # the saved arrays are copies, not the optimizer's own
        arr += 1.0
    assert b.iterations == 3
    _run(a, a_vars, 3, seed=1)
    _run(b, b_vars, 3, seed=1)
    for va, vb in zip(a_vars, b_vars):
        assert np.array_equal(va.numpy(), vb.numpy()) and vb.dtype == np.float32


def test_set_state_rejects_wrong_shapes():
    a = optim.Adam()
    _run(a, [tp.Variable(np.zeros((3, 4), np.float32))], 1, seed=0)
    state = a.get_state()
    b, wrong = optim.Adam(), tp.Variable(np.zeros((4, 3), np.float32), name="w")
    b.build([wrong])
    with pytest.raises(ValueError, match=r"#0 \('w', shape \(4, 3\)\).*momentum.*shape "
                                         r"\(3, 4\), expected \(4, 3\)"):
        b.set_state(state)
    assert b.iterations == 0  # nothing restored
    lazy = optim.Adam()
    lazy.set_state(state)  # not built yet: checked when the variable is first seen
    with pytest.raises(ValueError, match=r"shape \(3, 4\), expected \(4, 3\)"):
        lazy.apply_gradients([(np.ones((4, 3), np.float32), wrong)])


def test_set_state_rejects_other_models_and_optimizers():
    a = optim.Adam()
    _run(a, _model(), 1, seed=0)
    state = a.get_state()
    one_var = optim.Adam()
    one_var.set_state(state)
    with pytest.raises(ValueError, match="variable #1 and up.*only seen 1 variables"):
        one_var.build(_model()[:1])
    with pytest.raises(ValueError, match="saved by a Adam optimizer, not Nadam"):
        optim.Nadam().set_state(state)
    amsgrad = optim.Adam(amsgrad=True)
    amsgrad.set_state(state)
    with pytest.raises(ValueError, match=r"slots \['momentum', 'velocity'\], expected"):
        amsgrad.build(_model())


# ------------------------------------------------------------------------------------------
# (f) float32 stays float32


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_float32_params_and_state_stay_float32(case):
    variables, opt = _model(), _make(case)
    rng = np.random.default_rng(0)
    for _ in range(3):  # float64 gradients must not upcast float32 variables
        opt.apply_gradients([(rng.normal(size=v.shape), v) for v in variables])
    assert all(v.dtype == np.float32 and v._value.dtype == np.float32 for v in variables)
    for key, value in opt.get_state().items():
        if isinstance(value, np.ndarray) and value.ndim:
            assert value.dtype == np.float32, key
    assert math.isfinite(float(np.sum(variables[0].numpy())))


# ------------------------------------------------------------------------------------------
# with the tape: gradients arrive as Tensors, unconnected variables as None


def test_trains_a_linear_model_from_tape_gradients():
    rng = np.random.default_rng(0)
    x = tp.constant(rng.normal(size=(64, 3)).astype(np.float32))
    w_true = np.array([[1.0], [-2.0], [0.5]], np.float32)
    y = tp.constant(x.numpy() @ w_true)
    w, b = tp.Variable(np.zeros((3, 1), np.float32)), tp.Variable(np.zeros(1, np.float32))
    unused = tp.Variable(np.ones(2, np.float32))
    opt = optim.Adam(optim.LinearWarmup(0.05, 10), global_clipnorm=10.0)
    assert opt.current_learning_rate == 0.0
    for _ in range(300):
        with tp.GradientTape() as tape:
            loss = tp.reduce_mean(tp.square(tp.matmul(x, w) + b - y))
        grads = tape.gradient(loss, [w, b, unused])
        assert grads[2] is None
        opt.apply_gradients(zip(grads, [w, b, unused]))
    assert opt.current_learning_rate == pytest.approx(0.05)
    np.testing.assert_allclose(w.numpy(), w_true, atol=1e-3)
    np.testing.assert_array_equal(unused.numpy(), np.ones(2, np.float32))


def test_get_state_includes_state_restored_before_the_first_step():
    # Restore into a fresh (unbuilt) optimizer, then save or broadcast it again before any step:
    # the restored slots must survive the round trip (a resumed MPI job broadcasts this way).
    v = tp.Variable(np.array([1.0, -2.0], np.float32))
    a = optim.Adam(0.1)
    for _ in range(3):
        a.apply_gradients([(tp.constant(np.array([0.5, 1.0], np.float32)), v)])
    saved = a.get_state()
    b = optim.Adam(0.1)
    b.set_state(saved)
    again = b.get_state()
    assert sorted(again) == sorted(saved)
    for k, val in saved.items():
        if hasattr(val, "shape"):
            np.testing.assert_array_equal(again[k], val)


def test_one_saved_state_restores_two_optimizers_independently():
    # Rules update state in place: set_state must copy, or two optimizers restored from one
    # dict would share (and corrupt) each other's momentum.
    g = tp.constant(np.array([0.5, -1.0], np.float32))
    src = optim.SGD(0.1, momentum=0.9)
    v0 = tp.Variable(np.array([1.0, 2.0], np.float32))
    src.apply_gradients([(g, v0)])
    saved = src.get_state()
    runs = []
    for _ in range(2):
        opt = optim.SGD(0.1, momentum=0.9)
        opt.set_state(saved)
        v = tp.Variable(np.array([1.0, 2.0], np.float32))
        for _ in range(3):
            opt.apply_gradients([(g, v)])
        runs.append(v.numpy().copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(saved["0/momentum"], src.get_state()["0/momentum"])
