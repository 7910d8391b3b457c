"""`TFGenerationMixin.generate`: greedy decoding, sampling and beam search, XLA-compiled over a fixed-size cache.

The whole decoding (the prompt, then one token per step in a `tf.while_loop`) is one
`tf.function(jit_compile=True)` of (input_ids, attention_mask, seed). It is built once per decoding plan (the settings
that shape the program: lengths, token ids, processors, beams) and kept on the model; TensorFlow traces it once per
input shapes, so a second call with the same shapes and settings neither retraces nor recompiles.
`generate(..., jit_compile=False)` runs the same loop eagerly, step by step (debugging; slow).

Shapes: B prompts, N = B x (beams or returned sequences) rows decoded side by side, S prompt tokens, L = max_length
(the cache and the token buffer are L long), V vocabulary. Decoder-only prompts may be left-padded: positions then
count real tokens only (the attention mask's running sum), as the PyTorch loop (`generation/loop.py`) computes them;
an encoder-decoder runs its encoder once and decodes from `decoder_start_token_id`.

The decisions follow the PyTorch loop step for step (same processors, same beam bookkeeping), so greedy and beam
tokens equal `GenerationMixin.generate`'s, and so does the output's shape: as 4.x's TF `generate` run eagerly, the
sequences are trimmed to the longest row (pad after a row's EOS), an int32 `tf.Tensor`, or one of 4.x's output
classes with `return_dict_in_generate=True`.

The model interface generate uses (the fixed-size cache of `pretrained/tf/layers.py`):
- `model.init_cache(batch_size, max_length)` -> the cache (`past_key_values`): a nest of tensors whose axis 0 is the
  batch (decoder-only: per layer (key, value), each (B, K, max_length, D), zeros). An encoder-decoder's
  `init_cache` may also take `encoder_outputs=` (to precompute the cross-attention keys and values once); the
  returned structure must then stay the same on every call.
- decoder-only: `model(input_ids=(N, T), attention_mask=(N, L), position_ids=(N, T), past_key_values=cache,
  cache_position=(T,) int32, use_cache=True, return_dict=True, training=False)` writes its T tokens at
  `cache_position` (contiguous), attends over the L slots (later slots hidden causally, padding by the mask) and
  returns `.logits` (N, T, V) and the updated cache as `.past_key_values` (same nest, same shapes).
- encoder-decoder: `model.get_encoder()(input_ids=, attention_mask=, return_dict=True, training=False)` once, then
  `model(decoder_input_ids=(N, T), encoder_outputs=TFBaseModelOutput(last_hidden_state=(N, S, C)),
  attention_mask=(N, S) (the encoder's), past_key_values=cache, cache_position=(T,), use_cache=True,
  return_dict=True, training=False)`: the decoder's own tokens have no padding; relative positions count from
  `cache_position`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ..generation.config import GenerationConfig
from ..generation.neutral import (Decoding, DecodingPlan, ProcessorSteps, mask_pad, prompt_arrays, request_config,
                                  special_tokens, take_input_ids)
from .outputs import TFBaseModelOutput, TFModelOutput, tf_output

NEG_INF = -float("inf")
NEG = -1.0e9  # the beam search's "never" score, as the PyTorch loop's
_IGNORED = ("output_logits", "output_attentions", "output_hidden_states")  # not recorded by the compiled loop

try:  # XLA's in-place slice update (also runs eagerly); tf/layers.py writes the cache with it too
    from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice as _dynamic_update_slice
except ImportError:  # pragma: no cover - a TensorFlow build without it
    _dynamic_update_slice = None


# ---- outputs (4.x names) ------------------------------------------------------------------------------------------
@tf_output
class TFGreedySearchDecoderOnlyOutput(TFModelOutput):
    """Greedy decoding (decoder-only): `sequences` (N, T), the prompt first; `scores` (with `output_scores`): the
    processed scores (N, V) of each step."""

    sequences: Any = None
    scores: tuple | None = None
    attentions: tuple | None = None
    hidden_states: tuple | None = None


@tf_output
class TFGreedySearchEncoderDecoderOutput(TFModelOutput):
    """Greedy decoding (encoder-decoder): `sequences` (N, T), `decoder_start_token_id` first."""

    sequences: Any = None
    scores: tuple | None = None
    encoder_attentions: tuple | None = None
    encoder_hidden_states: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None
    decoder_hidden_states: tuple | None = None


@tf_output
class TFSampleDecoderOnlyOutput(TFGreedySearchDecoderOnlyOutput):
    """Sampling (decoder-only), as TFGreedySearchDecoderOnlyOutput."""


@tf_output
class TFSampleEncoderDecoderOutput(TFGreedySearchEncoderDecoderOutput):
    """Sampling (encoder-decoder), as TFGreedySearchEncoderDecoderOutput."""


@tf_output
class TFBeamSearchDecoderOnlyOutput(TFModelOutput):
    """Beam search (decoder-only): `sequences` (B x num_return_sequences, T), the best first for each prompt; with
    `output_scores` also `sequences_scores` (sum of log-probabilities / generated_length ** length_penalty),
    `scores` (each step's processed log-probabilities (B x num_beams, V)) and `beam_indices` (the row each generated
    token came from, -1 past a hypothesis' end)."""

    sequences: Any = None
    sequences_scores: Any = None
    scores: tuple | None = None
    beam_indices: Any = None
    attentions: tuple | None = None
    hidden_states: tuple | None = None


@tf_output
class TFBeamSearchEncoderDecoderOutput(TFModelOutput):
    """Beam search (encoder-decoder), as TFBeamSearchDecoderOnlyOutput."""

    sequences: Any = None
    sequences_scores: Any = None
    scores: tuple | None = None
    beam_indices: Any = None
    encoder_attentions: tuple | None = None
    encoder_hidden_states: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None
    decoder_hidden_states: tuple | None = None


@tf_output
class TFBeamSampleDecoderOnlyOutput(TFBeamSearchDecoderOnlyOutput):
    """Beam sampling (decoder-only), as TFBeamSearchDecoderOnlyOutput."""


@tf_output
class TFBeamSampleEncoderDecoderOutput(TFBeamSearchEncoderDecoderOutput):
    """Beam sampling (encoder-decoder), as TFBeamSearchEncoderDecoderOutput."""


# ---- small tensor helpers ------------------------------------------------------------------------------------------
def _put(buffer: tf.Tensor, values: tf.Tensor, at: tf.Tensor) -> tf.Tensor:
    """`buffer` (..., L) with position `at` of its last axis set to `values` (...)."""
    where = tf.range(buffer.shape[-1] if buffer.shape[-1] is not None else tf.shape(buffer)[-1]) == at
    return tf.where(where, values[..., None], buffer)


def _put_row(buffer: tf.Tensor, values: tf.Tensor, at: tf.Tensor) -> tf.Tensor:
    """`buffer` (K, ...) with `buffer[at] = values`."""
    if _dynamic_update_slice is not None:
        zeros = [0] * (buffer.shape.rank - 1)
        return _dynamic_update_slice(buffer, values[None], tf.stack([tf.cast(at, tf.int32), *zeros]))
    return tf.tensor_scatter_nd_update(buffer, tf.reshape(tf.cast(at, tf.int32), (1, 1)), values[None])


def _isin(tokens: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    return tf.reduce_any(tokens[..., None] == ids, axis=-1)


def _gather(t: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
    """t (B, K, ...) indexed along axis 1 by idx (B, K') -> (B, K', ...)."""
    return tf.gather(t, idx, axis=1, batch_dims=1)


def _split(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(the seed for later steps, the seed for now) from a (2,) int64 seed."""
    both = tf.random.experimental.stateless_split(seed, num=2)
    return both[0], both[1]


def _gumbel(shape: Any, seed: tf.Tensor) -> tf.Tensor:
    tiny = np.finfo(np.float32).tiny
    u = tf.random.stateless_uniform(shape, seed, minval=tiny, maxval=1.0, dtype=tf.float32)
    return -tf.math.log(-tf.math.log(u))


# ---- logits processors: pure functions (sequences (N, L), scores (N, V), cur) -> scores (N, V) ------------------
# `sequences` is the fixed-size buffer; only its first `cur` positions hold tokens. Each function has the semantics
# of its PyTorch namesake in `generation/logits.py` applied to `sequences[:, :cur]`. They run eagerly, in graphs and
# XLA-compiled.
def _flags(scores: tf.Tensor, token_ids: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
    """(N, V) bool: True at each (row, token) of `token_ids` (N, K) where `where` (N|1, K) is set;
    out-of-vocabulary ids are ignored."""
    token_ids = tf.cast(token_ids, tf.int32)
    n, k, v = tf.shape(token_ids)[0], tf.shape(token_ids)[1], tf.shape(scores)[1]
    where = tf.broadcast_to(where, tf.shape(token_ids))
    ids = tf.where(where & (token_ids >= 0) & (token_ids < v), token_ids, v)  # column v: a spare, dropped
    rows = tf.broadcast_to(tf.range(n)[:, None], tf.shape(ids))
    at = tf.reshape(tf.stack([rows, ids], axis=-1), (-1, 2))
    hits = tf.scatter_nd(at, tf.ones(tf.shape(at)[:1], tf.int32), tf.stack([n, v + 1]))
    return hits[:, :v] > 0


def repetition_penalty(sequences: tf.Tensor, scores: tf.Tensor, cur: Any, penalty: float,
                       counted: tf.Tensor | None = None) -> tf.Tensor:
    """Every token among the first `cur` of a row (where `counted` (N, L), if given, is True) becomes less likely:
    its score divided by `penalty` when positive, multiplied when negative."""
    where = tf.range(tf.shape(sequences)[1])[None, :] < cur
    if counted is not None:
        where = where & tf.cast(counted, tf.bool)
    seen = _flags(scores, sequences, where)
    return tf.where(seen, tf.where(scores < 0, scores * penalty, scores / penalty), scores)


def no_repeat_ngram(sequences: tf.Tensor, scores: tf.Tensor, cur: Any, n: int) -> tf.Tensor:
    """Forbid each token that would complete an n-gram already present in the first `cur` tokens of its row."""
    L = sequences.shape[1]
    if n <= 0 or L < n:
        return scores
    starts = L - n + 1  # n-grams that fit in the buffer, starting at 0 .. L - n
    match = tf.range(starts)[None, :] <= cur - n  # the n-gram lies within the first `cur` tokens
    for j in range(n - 1):  # its first n - 1 tokens equal the row's last n - 1
        last = tf.gather(sequences, tf.maximum(cur - n + 1 + j, 0), axis=1)[:, None]
        match = match & (sequences[:, j:j + starts] == last)
    return tf.where(_flags(scores, sequences[:, n - 1:], match), NEG_INF, scores)


def _ban(scores: tf.Tensor, token_ids: Sequence[int], when: Any) -> tf.Tensor:
    V = scores.shape[-1]
    ids = [t for t in token_ids if 0 <= t < V]
    if not ids:
        return scores
    mask = np.zeros(V, dtype=bool)
    mask[ids] = True
    return tf.where(tf.logical_and(tf.constant(mask), when), NEG_INF, scores)


def min_length(sequences: tf.Tensor, scores: tf.Tensor, cur: Any, length: int, eos: Sequence[int]) -> tf.Tensor:
    """No EOS while the sequences (prompt included) are shorter than `length`."""
    return _ban(scores, eos, cur < length)


def min_new_tokens(sequences: tf.Tensor, scores: tf.Tensor, cur: Any, prompt_length: int, count: int,
                   eos: Sequence[int]) -> tf.Tensor:
    """No EOS before `count` tokens have been generated after the `prompt_length` prompt tokens."""
    return _ban(scores, eos, cur - prompt_length < count)


def temperature(sequences: tf.Tensor, scores: tf.Tensor, cur: Any, value: float) -> tf.Tensor:
    return scores / value


def top_k(sequences: tf.Tensor, scores: tf.Tensor, cur: Any, k: int, min_keep: int = 1) -> tf.Tensor:
    """Keep the k highest scores (ties with the k-th included)."""
    k = min(max(k, min_keep), scores.shape[-1])
    kth = tf.math.top_k(scores, k).values[:, -1:]
    return tf.where(scores < kth, NEG_INF, scores)


def top_p(sequences: tf.Tensor, scores: tf.Tensor, cur: Any, p: float, min_keep: int = 1) -> tf.Tensor:
    """Keep the most likely tokens whose probabilities add up to `p` (nucleus sampling)."""
    V = scores.shape[-1]
    order = tf.argsort(scores, axis=-1, direction="ASCENDING", stable=True)
    ordered = tf.gather(scores, order, batch_dims=1)
    cumulative = tf.cumsum(tf.nn.softmax(ordered, axis=-1), axis=-1)
    drop = (cumulative <= 1 - p) & (tf.range(V) < V - min_keep)[None, :]
    drop = tf.gather(drop, tf.argsort(order, axis=-1, stable=True), batch_dims=1)  # back to vocabulary order
    return tf.where(drop, NEG_INF, scores)


def min_p(sequences: tf.Tensor, scores: tf.Tensor, cur: Any, p: float, min_keep: int = 1) -> tf.Tensor:
    """Drop the tokens less likely than `p` times the most likely one."""
    probs = tf.nn.softmax(scores, axis=-1)
    drop = probs < p * tf.reduce_max(probs, axis=-1, keepdims=True)
    keep = tf.math.top_k(probs, min(min_keep, scores.shape[-1])).indices
    drop = drop & ~_flags(scores, keep, tf.constant(True))
    return tf.where(drop, NEG_INF, scores)


class _Processors(ProcessorSteps):
    """The processors a config asks for, applied in the PyTorch order with the TensorFlow functions above."""

    ops = sys.modules[__name__]


# ---- the decoding plan: everything static about one compiled program ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Plan(DecodingPlan):
    output_scores: bool  # record each step's scores (return_dict_in_generate=True, output_scores=True)
    jit_compile: bool  # False: the loop runs eagerly


def _reorder(cache: Any, rows: tf.Tensor, n: int) -> Any:
    """The cache with its rows (axis 0 of every per-row tensor) taken in the order `rows`."""
    return tf.nest.map_structure(
        lambda x: tf.gather(x, rows) if x.shape.rank and x.shape[0] == n else x, cache)


def _like(old: Any, new: Any) -> Any:
    """`new` (a cache the model returned) in the nest structure and static shapes of `old`, as a loop variable must
    keep them."""
    new = tf.nest.pack_sequence_as(old, tf.nest.flatten(new))
    if not tf.executing_eagerly():
        for a, b in zip(tf.nest.flatten(old), tf.nest.flatten(new)):
            b.set_shape(a.shape)
    return new


class TFGenerationMixin:
    """`generate` for the TF classes with a language-model head (`can_generate()`)."""

    @tf.autograph.experimental.do_not_convert  # explicit TensorFlow control flow: nothing for autograph to rewrite
    def generate(self, input_ids=None, generation_config: GenerationConfig | None = None,
                 logits_processor: Sequence[Callable] | None = None, seed: Any = None, *, attention_mask=None,
                 jit_compile: bool = True, **overrides: Any):
        """Continue `input_ids` (B, S) (also `inputs=`, 4.x's name); returns an int32 `tf.Tensor`
        (B x num_return_sequences, T): the prompt (decoder-only) or `decoder_start_token_id` (encoder-decoder)
        first, then the new tokens, padded after a row's EOS to the longest row (as PyTorch's `generate`).

        `generation_config` (default: the model's own) is copied and `overrides` (any of its fields:
        `max_new_tokens=20, do_sample=True, top_p=0.9, num_beams=4, ...`) applied to the copy, as in PyTorch.
        `attention_mask` (B, S) marks left padding (inferred from the pad token when not given, as in PyTorch).
        `seed`: two integers (4.x's stateless seed; one integer is taken as (seed, 0)) that make sampling
        reproducible; without it the seed is drawn from TensorFlow's global generator (`tf.random.set_seed`).
        `logits_processor`: extra callables (sequences (N, L), scores (N, V), cur_len) -> scores, applied last, in
        TensorFlow ops. With `return_dict_in_generate=True` it returns 4.x's output classes (`TFGreedySearch...`,
        `TFSample...`, `TFBeamSearch...`, `TFBeamSample...`), with `scores` (and for beams `sequences_scores`,
        `beam_indices`) when `output_scores=True`.

        The decoding is one `tf.function(jit_compile=True)`, traced and compiled once per (shapes, settings) and
        kept on the model; `jit_compile=False` runs it eagerly instead. Called inside the caller's own `tf.function`
        (4.x's `tf.function(model.generate, jit_compile=True)`), it is traced into that graph: the inputs need static
        shapes and the sequences keep max_length columns, padded after the longest row, as 4.x's XLA generate.
        """
        input_ids = take_input_ids(self, input_ids, overrides, "TF")
        for name in ("cache", "past_key_values"):
            if overrides.get(name) is not None:
                raise ValueError(f"generate(): {name}= is not supported by the TF loop (it builds its own "
                                 "fixed-size cache); pass the whole prompt.")
            overrides.pop(name, None)
        config = request_config(self, generation_config, overrides, "TF")
        record = bool(config.get("return_dict_in_generate"))
        asked = [name for name in _IGNORED if config.get(name)]
        if not record and config.get("output_scores"):
            asked.append("output_scores")
        if asked:
            why = ("is ignored unless return_dict_in_generate=True" if not record
                   else "is not recorded by the compiled TF loop and is ignored (output_scores is)")
            warnings.warn(f"generate(): {', '.join(asked)} {why}.", UserWarning, stacklevel=2)
        if not getattr(self, "built", True):
            self.build_in_name_scope()

        encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        eos, pad = special_tokens(config)
        # inside the caller's own tf.function (4.x's `tf.function(model.generate, jit_compile=True)`): symbolic
        # inputs, static shapes, and the output keeps max_length columns (as 4.x's XLA generate)
        graph = not tf.executing_eagerly()
        ids, mask = (_graph_inputs if graph else _eager_inputs)(input_ids, attention_mask,
                                                                 mask_pad(pad, eos, encoder_decoder))
        decoding = Decoding.of(self.config, config, eos, pad, encoder_decoder, ids.shape[1])
        sample = decoding.sample
        output_class = _output_class(decoding.beams > 1, sample, encoder_decoder)
        if decoding.nothing_to_generate:  # the prompt comes back, as from the PyTorch loop
            first = ids if not encoder_decoder else tf.fill((ids.shape[0], 1), tf.constant(decoding.start, tf.int32))
            rows = tf.repeat(first, decoding.returned, axis=0)
            if not record:
                return rows
            return output_class(sequences=rows, scores=() if config.get("output_scores") else None)
        plan = decoding.plan(_Plan, _Processors, logits_processor,
                             output_scores=record and bool(config.get("output_scores")), jit_compile=bool(jit_compile))
        out = self._generation_program(plan)(ids, mask, _seed(seed, sample))
        return _finish(plan, out, decoding.prompt_length, record, output_class, trim=not graph)

    # ---- the compiled program ------------------------------------------------------------------------------------
    def _generation_program(self, plan: _Plan) -> Callable:
        """The decoding for `plan`, built once and kept on the model: a `tf.function(jit_compile=True)` (traced once
        per input shapes), or the eager function with `jit_compile=False`."""
        programs = self.__dict__.get("_generation_programs")
        if programs is None:
            programs = {}
            object.__setattr__(self, "_generation_programs", programs)  # not a Keras-tracked attribute
        if plan not in programs:
            fn = functools.partial(self._decode_all, plan)
            programs[plan] = tf.function(fn, jit_compile=True, autograph=False) if plan.jit_compile else fn
        return programs[plan]

    def _init_generation_cache(self, n: int, L: int, encoder_outputs: Any = None) -> Any:
        if encoder_outputs is not None and "encoder_outputs" in inspect.signature(self.init_cache).parameters:
            return self.init_cache(n, L, encoder_outputs=encoder_outputs)
        return self.init_cache(n, L)

    def _start(self, plan: _Plan, ids: tf.Tensor, mask: tf.Tensor):
        """(run, first tokens (N, S0), a fresh cache, counted (N, L) or None): `run(tokens, at, cache)` ->
        (logits (N, V) float32, cache) feeds `tokens` (N, T) at positions at .. at + T - 1; `counted` marks the
        positions the repetition penalty counts (not the prompt's padding)."""
        n, L = ids.shape[0] * plan.expand, plan.max_length
        prompt_mask, mask = mask, tf.repeat(mask, plan.expand, axis=0)
        common = dict(use_cache=True, return_dict=True, training=False)
        if plan.encoder_decoder:
            encoded = self.get_encoder()(input_ids=ids, attention_mask=prompt_mask, return_dict=True, training=False)
            hidden = tf.repeat(encoded[0], plan.expand, axis=0)
            encoder_outputs = TFBaseModelOutput(last_hidden_state=hidden)
            cache = self._init_generation_cache(n, L, encoder_outputs)

            def run(tokens, at, cache):
                where = at + tf.range(tokens.shape[1], dtype=tf.int32)
                out = self(decoder_input_ids=tokens, encoder_outputs=encoder_outputs, attention_mask=mask,
                           past_key_values=cache, cache_position=where, **common)
                return tf.cast(out.logits[:, -1], tf.float32), _like(cache, out.past_key_values)

            return run, tf.fill((n, 1), tf.constant(plan.start, tf.int32)), cache, None

        S = ids.shape[1]
        # the mask and positions laid out for the whole cache: the positions after the prompt count as tokens
        # (causality hides them until they are written), as the PyTorch loop's fixed-length cache
        full = tf.concat([mask, tf.ones((n, L - S), dtype=mask.dtype)], axis=1)
        positions = tf.where(full == 0, 1, tf.cumsum(full, axis=1) - 1)
        cache = self._init_generation_cache(n, L)

        def run(tokens, at, cache):
            where = at + tf.range(tokens.shape[1], dtype=tf.int32)
            out = self(input_ids=tokens, attention_mask=full, position_ids=tf.gather(positions, where, axis=1),
                       past_key_values=cache, cache_position=where, **common)
            return tf.cast(out.logits[:, -1], tf.float32), _like(cache, out.past_key_values)

        return run, tf.repeat(ids, plan.expand, axis=0), cache, tf.cast(full, tf.bool)

    def _decode_all(self, plan: _Plan, ids: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor):
        run, first, cache, counted = self._start(plan, ids, mask)
        if plan.beams > 1:
            return _beam_search(plan, run, first, cache, counted, seed, ids.shape[0])
        return _greedy_or_sample(plan, run, first, cache, counted, seed)


def _eager_inputs(input_ids: Any, attention_mask: Any, pad: int | None) -> tuple[tf.Tensor, tf.Tensor]:
    """(ids, mask), int32 (B, S), from arrays, lists or tensors; without a mask, one is inferred from `pad` (None:
    not inferred) when the prompts hold it, as the PyTorch loop does."""
    ids, mask = prompt_arrays(input_ids, attention_mask, pad)
    return tf.constant(ids), tf.constant(mask)


def _graph_inputs(input_ids: Any, attention_mask: Any, pad: int | None) -> tuple[tf.Tensor, tf.Tensor]:
    """`_eager_inputs` for symbolic tensors (generate traced by the caller's tf.function)."""
    ids = tf.cast(input_ids, tf.int32)
    if ids.shape.rank == 1:
        ids = ids[None]
    if ids.shape.rank != 2 or not ids.shape.is_fully_defined():
        raise ValueError(f"generate() inside a tf.function needs input_ids of a static shape (B, S); got {ids.shape}. "
                         "Give the tf.function an input_signature with fixed sizes, or call it with concrete "
                         "tensors.")
    if attention_mask is None:
        # where no prompt holds the pad token this is all ones, as the eager rule's
        mask = tf.ones_like(ids) if pad is None else tf.cast(ids != pad, tf.int32)
    else:
        mask = tf.cast(attention_mask, tf.int32)
        if mask.shape.rank == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"generate(): attention_mask has shape {mask.shape}; input_ids has {ids.shape}.")
    return ids, mask


def _seed(seed: Any, sample: bool) -> tf.Tensor:
    """The (2,) int64 seed of the stateless random ops."""
    if seed is None:
        if not sample:
            return tf.zeros((2,), tf.int64)
        return tf.random.uniform((2,), maxval=2**31 - 1, dtype=tf.int64)
    if isinstance(seed, tf.Tensor) and not tf.executing_eagerly():  # symbolic: (2,) integers
        seed = tf.cast(tf.reshape(seed, (-1,)), tf.int64)
        return tf.concat([seed, tf.zeros((2 - seed.shape[0],), tf.int64)], 0) if seed.shape[0] == 1 else seed
    values = np.asarray(seed).reshape(-1)
    if values.size == 1:
        values = np.array([values[0], 0])
    if values.size != 2 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"generate(): seed={seed!r} must be two integers (4.x's stateless seed) or one.")
    return tf.constant(values, tf.int64)


def _output_class(beam: bool, sample: bool, encoder_decoder: bool) -> type:
    if beam:
        if sample:
            return TFBeamSampleEncoderDecoderOutput if encoder_decoder else TFBeamSampleDecoderOnlyOutput
        return TFBeamSearchEncoderDecoderOutput if encoder_decoder else TFBeamSearchDecoderOnlyOutput
    if sample:
        return TFSampleEncoderDecoderOutput if encoder_decoder else TFSampleDecoderOnlyOutput
    return TFGreedySearchEncoderDecoderOutput if encoder_decoder else TFGreedySearchDecoderOnlyOutput


def _finish(plan: _Plan, out: dict, prompt_length: int, record: bool, output_class: type, trim: bool = True):
    """The program's buffers trimmed as PyTorch's `generate` returns them (`trim=False`, in a graph: kept
    max_length long, every step's scores kept)."""
    length = int(out["length"]) if trim else plan.max_length
    sequences = out["sequences"][:, :length]
    if not record:
        return sequences
    fields: dict[str, Any] = {"sequences": sequences}
    if plan.output_scores:
        steps = int(out["steps"]) if trim else plan.max_length - prompt_length
        fields["scores"] = tuple(out["scores"][i] for i in range(steps))
        if plan.beams > 1:
            fields["sequences_scores"] = out["sequences_scores"]
            fields["beam_indices"] = out["beam_indices"][:, :length - prompt_length]
    return output_class(**fields)


def _greedy_or_sample(plan: _Plan, run: Callable, first: tf.Tensor, cache: Any, counted: tf.Tensor | None,
                      seed: tf.Tensor) -> dict:
    """One token per row per step until every row has hit EOS or max_length (the PyTorch `_decode`)."""
    n, S0 = first.shape
    L = plan.max_length
    sequences = tf.concat([first, tf.fill((n, L - S0), tf.constant(plan.fill, tf.int32))], axis=1)
    eos = tf.constant(plan.eos, tf.int32) if plan.eos else None

    def choose(state, logits, cache):
        cur, sequences, running, seed = state["cur"], state["sequences"], state["running"], state["seed"]
        scores = plan.processors(sequences, logits, cur, counted)
        if plan.sample:  # a draw from softmax(scores): the Gumbel-max trick
            seed, now = _split(seed)
            nxt = tf.argmax(scores + _gumbel(tf.shape(scores), now), axis=-1, output_type=tf.int32)
        else:
            nxt = tf.argmax(scores, axis=-1, output_type=tf.int32)
        if eos is not None:
            nxt = tf.where(running, nxt, plan.pad)
            running = running & ~_isin(nxt, eos)
        new = dict(cur=cur + 1, sequences=_put(sequences, nxt, cur), running=running, seed=seed, cache=cache)
        if plan.output_scores:
            new["scores"] = _put_row(state["scores"], scores, cur - S0)
        return new

    def cond(state):
        go = state["cur"] < L
        return go & tf.reduce_any(state["running"]) if eos is not None else go

    def body(state):
        last = tf.gather(state["sequences"], state["cur"] - 1, axis=1)[:, None]
        logits, cache = run(last, state["cur"] - 1, state["cache"])
        return choose(state, logits, cache)

    logits, cache = run(first, tf.constant(0, tf.int32), cache)  # the prompt (its length differs from a step's)
    state = dict(cur=tf.constant(S0, tf.int32), sequences=sequences, running=tf.ones((n,), tf.bool), seed=seed)
    if plan.output_scores:
        state["scores"] = tf.zeros((L - S0, n, logits.shape[-1]), tf.float32)
    state = tf.while_loop(cond, lambda s: (body(s),), (choose(state, logits, cache),))[0]
    out = {"sequences": state["sequences"], "length": state["cur"]}
    if plan.output_scores:
        out.update(scores=state["scores"], steps=state["cur"] - S0)
    return out


def _beam_search(plan: _Plan, run: Callable, first: tf.Tensor, cache: Any, counted: tf.Tensor | None,
                 seed: tf.Tensor, batch: int) -> dict:
    """Vectorised beam search with the PyTorch `_beam_search`'s bookkeeping: 2 x beams candidates per step (more
    with several EOS), finished hypotheses scored by sum of log-probabilities / generated_length ** length_penalty."""
    beams, L, prompt = plan.beams, plan.max_length, first.shape[1]
    n = batch * beams
    keep = max(2, 1 + len(plan.eos)) * beams
    early, lp = plan.early_stopping, plan.length_penalty
    eos = tf.constant(plan.eos, tf.int32) if plan.eos else None
    # generated_length ** length_penalty, computed in double then rounded, as the PyTorch loop's python scalar
    penalty = tf.constant(np.array([float(g) ** lp if g else 1.0 for g in range(L + 1)], dtype=np.float32))
    top_mask = tf.range(keep) < beams
    row_offset = tf.range(batch)[:, None] * beams

    running = tf.concat([tf.reshape(first, (batch, beams, prompt)),
                         tf.fill((batch, beams, L - prompt), tf.constant(plan.fill, tf.int32))], axis=2)
    state = dict(
        cur=tf.constant(prompt, tf.int32), running=running, finished=running,
        running_scores=tf.tile(tf.constant([[0.0] + [NEG] * (beams - 1)], tf.float32), (batch, 1)),
        finished_scores=tf.fill((batch, beams), tf.constant(NEG, tf.float32)),
        done=tf.zeros((batch, beams), tf.bool), improvable=tf.ones((batch, 1), tf.bool),
        running_len=tf.zeros((batch, beams), tf.int32), finished_len=tf.zeros((batch, beams), tf.int32),
        go=tf.constant(True), seed=seed)
    if plan.output_scores:  # where each generated token came from (a flat row, -1: nothing generated)
        state["running_from"] = tf.fill((batch, beams, L - prompt), -1)
        state["finished_from"] = state["running_from"]

    def select(s, logits, cache):
        cur = s["cur"]
        flat = tf.reshape(s["running"], (n, L))
        log_probs = plan.processors(flat, tf.nn.log_softmax(logits, axis=-1), cur, counted)
        V = log_probs.shape[-1]
        total = tf.reshape(tf.reshape(log_probs, (batch, beams, V)) + s["running_scores"][:, :, None],
                           (batch, beams * V))
        seed = s["seed"]
        if plan.sample:  # `keep` draws without replacement from softmax(total): the Gumbel top-k
            seed, now = _split(seed)
            picked = tf.math.top_k(total + _gumbel(tf.shape(total), now), keep).indices
            top_scores = tf.gather(total, picked, batch_dims=1)
        else:
            top_scores, picked = tf.math.top_k(total, keep)
        from_beam, token = picked // V, picked % V
        cand = _put(_gather(s["running"], from_beam), token, cur)
        cand_len = _gather(s["running_len"], from_beam) + 1
        stops = _isin(token, eos) if eos is not None else tf.zeros(tf.shape(token), tf.bool)
        stops = stops | (cur + 1 >= L)

        # the next running beams: the best candidates that did not just stop
        alive = top_scores + tf.cast(stops, tf.float32) * NEG
        nxt = tf.math.top_k(alive, beams).indices
        running, running_scores = _gather(cand, nxt), _gather(alive, nxt)
        running_len = _gather(cand_len, nxt)
        rows = tf.reshape(_gather(from_beam, nxt) + row_offset, (-1,))

        # finished hypotheses: merge those that just stopped (among the top `beams`) into the kept ones
        just = stops & top_mask[None, :]
        scored = top_scores / tf.gather(penalty, cur + 1 - prompt)
        full = tf.reduce_all(s["done"], axis=-1, keepdims=True) & (early is True)
        scored = (scored + tf.cast(full, tf.float32) * NEG + tf.cast(~s["improvable"], tf.float32) * NEG
                  + tf.cast(~just, tf.float32) * NEG)
        merged_scores = tf.concat([s["finished_scores"], scored], axis=1)
        best = tf.math.top_k(merged_scores, beams).indices
        new = dict(finished=_gather(tf.concat([s["finished"], cand], axis=1), best),
                   finished_scores=_gather(merged_scores, best),
                   finished_len=_gather(tf.concat([s["finished_len"], cand_len], axis=1), best),
                   done=_gather(tf.concat([s["done"], just], axis=1), best))
        if plan.output_scores:
            cand_from = _put(_gather(s["running_from"], from_beam), from_beam + row_offset, cur - prompt)
            new["running_from"] = _gather(cand_from, nxt)
            new["finished_from"] = _gather(tf.concat([s["finished_from"], cand_from], axis=1), best)
            new["scores"] = _put_row(s["scores"], log_probs, cur - prompt)

        cache = _reorder(cache, rows, n)
        cur = cur + 1
        length = (L - prompt) if early == "never" and lp > 0.0 else (cur - prompt)
        best_running = running_scores[:, :1] / tf.gather(penalty, length)
        worst_done = tf.where(new["done"], tf.reduce_min(new["finished_scores"], axis=1, keepdims=True), NEG)
        improvable = s["improvable"] & tf.reduce_any(best_running > worst_done, axis=-1, keepdims=True)
        go = (tf.reduce_any(improvable) & ~(tf.reduce_all(new["done"]) & (early is True))
              & ~tf.reduce_all(stops))
        new.update(cur=cur, running=running, running_scores=running_scores, running_len=running_len,
                   improvable=improvable, go=go, seed=seed, cache=cache)
        return new

    def body(s):
        flat = tf.reshape(s["running"], (n, L))
        last = tf.gather(flat, s["cur"] - 1, axis=1)[:, None]
        logits, cache = run(last, s["cur"] - 1, s["cache"])
        return select(s, logits, cache)

    logits, cache = run(first, tf.constant(0, tf.int32), cache)  # the prompt, outside the loop
    if plan.output_scores:
        state["scores"] = tf.zeros((L - prompt, n, logits.shape[-1]), tf.float32)
    state = tf.while_loop(lambda s: s["go"], lambda s: (body(s),), (select(state, logits, cache),))[0]
    returned = plan.returned
    out = {"sequences": tf.reshape(state["finished"][:, :returned], (batch * returned, L)),
           "length": prompt + tf.reduce_max(state["finished_len"][:, :returned])}
    if plan.output_scores:
        out.update(scores=state["scores"], steps=state["cur"] - prompt,
                   sequences_scores=tf.reshape(state["finished_scores"][:, :returned], (batch * returned,)),
                   beam_indices=tf.reshape(state["finished_from"][:, :returned], (batch * returned, L - prompt)))
    return out


__all__ = [
    "TFBeamSampleDecoderOnlyOutput", "TFBeamSampleEncoderDecoderOutput", "TFBeamSearchDecoderOnlyOutput",
    "TFBeamSearchEncoderDecoderOutput", "TFGenerationMixin", "TFGreedySearchDecoderOnlyOutput",
    "TFGreedySearchEncoderDecoderOutput", "TFSampleDecoderOnlyOutput", "TFSampleEncoderDecoderOutput",
]
