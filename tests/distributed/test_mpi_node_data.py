"""tapeflow-train's data under MPI: read once per node, the node's ranks share that copy."""
from __future__ import annotations

import numpy as np
import pytest

from tapeflow import data
from tapeflow.launch.node_data import load_on_node


@pytest.mark.mpi
def test_one_read_per_node_and_every_rank_sees_the_same_read_only_arrays(comm):
    from mpi4py import MPI

    calls = []

    def load():
        calls.append(1)
        rng = np.random.default_rng(5)
        return (rng.normal(size=(50, 7)).astype(np.float32), np.arange(50, dtype=np.int64),
                np.zeros((0, 3), np.uint8))

    x, y, empty = load_on_node(load, comm, count=3)
    expected = load()[:2]
    np.testing.assert_array_equal(x, expected[0])
    np.testing.assert_array_equal(y, expected[1])
    assert empty.shape == (0, 3) and not x.flags.writeable
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    reads_on_node = node.allreduce(len(calls) - 1)  # minus the reference load above
    assert reads_on_node == 1
    node.Free()


@pytest.mark.mpi
def test_a_loader_error_on_one_node_is_raised_on_every_rank(comm):
    def load():
        raise data.DatasetError("train-images-idx3-ubyte.gz: truncated")

    with pytest.raises(data.DatasetError, match="truncated"):
        load_on_node(load, comm, count=4)
