"""zoo.preprocessing.Tokenizer against HF transformers' fast tokenizers (AutoTokenizer), on tiny
tokenizers trained at test time (BPE byte-level, BPE + Metaspace with byte fallback, Unigram,
WordPiece) and wrapped in each family's HF class."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from zoo.preprocessing import Tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
transformers.logging.set_verbosity_error()

from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A photo of a red square and a blue circle!",
    "Hello world, hello zoo: models in JAX and Flax.",
    "Ünïcödé wörds, naïve café, 東京 and emoji 🙂 too.",
    "Don't stop; it's what we've done, isn't it? Yes.",
    "numbers 12345 and 3.14 plus symbols #@$%^&*()",
] * 3

TEXTS = [
    "The quick brown fox.",
    "hello   world  ",
    "",
    "Ünïcödé café 東京 🙂",
    "Don't stop , it 's fine .",
    "mask <mask> and [MASK] , tokens <s> </s> [SEP] <|endoftext|> in text",
    "a photo of a red square and a blue circle and more words to make it long enough to truncate",
]


def _bpe_vocab_merges(tok):
    spec = json.loads(tok.to_str())["model"]
    return spec["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]


def roberta():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab, merges = _bpe_vocab_merges(tok)
    return transformers.RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=24)


def llama():
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    vocab, merges = _bpe_vocab_merges(tok)
    hf = transformers.LlamaTokenizerFast(vocab=vocab, merges=merges, add_bos_token=True)
    hf.add_special_tokens({"pad_token": "<unk>"})
    return hf


def big_bird():
    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=150, unk_token="<unk>",
        special_tokens=["<pad>", "</s>", "<s>", "<unk>", "[SEP]", "[MASK]", "[CLS]"]))
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    return transformers.BigBirdTokenizerFast(vocab=vocab)


def clip():
    tok = tokenizers.Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, end_of_word_suffix="</w>", special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab, merges = _bpe_vocab_merges(tok)
    return transformers.CLIPTokenizerFast(vocab=vocab, merges=merges)


def wordpiece():
    """A BERT-like generic PreTrainedTokenizerFast: token_type_ids, cleanup on, left truncation."""
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        clean_up_tokenization_spaces=True, truncation_side="left", extra_special_tokens=["<extra>"])


FAMILIES = {"roberta": roberta, "llama": llama, "big_bird": big_bird, "clip": clip, "wordpiece": wordpiece}

CALLS = [
    dict(),
    dict(padding=True),
    dict(padding="longest", padding_side="left"),
    dict(padding="max_length", max_length=20, truncation=True),
    dict(truncation=True, max_length=7),
    dict(max_length=6),  # max_length alone turns truncation on (HF)
    dict(padding=True, add_special_tokens=False),
    dict(padding=True, return_token_type_ids=True, return_attention_mask=False),
    dict(padding="max_length", max_length=16, truncation="longest_first", padding_side="right"),
    dict(padding=True, pad_to_multiple_of=8),
]


def _hf_call(hf, texts, kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf(texts, **kw)


def _same_as_hf(ours, hf):
    assert len(ours) == len(hf)
    assert ours.all_special_ids == hf.all_special_ids
    assert ours.all_special_tokens == hf.all_special_tokens
    for name in ("pad", "eos", "bos", "unk", "sep", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
    assert ours.padding_side == hf.padding_side
    assert ours.model_max_length == hf.model_max_length
    for kw in CALLS:
        for texts in (TEXTS, TEXTS[0], TEXTS[3:4]):
            want = dict(_hf_call(hf, texts, kw))
            assert ours(texts, **kw) == want, (kw, texts)
        want = _hf_call(hf, TEXTS[:2], {**kw, "padding": kw.get("padding") or True, "return_tensors": "np"})
        got = ours(TEXTS[:2], **{**kw, "padding": kw.get("padding") or True, "return_tensors": "np"})
        assert list(got) == list(want)
        for key in got:
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), (kw, key)
    for text in TEXTS:
        assert ours.encode(text) == hf.encode(text)
        ids = hf(text)["input_ids"]
        assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
        assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == hf.convert_ids_to_tokens(
            ids, skip_special_tokens=True)
        assert ours.convert_tokens_to_ids(hf.convert_ids_to_tokens(ids)) == ids
        for skip in (False, True):
            for clean in (None, False, True):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    want = hf.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
                assert ours.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean) == want
    batch = hf(TEXTS, padding=True)["input_ids"]
    assert ours.batch_decode(batch, skip_special_tokens=True) == hf.batch_decode(batch, skip_special_tokens=True)
    assert ours.decode(np.asarray(batch)) == hf.decode(batch)
    assert ours.decode(np.asarray(batch[0])) == hf.decode(batch[0])
    assert ours.convert_tokens_to_ids("never-a-token") == hf.convert_tokens_to_ids("never-a-token")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_matches_hf_and_round_trips(family, tmp_path):
    src = tmp_path / "src"
    FAMILIES[family]().save_pretrained(src)
    hf = transformers.AutoTokenizer.from_pretrained(src)
    ours = Tokenizer.from_pretrained(src)
    _same_as_hf(ours, hf)

    out = tmp_path / "ours"
    ours.save_pretrained(out)
    _same_as_hf(Tokenizer.from_pretrained(out), hf)
    _same_as_hf(ours, transformers.AutoTokenizer.from_pretrained(out))


@pytest.mark.parametrize("cls, specials, suffix", [
    ("RobertaTokenizerFast", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], ""),
    ("CLIPTokenizer", ["<|startoftext|>", "<|endoftext|>"], "</w>"),
])
def test_rebuilding_classes_replace_the_file_pipeline(tmp_path, cls, specials, suffix):
    """A raw tokenizers file (Whitespace pre-tokenizer, no post-processor) declared as RoBERTa /
    CLIP: HF 5.23 rebuilds the class's byte-level pipeline and post-processor; so do we."""
    tok = tokenizers.Tokenizer(models.BPE(end_of_word_suffix=suffix))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        end_of_word_suffix=suffix))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls, "add_prefix_space": True}))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    _same_as_hf(Tokenizer.from_pretrained(tmp_path), hf)


def test_big_bird_raw_file_mask_strips_left(tmp_path):
    """A Unigram file whose special tokens are only in the vocabulary: BigBird's __init__ adds
    them, [MASK] with lstrip=True."""
    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=150, unk_token="<unk>",
        special_tokens=["<pad>", "</s>", "<s>", "<unk>", "[SEP]", "[MASK]", "[CLS]"]))
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = []
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BigBirdTokenizer"}))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer.from_pretrained(tmp_path)
    _same_as_hf(ours, hf)
    assert ours("hello [MASK] world")["input_ids"] == hf("hello [MASK] world")["input_ids"]


def test_legacy_llama_file_gets_the_metaspace_pipeline(tmp_path):
    """An older Llama tokenizer.json (normalizer Prepend + Replace, no pre-tokenizer, as on the
    Hub for IDEFICS) with tokenizer_config "LlamaTokenizer": HF 5.23 rebuilds Metaspace."""
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<image>", "<fake_token_around_image>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
         "pad_token": "<unk>", "model_max_length": 2048}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
         "additional_special_tokens": ["<image>", "<fake_token_around_image>"]}))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer.from_pretrained(tmp_path)
    _same_as_hf(ours, hf)
    texts = ["<s>User:<fake_token_around_image><image><fake_token_around_image>What is it?", " two  spaces"]
    assert ours(texts, padding=True) == dict(hf(texts, padding=True))


def test_legacy_special_tokens_map_and_added_tokens(tmp_path):
    """tokenizer_config.json without added_tokens_decoder: special_tokens_map.json and
    added_tokens.json are read (HF's legacy path)."""
    tok = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "pad_token": {"content": "[PAD]", "lstrip": False, "rstrip": False,
                                             "normalized": False, "single_word": False},
         "eos_token": "<eos>"}))
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<eos>": 4, "<new>": 5}))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer.from_pretrained(tmp_path)
    assert ours.eos_token_id == hf.eos_token_id
    texts = ["hello <new> world <eos>", "world"]
    assert ours(texts, padding=True) == dict(hf(texts, padding=True))
    assert ours.decode([2, 5, 4], skip_special_tokens=True) == hf.decode([2, 5, 4], skip_special_tokens=True)


def test_bare_tokenizer_json_is_used_as_it_is(tmp_path):
    tok = tokenizers.Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hi": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = Tokenizer.from_pretrained(tmp_path / "tokenizer.json")
    assert ours("hi there") == {"input_ids": [1, 3, 0, 2], "attention_mask": [1, 1, 1, 1]}
    assert ours.pad_token is None and ours.tokenizer_class == "TokenizersBackend"
    with pytest.raises(ValueError, match="no pad_token"):
        ours(["hi", "hi hi"], padding=True)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert ours(["hi", "x hi"]) == dict(hf(["hi", "x hi"]))


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such tokenizer directory"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="tokenizer.json: not a readable tokenizers file"):
        Tokenizer.from_pretrained(tmp_path)
    roberta().save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BigBirdTokenizer"}))
    with pytest.raises(ValueError, match="needs a Unigram model but tokenizer.json has BPE"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    ours = Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"text\[1\] is a int"):
        ours(["a", 3])
    with pytest.raises(ValueError, match="padding='sideways'"):
        ours("a", padding="sideways")
    with pytest.raises(ValueError, match="return_tensors='pt'"):
        ours("a", return_tensors="pt")
    with pytest.raises(ValueError, match="different lengths"):
        ours(["a", "a b c d"], return_tensors="np")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours("a b c", truncation=True, max_length=1) == dict(hf("a b c", truncation=True, max_length=1))
    with pytest.raises(ValueError, match="max_length must be a non-negative integer"):
        ours("a", max_length=-1)
    ours.padding_side = "left"
    assert ours(["a", "a b"], padding=True)["attention_mask"][0][0] == 0
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        ours.padding_side = "middle"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "SomethingElseTokenizer"}))
    with pytest.warns(UserWarning, match="SomethingElseTokenizer"):
        Tokenizer.from_pretrained(tmp_path)
