"""``tp.keras.layers``: tapeflow's layers under their Keras names (the same classes as
``tp.nn``)."""
from ..nn import (Activation, Add, Average, AveragePooling2D, AvgPool2D, BatchNormalization,
                  Concatenate, Conv2D, Conv2DTranspose, Dense, Dropout, Embedding, Flatten,
                  GlobalAveragePooling2D, GlobalMaxPooling2D, Input, InputLayer, Lambda,
                  LayerNormalization, Maximum, MaxPool2D, MaxPooling2D, Minimum, Module,
                  Multiply, Normalization, Reshape, Subtract)
from ..nn.layers_1d import (AveragePooling1D, AvgPool1D, Conv1D, GlobalAveragePooling1D,
                            GlobalMaxPooling1D, MaxPool1D, MaxPooling1D)
from ..nn.simple_layers import (ELU, Cropping2D, GaussianNoise, Identity, LeakyReLU, Permute,
                                ReLU, RepeatVector, Rescaling, Softmax, UpSampling2D,
                                ZeroPadding2D)

Layer = Module

__all__ = ["Layer", "Dense", "Conv2D", "Conv2DTranspose", "MaxPool2D", "MaxPooling2D", "AveragePooling2D",
           "AvgPool2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape",
           "Dropout", "Activation", "Embedding", "BatchNormalization", "LayerNormalization",
           "InputLayer", "Input", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
           "Concatenate", "Lambda", "Normalization", "Softmax", "ReLU", "LeakyReLU", "ELU",
           "Rescaling", "Identity", "Permute", "RepeatVector", "ZeroPadding2D", "Cropping2D",
           "UpSampling2D", "GaussianNoise", "Conv1D", "MaxPooling1D", "MaxPool1D",
           "AveragePooling1D", "AvgPool1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D"]
