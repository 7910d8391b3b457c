"""T5 in JAX/Flax: the same encoder-decoder as `modeling.py` (relative position biases, no attention scaling,
RMS layer norms), as `flax.linen` modules.

Parameter paths are those of the 4.x Flax classes (`encoder/block/0/layer/0/SelfAttention/q/kernel`,
`shared/embedding`; both stacks use `shared`, and `lm_head` exists only while the head is untied). The relative
position table lives in block 0 of each stack; that block computes the stack's bias (positions + mask) and every
later block reuses it.

Decoding uses a cache of fixed size (`init_cache(batch, max_length, encoder_outputs)`): each decoder
self-attention holds `cached_key`, `cached_value` (B, max_length, H, D) and `cache_index` in the linen "cache"
collection, as 4.x lays it out; a `decode(..., past_key_values=cache)` call writes its tokens at `cache_index` and
attends over the whole buffer under a mask built from the positions. Imports no torch.
Shapes: B batch, T new tokens, S attended positions, E encoder tokens, H heads, D d_kv, C d_model.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ...flax.base import FlaxPreTrainedModel
from ...flax.layers import activation, causal_mask, matmul_t, update_cache, wide_dot_general
from ...flax.outputs import (
    FlaxBaseModelOutput,
    FlaxBaseModelOutputWithPastAndCrossAttentions,
    FlaxCausalLMOutputWithCrossAttentions,
    FlaxSeq2SeqLMOutput,
    FlaxSeq2SeqModelOutput,
)
from .configuration import T5Config

FLAX_KEY_RULES = {
    # The stacks' embed_tokens are `shared` (one Flax parameter); `lm_head.weight` is `shared` too while tied.
    "tied": (r"^(encoder|decoder)\.embed_tokens\.weight$", r"^lm_head\.weight$"),
    # Old checkpoints carry a relative-position table in the decoder's first cross-attention, never used.
    "ignore": (r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",),
}


def head_is_tied(config: T5Config) -> bool:
    """Whether the language-model head is `shared` (no `lm_head` parameter). Both config dialects: 4.x writes
    tie_word_embeddings=False for an untied head (T5 v1.1, flan-t5); 5.x writes tie_word_embeddings=True with
    scale_decoder_outputs=False for it (and stores lm_head.weight)."""
    return bool(config.tie_word_embeddings) and bool(getattr(config, "scale_decoder_outputs", True))


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
    """Bucket of each (key position - query position): exact buckets for small distances, logarithmic ones up to
    `max_distance`, one last bucket beyond. Bidirectional halves the buckets between "before" and "after"; causal
    maps every key after the query to bucket 0 (masked anyway). The same arithmetic as the PyTorch class."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    scaled = (jnp.log(jnp.maximum(distance, max(max_exact, 1)).astype(jnp.float32) / max_exact)
              / math.log(max_distance / max_exact))
    far = jnp.minimum(max_exact + (scaled * (num_buckets - max_exact)).astype(relative_position.dtype),
                      num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, far)


def _clamp_half(x):
    """In float16 keep the residual stream finite (just inside the range, further in once an inf appeared)."""
    if x.dtype != jnp.float16:
        return x
    top = float(jnp.finfo(jnp.float16).max)
    limit = jnp.where(jnp.isinf(x).any(), top - 1000, top)
    return jnp.clip(x, -limit, limit)


def _dense(features: int, std: float, dtype, param_dtype, name: str | None = None):
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=jax.nn.initializers.normal(std), name=name,
                    dot_general=wide_dot_general)


class FlaxT5LayerNorm(nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps): no mean, no bias; the statistic in float32."""

    hidden_size: int
    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.weight = self.param("weight", jax.nn.initializers.ones, (self.hidden_size,), self.param_dtype)

    def __call__(self, x):
        variance = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        x = x * lax.rsqrt(variance + self.eps)
        weight = jnp.asarray(self.weight, self.dtype)
        if weight.dtype in (jnp.float16, jnp.bfloat16):
            x = x.astype(weight.dtype)
        return weight * x


class FlaxT5DenseActDense(nn.Module):
    """wo(act(wi(x)))."""

    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg, f = self.config, self.config.initializer_factor
        self.wi = _dense(cfg.d_ff, f * cfg.d_model**-0.5, self.dtype, self.param_dtype)
        self.wo = _dense(cfg.d_model, f * cfg.d_ff**-0.5, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.act = activation(cfg.dense_act_fn)

    def __call__(self, x, deterministic: bool = True):
        return self.wo(self.dropout(self.act(self.wi(x)), deterministic=deterministic))


class FlaxT5DenseGatedActDense(nn.Module):
    """wo(act(wi_0(x)) * wi_1(x)): T5 v1.1's gated feed-forward."""

    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg, f = self.config, self.config.initializer_factor
        self.wi_0 = _dense(cfg.d_ff, f * cfg.d_model**-0.5, self.dtype, self.param_dtype)
        self.wi_1 = _dense(cfg.d_ff, f * cfg.d_model**-0.5, self.dtype, self.param_dtype)
        self.wo = _dense(cfg.d_model, f * cfg.d_ff**-0.5, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.act = activation(cfg.dense_act_fn)

    def __call__(self, x, deterministic: bool = True):
        h = self.act(self.wi_0(x)) * self.wi_1(x)
        return self.wo(self.dropout(h, deterministic=deterministic))


class FlaxT5LayerFF(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        cls = FlaxT5DenseGatedActDense if cfg.is_gated_act else FlaxT5DenseActDense
        self.DenseReluDense = cls(cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        self.layer_norm = FlaxT5LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=self.dtype,
                                          param_dtype=self.param_dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, deterministic: bool = True):
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x), deterministic), deterministic=deterministic)


class FlaxT5Attention(nn.Module):
    """Multi-head attention with an additive bias and no 1/sqrt(D) scaling (T5 folds it into q's initialisation).

    Self-attention of a block that owns the relative position table (`has_relative_attention_bias`) builds the
    stack's bias when none is given: relative positions where attending is allowed, the dtype's lowest value
    elsewhere; without the table the bias is the mask alone."""

    config: T5Config
    causal: bool = False
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg, f = self.config, self.config.initializer_factor
        inner = cfg.num_heads * cfg.d_kv
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.q = _dense(inner, f * (cfg.d_model * cfg.d_kv) ** -0.5, **kw)
        self.k = _dense(inner, f * cfg.d_model**-0.5, **kw)
        self.v = _dense(inner, f * cfg.d_model**-0.5, **kw)
        self.o = _dense(cfg.d_model, f * inner**-0.5, **kw)
        if self.has_relative_attention_bias:
            self.relative_attention_bias = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads,
                                                    embedding_init=jax.nn.initializers.normal(f * cfg.d_model**-0.5),
                                                    **kw)

    def compute_bias(self, query_positions, key_length: int):
        """(1, H, T, S) learned bias of each key position relative to each query position (T,)."""
        cfg = self.config
        relative = jnp.arange(key_length, dtype=jnp.int32)[None, :] - query_positions.astype(jnp.int32)[:, None]
        buckets = relative_position_bucket(relative, bidirectional=not self.causal,
                                           num_buckets=cfg.relative_attention_num_buckets,
                                           max_distance=cfg.relative_attention_max_distance)
        return jnp.transpose(self.relative_attention_bias(buckets), (2, 0, 1))[None]

    @nn.compact
    def _cache(self, k, v, init_cache: bool):
        return update_cache(self, k, v, init_cache)

    def __call__(self, x, attention_mask=None, key_value_states=None, position_bias=None,
                 deterministic: bool = True, init_cache: bool = False, output_attentions: bool = False):
        """x (B, T, C); attention_mask (B, S) 0/1 (used only to build the bias); key_value_states (B, E, C) for
        cross-attention; position_bias additive (B|1, H|1, T, S) or None. Returns (out (B, T, C), the bias
        used, the attention weights (B, H, T, S) or None)."""
        cfg = self.config
        B, T, _ = x.shape
        H, D = cfg.num_heads, cfg.d_kv
        source = x if key_value_states is None else key_value_states
        q = self.q(x).reshape(B, T, H, D)
        k = self.k(source).reshape(B, source.shape[1], H, D)
        v = self.v(source).reshape(B, source.shape[1], H, D)
        q_pos = jnp.arange(T)
        if self.causal and key_value_states is None:
            k, v, q_pos = self._cache(k, v, init_cache)
        S = k.shape[1]
        if position_bias is None:
            if self.has_relative_attention_bias:
                position_bias = self.compute_bias(q_pos, S).astype(self.dtype)
            else:
                position_bias = jnp.zeros((1, 1, T, S), self.dtype)
            if self.causal and key_value_states is None:
                allowed = causal_mask(attention_mask, q_pos, S)  # (B|1, 1, T, S)
            else:
                allowed = None if attention_mask is None else attention_mask[:, None, None, :] != 0
            if allowed is not None:
                position_bias = jnp.where(allowed, position_bias, jnp.finfo(self.dtype).min)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + position_bias
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        if not deterministic and cfg.dropout_rate > 0.0:
            keep_p = 1.0 - cfg.dropout_rate
            kept = jax.random.bernoulli(self.make_rng("dropout"), keep_p, weights.shape)
            weights = jnp.where(kept, weights / keep_p, 0.0).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, T, H * D)
        return self.o(out), position_bias, weights if output_attentions else None


class FlaxT5LayerSelfAttention(nn.Module):
    config: T5Config
    causal: bool = False
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.SelfAttention = FlaxT5Attention(cfg, causal=self.causal,
                                             has_relative_attention_bias=self.has_relative_attention_bias,
                                             dtype=self.dtype, param_dtype=self.param_dtype)
        self.layer_norm = FlaxT5LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=self.dtype,
                                          param_dtype=self.param_dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, attention_mask=None, position_bias=None, deterministic: bool = True,
                 init_cache: bool = False, output_attentions: bool = False):
        out, bias, weights = self.SelfAttention(self.layer_norm(x), attention_mask, None, position_bias,
                                                deterministic, init_cache, output_attentions)
        return x + self.dropout(out, deterministic=deterministic), bias, weights


class FlaxT5LayerCrossAttention(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.EncDecAttention = FlaxT5Attention(cfg, causal=False, has_relative_attention_bias=False,
                                               dtype=self.dtype, param_dtype=self.param_dtype)
        self.layer_norm = FlaxT5LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=self.dtype,
                                          param_dtype=self.param_dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, encoder_states, cross_bias, deterministic: bool = True, output_attentions: bool = False):
        out, _, weights = self.EncDecAttention(self.layer_norm(x), None, encoder_states, cross_bias,
                                               deterministic, False, output_attentions)
        return x + self.dropout(out, deterministic=deterministic), weights


class FlaxT5BlockLayers(nn.Module):
    """The sub-layers of one block, named "0", "1"(, "2") as the checkpoint's `layer.N`: self-attention,
    (decoder) cross-attention, feed-forward."""

    config: T5Config
    causal: bool = False
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        layers = [FlaxT5LayerSelfAttention(self.config, causal=self.causal,
                                           has_relative_attention_bias=self.has_relative_attention_bias,
                                           name="0", **kw)]
        if self.causal:
            layers.append(FlaxT5LayerCrossAttention(self.config, name="1", **kw))
        layers.append(FlaxT5LayerFF(self.config, name=str(len(layers)), **kw))
        self.layers = layers

    def __call__(self, x, attention_mask, position_bias, encoder_states, cross_bias, deterministic: bool = True,
                 init_cache: bool = False, output_attentions: bool = False):
        x, position_bias, weights = self.layers[0](x, attention_mask, position_bias, deterministic, init_cache,
                                                   output_attentions)
        x = _clamp_half(x)
        cross_weights = None
        if self.causal and encoder_states is not None:
            x, cross_weights = self.layers[1](x, encoder_states, cross_bias, deterministic, output_attentions)
            x = _clamp_half(x)
        x = _clamp_half(self.layers[-1](x, deterministic))
        return x, position_bias, weights, cross_weights


class FlaxT5Block(nn.Module):
    """One block (`block.N`); its sub-layers sit under `layer`."""

    config: T5Config
    causal: bool = False
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.layer = FlaxT5BlockLayers(self.config, causal=self.causal,
                                       has_relative_attention_bias=self.has_relative_attention_bias,
                                       dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, x, attention_mask, position_bias, encoder_states, cross_bias, deterministic: bool = True,
                 init_cache: bool = False, output_attentions: bool = False):
        return self.layer(x, attention_mask, position_bias, encoder_states, cross_bias, deterministic, init_cache,
                          output_attentions)


class FlaxT5BlockCollection(nn.Module):
    config: T5Config
    causal: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        cfg = self.config
        n = cfg.num_decoder_layers if self.causal else cfg.num_layers
        # deterministic, init_cache, output_attentions: Python booleans, static under remat (flax counts self as 0)
        cls = nn.remat(FlaxT5Block, static_argnums=(6, 7, 8)) if self.gradient_checkpointing else FlaxT5Block
        self.blocks = [cls(cfg, causal=self.causal, has_relative_attention_bias=(i == 0), dtype=self.dtype,
                           param_dtype=self.param_dtype, name=str(i)) for i in range(n)]

    def __call__(self, x, attention_mask, encoder_states, cross_bias, deterministic: bool = True,
                 init_cache: bool = False, output_attentions: bool = False, output_hidden_states: bool = False):
        hidden, attentions, cross_attentions = [], [], []
        position_bias = None  # built by block 0, shared by the others
        for block in self.blocks:
            if output_hidden_states:
                hidden.append(x)
            x, position_bias, weights, cross_weights = block(x, attention_mask, position_bias, encoder_states,
                                                             cross_bias, deterministic, init_cache,
                                                             output_attentions)
            attentions.append(weights)
            cross_attentions.append(cross_weights)
        return x, hidden, attentions, cross_attentions


class FlaxT5Stack(nn.Module):
    """The encoder (causal=False) or the decoder: shared embeddings -> blocks -> final_layer_norm."""

    config: T5Config
    embed_tokens: nn.Embed
    causal: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        cfg = self.config
        self.block = FlaxT5BlockCollection(cfg, causal=self.causal, dtype=self.dtype, param_dtype=self.param_dtype,
                                           gradient_checkpointing=self.gradient_checkpointing)
        self.final_layer_norm = FlaxT5LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=self.dtype,
                                                param_dtype=self.param_dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, input_ids, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 deterministic: bool = True, init_cache: bool = False, output_attentions: bool = False,
                 output_hidden_states: bool = False, return_dict: bool = True):
        x = self.dropout(self.embed_tokens(input_ids.astype("i4")), deterministic=deterministic)
        cross_bias = None
        if self.causal and encoder_hidden_states is not None and encoder_attention_mask is not None:
            keep = jnp.asarray(encoder_attention_mask)[:, None, None, :] > 0  # (B, 1, 1, E)
            cross_bias = jnp.where(keep, jnp.zeros((), self.dtype), jnp.finfo(self.dtype).min)
        elif self.causal and encoder_hidden_states is not None:
            cross_bias = jnp.zeros((1, 1, 1, encoder_hidden_states.shape[1]), self.dtype)
        x, hidden, attentions, cross = self.block(x, attention_mask, encoder_hidden_states, cross_bias,
                                                  deterministic, init_cache, output_attentions,
                                                  output_hidden_states)
        x = self.dropout(self.final_layer_norm(x), deterministic=deterministic)
        hidden = tuple(hidden) + (x,) if output_hidden_states else None
        attentions = tuple(attentions) if output_attentions else None
        cross = tuple(cross) if output_attentions and self.causal and encoder_hidden_states is not None else None
        if not self.causal:
            if not return_dict:
                return tuple(v for v in (x, hidden, attentions) if v is not None)
            return FlaxBaseModelOutput(last_hidden_state=x, hidden_states=hidden, attentions=attentions)
        if not return_dict:
            return tuple(v for v in (x, hidden, attentions, cross) if v is not None)
        return FlaxBaseModelOutputWithPastAndCrossAttentions(last_hidden_state=x, hidden_states=hidden,
                                                             attentions=attentions, cross_attentions=cross)


class _T5Base(nn.Module):
    """`shared` + the stacks; `encode` / `decode` are the entry points the model class calls by method."""

    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False
    with_decoder = True

    def setup(self):
        cfg = self.config
        self.shared = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
                               embedding_init=jax.nn.initializers.normal(cfg.initializer_factor))
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, gradient_checkpointing=self.gradient_checkpointing)
        self.encoder = FlaxT5Stack(cfg, self.shared, causal=False, **kw)
        if self.with_decoder:
            self.decoder = FlaxT5Stack(cfg, self.shared, causal=True, **kw)
        self._setup_head()

    def _setup_head(self):
        pass

    def encode(self, input_ids, attention_mask=None, deterministic: bool = True, output_attentions: bool = False,
               output_hidden_states: bool = False, return_dict: bool = True):
        return self.encoder(input_ids, attention_mask, deterministic=deterministic,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            return_dict=return_dict)

    def decode(self, decoder_input_ids, decoder_attention_mask, encoder_hidden_states, encoder_attention_mask=None,
               deterministic: bool = True, init_cache: bool = False, output_attentions: bool = False,
               output_hidden_states: bool = False, return_dict: bool = True):
        return self.decoder(decoder_input_ids, decoder_attention_mask, encoder_hidden_states, encoder_attention_mask,
                            deterministic=deterministic, init_cache=init_cache, output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states, return_dict=return_dict)

    def _encode_decode(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, deterministic,
                       output_attentions, output_hidden_states):
        enc = self.encode(input_ids, attention_mask, deterministic, output_attentions, output_hidden_states)
        dec = self.decode(decoder_input_ids, decoder_attention_mask, enc.last_hidden_state, attention_mask,
                          deterministic, False, output_attentions, output_hidden_states)
        return enc, dec


class FlaxT5Module(_T5Base):
    """Encoder + decoder: (source ids, decoder ids) -> decoder hidden states (B, T, C)."""

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        enc, dec = self._encode_decode(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                                       deterministic, output_attentions, output_hidden_states)
        out = FlaxSeq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state, decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions, cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state, encoder_hidden_states=enc.hidden_states,
            encoder_attentions=enc.attentions)
        return out if return_dict else out.to_tuple()


class FlaxT5ForConditionalGenerationModule(_T5Base):
    """Encoder + decoder + language-model head: -> next-token logits (B, T, vocab)."""

    def _setup_head(self):
        if not head_is_tied(self.config):
            self.lm_head = _dense(self.config.vocab_size, self.config.initializer_factor, self.dtype,
                                  self.param_dtype)

    def logits(self, decoder_hidden):
        cfg = self.config
        if getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings):  # the original T5: rescale first
            decoder_hidden = decoder_hidden * (cfg.d_model**-0.5)
        if head_is_tied(cfg):
            return matmul_t(decoder_hidden, jnp.asarray(self.shared.embedding, self.dtype))
        return self.lm_head(decoder_hidden)

    def decode_logits(self, decoder_input_ids, decoder_attention_mask, encoder_hidden_states,
                      encoder_attention_mask=None, deterministic: bool = True, init_cache: bool = False,
                      output_attentions: bool = False, output_hidden_states: bool = False):
        dec = self.decode(decoder_input_ids, decoder_attention_mask, encoder_hidden_states, encoder_attention_mask,
                          deterministic, init_cache, output_attentions, output_hidden_states)
        return self.logits(dec.last_hidden_state), dec

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        enc, dec = self._encode_decode(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                                       deterministic, output_attentions, output_hidden_states)
        out = FlaxSeq2SeqLMOutput(
            logits=self.logits(dec.last_hidden_state), decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions, cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state, encoder_hidden_states=enc.hidden_states,
            encoder_attentions=enc.attentions)
        return out if return_dict else out.to_tuple()


class FlaxT5EncoderModule(_T5Base):
    """The encoder alone: ids -> hidden states (B, E, C)."""

    with_decoder = False

    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, return_dict: bool = True):
        return self.encode(input_ids, attention_mask, deterministic, output_attentions, output_hidden_states,
                           return_dict)


def _encoder_hidden(encoder_outputs):
    """The last hidden state from an `encode` output, a tuple, or the array itself."""
    if hasattr(encoder_outputs, "last_hidden_state"):
        return encoder_outputs.last_hidden_state
    if isinstance(encoder_outputs, (tuple, list)):
        return encoder_outputs[0]
    return encoder_outputs


class FlaxT5PreTrainedModel(FlaxPreTrainedModel):
    """Weights, loading, `encode` / `decode`, the fixed-size cache and the 4.x call convention."""

    config_class = T5Config
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    module_class: type[nn.Module] = None
    flax_key_rules = FLAX_KEY_RULES

    def __init__(self, config: T5Config, input_shape: tuple = (1, 1), seed: int = 0, dtype: Any = jnp.float32,
                 _do_init: bool = True, gradient_checkpointing: bool = False, **kwargs):
        module = self.module_class(config=config, dtype=dtype, gradient_checkpointing=gradient_checkpointing, **kwargs)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    def init_weights(self, rng, input_shape: tuple, params=None):
        input_ids = jnp.zeros(input_shape, dtype="i4")
        args = [input_ids, jnp.ones_like(input_ids)]
        if self.module.with_decoder:
            args += [jnp.ones_like(input_ids), jnp.ones_like(input_ids)]
        params_rng, dropout_rng = jax.random.split(rng)
        random = self.module.init({"params": params_rng, "dropout": dropout_rng}, *args)["params"]
        return self._fill_missing(random, params) if params is not None else random

    # ---- calls ------------------------------------------------------------------------------------------------
    def _flags(self, output_attentions, output_hidden_states, return_dict):
        cfg = self.config
        return (cfg.output_attentions if output_attentions is None else output_attentions,
                cfg.output_hidden_states if output_hidden_states is None else output_hidden_states,
                cfg.return_dict if return_dict is None else return_dict)

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                 return_dict: bool | None = None, train: bool = False, params: dict | None = None, dropout_rng=None):
        if decoder_input_ids is None:
            raise ValueError("Give decoder_input_ids too: T5 decodes from them (for training, the labels shifted "
                             "right behind config.decoder_start_token_id).")
        attentions, hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        input_ids = jnp.asarray(input_ids, dtype="i4")
        decoder_input_ids = jnp.asarray(decoder_input_ids, dtype="i4")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if decoder_attention_mask is None:
            decoder_attention_mask = jnp.ones_like(decoder_input_ids)
        return self.module.apply(
            {"params": self._params_or_own(params)}, input_ids,
            jnp.asarray(attention_mask, dtype="i4"), decoder_input_ids, jnp.asarray(decoder_attention_mask, dtype="i4"),
            not train, attentions, hidden, return_dict,
            rngs={"dropout": dropout_rng} if dropout_rng is not None else {})

    def encode(self, input_ids, attention_mask=None, output_attentions: bool | None = None,
               output_hidden_states: bool | None = None, return_dict: bool | None = None, train: bool = False,
               params: dict | None = None, dropout_rng=None):
        """The encoder alone: -> FlaxBaseModelOutput (last_hidden_state (B, E, C)), to pass to `decode`."""
        attentions, hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        input_ids = jnp.asarray(input_ids, dtype="i4")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        return self.module.apply(
            {"params": self._params_or_own(params)}, input_ids,
            jnp.asarray(attention_mask, dtype="i4"), not train, attentions, hidden, return_dict,
            rngs={"dropout": dropout_rng} if dropout_rng is not None else {}, method="encode")

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs) -> dict:
        """A zero cache for decoding up to `max_length` tokens against `encoder_outputs` (from `encode`):
        {"decoder": {"block": {N: {"layer": {"0": {"SelfAttention": {"cached_key", "cached_value",
        "cache_index"}}}}}}}, as 4.x lays it out. Built from shapes alone (no forward, no parameters)."""
        ids = jnp.ones((batch_size, max_length), dtype="i4")
        encoder_hidden = _encoder_hidden(encoder_outputs)
        shapes = jax.eval_shape(lambda: self.module.init(
            jax.random.PRNGKey(0), ids, jnp.ones_like(ids), encoder_hidden, init_cache=True, method="decode"))
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), dict(shapes["cache"]))

    def _decode_method(self) -> str:
        return "decode"

    def decode(self, decoder_input_ids, encoder_outputs, encoder_attention_mask=None, decoder_attention_mask=None,
               past_key_values: dict | None = None, output_attentions: bool | None = None,
               output_hidden_states: bool | None = None, return_dict: bool | None = None, train: bool = False,
               params: dict | None = None, dropout_rng=None):
        """The decoder against `encoder_outputs`. With `past_key_values` (from `init_cache` or a previous
        output), the tokens are written at the cache's index, `decoder_attention_mask` covers its max_length
        positions (shorter masks are padded with ones) and the output carries the updated cache."""
        attentions, hidden, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        encoder_hidden = _encoder_hidden(encoder_outputs)
        decoder_input_ids = jnp.asarray(decoder_input_ids, dtype="i4")
        if encoder_attention_mask is None:
            encoder_attention_mask = jnp.ones(encoder_hidden.shape[:2], dtype="i4")
        if decoder_attention_mask is None:
            decoder_attention_mask = jnp.ones_like(decoder_input_ids)
        variables = {"params": self._params_or_own(params)}
        if past_key_values is not None:
            variables["cache"] = past_key_values
        out = self.module.apply(
            variables, decoder_input_ids, jnp.asarray(decoder_attention_mask, dtype="i4"), encoder_hidden,
            jnp.asarray(encoder_attention_mask, dtype="i4"), not train, False, attentions, hidden,
            rngs={"dropout": dropout_rng} if dropout_rng is not None else {},
            mutable=["cache"] if past_key_values is not None else False, method=self._decode_method())
        cache = None
        if past_key_values is not None:
            out, updated = out
            cache = dict(updated["cache"])
        out = self._decoder_output(out)
        if cache is not None:
            out["past_key_values"] = cache
        return out if return_dict else out.to_tuple()

    def _decoder_output(self, out):
        return out


class FlaxT5Model(FlaxT5PreTrainedModel):
    """Encoder + decoder: -> last_hidden_state (B, T, C) of the decoder, and the encoder's outputs."""

    module_class = FlaxT5Module


class FlaxT5ForConditionalGeneration(FlaxT5PreTrainedModel):
    """Encoder + decoder + language-model head: -> logits (B, T, vocab); `decode` returns logits too."""

    module_class = FlaxT5ForConditionalGenerationModule

    def _decode_method(self) -> str:
        return "decode_logits"

    def _decoder_output(self, out):
        logits, dec = out
        return FlaxCausalLMOutputWithCrossAttentions(logits=logits, hidden_states=dec.hidden_states,
                                                     attentions=dec.attentions, cross_attentions=dec.cross_attentions)

    def prepare_inputs_for_generation(self, decoder_input_ids, max_length: int, attention_mask=None,
                                      decoder_attention_mask=None, encoder_outputs=None, **kwargs):
        """The decoding state: a fresh cache of `max_length`, the decoder mask over its max_length positions (the
        given one, then ones: later positions are hidden causally), the encoder's outputs and mask."""
        B = decoder_input_ids.shape[0]
        full_mask = jnp.ones((B, max_length), dtype="i4")
        if decoder_attention_mask is not None:
            full_mask = lax.dynamic_update_slice(full_mask, jnp.asarray(decoder_attention_mask, "i4"), (0, 0))
        return {"past_key_values": self.init_cache(B, max_length, encoder_outputs), "encoder_outputs": encoder_outputs,
                "encoder_attention_mask": attention_mask, "decoder_attention_mask": full_mask}

    def update_inputs_for_generation(self, model_outputs, model_kwargs: dict) -> dict:
        model_kwargs["past_key_values"] = model_outputs.past_key_values
        return model_kwargs


class FlaxT5EncoderModel(FlaxT5PreTrainedModel):
    """The encoder alone: -> last_hidden_state (B, E, C). Loads the encoder half of a full checkpoint."""

    module_class = FlaxT5EncoderModule
    # a full checkpoint's decoder and head: read past, not reported (as the PyTorch T5EncoderModel)
    flax_key_rules = {**FLAX_KEY_RULES, "ignore": (*FLAX_KEY_RULES["ignore"], r"^decoder[./]", r"^lm_head[./]")}

    def __call__(self, input_ids, attention_mask=None, output_attentions: bool | None = None,
                 output_hidden_states: bool | None = None, return_dict: bool | None = None, train: bool = False,
                 params: dict | None = None, dropout_rng=None):
        return self.encode(input_ids, attention_mask, output_attentions, output_hidden_states, return_dict, train,
                           params, dropout_rng)


__all__ = ["FlaxT5EncoderModel", "FlaxT5ForConditionalGeneration", "FlaxT5Model", "FlaxT5PreTrainedModel"]
