"""Llama in TensorFlow (Keras 3): the decoder of `modeling.py` as Keras layers, and the template of the Mistral,
Qwen2 and Gemma TF classes, which state only their difference through the same hooks as the PyTorch and Flax sides
(`projection_biases`, `mlp_bias`, `norm_offset`, `embed_scale`, `sliding_windows`, `layer_class`).

Weight names are 4.57's TFMistral names (4.x had no TF Llama, Qwen2 or Gemma; they follow Mistral's):
`tf_llama_for_causal_lm/model/embed_tokens/embeddings`, `.../model/layers.0/self_attn/q_proj/kernel`,
`.../model/layers.0/input_layernorm/weight`, `.../model/norm/weight`, `.../lm_head/kernel`, `.../score/kernel`.
With `tie_word_embeddings` the head is the embedding table (no `lm_head` weight), as in PyTorch.

The cache (`past_key_values`, growing or fixed-size with `cache_position`) is described in `pretrained/tf/layers.py`.
Shapes: B batch, T new tokens, S attended positions, H heads, K kv heads, D head_dim, C hidden, V vocabulary.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import tensorflow as tf

from ...tf.base import TFPreTrainedModel
from ...tf.layers import (
    TFGatedMLP,
    TFRMSNorm,
    apply_rotary,
    attend,
    build_child,
    cache_layout,
    causal_mask,
    dense,
    get_initializer,
    inverse_frequencies,
    rotary_cos_sin,
    update_cache,
)
from ...tf.losses import causal_lm_loss, sequence_classification_loss
from ...tf.outputs import TFBaseModelOutputWithPast, TFCausalLMOutputWithPast, TFSequenceClassifierOutputWithPast
from .configuration import LlamaConfig

# A tied head's PyTorch checkpoint may carry `lm_head.weight`; it has no Keras weight of its own then (the other
# classes report it as unexpected, as PyTorch does).
TF_KEY_RULES = {"tied": (r"^lm_head\.weight$",)}


class TFLlamaAttention(keras.layers.Layer):
    def __init__(self, config: LlamaConfig, layer_idx: int, sliding_window: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config, self.layer_idx, self.sliding_window = config, layer_idx, sliding_window
        H, K, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = H, K, D
        qkv_bias, o_bias = self.projection_biases(config)
        r = config.initializer_range
        self.q_proj = dense(H * D, "q_proj", qkv_bias, r)
        self.k_proj = dense(K * D, "k_proj", qkv_bias, r)
        self.v_proj = dense(K * D, "v_proj", qkv_bias, r)
        self.o_proj = dense(config.hidden_size, "o_proj", o_bias, r)

    @staticmethod
    def projection_biases(config: LlamaConfig) -> tuple[bool, bool]:
        """(bias on q/k/v, bias on o)."""
        return config.attention_bias, config.attention_bias

    def build(self, input_shape=None) -> None:
        C = self.config.hidden_size
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            build_child(proj, (None, C))
        build_child(self.o_proj, (None, self.num_heads * self.head_dim))
        self.built = True

    def call(self, x, cos, sin, mask, past=None, cache_position=None, training=False):
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        D = self.head_dim

        def heads(t, n):  # (B, T, n*D) -> (B, n, T, D)
            return tf.transpose(tf.reshape(t, (B, T, n, D)), (0, 2, 1, 3))

        q = heads(self.q_proj(x), self.num_heads)
        k = heads(self.k_proj(x), self.num_kv_heads)
        v = heads(self.v_proj(x), self.num_kv_heads)
        q, k = apply_rotary(q, k, cos, sin)
        k, v = update_cache(past, k, v, cache_position)  # (B, K, S, D)
        out, weights = attend(q, k, v, mask, D**-0.5, self.config.attention_dropout, training)
        return self.o_proj(tf.reshape(out, (B, T, self.num_heads * D))), weights, (k, v)


class TFLlamaDecoderLayer(keras.layers.Layer):
    attention_class: ClassVar[type] = TFLlamaAttention
    norm_offset: ClassVar[float] = 0.0  # RMSNorm scales by (norm_offset + w); Gemma's 1.0 gives its (1 + w)

    def __init__(self, config: LlamaConfig, layer_idx: int, sliding_window: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        C, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = self.attention_class(config, layer_idx, sliding_window, name="self_attn")
        self.mlp = TFGatedMLP(C, config.intermediate_size, config.hidden_act, self.mlp_bias(config),
                              config.initializer_range, name="mlp")
        self.input_layernorm = TFRMSNorm(C, eps, self.norm_offset, name="input_layernorm")
        self.post_attention_layernorm = TFRMSNorm(C, eps, self.norm_offset, name="post_attention_layernorm")

    @staticmethod
    def mlp_bias(config: LlamaConfig) -> bool:
        return config.mlp_bias

    def build(self, input_shape=None) -> None:
        for layer in (self.self_attn, self.mlp, self.input_layernorm, self.post_attention_layernorm):
            build_child(layer, (None, None, self.config.hidden_size))
        self.built = True

    def call(self, x, cos, sin, mask, past=None, cache_position=None, training=False):
        attn, weights, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past, cache_position,
                                                training=training)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, weights, present


class TFLlamaMainLayer(keras.layers.Layer):
    """The decoder stack (4.x's "main layer", named after `base_model_prefix`): token ids -> hidden states."""

    layer_class: ClassVar[type] = TFLlamaDecoderLayer

    def __init__(self, config: LlamaConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.embed_tokens = keras.layers.Embedding(config.vocab_size, config.hidden_size, name="embed_tokens",
                                                   embeddings_initializer=get_initializer(config.initializer_range))
        self.layers = [self.layer_class(config, i, window, name=f"layers.{i}")
                       for i, window in enumerate(self.sliding_windows())]
        self.norm = TFRMSNorm(config.hidden_size, config.rms_norm_eps, self.layer_class.norm_offset, name="norm")
        self.inv_freq, self.attention_scaling = inverse_frequencies(config.rope_parameters, config.head_dim)

    def embed_scale(self) -> float | None:
        """A factor the token embeddings are multiplied by (Gemma: sqrt(hidden_size)); None for none."""
        return None

    def sliding_windows(self) -> list[int | None]:
        """Per layer, how many most recent positions a query may attend to (None: all earlier ones)."""
        return [None] * self.config.num_hidden_layers

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.embed_tokens

    def build(self, input_shape=None) -> None:
        build_child(self.embed_tokens, None)
        for layer in self.layers:
            build_child(layer, None)
        build_child(self.norm, None)
        self.built = True

    def call(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
             inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, cache_position=None, training=False):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = (cfg.use_cache and not training) if use_cache is None else use_cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            x = self.embed_tokens(tf.cast(input_ids, tf.int32))
            scale = self.embed_scale()
            if scale is not None:
                x = x * tf.cast(scale, x.dtype)
        else:
            x = tf.cast(inputs_embeds, self.compute_dtype)
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        q_positions, kv_len = cache_layout(past_key_values, T, cache_position)
        if position_ids is None:
            position_ids = tf.broadcast_to(q_positions[None], (B, T))
        cos, sin = rotary_cos_sin(position_ids, self.inv_freq, self.attention_scaling, x.dtype)
        windows = self.sliding_windows()
        masks = {w: causal_mask(attention_mask, q_positions, kv_len, w) for w in set(windows)}
        all_hidden, all_attn, presents = [], [], []
        for i, (layer, window) in enumerate(zip(self.layers, windows)):
            if output_hidden_states:
                all_hidden.append(x)
            past = past_key_values[i] if past_key_values is not None else None
            x, weights, present = layer(x, cos, sin, masks[window], past, cache_position, training=training)
            presents.append(present)
            if output_attentions:
                all_attn.append(weights)
        x = self.norm(x)
        if output_hidden_states:
            all_hidden.append(x)
        return TFBaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )


class TFLlamaPreTrainedModel(TFPreTrainedModel):
    """Weights, loading and 4.x's call convention, shared by the Llama-family TF classes."""

    config_class = LlamaConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    main_layer_class: ClassVar[type] = TFLlamaMainLayer

    def __init__(self, config: LlamaConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.model = self.main_layer_class(config, name="model")

    def build(self, input_shape=None) -> None:
        build_child(self.model, None)
        self.built = True

    def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> tuple:
        """A zero fixed-size cache for decoding up to `max_length` tokens: per layer (key, value), each
        (batch_size, K, max_length, D); use it with `cache_position` (see `pretrained/tf/layers.py`)."""
        cfg = self.config
        shape = (batch_size, cfg.num_key_value_heads, max_length, cfg.head_dim)
        dtype = dtype or self.compute_dtype
        return tuple((tf.zeros(shape, dtype), tf.zeros(shape, dtype)) for _ in range(cfg.num_hidden_layers))

    def _base(self, input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
              output_attentions, output_hidden_states, cache_position, training):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          cache_position=cache_position, training=training)

    def _finish(self, out, return_dict):
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()


class TFLlamaModel(TFLlamaPreTrainedModel):
    """The bare decoder: -> last_hidden_state (B, T, C) (and the cache with `use_cache`)."""

    def call(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
             inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, cache_position=None, training=False):
        out = self._base(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                         output_attentions, output_hidden_states, cache_position, training)
        return self._finish(out, return_dict)


class TFLlamaForCausalLM(TFLlamaPreTrainedModel):
    """Decoder + language-model head: -> logits (B, T, V), float32 (as 4.x's TF heads); with `labels` (B, T) the
    next-token loss (shifted inside, -100 ignored)."""

    tf_key_rules = TF_KEY_RULES

    def __init__(self, config: LlamaConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        if not config.tie_word_embeddings:
            self.lm_head = dense(config.vocab_size, "lm_head", False, config.initializer_range)

    def build(self, input_shape=None) -> None:
        build_child(self.model, None)
        if not self.config.tie_word_embeddings:
            build_child(self.lm_head, (None, self.config.hidden_size))
        self.built = True

    def get_output_embeddings(self) -> keras.layers.Layer:
        return self.model.embed_tokens if self.config.tie_word_embeddings else self.lm_head

    def call(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
             inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, cache_position=None, training=False):
        base = self._base(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                          output_attentions, output_hidden_states, cache_position, training)
        h = base.last_hidden_state
        if self.config.tie_word_embeddings:
            logits = tf.matmul(h, tf.cast(self.model.embed_tokens.embeddings, h.dtype), transpose_b=True)
        else:
            logits = self.lm_head(h)
        logits = tf.cast(logits, tf.float32)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return self._finish(TFCausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=base.past_key_values,
                                                     hidden_states=base.hidden_states, attentions=base.attentions),
                            return_dict)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      position_ids=None, cache_position=None, use_cache=True, **kwargs):
        """The inputs of one decoding step (4.x's hook): with a growing cache only the last token goes in; with a
        fixed one, `cache_position` says where. Positions count only real tokens (left padding)."""
        if past_key_values is not None and cache_position is None:
            input_ids = input_ids[:, -1:]
        if position_ids is None and attention_mask is not None:
            position_ids = tf.math.cumsum(tf.cast(attention_mask, tf.int32), axis=-1, exclusive=True)
            position_ids = position_ids[:, -tf.shape(input_ids)[1]:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "past_key_values": past_key_values, "cache_position": cache_position, "use_cache": use_cache}


class TFLlamaForSequenceClassification(TFLlamaPreTrainedModel):
    """Decoder + `score` (no bias), read at each sequence's last non-padding token: logits (B, num_labels).

    The last token is the rightmost one that is not `config.pad_token_id` (left and right padding both work).
    Without a pad token only a batch of one can be classified (its last position); with `inputs_embeds` the
    last position is used.
    """

    def __init__(self, config: LlamaConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.num_labels = config.num_labels
        self.score = dense(config.num_labels, "score", False, config.initializer_range)

    def build(self, input_shape=None) -> None:
        build_child(self.model, None)
        build_child(self.score, (None, self.config.hidden_size))
        self.built = True

    def call(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
             inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, cache_position=None, training=False):
        base = self._base(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                          output_attentions, output_hidden_states, cache_position, training)
        logits = self.score(base.last_hidden_state)  # (B, T, L)
        B, T = tf.shape(logits)[0], tf.shape(logits)[1]
        pad = self.config.pad_token_id
        if pad is None and logits.shape[0] is not None and logits.shape[0] != 1:
            raise ValueError(
                f"Cannot classify a batch of {logits.shape[0]} sequences without a padding token: set "
                "config.pad_token_id so that the last real token of each sequence can be found.")
        if pad is None or input_ids is None:
            last = tf.fill((B,), T - 1)
        else:  # rightmost position that is not padding (0 when a row is all padding)
            real = tf.cast(tf.not_equal(tf.cast(input_ids, tf.int32), pad), tf.int32)
            last = tf.reduce_max(tf.range(T, dtype=tf.int32)[None, :] * real, axis=-1)
        pooled = tf.cast(tf.gather(logits, last, batch_dims=1), tf.float32)  # (B, L)
        loss = sequence_classification_loss(pooled, labels, self.config) if labels is not None else None
        return self._finish(TFSequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, past_key_values=base.past_key_values, hidden_states=base.hidden_states,
            attentions=base.attentions), return_dict)


__all__ = ["TFLlamaForCausalLM", "TFLlamaForSequenceClassification", "TFLlamaMainLayer", "TFLlamaModel",
           "TFLlamaPreTrainedModel"]
