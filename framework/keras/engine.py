"""Keras's model API on tapeflow modules: ``compile``, ``fit``, ``evaluate``, ``predict``,
``save`` / ``load_model``. ``model.fit(...)`` is ``fit(model, ...)`` here.

``fit`` runs the one training loop (:class:`tapeflow.training.Trainer`, also behind
``tapeflow-train``) with Keras's defaults: ``batch_size=32``, shuffling every epoch,
``verbose=1`` (a progress bar and one line per epoch), ``validation_data`` /
``validation_split`` logged as ``val_*``, and a :class:`~tapeflow.callbacks.History` returned.

The same script runs unchanged under ``mpiexec -n N``: ``batch_size`` is the *global* batch,
split across the ranks each step; every rank starts from rank 0's weights; gradients are
summed by a ``DistributedGradientTape``; logs, ``History`` and callbacks see global figures on
every rank. The communicator is :func:`_communicator`: the one place where the Keras API finds
it (``comm=`` when given, else ``tapeflow.distributed.get_comm()``, which is the MPI world
under mpiexec and a local one in a plain process).

>>> import numpy as np, tapeflow as tp
>>> model = tp.keras.Sequential([tp.keras.layers.Dense(2, input_shape=(3,))])
>>> model.compile(optimizer="sgd", loss="mse")
>>> history = model.fit(np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32), epochs=2,
...                     verbose=0)
>>> sorted(history.history), len(history.history["loss"])
(['loss'], 2)
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import callbacks as cbks
from ..nn import modules
from ..tensor import Tensor
from . import losses as k_losses
from . import metrics as k_metrics

__all__ = ["compile", "fit", "evaluate", "predict", "save_model", "load_model",
           "save_weights", "load_weights",
           "module_config", "module_from_config"]

_FORMAT = "tapeflow-keras-model"
_NOT_IN_HISTORY = ("learning_rate", "samples_per_second", "epoch_seconds")


@dataclass
class _Compiled:
    optimizer: Any
    loss: Any
    loss_fn: Any          # per example
    metric_fns: dict      # name -> per example, host array
    config: dict          # what save() records: loss and metric names
    run_eagerly: bool = False


def _communicator(comm: Any = None):
    """The communicator for fit/evaluate: ``comm`` if given, else the default one."""
    if comm is not None:
        return comm
    from tapeflow import distributed as dist

    return dist.get_comm()


def _host(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.numpy()
    return x.get() if hasattr(x, "get") else np.asarray(x)


# --------------------------------------------------------------------------- compile
def _loss_name(identifier: Any) -> str | None:
    if isinstance(identifier, str):
        return identifier
    return getattr(identifier, "name", None) or getattr(identifier, "__name__", None)


def _per_example(fn: Any) -> Any:
    """``fn(y_true, y_pred)`` as one value per example, which the training loop sums and
    divides by the sample count: Keras's ``sum_over_batch_size`` divides the sum of whatever
    the function returned by its number of elements, so a scalar (a function that already took
    the batch mean, or ``mean_squared_error`` of 1-D targets) stands for every example of the
    batch, and values per example and output (shape ``(batch, k)``) are averaged over ``k``."""
    from tapeflow import ops

    def per_example(y_true: Any, y_pred: Any) -> Any:
        # Keras's squeeze_or_expand_dimensions, before any loss function (custom ones too):
        # targets (n,) against predictions (n, 1) get the unit axis, so `y_true - y_pred`
        # never broadcasts to (n, n).
        t_dim, p_dim = getattr(y_true, "ndim", None), getattr(y_pred, "ndim", None)
        if t_dim is not None and p_dim is not None:
            if t_dim == p_dim - 1 and y_pred.shape[-1] == 1:
                y_true = ops.expand_dims(y_true, -1)
            elif p_dim == t_dim - 1 and y_true.shape[-1] == 1:
                y_true = ops.squeeze(y_true, -1)
        out = fn(y_true, y_pred)
        value = out if isinstance(out, Tensor) else ops.convert_to_tensor(out)
        batch = y_pred.shape[0] if getattr(y_pred, "ndim", 0) else 1
        if value.ndim == 0:
            return ops.broadcast_to(value, (batch,))
        if value.ndim > 1:
            return ops.reduce_mean(value, axis=list(range(1, value.ndim)))
        return value
    return per_example


def _accuracy_for(loss_name: str | None):
    name = (loss_name or "").lower()
    if "binary" in name:
        return k_metrics.binary_accuracy
    if "categorical" in name and "sparse" not in name:
        return k_metrics.categorical_accuracy
    return k_metrics.sparse_categorical_accuracy


def _metric_fn(identifier: Any, loss_name: str | None) -> tuple[str, Any]:
    if identifier in ("accuracy", "acc"):
        return "accuracy", _accuracy_for(loss_name)
    if isinstance(identifier, str):
        try:
            fn = getattr(k_metrics.get(identifier), "fn", None)
        except ValueError as unknown:
            try:  # "mse", "mae", "binary_crossentropy": a loss as a metric, as in Keras
                return identifier, k_losses.get(identifier)
            except ValueError:
                raise unknown from None
        return identifier, fn or k_losses.get(identifier)
    if isinstance(identifier, k_metrics.Metric):
        fn = getattr(identifier, "fn", None)
        if fn is None:
            raise ValueError(f"metric {identifier!r} has no per-example function; use a "
                             "MeanMetricWrapper-style metric or a function")
        return identifier.name, fn
    if callable(identifier):
        return identifier.__name__, identifier
    raise ValueError(f"unknown metric {identifier!r}")


def compile(model: Any, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None,
            **kwargs: Any) -> None:
    """Keras's ``compile``: an optimizer (object or name), a loss (object, function or name)
    and metrics (names such as ``"accuracy"``, functions or metric objects). As in Keras,
    ``fit`` runs each step as a traced function (``tp.function``: traced once per batch
    shape, then replayed; one process) unless ``run_eagerly=True``."""
    from tapeflow import optimizers

    unknown = sorted(set(kwargs) - {"loss_weights", "weighted_metrics", "run_eagerly",
                                    "steps_per_execution", "jit_compile", "auto_scale_loss",
                                    "experimental_run_tf_function"})  # (Horovod's examples)
    if unknown:
        raise TypeError(f"compile() got unexpected keyword arguments {unknown}")
    if loss is None:
        raise ValueError("compile() needs a loss, e.g. loss='sparse_categorical_crossentropy'")
    if isinstance(optimizer, str):
        optimizer = optimizers.get(optimizer.lower())
    loss_obj = k_losses.get(loss)
    loss_fn = _per_example(loss_obj.call if isinstance(loss_obj, k_losses.Loss) else loss_obj)
    names = []
    metric_fns = {}
    for identifier in ([metrics] if isinstance(metrics, str) else list(metrics or [])):
        name, fn = _metric_fn(identifier, _loss_name(loss))
        names.append(identifier if isinstance(identifier, str) else name)
        metric_fns[name] = (lambda f: lambda y_true, y_pred: _host(f(y_true, y_pred)))(
            _per_example(fn))
    model._compiled = _Compiled(optimizer, loss_obj, loss_fn, metric_fns,
                                {"loss": _loss_name(loss), "metrics": names,
                                 "loss_class": type(loss_obj).__name__
                                 if isinstance(loss_obj, k_losses.Loss) else None,
                                 "loss_config": getattr(loss_obj, "get_config", dict)()},
                                bool(kwargs.get("run_eagerly", False)))


def _compiled(model: Any, what: str) -> _Compiled:
    state = getattr(model, "_compiled", None)
    if state is None:
        raise RuntimeError(f"You must call compile() before {what}()")
    return state


# --------------------------------------------------------------------------- data
def _arrays(x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as host arrays; ``x`` may be an iterable of ``(x_batch, y_batch)``."""
    if y is None and x is not None and not isinstance(x, (np.ndarray, Tensor)):
        if isinstance(x, tuple) and len(x) == 2:
            x, y = x
        else:
            xs, ys = [], []
            for item in x:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise ValueError(f"{what}: a dataset must yield (x, y) batches")
                xs.append(_host(item[0]))
                ys.append(_host(item[1]))
            if not xs:
                raise ValueError(f"{what}: the dataset is empty")
            x, y = np.concatenate(xs), np.concatenate(ys)
    if x is None or y is None:
        raise ValueError(f"{what}: give x and y (arrays), or x as a dataset of (x, y) batches")
    x, y = _host(x), _host(y)
    if len(x) != len(y):
        raise ValueError(f"{what}: x has {len(x)} samples but y has {len(y)}")
    if x.dtype == np.float64:
        x = x.astype(np.float32)  # Keras's floatx
    return _expand_1d(x), y


_KERAS_FIT_ARGUMENTS = {"class_weight", "sample_weight", "validation_batch_size",
                        "validation_freq", "max_queue_size", "workers", "use_multiprocessing"}


def _check_fit_arguments(unused: dict) -> None:
    """Keras's other ``fit`` arguments: accepted when they change nothing, refused when they
    would (weights, a validation frequency), and unknown names are a TypeError."""
    unknown = sorted(set(unused) - _KERAS_FIT_ARGUMENTS)
    if unknown:
        raise TypeError(f"fit() got unexpected keyword arguments {unknown}")
    for name in ("class_weight", "sample_weight"):
        if unused.get(name) is not None:
            raise ValueError(f"fit: {name} is not supported by tapeflow's fit (weight the "
                             "loss in a custom training loop instead)")
    if unused.get("validation_freq", 1) != 1:
        raise ValueError("fit: validation_freq other than 1 is not supported")


def _dataset_arrays(data: Any, steps: int | None, what: str, comm: Any) -> tuple:
    """``(x, y)`` from a dataset of ``(x, y)`` batches: its first ``steps`` batches (so an
    endless ``repeat()`` works), else all of it. Under MPI each rank's dataset holds its own
    data (Horovod's convention: shard it or shuffle it per rank), so the ranks' arrays are
    gathered into the global data the training loop splits again."""
    import itertools

    if steps is not None:
        if int(steps) < 1:
            raise ValueError(f"{what}: steps must be at least 1, got {steps}")
        data = itertools.islice(iter(data), int(steps))
    elif getattr(data, "_cardinality", 0) == -1:
        raise ValueError(f"{what}: the dataset repeats for ever: give steps_per_epoch "
                         "(validation_steps for validation data)")
    x, y = _arrays(data, None, what)
    if comm.size > 1:
        x, y = _host(comm.allgather(x)), _host(comm.allgather(y))
    return x, y


def _expand_1d(x: np.ndarray) -> np.ndarray:
    """tf.keras's ``expand_1d``: 1-D inputs become one feature per sample, ``(n, 1)``."""
    return x[:, None] if x.ndim == 1 else x


def _remember_input(model: Any, x: np.ndarray) -> None:
    if getattr(model, "_build_input_shape", None) is None:
        model._build_input_shape = tuple(int(d) for d in x.shape[1:])


# --------------------------------------------------------------------------- fit
def fit(model: Any, x: Any = None, y: Any = None, batch_size: int | None = None,
        epochs: int = 1, verbose: Any = "auto", callbacks: Sequence[Any] | None = None,
        validation_split: float = 0.0, validation_data: Any = None, shuffle: bool = True,
        initial_epoch: int = 0, comm: Any = None, seed: int | None = None,
        log_every: int = 10, steps_per_epoch: int | None = None,
        validation_steps: int | None = None, **unused: Any) -> cbks.History:
    """Keras's ``fit``; returns the :class:`~tapeflow.callbacks.History`.

    ``batch_size`` (default 32) is the global batch under MPI. ``verbose``: 0 silent, 1 (and
    ``"auto"``) a progress bar and a line per epoch, 2 a line per epoch; rank 0 prints.
    ``comm`` overrides the default communicator, ``seed`` the shuffling order (default: a new
    one per ``fit`` call, the same on every rank).
    """
    from tapeflow import distributed as dist
    from tapeflow.training import Interrupted, Trainer

    state = _compiled(model, "fit")
    _check_fit_arguments(unused)
    comm = _communicator(comm)
    dataset = y is None and x is not None and not isinstance(x, (np.ndarray, Tensor, tuple))
    if dataset:
        if batch_size is not None:
            raise ValueError("fit: do not give batch_size with a dataset (it is batched "
                             "already), as Keras says")
        batch_size = getattr(x, "_batch_size", None)
        x, y = _dataset_arrays(x, steps_per_epoch, "fit", comm)
        if batch_size and comm.size > 1:
            batch_size *= comm.size  # Horovod: each rank's dataset gives its own batches
    elif steps_per_epoch is not None:
        raise ValueError("fit: steps_per_epoch is for datasets; with arrays, batch_size sets "
                         "the steps")
    x, y = _arrays(x, y, "fit")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    x_val = y_val = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2):
            validation_data = _dataset_arrays(validation_data, validation_steps,
                                              "validation_data", comm)
        x_val, y_val = _arrays(validation_data[0], validation_data[1], "validation_data")
    elif validation_split:
        cut = int(len(x) * (1.0 - validation_split))  # Keras: the last samples, unshuffled
        x, x_val, y, y_val = x[:cut], x[cut:], y[:cut], y[cut:]
    _remember_input(model, x)
    verbose = 1 if verbose == "auto" else int(verbose)
    if seed is None:
        model._fit_calls = getattr(model, "_fit_calls", 0) + 1
        seed = model._fit_calls
    model.stop_training = False
    if getattr(model, "_build_input_shape", None) and not model.variables and \
            hasattr(model, "build"):
        model.build(model._build_input_shape)
    if comm.size > 1:  # every rank starts from rank 0's weights
        comm.broadcast_variables(list(model.variables), 0)
    history = cbks.History(exclude=_NOT_IN_HISTORY)
    say = (print if verbose and comm.rank == 0 else None)
    trainer = Trainer(model, state.optimizer, x, y, x_val, y_val,
                      batch_size=batch_size or 32, seed=seed, comm=comm,
                      gradient_tape=dist.tape_factory(comm), log_every=log_every,
                      progress=verbose == 1, log=say, loss_fn=state.loss_fn,
                      metric_fns=state.metric_fns, callbacks=[history, *(callbacks or [])],
                      eval_prefix="val_", shuffle=shuffle, epoch=initial_epoch,
                      use_function=not state.run_eagerly)
    try:
        trainer.fit(epochs)
    except Interrupted as e:
        raise KeyboardInterrupt(f"training stopped by signal {e.signum}") from e
    history.model, history.params = model, {"epochs": epochs, "steps": trainer.steps_per_epoch,
                                            "verbose": verbose}
    return history


# --------------------------------------------------------------------------- evaluate, predict
def evaluate(model: Any, x: Any = None, y: Any = None, batch_size: int | None = None,
             verbose: Any = "auto", return_dict: bool = False, comm: Any = None):
    """Keras's ``evaluate``: the loss, or ``[loss, *metrics]``, or a dict with
    ``return_dict``. Exact means over all samples; under MPI the ranks share the work."""
    from tapeflow.training import evaluate_logs

    state = _compiled(model, "evaluate")
    x, y = _arrays(x, y, "evaluate")
    _remember_input(model, x)
    comm = _communicator(comm)
    logs = evaluate_logs(model, x, y, state.loss_fn, state.metric_fns, comm,
                         batch_size=batch_size or 32)
    if verbose not in (0, "0") and verbose != "auto" and comm.rank == 0:
        print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
    if return_dict:
        return logs
    values = list(logs.values())
    return values[0] if len(values) == 1 else values


def predict(model: Any, x: Any, batch_size: int | None = None, verbose: Any = "auto",
            **unused: Any) -> np.ndarray:
    """Keras's ``predict``: the model's outputs for ``x`` in inference mode, as a NumPy array
    (batches of ``batch_size``, default 32). Every rank computes all of them."""
    if not isinstance(x, (np.ndarray, Tensor)):
        x = np.concatenate([_host(b[0] if isinstance(b, (tuple, list)) else b) for b in x])
    x = _expand_1d(_host(x))
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    _remember_input(model, x)
    step = batch_size or 32
    outs = [_host(model(Tensor(x[i:i + step]), training=False)) for i in range(0, len(x), step)]
    return np.concatenate(outs) if outs else np.zeros((0,))


# --------------------------------------------------------------------------- architecture
def _plain(value: Any, where: str) -> Any:
    if isinstance(value, modules.Module):
        return module_config(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, np.dtype):
        return value.name
    raise ValueError(f"cannot save {where} = {value!r}: only JSON data, strings (e.g. "
                     "activation='relu') and modules can be saved")


def module_config(module: Any) -> dict[str, Any]:
    """``{"class_name": ..., "config": {constructor arguments}}`` of a module, recursively."""
    cls = type(module).__name__
    if isinstance(module, modules.Sequential):
        args = {"layers": list(module.layers), "name": module.name}
    elif hasattr(module, "functional_config"):  # a functional model: its graph
        args = module.functional_config()
    else:
        recorded = module.__dict__.get("_init_args")
        args = dict(recorded.args) if recorded is not None else {}
    return {"class_name": cls, "config": _plain(args, cls)}


def module_from_config(config: dict, custom_objects: dict | None = None) -> Any:
    """Rebuild a module from :func:`module_config`'s output."""
    def build(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"class_name", "config"}:
            name = value["class_name"]
            cls = (custom_objects or {}).get(name) or modules.module_class(name)
            return cls(**{k: build(v) for k, v in value["config"].items()})
        if isinstance(value, list):
            return [build(v) for v in value]
        return value
    return build(config)


# --------------------------------------------------------------------------- save / load
def save_model(model: Any, filepath: str | os.PathLike, overwrite: bool = True) -> None:
    """One safetensors file: weights (``model/<name>``), optimizer arrays
    (``optimizer/<key>``) and, in its JSON header, the architecture, the compile settings and
    the optimizer's config and scalars. Written to a temp file, fsynced, renamed: atomic."""
    path = Path(filepath)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (overwrite=False)")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: give a file name such as "
                                f"{path / 'model.safetensors'}")
    tensors = {f"model/{k}": np.ascontiguousarray(v) for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"format": _FORMAT, "version": 1,
                            "architecture": module_config(model),
                            "build_input_shape": getattr(model, "_build_input_shape", None)}
    state = getattr(model, "_compiled", None)
    if state is not None:
        opt = state.optimizer
        if type(opt).__name__ == "DistributedOptimizer":  # Horovod's wrapper: save what it
            opt = opt.optimizer                              # wraps (wrap it again on load)
        scalars = {}
        for key, value in opt.get_state().items():
            if hasattr(value, "shape") and not isinstance(value, np.generic):
                tensors[f"optimizer/{key}"] = np.ascontiguousarray(_host(value))
            else:
                scalars[key] = value.item() if isinstance(value, np.generic) else value
        meta["compile"] = {**state.config, "optimizer": type(opt).__name__.lower(),
                           "optimizer_config": _plain(opt.get_config(), "optimizer"),
                           "optimizer_scalars": scalars}
    write_atomically(path, tensors, meta)


def write_atomically(path: Path, tensors: dict, meta: dict) -> None:
    """``tensors`` and ``meta`` (JSON in the header) as one safetensors file at ``path``:
    written to a temp file beside it, fsynced, renamed (a crash leaves the old file)."""
    import safetensors.numpy as st

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        st.save_file(tensors, tmp, metadata={"tapeflow": json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_file(path: Path, what: str) -> tuple[dict, dict]:
    """``(meta, tensors)`` of a file :func:`write_atomically` wrote (nothing in it runs)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("tapeflow", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a tapeflow {what} file: {e}") from None
    return (meta if isinstance(meta, dict) else {}), tensors


def save_weights(model: Any, filepath: str | os.PathLike, overwrite: bool = True) -> None:
    """Keras's ``save_weights``: every variable by name in one safetensors file (whatever the
    file's extension, ``.weights.h5`` included), written atomically."""
    path = Path(filepath)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (overwrite=False)")
    if not model.variables:
        raise ValueError(f"save_weights: {type(model).__name__} has no weights yet; build it "
                         "or call it on a batch first")
    write_atomically(path, {k: np.ascontiguousarray(v) for k, v in model.state_dict().items()},
                     {"format": _FORMAT + "-weights", "version": 1})


def load_weights(model: Any, filepath: str | os.PathLike, skip_mismatch: bool = False) -> None:
    """Keras's ``load_weights``: assign every variable from :func:`save_weights`'s file (or a
    saved model's) by name; names and shapes must match unless ``skip_mismatch``. A model
    whose weights are created on its first batch is built from the file's input shape, or
    must be built first."""
    path = Path(filepath)
    meta, tensors = read_file(path, "weights")
    if meta.get("format") == _FORMAT:  # a whole saved model: its weights
        tensors = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    elif meta.get("format") != _FORMAT + "-weights":
        raise ValueError(f"{path}: not a tapeflow weights file")
    if not model.variables:
        raise ValueError(f"load_weights: {type(model).__name__} has no weights yet to load "
                         f"{len(tensors)} arrays into; build it (model.build((None, ...))) or "
                         "call it on a batch first")
    if skip_mismatch:
        named = dict(model.named_variables())
        tensors = {k: v for k, v in tensors.items()
                   if k in named and tuple(v.shape) == tuple(named[k].shape)}
    try:
        model.load_state_dict(tensors, strict=not skip_mismatch)
    except (KeyError, ValueError) as e:
        raise ValueError(f"load_weights({path}): {e}") from None


def load_model(filepath: str | os.PathLike, custom_objects: dict | None = None,
               compile: bool = True) -> Any:  # noqa: A002 - Keras's argument name
    """Read :func:`save_model`'s file back: the same architecture, weights and (with
    ``compile``) optimizer state. Nothing in the file is executed (safetensors + JSON)."""
    from tapeflow import optimizers
    from tapeflow.optimizers import schedules

    path = Path(filepath)
    meta, tensors = read_file(path, "model")
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a tapeflow model file (no {_FORMAT!r} header)")
    model = module_from_config(meta["architecture"], custom_objects)
    shape = meta.get("build_input_shape")
    if shape and hasattr(model, "build"):
        model.build(tuple(shape))
        model._build_input_shape = tuple(shape)
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(weights, strict=True)
    info = meta.get("compile")
    if compile and info:
        config = dict(info["optimizer_config"])
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        opt = type(optimizers.get(info["optimizer"]))(**config)
        model.compile(optimizer=opt, loss=_saved_loss(info), metrics=info.get("metrics"))
        state = {**info.get("optimizer_scalars", {}),
                 **{k[len("optimizer/"):]: v for k, v in tensors.items()
                    if k.startswith("optimizer/")}}
        opt.set_state(state)
    return model


def _saved_loss(info: dict) -> Any:
    """The loss as compiled: a loss class with its options, or a loss function by name."""
    cls = getattr(k_losses, info.get("loss_class") or "", None)
    if isinstance(cls, type) and issubclass(cls, k_losses.Loss):
        options = {k: v for k, v in (info.get("loss_config") or {}).items() if k != "name"}
        return cls(**options)
    name = info.get("loss")
    try:
        return k_losses.get(name)
    except ValueError:
        raise ValueError(f"cannot rebuild the loss {name!r} of a saved model; load it with "
                         "compile=False and compile it again") from None
