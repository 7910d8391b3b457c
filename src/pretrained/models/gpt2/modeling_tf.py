"""GPT-2 in TensorFlow (Keras 3): the pre-norm causal decoder of `modeling.py` as Keras layers.

Weight names are 4.57's TF GPT-2 names, so its `tf_model.h5` files load as they are and ours load there:
`tfgpt2lm_head_model/transformer/wte/embeddings`, `.../transformer/h_._0/ln_1/gamma`,
`.../transformer/h_._0/attn/c_attn/weight`, `.../transformer/h_._0/attn/c_attn/bias`, `.../transformer/ln_f/beta`.
GPT-2's projections are Conv1D layers: their `weight` is kept as PyTorch and 4.x keep it, (in, out), not transposed,
and their `bias` is (1, out) as 4.x's TF class made it ((out,) in PyTorch): `TF_KEY_RULES` says so. The
language-model head reuses `wte` (no weight of its own while tied; an `lm_head` Dense when untied).

The cache (`past_key_values`: per layer (key, value), each (B, H, S, D), growing, or fixed-size with
`cache_position` and `init_cache`) is the one described in `pretrained/tf/layers.py`. Imports no torch.
Shapes: B batch, T new tokens, S attended positions, H heads, D head_dim, C n_embd, V vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from ...errors import ConfigError
from ...tf.base import TFPreTrainedModel
from ...tf.layers import (
    ModelInitializer,
    activation,
    attend,
    build_child,
    cache_layout,
    causal_mask,
    dense,
    get_initializer,
    initializer,
    update_cache,
)
from ...tf.losses import causal_lm_loss
from ...tf.outputs import TFBaseModelOutputWithPastAndCrossAttentions, TFCausalLMOutputWithCrossAttentions
from .configuration import GPT2Config

from .key_rules import TF_KEY_RULES  # data, shared with the PyTorch loader of 4.x files


def _dropout(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
    return tf.nn.dropout(x, rate=rate) if training and rate > 0.0 else x


class TFConv1D(keras.layers.Layer):
    """y = x @ weight + bias with `weight` (nx, nf) = (in, out) and `bias` (1, nf), as 4.x's TF GPT-2 keeps them."""

    def __init__(self, nf: int, nx: int, init_std: float = 0.02, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nf, self.nx = nf, nx
        self.weight_initializer = ModelInitializer(keras.initializers.RandomNormal(stddev=init_std))
        self.bias_initializer = initializer("zeros")

    def build(self, input_shape=None) -> None:
        self.weight = self.add_weight(name="weight", shape=(self.nx, self.nf), initializer=self.weight_initializer)
        self.bias = self.add_weight(name="bias", shape=(1, self.nf), initializer=self.bias_initializer)
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:  # (..., nx) -> (..., nf)
        shape = tf.shape(x)
        out = tf.matmul(tf.reshape(x, (-1, self.nx)), self.weight) + self.bias
        return tf.reshape(out, tf.concat([shape[:-1], [self.nf]], axis=0))


def _layer_norm(config: GPT2Config, name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=name,
                                           gamma_initializer=initializer("ones"),
                                           beta_initializer=initializer("zeros"))


class TFGPT2Attention(keras.layers.Layer):
    def __init__(self, config: GPT2Config, layer_idx: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config, self.layer_idx = config, layer_idx
        C, self.num_heads = config.n_embd, config.n_head
        self.head_dim = C // self.num_heads
        self.scaling = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)
        residual_std = config.initializer_range / math.sqrt(2 * config.n_layer)
        self.c_attn = TFConv1D(3 * C, C, config.initializer_range, name="c_attn")  # q, k, v side by side
        self.c_proj = TFConv1D(C, C, residual_std, name="c_proj")

    def build(self, input_shape=None) -> None:
        build_child(self.c_attn, None)
        build_child(self.c_proj, None)
        self.built = True

    def call(self, x, mask, past=None, cache_position=None, training=False):
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        H, D, C = self.num_heads, self.head_dim, self.config.n_embd

        def heads(t):  # (B, T, C) -> (B, H, T, D)
            return tf.transpose(tf.reshape(t, (B, T, H, D)), (0, 2, 1, 3))

        q, k, v = (heads(t) for t in tf.split(self.c_attn(x), 3, axis=-1))
        k, v = update_cache(past, k, v, cache_position)  # (B, H, S, D)
        out, weights = attend(q, k, v, mask, self.scaling, self.config.attn_pdrop, training)  # (B, T, H, D)
        out = self.c_proj(tf.reshape(out, (B, T, C)))
        return _dropout(out, self.config.resid_pdrop, training), weights, (k, v)


class TFGPT2MLP(keras.layers.Layer):
    def __init__(self, intermediate_size: int, config: GPT2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        residual_std = config.initializer_range / math.sqrt(2 * config.n_layer)
        self.c_fc = TFConv1D(intermediate_size, config.n_embd, config.initializer_range, name="c_fc")
        self.c_proj = TFConv1D(config.n_embd, intermediate_size, residual_std, name="c_proj")
        self.act = activation(config.activation_function)

    def build(self, input_shape=None) -> None:
        build_child(self.c_fc, None)
        build_child(self.c_proj, None)
        self.built = True

    def call(self, x, training=False):
        return _dropout(self.c_proj(self.act(self.c_fc(x))), self.config.resid_pdrop, training)


class TFGPT2Block(keras.layers.Layer):
    def __init__(self, config: GPT2Config, layer_idx: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        C = config.n_embd
        self.ln_1 = _layer_norm(config, "ln_1")
        self.attn = TFGPT2Attention(config, layer_idx, name="attn")
        self.ln_2 = _layer_norm(config, "ln_2")
        self.mlp = TFGPT2MLP(config.n_inner if config.n_inner is not None else 4 * C, config, name="mlp")

    def build(self, input_shape=None) -> None:
        C = self.config.n_embd
        build_child(self.ln_1, (None, None, C))
        build_child(self.attn, None)
        build_child(self.ln_2, (None, None, C))
        build_child(self.mlp, None)
        self.built = True

    def call(self, x, mask, past=None, cache_position=None, training=False):
        attn, weights, present = self.attn(self.ln_1(x), mask, past, cache_position, training=training)
        x = x + attn
        x = x + self.mlp(self.ln_2(x), training=training)
        return x, weights, present


class TFGPT2MainLayer(keras.layers.Layer):
    """Token (and position) embeddings -> n_layer blocks -> final LayerNorm (4.x's main layer, `transformer`)."""

    def __init__(self, config: GPT2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if config.add_cross_attention:
            raise ConfigError("GPT-2 with cross-attention (add_cross_attention=True) is not implemented; only the "
                              "decoder-only GPT-2 is.")
        self.config = config
        init = get_initializer(config.initializer_range)
        self.wte = keras.layers.Embedding(config.vocab_size, config.n_embd, embeddings_initializer=init, name="wte")
        self.wpe = keras.layers.Embedding(config.n_positions, config.n_embd, embeddings_initializer=init, name="wpe")
        self.h = [TFGPT2Block(config, i, name=f"h_._{i}") for i in range(config.n_layer)]
        self.ln_f = _layer_norm(config, "ln_f")

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.wte

    def build(self, input_shape=None) -> None:
        build_child(self.wte, None)
        build_child(self.wpe, None)
        for block in self.h:
            build_child(block, None)
        build_child(self.ln_f, (None, None, self.config.n_embd))
        self.built = True

    def call(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
             position_ids=None, inputs_embeds=None, use_cache=None, output_attentions=None,
             output_hidden_states=None, cache_position=None, training=False):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = (cfg.use_cache and not training) if use_cache is None else use_cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            x = self.wte(tf.cast(input_ids, tf.int32))
        else:
            x = tf.cast(inputs_embeds, self.compute_dtype)
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        q_positions, kv_len = cache_layout(past_key_values, T, cache_position)
        if position_ids is None:
            position_ids = tf.broadcast_to(q_positions[None], (B, T))
        x = x + self.wpe(tf.cast(position_ids, tf.int32))
        if token_type_ids is not None:  # GPT-2 embeds segment ids with the token table
            x = x + self.wte(tf.cast(token_type_ids, tf.int32))
        x = _dropout(x, cfg.embd_pdrop, training)
        mask = causal_mask(attention_mask, q_positions, kv_len)
        all_hidden, all_attn, presents = [], [], []
        for i, block in enumerate(self.h):
            if output_hidden_states:
                all_hidden.append(x)
            past = past_key_values[i] if past_key_values is not None else None
            x, weights, present = block(x, mask, past, cache_position, training=training)
            presents.append(present)
            if output_attentions:
                all_attn.append(weights)
        x = self.ln_f(x)
        if output_hidden_states:
            all_hidden.append(x)
        return TFBaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )


class TFGPT2PreTrainedModel(TFPreTrainedModel):
    """Weights, loading and 4.x's call convention, shared by the GPT-2 TF classes."""

    config_class = GPT2Config
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    tf_key_rules = TF_KEY_RULES

    def __init__(self, config: GPT2Config, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.transformer = TFGPT2MainLayer(config, name="transformer")

    def build(self, input_shape=None) -> None:
        build_child(self.transformer, None)
        self.built = True

    def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> tuple:
        """A zero fixed-size cache for decoding up to `max_length` tokens: per layer (key, value), each
        (batch_size, n_head, max_length, head_dim); use it with `cache_position` (see `pretrained/tf/layers.py`)."""
        cfg = self.config
        if max_length > cfg.n_positions:
            raise ValueError(f"max_length {max_length} exceeds n_positions ({cfg.n_positions}), the longest sequence "
                             "GPT-2's position table covers.")
        shape = (batch_size, cfg.n_head, max_length, cfg.n_embd // cfg.n_head)
        dtype = dtype or self.compute_dtype
        return tuple((tf.zeros(shape, dtype), tf.zeros(shape, dtype)) for _ in range(cfg.n_layer))

    def _base(self, input_ids, past_key_values, attention_mask, token_type_ids, position_ids, inputs_embeds,
              use_cache, output_attentions, output_hidden_states, cache_position, training):
        return self.transformer(input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
                                token_type_ids=token_type_ids, position_ids=position_ids,
                                inputs_embeds=inputs_embeds, use_cache=use_cache,
                                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                cache_position=cache_position, training=training)

    def _finish(self, out, return_dict):
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()


class TFGPT2Model(TFGPT2PreTrainedModel):
    """The bare decoder: -> last_hidden_state (B, T, C) (and the cache with `use_cache`)."""

    def call(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
             position_ids=None, head_mask=None, inputs_embeds=None, encoder_hidden_states=None,
             encoder_attention_mask=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, cache_position=None, training=False):
        """input_ids (B, T); past_key_values: the cache; attention_mask (B, S) 1 token / 0 padding; token_type_ids
        (B, T) (embedded with the token table); position_ids (B, T) (default: from the cache's length);
        cache_position (T,) int32: where the tokens go in a fixed-size cache. `head_mask` and the
        cross-attention arguments keep 4.x's signature and are not implemented."""
        _refuse(head_mask, encoder_hidden_states, encoder_attention_mask)
        out = self._base(input_ids, past_key_values, attention_mask, token_type_ids, position_ids, inputs_embeds,
                         use_cache, output_attentions, output_hidden_states, cache_position, training)
        return self._finish(out, return_dict)


class TFGPT2LMHeadModel(TFGPT2PreTrainedModel):
    """GPT-2 + language-model head tied to the token embeddings: -> next-token logits (B, T, V), float32; with
    `labels` (B, T) the next-token loss (shifted inside, -100 ignored)."""

    def __init__(self, config: GPT2Config, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        if not config.tie_word_embeddings:
            self.lm_head = dense(config.vocab_size, "lm_head", False, config.initializer_range)

    def build(self, input_shape=None) -> None:
        build_child(self.transformer, None)
        if not self.config.tie_word_embeddings:
            build_child(self.lm_head, (None, None, self.config.n_embd))
        self.built = True

    def get_output_embeddings(self) -> keras.layers.Layer:
        return self.transformer.wte if self.config.tie_word_embeddings else self.lm_head

    def call(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
             position_ids=None, head_mask=None, inputs_embeds=None, encoder_hidden_states=None,
             encoder_attention_mask=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, labels=None, cache_position=None, training=False):
        _refuse(head_mask, encoder_hidden_states, encoder_attention_mask)
        base = self._base(input_ids, past_key_values, attention_mask, token_type_ids, position_ids, inputs_embeds,
                          use_cache, output_attentions, output_hidden_states, cache_position, training)
        h = base.last_hidden_state
        if self.config.tie_word_embeddings:
            logits = tf.matmul(h, tf.cast(self.transformer.wte.embeddings, h.dtype), transpose_b=True)
        else:
            logits = self.lm_head(h)
        logits = tf.cast(logits, tf.float32)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return self._finish(TFCausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, past_key_values=base.past_key_values, hidden_states=base.hidden_states,
            attentions=base.attentions), return_dict)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      position_ids=None, cache_position=None, use_cache=True, token_type_ids=None,
                                      **kwargs):
        """The inputs of one decoding step (4.x's hook): with a growing cache only the last token goes in; with a
        fixed one, `cache_position` says where. Positions count only real tokens (left padding)."""
        if past_key_values is not None and cache_position is None:
            input_ids = input_ids[:, -1:]
            if token_type_ids is not None:
                token_type_ids = token_type_ids[:, -1:]
        if position_ids is None and attention_mask is not None:
            position_ids = tf.math.cumsum(tf.cast(attention_mask, tf.int32), axis=-1, exclusive=True)
            position_ids = position_ids[:, -tf.shape(input_ids)[1]:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "token_type_ids": token_type_ids, "past_key_values": past_key_values,
                "cache_position": cache_position, "use_cache": use_cache}


def _refuse(head_mask, encoder_hidden_states, encoder_attention_mask) -> None:
    if head_mask is not None:
        raise ConfigError("GPT-2's head_mask is not implemented in the TF classes (nor in the PyTorch ones).")
    if encoder_hidden_states is not None or encoder_attention_mask is not None:
        raise ConfigError("GPT-2 cross-attention (encoder_hidden_states) is not implemented.")


__all__ = ["TFGPT2LMHeadModel", "TFGPT2MainLayer", "TFGPT2Model", "TFGPT2PreTrainedModel"]
