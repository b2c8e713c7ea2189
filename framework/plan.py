"""A trace compiled into a static plan: kernel calls on preallocated buffers, as one function.

``compile_plan(tracer, output_slots)`` turns the nodes of a :class:`trace.Tracer` into a
:class:`Plan`. Compilation:

1. drops nodes whose results nothing uses (dead code), keeping every state change;
2. groups each view (reshape, transpose, broadcast_to, basic indexing, identity) with the
   array it views, so a buffer lives as long as any view of it;
3. gives every elementwise op, matmul, sum and cast an output buffer, allocated once:
   in place in an input that dies at that op (so ``matmul -> + bias -> relu`` runs in one
   buffer), else a buffer of the same shape and dtype freed earlier (reuse by liveness),
   else a new one; views of buffers are made once, at compile time;
4. writes the list of kernel calls out as the source of one Python function and compiles
   it: a replay is one call with no per-op dispatch, no Tensor objects and, for the ops
   above, no allocation.

The same list (``Plan.steps``) is what a device backend would capture whole (a CUDA graph):
every buffer address is fixed at compile time except the inputs and the Variables' arrays.
Ops without an ``out=`` kernel run as they do eagerly and allocate their result.
"""
from __future__ import annotations

import functools
import inspect
import operator
import sys
from typing import Any, Callable

import numpy as np

from . import conv as CV
from . import nest
from . import primitives as P
from . import primitives_ext as PX
from .errors import InvalidArgumentError
from .symdim import shape_value, shape_value_into
from .tensor import Tensor

__all__ = ["Plan", "compile_plan", "analyse"]

# Elementwise forwards with an ``out=`` form that computes bit-identical results.
_UFUNCS: dict[Any, Any] = {
    operator.add: np.add, operator.sub: np.subtract, operator.mul: np.multiply,
    operator.truediv: np.divide, operator.pow: np.power,
}
_PRIM_UFUNCS = {
    "maximum": np.maximum, "minimum": np.minimum, "negative": np.negative, "exp": np.exp,
    "log": np.log, "log1p": np.log1p, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
    "sqrt": np.sqrt, "abs": np.absolute, "square": np.square, "sign": np.sign,
}
_VIEWS = {"reshape", "transpose", "broadcast_to", "getitem"}
# Derived (no-gradient) functions with an ``out=`` kernel: registered by the modules that
# define them, ``fn -> kernel(out, *arrays, **params)``.
OUT_KERNELS: dict[Callable, Callable] = {
    operator.ge: np.greater_equal, operator.gt: np.greater, operator.le: np.less_equal,
    operator.lt: np.less, P._positive: lambda a, out: np.greater(a, 0, out=out),
    shape_value: shape_value_into,
}


def _check_labels(labels: np.ndarray, ncls: int) -> None:
    """Every replay checks its labels, as the eager op does: an out-of-range label would pick
    another row's logit. (Seen as unsigned, a negative label is huge: one pass.)"""
    if labels.size and labels.view(f"u{labels.itemsize}").max() >= ncls:
        raise InvalidArgumentError(
            f"sparse_softmax_cross_entropy_with_logits: labels must lie in [0, {ncls}), got "
            f"values from {int(labels.min())} to {int(labels.max())}")


def _xent_kernel(metas: list, out_meta: tuple, params: dict, ins: tuple,
                 shared: dict) -> Callable:
    """Sparse softmax cross-entropy forward into ``out=``, with its temporaries made once;
    the same operations as the eager forward, so the same bits. Its ``exp(z)`` and row sums
    stay for the gradient kernel of the same logits and labels, with the labels' flat
    indices."""
    (shape, dt), (yshape, _) = metas
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    m = np.empty(shape[:-1] + (1,), dt)
    z, e = np.empty(shape, dt), np.empty(shape, dt)
    s, picked = np.empty(shape[:-1], dt), np.empty(rows, dt)
    base, idx = np.arange(rows) * shape[-1], np.empty(rows, np.intp)
    zflat, picked_v = z.reshape(-1), picked.reshape(shape[:-1])
    shared[("softmax",) + ins] = (e, s.reshape(shape[:-1] + (1,)), idx)

    ncls = shape[-1]

    def kernel(lv, labels, out):
        _check_labels(labels, ncls)
        np.maximum.reduce(lv, axis=-1, keepdims=True, out=m)
        np.subtract(lv, m, out=z)
        np.exp(z, out=e)
        np.add.reduce(e, axis=-1, out=s)
        np.log(s, out=out)
        np.add(base, labels.reshape(-1), out=idx)
        np.take(zflat, idx, out=picked, mode="clip")  # (checked indices; "raise" buffers)
        np.subtract(out, picked_v, out=out)
    return kernel


def _softmax_grad_kernel(metas: list, out_meta: tuple, params: dict, ins: tuple,
                         shared: dict) -> Callable:
    """``softmax(logits) - onehot(labels)`` into ``out=`` (the fused loss gradient); from the
    forward kernel's ``exp(z)`` and row sums when the plan computed the loss of these logits
    (the same values the eager rule recomputes), and its label indices (the same labels,
    computed earlier in the same replay)."""
    (shape, dt), _ = metas
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    m, total = np.empty(shape[:-1] + (1,), dt), np.empty(shape[:-1] + (1,), dt)
    picked, base, idx = np.empty(rows, dt), np.arange(rows) * shape[-1], np.empty(rows, np.intp)
    fwd, one = shared.get(("softmax",) + ins), dt.type(1)
    flat_of: list = [None, None]  # the out buffer last seen and its flat view

    def kernel(lv, labels, out):
        if fwd is None:
            _check_labels(labels, shape[-1])
            np.maximum.reduce(lv, axis=-1, keepdims=True, out=m)
            np.subtract(lv, m, out=out)
            np.exp(out, out=out)
            np.add.reduce(out, axis=-1, keepdims=True, out=total)
            np.divide(out, total, out=out)
            np.add(base, labels.reshape(-1), out=idx)
            at = idx
        else:
            np.divide(fwd[0], fwd[1], out=out)
            at = fwd[2]
        if out is not flat_of[0]:
            flat_of[:] = out, out.reshape(-1)
        flat = flat_of[1]
        np.take(flat, at, out=picked, mode="clip")
        np.subtract(picked, one, out=picked)
        np.put(flat, at, picked)
    return kernel


def _relu_kernel(out_meta: tuple, shared: dict) -> Callable:
    """``maximum(x, 0)`` into ``out=``, against a zeros array of the result's shape: NumPy
    runs ``maximum`` with a scalar operand in a scalar loop and with two arrays in its SIMD
    loop (about 3x faster at 128x512 float32; the same bits, NaN and -0.0 included). The
    zeros, made once, are shared by the plan's relus of one shape and dtype; never written, a
    large ``np.zeros`` stays mapped to the kernel's zero page and takes no memory."""
    zeros = shared.get(("zeros",) + out_meta)
    if zeros is None:
        zeros = shared[("zeros",) + out_meta] = np.zeros(*out_meta)
    maximum = np.maximum
    return lambda x, out: maximum(x, zeros, out=out)


def _pad_kernel(metas: list, out_meta: tuple, params: dict, ins: tuple,
                shared: dict) -> Callable:
    """Constant padding into ``out=``: the border (rewritten every call: the buffer may serve
    another op in between) and the interior copy, what ``np.pad`` computes, no new array."""
    shape = metas[0][0]
    paddings, value = params["paddings"], params["constant_values"]
    interior = tuple(slice(lo, lo + d) for (lo, _), d in zip(paddings, shape))
    borders = []
    for k, ((lo, hi), d) in enumerate(zip(paddings, shape)):
        for part in ((slice(0, lo),) if lo else ()) + ((slice(lo + d, None),) if hi else ()):
            borders.append(tuple(part if j == k else slice(None) for j in range(len(shape))))

    def kernel(x, out):
        for b in borders:
            out[b] = value
        out[interior] = x
    return kernel


# Kernels with temporaries: ``factory(input_metas, out_meta, params, in_slots, shared)``.
FACTORIES: dict[Any, Callable] = {
    "sparse_softmax_cross_entropy": _xent_kernel,
    P._softmax_minus_onehot: _softmax_grad_kernel,
    "pad": _pad_kernel,
    **PX.PLAN_KERNELS,  # pooling's window max and first-maximum mask
    **CV.PLAN_KERNELS,
}


def _is_view_node(node) -> bool:
    prim, fn, params = node[1], node[2], node[4]
    if prim is None:
        return getattr(fn, "_tp_view", False)
    if prim.name == "getitem":
        index = params["index"]
        return not any(not isinstance(i, (int, slice, type(None), type(Ellipsis)))
                       for i in index)
    return prim.name in _VIEWS


def _out_kernel(node, metas: list, shared: dict):
    """``(callable, in-place allowed)`` writing the node's result into ``out=``, or None."""
    prim, fn, params = node[1], node[2], node[4]
    factory = FACTORIES.get(fn if prim is None else prim.name)
    if factory is not None:
        return factory([metas[s] for s in node[3]], metas[node[5]], params, node[3],
                       shared), False
    if prim is None:
        k = OUT_KERNELS.get(fn)
        return (functools.partial(k, **params) if params else k, False) if k else None
    uf = _UFUNCS.get(fn) or _PRIM_UFUNCS.get(prim.name)
    if uf is not None and not params:
        return uf, True
    if prim.name == "relu":
        return _relu_kernel(metas[node[5]], shared), True
    if prim.name == "matmul":
        return np.matmul, False
    if prim.name == "reduce_sum":  # what ndarray.sum runs, without its Python wrapper
        return functools.partial(np.add.reduce, axis=params["axis"],
                                 keepdims=params["keepdims"]), False
    if prim.name in ("reduce_max", "reduce_min"):  # what ndarray.max runs
        uf = np.minimum if prim.name == "reduce_min" else np.maximum
        return functools.partial(uf.reduce, axis=params["axis"],
                                 keepdims=params.get("keepdims", False)), False
    if prim.name == "cast":
        return (lambda x, out: np.copyto(out, x, casting="unsafe")), False
    return None


class Plan:
    """A compiled trace: ``run(*input_arrays) -> tuple of output arrays``."""

    def __init__(self, run: Callable, source: str, steps: list, buffers: list):
        self.run = run
        self.source = source
        self.steps = steps
        self.buffers = buffers

    @property
    def buffer_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)


def _live_nodes(nodes: list, outputs: list) -> list[bool]:
    needed = set(outputs)
    keep = [False] * len(nodes)
    for n in range(len(nodes) - 1, -1, -1):
        node = nodes[n]
        kind = node[0]
        if kind == "op":
            if node[5] in needed:
                keep[n] = True
                needed.update(node[3])
        elif kind == "read":
            keep[n] = node[2] in needed
        elif kind == "assign":
            keep[n] = True
            needed.add(node[3])
        elif kind == "fn":
            keep[n] = True
            needed.update(node[2])
        else:  # call
            keep[n] = True
            needed.update(s for _, s in node[4])
    return keep


def analyse(tr) -> tuple[bool, dict]:
    """``(host, alias_of)`` of a trace, found from its arrays once and kept on it (a trace
    rebuilt for another size, :mod:`generalize`, carries them over):

    * ``host``: every array is NumPy's. Buffers, out= kernels and fused kernels are NumPy's:
      a trace on another array library (CuPy, a device) runs every op as it does eagerly, one
      call per node (still no Tensors, tapes or dispatch);
    * ``alias_of``: out slot -> the input slot it shares memory with, for ops (not views)
      whose result did at trace time (a derived identity such as stop_gradient, a function
      returning a view): they are grouped with that input like views."""
    if getattr(tr, "alias_of", None) is None:
        tr.host = all(isinstance(a, (np.ndarray, np.generic))
                      for a in (*tr.arrays.values(), *tr.const.values()))
        tr.alias_of = {}
        for node in tr.nodes if tr.host else ():
            if node[0] == "op" and not _is_view_node(node):
                shared = next((s for s in node[3]
                               if np.may_share_memory(tr.values[node[5]], tr.values[s])), None)
                if shared is not None:
                    tr.alias_of[node[5]] = shared
    return tr.host, tr.alias_of


class PlanShapeError(RuntimeError):
    """A checked plan (one made for a new size from a generalized trace) met an op whose
    result does not have the shape the plan was made for; ``safe``: no state had changed."""

    def __init__(self, message: str, safe: bool):
        super().__init__(message)
        self.safe = safe


def _checked(arr, shape: tuple, what: str, safe: bool):
    if arr.shape != shape:
        raise PlanShapeError(f"tp.function: {what} gave shape {arr.shape} where the plan made "
                             f"for this size expected {shape}", safe)


def compile_plan(tr, outputs: list, checked: bool = False) -> Plan:
    """Compile tracer ``tr``'s nodes into a :class:`Plan` returning the ``outputs`` slots.

    ``checked``: after every op that makes a new array or a view (the only results whose
    shapes the plan does not fix with its buffers), check its shape against the trace's and
    raise :class:`PlanShapeError` if it differs (for a plan made from a generalized trace:
    its first run proves the generalization at that size)."""
    nodes = [n for n, k in zip(tr.nodes, _live_nodes(tr.nodes, outputs)) if k]
    first_change = next((n for n, node in enumerate(nodes)
                         if node[0] in ("assign", "call", "fn")), len(nodes))
    host, alias_of = analyse(tr)
    end_all = len(nodes)
    nslots = len(tr.meta)
    last = [-1] * nslots
    parent = list(range(nslots))  # view -> viewed slot
    for n, node in enumerate(nodes):
        ins = _in_slots(node)
        for s in ins:
            last[s] = n
        if node[0] == "op" and _is_view_node(node):
            parent[node[5]] = node[3][0]
        elif node[0] == "op" and node[5] in alias_of:
            parent[node[5]] = alias_of[node[5]]
    for s in outputs:
        last[s] = end_all

    def root(s: int) -> int:
        while parent[s] != s:
            s = parent[s]
        return s
    group_end: dict[int, int] = {}
    for s in range(nslots):
        r = root(s)
        group_end[r] = max(group_end.get(r, -1), last[s])

    ns: dict[str, Any] = {"np": np, "_Tensor": Tensor, "_checked": _checked}

    def check(n: int, out: int, op) -> str:
        if not checked:
            return ""
        what = getattr(op, "name", None) or getattr(op, "__name__", "an op")
        return f"; _checked(s{out}, {tuple(tr.meta[out][0])!r}, {what!r}, {n < first_change})"

    shared: dict = {}                            # state kernels share (a loss and its gradient)
    static: dict[int, Any] = dict(tr.const)      # slot -> array known at compile time
    buf_of: dict[int, int] = {}                  # group root -> buffer index
    buffers: list = []
    busy: list[int] = []                         # buffer index -> node index it is free after
    lines: dict[int, str] = {}                # node index -> its line of source
    steps: list = []

    def ref(s: int) -> str:
        return f"a{s}" if s in static else f"s{s}"

    def take_buffer(slot: int, n: int, inplace_from) -> int:
        shape, dtype = tr.meta[slot]
        for i in inplace_from:
            r = root(i)
            if i == r and r in buf_of and group_end[r] == n and tr.meta[i] == (shape, dtype) \
                    and sum(root(j) == r for j in nodes[n][3]) == 1:
                return buf_of[r]
        for b, arr in enumerate(buffers):
            if busy[b] < n and arr.shape == shape and arr.dtype == dtype:
                return b
        buffers.append(np.empty(shape, dtype))
        busy.append(-1)
        return len(buffers) - 1

    guards: list[str] = []                    # cells of "fn" nodes that skip later changes

    def guarded(line: str) -> str:
        return f"if not ({' or '.join(c + '[0]' for c in guards)}): {line}" if guards else line

    for n, node in enumerate(nodes):
        kind = node[0]
        if kind == "fn":
            _, kernel, ins, outs, guard = node
            ns[f"k{n}"] = kernel
            call = f"k{n}({', '.join(ref(s) for s in ins)})"
            lines[n] = f"{''.join(f's{o}, ' for o in outs)}= {call}" if outs else call
            if guard is not None:
                ns[f"c{n}"] = guard
                guards.append(f"c{n}")
            steps.append(("fn", kernel, ins, outs))
            continue
        if kind == "read":
            var, slot = node[1], node[2]
            ns[f"v{slot}"] = var
            lines[n] = f"s{slot} = v{slot}._value"
            steps.append(("read", var, slot))
            continue
        if kind == "assign":
            _, var, method, slot = node
            ns[f"k{n}"] = _assign_kernel(var, method, host)
            lines[n] = guarded(f"k{n}({ref(slot)})")
            steps.append(("assign", var, method, slot))
            continue
        if kind == "call":
            _, fn, args, kwargs, slot_leaves = node
            ns[f"k{n}"] = _call_kernel(fn, args, kwargs, slot_leaves, host, _scratch_flags(
                [s for _, s in slot_leaves], n, root, group_end, buf_of))
            lines[n] = guarded(f"k{n}({', '.join(ref(s) for _, s in slot_leaves)})")
            steps.append(("call", fn, tuple(s for _, s in slot_leaves)))
            continue
        _, prim, fn, ins, params, out = node
        args = ", ".join(ref(s) for s in ins)
        if _is_view_node(node):
            kernel = functools.partial(fn, **params) if params else fn
            if host and all(s in static for s in ins):
                arr = kernel(*[static[s] for s in ins])
                if np.shares_memory(arr, static[ins[0]]):
                    static[out] = arr
                    ns[f"a{out}"] = arr
                    steps.append(("view", prim, ins, out))
                    continue
            ns[f"f{n}"] = kernel
            lines[n] = f"s{out} = f{n}({args})" + check(n, out, prim or fn)
            steps.append(("view", prim, ins, out))
            continue
        ok = _out_kernel(node, tr.meta, shared) if host else None
        if ok is None:
            ns[f"f{n}"] = functools.partial(fn, **params) if params else fn
            lines[n] = f"s{out} = f{n}({args})" + check(n, out, prim or fn)
            steps.append(("alloc", prim or fn, ins, out))
            continue
        kernel, inplace = ok
        b = take_buffer(out, n, ins if inplace else ())
        buf_of[out] = b
        busy[b] = group_end[out]
        static[out] = buffers[b]
        ns[f"a{out}"] = buffers[b]
        ns[f"f{n}"] = kernel
        lines[n] = f"f{n}({args}, out=a{out})"
        steps.append(("kernel", prim or fn, ins, out, b))
    # Outputs living in a buffer (overwritten by the next replay) or in a Variable's array
    # (changed by the next update) are returned as copies.
    copy_out = {s for s in outputs if root(s) in buf_of or tr.kind[root(s)] == "read"}
    body_lines = _release_dynamic(lines, nodes, last, static)
    params_src = ", ".join(f"s{s}" for s in tr.inputs)
    outs = ", ".join((f"{ref(s)}.copy()" if s in copy_out else ref(s)) for s in outputs)
    body = "\n    ".join(body_lines) or "pass"
    source = f"def _plan({params_src}):\n    {body}\n    return ({outs}{',' if outs else ''})\n"
    for s, arr in static.items():
        ns.setdefault(f"a{s}", arr)
    exec(compile(source, "<tp.function plan>", "exec"), ns)
    return Plan(ns["_plan"], source, steps, buffers)


def _in_slots(node) -> tuple:
    """The slots a node reads."""
    kind = node[0]
    if kind in ("op", "call"):
        return node[3] if kind == "op" else tuple(s for _, s in node[4])
    if kind == "assign":
        return (node[3],)
    return node[2] if kind == "fn" else ()


def _release_dynamic(lines: dict, nodes: list, last: list, static: dict) -> list:
    """The plan's lines in order, with ``del sN`` after the last use of each dynamic slot that
    a later state change (assign, optimizer call) follows: a Variable's array read earlier must
    not be referenced when it is updated, or the copy-on-write update would allocate anew."""
    changes = [n for n, node in enumerate(nodes) if node[0] in ("assign", "call")]
    final = changes[-1] if changes else -1
    dels: dict[int, list] = {}
    for s, n in enumerate(last):
        if 0 <= n < final and s not in static:
            dels.setdefault(n, []).append(s)
    out = []
    for n in range(len(nodes)):
        if n in lines:
            out.append(lines[n])
        names = [f"s{s}" for s in dels.get(n, ())]
        if names:
            out.append(f"del {', '.join(names)}")
    return out


def _assign_kernel(var, method: str, host: bool = True) -> Callable:
    # No local reference to the variable's array may be held around _add_/_subtract_: they
    # update in place only when nothing else references it (copy-on-write).
    def assign(a) -> None:
        if a.dtype != var._value.dtype:
            a = a.astype(var._value.dtype)
        if method == "assign_add":
            var._add_(a)
        elif method == "assign_sub":
            var._subtract_(a)
        elif host and sys.getrefcount(var._value) <= 2 and var._value.shape == a.shape \
                and type(var._value) is np.ndarray:
            np.copyto(var._value, a)  # (counted: var._value and getrefcount's argument)
        else:
            var._value = a.copy()
    return assign


def _scratch_flags(slots: list, n: int, root: Callable, group_end: dict,
                   buf_of: dict) -> tuple:
    """Per slot: whether its array is one of the plan's buffers that nothing reads after node
    ``n`` (not an output, not viewed later, not passed twice), so node ``n`` may overwrite it."""
    roots = [root(s) for s in slots]
    return tuple(r in buf_of and group_end[r] == n and roots.count(r) == 1 for r in roots)


def _replay_factory(obj: Any, fn: Callable) -> Callable | None:
    """``obj``'s ``_tp_replay_<name>`` for the recorded method ``fn``, only where it stands for
    ``fn`` itself: found on ``obj``'s class (never through a wrapper's ``__getattr__``, which
    would hand over the wrapped object's kernel and skip the wrapper's own work), and defined
    by the class that defines ``fn`` or a subclass of it (a subclass overriding the method
    does not inherit the kernel of the method it replaced)."""
    name = getattr(fn, "__name__", "")
    mro = type(obj).__mro__
    owner = next((i for i, k in enumerate(mro) if name in vars(k)), None)
    kernel = next((i for i, k in enumerate(mro) if f"_tp_replay_{name}" in vars(k)), None)
    if owner is None or kernel is None or kernel > owner:
        return None
    method = vars(mro[owner])[name]
    if getattr(method, "__wrapped__", method) is not fn:
        return None
    return getattr(obj, f"_tp_replay_{name}")


def _call_kernel(fn: Callable, args: tuple, kwargs: dict, slot_leaves: list,
                 host: bool = True, scratch: tuple = ()) -> Callable:
    """Re-run a replayed method with this step's tensors; or, if its object offers one
    (``_tp_replay_<method>(*args)``, e.g. SGD's fused update), that kernel on the arrays.
    A factory taking ``_tp_scratch`` gets ``scratch``: per traced argument, whether its
    kernel may overwrite that array (a plan buffer nothing reads afterwards)."""
    make = _replay_factory(args[0], fn) if args and host else None
    if make is not None:  # it gets the traced Tensor arguments' arrays, in order
        extra = {"_tp_scratch": scratch} if any(scratch) and \
            "_tp_scratch" in inspect.signature(make).parameters else {}
        kernel = make(*args[1:], **kwargs, **extra)
        if kernel is not None:
            return kernel
    structure = [args, kwargs]
    leaves = nest.flatten(structure)
    where = [i for i, _ in slot_leaves]

    def call(*arrays) -> None:
        new = list(leaves)
        for i, a in zip(where, arrays):
            new[i] = Tensor(a)
        a2, k2 = nest.pack_as(structure, new)
        fn(*a2, **k2)
    return call
