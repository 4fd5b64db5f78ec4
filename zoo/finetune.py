"""``zoo finetune``: a checkpoint, a recipe and a data set in, a fine-tuned model out.

    zoo finetune --recipe configs/finetune/text_classification.json \\
        --checkpoint facebook/data2vec-text-base --data train.jsonl --output runs/sst2 \\
        [--mesh data=2,fsdp=2,tensor=2] [--max-steps N] [--set learning_rate=1e-5]

The recipe's ``task`` picks the head (``...ForSequenceClassification``, ``...ForCTC`` or
``...ForImageClassification`` of the checkpoint's family), the loss and the data format
(one table: :data:`zoo.tasks.TASKS`; formats in :mod:`zoo.data`). Classification labels
come from the data: when they are not the checkpoint's, the classifier is built for them
and initialised (HF's ``ignore_mismatched_sizes``). The run writes into ``--output``::

    recipe.json          the recipe as run (after --set)
    metrics.jsonl        one line per logged step: loss, grad_norm, learning_rate, accuracy,
                         steps/s and tokens (audio seconds, images) per second
    checkpoints/<step>/  orbax train state (params, Adam moments, rng) + the data position
    model/               the fine-tuned model as a zoo directory (config.json with the labels,
                         the tokenizer / vocab / preprocessor files copied), `zoo run` ready

Running the same command again resumes from the latest checkpoint in ``--output`` and
continues exactly (the data order is a function of the recipe's seed and the step).
A run killed at any point (SIGKILL included; ``tests/test_crash_safety.py``) resumes from the
last finalized checkpoint (orbax renames a step into place once complete; a half-written
``<step>.orbax-checkpoint-tmp`` is never listed and is deleted on the next start) and logs
the same losses as an uninterrupted run: a step's metrics line is written before its
checkpoint, lines after the checkpoint (and a half-written last line) are dropped on resume,
``model/`` appears all at once (and is written by the rerun if the killed run had not).

Many hosts: start the same command on every host (Slurm, Open MPI, TPU pods are detected;
or ``--coordinator HOST:PORT --num-processes N --process-id I``, or the ``JAX_*``
variables, see :mod:`zoo.distributed`). The mesh spans all hosts' devices; each process
reads only the rows of each batch that its devices hold; orbax writes each array shard
once and every process restores its own; process 0 writes the metrics and ``model/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from converters.fileio import crash_point
from converters.writers import write_bytes_atomically
from zoo import distributed, parallel, pretrained, train
from zoo.tasks import get_task, head_architecture, load_dataset

METRICS_FILE, RECIPE_FILE, CHECKPOINTS_DIR, MODEL_DIR = "metrics.jsonl", "recipe.json", "checkpoints", "model"


@dataclasses.dataclass
class FinetuneResult:
    """What :func:`finetune` did: steps run in this call, where it started (a resumed step or
    0), and the first / last logged losses of this call."""

    output: Path
    architecture: str
    start_step: int
    end_step: int
    losses: list[float]
    model_dir: Path | None


def apply_overrides(recipe: train.Recipe, overrides: Mapping[str, Any] | None) -> train.Recipe:
    """``recipe`` with fields replaced (``--set key=value``; unknown keys are errors)."""
    if not overrides:
        return recipe
    return train.Recipe.from_dict({**recipe.to_dict(), **overrides}, source="--set")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["learning_rate=1e-3", "frozen=[\\"a/\\"]"]`` -> dict; values are JSON, else strings."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _labelled_config(config, classes: list[str] | None):
    """``config`` with the data's labels (unchanged when they already are its labels)."""
    if classes is None:
        return config
    id2label = dict(enumerate(classes))
    if dict(config.id2label or {}) == id2label and config.num_labels == len(classes):
        return config
    data = config.to_dict()
    data.update(id2label={str(i): c for i, c in id2label.items()}, label2id={c: i for i, c in id2label.items()},
                num_labels=len(classes))
    return type(config).from_dict(data)


def _checkpoint_labels(config, architecture: str) -> dict[str, int] | None:
    """The checkpoint's label names when it already is a classifier of this head (its
    ``id2label`` not HF's ``LABEL_i`` defaults): string labels of the data map onto them."""
    if architecture not in (config.architectures or ()) or not config.id2label:
        return None
    names = dict(config.id2label)
    if all(v == f"LABEL_{k}" for k, v in names.items()):
        return None
    return {v: k for k, v in names.items()}


class _Log:
    """metrics.jsonl (process 0) and the progress bar."""

    def __init__(self, output: Path, start: int, end: int, unit: str, progress: bool):
        self.primary = distributed.is_primary()
        self.path = output / METRICS_FILE
        self.unit = unit
        if self.primary:
            lines = _kept_lines(self.path, start) if self.path.exists() else []
            text = "".join(ln + "\n" for ln in lines)
            if not self.path.exists() or self.path.read_text() != text:
                _write_text_atomically(self.path, text)
        self.bar = None
        if progress and self.primary and end > start:
            from tqdm import tqdm

            self.bar = tqdm(total=end, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True,
                            desc="finetune")

    def write(self, record: dict) -> None:
        if not self.primary:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        crash_point("metrics-written")
        if self.bar is not None:
            self.bar.update(record["step"] - self.bar.n)
            post = {"loss": f"{record['loss']:.4f}"}
            if "accuracy" in record:
                post["acc"] = f"{record['accuracy']:.3f}"
            if record.get("steps_per_second"):
                post["step/s"] = f"{record['steps_per_second']:.2f}"
                post[self.unit.replace("audio_seconds", "audio s") + "/s"] = \
                    f"{record[f'{self.unit}_per_second']:.1f}"
            self.bar.set_postfix(post, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _kept_lines(path: Path, start: int) -> list[str]:
    """The lines of a resumed run's metrics log up to step ``start`` (those after the
    checkpoint are run again); a line a killed run left half-written is dropped."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= start:
            kept.append(line)
    return kept


def _write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode())


class _Meter:
    """Throughput between logged steps (checkpoint writes excluded; the first interval,
    compilation included, is reported as such) and the logged losses."""

    def __init__(self, unit: str, epochs_per_step: float):
        self.unit, self.epochs_per_step = unit, epochs_per_step
        self.began = self.tick = time.perf_counter()
        self.first = True
        self.units, self.steps, self.paused = 0.0, 0, 0.0
        self.losses: list[float] = []

    def record(self, step: int, metrics) -> dict:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        record = {"step": step, **metrics, "epoch": step * self.epochs_per_step}
        if self.first:
            record["compile_and_first_steps_s"] = round(now - self.began, 3)
        else:
            busy = now - self.tick - self.paused
            record["steps_per_second"] = self.steps / busy
            record[f"{self.unit}_per_second"] = _all_processes_sum(self.units) / busy
        self.first, self.tick, self.units, self.steps, self.paused = False, now, 0.0, 0, 0.0
        self.losses.append(metrics["loss"])
        return record


def finetune(recipe: train.Recipe | str | os.PathLike, checkpoint: str | os.PathLike, data: str | os.PathLike, *,
             output: str | os.PathLike, task: str | None = None, mesh: str | Mapping[str, int] | None = None,
             max_steps: int | None = None, overrides: Mapping[str, Any] | None = None,
             save_every: int | None = None, keep: int = 2, log_every: int = 1, max_length: int | None = None,
             scan_layers: bool = False, progress: bool = True, save_model: bool = True) -> FinetuneResult:
    """Fine-tunes ``checkpoint`` on ``data`` as ``recipe`` says (see the module docstring).

    recipe: a :class:`zoo.train.Recipe` or its JSON file; ``overrides`` replace fields.
    task: overrides ``recipe.task``. mesh: ``"data=2,fsdp=2,tensor=2"`` or sizes (default:
      data parallel over every device). max_steps: stop after this step (default: the
      recipe's ``total_steps``; the schedule still runs to ``total_steps``).
    save_every: checkpoint interval in steps (default: every 10% of the run, at least 1);
      the last step is always saved; ``keep`` checkpoints are kept.
    max_length: text: tokens per row; audio: samples per row (default: the longest).
    scan_layers: run the encoder layers as one ``nn.scan`` where the model supports it.
    """
    from zoo.checkpoint import Checkpointer, abstract_like
    from zoo.data import batch_indices

    if not isinstance(recipe, train.Recipe):
        recipe = train.Recipe.from_json(recipe)
    recipe = apply_overrides(recipe, overrides)
    task = task or recipe.task
    spec = get_task(task)
    if recipe.task not in (None, task):
        recipe = dataclasses.replace(recipe, task=task)
    end = recipe.total_steps if max_steps is None else max_steps
    if end is None:
        raise ValueError("the recipe has no total_steps (schedule 'constant'): pass --max-steps")
    output = Path(output)
    source = pretrained.resolve_checkpoint(checkpoint)
    _, config = pretrained.read_config(source)
    architecture = head_architecture(config.model_type, task)

    dataset = load_dataset(task, data, checkpoint_dir=source, config=config,
                           label2id=_checkpoint_labels(config, architecture), max_length=max_length)
    config = _labelled_config(config, dataset.classes)
    global_rows = recipe.batch_size or 8 * recipe.accumulate_steps
    recipe = dataclasses.replace(recipe, batch_size=global_rows)

    mesh = parallel.make_mesh(mesh if mesh else {"data": len(jax.devices())})
    rows = distributed.process_rows(mesh, global_rows)
    kwargs = {"scan_layers": True} if scan_layers else {}
    loaded = pretrained.from_pretrained(source, architecture, config=config, mesh=mesh,
                                        ignore_mismatched_sizes=True, rng=recipe.seed, **kwargs)
    model, report = loaded.model, loaded.report
    state = train.TrainState.create(model, loaded.variables, recipe, mesh=mesh)
    del loaded
    step_fn = train.make_train_step(model, recipe, spec.loss, mesh=mesh)

    if distributed.is_primary():
        output.mkdir(parents=True, exist_ok=True)
        _write_text_atomically(output / RECIPE_FILE, json.dumps(recipe.to_dict(), indent=2) + "\n")
        _say(f"{architecture} from {source} ({report.summary()})")
        _say(f"data: {dataset.describe()}; mesh {dict(mesh.shape)} over {jax.process_count()} process(es); "
             f"batch {global_rows} rows per step")
    distributed.sync("zoo-finetune-output")
    meta = {"task": task, "architecture": architecture, "classes": dataset.classes, "examples": len(dataset),
            "batch_size": global_rows, "seed": recipe.seed, "recipe": recipe.to_dict()}
    save_every = save_every or max(1, end // 10)
    start = 0
    with Checkpointer(output / CHECKPOINTS_DIR, save_every=save_every, keep=keep) as ckpt:
        if ckpt.latest_step() is not None:
            state, saved = ckpt.restore(target=abstract_like(state))
            _check_resumable(saved, meta, output)
            start = int(saved["step"])
            if distributed.is_primary():
                _say(f"resuming from step {start} in {output / CHECKPOINTS_DIR}")
        log = _Log(output, start, end, spec.unit, progress)
        meter = _Meter(spec.unit, global_rows / len(dataset))
        pending = None  # (step, metrics) of the last step, read once the next one is dispatched
        try:
            for step in range(start, end):
                indices = batch_indices(len(dataset), global_rows, step, recipe.seed)[rows]
                local = dataset.batch(indices)  # read while the device runs the previous step
                _check_batch(local, config, task)
                units = dataset.units(local)
                if not getattr(dataset, "uses_attention_mask", True):  # e.g. wav2vec2-style extractors
                    local = {k: v for k, v in local.items() if k != "attention_mask"}
                state, metrics = step_fn(state, distributed.global_batch(local, mesh, global_rows))
                if pending is not None:
                    log.write(meter.record(*pending))
                meter.steps, meter.units = meter.steps + 1, meter.units + units
                done = step + 1
                pending = (done, metrics) if done % log_every == 0 or done == end else None
                crash_point("train-step")
                if ckpt.should_save(done):
                    if pending is not None:  # logged before the checkpoint: a resume never loses it
                        log.write(meter.record(*pending))
                        pending = None
                    before = time.perf_counter()
                    ckpt.save(done, state, {**meta, "step": done})
                    meter.paused += time.perf_counter() - before
                    crash_point("checkpoint-saved")
            if pending is not None:
                log.write(meter.record(*pending))
            if end > start and end not in ckpt.all_steps():
                ckpt.save(end, state, {**meta, "step": end}, force=True)
        finally:
            log.close()
    model_dir = None
    if save_model and (end > start or not (output / MODEL_DIR / pretrained.CONFIG_NAME).is_file()):
        model_dir = _save_model(output, model, state, source)  # also when a killed run did not write it
    return FinetuneResult(output=output, architecture=architecture, start_step=start, end_step=max(start, end),
                          losses=meter.losses, model_dir=model_dir)


def _say(message: str) -> None:
    print(f"zoo finetune: {message}", file=sys.stderr, flush=True)


def _all_processes_sum(value: float) -> float:
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return float(np.sum(multihost_utils.process_allgather(np.asarray([value], np.float64))))


def _check_resumable(saved: Mapping[str, Any], meta: Mapping[str, Any], output: Path) -> None:
    """A run resumes only with the recipe, task, labels and data size it was started with."""
    for key in ("task", "architecture", "classes", "examples", "batch_size", "seed", "recipe"):
        if saved.get(key) != meta[key]:
            raise ValueError(f"{output} holds a run with another {key} ({saved.get(key)!r}, now {meta[key]!r}): "
                             f"it cannot be resumed with these settings; use another --output")


def _check_batch(batch: Mapping[str, np.ndarray], config, task: str) -> None:
    labels = batch["labels"]
    if task == "speech_recognition_ctc":
        real = labels[labels >= 0]
        if real.size and real.max() >= config.vocab_size:
            raise ValueError(f"a CTC label id {int(real.max())} is >= the model's vocab_size {config.vocab_size}: "
                             f"the checkpoint's vocab.json does not fit its config")
    elif labels.size and (labels.min() < 0 or labels.max() >= config.num_labels):
        raise ValueError(f"a label id is outside [0, num_labels={config.num_labels})")


def _save_model(output: Path, model, state: train.TrainState, source: Path) -> Path | None:
    """The trained variables as a zoo directory ``output/model`` (process 0 writes it)."""
    variables = distributed.to_host(state.variables)
    target = output / MODEL_DIR
    if distributed.is_primary():
        if target.exists():
            shutil.rmtree(target)
        # all or nothing (written to a temporary sibling, renamed at the end), tokenizer files included
        pretrained.save_pretrained(target, model, variables, extra_files=pretrained.auxiliary_files(source))
    distributed.sync("zoo-finetune-model")
    return target


__all__ = ["FinetuneResult", "apply_overrides", "finetune", "parse_overrides"]
