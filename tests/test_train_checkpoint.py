"""tp.train.Checkpoint / CheckpointManager / latest_checkpoint, as TensorFlow's "Training
checkpoints" guide uses them: save numbered checkpoints of a model, an optimizer and a step
Variable, restore into fresh objects exactly, keep the newest max_to_keep."""
from __future__ import annotations

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import keras


class Net(tp.nn.Module):  # the guide's toy model
    def __init__(self):
        super().__init__()
        self.l1 = keras.layers.Dense(5, input_dim=1, seed=0)

    def call(self, x):
        return self.l1(x)


def _train_step(net, opt, x, y):
    with tp.GradientTape() as tape:
        loss = tp.reduce_mean(tp.abs(net(x) - y))
    variables = net.trainable_variables
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss


def test_save_restore_continues_exactly_and_manager_keeps_the_newest(tmp_path):
    x, y = tp.constant(np.arange(1, 6, dtype="f4").reshape(5, 1)), tp.constant(np.ones((5, 5),
                                                                               "f4"))
    net, opt = Net(), tp.optimizers.Adam(0.1)
    ckpt = tp.train.Checkpoint(step=tp.Variable(1), optimizer=opt, net=net)
    manager = tp.train.CheckpointManager(ckpt, tmp_path / "tf_ckpts", max_to_keep=3)
    assert ckpt.restore(manager.latest_checkpoint) is not None  # nothing yet: initialize
    paths = []
    for _ in range(5):
        _train_step(net, opt, x, y)
        ckpt.step.assign_add(1)
        paths.append(manager.save())
    assert manager.checkpoints == paths[-3:] and tp.train.latest_checkpoint(
        tmp_path / "tf_ckpts") == paths[-1]
    after = [_train_step(net, opt, x, y).numpy() for _ in range(3)]

    net2, opt2 = Net(), tp.optimizers.Adam(0.1)
    ckpt2 = tp.train.Checkpoint(step=tp.Variable(1), optimizer=opt2, net=net2)
    ckpt2.restore(paths[-1]).assert_consumed()
    assert int(ckpt2.step.numpy()) == 6 and int(ckpt2.save_counter.numpy()) == 5
    again = [_train_step(net2, opt2, x, y).numpy() for _ in range(3)]
    np.testing.assert_array_equal(again, after)  # optimizer slots and step count came back


def test_save_numbers_from_the_prefix_and_a_mismatch_changes_nothing(tmp_path):
    v, w = tp.Variable([1.0, 2.0]), tp.Variable(3.0)
    ckpt = tp.train.Checkpoint(v=v, w=w)
    first = ckpt.save(str(tmp_path / "ckpt"))
    second = ckpt.save(str(tmp_path / "ckpt"))
    assert first.endswith("ckpt-000000001") and second.endswith("ckpt-000000002")
    wrong = tp.train.Checkpoint(v=tp.Variable([0.0, 0.0, 0.0]), w=tp.Variable(9.0))
    with pytest.raises(tp.checkpoint.CheckpointError, match="'v'.*shape \\(2,\\)"):
        wrong.restore(first)
    assert float(wrong.w.numpy()) == 9.0  # checked before anything changed
    partial = tp.train.Checkpoint(v=tp.Variable([0.0, 0.0]))
    status = partial.restore(first)
    np.testing.assert_array_equal(partial.v.numpy(), [1.0, 2.0])
    with pytest.raises(AssertionError, match="not restored.*'w'"):
        status.assert_consumed()
    status.expect_partial()
    with pytest.raises(TypeError, match="not a Variable, a module or an optimizer"):
        tp.train.Checkpoint(data=[1, 2])
