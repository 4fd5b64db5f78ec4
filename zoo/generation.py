"""Autoregressive generation inside one ``jax.jit``: a fixed-size KV cache, greedy or sampled.

``generate(module, variables, input_ids, attention_mask, max_new_tokens=N, ...)`` runs one
prefill call over the (left-padded) prompt into a cache of ``L + N`` positions, then a
``jax.lax.while_loop`` of single-token steps, all in one compiled function: no
recompilation per token, and none for new prompts of the same shape or new values of
``temperature``, ``top_p``, ``eos_token_id`` (up to 8 ids), ``pad_token_id`` or ``rng``.
The loop stops as soon as every row has produced an end-of-sequence token. It follows Hugging Face's
``generate`` (transformers 5.23) step for step, so greedy decoding equals HF's token for token:

- the prompt's ``attention_mask`` (all ones when omitted, unless ``pad_token_id`` occurs in
  the prompt and is not an eos token: then ``input_ids != pad_token_id``, as HF infers it)
  is extended with ones for the generated tokens;
- when the module's ``__call__`` takes ``position_ids`` and none are given, they are
  ``cumsum(attention_mask) - 1`` with padding at 0, and each new token gets the previous
  position + 1 (HF's generic rule, which it also applies to Data2VecText: its fairseq-style
  default positions are *not* what HF's ``generate`` uses). Given ``position_ids`` ``[B, L]``
  are continued the same way;
- ``token_type_ids`` ``[B, L]`` are continued with their last column;
- greedy decoding takes the first arg-max of the float32 logits; sampling applies, in HF's
  order, temperature, top-k and top-p (:func:`warp_logits`, equal to HF's
  ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``) and draws with
  ``jax.random.categorical`` from ``jax.random.fold_in(rng, step)``. HF's sampling defaults
  to ``top_k=50``; here ``top_k=0`` (off) is the default;
- with an ``eos_token_id`` (an int or a list), a row that produced one emits
  ``pad_token_id`` afterwards (``eos_token_id[0]`` when ``pad_token_id`` is None). No eos is
  taken from the model config: ``eos_token_id=None`` means "no stopping" (HF would fall back
  to ``generation_config.eos_token_id``).

``GenerateOutput.sequences`` is always ``[B, L + max_new_tokens]`` (static shape); columns
after an early stop hold ``pad_token_id``. HF returns ``sequences[:, :length]``.

Protocol a decoder module follows (``Data2VecTextForCausalLM``, ``BigBirdForCausalLM``, IDEFICS):

- ``module.init_cache(batch_size, max_length, dtype=None) -> KVCache``: a plain method that
  needs only the config (called on the unbound module);
- ``module.apply(variables, input_ids=[B, l], attention_mask=[B, max_length],
  position_ids=[B, l], past_key_values=cache, use_cache=True, logits_to_keep=1,
  **model_inputs)`` returns an output with ``logits`` ``[B, l or 1, V]`` and
  ``past_key_values``, the cache advanced by ``l`` positions; ``attention_mask`` spans the
  whole cache (future positions are hidden by the causal mask). ``position_ids`` and
  ``logits_to_keep`` are passed only if ``__call__`` takes them (as HF does);
- ``**model_inputs`` given to :func:`generate` go to every call. Optionally the module
  defines ``decode_inputs(self, outputs, model_inputs) -> dict``, a plain method (called
  on the unbound module, traced inside the jit) that receives the prefill ``outputs`` and
  the model inputs of the prefill (``token_type_ids`` already cut to their last column)
  and returns the model inputs of every decode step. IDEFICS uses it to swap
  ``pixel_values`` for the image hidden states the prefill computed and to keep the last
  row of ``image_attention_mask`` (``[B, L, n]`` -> ``[B, 1, n]``). The returned values
  must not change from one step to the next (they are loop constants).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from zoo.outputs import ModelOutput
from zoo.tree import check_variables

Array = jax.Array


@flax.struct.dataclass
class GenerateOutput(ModelOutput):
    """``sequences`` ``[B, L + max_new_tokens]`` (prompt, then generated tokens, then
    ``pad_token_id`` after an early stop); ``length`` (int32 scalar) the number of columns
    HF's ``generate`` returns (``L`` + steps run); ``logits`` ``[B, max_new_tokens, V]``, the
    raw float32 logits of each step (HF's ``output_logits``; zeros for steps not run), only
    with ``output_logits=True``."""

    sequences: Array
    length: Array
    logits: Array | None = None


# --- logits warpers (HF's, as pure functions; filtered entries become -inf) -------------
def warp_temperature(scores: Array, temperature) -> Array:
    """HF ``TemperatureLogitsWarper``: ``scores / temperature``, a true float32 division (XLA
    would turn a division by a broadcast scalar into a product with its rounded reciprocal)."""
    divisor = jnp.broadcast_to(jnp.asarray(temperature, scores.dtype), scores.shape)
    return scores / jax.lax.optimization_barrier(divisor)


def warp_top_k(scores: Array, top_k: int, min_tokens_to_keep: int = 1) -> Array:
    """HF ``TopKLogitsWarper``: keep the scores >= the k-th largest (ties kept); ``top_k`` static."""
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    kth = jax.lax.top_k(scores, k)[0][..., -1:]
    return jnp.where(scores < kth, -jnp.inf, scores)


def warp_top_p(scores: Array, top_p, min_tokens_to_keep: int = 1) -> Array:
    """HF ``TopPLogitsWarper``: drop the least likely tokens whose cumulative probability
    (ascending order) is <= ``1 - top_p``, keeping at least ``min_tokens_to_keep``. Tokens
    tied with the least likely kept one are all kept (HF's choice among them follows
    ``torch.sort``'s unspecified order of ties)."""
    return _drop_low_cumulative(scores, _top_p_threshold(top_p), min_tokens_to_keep)


def _top_p_threshold(top_p):
    # 1 - top_p in double precision when top_p is a Python number, as HF compares float32
    # probabilities with the Python float ``1 - top_p``.
    return 1.0 - float(top_p) if isinstance(top_p, (int, float)) else 1.0 - top_p


def _drop_low_cumulative(scores: Array, threshold, min_tokens_to_keep: int = 1) -> Array:
    ascending = jnp.sort(scores, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)  # non-decreasing
    dropped = jnp.sum(cumulative <= threshold, axis=-1, keepdims=True)  # a prefix of the ascending order
    dropped = jnp.minimum(dropped, scores.shape[-1] - min_tokens_to_keep)
    smallest_kept = jnp.take_along_axis(ascending, dropped, axis=-1)
    return jnp.where(scores < smallest_kept, -jnp.inf, scores)


def _uses_top_p(top_p) -> bool:
    return not isinstance(top_p, (int, float)) or top_p < 1.0


def warp_logits(scores: Array, temperature=1.0, top_k: int | None = 0, top_p=1.0) -> Array:
    """HF's sampling warpers in HF's order: temperature, top-k (0/None = off), top-p (1 = off)."""
    return _warp(scores, temperature, top_k, _top_p_threshold(top_p) if _uses_top_p(top_p) else None)


def _warp(scores: Array, temperature, top_k: int | None, top_p_threshold) -> Array:
    scores = warp_temperature(scores, temperature)
    if top_k:
        scores = warp_top_k(scores, top_k)
    if top_p_threshold is not None:
        scores = _drop_low_cumulative(scores, top_p_threshold)
    return scores


# --- inputs ------------------------------------------------------------------------------
def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-id lists -> ``(input_ids, attention_mask)`` int32 ``[B, max_len]``, padded on the left."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad needs a non-empty list of non-empty token-id sequences")
    length = max(len(s) for s in sequences)
    input_ids = np.full((len(sequences), length), pad_token_id, np.int32)
    attention_mask = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        input_ids[row, length - len(seq):] = seq
        attention_mask[row, length - len(seq):] = 1
    return input_ids, attention_mask


def _takes(module, name: str) -> bool:
    return name in inspect.signature(type(module).__call__).parameters


# --- generate ----------------------------------------------------------------------------
def generate(module, variables: Mapping, input_ids, attention_mask=None, *, max_new_tokens: int,
             do_sample: bool = False, temperature=1.0, top_k: int | None = 0, top_p=1.0,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             rng=None, output_logits: bool = False, **model_inputs) -> GenerateOutput:
    """Greedy or sampled continuation of ``input_ids`` ``[B, L]`` by ``max_new_tokens`` tokens.

    ``variables``: the model's variables dict (``{"params": ...}``). ``attention_mask`` ``[B, L]``
    marks real prompt tokens (left padding; see :func:`left_pad`). ``do_sample`` draws with
    ``rng`` (a ``jax.random`` key or an int seed), after ``temperature``, ``top_k`` and
    ``top_p`` (traced: new values do not recompile; ``top_k`` is static). ``**model_inputs``
    go to every model call (see the module docstring for ``decode_inputs``).
    """
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be an integer array [batch, length], got shape {input_ids.shape} "
                         f"dtype {input_ids.dtype}")
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {input_ids.shape}, "
                             f"got {attention_mask.shape}")
    if not hasattr(module, "init_cache"):
        raise ValueError(f"{type(module).__name__} has no init_cache: generate needs a decoder with a KV cache")
    top_k = int(top_k or 0)
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    concrete = lambda x: isinstance(x, (int, float))
    if concrete(temperature) and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use do_sample=False for greedy decoding), got {temperature}")
    if concrete(top_p) and not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if do_sample and rng is None:
        raise ValueError("do_sample=True needs rng (a jax.random key or an int seed)")
    rng = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
    if rng is None:
        rng = jax.random.key(0)  # unused by greedy decoding

    eos = [] if eos_token_id is None else (
        [int(eos_token_id)] if isinstance(eos_token_id, (int, np.integer)) else [int(e) for e in eos_token_id])
    if pad_token_id is None and eos:
        pad_token_id = eos[0]
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
        if pad_token_id is not None and pad_token_id not in eos:  # HF infers the mask from padding
            padded = input_ids == pad_token_id
            attention_mask = jnp.where(padded.any(), (~padded).astype(input_ids.dtype), attention_mask)

    check_variables(variables, type(module).__name__)
    model_inputs = dict(model_inputs)
    position_ids = model_inputs.pop("position_ids", None)
    return _generate(
        module, dict(variables), input_ids.astype(jnp.int32), attention_mask.astype(jnp.int32),
        None if position_ids is None else jnp.asarray(position_ids, jnp.int32), model_inputs,
        _eos_array(eos), jnp.asarray(0 if pad_token_id is None else pad_token_id, jnp.int32),
        jnp.asarray(temperature, jnp.float32),
        jnp.asarray(_top_p_threshold(top_p), jnp.float32) if _uses_top_p(top_p) else None, rng,
        max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), top_k=top_k,
        output_logits=bool(output_logits))


def _eos_array(eos: list[int]) -> Array:
    """The eos ids padded with -1 (matches no token) to a multiple of 8: no eos, one eos or
    a list of up to 8 share one compilation."""
    size = -(-max(len(eos), 1) // 8) * 8
    return jnp.asarray(eos + [-1] * (size - len(eos)), jnp.int32)


@functools.partial(jax.jit, static_argnums=0,
                   static_argnames=("max_new_tokens", "do_sample", "top_k", "output_logits"))
def _generate(module, variables, input_ids, attention_mask, position_ids, model_inputs, eos, pad,
              temperature, top_p_threshold, rng, *, max_new_tokens, do_sample, top_k,
              output_logits) -> GenerateOutput:
    batch, prompt_length = input_ids.shape
    total = prompt_length + max_new_tokens
    full_mask = jnp.concatenate([attention_mask, jnp.ones((batch, max_new_tokens), jnp.int32)], axis=1)
    pass_positions = position_ids is not None or _takes(module, "position_ids")
    # HF asks for the last position's logits only, from models that can (logits_to_keep=1)
    extra = {"logits_to_keep": 1} if _takes(module, "logits_to_keep") else {}
    if position_ids is None:
        position_ids = jnp.where(attention_mask == 0, 0, jnp.cumsum(attention_mask, axis=1) - 1)

    def call(ids, positions, cache, inputs):
        positions = {"position_ids": positions} if pass_positions else {}
        return module.apply(variables, input_ids=ids, attention_mask=full_mask, past_key_values=cache,
                            use_cache=True, **positions, **extra, **inputs)

    def select(logits, step, unfinished):
        scores = logits.astype(jnp.float32)
        if do_sample:
            scores = _warp(scores, temperature, top_k, top_p_threshold)
            tokens = jax.random.categorical(jax.random.fold_in(rng, step), scores, axis=-1).astype(jnp.int32)
        else:
            tokens = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        tokens = jnp.where(unfinished, tokens, pad)  # finished rows emit pad
        unfinished = unfinished & ~(tokens[:, None] == eos[None, :]).any(axis=1)
        return tokens, unfinished

    def record(state, logits, tokens, step):
        sequences, logits_buffer = state
        sequences = jax.lax.dynamic_update_slice(sequences, tokens[:, None], (0, prompt_length + step))
        if output_logits:
            logits_buffer = jax.lax.dynamic_update_slice(
                logits_buffer, logits.astype(jnp.float32)[:, None], (0, step, 0))
        return sequences, logits_buffer

    out = call(input_ids, position_ids, module.init_cache(batch, total), model_inputs)
    decode_inputs = {k: (v[:, -1:] if k == "token_type_ids" else v) for k, v in model_inputs.items()}
    if hasattr(module, "decode_inputs"):
        decode_inputs = module.decode_inputs(out, decode_inputs)
    next_position = position_ids[:, -1] + 1

    logits = out.logits[:, -1]
    sequences = jnp.concatenate([input_ids, jnp.full((batch, max_new_tokens), pad, jnp.int32)], axis=1)
    logits_buffer = jnp.zeros((batch, max_new_tokens, logits.shape[-1]), jnp.float32) if output_logits else None
    tokens, unfinished = select(logits, 0, jnp.ones((batch,), bool))
    buffers = record((sequences, logits_buffer), logits, tokens, 0)

    def cond(carry):
        step, _, unfinished, _, _ = carry
        return (step < max_new_tokens) & unfinished.any()

    def body(carry):
        step, tokens, unfinished, cache, buffers = carry
        o = call(tokens[:, None], (next_position + step - 1)[:, None], cache, decode_inputs)
        logits = o.logits[:, -1]
        tokens, unfinished = select(logits, step, unfinished)
        return step + 1, tokens, unfinished, o.past_key_values, record(buffers, logits, tokens, step)

    carry = (jnp.asarray(1, jnp.int32), tokens, unfinished, out.past_key_values, buffers)
    steps, _, _, _, (sequences, logits_buffer) = jax.lax.while_loop(cond, body, carry)
    return GenerateOutput(sequences=sequences, length=prompt_length + steps, logits=logits_buffer)
