"""``tp.keras.initializers``: tapeflow's initializer classes (``tp.nn.init``) by Keras name."""
from ..nn.init import (Constant, GlorotNormal, GlorotUniform, HeNormal, HeUniform, Initializer,
                       LecunNormal, LecunUniform, Ones, RandomNormal, RandomUniform,
                       TruncatedNormal, Zeros, get)

__all__ = ["Initializer", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal",
           "LecunNormal", "LecunUniform", "Zeros", "Ones", "Constant", "RandomUniform",
           "RandomNormal", "TruncatedNormal", "get"]
