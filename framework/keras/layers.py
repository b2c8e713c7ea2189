"""``tp.keras.layers``: tapeflow's layers under their Keras names (the same classes as
``tp.nn``)."""
from ..nn import (Activation, AveragePooling2D, AvgPool2D, BatchNormalization, Conv2D, Dense,
                  Dropout, Embedding, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, Input,
                  InputLayer, LayerNormalization, MaxPool2D, MaxPooling2D, Module, Reshape)

Layer = Module

__all__ = ["Layer", "Dense", "Conv2D", "MaxPool2D", "MaxPooling2D", "AveragePooling2D",
           "AvgPool2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape",
           "Dropout", "Activation", "Embedding", "BatchNormalization", "LayerNormalization",
           "InputLayer", "Input"]
