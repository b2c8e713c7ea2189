"""Side by side: tapeflow eager, tapeflow ``tp.function``, NumPy by hand, PyTorch, JAX ``jit``.

Not a test and not a dependency: PyTorch and JAX are used only when importable. Run::

    python benchmarks/peers.py [--core 1] [--rounds 7] [--json peers.json]

One process pinned to one core, one BLAS/intra-op thread for every framework. Each workload
times every framework in blocks, interleaved round by round (a, b, c, a, b, c, ...), so the
ratios printed are medians of ratios measured within a round, under the same conditions (in
brackets: the lowest and highest of those within-round ratios).
Workloads: plain SGD (lr 0.01) on real MNIST batches (float32; ``TAPEFLOW_DATA_DIR`` or the
data cache must hold MNIST), cycling over 16 batches:

* ``mlp_small``: MLP 784-128-10, batch 32;
* ``mlp_large``: MLP 784-512-512-10, batch 128;
* ``cnn``: conv3x3-32 relu, conv3x3-64 relu, maxpool 2, dense 128 relu, dense 10, batch 128;
* ``op``: one recorded elementwise add of 10 floats, forward + backward, in a chain of 200
  (reported in microseconds per op; raw NumPy ``a + b`` for scale).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

LR = 0.01
N_BATCHES = 16


def _pin(core: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ["XLA_FLAGS"] = ("--xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def _batches(batch: int, images: bool):
    import numpy as np

    import tapeflow as tp

    split = tp.data.load_mnist()
    x = split.train_images[: batch * N_BATCHES].astype(np.float32) / 255.0
    y = split.train_labels[: batch * N_BATCHES].astype(np.int32)
    x = x.reshape(N_BATCHES, batch, 28, 28, 1) if images else x.reshape(N_BATCHES, batch, 784)
    return list(x), list(y.reshape(N_BATCHES, batch))


def _glorot(rng, shape):
    import numpy as np

    fan_in = int(np.prod(shape[:-1]))
    lim = np.sqrt(6.0 / (fan_in + shape[-1]))
    return rng.uniform(-lim, lim, shape).astype(np.float32)


def _params(workload: str):
    """The same initial weights for every framework: [(kernel, bias), ...], TF layouts."""
    import numpy as np

    rng = np.random.default_rng(0)
    if workload == "cnn":
        shapes = [(3, 3, 1, 32), (3, 3, 32, 64), (9216, 128), (128, 10)]
    else:
        sizes = [784, 128, 10] if workload == "mlp_small" else [784, 512, 512, 10]
        shapes = list(zip(sizes[:-1], sizes[1:]))
    return [(_glorot(rng, s), np.zeros(s[-1], np.float32)) for s in shapes]


# ---------------------------------------------------------------------------- tapeflow
def tapeflow_steps(workload: str, xs, ys):
    """(eager step, tp.function step): the same Python step, plain and decorated."""
    import tapeflow as tp
    from tapeflow import optimizers
    from tapeflow import function

    def build():
        vs = [(tp.Variable(k), tp.Variable(b)) for k, b in _params(workload)]
        flat = [v for pair in vs for v in pair]
        opt = optimizers.SGD(learning_rate=LR)

        def forward(x):
            if workload == "cnn":
                (k1, b1), (k2, b2), (k3, b3), (k4, b4) = vs
                h = tp.nn.relu(tp.nn.conv2d(x, k1) + b1)
                h = tp.nn.relu(tp.nn.conv2d(h, k2) + b2)
                h = tp.nn.max_pool2d(h, 2)
                h = tp.reshape(h, (h.shape[0], -1))
                h = tp.nn.relu(h @ k3 + b3)
                return h @ k4 + b4
            h = x
            for i, (k, b) in enumerate(vs):
                h = h @ k + b
                if i < len(vs) - 1:
                    h = tp.nn.relu(h)
            return h

        def step(x, y):
            with tp.GradientTape() as tape:
                loss = tp.reduce_mean(
                    tp.nn.sparse_softmax_cross_entropy_with_logits(y, forward(x)))
            grads = tape.gradient(loss, flat)
            opt.apply_gradients(zip(grads, flat))
            return loss
        return step

    eager, traced = build(), function(build())
    xt = [tp.constant(x) for x in xs]
    yt = [tp.constant(y) for y in ys]
    return (lambda i: eager(xt[i % N_BATCHES], yt[i % N_BATCHES]),
            lambda i: traced(xt[i % N_BATCHES], yt[i % N_BATCHES]))


# ---------------------------------------------------------------------------- NumPy
def numpy_step(workload: str, xs, ys):
    """A hand-written MLP step (forward, softmax cross-entropy, backward, in-place SGD)."""
    import numpy as np

    if workload == "cnn":
        return None
    params = _params(workload)
    n = xs[0].shape[0]
    rows = np.arange(n)

    def step(i):
        x, y = xs[i % N_BATCHES], ys[i % N_BATCHES]
        acts, h = [x], x
        for j, (w, b) in enumerate(params):
            h = h @ w + b
            if j < len(params) - 1:
                np.maximum(h, 0, out=h)
            acts.append(h)
        z = h - h.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) - z[rows, y])
        g = e / s
        g[rows, y] -= 1
        g /= n
        for j in range(len(params) - 1, -1, -1):
            w, b = params[j]
            gw, gb = acts[j].T @ g, g.sum(axis=0)
            if j > 0:
                g = (g @ w.T) * (acts[j] > 0)
            w -= LR * gw
            b -= LR * gb
        return loss
    return step


# ---------------------------------------------------------------------------- PyTorch
def torch_step(workload: str, xs, ys):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    nn = torch.nn
    params = _params(workload)
    if workload == "cnn":
        model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(),
                              nn.Linear(128, 10))
        convs = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            for m, (k, b) in zip(convs, params):
                w = torch.from_numpy(k)
                m.weight.copy_(w.permute(3, 2, 0, 1) if k.ndim == 4 else w.T)
                m.bias.copy_(torch.from_numpy(b))
        xs = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() for x in xs]
    else:
        layers = []
        for j, (k, b) in enumerate(params):
            lin = nn.Linear(*k.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(k.T))
                lin.bias.copy_(torch.from_numpy(b))
            layers += [lin] + ([nn.ReLU()] if j < len(params) - 1 else [])
        model = nn.Sequential(*layers)
        xs = [torch.from_numpy(x) for x in xs]
    ys = [torch.from_numpy(y).long() for y in ys]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.functional.cross_entropy

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xs[i % N_BATCHES]), ys[i % N_BATCHES])
        loss.backward()
        opt.step()
        return loss
    return step


# ---------------------------------------------------------------------------- JAX
def jax_step(workload: str, xs, ys):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    params = [(jnp.asarray(k), jnp.asarray(b)) for k, b in _params(workload)]

    def forward(p, x):
        if workload == "cnn":
            dn = ("NHWC", "HWIO", "NHWC")
            h = jax.nn.relu(jax.lax.conv_general_dilated(x, p[0][0], (1, 1), "VALID",
                                                         dimension_numbers=dn) + p[0][1])
            h = jax.nn.relu(jax.lax.conv_general_dilated(h, p[1][0], (1, 1), "VALID",
                                                         dimension_numbers=dn) + p[1][1])
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                      "VALID")
            h = h.reshape(h.shape[0], -1)
            h = jax.nn.relu(h @ p[2][0] + p[2][1])
            return h @ p[3][0] + p[3][1]
        h = x
        for j, (k, b) in enumerate(p):
            h = h @ k + b
            if j < len(p) - 1:
                h = jax.nn.relu(h)
        return h

    def loss_fn(p, x, y):
        logp = jax.nn.log_softmax(forward(p, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def update(p, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        return jax.tree_util.tree_map(lambda a, b: a - LR * b, p, g), loss

    xs = [jnp.asarray(x) for x in xs]
    ys = [jnp.asarray(y) for y in ys]
    state = [params]

    def step(i):
        state[0], loss = update(state[0], xs[i % N_BATCHES], ys[i % N_BATCHES])
        loss.block_until_ready()
        return loss
    return step


# ---------------------------------------------------------------------------- per-op chain
CHAIN = 200


def op_steps():
    """Per-op chains: raw NumPy add, tapeflow eager add (fwd+bwd), PyTorch eager add."""
    import numpy as np

    import tapeflow as tp
    from tapeflow import function

    a, c = np.ones(10, np.float32), np.full(10, 0.5, np.float32)

    def raw(i):
        y = a
        for _ in range(CHAIN):
            y = y + c
        return y

    x, ct = tp.Variable(a), tp.constant(c)

    def taped(i=0):
        with tp.GradientTape() as tape:
            y = x
            for _ in range(CHAIN):
                y = y + ct
        return y, tape.gradient(y, x)  # (y too: else a plan keeps only the constant gradient)

    traced = function(taped)
    fns = {"numpy": raw, "tapeflow eager": taped, "tp.function": lambda i: traced()}
    try:
        import torch

        xt = torch.ones(10, requires_grad=True)
        cc = torch.full((10,), 0.5)

        def torch_chain(i):
            y = xt
            for _ in range(CHAIN):
                y = y + cc
            (g,) = torch.autograd.grad(y, xt, torch.ones(10))
            return g
        fns["pytorch eager"] = torch_chain
    except ImportError:
        pass
    return fns


# ---------------------------------------------------------------------------- timing
def interleaved(fns: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each function, one block per function per round."""
    for fn in fns.values():
        for i in range(3):
            fn(i)  # warm-up: tracing, JIT compilation, allocator
    per: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for i in range(steps):
                fn(i)
            per[name].append((time.perf_counter() - t0) / steps)
    return per


def _ratio(per: dict, a: str, b: str) -> float | None:
    if a not in per or b not in per:
        return None
    return statistics.median(tb / ta for ta, tb in zip(per[a], per[b]))


def _ratio_range(per: dict, a: str, b: str) -> tuple[float, float]:
    """The lowest and highest of the within-round ratios (the spread behind the median)."""
    ratios = [tb / ta for ta, tb in zip(per[a], per[b])]
    return min(ratios), max(ratios)


def run(workloads, rounds: int) -> dict:
    results = {}
    steps_of = {"mlp_small": 200, "mlp_large": 20, "cnn": 2}
    for w in workloads:
        if w == "op":
            per = interleaved(op_steps(), 20, rounds)
            per = {k: [t / CHAIN for t in v] for k, v in per.items()}
            row = {"us_per_op": {k: statistics.median(v) * 1e6 for k, v in per.items()},
                   "eager_vs_torch": _ratio(per, "tapeflow eager", "pytorch eager")}
            results[w] = row
            print(f"{w}: " + "  ".join(f"{k} {v:.2f} us" for k, v in row["us_per_op"].items())
                  + (f"  | tapeflow eager cost / pytorch cost "
                     f"{1 / row['eager_vs_torch']:.2f}" if row["eager_vs_torch"] else ""))
            continue
        batch = 32 if w == "mlp_small" else 128
        xs, ys = _batches(batch, images=w == "cnn")
        eager, traced = tapeflow_steps(w, xs, ys)
        fns = {"tp.function": traced, "tapeflow eager": eager, "numpy": numpy_step(w, xs, ys),
               "pytorch eager": torch_step(w, xs, ys), "jax jit": jax_step(w, xs, ys)}
        fns = {k: v for k, v in fns.items() if v is not None}
        per = interleaved(fns, steps_of[w], rounds)
        sps = {k: 1 / statistics.median(v) for k, v in per.items()}
        spread = {k: (1 / max(v), 1 / min(v)) for k, v in per.items()}
        ratios = {f"tp.function / {k}": _ratio(per, "tp.function", k) for k in fns
                  if k != "tp.function"}
        ranges = {f"tp.function / {k}": _ratio_range(per, "tp.function", k) for k in fns
                  if k != "tp.function"}
        results[w] = {"batch": batch, "steps_per_s": sps, "spread": spread, "ratios": ratios,
                      "ratio_spread": ranges}
        print(f"{w} (batch {batch}): " + "  ".join(f"{k} {v:,.1f}/s" for k, v in sps.items()))
        print("    " + "  ".join(f"{k} {v:.2f}x [{ranges[k][0]:.2f}-{ranges[k][1]:.2f}]"
                                 for k, v in ratios.items()))
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core", type=int, default=1, help="CPU core to pin to (default 1)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median kept)")
    p.add_argument("--workloads", default="mlp_small,mlp_large,cnn,op")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    _pin(args.core)
    import numpy as np

    versions = {"python": sys.version.split()[0], "numpy": np.__version__}
    for mod in ("torch", "jax"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, pinned to "
          f"core {args.core}, 1 thread; {versions}")
    results = {"versions": versions, "core": args.core, "rounds": args.rounds,
               "results": run(args.workloads.split(","), args.rounds)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
