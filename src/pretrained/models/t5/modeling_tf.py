"""T5 in TensorFlow (Keras 3): the encoder-decoder of `modeling.py` (relative position biases, no attention
scaling, RMS layer norms) as Keras layers.

Weight names are 4.57's TF T5 names, so its `tf_model.h5` files load as they are and ours load there:
`shared/embeddings` (4.x wrote it as `shared/shared/embeddings`: the first component, the model's name elsewhere, is
dropped on both sides), `.../encoder/block_._0/layer_._0/SelfAttention/q/kernel`,
`.../encoder/block_._0/layer_._0/SelfAttention/relative_attention_bias/embeddings`,
`.../decoder/block_._0/layer_._1/EncDecAttention/k/kernel`, `.../decoder/block_._0/layer_._2/DenseReluDense/wi/kernel`,
`.../encoder/block_._0/layer_._0/layer_norm/weight`, `.../decoder/final_layer_norm/weight`, and `lm_head/kernel`
only while the head is untied. Both stacks embed with `shared` (no weight of their own).

The decoder's cache (`past_key_values`) holds per layer (self key, self value, cross key, cross value), each
(B, H, S|E, D), as 4.x's TF T5: growing (each call appends its tokens), or fixed-size with `cache_position`
(`init_cache(batch, max_length, encoder_outputs=...)` computes the cross-attention keys and values once; see
`pretrained/tf/layers.py` for the self-attention part). A layer entry of two tensors holds the self-attention part
only: the cross-attention keys and values are then computed on every call. Imports no torch.
Shapes: B batch, T new tokens, S attended positions, E encoder tokens, H heads, D d_kv, C d_model, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ...errors import ConfigError
from ...tf.base import TFPreTrainedModel
from ...tf.layers import (
    ModelInitializer,
    TFRMSNorm,
    activation,
    build_child,
    cache_layout,
    causal_mask,
    update_cache,
)
from ...tf.losses import token_loss
from ...tf.outputs import (
    TFBaseModelOutput,
    TFBaseModelOutputWithPastAndCrossAttentions,
    TFSeq2SeqLMOutput,
    TFSeq2SeqModelOutput,
)
from .configuration import T5Config

_EMBED_TIES = (r"^(encoder|decoder)\.embed_tokens\.weight$",)
# Old checkpoints carry a relative-position table in the decoder's first cross-attention, never used (PyTorch name
# and Keras path).
_OLD_CROSS_TABLE = r"^decoder[./]block(\.|_\._)0[./]layer(\.|_\._)1[./]EncDecAttention[./]relative_attention_bias[./]"

# What the generic PyTorch <-> Keras rule cannot infer (see pretrained.tf.convert): the stacks' embed_tokens are
# `shared` (one Keras weight), and so is `lm_head.weight` while the head is tied.
TF_KEY_RULES = {"tied": (*_EMBED_TIES, r"^lm_head\.weight$"), "ignore": (_OLD_CROSS_TABLE,)}
# The encoder alone: a full checkpoint's decoder and head are read and dropped, not reported.
TF_ENCODER_KEY_RULES = {"tied": _EMBED_TIES, "ignore": (_OLD_CROSS_TABLE, r"^decoder[./]", r"^lm_head[./]")}


def head_is_tied(config: T5Config) -> bool:
    """Whether the language-model head is `shared` (no `lm_head` weight). Both config dialects: 4.x writes
    tie_word_embeddings=False for an untied head (T5 v1.1, flan-t5); 5.x writes tie_word_embeddings=True with
    scale_decoder_outputs=False for it (and stores lm_head.weight)."""
    return bool(config.tie_word_embeddings) and bool(getattr(config, "scale_decoder_outputs", True))


def _normal(std: float) -> ModelInitializer:
    return ModelInitializer(keras.initializers.RandomNormal(stddev=std))


def _linear(units: int, name: str, std: float) -> keras.layers.Dense:
    """A bias-free projection initialised as T5 does (normal of the given std)."""
    return keras.layers.Dense(units, use_bias=False, kernel_initializer=_normal(std), name=name)


def _dropout(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
    return tf.nn.dropout(x, rate=rate) if training and rate > 0.0 else x


def _clamp_half(x: tf.Tensor) -> tf.Tensor:
    """In float16 keep the residual stream finite (just inside the range, further in once an inf appeared)."""
    if x.dtype != tf.float16:
        return x
    top = tf.constant(np.finfo(np.float16).max, tf.float16)
    limit = tf.where(tf.reduce_any(tf.math.is_inf(x)), top - 1000, top)
    return tf.clip_by_value(x, -limit, limit)


def relative_position_bucket(relative_position: tf.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> tf.Tensor:
    """Bucket of each (key position - query position): exact buckets for small distances, logarithmic ones up to
    `max_distance`, one last bucket beyond. Bidirectional halves the buckets between "before" and "after"; causal
    maps every key after the query to bucket 0 (masked anyway). The same float32 arithmetic as the PyTorch class."""
    relative_position = tf.cast(relative_position, tf.int32)
    buckets = tf.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = tf.cast(relative_position > 0, tf.int32) * num_buckets
        distance = tf.abs(relative_position)
    else:
        distance = tf.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    scaled = (tf.math.log(tf.cast(tf.maximum(distance, max(max_exact, 1)), tf.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact)))
    far = tf.minimum(max_exact + tf.cast(scaled * np.float32(num_buckets - max_exact), tf.int32), num_buckets - 1)
    return buckets + tf.where(distance < max_exact, distance, far)


class TFT5DenseActDense(keras.layers.Layer):
    """wo(act(wi(x))), or T5 v1.1's gated wo(act(wi_0(x)) * wi_1(x))."""

    def __init__(self, config: T5Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        f, C, F = config.initializer_factor, config.d_model, config.d_ff
        self.gated = config.is_gated_act
        if self.gated:
            self.wi_0 = _linear(F, "wi_0", f * C**-0.5)
            self.wi_1 = _linear(F, "wi_1", f * C**-0.5)
        else:
            self.wi = _linear(F, "wi", f * C**-0.5)
        self.wo = _linear(C, "wo", f * F**-0.5)
        self.act = activation(config.dense_act_fn)

    def build(self, input_shape=None) -> None:
        C = self.config.d_model
        for layer in ((self.wi_0, self.wi_1) if self.gated else (self.wi,)):
            build_child(layer, (None, None, C))
        build_child(self.wo, (None, None, self.config.d_ff))
        self.built = True

    def call(self, x, training=False):
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(_dropout(h, self.config.dropout_rate, training))


class TFT5Attention(keras.layers.Layer):
    """Multi-head attention with an additive bias (relative positions + mask) and no 1/sqrt(D) scaling (T5 folds it
    into the initialisation of `q`). With `has_relative_attention_bias` it owns its stack's bucket table."""

    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config, self.is_decoder = config, is_decoder
        self.n_heads, self.key_value_proj_dim = config.num_heads, config.d_kv
        self.has_relative_attention_bias = has_relative_attention_bias
        f, C = config.initializer_factor, config.d_model
        inner = config.num_heads * config.d_kv
        self.inner_dim = inner
        self.q = _linear(inner, "q", f * (C * config.d_kv) ** -0.5)
        self.k = _linear(inner, "k", f * C**-0.5)
        self.v = _linear(inner, "v", f * C**-0.5)
        self.o = _linear(C, "o", f * inner**-0.5)
        if has_relative_attention_bias:
            self.relative_attention_bias = keras.layers.Embedding(
                config.relative_attention_num_buckets, config.num_heads, embeddings_initializer=_normal(f * C**-0.5),
                name="relative_attention_bias")

    def build(self, input_shape=None) -> None:
        C = self.config.d_model
        for proj in (self.q, self.k, self.v):
            build_child(proj, (None, None, C))
        build_child(self.o, (None, None, self.inner_dim))
        if self.has_relative_attention_bias:
            build_child(self.relative_attention_bias, None)
        self.built = True

    def compute_bias(self, query_positions: tf.Tensor, kv_len: Any) -> tf.Tensor:
        """(1, H, T, S) learned bias of each key position 0..S-1 relative to each query at `query_positions` (T,)."""
        key_pos = tf.range(kv_len, dtype=tf.int32)[None, :]
        buckets = relative_position_bucket(key_pos - tf.cast(query_positions, tf.int32)[:, None],
                                           bidirectional=not self.is_decoder,
                                           num_buckets=self.config.relative_attention_num_buckets,
                                           max_distance=self.config.relative_attention_max_distance)
        return tf.transpose(self.relative_attention_bias(buckets), (2, 0, 1))[None]

    def _heads(self, x: tf.Tensor) -> tf.Tensor:  # (B, L, H*D) -> (B, H, L, D)
        B, L = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, (B, L, self.n_heads, self.key_value_proj_dim)), (0, 2, 1, 3))

    def call(self, x, bias=None, encoder_states=None, past=None, cache_position=None, training=False):
        """x (B, T, C); bias additive (B|1, H|1, T, S|E) or None; encoder_states (B, E, C) for cross-attention;
        past: this layer's (keys, values) so far (self-attention: a cache; cross-attention: the encoder's, reused).
        Returns (B, T, C), the attention weights (B, H, T, S|E) and the (keys, values) attended over."""
        q = self._heads(self.q(x))  # (B, H, T, D)
        if encoder_states is None:
            k, v = update_cache(past, self._heads(self.k(x)), self._heads(self.v(x)), cache_position)
        elif past is not None:
            k, v = past
        else:
            k, v = self._heads(self.k(encoder_states)), self._heads(self.v(encoder_states))
        scores = tf.matmul(q, tf.cast(k, q.dtype), transpose_b=True)
        if bias is not None:
            scores = scores + tf.cast(bias, scores.dtype)
        weights = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1), q.dtype)
        weights = _dropout(weights, self.config.dropout_rate, training)
        out = tf.transpose(tf.matmul(weights, tf.cast(v, weights.dtype)), (0, 2, 1, 3))
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        return self.o(tf.reshape(out, (B, T, self.inner_dim))), weights, (k, v)


class TFT5LayerSelfAttention(keras.layers.Layer):
    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.SelfAttention = TFT5Attention(config, is_decoder, has_relative_attention_bias, name="SelfAttention")
        self.layer_norm = TFRMSNorm(config.d_model, config.layer_norm_epsilon, name="layer_norm")

    def build(self, input_shape=None) -> None:
        build_child(self.SelfAttention, None)
        build_child(self.layer_norm, None)
        self.built = True

    def call(self, x, bias=None, past=None, cache_position=None, training=False):
        out, weights, present = self.SelfAttention(self.layer_norm(x), bias, None, past, cache_position,
                                                   training=training)
        return x + _dropout(out, self.config.dropout_rate, training), weights, present


class TFT5LayerCrossAttention(keras.layers.Layer):
    def __init__(self, config: T5Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.EncDecAttention = TFT5Attention(config, True, False, name="EncDecAttention")
        self.layer_norm = TFRMSNorm(config.d_model, config.layer_norm_epsilon, name="layer_norm")

    def build(self, input_shape=None) -> None:
        build_child(self.EncDecAttention, None)
        build_child(self.layer_norm, None)
        self.built = True

    def call(self, x, encoder_states, bias=None, past=None, training=False):
        out, weights, present = self.EncDecAttention(self.layer_norm(x), bias, encoder_states, past,
                                                     training=training)
        return x + _dropout(out, self.config.dropout_rate, training), weights, present


class TFT5LayerFF(keras.layers.Layer):
    def __init__(self, config: T5Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.DenseReluDense = TFT5DenseActDense(config, name="DenseReluDense")
        self.layer_norm = TFRMSNorm(config.d_model, config.layer_norm_epsilon, name="layer_norm")

    def build(self, input_shape=None) -> None:
        build_child(self.DenseReluDense, None)
        build_child(self.layer_norm, None)
        self.built = True

    def call(self, x, training=False):
        return x + _dropout(self.DenseReluDense(self.layer_norm(x), training=training), self.config.dropout_rate,
                            training)


class TFT5Block(keras.layers.Layer):
    """layer_._0 self-attention, (decoder) layer_._1 cross-attention, the last feed-forward; each pre-norm +
    residual."""

    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.is_decoder = is_decoder
        self.layer = [TFT5LayerSelfAttention(config, is_decoder, has_relative_attention_bias, name="layer_._0")]
        if is_decoder:
            self.layer.append(TFT5LayerCrossAttention(config, name="layer_._1"))
        self.layer.append(TFT5LayerFF(config, name=f"layer_._{len(self.layer)}"))

    def build(self, input_shape=None) -> None:
        for layer in self.layer:
            build_child(layer, None)
        self.built = True

    def call(self, x, bias=None, encoder_states=None, cross_bias=None, past=None, cache_position=None,
             training=False):
        """past: None, (self k, self v) or (self k, self v, cross k, cross v). Returns x, the self- and
        cross-attention weights, and this layer's cache entry (the same length as `past`; 4 without one)."""
        self_past = None if past is None else past[:2]
        x, self_weights, (k, v) = self.layer[0](x, bias, self_past, cache_position, training=training)
        x = _clamp_half(x)
        cross_weights, present = None, (k, v)
        if self.is_decoder and encoder_states is not None:
            cross_past = past[2:] if past is not None and len(past) == 4 else None
            x, cross_weights, (ck, cv) = self.layer[1](x, encoder_states, cross_bias, cross_past, training=training)
            x = _clamp_half(x)
            if past is None or len(past) == 4:
                present = (k, v, ck, cv)
        return _clamp_half(self.layer[-1](x, training=training)), self_weights, cross_weights, present


def _additive(allowed: tf.Tensor | None, bias: tf.Tensor | None, dtype) -> tf.Tensor | None:
    """`bias` (0 when None) where attending is allowed, the dtype's lowest value where it is not."""
    if allowed is None:
        return bias
    if bias is None:
        bias = tf.zeros((), dtype)
    return tf.where(allowed, bias, tf.cast(dtype.min, dtype))


class TFT5MainLayer(keras.layers.Layer):
    """The encoder (is_decoder=False) or the decoder: embed (with the model's `shared`) -> blocks ->
    final_layer_norm."""

    def __init__(self, config: T5Config, embed_tokens: keras.layers.Embedding, is_decoder: bool,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config, self.is_decoder = config, is_decoder
        n_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = [TFT5Block(config, is_decoder, i == 0, name=f"block_._{i}") for i in range(n_layers)]
        self.final_layer_norm = TFRMSNorm(config.d_model, config.layer_norm_epsilon, name="final_layer_norm")
        # The model's `shared`, built there (its weight's path is `shared/embeddings`). Tracked here too, so that
        # this layer's weights list it, as 4.x's h5 files list it in each stack's group.
        self.embed_tokens = embed_tokens

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.embed_tokens

    def build(self, input_shape=None) -> None:
        for block in self.block:
            build_child(block, None)
        build_child(self.final_layer_norm, None)
        self.built = True

    def call(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
             inputs_embeds=None, head_mask=None, encoder_head_mask=None, past_key_values=None, use_cache=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, cache_position=None,
             training=False):
        """input_ids (B, T) or inputs_embeds (B, T, C); attention_mask (B, T) (decoder with a cache: (B, S)), 1 token
        / 0 padding; encoder_hidden_states (B, E, C) and encoder_attention_mask (B, E) (decoder); past_key_values
        and cache_position: the decoder's cache (see the module's doc)."""
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        if head_mask is not None or encoder_head_mask is not None:
            raise ConfigError("T5's head_mask is not implemented in the TF classes (nor in the PyTorch ones).")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds"
                             + (" (decoder_input_ids, decoder_inputs_embeds or labels)." if self.is_decoder else "."))
        if inputs_embeds is None:
            x = tf.cast(self.embed_tokens(tf.cast(input_ids, tf.int32)), self.compute_dtype)
        else:
            x = tf.cast(inputs_embeds, self.compute_dtype)
        T = tf.shape(x)[1]
        if self.is_decoder:
            use_cache = (cfg.use_cache and not training) if use_cache is None else use_cache
        else:
            if use_cache or past_key_values is not None:
                raise ValueError("use_cache=True and past_key_values need the decoder; the encoder keeps no cache.")
            use_cache = False

        q_positions, kv_len = cache_layout(past_key_values, T, cache_position)
        attn = self.block[0].layer[0].SelfAttention
        position_bias = attn.compute_bias(q_positions, kv_len)  # (1, H, T, S)
        if self.is_decoder:
            allowed = causal_mask(attention_mask, q_positions, kv_len)  # (B|1, 1, T, S)
        elif attention_mask is not None:
            allowed = tf.cast(attention_mask, tf.bool)[:, None, None, :]  # (B, 1, 1, T)
        else:
            allowed = None
        bias = _additive(allowed, tf.cast(position_bias, x.dtype), x.dtype)
        cross_bias = None
        if self.is_decoder and encoder_hidden_states is not None and encoder_attention_mask is not None:
            cross_bias = _additive(tf.cast(encoder_attention_mask, tf.bool)[:, None, None, :], None, x.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states = tf.cast(encoder_hidden_states, x.dtype)

        x = _dropout(x, cfg.dropout_rate, training)
        all_hidden, all_attn, all_cross, presents = [], [], [], []
        for i, block in enumerate(self.block):
            if output_hidden_states:
                all_hidden.append(x)
            past = past_key_values[i] if past_key_values is not None else None
            x, weights, cross_weights, present = block(x, bias, encoder_hidden_states, cross_bias, past,
                                                       cache_position, training=training)
            presents.append(present)
            all_attn.append(weights)
            all_cross.append(cross_weights)
        x = _dropout(self.final_layer_norm(x), cfg.dropout_rate, training)
        if output_hidden_states:
            all_hidden.append(x)

        hidden = tuple(all_hidden) if output_hidden_states else None
        attentions = tuple(all_attn) if output_attentions else None
        if self.is_decoder:
            out = TFBaseModelOutputWithPastAndCrossAttentions(
                last_hidden_state=x, past_key_values=tuple(presents) if use_cache else None, hidden_states=hidden,
                attentions=attentions,
                cross_attentions=tuple(all_cross) if output_attentions and encoder_hidden_states is not None else None)
        else:
            out = TFBaseModelOutput(last_hidden_state=x, hidden_states=hidden, attentions=attentions)
        return out if (cfg.return_dict if return_dict is None else return_dict) else out.to_tuple()


def _as_encoder_output(encoder_outputs: Any) -> TFBaseModelOutput:
    """`encoder_outputs` as a caller gives it: an output, a dict, a tensor, or a tuple (last, hidden, attentions)."""
    if isinstance(encoder_outputs, TFBaseModelOutput):
        return encoder_outputs
    if hasattr(encoder_outputs, "last_hidden_state"):
        return TFBaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state,
                                 hidden_states=getattr(encoder_outputs, "hidden_states", None),
                                 attentions=getattr(encoder_outputs, "attentions", None))
    if isinstance(encoder_outputs, Mapping):
        return TFBaseModelOutput(**{k: encoder_outputs.get(k) for k in ("last_hidden_state", "hidden_states",
                                                                          "attentions")})
    if tf.is_tensor(encoder_outputs) or isinstance(encoder_outputs, np.ndarray):
        return TFBaseModelOutput(last_hidden_state=tf.convert_to_tensor(encoder_outputs))
    items = tuple(encoder_outputs)
    return TFBaseModelOutput(last_hidden_state=items[0], hidden_states=items[1] if len(items) > 1 else None,
                             attentions=items[2] if len(items) > 2 else None)


class TFT5PreTrainedModel(TFPreTrainedModel):
    """Weights, loading and 4.x's call convention, shared by the T5 TF classes."""

    config_class = T5Config
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    tf_key_rules = TF_KEY_RULES
    has_decoder = True

    def __init__(self, config: T5Config, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.shared = keras.layers.Embedding(config.vocab_size, config.d_model, name="shared",
                                             embeddings_initializer=_normal(config.initializer_factor * 1.0))
        self.encoder = TFT5MainLayer(config, self.shared, False, name="encoder")
        if self.has_decoder:
            self.decoder = TFT5MainLayer(config, self.shared, True, name="decoder")

    def build(self, input_shape=None) -> None:
        build_child(self.shared, None)
        build_child(self.encoder, None)
        if self.has_decoder:
            build_child(self.decoder, None)
        self._build_head()
        self.built = True

    def _build_head(self) -> None:
        pass

    @property
    def dummy_inputs(self) -> dict[str, tf.Tensor]:
        ids = tf.constant([[7, 6, 0, 0, 1], [1, 2, 3, 0, 0], [0, 0, 0, 4, 5]], dtype=tf.int32)
        return {"input_ids": ids, "decoder_input_ids": ids} if self.has_decoder else {"input_ids": ids}

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.shared

    def get_encoder(self) -> TFT5MainLayer:
        return self.encoder

    def get_decoder(self) -> TFT5MainLayer:
        return self.decoder

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs: Any = None, dtype: Any = None) -> tuple:
        """A fixed-size decoder cache for up to `max_length` decoder tokens, per layer (self key, self value) zeros
        (batch_size, H, max_length, D) and, given `encoder_outputs` (from `get_encoder()`, (batch_size, E, C)),
        the cross-attention (key, value) computed from them once. Use it with `cache_position`."""
        cfg = self.config
        dtype = dtype or self.compute_dtype
        shape = (batch_size, cfg.num_heads, max_length, cfg.d_kv)
        hidden = None if encoder_outputs is None else tf.cast(_as_encoder_output(encoder_outputs).last_hidden_state,
                                                              dtype)
        cache = []
        for block in self.decoder.block:
            entry = (tf.zeros(shape, dtype), tf.zeros(shape, dtype))
            if hidden is not None:
                cross = block.layer[1].EncDecAttention
                entry += (cross._heads(cross.k(hidden)), cross._heads(cross.v(hidden)))
            cache.append(entry)
        return tuple(cache)

    def _shift_right(self, input_ids: tf.Tensor) -> tf.Tensor:
        """Decoder inputs from labels: `decoder_start_token_id` first, labels moved one right, -100 -> pad."""
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        if start is None:
            raise ValueError("config.decoder_start_token_id is not set; T5 starts decoding with the pad token (0).")
        if pad is None:
            raise ValueError("config.pad_token_id is not set; T5 uses 0.")
        input_ids = tf.cast(input_ids, tf.int32)
        shifted = tf.concat([tf.fill((tf.shape(input_ids)[0], 1), start), input_ids[:, :-1]], axis=1)
        return tf.where(shifted == -100, pad, shifted)

    def _encode(self, input_ids, attention_mask, inputs_embeds, encoder_outputs, output_attentions,
                output_hidden_states, training) -> TFBaseModelOutput:
        if encoder_outputs is None:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                return_dict=True, training=training)
        return _as_encoder_output(encoder_outputs)

    def _decode(self, decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds, enc, attention_mask,
                past_key_values, use_cache, output_attentions, output_hidden_states, cache_position, training):
        return self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                            inputs_embeds=decoder_inputs_embeds, encoder_hidden_states=enc.last_hidden_state,
                            encoder_attention_mask=attention_mask, past_key_values=past_key_values,
                            use_cache=use_cache, output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states, return_dict=True,
                            cache_position=cache_position, training=training)

    def _finish(self, out, return_dict):
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()


def _refuse_head_masks(*masks) -> None:
    if any(m is not None for m in masks):
        raise ConfigError("T5's head_mask / decoder_head_mask are not implemented in the TF classes (nor in the "
                          "PyTorch ones).")


class TFT5Model(TFT5PreTrainedModel):
    """Encoder + decoder: (source ids, decoder ids) -> decoder hidden states (B, T, C)."""

    def call(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
             head_mask=None, decoder_head_mask=None, encoder_outputs=None, past_key_values=None, inputs_embeds=None,
             decoder_inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, cache_position=None, training=False):
        """input_ids (B, E) and attention_mask (B, E) for the encoder (or encoder_outputs); decoder_input_ids (B, T),
        decoder_attention_mask (B, T|S); past_key_values, cache_position: the decoder's cache."""
        _refuse_head_masks(head_mask, decoder_head_mask)
        enc = self._encode(input_ids, attention_mask, inputs_embeds, encoder_outputs, output_attentions,
                           output_hidden_states, training)
        dec = self._decode(decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds, enc, attention_mask,
                           past_key_values, use_cache, output_attentions, output_hidden_states, cache_position,
                           training)
        return self._finish(TFSeq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions, encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions), return_dict)


class TFT5ForConditionalGeneration(TFT5PreTrainedModel):
    """Encoder + decoder + language-model head: -> next-token logits (B, T, V), float32; with `labels` (B, T)
    (-100 = ignore; the decoder inputs are the labels shifted right when not given) the token loss."""

    def __init__(self, config: T5Config, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.model_dim = config.d_model
        if not head_is_tied(config):
            self.lm_head = _linear(config.vocab_size, "lm_head", config.initializer_factor * 1.0)

    def _build_head(self) -> None:
        if not head_is_tied(self.config):
            build_child(self.lm_head, (None, None, self.config.d_model))

    def get_output_embeddings(self) -> keras.layers.Layer:
        return self.shared if head_is_tied(self.config) else self.lm_head

    def call(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
             head_mask=None, decoder_head_mask=None, encoder_outputs=None, past_key_values=None, inputs_embeds=None,
             decoder_inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, cache_position=None, training=False):
        _refuse_head_masks(head_mask, decoder_head_mask)
        enc = self._encode(input_ids, attention_mask, inputs_embeds, encoder_outputs, output_attentions,
                           output_hidden_states, training)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        dec = self._decode(decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds, enc, attention_mask,
                           past_key_values, use_cache, output_attentions, output_hidden_states, cache_position,
                           training)
        hidden = dec.last_hidden_state
        if self.config.scale_decoder_outputs:  # the original T5 reuses the input table as head: rescale first
            hidden = hidden * tf.cast(self.model_dim**-0.5, hidden.dtype)
        if head_is_tied(self.config):
            logits = tf.matmul(hidden, tf.cast(self.shared.embeddings, hidden.dtype), transpose_b=True)
        else:
            logits = self.lm_head(hidden)
        logits = tf.cast(logits, tf.float32)
        loss = token_loss(logits, labels) if labels is not None else None
        return self._finish(TFSeq2SeqLMOutput(
            loss=loss, logits=logits, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions, encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions), return_dict)

    def prepare_decoder_input_ids_from_labels(self, labels: tf.Tensor) -> tf.Tensor:
        return self._shift_right(labels)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      decoder_attention_mask=None, encoder_outputs=None, use_cache=None,
                                      cache_position=None, **kwargs):
        """The inputs of one decoding step (4.x's hook): `input_ids` are the decoder's tokens so far; with a
        growing cache only the last one goes in; with a fixed one, `cache_position` says where."""
        if past_key_values is not None and cache_position is None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": None, "decoder_input_ids": input_ids, "past_key_values": past_key_values,
                "encoder_outputs": encoder_outputs, "attention_mask": attention_mask,
                "decoder_attention_mask": decoder_attention_mask, "use_cache": use_cache,
                "cache_position": cache_position}


class TFT5EncoderModel(TFT5PreTrainedModel):
    """The encoder alone: ids -> hidden states (B, E, C). Loads the encoder half of a full checkpoint."""

    tf_key_rules = TF_ENCODER_KEY_RULES
    has_decoder = False

    def __init__(self, config: T5Config, *inputs: Any, **kwargs: Any) -> None:
        config.use_cache = False  # as the PyTorch class: this model neither decodes nor caches
        config.is_encoder_decoder = False
        super().__init__(config, *inputs, **kwargs)

    def call(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, training=False):
        _refuse_head_masks(head_mask)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                           return_dict=True, training=training)
        return self._finish(out, return_dict)


__all__ = ["TFT5EncoderModel", "TFT5ForConditionalGeneration", "TFT5MainLayer", "TFT5Model", "TFT5PreTrainedModel"]
