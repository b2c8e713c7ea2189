"""Weight initializers (``tp.nn.init``), with Keras's fans and formulas.

Every initializer has the signature ``init(shape, fan_in=None, fan_out=None, rng=None,
dtype="float32") -> numpy.ndarray``. Fans default to :func:`compute_fans` of ``shape``: a
dense kernel ``(in, out)`` has fans ``in`` and ``out``; a conv kernel ``(kh, kw, in, out)`` has
``kh*kw*in`` and ``kh*kw*out`` (Keras). ``rng`` is ``None`` (tapeflow's global generator, so
``tp.random.set_seed`` makes construction reproducible), an ``int`` seed, or a NumPy
``Generator`` (shared by the layers of one model so a builder's ``seed`` fixes all of them).

>>> w = glorot_uniform((784, 512), rng=0)
>>> w.dtype, bool(abs(w).max() <= (6 / (784 + 512)) ** 0.5)
(dtype('float32'), True)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .. import random as tp_random
from ..tensor import as_dtype

__all__ = ["compute_fans", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
           "lecun_normal", "lecun_uniform", "zeros", "ones", "random_uniform", "random_normal",
           "truncated_normal", "get", "as_generator", "Initializer", "GlorotUniform",
           "GlorotNormal", "HeUniform", "HeNormal", "LecunNormal", "LecunUniform", "Zeros", "Ones",
           "Constant", "RandomUniform", "RandomNormal", "TruncatedNormal"]

Initializer = Callable[..., np.ndarray]


def as_generator(rng: int | np.random.Generator | None) -> np.random.Generator:
    """``None`` -> tapeflow's global generator (looked up now), int -> a fresh seeded one."""
    if rng is None:
        return tp_random.generator()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy Generator, got "
                    f"{type(rng).__name__}")


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel shape, as Keras computes them."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])  # conv kernels: (*spatial, in, out)
    return receptive * shape[-2], receptive * shape[-1]


def _fans(shape, fan_in, fan_out) -> tuple[int, int]:
    fi, fo = compute_fans(shape)
    fi = fi if fan_in is None else int(fan_in)
    fo = fo if fan_out is None else int(fan_out)
    if fi <= 0 or fo <= 0:
        raise ValueError(f"initializer: fans must be positive, got fan_in={fi}, fan_out={fo} "
                         f"for shape {tuple(shape)}")
    return fi, fo


def _uniform(shape, limit: float, rng, dtype) -> np.ndarray:
    g = as_generator(rng)
    return g.uniform(-limit, limit, size=tuple(shape)).astype(as_dtype(dtype))


def _truncated_normal(shape, stddev: float, rng, dtype) -> np.ndarray:
    """Normal draws redrawn until within two standard deviations (Keras's TruncatedNormal)."""
    g = as_generator(rng)
    out = g.standard_normal(size=tuple(shape))
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = g.standard_normal(size=int(bad.sum()))
        bad = np.abs(out) > 2.0
    return (out * stddev).astype(as_dtype(dtype))


# Standard deviation of a unit normal truncated to [-2, 2]; dividing by it restores the
# variance the truncation removed (Keras's VarianceScaling does the same).
_TRUNC_STD = 0.87962566103423978


def glorot_uniform(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
                   dtype="float32") -> np.ndarray:
    """U(-l, l) with ``l = sqrt(6 / (fan_in + fan_out))`` (Keras's default kernel init)."""
    fi, fo = _fans(shape, fan_in, fan_out)
    return _uniform(shape, math.sqrt(6.0 / (fi + fo)), rng, dtype)


def glorot_normal(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
                  dtype="float32") -> np.ndarray:
    """Truncated normal with std ``sqrt(2 / (fan_in + fan_out))``."""
    fi, fo = _fans(shape, fan_in, fan_out)
    return _truncated_normal(shape, math.sqrt(2.0 / (fi + fo)) / _TRUNC_STD, rng, dtype)


def he_uniform(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
               dtype="float32") -> np.ndarray:
    """U(-l, l) with ``l = sqrt(6 / fan_in)`` (std ``sqrt(2 / fan_in)``), for ReLU layers."""
    fi, _ = _fans(shape, fan_in, fan_out)
    return _uniform(shape, math.sqrt(6.0 / fi), rng, dtype)


def he_normal(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
              dtype="float32") -> np.ndarray:
    """Truncated normal with std ``sqrt(2 / fan_in)`` (Keras's he_normal)."""
    fi, _ = _fans(shape, fan_in, fan_out)
    return _truncated_normal(shape, math.sqrt(2.0 / fi) / _TRUNC_STD, rng, dtype)


def lecun_normal(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
                 dtype="float32") -> np.ndarray:
    """Truncated normal with std ``sqrt(1 / fan_in)``."""
    fi, _ = _fans(shape, fan_in, fan_out)
    return _truncated_normal(shape, math.sqrt(1.0 / fi) / _TRUNC_STD, rng, dtype)


def zeros(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
          dtype="float32") -> np.ndarray:
    """All zeros (the default bias init). Draws nothing from ``rng``."""
    return np.zeros(tuple(shape), dtype=as_dtype(dtype))


def ones(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
         dtype="float32") -> np.ndarray:
    """All ones. Draws nothing from ``rng``."""
    return np.ones(tuple(shape), dtype=as_dtype(dtype))


def lecun_uniform(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
                  dtype="float32") -> np.ndarray:
    """U(-l, l) with ``l = sqrt(3 / fan_in)``."""
    fi, _ = _fans(shape, fan_in, fan_out)
    return _uniform(shape, math.sqrt(3.0 / fi), rng, dtype)


def random_uniform(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
                   dtype="float32", minval: float = -0.05, maxval: float = 0.05) -> np.ndarray:
    """U(minval, maxval), Keras's ``RandomUniform`` defaults (Embedding's default init)."""
    g = as_generator(rng)
    return g.uniform(minval, maxval, size=tuple(shape)).astype(as_dtype(dtype))


def random_normal(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
                  dtype="float32", mean: float = 0.0, stddev: float = 0.05) -> np.ndarray:
    """N(mean, stddev^2), Keras's ``RandomNormal`` defaults."""
    g = as_generator(rng)
    return (mean + stddev * g.standard_normal(size=tuple(shape))).astype(as_dtype(dtype))


def truncated_normal(shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
                     dtype="float32", mean: float = 0.0, stddev: float = 0.05) -> np.ndarray:
    """N(mean, stddev^2) redrawn beyond two standard deviations (Keras's TruncatedNormal)."""
    return (mean + _truncated_normal(shape, stddev, rng, "float64")).astype(as_dtype(dtype))


class Initializer:
    """Keras-style initializer object: ``init(shape, dtype=None) -> Tensor``.

    Layers also accept it wherever an initializer name is accepted. With an int ``seed`` every
    call draws the same values (Keras 3); with ``seed=None`` draws come from ``tp.random``.

    >>> a, b = GlorotUniform(seed=1)((2, 2)), GlorotUniform(seed=1)((2, 2))
    >>> a.numpy().tolist() == b.numpy().tolist()
    True
    """

    _fn: Callable[..., np.ndarray]

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._options: dict = {}

    def array(self, shape, fan_in: int | None = None, fan_out: int | None = None, rng=None,
              dtype="float32") -> np.ndarray:
        """The plain-array form layers call (a seed given here wins over ``rng``)."""
        rng = rng if self.seed is None else int(self.seed)
        return type(self)._fn(shape, fan_in, fan_out, rng, dtype, **self._options)

    def __call__(self, shape, dtype=None):
        from ..tensor import Tensor

        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
        return Tensor(self.array(shape, dtype="float32" if dtype is None else dtype))

    def get_config(self) -> dict:
        return {"seed": self.seed, **self._options}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _initializer_class(name: str, fn: Callable[..., np.ndarray], doc: str, **defaults):
    def __init__(self, *args, seed: int | None = None, **options) -> None:
        Initializer.__init__(self, seed)
        names = list(defaults)
        if len(args) > len(names):
            raise TypeError(f"{name} takes at most {len(names)} positional arguments")
        unknown = set(options) - set(names)
        if unknown:
            raise TypeError(f"{name}: unexpected arguments {sorted(unknown)}")
        self._options = {**defaults, **dict(zip(names, args)), **options}
    return type(name, (Initializer,), {"__init__": __init__, "_fn": staticmethod(fn),
                                       "__doc__": doc})


GlorotUniform = _initializer_class("GlorotUniform", glorot_uniform, glorot_uniform.__doc__)
GlorotNormal = _initializer_class("GlorotNormal", glorot_normal, glorot_normal.__doc__)
HeUniform = _initializer_class("HeUniform", he_uniform, he_uniform.__doc__)
HeNormal = _initializer_class("HeNormal", he_normal, he_normal.__doc__)
LecunNormal = _initializer_class("LecunNormal", lecun_normal, lecun_normal.__doc__)
LecunUniform = _initializer_class("LecunUniform", lecun_uniform, lecun_uniform.__doc__)
RandomUniform = _initializer_class("RandomUniform", random_uniform, random_uniform.__doc__,
                                   minval=-0.05, maxval=0.05)
RandomNormal = _initializer_class("RandomNormal", random_normal, random_normal.__doc__,
                                  mean=0.0, stddev=0.05)
TruncatedNormal = _initializer_class("TruncatedNormal", truncated_normal,
                                     truncated_normal.__doc__, mean=0.0, stddev=0.05)
Zeros = _initializer_class("Zeros", zeros, zeros.__doc__)
Ones = _initializer_class("Ones", ones, ones.__doc__)


def _constant(shape, fan_in=None, fan_out=None, rng=None, dtype="float32", value=0.0):
    return np.full(tuple(shape), value, dtype=as_dtype(dtype))


Constant = _initializer_class("Constant", _constant, "Every entry ``value``.", value=0.0)


_BY_NAME: dict[str, Initializer] = {
    f.__name__: f for f in (glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_normal,
                            lecun_uniform, zeros, ones, random_uniform, random_normal,
                            truncated_normal)
}
# Keras's aliases and class names as strings
_BY_NAME.update({"uniform": random_uniform, "normal": random_normal, "zero": zeros, "one": ones})
_CLASSES = {c.__name__: c for c in (GlorotUniform, GlorotNormal, HeUniform, HeNormal,
                                    LecunNormal, LecunUniform, RandomUniform, RandomNormal,
                                    TruncatedNormal, Zeros, Ones, Constant)}


def get(identifier: str | Initializer) -> Initializer:
    """An initializer by name (``"glorot_uniform"``, ``"he_normal"``, ``"GlorotUniform"``,
    ``"uniform"``, ...), an :class:`Initializer` object, or a callable as is."""
    if isinstance(identifier, Initializer):
        return identifier.array
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier in _CLASSES:
        return _CLASSES[identifier]().array
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]
    raise ValueError(f"unknown initializer {identifier!r}; expected a callable or one of "
                     f"{sorted(_BY_NAME)}")
