"""``tp.keras.activations``: the activation functions layers accept by name."""
from ..nn.layers import get_activation as get
from ..nn import (elu, gelu, leaky_relu, log_softmax, relu, relu6, selu, sigmoid, silu,
                  softmax, softplus, softsign, swish, tanh)

__all__ = ["relu", "sigmoid", "tanh", "softmax", "log_softmax", "gelu", "elu", "selu", "silu",
           "swish", "leaky_relu", "relu6", "softplus", "softsign", "get"]
