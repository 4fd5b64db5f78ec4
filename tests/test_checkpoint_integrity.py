"""Integrity checks of the readers: zip CRC-32 of a ``.bin`` and the index of sharded checkpoints."""

import contextlib
import io
import json
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from huggingface_hub import split_torch_state_dict_into_shards

import zoo
from benchmarks.fuzz_converters import rezip, zip_data_offset
from converters.errors import CorruptCheckpointError
from converters.readers import open_checkpoint
from zoo import cli


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def _storage_of(path: Path, key: str) -> str:
    with open_checkpoint(path) as ckpt:
        return ckpt._shard(key).storage_of(key)


@pytest.fixture(scope="module")
def hf_model():
    config = transformers.Data2VecTextConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=12, max_position_embeddings=20)
    torch.manual_seed(0)
    return transformers.Data2VecTextForMaskedLM(config).eval()


@pytest.fixture()
def bin_dir(tmp_path, hf_model):
    directory = tmp_path / "bin"
    directory.mkdir()
    hf_model.config.save_pretrained(directory)
    torch.save(hf_model.state_dict(), directory / "pytorch_model.bin")
    return directory


KEY = "data2vec_text.encoder.layer.1.intermediate.dense.weight"


def test_flipped_tensor_byte_names_file_and_tensor(bin_dir):
    path = bin_dir / "pytorch_model.bin"
    offset, size = zip_data_offset(path, f"/data/{_storage_of(path, KEY)}")
    _flip(path, offset + size // 2, bit=3)
    with open_checkpoint(path) as ckpt:
        assert ckpt.get("lm_head.bias").shape == (40,)  # other storages still read
        with pytest.raises(CorruptCheckpointError) as err:
            ckpt.get(KEY)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300
    assert str(path) in message and repr(KEY) in message and "CRC-32 mismatch" in message


def test_corruption_outside_a_view_is_caught(tmp_path):
    """A tensor that views part of a shared storage still checks the whole entry (once)."""
    base = torch.arange(12, dtype=torch.float32)
    path = tmp_path / "views.bin"
    torch.save({"all": base, "tail": base[8:]}, path)
    offset, _ = zip_data_offset(path, "/data/0")
    _flip(path, offset + 1)  # inside element 0: outside "tail"
    with open_checkpoint(path) as ckpt, pytest.raises(CorruptCheckpointError, match="CRC-32 mismatch in tensor 'tail'"):
        ckpt.get("tail")
    torch.save({"all": base, "tail": base[8:]}, path)
    with open_checkpoint(path) as ckpt:  # intact: the first read verifies, the second reads its view only
        np.testing.assert_array_equal(ckpt.get("tail"), base[8:].numpy())
        np.testing.assert_array_equal(ckpt.read_slice("all", (slice(2, 5),)), base[2:5].numpy())
        assert ckpt._shard("all")._verified == {"0"}


def test_compressed_entry_crc(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"w": torch.randn(64)}, path)
    with zipfile.ZipFile(path) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    name = next(n for n in entries if n.endswith("/data/0"))
    data = bytearray(entries[name])
    data[5] ^= 0x10
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, raw in entries.items():
            z.writestr(n, raw)
    # the deflated stream of the corrupted payload, under the original CRC
    co = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    bad = co.compress(bytes(data)) + co.flush()
    raw = bytearray(path.read_bytes())
    offset, size = zip_data_offset(path, "/data/0")
    assert len(bad) == size  # same length: the archive stays consistent except for the content
    raw[offset:offset + size] = bad
    path.write_bytes(bytes(raw))
    with open_checkpoint(path) as ckpt, pytest.raises(CorruptCheckpointError, match="CRC-32 mismatch in tensor 'w'"):
        ckpt.get("w")


@pytest.mark.parametrize("entry", ["/data.pkl", "/version", "/byteorder", "/.data/serialization_id"])
def test_small_entries_are_verified_on_open(bin_dir, entry):
    path = bin_dir / "pytorch_model.bin"
    offset, size = zip_data_offset(path, entry)
    # a bit that keeps the entry parseable where possible: the last byte's low bit
    _flip(path, offset + size - 1)
    with pytest.raises(CorruptCheckpointError) as err:
        open_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and entry.lstrip("/") in message and "\n" not in message


def test_zoo_convert_reports_one_line_and_leaves_nothing(bin_dir, tmp_path, capsys):
    path = bin_dir / "pytorch_model.bin"
    offset, size = zip_data_offset(path, f"/data/{_storage_of(path, KEY)}")
    _flip(path, offset + 1)
    out = tmp_path / "out" / "converted"
    assert cli.main(["convert", str(bin_dir), str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("zoo: error: ") and "CRC-32 mismatch" in err[-1] and repr(KEY) in err[-1]
    assert not out.exists() and not (tmp_path / "out").exists()
    with pytest.raises(CorruptCheckpointError, match="CRC-32 mismatch"):
        zoo.pretrained.convert(bin_dir, out)
    assert not out.exists()


def test_valid_checkpoints_convert(bin_dir, tmp_path, hf_model):
    model, _ = zoo.pretrained.convert(bin_dir, tmp_path / "from_bin")
    ref = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    with open_checkpoint(bin_dir) as ckpt:
        for key in ckpt.keys():
            np.testing.assert_array_equal(ckpt.get(key), ref[key])
    rezip(bin_dir / "pytorch_model.bin", {}, zipfile.ZIP_DEFLATED)  # compressed entries verify too
    with open_checkpoint(bin_dir) as ckpt:
        for key in ckpt.keys():
            np.testing.assert_array_equal(ckpt.get(key), ref[key])


# ---------------------------------------------------------------- sharded indexes
@pytest.fixture()
def sharded(tmp_path, hf_model):
    """HF's sharded safetensors and a huggingface_hub-sharded .bin (tied weights shared)."""
    st = tmp_path / "st"
    with contextlib.redirect_stderr(io.StringIO()):
        hf_model.save_pretrained(st, max_shard_size="4KB")
    pt = tmp_path / "pt"
    pt.mkdir()
    hf_model.config.save_pretrained(pt)
    state = hf_model.state_dict()
    split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size="4KB")
    for shard, keys in split.filename_to_tensors.items():
        torch.save({k: state[k] for k in keys}, pt / shard)
    (pt / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename}))
    return {"st": st / "model.safetensors.index.json", "pt": pt / "pytorch_model.bin.index.json"}


def _edit(index_path: Path, edit) -> dict:
    index = json.loads(index_path.read_text())
    edit(index)
    index_path.write_text(json.dumps(index))
    return index


@pytest.mark.parametrize("kind", ["st", "pt"])
def test_sharded_valid_total_size_converts(sharded, kind, tmp_path):
    index = json.loads(sharded[kind].read_text())
    assert index["metadata"]["total_size"] > 0 and len(set(index["weight_map"].values())) >= 2
    zoo.pretrained.convert(sharded[kind].parent, tmp_path / "out")


@pytest.mark.parametrize("kind", ["st", "pt"])
@pytest.mark.parametrize("value", [1, -4, "many", 1e30, None, [1]])
def test_sharded_wrong_total_size(sharded, kind, value):
    def edit(index):
        index["metadata"]["total_size"] = value if value != 1 else index["metadata"]["total_size"] + 1
    _edit(sharded[kind], edit)
    with pytest.raises(CorruptCheckpointError) as err:
        open_checkpoint(sharded[kind])
    assert str(sharded[kind]) in str(err.value) and "total_size" in str(err.value)


@pytest.mark.parametrize("kind", ["st", "pt"])
def test_sharded_missing_shard_is_named(sharded, kind):
    index = json.loads(sharded[kind].read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (sharded[kind].parent / shard).unlink()
    with pytest.raises(CorruptCheckpointError, match=f"shard {shard} listed in the index is missing"):
        open_checkpoint(sharded[kind])
    with pytest.raises(CorruptCheckpointError, match=shard):
        zoo.pretrained.convert(sharded[kind].parent, sharded[kind].parent.parent / "out")
    assert not (sharded[kind].parent.parent / "out").exists()


@pytest.mark.parametrize("kind", ["st", "pt"])
def test_sharded_key_in_wrong_shard_names_both(sharded, kind):
    index = json.loads(sharded[kind].read_text())
    key = sorted(index["weight_map"])[0]
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != index["weight_map"][key])
    _edit(sharded[kind], lambda ix: ix["weight_map"].__setitem__(key, other))
    with pytest.raises(CorruptCheckpointError) as err:
        open_checkpoint(sharded[kind])
    message = str(err.value)
    assert other in message and repr(key) in message and "\n" not in message


def test_shard_corruption_names_the_shard(sharded):
    index = json.loads(sharded["pt"].read_text())
    key = KEY
    shard = sharded["pt"].parent / index["weight_map"][key]
    offset, size = zip_data_offset(shard, f"/data/{_storage_of(shard, key)}")
    _flip(shard, offset + size - 1, bit=7)
    with open_checkpoint(sharded["pt"]) as ckpt, pytest.raises(CorruptCheckpointError) as err:
        dict(ckpt.items())
    assert str(shard) in str(err.value) and repr(key) in str(err.value)
    shutil.rmtree(sharded["pt"].parent.parent / "out", ignore_errors=True)
