"""Training checkpoints with orbax: save every N steps, keep the last K, resume exactly,
restore onto a mesh of another shape.

The training state is any pytree of arrays (``jax.Array``, possibly sharded over a mesh,
typed PRNG keys included; numpy arrays and Python scalars also work) and travels with a
small JSON metadata dict that the caller fills with whatever a resumed run needs to
continue exactly where it stopped: the data position, the epoch, the data seed, the
recipe::

    from zoo.checkpoint import Checkpointer, abstract_like

    with Checkpointer("runs/exp1", save_every=500, keep=3) as ckpt:
        if ckpt.latest_step() is not None:                 # resume
            state, meta = ckpt.restore(target=abstract_like(state))
        for step in range(int(state["step"]) + 1, total + 1):
            state = train_step(state, next_batch(meta))
            ckpt.save(step, state, metadata=meta)          # writes when step % 500 == 0

``restore`` places every array on the sharding of ``target`` (``jax.ShapeDtypeStruct`` s
with a ``.sharding``, or concrete arrays whose sharding is used; :func:`abstract_like`
turns a state into the former), or on ``shardings=``. The saved layout does not matter:
a state saved on ``data=2,fsdp=2,tensor=2`` restores onto ``fsdp=8`` or one device, and
each device reads only its own slices.

On disk (orbax's ``CheckpointManager`` layout)::

    runs/exp1/500/state/   the arrays (OCDBT + zarr, each array in chunks by shard)
    runs/exp1/500/meta/    the JSON metadata
    runs/exp1/500/_CHECKPOINT_METADATA

Writes are atomic: orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>/`` and renames
it to ``<step>/`` once every file is complete (on object stores without an atomic rename,
``gs://``, a ``commit_success.txt`` written last marks completion instead). A run killed
mid-save leaves only a temporary directory: it is never listed as a step, and is deleted
when the next :class:`Checkpointer` opens the directory. A finalized step whose files were
damaged later raises :class:`CorruptCheckpointError` naming the step (restore another one
with ``step=``).

Many hosts: create the :class:`Checkpointer` and call ``save``, ``restore``, ``wait`` and
``close`` on EVERY process, with the same arguments, on a directory all processes share
(a network filesystem or ``gs://``). Orbax coordinates them: each array shard is written
once, by the process that holds its primary replica, the metadata and the step directory
by the primary process, and the step is finalized after all processes have finished;
every process then restores the slices its own devices need. Nothing in this module
assumes a single process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from converters.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError

STATE, META = "state", "meta"  # the two items of a step directory


class StateMismatchError(CheckpointError):
    """The restore target does not have the structure or the shapes of the saved state."""


def abstract_like(tree: Any) -> Any:
    """``tree`` with every ``jax.Array`` replaced by a ``jax.ShapeDtypeStruct`` of its shape,
    dtype and sharding: a restore target that allocates nothing. ``ShapeDtypeStruct`` s,
    numpy arrays and Python scalars are kept as they are (numpy arrays and scalars restore
    as such)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x,
        tree)


def with_shardings(target: Any, shardings: Any) -> Any:
    """``target`` (arrays or ``ShapeDtypeStruct`` s) as ``ShapeDtypeStruct`` s placed on
    ``shardings``: one ``jax.sharding.Sharding`` for every array, or a tree of shardings
    with the structure of ``target``."""
    target = abstract_like(target)
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, target)
    try:
        return jax.tree.map(_placed, target, shardings)
    except ValueError as e:
        raise StateMismatchError(f"shardings= must be one Sharding or a tree with the structure of the target: {e}") \
            from None


def _placed(leaf, sharding):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
    return leaf  # a numpy array or a Python scalar restores as such


class Checkpointer:
    """Orbax checkpoints of a training state and its JSON metadata in ``directory``.

    save_every: ``save(step, ...)`` writes only when ``step % save_every == 0`` (or with
      ``force=True``).
    keep: how many of the most recent steps are kept (older ones are deleted after each
      save); None keeps all.
    async_: save in a background thread: ``save`` returns once the arrays are copied to
      host memory, and :meth:`wait` (or :meth:`close`, or the next ``save``) waits for the
      write. A checkpoint is only on disk, and only listed, once finalized.

    Restoring a step older than the latest does not delete the later ones, and orbax skips
    saves at steps up to the latest: to branch off an older step, use another directory.

    Use it as a context manager, or call :meth:`close`. See the module docstring for the
    on-disk layout, atomicity and many hosts.
    """

    def __init__(self, directory: str | os.PathLike, *, save_every: int = 1, keep: int | None = None,
                 async_: bool = False):
        if not isinstance(save_every, int) or isinstance(save_every, bool) or save_every < 1:
            raise ValueError(f"save_every must be a positive integer, got {save_every!r}")
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            raise ValueError(f"keep must be a positive integer or None (keep all), got {keep!r}")
        self.directory = directory
        self.save_every, self.keep = save_every, keep
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.FixedIntervalPolicy(save_every),
            preservation_policy=policies.LatestN(keep),
            enable_async_checkpointing=async_,
            cleanup_tmp_directories=True,  # what a run killed mid-save left behind
            create=True,
        )
        handlers = ocp.handlers.create_default_handler_registry(  # known before any save, for item_metadata
            **{STATE: ocp.handlers.StandardCheckpointHandler(), META: ocp.handlers.JsonCheckpointHandler()})
        self._manager = ocp.CheckpointManager(os.fspath(directory), options=options, handler_registry=handlers)

    # ------------------------------------------------------------------------ steps
    def all_steps(self) -> list[int]:
        """The finalized steps in the directory, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The most recent finalized step, or None when there is none."""
        return self._manager.latest_step()

    # ------------------------------------------------------------------------- save
    def save(self, step: int, state: Any, metadata: Mapping[str, Any] | None = None, *, force: bool = False) -> bool:
        """Writes ``state`` and ``metadata`` as ``step`` when ``step % save_every == 0`` or
        ``force``; returns whether it did.

        As orbax, it also skips (returns False) a step that is not after the latest saved
        one; ``force=True`` on a step that exists raises CheckpointError. ``metadata`` must
        be JSON-serialisable (checked before anything is written). Call it on every process.
        """
        metadata = {} if metadata is None else dict(metadata)
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as e:
            raise TypeError(f"checkpoint metadata must be JSON-serialisable (plain dicts, lists, str, "
                            f"int, float, bool, None): {e}") from None
        if force and step in self._manager.all_steps():
            raise CheckpointError(f"checkpoint step {step} already exists in {self.directory}")
        return self._manager.save(step, force=force, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(metadata)}))

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` (without ``force``) would write: ``step`` is a multiple
        of ``save_every`` after the latest saved step."""
        return self._manager.should_save(step)

    def wait(self) -> None:
        """Blocks until an asynchronous save has finished (no-op otherwise)."""
        self._manager.wait_until_finished()

    # ---------------------------------------------------------------------- restore
    def restore(self, step: int | None = None, *, target: Any = None, shardings: Any = None) -> tuple[Any, dict]:
        """``(state, metadata)`` of ``step`` (default: the latest).

        target: the state's tree with ``jax.ShapeDtypeStruct`` leaves carrying a
          ``.sharding`` (:func:`abstract_like`), or concrete arrays whose sharding is used:
          each array is restored onto that sharding, whatever the mesh it was saved from,
          and cast to its dtype (a ``ShapeDtypeStruct`` without sharding, as
          ``jax.eval_shape`` gives, restores onto the saved sharding). The result has the tree type of ``target`` (optax states,
          dataclasses). Without a target, the tree comes back as saved (containers as dicts
          and lists) on the saved shardings, which needs the same devices, or on ``shardings``.
        shardings: where to place the arrays instead: one ``jax.sharding.Sharding`` for all
          of them, or a tree with the structure of ``target``.

        Raises CheckpointNotFoundError (no step at all, or not this one),
        StateMismatchError (a path or a shape of ``target`` differs from the saved state;
        the message names the path), CorruptCheckpointError (the step's files cannot be read).
        """
        self.wait()
        step = self._resolve_step(step)
        saved = self._saved_tree(step)
        if target is None and shardings is not None:
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)
        if target is not None:
            target = abstract_like(target) if shardings is None else with_shardings(target, shardings)
            self._check_target(step, saved, target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}))
        except Exception as e:  # tensorstore / orbax errors on damaged files
            raise self._corrupt(step, e) from e
        return restored[STATE], dict(restored[META] or {})

    def _resolve_step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointNotFoundError(
                    f"no checkpoint in {self.directory}: it holds no finalized step (a step directory "
                    f"named by its number; partly written '*.orbax-checkpoint-tmp-*' ones do not count)")
            return step
        if step not in self._manager.all_steps():
            self._manager.reload()  # written by another job since this one listed the directory?
            if step not in self._manager.all_steps():
                raise CheckpointNotFoundError(f"checkpoint step {step} does not exist in {self.directory}; "
                                              f"the steps there are {self.all_steps()}")
        return step

    def _saved_tree(self, step: int) -> Any:
        """The saved state's tree of orbax array metadata (shape, dtype) for ``step``."""
        try:
            tree = self._manager.item_metadata(step)[STATE]
        except Exception as e:
            raise self._corrupt(step, e) from e
        if tree is None:
            raise self._corrupt(step, FileNotFoundError(f"no '{STATE}' item"))
        return tree.tree

    def _check_target(self, step: int, saved: Any, target: Any) -> None:
        have, want = _shapes(saved), _shapes(target)
        where = f"checkpoint step {step} in {self.directory}"
        problems = [f"{p}: the target has shape {want[p]}, {where} has {have[p]}"
                    for p in want if p in have and have[p] != want[p]]
        problems += [f"the target has {p}, which {where} lacks" for p in want if p not in have]
        problems += [f"{where} has {p} {have[p]}, which the target lacks" for p in have if p not in want]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise StateMismatchError("the restore target does not match the saved state: "
                                     + "; ".join(problems[:5]) + more)

    def _corrupt(self, step: int, error: Exception) -> CorruptCheckpointError:
        reason = str(error).split(" [tensorstore_spec")[0].strip().splitlines()
        reason = reason[0][:300] if reason else type(error).__name__
        return CorruptCheckpointError(
            f"checkpoint step {step} in {self.directory} could not be read, its files are damaged or "
            f"incomplete ({type(error).__name__}: {reason}); restore another step with step= "
            f"(the steps there are {self.all_steps()})")

    # --------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Waits for a pending save and releases orbax's threads. Call it on every process."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Checkpointer({os.fspath(self.directory)!r}, save_every={self.save_every}, keep={self.keep}, "
                f"steps={self.all_steps()})")


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``/``-joined path -> stored shape of every leaf (a typed PRNG key as its key data)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            shape = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype)).shape
        flat[jax.tree_util.keystr(path, simple=True, separator="/")] = shape
    return flat


__all__ = ["Checkpointer", "CheckpointError", "CheckpointNotFoundError", "CorruptCheckpointError",
           "StateMismatchError", "abstract_like", "with_shardings"]
