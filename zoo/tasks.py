"""The fine-tuning tasks of ``zoo finetune``, defined once.

Each task names the head it trains (an architecture-name suffix), its loss
(:mod:`zoo.train`), its data loader (:mod:`zoo.data`) and what its throughput counts::

    task = get_task("text_classification")
    task.head, task.loss, task.load, task.unit
    dataset = load_dataset("text_classification", "train.jsonl", checkpoint_dir=ckpt, config=cfg)
    head_architecture("data2vec-text", "text_classification")  # "Data2VecTextForSequenceClassification"

Imports point one way: this table imports ``zoo.train`` and ``zoo.data``; neither imports it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping

from zoo import data, train


@dataclasses.dataclass(frozen=True)
class Task:
    """One fine-tuning task.

    head: the architecture name suffix of the head it trains (``ForSequenceClassification``).
    loss: the :mod:`zoo.train` loss function ``(params, batch, rng, module, ...) -> (loss, aux)``.
    load: the :mod:`zoo.data` loader ``(path, *, checkpoint_dir, config, label2id, max_length)``.
    unit: what the throughput counts (``tokens``, ``audio_seconds``, ``images``).
    """

    name: str
    head: str
    loss: Callable
    load: Callable
    unit: str


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("text_classification", "ForSequenceClassification", train.sequence_classification_loss,
         data.load_text_classification, "tokens"),
    Task("speech_recognition_ctc", "ForCTC", train.ctc_loss, data.load_speech_recognition_ctc, "audio_seconds"),
    Task("image_classification", "ForImageClassification", train.image_classification_loss,
         data.load_image_classification, "images"),
)}


def get_task(name: str | None) -> Task:
    """The task ``name``; ValueError naming the choices (and the likely one) otherwise."""
    if name in TASKS:
        return TASKS[name]
    if name is None:
        raise ValueError(f"no task: set \"task\" in the recipe or pass --task, one of {', '.join(TASKS)}")
    close = difflib.get_close_matches(str(name), list(TASKS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown task {name!r}{hint}; choose one of {', '.join(TASKS)}")


def load_dataset(task: str, path: str | os.PathLike, *, checkpoint_dir: str | os.PathLike | None, config,
                 label2id: Mapping[str, int] | None = None, max_length: int | None = None) -> data.FinetuneDataset:
    """The dataset of ``task`` at ``path`` (formats: :mod:`zoo.data`).

    config: the checkpoint's zoo config; checkpoint_dir: its directory (``tokenizer.json``,
    ``vocab.json``, ``preprocessor_config.json``), or None. label2id: class name -> id, for
    the classification tasks. max_length: tokens (text) or samples (audio).
    """
    return get_task(task).load(path, checkpoint_dir=checkpoint_dir, config=config, label2id=label2id,
                               max_length=max_length)


def head_architecture(model_type: str, task: str) -> str:
    """The architecture of family ``model_type`` that trains ``task``; ValueError if none."""
    from zoo.registry import get_family

    head = get_task(task).head
    family = get_family(model_type)
    names = [a for a in family.architectures if a.endswith(head)]
    if not names:
        raise ValueError(f"{model_type} has no {head[3:]} head for the task {task!r} (its "
                         f"architectures: {', '.join(family.architectures)})")
    return names[0]


__all__ = ["TASKS", "Task", "get_task", "head_architecture", "load_dataset"]
