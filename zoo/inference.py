"""Run a loaded model on one input and name its predictions (what ``zoo run`` prints).

    model, variables = zoo.from_pretrained(directory)
    kind = input_kind(model)                          # "text", "audio", "image", "image_text" or "prompt"
    pred = predict_text(model, variables, [[0, 31, 7, 2]])
    pred = predict_audio(model, variables, samples, rate, directory=directory)
    pred = predict_image(model, variables, load_image(path), directory=directory)
    pred = zero_shot(model, variables, image, ids, mask, names=["a cat", "a dog"], directory=directory)

Each returns a :class:`Prediction`: the head's output turned into names (top labels with
probabilities, a transcription, per-token / per-frame labels, a segmentation map, ...).
The preprocessors are the checkpoint's (:mod:`zoo.preprocessing.from_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zoo.nn.inputs import check_inputs
from zoo.preprocessing import (
    audio_feature_extractor_for,
    ctc_decoder_for,
    image_processor_for,
    label_shares,
    to_mono,
    top_labels,
)


@dataclasses.dataclass
class Prediction:
    """What a head predicts for one input; the fields its head does not give are None.

    architecture: the model class name. num_tokens: text input length.
    image_size / processed_size: ``(width, height)`` of the input image and of the model input.
    labels: ``[(name, probability)]`` most likely first (classifiers, zero-shot scores).
    token_top_ids: ``[L, k]`` most likely ids per position (masked / causal LM) with ``input_ids [L]``.
    token_labels / frame_labels: the argmax label per token / audio frame.
    answer_span: ``(start, end)`` token indices (question answering).
    transcription: CTC greedy decoding.
    label_map: ``[H, W]`` class per pixel at the input image size (segmentation), with
      ``segment_shares``: ``[(name, share of pixels)]`` largest first.
    hidden: ``(shape, mean, std)`` of ``last_hidden_state`` (base models).
    """

    architecture: str
    num_tokens: int | None = None
    image_size: tuple[int, int] | None = None
    processed_size: tuple[int, int] | None = None
    labels: list[tuple[Any, float]] | None = None
    input_ids: np.ndarray | None = None
    token_top_ids: np.ndarray | None = None
    token_labels: list | None = None
    frame_labels: list | None = None
    answer_span: tuple[int, int] | None = None
    transcription: str | None = None
    label_map: np.ndarray | None = None
    segment_shares: list[tuple[Any, float]] | None = None
    hidden: tuple[tuple[int, ...], float, float] | None = None


def input_kind(model) -> str:
    """What ``model`` takes: ``"prompt"`` (IDEFICS: interleaved text and images, for ``zoo
    generate``), ``"image_text"`` (GroupViT), ``"image"``, ``"audio"`` or ``"text"``."""
    if model.config.model_type == "idefics":
        return "prompt"
    inputs = model.dummy_inputs(model.config)
    if "pixel_values" in inputs:
        return "image_text" if "input_ids" in inputs else "image"
    return "audio" if "input_values" in inputs else "text"


def _hidden(out) -> tuple[tuple[int, ...], float, float]:
    h = np.asarray(out.last_hidden_state)
    return h.shape, float(h.mean()), float(h.std())


def _id2label(config) -> Mapping[int, str]:
    return dict(config.id2label or {})


def predict_text(model, variables: Mapping, input_ids, *, top_k: int = 5) -> Prediction:
    """``input_ids [1, L]`` (or ``[L]``) through a text model; ids must be in ``[0, vocab_size)``
    (:func:`zoo.check_inputs` refuses others: inside jit they would be clamped silently)."""
    ids = np.asarray(input_ids)
    ids = ids[None] if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"predict_text takes one non-empty sequence of token ids, got shape {ids.shape}")
    cfg = model.config
    check_inputs(cfg, input_ids=ids)
    name = type(model).__name__
    out = model.apply(variables, input_ids=ids[:, None] if name.endswith("ForMultipleChoice") else ids)
    pred = Prediction(architecture=name, num_tokens=int(ids.shape[-1]), input_ids=ids[0])
    if hasattr(out, "logits") and name.endswith(("MaskedLM", "CausalLM")):
        pred.token_top_ids = np.argsort(-np.asarray(out.logits[0]), axis=-1)[:, :top_k]
    elif name.endswith(("SequenceClassification", "MultipleChoice")):
        pred.labels = top_labels(np.asarray(out.logits[0]), _id2label(cfg), top_k)
    elif name.endswith("TokenClassification"):
        labels = _id2label(cfg)
        pred.token_labels = [labels.get(int(p), int(p)) for p in np.asarray(out.logits[0]).argmax(-1)]
    elif name.endswith("QuestionAnswering"):
        pred.answer_span = (int(np.argmax(out.start_logits[0])), int(np.argmax(out.end_logits[0])))
    else:
        pred.hidden = _hidden(out)
    return pred


def predict_audio(model, variables: Mapping, samples, sampling_rate: int, *,
                  directory: str | os.PathLike | None = None, top_k: int = 5) -> Prediction:
    """One waveform (``[n]``, or ``[n, channels]``, mixed to mono) through an audio model, with
    the feature extractor of ``directory``; CTC heads decode with its ``vocab.json``."""
    name = type(model).__name__
    decoder = ctc_decoder_for(directory) if name.endswith("ForCTC") else None  # fail before the model runs
    extractor = audio_feature_extractor_for(directory)
    inputs = extractor(to_mono(np.asarray(samples)), sampling_rate=sampling_rate, return_attention_mask=True)
    check_inputs(model.config, input_values=inputs["input_values"], attention_mask=inputs["attention_mask"])
    out = model.apply(variables, input_values=inputs["input_values"], attention_mask=inputs["attention_mask"])
    pred = Prediction(architecture=name)
    if decoder is not None:
        pred.transcription = decoder.decode_logits(np.asarray(out.logits))[0]
    elif name.endswith(("SequenceClassification", "XVector")):
        pred.labels = top_labels(np.asarray(out.logits[0]), _id2label(model.config), top_k)
    elif name.endswith("AudioFrameClassification"):
        labels = _id2label(model.config)
        pred.frame_labels = [labels.get(int(p), int(p)) for p in np.asarray(out.logits[0]).argmax(-1)]
    else:
        pred.hidden = _hidden(out)
    return pred


def predict_image(model, variables: Mapping, image, *, directory: str | os.PathLike | None = None,
                  top_k: int = 5) -> Prediction:
    """A PIL image through a vision model, with the image processor of ``directory``;
    segmentation heads give ``label_map`` at the image's size."""
    import jax

    processor = image_processor_for(directory, model.config)
    pixel_values = processor(image)["pixel_values"]
    check_inputs(model.config, pixel_values=pixel_values)
    out = jax.jit(lambda v, x: model.apply(v, x))(variables, pixel_values)
    name = type(model).__name__
    pred = Prediction(architecture=name, image_size=(image.width, image.height),
                      processed_size=(pixel_values.shape[3], pixel_values.shape[2]))
    if name.endswith("ImageClassification"):
        pred.labels = top_labels(np.asarray(out.logits[0]), _id2label(model.config), top_k)
    elif name.endswith("SemanticSegmentation"):
        pred.label_map = processor.post_process_semantic_segmentation(
            np.asarray(out.logits), target_sizes=[(image.height, image.width)])[0]
        pred.segment_shares = label_shares(pred.label_map, _id2label(model.config), top_k)
    else:
        pred.hidden = _hidden(out)
    return pred


def zero_shot(model, variables: Mapping, image, input_ids, attention_mask, *, names: Sequence[str],
              directory: str | os.PathLike | None = None, top_k: int = 5, segment: bool = False) -> Prediction:
    """GroupViT: the probabilities of the texts ``input_ids [T, L]`` (named ``names``) for the
    image, and with ``segment`` the zero-shot segmentation at the image's size (``label_map``:
    the text index per pixel)."""
    import jax

    from zoo.nn.resize import resize

    if len(names) != len(input_ids):
        raise ValueError(f"{len(names)} names for {len(input_ids)} texts")
    pixel_values = image_processor_for(directory, model.config)(image)["pixel_values"]
    check_inputs(model.config, input_ids=np.asarray(input_ids), attention_mask=np.asarray(attention_mask),
                 pixel_values=pixel_values)
    out = jax.jit(lambda v, i, m, x: model.apply(v, input_ids=i, attention_mask=m, pixel_values=x,
                                                 output_segmentation=segment))(
        variables, np.asarray(input_ids), np.asarray(attention_mask), pixel_values)
    pred = Prediction(architecture=type(model).__name__, image_size=(image.width, image.height),
                      processed_size=(pixel_values.shape[3], pixel_values.shape[2]))
    pred.labels = top_labels(np.asarray(out.logits_per_image[0]), list(names), top_k)
    if segment:
        seg = resize(out.segmentation_logits[0], (image.height, image.width), axes=(1, 2))  # [T, H, W]
        pred.label_map = np.asarray(seg).argmax(0)
        pred.segment_shares = label_shares(pred.label_map, list(names), top_k)
    return pred


__all__ = ["Prediction", "input_kind", "predict_audio", "predict_image", "predict_text", "zero_shot"]
