"""Autoregressive generation inside one ``jax.jit``: a fixed-size KV cache, greedy or sampled.

``generate(module, variables, input_ids, attention_mask, max_new_tokens=N, ...)`` runs one
prefill call over the (left-padded) prompt into a cache of ``L + N`` positions, then a
``jax.lax.while_loop`` of single-token steps, all in one compiled function: no
recompilation per token, and none for new prompts of the same shape or new values of
``temperature``, ``top_p``, ``repetition_penalty`` (other than 1 <-> not 1),
``min_new_tokens``, ``bad_words_ids`` (up to 8 words with prefixes of up to 4 tokens share
one shape), ``eos_token_id`` (up to 8 ids), ``pad_token_id`` or ``rng``. Static (one
compilation each): ``max_new_tokens``, ``do_sample``, ``top_k``, ``num_return_sequences``.
The loop stops as soon as every row has produced an end-of-sequence token.
:class:`DecodeLoop` runs the same prefill and step as two jitted calls (the step donates
its state), to stream tokens or time them; it shares every line of the per-step code with
``generate``. It follows Hugging Face's ``generate`` (transformers 5.23) step for step, so
greedy decoding equals HF's token for token:

- the prompt's ``attention_mask`` (all ones when omitted, unless ``pad_token_id`` occurs in
  the prompt and is not an eos token: then ``input_ids != pad_token_id``, as HF infers it)
  is extended with ones for the generated tokens;
- ``num_return_sequences=R`` repeats every row of ``input_ids``, ``attention_mask``,
  ``position_ids`` and of every array in ``**model_inputs`` (``pixel_values``,
  ``image_attention_mask``...) ``R`` times (HF's ``repeat_interleave``): outputs have
  ``B * R`` rows; sampled rows draw independently. HF refuses ``R > 1`` for greedy
  decoding; here it gives ``R`` identical rows;
- when the module's ``__call__`` takes ``position_ids`` and none are given, they are
  ``cumsum(attention_mask) - 1`` with padding at 0, and each new token gets the previous
  position + 1 (HF's generic rule, which it also applies to Data2VecText: its fairseq-style
  default positions are *not* what HF's ``generate`` uses). Given ``position_ids`` ``[B, L]``
  are continued the same way;
- ``token_type_ids`` ``[B, L]`` are continued with their last column;
- each step's float32 logits go through HF's processors in HF's order
  (``_get_logits_processor``): :func:`apply_repetition_penalty` (over the prompt, less its
  left padding as HF 5.23 does, and the generated tokens), :func:`apply_bad_words`,
  :func:`apply_min_new_tokens` (only with an eos); then greedy decoding takes the first
  arg-max, and sampling applies, in HF's order, temperature, top-k and top-p
  (:func:`warp_logits`, equal to HF's ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
  ``TopPLogitsWarper``) and draws with ``jax.random.categorical`` from
  ``jax.random.fold_in(rng, step)``. HF's sampling defaults to ``top_k=50``; here ``top_k=0``
  (off) is the default;
- with an ``eos_token_id`` (an int or a list), a row that produced one emits
  ``pad_token_id`` afterwards (``eos_token_id[0]`` when ``pad_token_id`` is None). No eos is
  taken from the model config: ``eos_token_id=None`` means "no stopping" (HF would fall back
  to ``generation_config.eos_token_id``).

``GenerateOutput.sequences`` is always ``[B * R, L + max_new_tokens]`` (static shape);
columns after an early stop hold ``pad_token_id``. HF returns ``sequences[:, :length]``.

Protocol a decoder module follows (``Data2VecTextForCausalLM``, ``BigBirdForCausalLM``, IDEFICS):

- ``module.init_cache(batch_size, max_length, dtype=None) -> KVCache``: a plain method that
  needs only the config (called on the unbound module);
- ``module.apply(variables, input_ids=[B, l], attention_mask=[B, max_length],
  position_ids=[B, l], past_key_values=cache, use_cache=True, logits_to_keep=1,
  **model_inputs)`` returns an output with ``logits`` ``[B, l or 1, V]`` and
  ``past_key_values``, the cache advanced by ``l`` positions; ``attention_mask`` spans the
  whole cache (future positions are hidden by the causal mask). ``position_ids`` and
  ``logits_to_keep`` are passed only if ``__call__`` takes them (as HF does);
- ``**model_inputs`` given to :func:`generate` go to the prefill call (after the
  ``num_return_sequences`` expansion). Optionally the module defines
  ``decode_inputs(self, outputs, model_inputs) -> dict``, a plain method (called on the
  unbound module, traced inside the jit) that receives the prefill ``outputs`` and the model
  inputs of the prefill (``token_type_ids`` already cut to their last column) and returns
  the model inputs of *every* decode step (any keys ``__call__`` accepts, including ones
  the prefill did not get). IDEFICS uses it to swap ``pixel_values`` for the image hidden
  states the prefill computed, to pass the cross-attention keys/values of the images
  (``cross_attention_kv``) and to keep the last row of ``image_attention_mask``
  (``[B, L, n]`` -> ``[B, 1, n]``). The returned values are loop constants: they must not
  change from one step to the next (they live in :class:`DecodeState` and are donated with
  it by :meth:`DecodeLoop.step`, then returned unchanged).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Iterator, Mapping, Sequence

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


# --- logits processors (HF's, as pure functions; HF applies them before the warpers) -----
def apply_repetition_penalty(scores: Array, input_ids, penalty, prompt_ignore_length=None,
                             length=None) -> Array:
    """HF ``RepetitionPenaltyLogitsProcessor``: the scores ``[B, V]`` of the tokens in
    ``input_ids`` ``[B, T]`` (each once) are multiplied by ``penalty`` where negative and
    divided by it otherwise. ``prompt_ignore_length`` (int or ``[B]``): leading positions not
    counted (HF's ``generate`` passes the number of left-padding tokens); ``length``: only
    positions ``< length`` count (a fixed-size buffer)."""
    batch, vocab = scores.shape
    input_ids = jnp.asarray(input_ids, jnp.int32)
    positions = jnp.arange(input_ids.shape[1])[None]
    counted = jnp.ones(input_ids.shape, bool)
    if prompt_ignore_length is not None:
        counted &= positions >= jnp.reshape(jnp.asarray(prompt_ignore_length, jnp.int32), (-1, 1))
    if length is not None:
        counted &= positions < length
    ids = jnp.where(counted, jnp.minimum(input_ids, vocab), vocab)  # ids >= V (and ignored ones) drop out
    seen = jnp.zeros((batch, vocab + 1), bool).at[jnp.arange(batch)[:, None], ids].set(True)[:, :vocab]
    penalty = jnp.asarray(penalty, scores.dtype)
    penalized = jnp.where(scores < 0, scores * penalty, warp_temperature(scores, penalty))
    return jnp.where(seen, penalized, scores)


def apply_min_new_tokens(scores: Array, new_tokens, min_new_tokens, eos_token_id) -> Array:
    """HF ``MinNewTokensLengthLogitsProcessor``: the eos ids (int or list; -1 entries match
    nothing) get -inf while ``new_tokens`` (tokens generated so far) < ``min_new_tokens``."""
    eos = jnp.reshape(jnp.asarray(eos_token_id, jnp.int32), (-1,))
    is_eos = (jnp.arange(scores.shape[-1])[:, None] == eos[None]).any(axis=-1)
    return jnp.where(is_eos & (jnp.asarray(new_tokens) < min_new_tokens), -jnp.inf, scores)


def bad_words_table(bad_words_ids: Sequence[Sequence[int]], eos_token_id=None):
    """``bad_words_ids`` (HF's list of token-id lists) -> ``(prefixes [M, K], prefix_lengths [M],
    last [M])`` int32 numpy arrays for :func:`apply_bad_words`: prefixes right-aligned, -1 =
    any token; ``M`` padded to a multiple of 8 (``last`` -1: bans nothing) and ``K`` to a
    multiple of 4, so that new lists of similar size share one compilation. As HF, a
    single-token entry equal to an eos id is dropped."""
    if (not isinstance(bad_words_ids, (list, tuple)) or not bad_words_ids
            or any(not isinstance(w, (list, tuple)) or not w for w in bad_words_ids)
            or any(not isinstance(t, (int, np.integer)) or t < 0 for w in bad_words_ids for t in w)):
        raise ValueError(f"bad_words_ids must be a non-empty list of non-empty lists of token ids >= 0, "
                         f"got {bad_words_ids!r}")
    eos = _eos_list(eos_token_id)
    words = [[int(t) for t in w] for w in bad_words_ids if not (len(w) == 1 and int(w[0]) in eos)]
    rows = -(-max(len(words), 1) // 8) * 8
    width = -(-max([len(w) - 1 for w in words] + [1]) // 4) * 4
    prefixes = np.full((rows, width), -1, np.int32)
    lengths = np.zeros((rows,), np.int32)
    last = np.full((rows,), -1, np.int32)
    for row, word in enumerate(words):
        if len(word) > 1:
            prefixes[row, width - len(word) + 1:] = word[:-1]
        lengths[row], last[row] = len(word) - 1, word[-1]
    return prefixes, lengths, last


def apply_bad_words(scores: Array, input_ids, table, length=None) -> Array:
    """HF ``NoBadWordsLogitsProcessor``: -inf for the last token of every bad word whose
    prefix (the rest of it) ends ``input_ids`` ``[B, T]`` (only its first ``length`` columns
    when given); single-token words always. ``table``: :func:`bad_words_table`'s arrays."""
    prefixes, lengths, last = (jnp.asarray(t, jnp.int32) for t in table)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    batch, width = input_ids.shape[0], prefixes.shape[1]
    length = input_ids.shape[1] if length is None else length
    padded = jnp.concatenate([jnp.full((batch, width), -2, jnp.int32), input_ids], axis=1)
    tail = jax.lax.dynamic_slice_in_dim(padded, length, width, axis=1)  # the `width` tokens before `length`
    match = ((prefixes[None] == -1) | (tail[:, None] == prefixes[None])).all(axis=-1) & (lengths <= length)[None]
    banned = match.astype(jnp.float32) @ jax.nn.one_hot(last, scores.shape[-1], dtype=jnp.float32) > 0
    return jnp.where(banned, -jnp.inf, scores)


# --- one decode loop: the prefill and the step shared by generate and DecodeLoop ----------
@flax.struct.dataclass
class DecodeValues:
    """The traced generation settings (new values do not recompile): ``eos`` ``[8k]`` (-1
    padded), ``pad``, ``temperature``, ``top_p_threshold`` (``1 - top_p``; None = off),
    ``penalty``, ``ignore`` ``[R]`` (left-padding lengths), ``min_new_tokens``, ``bad_words``
    (:func:`bad_words_table`'s arrays or None)."""

    eos: Array
    pad: Array
    temperature: Array
    top_p_threshold: Array | None
    penalty: Array
    min_new_tokens: Array
    bad_words: tuple | None
    ignore: Array | None = None


@flax.struct.dataclass
class DecodeState:
    """The decode loop's carry (a pytree; :meth:`DecodeLoop.step` donates it). ``R`` =
    batch * num_return_sequences rows.

    ``tokens`` ``[R]`` int32: the token just chosen; ``unfinished`` ``[R]`` bool; ``step``
    int32: tokens generated so far; ``sequences`` ``[R, L + N]``: prompt, generated tokens,
    then ``pad``; ``cache``: the KV cache; ``attention_mask`` ``[R, L + N]``; ``positions``
    ``[R]``: the position id of ``tokens``; ``decode_inputs``: the model inputs of every
    step; ``values``: :class:`DecodeValues`; ``rng``; ``logits`` ``[R, N, V]`` or None."""

    tokens: Array
    unfinished: Array
    step: Array
    sequences: Array
    cache: object
    attention_mask: Array
    positions: Array
    decode_inputs: dict
    values: DecodeValues
    rng: Array
    logits: Array | None = None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The static settings (one compilation each)."""

    module: object
    max_new_tokens: int
    do_sample: bool
    top_k: int
    num_return_sequences: int
    repetition_penalty: bool
    bad_words: bool
    output_logits: bool = False

    def __hash__(self):  # jit hashes its static arguments at every call: the module's hash is slow
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", cached)
        return cached


def _call(module, variables, ids, positions, cache, inputs, mask):
    extra = {"position_ids": positions} if positions is not None else {}
    if _takes(module, "logits_to_keep"):  # HF asks for the last position's logits only, from models that can
        extra["logits_to_keep"] = 1
    return module.apply(variables, input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                        **extra, **inputs)


def _choose(plan: _Plan, state: DecodeState, logits: Array) -> DecodeState:
    """The one token selection: HF's processors (repetition penalty, bad words, min new
    tokens), then greedy arg-max or warpers + draw; finished rows emit pad."""
    values, step = state.values, state.step
    length = state.sequences.shape[1] - plan.max_new_tokens + step  # HF's input_ids length so far
    scores = logits.astype(jnp.float32)
    if plan.repetition_penalty:
        scores = apply_repetition_penalty(scores, state.sequences, values.penalty, values.ignore, length)
    if plan.bad_words:
        scores = apply_bad_words(scores, state.sequences, values.bad_words, length)
    scores = apply_min_new_tokens(scores, step, values.min_new_tokens, values.eos)
    if plan.do_sample:
        scores = _warp(scores, values.temperature, plan.top_k, values.top_p_threshold)
        tokens = jax.random.categorical(jax.random.fold_in(state.rng, step), scores, axis=-1).astype(jnp.int32)
    else:
        tokens = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    tokens = jnp.where(state.unfinished, tokens, values.pad)
    unfinished = state.unfinished & ~(tokens[:, None] == values.eos[None, :]).any(axis=1)
    sequences = jax.lax.dynamic_update_slice(state.sequences, tokens[:, None], (0, length))
    logits_buffer = state.logits
    if logits_buffer is not None:
        logits_buffer = jax.lax.dynamic_update_slice(logits_buffer, logits.astype(jnp.float32)[:, None], (0, step, 0))
    return state.replace(tokens=tokens, unfinished=unfinished, step=step + 1, sequences=sequences,
                         logits=logits_buffer)


def _prefill(plan: _Plan, variables, input_ids, attention_mask, position_ids, model_inputs, values, rng):
    module, copies = plan.module, plan.num_return_sequences
    if copies > 1:  # HF's _expand_inputs_for_generation: every row repeated (repeat_interleave)
        rows = input_ids.shape[0]
        expand = lambda x: jnp.repeat(x, copies, axis=0) if getattr(x, "ndim", 0) and x.shape[0] == rows else x
        input_ids, attention_mask = expand(input_ids), expand(attention_mask)
        position_ids = None if position_ids is None else expand(position_ids)
        model_inputs = {k: expand(v) for k, v in model_inputs.items()}
    batch, prompt_length = input_ids.shape
    full_mask = jnp.concatenate([attention_mask, jnp.ones((batch, plan.max_new_tokens), jnp.int32)], axis=1)
    pass_positions = position_ids is not None or _takes(module, "position_ids")
    if position_ids is None:
        position_ids = jnp.where(attention_mask == 0, 0, jnp.cumsum(attention_mask, axis=1) - 1)
    out = _call(module, variables, input_ids, position_ids if pass_positions else None,
                module.init_cache(batch, prompt_length + plan.max_new_tokens), model_inputs, full_mask)
    decode_inputs = {k: (v[:, -1:] if k == "token_type_ids" else v) for k, v in model_inputs.items()}
    if hasattr(module, "decode_inputs"):
        decode_inputs = module.decode_inputs(out, decode_inputs)
    logits = out.logits[:, -1]
    state = DecodeState(
        tokens=jnp.zeros((batch,), jnp.int32), unfinished=jnp.ones((batch,), bool), step=jnp.asarray(0, jnp.int32),
        sequences=jnp.concatenate([input_ids, jnp.full((batch, plan.max_new_tokens), values.pad, jnp.int32)], 1),
        cache=out.past_key_values, attention_mask=full_mask,
        positions=position_ids[:, -1] + 1 if pass_positions else None, decode_inputs=decode_inputs,
        # HF's repetition penalty ignores the left padding: (attention_mask != 0).argmax(1)
        values=values.replace(ignore=jnp.argmax(attention_mask != 0, axis=1).astype(jnp.int32)),
        rng=rng, logits=(jnp.zeros((batch, plan.max_new_tokens, logits.shape[-1]), jnp.float32)
                         if plan.output_logits else None))
    return _choose(plan, state, logits)


def _step(plan: _Plan, variables, state: DecodeState) -> DecodeState:
    positions = None if state.positions is None else state.positions[:, None]
    out = _call(plan.module, variables, state.tokens[:, None], positions, state.cache, state.decode_inputs,
                state.attention_mask)
    state = state.replace(cache=out.past_key_values,
                          positions=None if state.positions is None else state.positions + 1)
    return _choose(plan, state, out.logits[:, -1])


@functools.partial(jax.jit, static_argnums=0)
def _generate(plan: _Plan, variables, input_ids, attention_mask, position_ids, model_inputs, values,
              rng) -> GenerateOutput:
    state = _prefill(plan, variables, input_ids, attention_mask, position_ids, model_inputs, values, rng)
    cond = lambda s: (s.step < plan.max_new_tokens) & s.unfinished.any()
    state = jax.lax.while_loop(cond, functools.partial(_step, plan, variables), state)
    prompt_length = state.sequences.shape[1] - plan.max_new_tokens
    return GenerateOutput(sequences=state.sequences, length=prompt_length + state.step, logits=state.logits)


_prefill_jit = jax.jit(_prefill, static_argnums=0)
_step_jit = jax.jit(_step, static_argnums=0, donate_argnums=2)


# --- arguments ---------------------------------------------------------------------------
def _eos_list(eos_token_id) -> list[int]:
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, (int, np.integer)):
        return [int(eos_token_id)]
    return [int(e) for e in eos_token_id]


def _eos_array(eos: list[int]) -> Array:
    """The eos ids padded with -1 (matches no token) to a multiple of 8: no eos, one eos or
    a list of up to 8 share one compilation."""
    size = -(-max(len(eos), 1) // 8) * 8
    return jnp.asarray(eos + [-1] * (size - len(eos)), jnp.int32)


class _Settings:
    """Validated generation settings: the static :class:`_Plan` and the traced values."""

    def __init__(self, module, *, max_new_tokens, do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
                 repetition_penalty=1.0, min_new_tokens=0, bad_words_ids=None, eos_token_id=None,
                 pad_token_id=None, num_return_sequences=1, output_logits=False):
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if not hasattr(module, "init_cache"):
            raise ValueError(f"{type(module).__name__} has no init_cache: generation needs a decoder with a KV cache")
        top_k = int(top_k or 0)
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        concrete = lambda x: isinstance(x, (int, float))
        if concrete(temperature) and not temperature > 0:
            raise ValueError(f"temperature must be > 0 (use do_sample=False for greedy decoding), got {temperature}")
        if concrete(top_p) and not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        if concrete(repetition_penalty) and not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")
        if not isinstance(min_new_tokens, (int, np.integer)) or min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be an int >= 0, got {min_new_tokens!r}")
        if not isinstance(num_return_sequences, (int, np.integer)) or num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be a positive int, got {num_return_sequences!r}")
        eos = _eos_list(eos_token_id)
        if len(eos) > 64:
            raise ValueError(f"eos_token_id: at most 64 ids, got {len(eos)}")
        self.eos = eos
        self.pad_token_id = eos[0] if pad_token_id is None and eos else pad_token_id
        table = None if bad_words_ids is None else bad_words_table(bad_words_ids, eos)
        config = getattr(module, "config", None)
        vocab = getattr(config, "vocab_size", None)
        if table is not None and vocab is not None:  # the logits' width (IDEFICS adds its extra tokens)
            vocab += getattr(config, "additional_vocab_size", 0) or 0
            largest = max(int(table[0].max()), int(table[2].max()))
            if largest >= vocab:
                raise ValueError(f"bad_words_ids: token {largest} is not below the model's vocabulary size {vocab}")
        self.plan = _Plan(module, int(max_new_tokens), bool(do_sample), top_k, int(num_return_sequences),
                          repetition_penalty is not None and not (concrete(repetition_penalty)
                                                                  and repetition_penalty == 1.0),
                          table is not None, bool(output_logits))
        self.values = DecodeValues(
            eos=_eos_array(eos), pad=jnp.asarray(0 if self.pad_token_id is None else self.pad_token_id, jnp.int32),
            temperature=jnp.asarray(temperature, jnp.float32),
            top_p_threshold=jnp.asarray(_top_p_threshold(top_p), jnp.float32) if _uses_top_p(top_p) else None,
            penalty=jnp.asarray(1.0 if repetition_penalty is None else repetition_penalty, jnp.float32),
            min_new_tokens=jnp.asarray(min_new_tokens, jnp.int32),
            bad_words=None if table is None else tuple(jnp.asarray(t) for t in table))

    def arguments(self, variables, input_ids, attention_mask, rng, model_inputs) -> tuple:
        """The traced arguments of ``_prefill`` / ``_generate`` after ``plan``."""
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be an integer array [batch, length], got shape {input_ids.shape} "
                             f"dtype {input_ids.dtype}")
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask)
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have the shape of input_ids {input_ids.shape}, "
                                 f"got {attention_mask.shape}")
        if self.plan.do_sample and rng is None:
            raise ValueError("do_sample=True needs rng (a jax.random key or an int seed)")
        rng = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
        if rng is None:
            rng = jax.random.key(0)  # unused by greedy decoding
        pad = self.pad_token_id
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
            if pad is not None and pad not in self.eos:  # HF infers the mask from padding
                padded = input_ids == pad
                attention_mask = jnp.where(padded.any(), (~padded).astype(input_ids.dtype), attention_mask)
        check_variables(variables, type(self.plan.module).__name__)
        model_inputs = dict(model_inputs)
        position_ids = model_inputs.pop("position_ids", None)
        return (dict(variables), input_ids.astype(jnp.int32), attention_mask.astype(jnp.int32),
                None if position_ids is None else jnp.asarray(position_ids, jnp.int32), model_inputs,
                self.values, rng)


# --- generate ----------------------------------------------------------------------------
def generate(module, variables: Mapping, input_ids, attention_mask=None, *, max_new_tokens: int,
             do_sample: bool = False, temperature=1.0, top_k: int | None = 0, top_p=1.0,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             rng=None, output_logits: bool = False, repetition_penalty=1.0, min_new_tokens: int = 0,
             bad_words_ids: Sequence[Sequence[int]] | None = None, num_return_sequences: int = 1,
             **model_inputs) -> GenerateOutput:
    """Greedy or sampled continuation of ``input_ids`` ``[B, L]`` by ``max_new_tokens`` tokens.

    ``variables``: the model's variables dict (``{"params": ...}``). ``attention_mask`` ``[B, L]``
    marks real prompt tokens (left padding; see :func:`left_pad`). ``do_sample`` draws with
    ``rng`` (a ``jax.random`` key or an int seed), after ``temperature``, ``top_k`` and
    ``top_p``. ``repetition_penalty``, ``min_new_tokens`` (needs an eos), ``bad_words_ids``
    and ``num_return_sequences`` (rows repeated; ``sequences`` is ``[B * R, L + N]``) are
    HF's. Traced (new values do not recompile): ``temperature``, ``top_p``,
    ``repetition_penalty`` (except switching it on/off), ``min_new_tokens``, ``eos_token_id``
    (up to 8 ids), ``pad_token_id``, ``bad_words_ids`` (of similar size), ``rng``. ``**model_inputs``
    go to every model call (see the module docstring for ``decode_inputs``).
    """
    settings = _Settings(module, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                         top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                         min_new_tokens=min_new_tokens, bad_words_ids=bad_words_ids, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id, num_return_sequences=num_return_sequences,
                         output_logits=output_logits)
    return _generate(settings.plan, *settings.arguments(variables, input_ids, attention_mask, rng, model_inputs))


# --- streaming ---------------------------------------------------------------------------
class DecodeLoop:
    """:func:`generate`'s loop one token at a time, for streaming and timing: a jitted
    :meth:`prefill` (prompt + first token) and a jitted :meth:`step` (one token) that donates
    the :class:`DecodeState` (KV cache included), so its buffers are updated in place. The
    settings are :func:`generate`'s; the tokens equal its ``sequences`` (same rng).

    >>> loop = DecodeLoop(module, variables, max_new_tokens=8, eos_token_id=2)
    >>> for tokens in loop.stream(input_ids, attention_mask):  # numpy [B * R] per token
    ...     print(tokens)
    """

    def __init__(self, module, variables: Mapping, *, max_new_tokens: int, do_sample: bool = False,
                 temperature=1.0, top_k: int | None = 0, top_p=1.0, repetition_penalty=1.0,
                 min_new_tokens: int = 0, bad_words_ids: Sequence[Sequence[int]] | None = None,
                 eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                 num_return_sequences: int = 1):
        self.settings = _Settings(module, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens,
                                  bad_words_ids=bad_words_ids, eos_token_id=eos_token_id,
                                  pad_token_id=pad_token_id, num_return_sequences=num_return_sequences)
        check_variables(variables, type(module).__name__)
        self.module, self.variables = module, dict(variables)
        self.max_new_tokens = int(max_new_tokens)
        self._compiled: dict = {}  # signature -> (prefill, step) executables from compile()
        self._step_executable = None

    def _arguments(self, input_ids, attention_mask, rng, model_inputs):
        return self.settings.arguments(self.variables, input_ids, attention_mask, rng, model_inputs)

    @staticmethod
    def _signature(args) -> tuple:
        leaves, tree = jax.tree.flatten(args)
        return tree, tuple((np.shape(x), jnp.result_type(x), getattr(x, "weak_type", False)) for x in leaves)

    def compile(self, input_ids, attention_mask=None, rng=None, **model_inputs) -> float:
        """Compile :meth:`prefill` and :meth:`step` for inputs of these shapes (ahead of
        time, nothing runs; ``rng`` may be omitted: a seed or a ``jax.random.key`` is
        assumed); returns the seconds it took. Later calls with other shapes just compile
        on first use."""
        start = time.perf_counter()
        rng = jax.random.key(0) if rng is None else rng  # only its type matters here
        args = self._arguments(input_ids, attention_mask, rng, model_inputs)
        lowered = _prefill_jit.lower(self.settings.plan, *args)
        state = jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype), lowered.out_info)
        step = _step_jit.lower(self.settings.plan, self.variables, state).compile()
        self._compiled[self._signature(args)] = (lowered.compile(), step)
        return time.perf_counter() - start

    def prefill(self, input_ids, attention_mask=None, rng=None, **model_inputs) -> DecodeState:
        """One jitted call: the prompt ``[B, L]`` into the cache and the first token
        (``state.tokens`` ``[B * num_return_sequences]``)."""
        args = self._arguments(input_ids, attention_mask, rng, model_inputs)
        compiled = self._compiled.get(self._signature(args))
        if compiled is not None:
            self._step_executable = compiled[1]
            return compiled[0](*args)
        self._step_executable = None
        return _prefill_jit(self.settings.plan, *args)

    def step(self, state: DecodeState) -> DecodeState:
        """One jitted call: the next token. ``state`` is donated (do not use it afterwards);
        call it only while not :meth:`done`."""
        if self._step_executable is not None:
            return self._step_executable(self.variables, state)
        return _step_jit(self.settings.plan, self.variables, state)

    def done(self, state: DecodeState) -> bool:
        """Every row finished (produced an eos) or ``max_new_tokens`` tokens made (a host sync)."""
        step, unfinished = jax.device_get((state.step, state.unfinished))
        return int(step) >= self.max_new_tokens or not unfinished.any()

    def stream(self, input_ids, attention_mask=None, rng=None, **model_inputs) -> Iterator[np.ndarray]:
        """The tokens ``[B * R]`` (numpy int32) of each step as they are made, prefill's first;
        finished rows give ``pad_token_id``. Stops when :meth:`done`."""
        state = self.prefill(input_ids, attention_mask, rng, **model_inputs)
        while True:
            yield np.asarray(state.tokens)
            if self.done(state):
                return
            state = self.step(state)
