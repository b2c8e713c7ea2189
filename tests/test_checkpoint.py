"""Tests for tapeflow.checkpoint: exact round trips, atomic commits, retention, corruption."""
from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

import tapeflow as tp
from tapeflow import checkpoint as ckpt
from tapeflow.checkpoint import CheckpointError


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "i64": rng.integers(-2**62, 2**62, size=(2, 3), dtype=np.int64),
        "scalar": np.array(np.pi),
        "empty": np.zeros((0, 2), np.float32),
        "special": np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], np.float32),
    }


def _flip_byte(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- round trip
def test_round_trip_bitwise_and_metadata(tmp_path):
    t = _tensors()
    rng_state = np.random.default_rng(123).bit_generator.state
    extra = {"lr": 0.1, "tags": ["a", "b"], "nested": {"k": [1, 2]}, "np": np.int64(7)}
    p = ckpt.save(tmp_path, 1234, tensors=t, epoch=3, position=17, rng_state=rng_state,
                  extra=extra, optimizer_scalars={"iterations": 9})
    assert p == tmp_path / "ckpt-000001234"
    assert sorted(f.name for f in p.iterdir()) == ["manifest.json", "tensors.safetensors"]
    c = ckpt.load(p)
    assert (c.step, c.epoch, c.position) == (1234, 3, 17)
    assert c.rng_state == rng_state  # 128-bit ints survive JSON
    assert c.extra == {"lr": 0.1, "tags": ["a", "b"], "nested": {"k": [1, 2]}, "np": 7}
    assert c.optimizer_scalars == {"iterations": 9}
    assert set(c.tensors) == set(t)
    for k, a in t.items():
        b = c.tensors[k]
        assert b.dtype == a.dtype and b.shape == a.shape
        assert a.tobytes() == b.tobytes(), k  # bitwise, NaN and -0.0 included
    manifest = json.loads((p / "manifest.json").read_text())
    assert manifest["format_version"] == ckpt.FORMAT_VERSION
    assert manifest["tensors"]["f32"] == {"shape": [3, 4], "dtype": "float32"}
    assert len(manifest["sha256"]) == 64


def test_accepts_tensors_variables_and_noncontiguous(tmp_path):
    base = np.arange(12.0).reshape(3, 4)
    p = ckpt.save(tmp_path, 0, tensors={"t": tp.constant([1.0, 2.0]),
                                         "v": tp.Variable([[1, 2]], dtype="int64"),
                                         "nc": base.T})
    c = ckpt.load(p)
    np.testing.assert_array_equal(c.tensors["nc"], base.T)
    assert c.tensors["t"].dtype == np.float32 and c.tensors["v"].dtype == np.int64


def test_non_json_metadata_rejected_before_writing(tmp_path):
    with pytest.raises(TypeError, match="extra"):
        ckpt.save(tmp_path, 1, tensors={}, extra={"f": object()})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        ckpt.save(tmp_path, -1, tensors={})
    with pytest.raises(ValueError):
        ckpt.save(tmp_path, 1, tensors={}, keep=0)


def test_latest_and_empty_dir(tmp_path):
    assert ckpt.latest(tmp_path) is None
    assert ckpt.latest(tmp_path / "nope") is None
    assert ckpt.restore_latest(tmp_path) is None
    for s in (5, 100, 20):
        ckpt.save(tmp_path, s, tensors={"x": np.array([s])}, keep=None)
    assert ckpt.latest(tmp_path).name == "ckpt-000000100"  # by step, not by write order
    assert ckpt.restore_latest(tmp_path).step == 100


def test_resave_same_step_replaces(tmp_path):
    ckpt.save(tmp_path, 7, tensors={"x": np.array([1.0])})
    ckpt.save(tmp_path, 7, tensors={"x": np.array([2.0]), "y": np.array([3])})
    c = ckpt.load(ckpt.latest(tmp_path))
    assert c.tensors["x"].tolist() == [2.0] and "y" in c.tensors
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000007"]


# --------------------------------------------------------------------------- atomicity
def test_crash_at_commit_leaves_previous_latest(tmp_path, monkeypatch):
    good = ckpt.save(tmp_path, 1, tensors={"x": np.ones(3)})

    def boom(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(ckpt.os, "rename", boom)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save(tmp_path, 2, tensors={"x": np.zeros(3)})
    monkeypatch.undo()
    assert ckpt.latest(tmp_path) == good
    assert ckpt.restore_latest(tmp_path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000001"]  # temp dir removed


def test_crash_while_writing_tensors(tmp_path, monkeypatch):
    good = ckpt.save(tmp_path, 1, tensors={"x": np.ones(3)})

    def half_write(arrays, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)  # a partial file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.st, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tmp_path, 2, tensors={"x": np.zeros(3)})
    monkeypatch.undo()
    assert ckpt.latest(tmp_path) == good
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000001"]


def test_crash_when_replacing_same_step_restores_old(tmp_path, monkeypatch):
    ckpt.save(tmp_path, 3, tensors={"x": np.array([1.0])})
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".tmp-ckpt-"):
            raise OSError("simulated crash at commit")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(OSError):
        ckpt.save(tmp_path, 3, tensors={"x": np.array([2.0])})
    monkeypatch.undo()
    assert ckpt.load(ckpt.latest(tmp_path)).tensors["x"].tolist() == [1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000003"]


def test_leftover_temp_dirs_are_ignored(tmp_path):
    good = ckpt.save(tmp_path, 1, tensors={"x": np.ones(1)})
    junk = tmp_path / ".tmp-ckpt-dead"  # what a SIGKILLed writer leaves behind
    junk.mkdir()
    (junk / "tensors.safetensors").write_bytes(b"partial")
    (tmp_path / "ckpt-000000009").mkdir()  # a directory without manifest is not committed
    assert ckpt.latest(tmp_path) == good
    old = junk.stat().st_mtime - 2 * 3600
    os.utime(junk, (old, old))
    ckpt.save(tmp_path, 2, tensors={"x": np.ones(1)})
    assert not junk.exists()  # stale temp dirs are cleaned by the next save


# --------------------------------------------------------------------------- retention
@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_retains_newest_k(tmp_path, keep):
    for s in range(6):
        ckpt.save(tmp_path, s * 10, tensors={"x": np.array([s])}, keep=keep)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == [f"ckpt-{s * 10:09d}" for s in range(6 - keep, 6)]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_keep_none_keeps_all(tmp_path):
    for s in range(5):
        ckpt.save(tmp_path, s, tensors={}, keep=None)
    assert len(ckpt.list_checkpoints(tmp_path)) == 5


# --------------------------------------------------------------------------- corruption
def test_flipped_byte_checksum_error(tmp_path):
    p = ckpt.save(tmp_path, 1, tensors=_tensors())
    _flip_byte(p / "tensors.safetensors")
    with pytest.raises(CheckpointError, match="checksum") as e:
        ckpt.load(p)
    assert "tensors.safetensors" in str(e.value)


def test_truncated_file(tmp_path):
    p = ckpt.save(tmp_path, 1, tensors=_tensors())
    f = p / "tensors.safetensors"
    f.write_bytes(f.read_bytes()[:-17])
    with pytest.raises(CheckpointError, match="truncated") as e:
        ckpt.load(p)
    assert str(f) in str(e.value)
    assert ckpt.latest(tmp_path) is None  # a wrong size is not a committed checkpoint


def test_missing_or_invalid_manifest(tmp_path):
    p = ckpt.save(tmp_path, 1, tensors={"x": np.ones(2)})
    m = p / "manifest.json"
    m.write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json.*not valid JSON"):
        ckpt.load(p)
    m.write_text(json.dumps({"format_version": 99, "step": 1}))
    with pytest.raises(CheckpointError, match="format_version"):
        ckpt.load(p)
    m.unlink()
    with pytest.raises(CheckpointError, match="manifest.json.*missing"):
        ckpt.load(p)
    with pytest.raises(CheckpointError, match="no such"):
        ckpt.load(tmp_path / "ckpt-000000404")


def test_missing_tensor_file(tmp_path):
    p = ckpt.save(tmp_path, 1, tensors={"x": np.ones(2)})
    (p / "tensors.safetensors").unlink()
    with pytest.raises(CheckpointError, match="tensors.safetensors.*missing"):
        ckpt.load(p)


def _rewrite_manifest(p: Path, edit, reseal: bool = True) -> None:
    """Edit a manifest; ``reseal`` recomputes its own checksum (a consistent but wrong
    manifest, to reach the checks behind the checksum)."""
    m = p / "manifest.json"
    manifest = json.loads(m.read_text())
    edit(manifest)
    if reseal:
        manifest["manifest_sha256"] = ckpt._manifest_digest(manifest)
    m.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit", [
    lambda m: m.update(position=10**9),            # would silently skip an epoch
    lambda m: m.update(step=m["step"] + 1),
    lambda m: m.update(epoch=7),
    lambda m: m["extra"].update(batch_size=64),
    lambda m: m.update(manifest_sha256="0" * 64),
    lambda m: m.pop("manifest_sha256"),
], ids=["position", "step", "epoch", "extra", "checksum", "no-checksum"])
def test_a_damaged_manifest_is_refused_by_its_own_checksum(tmp_path, edit):
    p = ckpt.save(tmp_path, 3, tensors={"w": np.ones(2, np.float32)}, position=4,
                  extra={"batch_size": 32})
    _rewrite_manifest(p, edit, reseal=False)
    with pytest.raises(CheckpointError, match="manifest checksum mismatch"):
        ckpt.load(p)
    with pytest.raises(CheckpointError, match="manifest checksum mismatch"):
        ckpt.read_manifest(p)
    assert ckpt.latest(tmp_path) is None
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint"):
        assert ckpt.restore_latest(tmp_path) is None


def test_remove_leftovers_clears_temp_dirs_of_killed_saves_at_once(tmp_path):
    good = ckpt.save(tmp_path, 1, tensors={"w": np.ones(2, np.float32)})
    fresh = tmp_path / ".tmp-ckpt-killed"  # seconds old: the age rule alone would keep it
    fresh.mkdir()
    (fresh / "tensors.safetensors").write_bytes(b"x" * 1000)
    # a replacing save killed between its two renames: the old copy is moved back
    aside = tmp_path / ".old-ckpt-abc"
    aside.mkdir()
    (tmp_path / "ckpt-000000002").mkdir()
    ckpt.save(tmp_path, 2, tensors={"w": np.zeros(2, np.float32)}, keep=None)
    os.rename(tmp_path / "ckpt-000000002", aside / "ckpt-000000002")
    removed = ckpt.remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == [".old-ckpt-abc", ".tmp-ckpt-killed"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == \
        ["ckpt-000000001", "ckpt-000000002"]
    assert ckpt.load(good).step == 1 and ckpt.load(tmp_path / "ckpt-000000002").step == 2


def test_directory_lock_refuses_a_second_run_and_names_the_holder(tmp_path):
    with ckpt.DirectoryLock(tmp_path):
        with pytest.raises(CheckpointError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            ckpt.DirectoryLock(tmp_path).acquire()
    with ckpt.DirectoryLock(tmp_path):  # released: free again
        pass


def test_manifest_shape_or_names_disagree_with_file(tmp_path):
    p = ckpt.save(tmp_path, 1, tensors={"w": np.ones((2, 3), np.float32)})
    _rewrite_manifest(p, lambda m: m["tensors"]["w"].update(shape=[3, 2]))
    with pytest.raises(CheckpointError, match=r"'w'.*\[2, 3\].*\[3, 2\]"):
        ckpt.load(p)
    _rewrite_manifest(p, lambda m: m["tensors"]["w"].update(shape=[2, 3], dtype="float64"))
    with pytest.raises(CheckpointError, match="'w'"):
        ckpt.load(p)
    _rewrite_manifest(p, lambda m: m["tensors"].update(
        w={"shape": [2, 3], "dtype": "float32"}, extra_one={"shape": [1], "dtype": "int64"}))
    with pytest.raises(CheckpointError, match="extra_one"):
        ckpt.load(p)


def _forge(p: Path, payload: bytes) -> None:
    """Replace the tensor file and make the manifest's checksum agree with it."""
    import hashlib

    (p / "tensors.safetensors").write_bytes(payload)
    _rewrite_manifest(p, lambda m: m.update(sha256=hashlib.sha256(payload).hexdigest(),
                                            size=len(payload)))


@pytest.mark.parametrize("payload", [
    # a pickle stream that would call os.system if anything unpickled it
    b"cos\nsystem\n(S'echo pwned > /tmp/tapeflow_pwned'\ntR.",
    # a header length far beyond the file
    struct.pack("<Q", 1 << 40) + b"{}",
    # a well-framed header that is not what safetensors expects
    struct.pack("<Q", 30) + b'{"x": {"dtype": "PICKLE"}}    ',
    # offsets pointing outside the data
    struct.pack("<Q", 64) + b'{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,9999]}}      ',
])
def test_malicious_tensor_file_is_an_error_not_code(tmp_path, payload):
    p = ckpt.save(tmp_path, 1, tensors={"x": np.ones(4, np.float32)})
    _forge(p, payload)  # checksum passes: the parser itself must refuse it
    with pytest.raises(CheckpointError, match="tensors.safetensors"):
        ckpt.load(p)
    assert not Path("/tmp/tapeflow_pwned").exists()


def test_restore_latest_falls_back_with_warning(tmp_path):
    ckpt.save(tmp_path, 1, tensors={"x": np.array([1.0])})
    ckpt.save(tmp_path, 2, tensors={"x": np.array([2.0])})
    bad = ckpt.save(tmp_path, 3, tensors={"x": np.array([3.0])})
    _flip_byte(bad / "tensors.safetensors")
    with pytest.warns(UserWarning, match=r"ckpt-000000003.*checksum"):
        c = ckpt.restore_latest(tmp_path)
    assert c.step == 2 and c.tensors["x"].tolist() == [2.0]
    # two bad in a row, one with no manifest at all
    (tmp_path / "ckpt-000000002" / "manifest.json").unlink()
    with pytest.warns(UserWarning) as record:
        c = ckpt.restore_latest(tmp_path)
    assert c.step == 1
    msgs = [str(w.message) for w in record]
    assert any("ckpt-000000003" in m for m in msgs)
    assert any("ckpt-000000002" in m and "manifest" in m for m in msgs)


def test_restore_latest_all_bad_returns_none(tmp_path):
    p = ckpt.save(tmp_path, 1, tensors={"x": np.array([1.0])})
    _flip_byte(p / "tensors.safetensors")
    with pytest.warns(UserWarning, match="ckpt-000000001"):
        assert ckpt.restore_latest(tmp_path) is None


def test_keep_counts_only_good_checkpoints(tmp_path):
    ckpt.save(tmp_path, 1, tensors={}, keep=None)
    ckpt.save(tmp_path, 2, tensors={}, keep=None)
    (tmp_path / "ckpt-000000003").mkdir()  # never committed (no manifest)
    ckpt.save(tmp_path, 4, tensors={}, keep=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt-000000002", "ckpt-000000003", "ckpt-000000004"]


# --------------------------------------------------------------------------- training state
class TinyModel:
    def __init__(self, seed: int = 0, shape=(3, 2)):
        rng = np.random.default_rng(seed)
        self.w = tp.Variable(rng.standard_normal(shape).astype(np.float32), name="w")
        self.b = tp.Variable(np.zeros(shape[-1], np.float32), name="b")
        self.count = tp.Variable(np.array(seed, np.int64), trainable=False, name="count")

    def named_variables(self):
        return [("dense/w", self.w), ("dense/b", self.b), ("count", self.count)]


class TinyOptimizer:
    def __init__(self, seed: int = 0):
        self.iterations = seed
        self.m = np.full((3, 2), float(seed), np.float32)
        self.received: dict | None = None

    def get_state(self):
        return {"optimizer": "Tiny", "iterations": self.iterations, "lr": 0.5,
                "schedule": {"kind": "cosine", "steps": 100}, "0/m": self.m}

    def set_state(self, state):
        if state.get("optimizer") != "Tiny":
            raise ValueError("wrong optimizer")
        self.received = state
        self.iterations = state["iterations"]
        self.m = state["0/m"]


def test_training_state_round_trip(tmp_path):
    tp.random.set_seed(42)
    model, opt = TinyModel(1), TinyOptimizer(5)
    tp.random.uniform((3,))  # advance the generator
    ckpt.save_training_state(tmp_path, 100, model=model, optimizer=opt, epoch=2, position=7,
                             extra={"loss": 0.25})
    expected_draw = tp.random.uniform((4,)).numpy()
    tp.random.set_seed(0)

    c = ckpt.restore_latest(tmp_path)
    assert sorted(c.tensors) == ["model/count", "model/dense/b", "model/dense/w",
                                 "optimizer/0/m"]
    model2, opt2 = TinyModel(2), TinyOptimizer(0)
    ckpt.restore_training_state(c, model=model2, optimizer=opt2)
    for a, b in [(model.w, model2.w), (model.b, model2.b), (model.count, model2.count)]:
        assert a.numpy().tobytes() == b.numpy().tobytes() and a.dtype == b.dtype
    assert opt2.iterations == 5 and opt2.received["lr"] == 0.5
    assert opt2.received["schedule"] == {"kind": "cosine", "steps": 100}
    np.testing.assert_array_equal(opt2.m, np.full((3, 2), 5.0, np.float32))
    assert (c.step, c.epoch, c.position, c.extra) == (100, 2, 7, {"loss": 0.25})
    np.testing.assert_array_equal(tp.random.uniform((4,)).numpy(), expected_draw)


def test_training_state_with_dict_and_list_models(tmp_path):
    vs = [tp.Variable([1.0, 2.0]), tp.Variable([[3.0]])]
    p = ckpt.save_training_state(tmp_path, 1, model=vs)
    assert sorted(ckpt.load(p).tensors) == ["model/var_0", "model/var_1"]
    fresh = [tp.Variable([0.0, 0.0]), tp.Variable([[0.0]])]
    ckpt.restore_training_state(p, model=fresh, restore_rng=False)
    assert fresh[0].numpy().tolist() == [1.0, 2.0] and fresh[1].numpy().tolist() == [[3.0]]
    p = ckpt.save_training_state(tmp_path, 2, model={"a": vs[0]})
    d = {"a": tp.Variable([9.0, 9.0])}
    ckpt.restore_training_state(p, model=d)
    assert d["a"].numpy().tolist() == [1.0, 2.0]


def test_restore_shape_mismatch_names_variable_and_changes_nothing(tmp_path):
    p = ckpt.save_training_state(tmp_path, 1, model=TinyModel(0, shape=(3, 2)))
    other = TinyModel(9, shape=(4, 2))
    before = other.b.numpy().copy()
    with pytest.raises(CheckpointError, match=r"'dense/w'.*\(4, 2\).*\(3, 2\)"):
        ckpt.restore_training_state(p, model=other)
    np.testing.assert_array_equal(other.b.numpy(), before)  # all-or-nothing


def test_restore_dtype_mismatch(tmp_path):
    p = ckpt.save_training_state(tmp_path, 1, model={"v": tp.Variable([1.0], dtype="float64")})
    with pytest.raises(CheckpointError, match="'v'.*float32.*float64"):
        ckpt.restore_training_state(p, model={"v": tp.Variable([1.0], dtype="float32")})


def test_restore_missing_and_unexpected_variables(tmp_path):
    p = ckpt.save_training_state(tmp_path, 1, model={"a": tp.Variable([1.0])})
    with pytest.raises(CheckpointError, match=r"missing.*\['b', 'c'\]"):
        ckpt.restore_training_state(p, model={"a": tp.Variable([0.0]), "b": tp.Variable([0.0]),
                                              "c": tp.Variable([0.0])})
    p = ckpt.save_training_state(tmp_path, 2, model={"a": tp.Variable([1.0]),
                                                     "z": tp.Variable([1.0])})
    with pytest.raises(CheckpointError, match="not in the model.*'z'"):
        ckpt.restore_training_state(p, model={"a": tp.Variable([0.0])})
    m = {"a": tp.Variable([0.0])}
    ckpt.restore_training_state(p, model=m, strict=False)
    assert m["a"].numpy().tolist() == [1.0]


def test_restore_optimizer_errors(tmp_path):
    p = ckpt.save_training_state(tmp_path, 1, model=TinyModel())
    with pytest.raises(CheckpointError, match="no optimizer state"):
        ckpt.restore_training_state(p, model=TinyModel(), optimizer=TinyOptimizer())

    class Other(TinyOptimizer):
        def get_state(self):
            return {**super().get_state(), "optimizer": "Other"}

    p = ckpt.save_training_state(tmp_path, 2, model=TinyModel(), optimizer=Other())
    with pytest.raises(CheckpointError, match="wrong optimizer"):
        ckpt.restore_training_state(p, model=TinyModel(), optimizer=TinyOptimizer())


def test_real_optimizer_state_round_trip(tmp_path):
    opts = pytest.importorskip("tapeflow.optimizers")
    if not hasattr(opts, "Adam"):
        pytest.skip("tapeflow.optimizers.Adam not available")
    w = tp.Variable(np.arange(6.0, dtype=np.float32).reshape(2, 3), name="w")
    opt = opts.Adam(learning_rate=0.1)
    for _ in range(3):
        with tp.GradientTape() as tape:
            loss = tp.reduce_sum(w * w)
        opt.apply_gradients(zip([tape.gradient(loss, w)], [w]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no surprises on the happy path
        p = ckpt.save_training_state(tmp_path, 3, model={"w": w}, optimizer=opt)
        w2 = tp.Variable(np.zeros((2, 3), np.float32), name="w")
        opt2 = opts.Adam(learning_rate=0.1)
        ckpt.restore_training_state(p, model={"w": w2}, optimizer=opt2)
    assert int(opt2.iterations) == 3
    for v, o in [(w, opt), (w2, opt2)]:
        with tp.GradientTape() as tape:
            loss = tp.reduce_sum(v * v)
        o.apply_gradients(zip([tape.gradient(loss, v)], [v]))
    assert w.numpy().tobytes() == w2.numpy().tobytes()
