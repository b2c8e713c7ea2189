"""``tp.nn``: neural-network functions (and, with the training stack, layers and modules)."""
from . import init, losses
from .activations import *  # noqa: F401,F403
from .activations import __all__ as _activations_all
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all
from .normalization import *  # noqa: F401,F403
from .normalization import __all__ as _normalization_all
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all
from .extra_layers import *  # noqa: F401,F403
from .extra_layers import __all__ as _extra_layers_all
from .simple_layers import *  # noqa: F401,F403
from .simple_layers import __all__ as _simple_layers_all
from .layers_1d import *  # noqa: F401,F403
from .layers_1d import __all__ as _layers_1d_all
from .losses import *  # noqa: F401,F403
from .losses import __all__ as _losses_all
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _modules_all
from .symbolic import Input, KerasTensor  # noqa: F401
from .functional_model import *  # noqa: F401,F403
from .functional_model import __all__ as _functional_model_all
from .preprocessing import Normalization  # noqa: F401

__all__ = list(_functional_all) + list(_activations_all) + list(_normalization_all) \
    + list(_modules_all) + list(_layers_all) + list(_extra_layers_all) + list(_losses_all) \
    + list(_simple_layers_all) + list(_layers_1d_all) \
    + list(_functional_model_all) + ["init", "losses", "Input", "KerasTensor", "Normalization"]
