"""``tp.keras.datasets``: ``mnist.load_data()`` and ``fashion_mnist.load_data()`` returning
Keras's ``(x_train, y_train), (x_test, y_test)`` tuple of uint8 NumPy arrays, through
tapeflow's verified loader (``tp.data``: local folders, cache, then SHA-256-checked
downloads)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import data

__all__ = ["mnist", "fashion_mnist"]


class _Dataset:
    """A Keras dataset module stand-in: ``load_data(**loader_options)``."""

    def __init__(self, name: str, loader: Callable[..., Any]) -> None:
        self.__name__ = name
        self._loader = loader

    def load_data(self, path: str | None = None, data_dir: str | None = None,
                  **options: Any) -> tuple:
        """``(x_train, y_train), (x_test, y_test)``: images ``(N, 28, 28)`` and labels ``(N,)``,
        all uint8 as Keras gives them. ``data_dir`` and ``options`` go to ``tp.data``'s
        loader (``download=``, ``mirrors=``, ...). Keras's ``path`` (the name of its cached
        ``.npz``) is accepted and has no effect: the loader keeps the canonical IDX files."""
        if path is not None and data_dir is None and not str(path).endswith(".npz"):
            data_dir = path  # (tapeflow's own spelling: the folder of the IDX files)
        splits = self._loader(data_dir, **options)
        return ((splits.train_images, splits.train_labels.astype(np.uint8)),
                (splits.test_images, splits.test_labels.astype(np.uint8)))

    def __repr__(self) -> str:
        return f"<tp.keras.datasets.{self.__name__}>"


mnist = _Dataset("mnist", data.load_mnist)
fashion_mnist = _Dataset("fashion_mnist", data.load_fashion_mnist)
