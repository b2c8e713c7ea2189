"""A pytest plugin that runs any test module with every new tensor on the strict device.

Not collected by itself. It sets the GPU to :mod:`tapeflow.strict_device` and wraps every test
in ``tp.device("/GPU:0")``, so tensors and variables the tests create live on a non-default
device that refuses implicit host conversion and mixing devices::

    PYTHONPATH=tests python -m pytest -p device_sweep tests/test_ops.py tests/test_nn.py -q

Expected failures are the documented device differences: ``Tensor.device`` is a GPU name,
out-of-range sparse labels give NaN rows instead of an error (TensorFlow's GPU behaviour), a
``Trainer`` without ``to_device`` feeds host batches to a device model (refused), and
``tp.function`` replays NumPy plans only.
"""
import pytest

from tapeflow import devices
from tapeflow import strict_device as sd


@pytest.fixture(autouse=True)
def _everything_on_the_strict_device():
    prev = devices.set_gpu_module(sd.xp)
    with devices.device("/GPU:0"):
        yield
    devices.set_gpu_module(prev)
