"""``tp.keras``: the Keras spelling of tapeflow, so ``tf.keras.X`` code becomes ``tp.keras.X``.

Every name here is tapeflow's own object, re-exported (``tp.keras.Sequential is
tp.nn.Sequential``, ``tp.keras.layers.Dense is tp.nn.Dense``); nothing is implemented twice.
Keras-only conveniences whose defaults differ from ``tp.nn`` (loss classes and per-example loss
functions, stateful metrics) live in :mod:`.losses` and :mod:`.metrics` and call the
``tp.nn`` implementations.

This package is the top facade over every layer of tapeflow (it re-exports
``tapeflow.optimizers`` too), so ``import tapeflow`` does not import it: ``tp.keras`` is loaded
on first use.

>>> import tapeflow as tp
>>> model = tp.keras.Sequential([tp.keras.layers.Dense(4, activation="relu", input_shape=(3,)),
...                              tp.keras.layers.Dense(2)])
>>> [w.shape for w in model.get_weights()]
[(3, 4), (4,), (4, 2), (2,)]
"""
from .. import nn
from . import activations, datasets, initializers, layers, losses, metrics, optimizers, utils

Sequential = nn.Sequential
Model = nn.Model
Input = nn.Input

from . import callbacks, models  # noqa: E402  (models re-exports Sequential and Model)
from types import SimpleNamespace as _Namespace  # noqa: E402

backend = _Namespace(clear_session=utils.clear_session)  # keras.backend.clear_session()

__all__ = ["Sequential", "Model", "Input", "layers", "losses", "metrics", "initializers",
           "optimizers", "activations", "datasets", "callbacks", "models", "utils", "backend"]
