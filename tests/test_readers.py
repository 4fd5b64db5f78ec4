"""Tests for the torch-free checkpoint readers and writers (torch is used only to create files)."""

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from converters.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafePickleError,
)
from converters.readers import DIRECTORY_CANDIDATES, open_checkpoint
from converters.torch_pickle import ALLOWED_GLOBALS
from converters.writers import atomic_directory, save_safetensors, save_safetensors_sharded

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers


def _torch_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _assert_same(arr: np.ndarray, t: torch.Tensor) -> None:
    """Bit-exact comparison of a reader result with the torch tensor it came from."""
    assert arr.dtype.name == str(t.dtype).removeprefix("torch.")
    assert arr.shape == tuple(t.shape)
    assert arr.flags.c_contiguous and arr.flags.owndata
    assert arr.tobytes() == _torch_bytes(t)


def _all_dtypes() -> dict[str, torch.Tensor]:
    base = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    ints = torch.arange(-7, 8).reshape(3, 5)
    return {
        "f64": base.double(),
        "f32": base,
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i64": ints * 10**12,
        "i32": (ints * 10**8).int(),
        "i16": (ints * 1000).short(),
        "i8": ints.to(torch.int8),
        "u8": (ints + 240).to(torch.uint8),
        "bool": base > 0,
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def _numpy_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for name, t in tensors.items():
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            out[name] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[name] = t.numpy()
    return out


def _torch_like_zip(path: Path, pickle_bytes: bytes, storages: dict[str, bytes] | None = None) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)


def _rewrite_zip(src: Path, dst: Path, compression=zipfile.ZIP_STORED, swap_itemsize=0, drop=()) -> None:
    """Copy a torch zip, optionally compressing, converting storages to big-endian, or dropping entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            if any(info.filename.endswith(d) for d in drop):
                continue
            data = zin.read(info)
            if swap_itemsize and "/data/" in info.filename:
                data = np.frombuffer(data, f"u{swap_itemsize}").byteswap().tobytes()
            if swap_itemsize and info.filename.endswith("/byteorder"):
                data = b"big"
            zout.writestr(info.filename, data)


def _raw_safetensors(path: Path, header, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import Data2VecTextConfig, Data2VecTextForMaskedLM

    torch.manual_seed(0)
    config = Data2VecTextConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    return Data2VecTextForMaskedLM(config).eval()


# ---------------------------------------------------------------- reading


def test_safetensors_file_matches_torch(tmp_path):
    tensors = _all_dtypes()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "safetensors"
        assert ckpt.keys() == sorted(tensors) and len(ckpt) == len(tensors) and "f32" in ckpt
        assert ckpt.metadata == {"format": "pt"}
        assert ckpt.nbytes == sum(t.nbytes for t in tensors.values())
        for name, t in tensors.items():
            assert ckpt.shape(name) == tuple(t.shape)
            assert ckpt.dtype(name).name == str(t.dtype).removeprefix("torch.")
            _assert_same(ckpt.get(name), t)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth"])
def test_bin_file_matches_torch(tmp_path, suffix):
    tensors = _all_dtypes()
    path = tmp_path / f"weights{suffix}"
    torch.save(tensors, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "pytorch" and ckpt.metadata == {}
        assert ckpt.keys() == sorted(tensors)
        assert ckpt.nbytes == sum(t.nbytes for t in tensors.values())
        for name, t in tensors.items():
            assert ckpt.shape(name) == tuple(t.shape)
            _assert_same(ckpt.get(name), t)


def test_bin_views_with_offset_and_stride(tmp_path):
    t = torch.arange(60.0).reshape(6, 10)
    views = {"a": t[2:, 3:7], "b": t.t(), "c": t, "d": t[1, ::3], "e": t[2, 3], "f": t[:, 9:]}
    path = tmp_path / "views.bin"
    torch.save(views, path)
    with zipfile.ZipFile(path) as z:  # all views share one storage
        assert len([n for n in z.namelist() if "/data/" in n]) == 1
    with open_checkpoint(path) as ckpt:
        for name, view in views.items():
            _assert_same(ckpt.get(name), view)


@pytest.mark.parametrize("compression, swap", [(zipfile.ZIP_DEFLATED, 0), (zipfile.ZIP_STORED, 4)])
def test_bin_compressed_or_big_endian(tmp_path, compression, swap):
    t = torch.arange(60.0).reshape(6, 10)
    views = {"a": t[2:, 3:7], "b": t.t(), "c": t}
    torch.save(views, tmp_path / "src.bin")
    _rewrite_zip(tmp_path / "src.bin", tmp_path / "dst.bin", compression, swap)
    with open_checkpoint(tmp_path / "dst.bin") as ckpt:
        for name, view in views.items():
            _assert_same(ckpt.get(name), view)


def test_bin_state_dict_with_tied_weights(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    tied = ("lm_head.decoder.weight", "data2vec_text.embeddings.word_embeddings.weight")
    assert state[tied[0]].data_ptr() == state[tied[1]].data_ptr()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.format == "pytorch"
        assert ckpt.keys() == sorted(state)
        a, b = ckpt.get(tied[0]), ckpt.get(tied[1])
        assert a is not b and np.shares_memory(a, b) is False
        for name, t in state.items():
            _assert_same(ckpt.get(name), t)


def test_save_pretrained_sharded_safetensors(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    state = tiny_model.state_dict()
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.format == "safetensors-sharded"
        assert "total_size" in ckpt.metadata
        assert set(state) - set(ckpt.keys()) == {"lm_head.decoder.weight", "lm_head.decoder.bias"}  # tied, dropped
        for name in ckpt.keys():
            _assert_same(ckpt.get(name), state[name])


def test_sharded_bin_index_built_by_hand(tmp_path):
    tensors = _all_dtypes()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[:5], names[5:]), 1):
        shard = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({n: tensors[n] for n in part}, tmp_path / shard)
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.format == "pytorch-sharded"
        assert ckpt.metadata == {"total_size": total}
        assert ckpt.keys() == names
        for name, arr in ckpt.items():
            _assert_same(arr, tensors[name])


def test_items_yields_every_key_once_grouped_by_shard(tmp_path):
    tensors = _numpy_tensors(_all_dtypes())
    save_safetensors_sharded(tensors, tmp_path, max_shard_bytes=64)
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    with open_checkpoint(tmp_path) as ckpt:
        names = [name for name, _ in ckpt.items()]
    assert sorted(names) == sorted(tensors) and len(names) == len(set(names))
    shard_sequence = [weight_map[n] for n in names]
    assert shard_sequence == sorted(shard_sequence)  # each shard visited in one run


def test_reads_bin_and_safetensors_with_torch_unimportable(tmp_path):
    tensors = _all_dtypes()
    torch.save(tensors, tmp_path / "w.bin")
    safetensors.torch.save_file(tensors, tmp_path / "w.safetensors")
    script = textwrap.dedent(
        """
        import hashlib, importlib.abc, json, sys

        BLOCKED = {"torch", "jax", "flax", "zoo"}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, Blocker())
        from converters.readers import open_checkpoint

        out = {}
        for path in sys.argv[1:]:
            with open_checkpoint(path) as ckpt:
                out[path] = {k: [v.dtype.name, hashlib.sha256(v.tobytes()).hexdigest()] for k, v in ckpt.items()}
        assert not BLOCKED & {m.split(".")[0] for m in sys.modules}
        print(json.dumps(out))
        """
    )
    paths = [str(tmp_path / "w.bin"), str(tmp_path / "w.safetensors")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script, *paths], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    expected = {
        k: [str(t.dtype).removeprefix("torch."), hashlib.sha256(_torch_bytes(t)).hexdigest()]
        for k, t in tensors.items()
    }
    assert result == {p: expected for p in paths}


# ---------------------------------------------------------------- unsafe pickles


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_reduce_in_torch_save_is_refused(tmp_path):
    marker = tmp_path / "pwned_reduce"
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(2), "evil": _Evil(marker)}, path)
    with pytest.raises(UnsafePickleError, match=r"'(posix|os)\.system'") as info:
        open_checkpoint(path)
    assert "evil.bin" in str(info.value)
    assert not marker.exists()


def _payload(global_name: str, marker: Path) -> bytes:
    """Protocol-0 pickle that calls `global_name` to create `marker`."""
    return {
        "builtins.eval": f"cbuiltins\neval\n(Vopen({str(marker)!r}, 'w').close()\ntR.",
        "subprocess.Popen": f"csubprocess\nPopen\n((Vtouch\nV{marker}\nltR.",
        "posix.system": f"cposix\nsystem\n(Vtouch {marker}\ntR.",
    }[global_name].encode()


@pytest.mark.parametrize("global_name", ["builtins.eval", "subprocess.Popen", "posix.system"])
def test_hostile_raw_pickle_is_refused(tmp_path, global_name):
    control = tmp_path / "control"
    result = pickle.loads(_payload(global_name, control))  # the payload really is hostile
    if hasattr(result, "wait"):
        result.wait()
    assert control.exists()

    marker = tmp_path / "pwned_raw"
    path = tmp_path / "evil.pt"
    _torch_like_zip(path, _payload(global_name, marker))
    with pytest.raises(UnsafePickleError, match=f"'{global_name}'.*evil.pt"):
        open_checkpoint(path)
    assert not marker.exists()
    assert global_name not in ALLOWED_GLOBALS


def test_persistent_id_must_be_a_storage_record(tmp_path):
    path = tmp_path / "pid.bin"
    _torch_like_zip(path, b"\x80\x02}X\x01\x00\x00\x00wX\x03\x00\x00\x00abcQs.")  # {"w": persistent_load("abc")}
    with pytest.raises(CorruptCheckpointError, match="pid.bin.*persistent id"):
        open_checkpoint(path)


# ---------------------------------------------------------------- broken files


@pytest.mark.parametrize("cut", [0, 4, 13, -1])
def test_truncated_safetensors(tmp_path, cut):
    path = tmp_path / "cut.safetensors"
    safetensors.torch.save_file(_all_dtypes(), path)
    data = path.read_bytes()
    path.write_bytes(data[: cut if cut >= 0 else len(data) + cut])
    with pytest.raises(CorruptCheckpointError, match="cut.safetensors"):
        open_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_bin(tmp_path, fraction):
    path = tmp_path / "cut.bin"
    torch.save(_all_dtypes(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CorruptCheckpointError, match="cut.bin.*truncated or corrupt zip"):
        open_checkpoint(path)


@pytest.mark.parametrize("name", ["garbage.safetensors", "garbage.bin"])
def test_garbage_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptCheckpointError, match=name):
        open_checkpoint(path)


def test_legacy_bin_is_refused_with_advice(tmp_path):
    path = tmp_path / "old.bin"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CorruptCheckpointError, match=r"old.bin.*legacy.*torch >= 1.6"):
        open_checkpoint(path)


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 8]}}, b"\0" * 8, "'w'.*needs 400 bytes"),
        ({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}, b"\0" * 8, "truncated.*'w'"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "'w'.*negative"),
        ({"w": {"dtype": "F32"}}, b"", "malformed.*'w'"),
        ({"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "unsupported dtype 'X9'"),
        ([1, 2], b"", "not a JSON object"),
    ],
)
def test_safetensors_header_lies(tmp_path, header, data, message):
    path = tmp_path / "lies.safetensors"
    _raw_safetensors(path, header, data)
    with pytest.raises(CheckpointError, match=f"lies.safetensors.*{message}"):
        open_checkpoint(path)


def test_safetensors_header_length_and_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CorruptCheckpointError, match="bad.safetensors.*header length"):
        open_checkpoint(path)
    path.write_bytes(struct.pack("<Q", 4) + b"{no}")
    with pytest.raises(CorruptCheckpointError, match="bad.safetensors.*not valid JSON"):
        open_checkpoint(path)


def test_missing_shard(tmp_path):
    save_safetensors_sharded(_numpy_tensors(_all_dtypes()), tmp_path, max_shard_bytes=100)
    (tmp_path / "model-00002-of-00006.safetensors").unlink()
    with pytest.raises(CorruptCheckpointError, match="model-00002-of-00006.safetensors.*missing"):
        open_checkpoint(tmp_path)


def test_shard_lacking_a_promised_key(tmp_path):
    save_safetensors_sharded(_numpy_tensors(_all_dtypes()), tmp_path, max_shard_bytes=100)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00006.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="model-00001-of-00006.safetensors.*'ghost'"):
        open_checkpoint(index_path)


def test_bin_missing_storage_entry(tmp_path):
    torch.save({"w": torch.ones(3), "v": torch.zeros(2)}, tmp_path / "src.bin")
    _rewrite_zip(tmp_path / "src.bin", tmp_path / "holes.bin", drop=("/data/1",))
    with pytest.raises(CorruptCheckpointError, match="holes.bin.*data/1 is missing"):
        open_checkpoint(tmp_path / "holes.bin")


def test_bin_storage_size_mismatch(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "src.bin")
    with zipfile.ZipFile(tmp_path / "src.bin") as zin, zipfile.ZipFile(tmp_path / "short.bin", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, data[:8] if "/data/" in info.filename else data)
    with pytest.raises(CorruptCheckpointError, match="short.bin.*data/0 has 8 bytes, expected 12"):
        open_checkpoint(tmp_path / "short.bin")


def test_bin_top_level_objects(tmp_path):
    torch.save({"w": torch.ones(3), "epoch": 3, "name": "x"}, tmp_path / "mixed.bin")
    with open_checkpoint(tmp_path / "mixed.bin") as ckpt:
        assert ckpt.keys() == ["w"]
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 3}, tmp_path / "nested.bin")
    with pytest.raises(CorruptCheckpointError, match="nested.bin.*no tensors at the top level.*state_dict"):
        open_checkpoint(tmp_path / "nested.bin")
    torch.save([torch.ones(3)], tmp_path / "list.bin")
    with pytest.raises(CorruptCheckpointError, match="list.bin.*expected a dict"):
        open_checkpoint(tmp_path / "list.bin")


def test_not_found_unknown_suffix_and_missing_key(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nope") as info:
        open_checkpoint(tmp_path / "nope.safetensors")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(CheckpointNotFoundError, match=DIRECTORY_CANDIDATES[-1]):
        open_checkpoint(tmp_path)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="w.npz.*unknown checkpoint type"):
        open_checkpoint(tmp_path / "w.npz")
    save_safetensors({"w": np.ones(2, np.float32)}, tmp_path / "w.safetensors")
    with open_checkpoint(tmp_path / "w.safetensors") as ckpt, pytest.raises(KeyError, match="missing.*w.safetensors"):
        ckpt.get("missing")


# ---------------------------------------------------------------- writers


def test_writer_roundtrip_all_dtypes(tmp_path):
    tensors = _all_dtypes()
    arrays = _numpy_tensors(tensors)
    path = tmp_path / "out.safetensors"
    save_safetensors(arrays, path, metadata={"format": "pt"})
    loaded = safetensors.torch.load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t)
    del arrays["bf16"]
    save_safetensors(arrays, tmp_path / "plain.safetensors")
    for name, arr in safetensors.numpy.load_file(tmp_path / "plain.safetensors").items():
        assert arr.dtype == arrays[name].dtype and np.array_equal(arr, arrays[name])
    with safetensors.safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert header_len % 8 == 0
    for name, spec in header.items():
        if name != "__metadata__":
            assert spec["data_offsets"][0] % tensors[name].element_size() == 0
    with open_checkpoint(path) as ckpt:
        for name, t in tensors.items():
            _assert_same(ckpt.get(name), t)


def test_writer_accepts_views_and_big_endian(tmp_path):
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    arrays = {"t": base.T, "slice": base[1:, ::3], "be": base.astype(">f4")}
    save_safetensors(arrays, tmp_path / "v.safetensors")
    for name, arr in safetensors.numpy.load_file(tmp_path / "v.safetensors").items():
        assert arr.dtype == np.float32 and np.array_equal(arr, arrays[name])


class _FailingMapping(dict):
    """Raises on the n-th item lookup, i.e. while the writer is part-way through the data."""

    def __init__(self, data, fail_at):
        super().__init__(data)
        self.lookups, self.fail_at = 0, fail_at

    def __getitem__(self, key):
        self.lookups += 1
        if self.lookups == self.fail_at:
            raise RuntimeError("boom")
        return super().__getitem__(key)


def test_writer_is_atomic(tmp_path):
    arrays = _numpy_tensors(_all_dtypes())
    mapping = _FailingMapping(arrays, fail_at=3)  # the header comes from items(): 2 tensors written, then boom
    with pytest.raises(RuntimeError, match="boom"):
        save_safetensors(mapping, tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="'bad'"):
        save_safetensors({"bad": [1, 2]}, tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_streamed_writer_loads_one_tensor_at_a_time(tmp_path):
    """``save_safetensors_streamed``: the header from specs, each tensor asked for once, in the
    file's order, and checked against its spec (a mismatch leaves nothing behind)."""
    from converters.writers import save_safetensors_streamed

    arrays = _numpy_tensors(_all_dtypes())
    specs = {k: (v.dtype, v.shape) for k, v in arrays.items()}
    asked = []
    save_safetensors_streamed(specs, lambda k: asked.append(k) or arrays[k], tmp_path / "a.safetensors")
    save_safetensors(arrays, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert sorted(asked) == sorted(arrays) and len(asked) == len(set(asked))
    name = next(iter(arrays))
    bad = dict(specs, **{name: (arrays[name].dtype, (7, 7, 7))})
    with pytest.raises(ValueError, match="the header says"):
        save_safetensors_streamed(bad, arrays.__getitem__, tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists() and len(list(tmp_path.iterdir())) == 2


def test_writer_sharded_loads_in_transformers(tmp_path, tiny_model):
    from transformers import Data2VecTextForMaskedLM

    state = tiny_model.state_dict()
    save_safetensors_sharded(_numpy_tensors(state), tmp_path, max_shard_bytes=20_000, metadata={"format": "pt"})
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in state.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*shards, "model.safetensors.index.json"])
    tiny_model.config.save_pretrained(tmp_path)
    reloaded = Data2VecTextForMaskedLM.from_pretrained(tmp_path).state_dict()
    for name, t in state.items():
        assert torch.equal(reloaded[name], t), name


def test_atomic_directory(tmp_path):
    final = tmp_path / "out" / "model"
    with atomic_directory(final) as tmp:
        save_safetensors({"w": np.ones(2, np.float32)}, os.path.join(tmp, "model.safetensors"))
        assert not final.exists()
    assert sorted(os.listdir(final)) == ["model.safetensors"]
    assert sorted(os.listdir(final.parent)) == ["model"]

    with pytest.raises(FileExistsError, match="model.*not an empty directory"):
        with atomic_directory(final):
            pass

    failed = tmp_path / "new" / "deeper" / "model"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(failed) as tmp:
            Path(tmp, "partial").write_bytes(b"x")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["out"]

    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:
        Path(tmp, "f").write_text("ok")
    assert os.listdir(tmp_path / "empty") == ["f"]
