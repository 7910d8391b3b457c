"""`FlaxGenerationMixin.generate`: greedy decoding, sampling and beam search, jit-compiled over a fixed-size cache.

The whole decoding (prompt, then one token per step in a `jax.lax.while_loop`) is one jitted function of
(params, input_ids, attention_mask, prng_key). It is built once per decoding plan (the settings that shape the
program: lengths, token ids, processors, beams) and kept on the model, so a second call with the same shapes and
settings runs without compiling.

Shapes: B prompts, N = B x (beams or returned sequences) rows decoded side by side, S prompt tokens, L = max_length
(the cache and the output are L long), V vocabulary. Decoder-only prompts may be left-padded: positions then count
real tokens only (the attention mask's running sum), as the PyTorch loop (`generation/loop.py`) computes them; an
encoder-decoder runs its encoder once and decodes from `decoder_start_token_id`.

The decisions follow the PyTorch loop step for step (same processors, same beam bookkeeping), so greedy and beam
tokens equal `GenerationMixin.generate`'s; the output is 4.x's: `sequences` (N, L), every position past a row's end
holding the pad value (PyTorch trims the batch to its longest row instead).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..generation.config import GenerationConfig
from ..generation.neutral import (Decoding, DecodingPlan, ProcessorSteps, mask_pad, prompt_arrays, request_config,
                                  special_tokens, take_input_ids)
from .outputs import FlaxModelOutput, flax_output

NEG_INF = -float("inf")
NEG = -1.0e9  # the beam search's "never" score, as the PyTorch loop's
# what the PyTorch loop can record per step; the Flax loop returns sequences (and beam scores) only, as 4.x's
_UNSUPPORTED = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


# ---- outputs (4.x names) ------------------------------------------------------------------------------------------
@flax_output
class FlaxGreedySearchOutput(FlaxModelOutput):
    """Greedy decoding: `sequences` (N, max_length), prompt included (decoder-only) or `decoder_start_token_id`
    first (encoder-decoder), padded with the pad token after a row's EOS."""

    sequences: Any = None


@flax_output
class FlaxSampleOutput(FlaxModelOutput):
    """Sampling: `sequences` (N, max_length), as FlaxGreedySearchOutput."""

    sequences: Any = None


@flax_output
class FlaxBeamSearchOutput(FlaxModelOutput):
    """Beam search: `sequences` (B x num_return_sequences, max_length), the best first for each prompt, and their
    `scores` (sum of log-probabilities / generated_length ** length_penalty)."""

    sequences: Any = None
    scores: Any = None


# ---- logits processors: pure functions (sequences (N, L), scores (N, V), cur) -> scores (N, V) ------------------
# `sequences` is the fixed-size buffer; only its first `cur` positions hold tokens. Each function has the semantics
# of its PyTorch namesake in `generation/logits.py` applied to `sequences[:, :cur]`.
def _scatter_flags(shape: tuple[int, int], token_ids: jax.Array, where: jax.Array) -> jax.Array:
    """(N, V) bool: True at each (row, token) with `where` set; `token_ids` (N, K), out-of-vocabulary ids ignored."""
    n, v = shape
    ids = jnp.where(where & (token_ids >= 0) & (token_ids < v), token_ids, v)  # column v: a spare, dropped
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], ids.shape)
    return jnp.zeros((n, v + 1), dtype=bool).at[rows, ids].set(True)[:, :v]


def repetition_penalty(sequences: jax.Array, scores: jax.Array, cur: jax.Array, penalty: float,
                       counted: jax.Array | None = None) -> jax.Array:
    """Every token among the first `cur` of a row (where `counted` (N, L), if given, is True) becomes less likely:
    its score divided by `penalty` when positive, multiplied when negative."""
    where = jnp.arange(sequences.shape[1])[None, :] < cur
    if counted is not None:
        where = where & counted
    seen = _scatter_flags(scores.shape, sequences, where)
    return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def no_repeat_ngram(sequences: jax.Array, scores: jax.Array, cur: jax.Array, n: int) -> jax.Array:
    """Forbid each token that would complete an n-gram already present in the first `cur` tokens of its row."""
    N, L = sequences.shape
    if n <= 0 or L < n:
        return scores
    starts = L - n + 1  # n-grams that fit in the buffer, starting at 0 .. L - n
    match = jnp.arange(starts)[None, :] <= cur - n  # the n-gram lies within the first `cur` tokens
    for j in range(n - 1):  # its first n - 1 tokens equal the row's last n - 1
        last = lax.dynamic_index_in_dim(sequences, jnp.maximum(cur - n + 1 + j, 0), axis=1, keepdims=True)
        match = match & (sequences[:, j:j + starts] == last)
    banned = _scatter_flags(scores.shape, sequences[:, n - 1:], match)
    return jnp.where(banned, NEG_INF, scores)


def _ban(scores: jax.Array, token_ids: Sequence[int], when: jax.Array) -> jax.Array:
    ids = [t for t in token_ids if 0 <= t < scores.shape[-1]]
    if not ids:
        return scores
    mask = jnp.zeros(scores.shape[-1], dtype=bool).at[jnp.array(ids)].set(True)
    return jnp.where(mask & when, NEG_INF, scores)


def min_length(sequences: jax.Array, scores: jax.Array, cur: jax.Array, length: int,
               eos: Sequence[int]) -> jax.Array:
    """No EOS while the sequences (prompt included) are shorter than `length`."""
    return _ban(scores, eos, cur < length)


def min_new_tokens(sequences: jax.Array, scores: jax.Array, cur: jax.Array, prompt_length: int, count: int,
                   eos: Sequence[int]) -> jax.Array:
    """No EOS before `count` tokens have been generated after the `prompt_length` prompt tokens."""
    return _ban(scores, eos, cur - prompt_length < count)


def temperature(sequences: jax.Array, scores: jax.Array, cur: jax.Array, value: float) -> jax.Array:
    return scores / value


def top_k(sequences: jax.Array, scores: jax.Array, cur: jax.Array, k: int, min_keep: int = 1) -> jax.Array:
    """Keep the k highest scores (ties with the k-th included)."""
    k = min(max(k, min_keep), scores.shape[-1])
    kth = lax.top_k(scores, k)[0][..., -1:]
    return jnp.where(scores < kth, NEG_INF, scores)


def top_p(sequences: jax.Array, scores: jax.Array, cur: jax.Array, p: float, min_keep: int = 1) -> jax.Array:
    """Keep the most likely tokens whose probabilities add up to `p` (nucleus sampling)."""
    order = jnp.argsort(scores, axis=-1)  # ascending
    ordered = jnp.take_along_axis(scores, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
    drop = cumulative <= (1 - p)
    drop = drop.at[..., -min_keep:].set(False)
    rows = jnp.arange(scores.shape[0])[:, None]
    drop = jnp.zeros_like(drop).at[rows, order].set(drop)
    return jnp.where(drop, NEG_INF, scores)


def min_p(sequences: jax.Array, scores: jax.Array, cur: jax.Array, p: float, min_keep: int = 1) -> jax.Array:
    """Drop the tokens less likely than `p` times the most likely one."""
    probs = jax.nn.softmax(scores, axis=-1)
    drop = probs < p * probs.max(axis=-1, keepdims=True)
    keep = lax.top_k(probs, min(min_keep, probs.shape[-1]))[1]
    drop = drop.at[jnp.arange(scores.shape[0])[:, None], keep].set(False)
    return jnp.where(drop, NEG_INF, scores)


class _Processors(ProcessorSteps):
    """The processors a config asks for, applied in the PyTorch order with the JAX functions above."""

    ops = sys.modules[__name__]


# ---- the decoding plan: everything static about one compiled program ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Plan(DecodingPlan):
    trace: bool  # False: the loop runs step by step in Python


def _loop(cond: Callable, body: Callable, state: Any, trace: bool) -> Any:
    if trace:
        return lax.while_loop(cond, body, state)
    while bool(cond(state)):  # trace=False: step by step in Python (debugging), as 4.x offers
        state = body(state)
    return state


def _reorder(cache: Any, rows: jax.Array, n: int) -> Any:
    """The cache with its rows (axis 0 of every per-row array) taken in the order `rows`."""
    return jax.tree_util.tree_map(lambda x: x[rows] if x.ndim > 0 and x.shape[0] == n else x, cache)


class FlaxGenerationMixin:
    """`generate` for the Flax classes with a language-model head (`can_generate()`)."""

    def generate(self, input_ids, generation_config: GenerationConfig | None = None, prng_key: jax.Array | None = None,
                 trace: bool = True, params: dict | None = None, logits_processor: Sequence[Callable] | None = None,
                 *, attention_mask=None, **overrides: Any):
        """Continue `input_ids` (B, S); returns FlaxGreedySearchOutput / FlaxSampleOutput / FlaxBeamSearchOutput,
        whose `sequences` is (B x num_return_sequences, max_length): the prompt (decoder-only) or
        `decoder_start_token_id` (encoder-decoder) first, then the new tokens, then the pad token after EOS.

        `generation_config` (default: the model's own) is copied and `overrides` (any of its fields:
        `max_new_tokens=20, do_sample=True, top_p=0.9, num_beams=4, ...`) applied to the copy, as in PyTorch.
        `attention_mask` (B, S) marks left padding (inferred from the pad token when not given, as in PyTorch).
        `prng_key` seeds sampling (default `jax.random.PRNGKey(0)`). `params` replaces the model's parameters.
        `logits_processor`: extra callables (sequences (N, L), scores (N, V), cur_len) -> scores, applied last.
        `trace=False` runs the loop step by step in Python (debugging; slow).

        The decoding is jit-compiled once per (shapes, settings) and the compiled program is kept on the model.
        """
        input_ids = take_input_ids(self, input_ids, overrides, "Flax")
        config = request_config(self, generation_config, overrides, "Flax")
        asked = [name for name in _UNSUPPORTED if config.get(name)]
        if asked:
            warnings.warn(f"generate(): {', '.join(asked)} is not supported by the Flax loop (as in 4.x) and is "
                          "ignored; it returns sequences (and beam scores).", UserWarning, stacklevel=2)
        params = params if params is not None else self.params  # _do_init=False models: params= is needed

        encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        eos, pad = special_tokens(config)
        ids, mask = prompt_arrays(input_ids, attention_mask, mask_pad(pad, eos, encoder_decoder))
        decoding = Decoding.of(self.config, config, eos, pad, encoder_decoder, ids.shape[1])
        beams, sample = decoding.beams, decoding.sample
        if decoding.nothing_to_generate:  # the prompt comes back, as from the PyTorch loop
            first = ids if not encoder_decoder else np.full((ids.shape[0], 1), decoding.start, dtype=np.int32)
            rows = np.repeat(first, decoding.returned, axis=0)
            if beams > 1:
                return FlaxBeamSearchOutput(sequences=jnp.asarray(rows), scores=jnp.zeros(rows.shape[0]))
            return (FlaxSampleOutput if sample else FlaxGreedySearchOutput)(sequences=jnp.asarray(rows))
        plan = decoding.plan(_Plan, _Processors, logits_processor, trace=trace)
        key = prng_key if prng_key is not None else jax.random.PRNGKey(0)
        run = self._generation_program(plan)
        out = run(params, ids, mask, key)
        if beams > 1:
            return FlaxBeamSearchOutput(sequences=out[0], scores=out[1])
        return (FlaxSampleOutput if sample else FlaxGreedySearchOutput)(sequences=out[0])

    # ---- the compiled program ------------------------------------------------------------------------------------
    def _generation_program(self, plan: _Plan) -> Callable:
        """The jitted decoding for `plan`, built once and kept on the model (jax.jit then caches one compiled
        program per input shapes)."""
        programs = self.__dict__.setdefault("_generation_programs", {})
        if plan not in programs:
            fn = functools.partial(self._decode_all, plan)
            programs[plan] = jax.jit(fn) if plan.trace else fn
        return programs[plan]

    def _start(self, plan: _Plan, params: dict, ids: jax.Array, mask: jax.Array):
        """(run, first tokens (N, S0), a fresh cache, counted (N, L) or None): `run(tokens, at, cache)` ->
        (logits (N, V) float32, cache) feeds `tokens` (N, T) at positions at .. at + T - 1; `counted` marks the
        positions the repetition penalty counts (not the prompt's padding)."""
        n, L = ids.shape[0] * plan.expand, plan.max_length
        prompt_mask, mask = mask, jnp.repeat(mask, plan.expand, axis=0)
        if plan.encoder_decoder:
            encoded = self.encode(ids, attention_mask=prompt_mask, params=params, return_dict=True)
            hidden = jnp.repeat(encoded[0], plan.expand, axis=0)
            encoder_outputs = dataclasses.replace(encoded, last_hidden_state=hidden) \
                if dataclasses.is_dataclass(encoded) and hasattr(encoded, "last_hidden_state") else (hidden,)
            decoder_mask = jnp.ones((n, L), dtype=jnp.int32)
            cache = self.init_cache(n, L, encoder_outputs)

            def run(tokens, at, cache):
                out = self.decode(tokens, encoder_outputs, encoder_attention_mask=mask,
                                  decoder_attention_mask=decoder_mask, past_key_values=cache, params=params,
                                  return_dict=True)
                return out.logits[:, -1].astype(jnp.float32), out.past_key_values

            first = jnp.full((n, 1), plan.start, dtype=jnp.int32)
            return run, first, cache, None

        S = ids.shape[1]
        # the mask and positions laid out for the whole cache: the positions after the prompt count as tokens
        # (causality hides them until they are written), as the PyTorch loop's fixed-length cache
        full = jnp.concatenate([mask, jnp.ones((n, L - S), dtype=mask.dtype)], axis=1)
        positions = jnp.where(full == 0, 1, jnp.cumsum(full, axis=1) - 1).astype(jnp.int32)
        cache = self.init_cache(n, L)

        def run(tokens, at, cache):
            where = lax.dynamic_slice_in_dim(positions, at, tokens.shape[1], axis=1)
            out = self(tokens, attention_mask=full, position_ids=where, params=params, past_key_values=cache,
                       return_dict=True)
            return out.logits[:, -1].astype(jnp.float32), out.past_key_values

        return run, jnp.repeat(ids, plan.expand, axis=0), cache, full.astype(bool)

    def _decode_all(self, plan: _Plan, params: dict, ids: jax.Array, mask: jax.Array, key: jax.Array):
        run, first, cache, counted = self._start(plan, params, ids, mask)
        if plan.beams > 1:
            return _beam_search(plan, run, first, cache, counted, key, ids.shape[0])
        return (_greedy_or_sample(plan, run, first, cache, counted, key),)


def _greedy_or_sample(plan: _Plan, run: Callable, first: jax.Array, cache: Any, counted: jax.Array | None,
                      key: jax.Array) -> jax.Array:
    """One token per row per step until every row has hit EOS or max_length (the PyTorch `_decode`)."""
    n, S0 = first.shape
    L = plan.max_length
    sequences = jnp.full((n, L), plan.fill, dtype=jnp.int32).at[:, :S0].set(first)
    eos = jnp.array(plan.eos, dtype=jnp.int32) if plan.eos else None

    def choose(cur, sequences, running, key, logits, cache):
        scores = plan.processors(sequences, logits, cur, counted)
        if plan.sample:
            key, now = jax.random.split(key)
            nxt = jax.random.categorical(now, scores, axis=-1).astype(jnp.int32)
        else:
            nxt = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        if eos is not None:
            nxt = jnp.where(running, nxt, plan.pad)
            running = running & ~jnp.isin(nxt, eos)
        sequences = lax.dynamic_update_slice_in_dim(sequences, nxt[:, None], cur, axis=1)
        return cur + 1, sequences, running, key, cache

    def cond(state):
        cur, _, running, _, _ = state
        go = cur < L
        return go & running.any() if eos is not None else go

    def body(state):
        cur, sequences, running, key, cache = state
        last = lax.dynamic_slice_in_dim(sequences, cur - 1, 1, axis=1)
        logits, cache = run(last, cur - 1, cache)
        return choose(cur, sequences, running, key, logits, cache)

    logits, cache = run(first, 0, cache)  # the prompt (its length differs from a step's): outside the loop
    state = choose(jnp.int32(S0), sequences, jnp.ones(n, dtype=bool), key, logits, cache)
    return _loop(cond, body, state, plan.trace)[1]


def _beam_search(plan: _Plan, run: Callable, first: jax.Array, cache: Any, counted: jax.Array | None,
                 key: jax.Array, batch: int):
    """Vectorised beam search with the PyTorch `_beam_search`'s bookkeeping: 2 x beams candidates per step (more
    with several EOS), finished hypotheses scored by sum of log-probabilities / generated_length ** length_penalty.
    Returns (sequences (B x returned, L), scores (B x returned,))."""
    beams, L, prompt = plan.beams, plan.max_length, first.shape[1]
    n = batch * beams
    keep = max(2, 1 + len(plan.eos)) * beams
    early, lp = plan.early_stopping, plan.length_penalty
    eos = jnp.array(plan.eos, dtype=jnp.int32) if plan.eos else None
    # generated_length ** length_penalty, computed in double then rounded, as the PyTorch loop's python scalar
    penalty = jnp.asarray(np.array([float(g) ** lp if g else 1.0 for g in range(L + 1)], dtype=np.float32))
    top_mask = jnp.arange(keep) < beams
    row_offset = jnp.arange(batch)[:, None] * beams

    running = jnp.full((batch, beams, L), plan.fill, dtype=jnp.int32)
    running = running.at[:, :, :prompt].set(first.reshape(batch, beams, prompt))
    state = dict(
        cur=jnp.int32(prompt), running=running, finished=running,
        running_scores=jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(NEG),
        finished_scores=jnp.full((batch, beams), NEG, jnp.float32),
        done=jnp.zeros((batch, beams), bool), improvable=jnp.ones((batch, 1), bool),
        running_len=jnp.zeros((batch, beams), jnp.int32), finished_len=jnp.zeros((batch, beams), jnp.int32),
        go=jnp.bool_(True), key=key, cache=cache)

    def gather(t, idx):  # t (B, K, ...) indexed along axis 1 by idx (B, K')
        return jnp.take_along_axis(t, idx.reshape(idx.shape + (1,) * (t.ndim - 2)), axis=1)

    def select(s, logits, cache):
        cur = s["cur"]
        flat = s["running"].reshape(n, L)
        log_probs = plan.processors(flat, jax.nn.log_softmax(logits, axis=-1), cur, counted)
        V = log_probs.shape[-1]
        total = (log_probs.reshape(batch, beams, V) + s["running_scores"][:, :, None]).reshape(batch, beams * V)
        key = s["key"]
        if plan.sample:  # `keep` draws without replacement from softmax(total): the Gumbel top-k
            key, now = jax.random.split(key)
            picked = lax.top_k(total + jax.random.gumbel(now, total.shape), keep)[1]
            top_scores = jnp.take_along_axis(total, picked, axis=1)
        else:
            top_scores, picked = lax.top_k(total, keep)
        from_beam, token = picked // V, (picked % V).astype(jnp.int32)
        cand = gather(s["running"], from_beam)
        cand = lax.dynamic_update_slice_in_dim(cand, token[:, :, None], cur, axis=2)
        cand_len = gather(s["running_len"], from_beam) + 1
        stops = jnp.isin(token, eos) if eos is not None else jnp.zeros(token.shape, bool)
        stops = stops | (cur + 1 >= L)

        # the next running beams: the best candidates that did not just stop
        alive = top_scores + stops.astype(jnp.float32) * NEG
        nxt = lax.top_k(alive, beams)[1]
        running, running_scores = gather(cand, nxt), gather(alive, nxt)
        running_len = gather(cand_len, nxt)
        rows = (gather(from_beam, nxt) + row_offset).reshape(-1)

        # finished hypotheses: merge those that just stopped (among the top `beams`) into the kept ones
        just = stops & top_mask[None, :]
        scored = top_scores / penalty[cur + 1 - prompt]
        full = s["done"].all(axis=-1, keepdims=True) & (early is True)
        scored = scored + full * NEG + (~s["improvable"]) * NEG + (~just) * NEG
        merged_scores = jnp.concatenate([s["finished_scores"], scored], axis=1)
        best = lax.top_k(merged_scores, beams)[1]
        finished = gather(jnp.concatenate([s["finished"], cand], axis=1), best)
        finished_scores = gather(merged_scores, best)
        finished_len = gather(jnp.concatenate([s["finished_len"], cand_len], axis=1), best)
        done = gather(jnp.concatenate([s["done"], just], axis=1), best)

        cache = _reorder(cache, rows, n)
        cur = cur + 1
        length = (L - prompt) if early == "never" and lp > 0.0 else (cur - prompt)
        best_running = running_scores[:, :1] / penalty[length]
        worst_done = jnp.where(done, finished_scores.min(axis=1, keepdims=True), NEG)
        improvable = s["improvable"] & (best_running > worst_done).any(axis=-1, keepdims=True)
        go = improvable.any() & ~(done.all() & (early is True)) & ~stops.all()
        return dict(cur=cur, running=running, finished=finished, running_scores=running_scores,
                    finished_scores=finished_scores, done=done, improvable=improvable, running_len=running_len,
                    finished_len=finished_len, go=go, key=key, cache=cache)

    def body(s):
        flat = s["running"].reshape(n, L)
        last = lax.dynamic_slice_in_dim(flat, s["cur"] - 1, 1, axis=1)
        logits, cache = run(last, s["cur"] - 1, s["cache"])
        return select(s, logits, cache)

    logits, cache = run(first, 0, state["cache"])  # the prompt, outside the loop
    state = select(state, logits, cache)
    state = _loop(lambda s: s["go"], body, state, plan.trace)
    returned = plan.returned
    sequences = state["finished"][:, :returned].reshape(batch * returned, L)
    return sequences, state["finished_scores"][:, :returned].reshape(batch * returned)
