"""zoo.parallel: the logical-axis rules, meshes, sharding, and loading straight onto a mesh.

The checks that need several devices run in a subprocess on 8 simulated CPU devices
(``--xla_force_host_platform_device_count=8``): this pytest process may already have
initialised jax with one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest
import torch
import transformers
from jax.sharding import AbstractMesh, PartitionSpec as P

import zoo
from converters.errors import KeyMappingError
from converters.safetensors_io import SafetensorsFile
from test_conversion import tiny_architectures, tiny_config
from zoo import parallel
from zoo.tree import flatten_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH8 = AbstractMesh((2, 2, 2), parallel.MESH_AXES)


class On8Devices:
    """``code`` running in a fresh python on 8 simulated CPU devices, started at once so that
    it runs while this process goes on; it must print one line ``RESULT <json>``."""

    def __init__(self, code: str, workdir):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
                   PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
        self._out, self._err = open(workdir / "stdout", "w+"), open(workdir / "stderr", "w+")
        self._proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                                      stdout=self._out, stderr=self._err, text=True)
        self._result = None

    def result(self, timeout: int = 300) -> dict:
        if self._result is None:
            rc = self._proc.wait(timeout)
            self._out.seek(0), self._err.seek(0)
            out, err = self._out.read(), self._err.read()
            assert rc == 0, f"subprocess failed:\n{out[-3000:]}\n{err[-6000:]}"
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            assert lines, f"no RESULT line in:\n{out[-3000:]}"
            self._result = json.loads(lines[-1][len("RESULT "):])
        return self._result

    def stderr(self) -> str:
        """What the subprocess wrote on stderr (XLA's warnings), once it has finished."""
        self.result()
        self._err.seek(0)
        return self._err.read()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._out.close(), self._err.close()


# --------------------------------------------------------------------------- rules
def test_rules_cover_every_logical_axis_name_of_every_architecture():
    """Every logical name of every parameter of every registered architecture has a rule,
    param_shardings gives every parameter (and replicated batch statistics) a sharding."""
    mesh = parallel.make_mesh("", devices=jax.devices()[:1])
    architectures, used = set(), set()
    for name, module in tiny_architectures():
        architectures.add(name)
        # raises ValueError naming the parameter for a logical axis name without a rule
        shardings = flatten_variables(parallel.param_shardings(module, mesh))
        assert shardings and all(s.mesh is mesh for s in shardings.values()), name
        assert not [p for p, s in shardings.items() if p.startswith("batch_stats/") and s.spec != P()], name
        used |= {axis for s in shardings.values() for axis in s.spec}
    assert architectures == {a for _, a in zoo.list_architectures()}
    assert used == {None, "fsdp", "tensor"}


def test_variables_tree_of_a_batch_norm_model():
    module = next(m for n, m in tiny_architectures() if n == "Data2VecVisionForSemanticSegmentation")
    mesh = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    shardings = parallel.param_shardings(module, mesh)
    assert set(shardings) == {"params", "batch_stats"}
    flat = flatten_variables(shardings)
    assert set(flat) == set(zoo.initialization.param_shapes(module))
    stats = [p for p in flat if p.startswith("batch_stats/")]
    assert stats and all(flat[p].spec == P() for p in stats)


def test_logical_to_spec_precedence_divisibility_and_errors():
    spec = lambda names, shape: parallel.logical_to_spec(names, shape, MESH8)
    for name, mesh_axes in parallel.LOGICAL_AXIS_RULES:
        assert mesh_axes is None or set((mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes) <= set(MESH8.shape)
    assert spec(("embed", "heads"), (32, 32)) == P("fsdp", "tensor")
    assert spec(("heads", "embed"), (32, 32)) == P("tensor", "fsdp")
    assert spec(("vocab", "embed"), (128, 32)) == P("tensor", "fsdp")
    assert spec(("embed", "mlp"), (32, 37)) == P("fsdp", None)  # 37 is not divisible: replicated
    assert spec(("embed", "embed_out"), (32, 32)) == P("fsdp", "tensor")
    assert spec(("mlp", "embed_out"), (64, 32)) == P("tensor", "fsdp")  # tensor taken: the fallback rule
    assert spec((None, None, "conv_in", "conv_out"), (3, 3, 8, 8)) == P(None, None, "fsdp", "tensor")
    assert spec(("embed", "classes"), (32, 4)) == P("fsdp", None)
    assert spec(("kv",), (8,)) == P(None)
    assert spec((), ()) == P()
    with pytest.raises(ValueError, match="logical axis 'experts' has no sharding rule"):
        spec(("embed", "experts"), (32, 4))
    with pytest.raises(ValueError, match="the mesh has no axis 'model'"):
        parallel.logical_to_spec(("embed",), (32,), MESH8, rules=(("embed", "model"),))


# ---------------------------------------------------------------------------- mesh
def test_make_mesh_sizes_and_errors():
    one = jax.devices()[:1]
    mesh = parallel.make_mesh("data=1, fsdp=1,tensor=1", devices=one)
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.shape == (1, 1, 1)
    assert dict(parallel.make_mesh({"tensor": 1}, devices=one).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match=r"mesh data=2,fsdp=1,tensor=2 needs 4 devices, but 1 is given"):
        parallel.make_mesh("data=2,tensor=2", devices=one)
    with pytest.raises(ValueError, match="unknown mesh axis 'model'; the axes are data, fsdp, tensor"):
        parallel.make_mesh("model=1", devices=one)
    with pytest.raises(ValueError, match="'data2' is not AXIS=SIZE"):
        parallel.make_mesh("data2", devices=one)
    with pytest.raises(ValueError, match="'fsdp' must have a positive integer size"):
        parallel.make_mesh({"fsdp": 0}, devices=one)
    with pytest.raises(ValueError, match="'data' is given twice"):
        parallel.make_mesh("data=1,data=1", devices=one)


# ------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny Data2VecText MLM as bf16 sharded safetensors and as an fp32 .bin."""
    root = tmp_path_factory.mktemp("mesh_ckpts")
    torch.manual_seed(0)
    model = transformers.Data2VecTextForMaskedLM(tiny_config(vocab_size=128)).eval()
    model.to(torch.bfloat16).save_pretrained(root / "bf16", max_shard_size="20KB")
    model.float()
    (root / "bin").mkdir()
    model.config.save_pretrained(root / "bin")
    torch.save(model.state_dict(), root / "bin" / "pytorch_model.bin")
    return root


MESH_SCRIPT = """
import json, collections
import jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
import zoo
from zoo import parallel
from zoo.tree import flatten_variables
from converters.safetensors_io import SafetensorsFile
from converters.torch_pickle import TorchZipFile

ROOT = {root!r}
res = {{}}
reads = collections.defaultdict(list)     # key -> bytes copied per call, by kind
def record(cls, name, kind):
    original = getattr(cls, name)
    def wrapper(self, key, *args):
        out = original(self, key, *args)
        reads[kind, key].append(out.nbytes)
        return out
    setattr(cls, name, wrapper)
record(SafetensorsFile, "read_slice", "slice")
record(SafetensorsFile, "read", "whole")
record(TorchZipFile, "read", "bin")

def same(a, b):  # bit-exact, same dtype
    a, b = flatten_variables(a), flatten_variables(b)
    return sorted(a) == sorted(b) and all(
        a[k].dtype == b[k].dtype and np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)

def placed(params, module, mesh):  # every array has exactly the sharding param_shardings gives it
    want = flatten_variables(parallel.param_shardings(module, mesh))
    got = flatten_variables(params)
    return all(got[k].sharding == want[k] for k in want) and sorted(got) == sorted(want)

mesh = parallel.make_mesh("data=2,fsdp=2,tensor=2")
res["devices"] = len(jax.devices())
_, ref = zoo.from_pretrained(ROOT + "/bf16", param_dtype=None)
from converters.readers import open_checkpoint
with open_checkpoint(ROOT + "/bf16") as ckpt:
    sizes = {{k: int(np.prod(ckpt.shape(k))) * ckpt.dtype(k).itemsize for k in ckpt.keys()}}
reads.clear()
model, params = zoo.from_pretrained(ROOT + "/bf16", mesh=mesh, param_dtype=None)
res["bf16_equal"] = same(params, ref)
res["bf16_dtypes"] = sorted({{str(v.dtype) for v in flatten_variables(params).values()}})
res["bf16_placed"] = placed(params, model, mesh)
# only slices were read, each element once (replicating devices share one read)
res["kinds_read"] = sorted({{kind for kind, _ in reads}})
res["bytes_per_key_match"] = all(sum(v) == sizes[k] for (kind, k), v in reads.items())
query = "data2vec_text.encoder.layer.0.attention.self.query.weight"
res["query_slices"] = list(reads["slice", query])
res["query_size"] = sizes[query]
q = params["params"]["data2vec_text"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
emb = params["params"]["data2vec_text"]["embeddings"]["word_embeddings"]["embedding"]
inter = params["params"]["data2vec_text"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
for name, arr in (("query", q), ("embedding", emb), ("intermediate", inter)):
    res[name] = dict(spec=list(arr.sharding.spec), size=int(arr.size),
                     shard_sizes=sorted({{int(s.data.size) for s in arr.addressable_shards}}),
                     devices=len(arr.addressable_shards))

# cast slice by slice; a zoo directory; an fp32 .bin (read whole, once per tensor)
_, ref32 = zoo.from_pretrained(ROOT + "/bf16", param_dtype="float32")
_, p32 = zoo.from_pretrained(ROOT + "/bf16", mesh=mesh, param_dtype="float32")
res["cast_equal"] = same(p32, ref32)
zoo.save_pretrained(ROOT + "/zoo", model, ref)
reads.clear()
_, pz = zoo.from_pretrained(ROOT + "/zoo", mesh=mesh, param_dtype=None)
res["zoo_equal"] = same(pz, ref) and placed(pz, model, mesh)
res["zoo_sliced_once"] = sorted({{kind for kind, _ in reads}}) == ["slice"] and all(
    sum(v) == np.asarray(flatten_variables(ref)[k]).nbytes for (_, k), v in reads.items())
_, bin_ref = zoo.from_pretrained(ROOT + "/bin")
reads.clear()
bin_model, pbin = zoo.from_pretrained(ROOT + "/bin", mesh=mesh, param_dtype="float32")
res["bin_equal"] = same(pbin, bin_ref) and placed(pbin, bin_model, mesh)
res["bin_reads_per_key"] = sorted({{len(v) for v in reads.values()}})

# a fresh head is initialised straight into its shards, with the values of a plain load
clf, pclf = loaded = zoo.from_pretrained(ROOT + "/bf16", "Data2VecTextForSequenceClassification", mesh=mesh,
                                        param_dtype=None)
report = loaded.report
_, clf_ref = zoo.from_pretrained(ROOT + "/bf16", "Data2VecTextForSequenceClassification", param_dtype=None)
res["head_missing"] = sorted(report.missing)
res["head_equal"] = same(pclf, clf_ref) and placed(pclf, clf, mesh)

# shard_params agrees with the loader; a sharded forward pass agrees with one device
res["shard_params_placed"] = placed(parallel.shard_params(bin_ref, bin_model, mesh), bin_model, mesh)
ids = np.random.RandomState(0).randint(3, 128, (4, 8))
mask = np.ones_like(ids)
mask[1, 5:] = 0
batch = parallel.shard_batch({{"input_ids": ids, "attention_mask": mask}}, mesh)
res["batch_spec"] = list(batch["input_ids"].sharding.spec)
res["batch_shard_shapes"] = sorted({{tuple(s.data.shape) for s in batch["input_ids"].addressable_shards}})
fwd = jax.jit(lambda p, b: bin_model.apply(p, **b).logits)
one_device = fwd(bin_ref, {{"input_ids": ids, "attention_mask": mask}})
res["forward_max_diff"] = float(np.abs(np.asarray(fwd(pbin, batch)) - np.asarray(one_device)).max())
try:
    parallel.shard_batch({{"input_ids": ids[:3]}}, mesh)
except ValueError as e:
    res["batch_error"] = str(e)
print("RESULT " + json.dumps(res))
"""


@pytest.fixture(scope="module", autouse=True)
def mesh_run(checkpoints):
    """Started before the first test of this file, so it overlaps the in-process tests."""
    run = On8Devices(MESH_SCRIPT.format(root=str(checkpoints)), checkpoints)
    yield run
    run.close()


@pytest.fixture(scope="module")
def on_mesh(mesh_run):
    return mesh_run.result()


def test_bf16_checkpoint_loads_onto_a_mesh_bit_exact(on_mesh):
    assert on_mesh["devices"] == 8
    assert on_mesh["bf16_equal"] and on_mesh["bf16_placed"]
    assert on_mesh["bf16_dtypes"] == ["bfloat16"]  # param_dtype=None keeps the checkpoint's
    assert on_mesh["cast_equal"]  # param_dtype="float32": each slice cast on its own
    assert on_mesh["zoo_equal"] and on_mesh["bin_equal"] and on_mesh["head_equal"]
    assert on_mesh["head_missing"] == ["classifier/dense/bias", "classifier/dense/kernel",
                                       "classifier/out_proj/bias", "classifier/out_proj/kernel"]


def test_each_device_holds_only_its_shard(on_mesh):
    # [32, 32] over fsdp x tensor (2 x 2), replicated over data: a quarter on each of 8 devices
    assert on_mesh["query"] == dict(spec=["fsdp", "tensor"], size=1024, shard_sizes=[256], devices=8)
    assert on_mesh["embedding"] == dict(spec=["tensor", "fsdp"], size=4096, shard_sizes=[1024],
                                        devices=8)
    # intermediate_size=37 is not divisible by tensor=2: that dimension is replicated
    assert on_mesh["intermediate"] == dict(spec=["fsdp", None], size=32 * 37,
                                           shard_sizes=[16 * 37], devices=8)


def test_loader_reads_only_slices(on_mesh):
    # safetensors: no tensor read whole; each element copied once, in 4 distinct slices for
    # the query weight (8 devices, 2 of them replicas of each slice)
    assert on_mesh["kinds_read"] == ["slice"]
    assert on_mesh["bytes_per_key_match"] and on_mesh["zoo_sliced_once"]
    assert on_mesh["query_slices"] == [on_mesh["query_size"] // 4] * 4
    # a .bin pickle is read whole, once per tensor, whatever the number of devices
    assert on_mesh["bin_reads_per_key"] == [1]


def test_sharded_batch_and_forward(on_mesh):
    assert on_mesh["shard_params_placed"]
    assert on_mesh["batch_spec"] == [["data", "fsdp"]]
    assert on_mesh["batch_shard_shapes"] == [[1, 8]]
    assert on_mesh["forward_max_diff"] <= 1e-5
    assert "batch size 3, which data x fsdp = 4 devices cannot split evenly" in on_mesh["batch_error"]


def test_mesh_load_errors_before_reading_anything(checkpoints, tmp_path, monkeypatch):
    """A checkpoint of another family, or weights that do not fit the config, fail from the
    headers alone: no tensor is read and nothing is placed on a device."""
    mesh = parallel.make_mesh("", devices=jax.devices()[:1])

    def no_read(*args):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(SafetensorsFile, "read", no_read)
    monkeypatch.setattr(SafetensorsFile, "read_slice", no_read)
    other = tmp_path / "other_family"
    other.mkdir()
    for name in os.listdir(checkpoints / "bf16"):
        os.symlink(checkpoints / "bf16" / name, other / name)
    os.remove(other / "config.json")
    transformers.BigBirdConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=37).save_pretrained(other)
    with pytest.raises(KeyMappingError, match="parameters missing from the checkpoint"):
        zoo.from_pretrained(other, mesh=mesh)
    os.remove(other / "config.json")
    tiny_config(vocab_size=128, intermediate_size=40).save_pretrained(other)
    with pytest.raises(KeyMappingError, match=r"intermediate\.dense\.(weight|bias)' has shape"):
        zoo.from_pretrained(other, mesh=mesh)
