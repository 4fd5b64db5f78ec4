"""One way to load: every loader gives the Flax variables dict, ``model.apply(variables, ...)``."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

import zoo
from converters.errors import KeyMappingError
from zoo.models.data2vec_vision import Data2VecVisionConfig
from zoo.tree import check_variables, flatten_variables, pack_variables

TEXT = "zoo/assets/tiny-data2vec-text"
IDS = np.array([[0, 31, 7, 4, 58, 2, 1, 1]])


def test_from_pretrained_gives_variables_and_a_fixed_shape_result():
    loaded = zoo.from_pretrained(TEXT)
    model, variables = loaded
    assert isinstance(loaded, zoo.Loaded) and len(loaded) == 2
    assert loaded.model is model and loaded.variables is variables and loaded[1] is variables
    assert set(variables) == {"params"} and "data2vec_text" in variables["params"]
    assert loaded.report.summary() == "all keys matched"
    assert model.apply(variables, input_ids=IDS).logits.shape == (1, 8, model.config.vocab_size)

    head = zoo.from_pretrained(TEXT, "Data2VecTextForSequenceClassification")
    assert len(head) == 2 and "classifier/out_proj/kernel" in head.report.missing


def test_every_loader_gives_the_same_kind_of_tree():
    cfg = Data2VecVisionConfig.from_dict(dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                              intermediate_size=37, image_size=32, patch_size=8,
                                              out_indices=[1, 2, 3, 4], num_labels=3, auxiliary_channels=8))
    for arch, collections in [("Data2VecVisionForImageClassification", {"params"}),
                              ("Data2VecVisionForSemanticSegmentation", {"params", "batch_stats"})]:
        variables = zoo.init_params(zoo.build_model(cfg, arch), 0)
        assert set(variables) == collections
        check_variables(variables)
    model, variables = zoo.init("data2vec-audio-base", rng=0, num_hidden_layers=1)
    assert set(variables) == {"params"}


def test_from_state_dict_converts_a_torch_state_dict_in_memory():
    torch = pytest.importorskip("torch")
    hf = transformers.Data2VecTextForMaskedLM.from_pretrained(TEXT).eval()
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    model, variables = loaded = zoo.from_state_dict(state, hf.config.to_dict())
    assert type(model).__name__ == "Data2VecTextForMaskedLM" and not loaded.report.missing
    with torch.no_grad():
        want = hf(torch.from_numpy(IDS)).logits.numpy()
    assert np.abs(np.asarray(model.apply(variables, input_ids=IDS).logits) - want).max() <= 1e-5
    same = flatten_variables(zoo.from_pretrained(TEXT).variables)
    assert all(np.array_equal(same[k], v) for k, v in flatten_variables(variables).items())
    # the variables own their memory: changing the state dict afterwards changes nothing
    before = np.asarray(variables["params"]["lm_head"]["bias"]).copy()
    with torch.no_grad():
        hf.lm_head.bias.add_(1.0)
    assert np.array_equal(np.asarray(variables["params"]["lm_head"]["bias"]), before)
    with pytest.raises(KeyMappingError, match="parameters missing"):
        zoo.from_state_dict({k: v for k, v in state.items() if "layer.0." not in k}, model.config)


def test_wrong_variables_get_a_message_that_says_what_to_do(tmp_path):
    model, variables = zoo.from_pretrained(TEXT)
    with pytest.raises(ValueError, match="wrapped twice"):
        check_variables({"params": variables})
    with pytest.raises(ValueError, match=r"wrapped twice"):
        zoo.save_pretrained(tmp_path / "out", model, {"params": variables})
    with pytest.raises(ValueError, match=r"bare params tree"):
        zoo.export_pytorch(tmp_path / "pt", model, variables["params"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "pt").exists()
    with pytest.raises(ValueError, match="unknown variable collections"):
        check_variables({"params": {}, "cache": {}})
    assert pack_variables({"a/b": 1, "batch_stats/c/mean": 2}) == {"params": {"a": {"b": 1}},
                                                                   "batch_stats": {"c": {"mean": 2}}}
