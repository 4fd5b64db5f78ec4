"""zoo.checkpoint: orbax checkpoints of a training state, exact resume, restore onto another mesh.

The mesh checks run in one subprocess on 8 simulated CPU devices, started before the
first test so that it runs while the in-process tests do.
"""

from __future__ import annotations

import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from test_parallel import On8Devices
from zoo.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    Checkpointer,
    CorruptCheckpointError,
    StateMismatchError,
    abstract_like,
)

MESH_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding
import zoo
from zoo import parallel
from zoo.checkpoint import Checkpointer
from zoo.models.data2vec_text import Data2VecTextConfig

config = Data2VecTextConfig.from_dict(dict(vocab_size=128, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=4, intermediate_size=64, num_labels=2))
model = zoo.build_model(config, "Data2VecTextForSequenceClassification")
host = jax.tree.map(np.asarray, zoo.init_params(model, 0)["params"])

def abstract_state(mesh):  # params and an optimizer moment by param_shardings, step and rng replicated
    shardings, replicated = parallel.param_shardings(model, mesh)["params"], NamedSharding(mesh, PartitionSpec())
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), host, shardings)
    return {{"params": params, "opt_state": {{"mu": params}}, "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
            "rng": jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)}}

def leaves(tree):
    return [(jax.tree_util.keystr(k), x) for k, x in jax.tree_util.tree_leaves_with_path(tree)]

def raw(x):
    return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

def same(a, b):  # same tree, bit-exact values
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.dtype == y.dtype and raw(x).tobytes() == raw(y).tobytes() for (_, x), (_, y) in zip(leaves(a), leaves(b)))

def placed(tree, target):  # every array on the sharding of its target
    return all(x.sharding == t.sharding for (_, x), (_, t) in zip(leaves(tree), leaves(target)))

QUERY = ("params", "data2vec_text", "encoder", "layer_0", "attention", "self", "query", "kernel")
def query(tree):
    for k in QUERY:
        tree = tree[k]
    return dict(spec=list(tree.sharding.spec) if hasattr(tree.sharding, "spec") else None,
                devices=len(tree.sharding.device_set),
                shard_sizes=sorted({{int(s.data.size) for s in tree.addressable_shards}}))

res = {{"devices": len(jax.devices())}}
abstract = abstract_state(parallel.make_mesh("data=2,fsdp=2,tensor=2"))
values = {{"params": host, "opt_state": {{"mu": jax.tree.map(lambda x: x * x, host)}}, "step": np.int32(5),
          "rng": jax.random.key(3)}}
saved = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), values, abstract)
res["saved_query"] = query(saved)
with Checkpointer({root!r}, save_every=5) as ckpt:
    ckpt.save(5, saved, metadata={{"position": 7}})

with Checkpointer({root!r}) as ckpt:   # as a new process would: restore onto fsdp=8, nothing allocated
    target = abstract_state(parallel.make_mesh("fsdp=8"))
    state, meta = ckpt.restore(target=target)
    res["fsdp8"] = dict(equal=same(state, saved), placed=placed(state, target), query=query(state), meta=meta)
    one = SingleDeviceSharding(jax.devices()[0])   # concrete arrays as target, placed by shardings=
    state, _ = ckpt.restore(5, target=saved, shardings=one)
    res["one_device"] = dict(equal=same(state, saved), placed=all(x.sharding == one for x in jax.tree.leaves(state)),
                             query=query(state))
    state, _ = ckpt.restore(target=saved)                 # the saved layout again
    res["same_mesh"] = dict(equal=same(state, saved), placed=placed(state, saved))
print("RESULT " + json.dumps(res))
"""


@pytest.fixture(scope="module", autouse=True)
def mesh_run(tmp_path_factory):
    """Started before the first test of this file, so it overlaps the in-process tests."""
    root = tmp_path_factory.mktemp("mesh_checkpoints")
    run = On8Devices(MESH_SCRIPT.format(root=str(root / "ckpt")), root)
    yield run
    run.close()


# ------------------------------------------------------------------------ save / keep
def test_save_every_n_keep_k(tmp_path):
    state = {"w": jnp.arange(3.0), "step": jnp.int32(0)}
    with Checkpointer(tmp_path / "run", save_every=2, keep=3) as ckpt:
        saved = [ckpt.save(step, dict(state, step=jnp.int32(step)), metadata={"position": step})
                 for step in range(1, 11)]
        assert saved == [False, True] * 5
        assert ckpt.all_steps() == [6, 8, 10] and ckpt.latest_step() == 10
        assert sorted(os.listdir(tmp_path / "run")) == ["10", "6", "8"]
        assert ckpt.save(11, state, force=True) and ckpt.all_steps() == [8, 10, 11]
        assert not ckpt.save(10, state)  # not after the latest step: skipped, as orbax does
        with pytest.raises(CheckpointError, match="checkpoint step 10 already exists"):
            ckpt.save(10, state, force=True)
        restored, meta = ckpt.restore(8, target=state)
        assert int(restored["step"]) == 8 and meta == {"position": 8}

    # a save killed half-way leaves orbax's temporary directory: never a step, removed on open
    partial = tmp_path / "run" / "12.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    with Checkpointer(tmp_path / "run", save_every=2, keep=3) as ckpt:
        assert ckpt.latest_step() == 11 and int(ckpt.restore(target=state)[0]["step"]) == 0
        ckpt.save(12, state)
    assert not partial.exists() and sorted(os.listdir(tmp_path / "run")) == ["10", "11", "12"]

    with Checkpointer(tmp_path / "async", keep=2, async_=True) as ckpt:
        for step in range(1, 4):
            assert ckpt.save(step, dict(state, step=jnp.int32(step)), metadata={"position": step})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3]
        restored, meta = ckpt.restore(target=abstract_like(state))
        assert int(restored["step"]) == 3 and meta == {"position": 3}


# ------------------------------------------------------------------------ exact resume
class MLP(nn.Module):
    """A small classifier with dropout: training needs a dropout rng, carried in the state."""

    @nn.compact
    def __call__(self, x, deterministic=True):
        x = nn.Dropout(0.3)(nn.relu(nn.Dense(32)(x)), deterministic=deterministic)
        return nn.Dense(3)(x)


MODEL = MLP()
TX = optax.adamw(1e-2, weight_decay=0.01)
INPUTS = np.random.RandomState(0).standard_normal((16, 8)).astype(np.float32)
LABELS = np.random.RandomState(1).randint(0, 3, 16)
BATCH = 4
PER_EPOCH = len(INPUTS) // BATCH


def next_batch(meta):
    """The batch at the data position saved in the metadata (a shuffle per epoch), and the next position."""
    order = np.random.default_rng([meta["seed"], meta["epoch"]]).permutation(len(INPUTS))
    idx = order[meta["position"] * BATCH:(meta["position"] + 1) * BATCH]
    epoch, position = divmod(meta["epoch"] * PER_EPOCH + meta["position"] + 1, PER_EPOCH)
    return (INPUTS[idx], LABELS[idx]), dict(meta, epoch=epoch, position=position)


@jax.jit
def train_step(state, batch):
    rng, dropout = jax.random.split(state["rng"])

    def loss_fn(params):
        logits = MODEL.apply({"params": params}, batch[0], deterministic=False, rngs={"dropout": dropout})
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    return dict(params=optax.apply_updates(state["params"], updates), opt_state=opt_state, rng=rng,
                step=state["step"] + 1), loss


@functools.cache
def initial_state():
    params = MODEL.init(jax.random.key(0), INPUTS[:1])["params"]
    state = {"params": params, "opt_state": TX.init(params), "rng": jax.random.key(1), "step": jnp.int32(0)}
    # committed to its device, as restored arrays are: train_step then compiles once for both
    return jax.device_put(state, jax.devices()[0])


def train(directory, until):
    """Trains up to step ``until``, from the latest checkpoint in ``directory`` if there is
    one; saves every 3 steps. The final state and the loss of each step it ran."""
    state = initial_state()
    meta = {"seed": 7, "epoch": 0, "position": 0}
    losses = {}
    with Checkpointer(directory, save_every=3, keep=2) as ckpt:
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore(target=abstract_like(state))
        while int(state["step"]) < until:
            batch, meta = next_batch(meta)
            state, loss = train_step(state, batch)
            losses[int(state["step"])] = float(loss)
            ckpt.save(int(state["step"]), state, metadata=meta)
    return state, losses


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    full_state, full = train(tmp_path / "full", 6)
    _, first = train(tmp_path / "resumed", 4)  # stops after step 4: step 4 was never saved
    state, rest = train(tmp_path / "resumed", 6)  # a fresh start: restores step 3 and its data position
    assert sorted(first) == [1, 2, 3, 4] and sorted(rest) == [4, 5, 6]
    assert {**first, **rest} == full and first[4] == rest[4]  # the same loss curve, bit for bit
    assert len(set(full.values())) == 6
    assert jax.tree.structure(state) == jax.tree.structure(full_state)
    same = jax.tree.map(lambda a, b: np.asarray(a).tobytes() == np.asarray(b).tobytes(),
                        {k: state[k] for k in ("params", "opt_state", "step")},
                        {k: full_state[k] for k in ("params", "opt_state", "step")})
    assert all(jax.tree.leaves(same))
    assert (jax.random.key_data(state["rng"]) == jax.random.key_data(full_state["rng"])).all()


# ------------------------------------------------------------------------------ errors
# reading the damaged step, orbax's failed tensorstore futures call back into an event loop
# it has already closed: a "RuntimeError: Event loop is closed" pytest reports as unraisable
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_errors_name_the_directory_the_step_and_the_path(tmp_path):
    state = {"params": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}, "rng": jax.random.key(0)}
    with pytest.raises(ValueError, match="save_every must be a positive integer"):
        Checkpointer(tmp_path / "x", save_every=0)
    with pytest.raises(ValueError, match="keep must be a positive integer or None"):
        Checkpointer(tmp_path / "x", keep=0)
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(CheckpointNotFoundError, match="no checkpoint in .*empty: it holds no finalized step"):
            ckpt.restore(target=state)
    directory = tmp_path / "run"
    with Checkpointer(directory, save_every=2) as ckpt:
        for step in (2, 4):
            ckpt.save(step, state, metadata={"step": step})
        with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
            ckpt.save(6, state, metadata={"array": np.ones(2)})
        assert ckpt.all_steps() == [2, 4]
        with pytest.raises(CheckpointNotFoundError, match=r"step 7 does not exist in .*run; the steps there are \[2, 4\]"):
            ckpt.restore(7, target=state)
        wrong = {"params": {"w": jnp.ones((3, 5)), "b": jnp.zeros(4)}, "rng": jax.random.key(0)}
        with pytest.raises(StateMismatchError, match=r"params/w: the target has shape \(3, 5\), checkpoint step 4 "
                                                     r"in .*run has \(3, 4\)"):
            ckpt.restore(target=wrong)
        extra = {"params": {**state["params"], "c": jnp.zeros(2)}, "rng": state["rng"]}
        with pytest.raises(StateMismatchError, match="the target has params/c, which checkpoint step 4 .* lacks"):
            ckpt.restore(target=extra)
        with pytest.raises(StateMismatchError, match=r"checkpoint step 4 .* has params/b \(4,\), which the target lacks"):
            ckpt.restore(target={"params": {"w": jnp.ones((3, 4))}, "rng": state["rng"]})
        with pytest.raises(StateMismatchError, match="shardings= must be one Sharding or a tree"):
            ckpt.restore(target=state, shardings={"params": None})
        restored, meta = ckpt.restore(2)  # no target: the tree as saved
        assert meta == {"step": 2} and restored["params"]["w"].shape == (3, 4)
        assert restored["rng"].dtype == state["rng"].dtype
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        restored, _ = ckpt.restore(2, shardings=one)
        assert all(x.sharding == one for x in jax.tree.leaves(restored))

    # files damaged after the step was finalized: the step is named, the others still restore
    shutil.copytree(directory / "4", directory / "6")
    for name in os.listdir(directory / "6" / "state" / "d"):
        (directory / "6" / "state" / "d" / name).write_bytes(b"garbage")
    (directory / "8").mkdir()  # a bare step directory, no items
    with Checkpointer(directory, save_every=2) as ckpt:
        assert ckpt.all_steps() == [2, 4, 6, 8]
        with pytest.raises(CorruptCheckpointError, match=r"checkpoint step 8 in .*run could not be read.*"
                                                         r"the steps there are \[2, 4, 6, 8\]"):
            ckpt.restore(target=state)
        with pytest.raises(CorruptCheckpointError, match="checkpoint step 6 in .*run could not be read, its files "
                                                         "are damaged or incomplete"):
            ckpt.restore(6, target=state)
        assert ckpt.restore(4, target=state)[1] == {"step": 4}


# -------------------------------------------------------------- another mesh (8 devices)
def test_restore_onto_a_mesh_of_another_shape(mesh_run):
    res = mesh_run.result()
    assert res["devices"] == 8
    # saved from data=2,fsdp=2,tensor=2: [32, 32] over fsdp x tensor, a quarter per device
    assert res["saved_query"] == dict(spec=["fsdp", "tensor"], devices=8, shard_sizes=[256])
    # restored onto fsdp=8 (an eighth per device) and onto one device: same bits, the requested shardings
    assert res["fsdp8"]["equal"] and res["fsdp8"]["placed"] and res["fsdp8"]["meta"] == {"position": 7}
    assert res["fsdp8"]["query"] == dict(spec=["fsdp", "tensor"], devices=8, shard_sizes=[128])
    assert res["one_device"] == dict(equal=True, placed=True, query=dict(spec=None, devices=1, shard_sizes=[1024]))
    assert res["same_mesh"] == dict(equal=True, placed=True)
