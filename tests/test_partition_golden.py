"""Golden partition specs: how every parameter of every architecture lies on a reference mesh.

``tests/golden/partition_specs/<architecture>.json`` holds, for each registered
architecture, :func:`zoo.parallel.partition_table` (compact: repeated layers folded into
``layer_{0..11}``) of a preset of its family, at real widths and reduced depth (see
FAMILY_PRESETS; the file header records preset and overrides), on an abstract mesh
``data=2, fsdp=4, tensor=2`` (16 devices; nothing is allocated). A change of a logical
axis name, of a rule, of a parameter's shape or path shows here as a diff to review.
After an intended change, regenerate the files and review their diff::

    ZOO_UPDATE_GOLDEN=1 python -m pytest tests/test_partition_golden.py

The mesh is wider on ``fsdp`` than on ``tensor`` so that both show: the real hidden sizes
(256 ... 4096) divide by 4, the real head / MLP / vocabulary sizes by 2 (where they do
not, e.g. RoBERTa's 50265 words, the golden records the replication).
"""

from __future__ import annotations

import json
import os
import re
from itertools import product
from pathlib import Path

import pytest
from jax.sharding import AbstractMesh

import zoo
from zoo import parallel
from zoo.presets import load_preset
from zoo.pretrained import build_model

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "partition_specs"
UPDATE = os.environ.get("ZOO_UPDATE_GOLDEN") == "1"
REGENERATE = "ZOO_UPDATE_GOLDEN=1 python -m pytest tests/test_partition_golden.py"
MESH = {"data": 2, "fsdp": 4, "tensor": 2}

# One documented preset per family (configs/README.md) at its real widths, traced at
# reduced depth to keep this file fast (eval_shape of full-depth models costs 3x the CPU):
# every layer of a stack has the same parameters, so the golden loses only the layer
# count. At most 2 layers a stack, except: data2vec-vision keeps 3 (its segmentation head
# taps 4 distinct layers, out_indices 1..4), IDEFICS 8 decoder layers (cross_layer_interval
# 4 gives gated cross-attention layers 0 and 1).
FAMILY_PRESETS: dict[str, tuple[str, dict]] = {
    "data2vec-text": ("data2vec-text-base", {"num_hidden_layers": 2}),
    "data2vec-audio": ("data2vec-audio-base-960h", {"num_hidden_layers": 2}),
    "data2vec-vision": ("data2vec-vision-base-ft1k", {"num_hidden_layers": 3, "out_indices": [1, 2, 3, 4]}),
    "big_bird": ("bigbird-roberta-base", {"num_hidden_layers": 2}),
    "groupvit": ("groupvit-gcc-yfcc", {"text_config": {"num_hidden_layers": 2}, "vision_config": {"depths": [2, 1, 1]}}),
    "idefics": ("idefics-9b", {"num_hidden_layers": 8, "vision_config": {"num_hidden_layers": 2},
                               "perceiver_config": {"resampler_depth": 2}}),
    "sew-d": ("sew-d-tiny-100k-ft-ls100h", {"num_hidden_layers": 2}),
}
# Heads whose size comes from the labels, where the preset has none: a fixed num_labels
# (MNLI's 3 classes; ADE20k's 150 for segmentation; the ft1k preset's own 1000 for images).
HEAD_OVERRIDES: dict[str, dict] = {
    **{name: {"num_labels": 3} for name in (
        "Data2VecTextForSequenceClassification", "Data2VecTextForTokenClassification",
        "Data2VecAudioForSequenceClassification", "Data2VecAudioForAudioFrameClassification",
        "Data2VecAudioForXVector", "BigBirdForSequenceClassification", "BigBirdForTokenClassification",
        "SEWDForSequenceClassification")},
    "Data2VecVisionForSemanticSegmentation": {"num_labels": 150},
}
ARCHITECTURES = [(model_type, name) for model_type, name in zoo.list_architectures()]


def golden_path(architecture: str) -> Path:
    return GOLDEN_DIR / f"{architecture}.json"


def reference(model_type: str, architecture: str) -> dict:
    """The golden document of ``architecture``, computed now (and its folding checked lossless)."""
    if model_type not in FAMILY_PRESETS:
        pytest.fail(f"family {model_type!r} has no reference preset: add one to FAMILY_PRESETS in {__file__}",
                    pytrace=False)
    preset, overrides = FAMILY_PRESETS[model_type]
    overrides = {**overrides, **HEAD_OVERRIDES.get(architecture, {})}
    module = build_model(load_preset(preset, **overrides), architecture)
    mesh = AbstractMesh(tuple(MESH[a] for a in parallel.MESH_AXES), parallel.MESH_AXES)
    table = parallel.partition_table(module, mesh)
    compact = parallel.fold_indices(table)
    assert expand(compact) == table, f"{architecture}: folding lost or merged entries"
    return {
        "architecture": architecture,
        "preset": preset,
        "overrides": overrides,
        "mesh": dict(MESH),
        "regenerate": REGENERATE,
        "params": compact,
    }


def dumps(document: dict) -> str:
    """Sorted keys, one line per parameter (readable diffs), trailing newline."""
    lines = []
    for key in sorted(document):
        if key == "params":
            params = document[key]
            rows = [f"    {json.dumps(p)}: {json.dumps(params[p], sort_keys=True)}" for p in sorted(params)]
            lines.append('  "params": {\n' + ",\n".join(rows) + "\n  }")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(document[key], sort_keys=True)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def expand(table: dict) -> dict:
    """Inverse of :func:`zoo.parallel.fold_indices`: ``layer_{0..2,5}`` -> layer_0, 1, 2, 5."""
    flat = {}
    for path, entry in table.items():
        pieces = re.split(r"\{([0-9.,]+)\}", path)  # text, indices, text, indices, ..., text
        choices = []
        for spec in pieces[1::2]:
            indices = []
            for item in spec.split(","):
                lo, _, hi = item.partition("..")
                indices.extend(range(int(lo), int(hi or lo) + 1))
            choices.append(indices)
        for combo in product(*choices):
            full = "".join(piece + (str(combo[k]) if k < len(combo) else "")
                           for k, piece in enumerate(pieces[0::2]))
            assert full not in flat, f"{full} folded twice"
            flat[full] = entry
    return flat


def diff_message(architecture: str, golden: dict, now: dict, limit: int = 20) -> str:
    lines = []
    for key in sorted((set(golden) | set(now)) - {"params"}):
        if golden.get(key) != now.get(key):
            lines.append(f"  header {key}: golden {golden.get(key)!r}, now {now.get(key)!r}")
    old, new = expand(golden.get("params", {})), expand(now["params"])
    removed = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    changed = sorted(p for p in set(old) & set(new) if old[p] != new[p])
    js = lambda value: json.dumps(value, sort_keys=True)
    fields = lambda p: "; ".join(f"{k} {js(old[p].get(k))} -> {js(new[p].get(k))}"
                                 for k in sorted(set(old[p]) | set(new[p])) if old[p].get(k) != new[p].get(k))
    for kind, paths, show in (("removed", removed, lambda p: js(old[p])), ("added", added, lambda p: js(new[p])),
                              ("changed", changed, fields)):
        if paths:
            lines.append(f"  {len(paths)} {kind}:")
            lines += [f"    {p}: {show(p)}" for p in paths[:limit]]
            if len(paths) > limit:
                lines.append(f"    ... and {len(paths) - limit} more")
    return (f"partition specs of {architecture} differ from {golden_path(architecture)}:\n" + "\n".join(lines)
            + f"\nIf the change is intended, regenerate the golden files and review their diff:\n  {REGENERATE}")


@pytest.mark.parametrize("model_type,architecture", ARCHITECTURES, ids=[a for _, a in ARCHITECTURES])
def test_partition_specs_match_golden(model_type, architecture):
    now = reference(model_type, architecture)
    path = golden_path(architecture)
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = dumps(now)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"no golden partition specs for {architecture} ({path}); create them: {REGENERATE}"
    golden = json.loads(path.read_text(encoding="utf-8"))
    if golden != now:
        pytest.fail(diff_message(architecture, golden, now), pytrace=False)


def test_every_architecture_has_a_golden_file_and_none_is_stale():
    names = {name for _, name in ARCHITECTURES}
    files = {p.stem: p for p in GOLDEN_DIR.glob("*.json")}
    stale = sorted(set(files) - names)
    if UPDATE:
        for name in stale:
            files[name].unlink()
        return
    missing = sorted(names - set(files))
    assert not missing, f"architectures without golden partition specs: {', '.join(missing)}; run {REGENERATE}"
    assert not stale, (f"golden partition specs of architectures that are not registered: {', '.join(stale)}; "
                       f"delete them (or run {REGENERATE})")


def test_golden_files_are_canonical_and_folding_is_lossless():
    """Files are written by :func:`dumps` (sorted, one parameter a line); a folded table
    expands back to the full one, and folding keeps differing layers apart."""
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        if text != dumps(json.loads(text)):
            pytest.fail(f"{path} is not in canonical form (sorted, one parameter a line); run {REGENERATE}",
                        pytrace=False)
    entry = lambda n: {"shape": [n], "axes": ["embed"], "spec": ["fsdp"]}
    full = {f"enc/layer_{i}/w": entry(8) for i in range(12)} | {"enc/layer_3/w": entry(6)}
    full |= {f"blocks_{i}_{j}/ln/b": entry(4) for i in range(3) for j in range(2)}
    full |= {f"stages_{s}/layers_{i}/w": entry(4) for s, n in enumerate((6, 3, 3)) for i in range(n)}
    full |= {"tdnn_0/lambda_1": entry(2), "tdnn_0/lambda_2": entry(2), "head/fc": entry(2)}
    folded = parallel.fold_indices(full)
    assert folded == {
        "enc/layer_{0..2,4..11}/w": entry(8), "enc/layer_3/w": entry(6),
        "blocks_{0..2}_{0,1}/ln/b": entry(4),
        "stages_0/layers_{0..5}/w": entry(4), "stages_{1,2}/layers_{0..2}/w": entry(4),  # inner slots first
        "tdnn_0/lambda_1": entry(2), "tdnn_0/lambda_2": entry(2), "head/fc": entry(2),  # leaf names never fold
    }
    assert expand(folded) == full
