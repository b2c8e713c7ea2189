"""``tp.keras.optimizers``: tapeflow's optimizer library (``tapeflow.optimizers``) with its
``schedules``, by Keras name."""
from ..optimizers import *  # noqa: F401,F403
from ..optimizers import __all__ as _all
from ..optimizers import schedules  # noqa: F401

__all__ = list(_all)
