"""BERT in JAX/Flax: the same post-norm encoder and task heads as `modeling.py`, as `flax.linen` modules.

Parameter paths are those of the 4.x Flax classes (`bert/encoder/layer/0/attention/self/query/kernel`), so their
`flax_model.msgpack` files load as they are; the PyTorch layout maps onto them through the generic rules of
`pretrained.flax.convert` plus `FLAX_KEY_RULES` below. Imports no torch.
Shapes: B batch, T tokens, H heads, D head size, C hidden, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...errors import ConfigError
from ...flax.base import FlaxPreTrainedModel
from ...flax.layers import activation, matmul_t, wide_dot_general
from ...flax.outputs import (
    FlaxBaseModelOutputWithPoolingAndCrossAttentions,
    FlaxMaskedLMOutput,
    FlaxQuestionAnsweringModelOutput,
    FlaxSequenceClassifierOutput,
    FlaxTokenClassifierOutput,
)
from .configuration import BertConfig

from .key_rules import FLAX_KEY_RULES  # data, shared with the PyTorch loader of 4.x files


def _normal(config: BertConfig):
    return jax.nn.initializers.normal(stddev=config.initializer_range)


def _dense(config: BertConfig, features: int, dtype, param_dtype, name: str | None = None, use_bias: bool = True):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=_normal(config), name=name, dot_general=wide_dot_general)


def _layer_norm(config: BertConfig, dtype, param_dtype, name: str | None = None):
    # two-pass variance, as torch computes it (the one-pass formula loses digits when the mean is large)
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                        use_fast_variance=False, name=name)


def attention_bias(attention_mask: jnp.ndarray, seq_len: int, causal: bool, dtype) -> jnp.ndarray:
    """Additive (B, 1, 1|T, T) bias from a (B, T) or (B, T, T) 0/1 mask: 0 where a query may attend, the dtype's
    lowest value where it may not (and after the query too, when `causal`)."""
    mask = jnp.asarray(attention_mask)
    if mask.ndim == 2:
        allowed = mask[:, None, None, :] > 0
    elif mask.ndim == 3:
        allowed = mask[:, None, :, :] > 0
    else:
        raise ValueError(f"attention_mask of shape {mask.shape}: expected (batch, seq) or (batch, seq, seq).")
    if causal:
        positions = jnp.arange(seq_len)
        allowed = allowed & (positions[None, :] <= positions[:, None])[None, None]
    return jnp.where(allowed, jnp.zeros((), dtype), jnp.finfo(dtype).min).astype(dtype)


class FlaxBertEmbeddings(nn.Module):
    """LayerNorm(word + position + token type embeddings), then dropout."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg, C = self.config, self.config.hidden_size
        embed = dict(dtype=self.dtype, param_dtype=self.param_dtype, embedding_init=_normal(cfg))
        self.word_embeddings = nn.Embed(cfg.vocab_size, C, **embed)
        self.position_embeddings = nn.Embed(cfg.max_position_embeddings, C, **embed)
        self.token_type_embeddings = nn.Embed(cfg.type_vocab_size, C, **embed)
        self.LayerNorm = _layer_norm(cfg, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(rate=cfg.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool = True):
        x = (self.word_embeddings(input_ids.astype("i4")) + self.token_type_embeddings(token_type_ids.astype("i4"))
             + self.position_embeddings(position_ids.astype("i4")))
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)


class FlaxBertSelfAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        C = self.config.hidden_size
        self.query = _dense(self.config, C, self.dtype, self.param_dtype)
        self.key = _dense(self.config, C, self.dtype, self.param_dtype)
        self.value = _dense(self.config, C, self.dtype, self.param_dtype)

    def __call__(self, x, bias, layer_head_mask=None, deterministic: bool = True, output_attentions: bool = False):
        """x (B, T, C); bias additive (B, 1, 1|T, T); layer_head_mask (H,) or None.
        Returns the context (B, T, C) and the attention probabilities (B, H, T, T) (None unless asked)."""
        cfg = self.config
        B, T, _ = x.shape
        H = cfg.num_attention_heads
        D = cfg.hidden_size // H
        q = self.query(x).reshape(B, T, H, D)
        k = self.key(x).reshape(B, T, H, D)
        v = self.value(x).reshape(B, T, H, D)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(D**-0.5, self.dtype) + bias
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        if not deterministic and cfg.attention_probs_dropout_prob > 0.0:
            keep = 1.0 - cfg.attention_probs_dropout_prob
            kept = jax.random.bernoulli(self.make_rng("dropout"), keep, probs.shape)
            probs = jnp.where(kept, probs / keep, 0.0).astype(self.dtype)
        if layer_head_mask is not None:
            probs = probs * jnp.asarray(layer_head_mask, self.dtype)[None, :, None, None]
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, H * D)
        return context, probs if output_attentions else None


class FlaxBertSelfOutput(nn.Module):
    """LayerNorm(residual + dropout(dense(x))): closes the attention block."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.dense = _dense(self.config, self.config.hidden_size, self.dtype, self.param_dtype)
        self.LayerNorm = _layer_norm(self.config, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(rate=self.config.hidden_dropout_prob)

    def __call__(self, hidden, residual, deterministic: bool = True):
        return self.LayerNorm(self.dropout(self.dense(hidden), deterministic=deterministic) + residual)


class FlaxBertAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.self = FlaxBertSelfAttention(self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        self.output = FlaxBertSelfOutput(self.config, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, x, bias, layer_head_mask=None, deterministic: bool = True, output_attentions: bool = False):
        context, probs = self.self(x, bias, layer_head_mask, deterministic, output_attentions)
        return self.output(context, x, deterministic=deterministic), probs


class FlaxBertIntermediate(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.dense = _dense(self.config, self.config.intermediate_size, self.dtype, self.param_dtype)
        self.act = activation(self.config.hidden_act)

    def __call__(self, x):
        return self.act(self.dense(x))


class FlaxBertOutput(nn.Module):
    """LayerNorm(residual + dropout(dense(x))): closes the feed-forward block."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.dense = _dense(self.config, self.config.hidden_size, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(rate=self.config.hidden_dropout_prob)
        self.LayerNorm = _layer_norm(self.config, self.dtype, self.param_dtype)

    def __call__(self, hidden, residual, deterministic: bool = True):
        return self.LayerNorm(self.dropout(self.dense(hidden), deterministic=deterministic) + residual)


class FlaxBertLayer(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.attention = FlaxBertAttention(self.config, **kw)
        self.intermediate = FlaxBertIntermediate(self.config, **kw)
        self.output = FlaxBertOutput(self.config, **kw)

    def __call__(self, x, bias, layer_head_mask=None, deterministic: bool = True, output_attentions: bool = False):
        x, probs = self.attention(x, bias, layer_head_mask, deterministic, output_attentions)
        n = self.config.chunk_size_feed_forward
        if n and x.shape[1] > n:  # the same values either way; chunks bound the activations' memory
            chunks = [self.output(self.intermediate(c), c, deterministic=deterministic)
                      for c in jnp.split(x, list(range(n, x.shape[1], n)), axis=1)]
            return jnp.concatenate(chunks, axis=1), probs
        return self.output(self.intermediate(x), x, deterministic=deterministic), probs


class FlaxBertLayerCollection(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        # deterministic and output_attentions are Python booleans: static under remat (flax counts self as 0)
        cls = nn.remat(FlaxBertLayer, static_argnums=(4, 5)) if self.gradient_checkpointing else FlaxBertLayer
        self.layers = [cls(self.config, dtype=self.dtype, param_dtype=self.param_dtype, name=str(i))
                       for i in range(self.config.num_hidden_layers)]

    def __call__(self, x, bias, head_mask=None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        hidden, attentions = [], []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden.append(x)
            x, probs = layer(x, bias, None if head_mask is None else head_mask[i], deterministic, output_attentions)
            if output_attentions:
                attentions.append(probs)
        if output_hidden_states:
            hidden.append(x)
        return x, tuple(hidden) if output_hidden_states else None, tuple(attentions) if output_attentions else None


class FlaxBertEncoder(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        self.layer = FlaxBertLayerCollection(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                                             gradient_checkpointing=self.gradient_checkpointing)

    def __call__(self, x, bias, head_mask=None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        return self.layer(x, bias, head_mask, deterministic, output_attentions, output_hidden_states)


class FlaxBertPooler(nn.Module):
    """tanh(dense(hidden state of the first token))."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.dense = _dense(self.config, self.config.hidden_size, self.dtype, self.param_dtype)

    def __call__(self, hidden):  # (B, T, C) -> (B, C)
        return jnp.tanh(self.dense(hidden[:, 0]))


def _head_mask(head_mask, config: BertConfig):
    """None, (H,) or (layers, H) -> None or (layers, H)."""
    if head_mask is None:
        return None
    head_mask = jnp.asarray(head_mask)
    if head_mask.ndim == 1:
        head_mask = jnp.broadcast_to(head_mask, (config.num_hidden_layers, head_mask.shape[0]))
    if head_mask.shape != (config.num_hidden_layers, config.num_attention_heads):
        raise ValueError(f"head_mask of shape {head_mask.shape}: expected ({config.num_attention_heads},) or "
                         f"({config.num_hidden_layers}, {config.num_attention_heads}).")
    return head_mask


class FlaxBertModule(nn.Module):
    """The encoder: token ids (+ segment ids) -> hidden states (B, T, C) and, with the pooler, (B, C)."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    gradient_checkpointing: bool = False

    def setup(self):
        if self.config.add_cross_attention:
            raise ConfigError("add_cross_attention=True (BERT as an encoder-decoder's decoder) is not implemented.")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = FlaxBertEmbeddings(self.config, **kw)
        self.encoder = FlaxBertEncoder(self.config, gradient_checkpointing=self.gradient_checkpointing, **kw)
        if self.add_pooling_layer:
            self.pooler = FlaxBertPooler(self.config, **kw)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        B, T = input_ids.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(T), (B, T))
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), "i4")
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic=deterministic)
        bias = attention_bias(attention_mask, T, bool(self.config.is_decoder), self.dtype)
        x, hidden, attentions = self.encoder(x, bias, _head_mask(head_mask, self.config), deterministic,
                                             output_attentions, output_hidden_states)
        pooled = self.pooler(x) if self.add_pooling_layer else None
        if not return_dict:
            return tuple(v for v in (x, pooled, hidden, attentions) if v is not None)
        return FlaxBaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x, pooler_output=pooled, hidden_states=hidden, attentions=attentions)


class FlaxBertPredictionHeadTransform(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.dense = _dense(self.config, self.config.hidden_size, self.dtype, self.param_dtype)
        self.act = activation(self.config.hidden_act)
        self.LayerNorm = _layer_norm(self.config, self.dtype, self.param_dtype)

    def __call__(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class FlaxBertLMPredictionHead(nn.Module):
    """transform, then the decoder -> (B, T, V). Tied (the default, and 4.x's only case): the word embeddings
    transposed, plus `bias`. Untied (`tie_word_embeddings=False`): `decoder` with its own bias, as the PyTorch class
    and transformers 5 compute it (`bias` is then kept, unused, as there); 4.x's untied Flax head had no decoder
    bias and added `bias` instead."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.transform = FlaxBertPredictionHeadTransform(self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        if not self.config.tie_word_embeddings:
            self.decoder = _dense(self.config, self.config.vocab_size, self.dtype, self.param_dtype)
        self.bias = self.param("bias", jax.nn.initializers.zeros, (self.config.vocab_size,), self.param_dtype)

    def __call__(self, x, shared_embedding=None):
        x = self.transform(x)
        if shared_embedding is None:
            return self.decoder(x)
        return matmul_t(x, jnp.asarray(shared_embedding, self.dtype)) + jnp.asarray(self.bias, self.dtype)  # (V, C)


class FlaxBertOnlyMLMHead(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.predictions = FlaxBertLMPredictionHead(self.config, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, x, shared_embedding=None):
        return self.predictions(x, shared_embedding=shared_embedding)


class _TaskModule(nn.Module):
    """Common fields of the task modules (the base model sits under `bert`)."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def _bert(self, add_pooling_layer: bool) -> FlaxBertModule:
        return FlaxBertModule(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                              add_pooling_layer=add_pooling_layer, gradient_checkpointing=self.gradient_checkpointing)

    def _dropout(self) -> nn.Dropout:
        cfg = self.config
        rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        return nn.Dropout(rate=rate)


class FlaxBertForMaskedLMModule(_TaskModule):
    def setup(self):
        self.bert = self._bert(add_pooling_layer=False)
        self.cls = FlaxBertOnlyMLMHead(self.config, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, deterministic,
                         output_attentions, output_hidden_states, return_dict=True)
        shared = None
        if self.config.tie_word_embeddings:
            shared = self.bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        logits = self.cls(base.last_hidden_state, shared_embedding=shared)
        if not return_dict:
            return tuple(v for v in (logits, base.hidden_states, base.attentions) if v is not None)
        return FlaxMaskedLMOutput(logits=logits, hidden_states=base.hidden_states, attentions=base.attentions)


class FlaxBertForSequenceClassificationModule(_TaskModule):
    def setup(self):
        self.bert = self._bert(add_pooling_layer=True)
        self.dropout = self._dropout()
        self.classifier = _dense(self.config, self.config.num_labels, self.dtype, self.param_dtype)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, deterministic,
                         output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(base.pooler_output, deterministic=deterministic))
        if not return_dict:
            return tuple(v for v in (logits, base.hidden_states, base.attentions) if v is not None)
        return FlaxSequenceClassifierOutput(logits=logits, hidden_states=base.hidden_states,
                                            attentions=base.attentions)


class FlaxBertForTokenClassificationModule(_TaskModule):
    def setup(self):
        self.bert = self._bert(add_pooling_layer=False)
        self.dropout = self._dropout()
        self.classifier = _dense(self.config, self.config.num_labels, self.dtype, self.param_dtype)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, deterministic,
                         output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(base.last_hidden_state, deterministic=deterministic))
        if not return_dict:
            return tuple(v for v in (logits, base.hidden_states, base.attentions) if v is not None)
        return FlaxTokenClassifierOutput(logits=logits, hidden_states=base.hidden_states, attentions=base.attentions)


class FlaxBertForQuestionAnsweringModule(_TaskModule):
    def setup(self):
        self.bert = self._bert(add_pooling_layer=False)
        self.qa_outputs = _dense(self.config, self.config.num_labels, self.dtype, self.param_dtype)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, deterministic,
                         output_attentions, output_hidden_states, return_dict=True)
        logits = self.qa_outputs(base.last_hidden_state)  # (B, T, 2)
        start, end = logits[..., 0], logits[..., 1]
        if not return_dict:
            return tuple(v for v in (start, end, base.hidden_states, base.attentions) if v is not None)
        return FlaxQuestionAnsweringModelOutput(start_logits=start, end_logits=end, hidden_states=base.hidden_states,
                                                attentions=base.attentions)


class FlaxBertPreTrainedModel(FlaxPreTrainedModel):
    """Weights, loading and the 4.x call convention shared by the BERT classes."""

    config_class = BertConfig
    base_model_prefix = "bert"
    main_input_name = "input_ids"
    module_class: type[nn.Module] = None
    flax_key_rules = FLAX_KEY_RULES

    def __init__(self, config: BertConfig, input_shape: tuple = (1, 1), seed: int = 0, dtype: Any = jnp.float32,
                 _do_init: bool = True, gradient_checkpointing: bool = False, **kwargs):
        module = self.module_class(config=config, dtype=dtype, gradient_checkpointing=gradient_checkpointing, **kwargs)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                 encoder_hidden_states=None, encoder_attention_mask=None, params: dict | None = None,
                 dropout_rng=None, train: bool = False, output_attentions: bool | None = None,
                 output_hidden_states: bool | None = None, return_dict: bool | None = None):
        """input_ids (B, T); attention_mask (B, T) 1 token / 0 padding, or (B, T, T); token_type_ids (B, T) segment
        ids (default 0); position_ids (B, T) (default 0..T-1); head_mask (H,) or (layers, H), 1 keeps a head, 0
        silences it. `encoder_hidden_states` / `encoder_attention_mask` keep 4.x's argument order; BERT as a
        cross-attending decoder is not implemented. `train=True` with `dropout_rng` applies dropout."""
        if encoder_hidden_states is not None or encoder_attention_mask is not None:
            raise ConfigError("BERT with cross-attention (encoder_hidden_states) is not implemented; only the "
                              "encoder (and its is_decoder=True causal variant) is.")
        cfg = self.config
        input_ids = jnp.asarray(input_ids, dtype="i4")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        return self.module.apply(
            {"params": self._params_or_own(params)},
            input_ids,
            jnp.asarray(attention_mask, dtype="i4"),
            None if token_type_ids is None else jnp.asarray(token_type_ids, dtype="i4"),
            None if position_ids is None else jnp.asarray(position_ids, dtype="i4"),
            None if head_mask is None else jnp.asarray(head_mask, dtype=self.dtype),
            not train,
            cfg.output_attentions if output_attentions is None else output_attentions,
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states,
            cfg.return_dict if return_dict is None else return_dict,
            rngs={"dropout": dropout_rng} if dropout_rng is not None else {},
        )


class FlaxBertModel(FlaxBertPreTrainedModel):
    """The encoder: -> last_hidden_state (B, T, C) and pooler_output (B, C)."""

    module_class = FlaxBertModule


class FlaxBertForMaskedLM(FlaxBertPreTrainedModel):
    """Encoder + masked-language-model head (tied to the word embeddings): -> logits (B, T, V)."""

    module_class = FlaxBertForMaskedLMModule


class FlaxBertForSequenceClassification(FlaxBertPreTrainedModel):
    """Encoder + pooler + linear classifier: -> logits (B, num_labels)."""

    module_class = FlaxBertForSequenceClassificationModule


class FlaxBertForTokenClassification(FlaxBertPreTrainedModel):
    """Encoder + linear classifier per token: -> logits (B, T, num_labels)."""

    module_class = FlaxBertForTokenClassificationModule


class FlaxBertForQuestionAnswering(FlaxBertPreTrainedModel):
    """Encoder + span head: -> start_logits, end_logits (B, T)."""

    module_class = FlaxBertForQuestionAnsweringModule


__all__ = [
    "FlaxBertForMaskedLM", "FlaxBertForQuestionAnswering", "FlaxBertForSequenceClassification",
    "FlaxBertForTokenClassification", "FlaxBertModel", "FlaxBertPreTrainedModel",
]
