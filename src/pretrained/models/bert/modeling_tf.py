"""BERT in TensorFlow (Keras 3): the post-norm encoder and task heads of `modeling.py` as Keras layers.

Weight names are 4.57's TF BERT names, so its `tf_model.h5` files load as they are and ours load there:
`tf_bert_for_masked_lm/bert/embeddings/word_embeddings/weight`, `.../bert/embeddings/position_embeddings/embeddings`,
`.../bert/encoder/layer_._0/attention/self/query/kernel`, `.../bert/encoder/layer_._0/output/LayerNorm/gamma`,
`.../bert/pooler/dense/kernel`, `.../mlm___cls/predictions/bias`, `.../classifier/kernel`, `.../qa_outputs/kernel`.
The PyTorch layout maps onto them by the generic rule of `pretrained.tf.convert` plus `TF_KEY_RULES` below.

Heads can be pruned (`prune_heads`, which 4.57's TF classes could not do): the query/key/value kernels lose the
heads' columns and the attention output kernel their rows, exactly as the PyTorch classes cut them, so a pruned model
saves and reloads in either framework. Imports no torch.
Shapes: B batch, T tokens, H heads (fewer after pruning), D head size, C hidden, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ...errors import ConfigError
from ...tf.base import TFPreTrainedModel
from ...tf.layers import activation, build_child, dense, get_initializer, initializer, replace_variable
from ...tf.losses import question_answering_loss, sequence_classification_loss, token_loss
from ...tf.outputs import (
    TFBaseModelOutputWithPoolingAndCrossAttentions,
    TFMaskedLMOutput,
    TFQuestionAnsweringModelOutput,
    TFSequenceClassifierOutput,
    TFTokenClassifierOutput,
)
from .configuration import BertConfig

from .key_rules import TF_KEY_RULES  # data, shared with the PyTorch loader of 4.x files


def _layer_norm(config: BertConfig, name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=config.layer_norm_eps, name=name,
                                           gamma_initializer=initializer("ones"),
                                           beta_initializer=initializer("zeros"))


def _dropout(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
    return tf.nn.dropout(x, rate=rate) if training and rate > 0.0 else x


def _pruned_heads(config: BertConfig) -> dict[int, set[int]]:
    """config.pruned_heads ({layer: heads}, JSON keys as strings) as {int: set(int)}."""
    return {int(k): {int(h) for h in v} for k, v in (getattr(config, "pruned_heads", None) or {}).items()}


class TFBertWordEmbeddings(keras.layers.Layer):
    """The token embedding table, a weight named `weight` (V, C) as 4.x's TF BERT named it."""

    def __init__(self, config: BertConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size = config.vocab_size, config.hidden_size
        self.weight_initializer = get_initializer(config.initializer_range)

    def build(self, input_shape=None) -> None:
        self.weight = self.add_weight(name="weight", shape=(self.vocab_size, self.hidden_size),
                                      initializer=self.weight_initializer)
        self.built = True

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.weight, tf.cast(ids, tf.int32))


class TFBertEmbeddings(keras.layers.Layer):
    """LayerNorm(word + position + token type embeddings), then dropout."""

    def __init__(self, config: BertConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        init = get_initializer(config.initializer_range)
        self.word_embeddings = TFBertWordEmbeddings(config, name="word_embeddings")
        self.position_embeddings = keras.layers.Embedding(config.max_position_embeddings, config.hidden_size,
                                                          embeddings_initializer=init, name="position_embeddings")
        self.token_type_embeddings = keras.layers.Embedding(config.type_vocab_size, config.hidden_size,
                                                            embeddings_initializer=init, name="token_type_embeddings")
        self.LayerNorm = _layer_norm(config, "LayerNorm")

    def build(self, input_shape=None) -> None:
        build_child(self.word_embeddings, None)
        build_child(self.position_embeddings, None)
        build_child(self.token_type_embeddings, None)
        build_child(self.LayerNorm, (None, None, self.config.hidden_size))
        self.built = True

    def call(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, training=False):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else tf.cast(inputs_embeds, self.compute_dtype)
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        if position_ids is None:
            n = self.config.max_position_embeddings
            if x.shape[1] is not None and x.shape[1] > n:
                raise ValueError(f"Sequence length {x.shape[1]} exceeds max_position_embeddings ({n}); truncate "
                                 "the input.")
            position_ids = tf.range(T)[None]
        if token_type_ids is None:
            token_type_ids = tf.zeros((B, T), tf.int32)
        x = (x + self.token_type_embeddings(tf.cast(token_type_ids, tf.int32))
             + self.position_embeddings(tf.cast(position_ids, tf.int32)))
        return _dropout(self.LayerNorm(x), self.config.hidden_dropout_prob, training)


class TFBertSelfAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention over `num_attention_heads` heads (fewer once pruned)."""

    def __init__(self, config: BertConfig, num_heads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.num_attention_heads = num_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        r = config.initializer_range
        inner = num_heads * self.attention_head_size
        self.query = dense(inner, "query", True, r)
        self.key = dense(inner, "key", True, r)
        self.value = dense(inner, "value", True, r)

    def build(self, input_shape=None) -> None:
        for proj in (self.query, self.key, self.value):
            build_child(proj, (None, None, self.config.hidden_size))
        self.built = True

    def call(self, x, bias=None, head_mask=None, output_attentions=False, training=False):
        """x (B, T, C); bias additive (B, 1, 1|T, T) or None; head_mask (H,) or None.
        Returns the context (B, T, H*D) and the attention probabilities (B, H, T, T)."""
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        H, D = self.num_attention_heads, self.attention_head_size

        def heads(t):  # (B, T, H*D) -> (B, H, T, D)
            return tf.transpose(tf.reshape(t, (B, T, H, D)), (0, 2, 1, 3))

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = tf.matmul(q, k, transpose_b=True) * tf.cast(D**-0.5, q.dtype)  # (B, H, T, T)
        if bias is not None:
            scores = scores + tf.cast(bias, scores.dtype)
        probs = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1), q.dtype)
        probs = _dropout(probs, self.config.attention_probs_dropout_prob, training)
        if head_mask is not None:
            probs = probs * tf.cast(head_mask, probs.dtype)[None, :, None, None]
        context = tf.reshape(tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3)), (B, T, H * D))
        return context, probs


class TFBertSelfOutput(keras.layers.Layer):
    """LayerNorm(residual + dropout(dense(x))): closes the attention block (`in_features` wide input) and, as
    `TFBertOutput`, the feed-forward block."""

    def __init__(self, config: BertConfig, in_features: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config, self.in_features = config, in_features
        self.dense = dense(config.hidden_size, "dense", True, config.initializer_range)
        self.LayerNorm = _layer_norm(config, "LayerNorm")

    def build(self, input_shape=None) -> None:
        build_child(self.dense, (None, None, self.in_features))
        build_child(self.LayerNorm, (None, None, self.config.hidden_size))
        self.built = True

    def call(self, hidden, residual, training=False):
        return self.LayerNorm(_dropout(self.dense(hidden), self.config.hidden_dropout_prob, training) + residual)


TFBertOutput = TFBertSelfOutput


class TFBertAttention(keras.layers.Layer):
    """Self-attention + output projection: the block whose heads can be pruned."""

    def __init__(self, config: BertConfig, pruned: set[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.total_heads = config.num_attention_heads
        self.pruned_heads: set[int] = set(pruned)
        heads = self.total_heads - len(self.pruned_heads)
        self.self_attention = TFBertSelfAttention(config, heads, name="self")
        self.dense_output = TFBertSelfOutput(config, heads * self.self_attention.attention_head_size, name="output")

    def build(self, input_shape=None) -> None:
        build_child(self.self_attention, None)
        build_child(self.dense_output, None)
        self.built = True

    def remaining_heads(self) -> list[int]:
        """Original numbers of the heads still here, in the order of their columns."""
        return [h for h in range(self.total_heads) if h not in self.pruned_heads]

    def prune_heads(self, heads) -> None:
        """Remove `heads` (original numbering): their columns of query/key/value, their rows of the output dense."""
        heads = set(heads) - self.pruned_heads
        if not heads:
            return
        attn = self.self_attention
        D = attn.attention_head_size
        keep = [i for i, h in enumerate(self.remaining_heads()) if h not in heads]  # current slots kept
        index = np.asarray([s * D + d for s in keep for d in range(D)], dtype=np.int64)
        for proj in (attn.query, attn.key, attn.value):
            replace_variable(proj.kernel, tf.gather(proj.kernel, index, axis=1))
            replace_variable(proj.bias, tf.gather(proj.bias, index, axis=0))
            proj.units = len(index)
        out = self.dense_output.dense
        replace_variable(out.kernel, tf.gather(out.kernel, index, axis=0))
        out.input_spec = keras.InputSpec(min_ndim=2, axes={-1: len(index)})  # Dense checks its input's width
        self.dense_output.in_features = len(index)
        attn.num_attention_heads = len(keep)
        self.pruned_heads |= heads

    def call(self, x, bias=None, head_mask=None, output_attentions=False, training=False):
        if head_mask is not None and self.pruned_heads and head_mask.shape[-1] == self.total_heads:
            head_mask = tf.gather(head_mask, self.remaining_heads(), axis=-1)  # a mask over the original heads
        context, probs = self.self_attention(x, bias, head_mask=head_mask, output_attentions=output_attentions,
                                                  training=training)
        return self.dense_output(context, x, training=training), probs


class TFBertIntermediate(keras.layers.Layer):
    def __init__(self, config: BertConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.dense = dense(config.intermediate_size, "dense", True, config.initializer_range)
        self.intermediate_act_fn = activation(config.hidden_act)

    def build(self, input_shape=None) -> None:
        build_child(self.dense, (None, None, self.config.hidden_size))
        self.built = True

    def call(self, x):
        return self.intermediate_act_fn(self.dense(x))


class TFBertLayer(keras.layers.Layer):
    """Attention block, then the feed-forward block (in chunks of `chunk_size_feed_forward` tokens when set)."""

    def __init__(self, config: BertConfig, pruned: set[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.attention = TFBertAttention(config, pruned, name="attention")
        self.intermediate = TFBertIntermediate(config, name="intermediate")
        self.bert_output = TFBertOutput(config, config.intermediate_size, name="output")

    def build(self, input_shape=None) -> None:
        for layer in (self.attention, self.intermediate, self.bert_output):
            build_child(layer, None)
        self.built = True

    def feed_forward(self, x, training=False):
        return self.bert_output(self.intermediate(x), x, training=training)

    def call(self, x, bias=None, head_mask=None, output_attentions=False, training=False):
        x, probs = self.attention(x, bias, head_mask=head_mask, output_attentions=output_attentions,
                                  training=training)
        n = self.config.chunk_size_feed_forward
        if n and x.shape[1] is not None and x.shape[1] > n:  # same values; chunks bound the activations' memory
            sizes = [n] * (x.shape[1] // n) + ([x.shape[1] % n] if x.shape[1] % n else [])
            x = tf.concat([self.feed_forward(c, training=training) for c in tf.split(x, sizes, axis=1)], axis=1)
        else:
            x = self.feed_forward(x, training=training)
        return x, probs


class TFBertEncoder(keras.layers.Layer):
    def __init__(self, config: BertConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pruned = _pruned_heads(config)
        self.layer = [TFBertLayer(config, pruned.get(i, set()), name=f"layer_._{i}")
                      for i in range(config.num_hidden_layers)]

    def build(self, input_shape=None) -> None:
        for layer in self.layer:
            build_child(layer, None)
        self.built = True

    def call(self, x, bias, head_mask=None, output_attentions=False, output_hidden_states=False, training=False):
        hidden, attentions = [], []
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                hidden.append(x)
            x, probs = layer(x, bias, head_mask=None if head_mask is None else head_mask[i],
                             output_attentions=output_attentions, training=training)
            if output_attentions:
                attentions.append(probs)
        if output_hidden_states:
            hidden.append(x)
        return x, tuple(hidden) if output_hidden_states else None, tuple(attentions) if output_attentions else None


class TFBertPooler(keras.layers.Layer):
    """tanh(dense(hidden state of the first token))."""

    def __init__(self, config: BertConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.dense = dense(config.hidden_size, "dense", True, config.initializer_range)

    def build(self, input_shape=None) -> None:
        build_child(self.dense, (None, self.config.hidden_size))
        self.built = True

    def call(self, hidden):  # (B, T, C) -> (B, C)
        return tf.tanh(self.dense(hidden[:, 0]))


def attention_bias(attention_mask: Any, B: Any, T: Any, causal: bool, dtype) -> tf.Tensor | None:
    """Additive (B, 1, 1|T, T) bias from a (B, T) or (B, T, T) 0/1 mask: 0 where a query may attend, the dtype's
    lowest value where it may not (and after the query too, when `causal`); None when nothing is masked."""
    if attention_mask is None:
        if not causal:
            return None
        attention_mask = tf.ones((B, T), dtype)
    mask = tf.cast(attention_mask, dtype)
    if mask.shape.rank == 2:
        mask = mask[:, None, None, :]
    elif mask.shape.rank == 3:
        mask = mask[:, None, :, :]
    else:
        raise ValueError(f"attention_mask of shape {mask.shape}: expected (batch, seq) or (batch, seq, seq).")
    if causal:
        mask = mask * tf.linalg.band_part(tf.ones((T, T), dtype), -1, 0)[None, None]
    return (1.0 - mask) * tf.cast(dtype.min, dtype)


def _head_mask(head_mask: Any, config: BertConfig) -> tf.Tensor | None:
    """None, (H,) or (layers, H) -> None or (layers, H) (H: the original heads, or those left after pruning)."""
    if head_mask is None:
        return None
    head_mask = tf.convert_to_tensor(head_mask)
    if head_mask.shape.rank == 1:
        head_mask = tf.broadcast_to(head_mask[None], (config.num_hidden_layers, head_mask.shape[0]))
    if head_mask.shape.rank != 2 or head_mask.shape[0] != config.num_hidden_layers:
        raise ValueError(f"head_mask of shape {head_mask.shape}: expected (heads,) or "
                         f"({config.num_hidden_layers}, heads).")
    return head_mask


class TFBertMainLayer(keras.layers.Layer):
    """The encoder (4.x's main layer, named `bert`): token ids (+ segment ids) -> hidden states (B, T, C) and, with
    the pooler, (B, C)."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if config.add_cross_attention:
            raise ConfigError("add_cross_attention=True (BERT as an encoder-decoder's decoder) is not implemented.")
        self.config = config
        self.embeddings = TFBertEmbeddings(config, name="embeddings")
        self.encoder = TFBertEncoder(config, name="encoder")
        self.pooler = TFBertPooler(config, name="pooler") if add_pooling_layer else None

    def build(self, input_shape=None) -> None:
        build_child(self.embeddings, None)
        build_child(self.encoder, None)
        if self.pooler is not None:
            build_child(self.pooler, None)
        self.built = True

    def get_input_embeddings(self) -> TFBertWordEmbeddings:
        return self.embeddings.word_embeddings

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, training=False):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        x = self.embeddings(input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                            inputs_embeds=inputs_embeds, training=training)
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        bias = attention_bias(attention_mask, B, T, bool(cfg.is_decoder), x.dtype)
        x, hidden, attentions = self.encoder(x, bias, head_mask=_head_mask(head_mask, cfg),
                                             output_attentions=output_attentions,
                                             output_hidden_states=output_hidden_states, training=training)
        return TFBaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x, pooler_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=hidden, attentions=attentions)


class TFBertPredictionHeadTransform(keras.layers.Layer):
    def __init__(self, config: BertConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.dense = dense(config.hidden_size, "dense", True, config.initializer_range)
        self.transform_act_fn = activation(config.hidden_act)
        self.LayerNorm = _layer_norm(config, "LayerNorm")

    def build(self, input_shape=None) -> None:
        build_child(self.dense, (None, None, self.config.hidden_size))
        build_child(self.LayerNorm, (None, None, self.config.hidden_size))
        self.built = True

    def call(self, x):
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class TFBertLMPredictionHead(keras.layers.Layer):
    """transform, then the decoder -> (B, T, V). Tied (the default, and 4.x's only case): the word embeddings
    transposed, plus `bias`. Untied (`tie_word_embeddings=False`): a `decoder` Dense with its own bias, as the
    PyTorch class computes it (`bias` is then kept, unused, as there)."""

    def __init__(self, config: BertConfig, input_embeddings: TFBertEmbeddings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.transform = TFBertPredictionHeadTransform(config, name="transform")
        self.decoder = None if config.tie_word_embeddings else dense(config.vocab_size, "decoder", True,
                                                                     config.initializer_range)
        # `bert`'s embeddings, built there; tracked here too, so that this layer's weights list them, as 4.x's
        # h5 files list them in the `mlm___cls` group.
        self.input_embeddings = input_embeddings

    def build(self, input_shape=None) -> None:
        self.bias = self.add_weight(name="bias", shape=(self.config.vocab_size,), initializer=initializer("zeros"))
        build_child(self.transform, None)
        if self.decoder is not None:
            build_child(self.decoder, (None, None, self.config.hidden_size))
        self.built = True

    def call(self, x):
        x = self.transform(x)
        if self.decoder is not None:
            return self.decoder(x)
        table = tf.cast(self.input_embeddings.word_embeddings.weight, x.dtype)
        return tf.matmul(x, table, transpose_b=True) + tf.cast(self.bias, x.dtype)


class TFBertMLMHead(keras.layers.Layer):
    def __init__(self, config: BertConfig, input_embeddings: TFBertEmbeddings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.predictions = TFBertLMPredictionHead(config, input_embeddings, name="predictions")

    def build(self, input_shape=None) -> None:
        build_child(self.predictions, None)
        self.built = True

    def call(self, x):
        return self.predictions(x)


class TFBertPreTrainedModel(TFPreTrainedModel):
    """Weights, loading, pruning and 4.x's call convention, shared by the BERT TF classes."""

    config_class = BertConfig
    base_model_prefix = "bert"
    main_input_name = "input_ids"
    tf_key_rules = TF_KEY_RULES
    add_pooling_layer = False

    def __init__(self, config: BertConfig, *inputs: Any, add_pooling_layer: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        pooling = type(self).add_pooling_layer if add_pooling_layer is None else add_pooling_layer
        self.bert = TFBertMainLayer(config, pooling, name="bert")

    def build(self, input_shape=None) -> None:
        build_child(self.bert, None)
        for layer in self._heads():
            build_child(layer, (None, None, self.config.hidden_size))
        self.built = True

    def _heads(self) -> list[keras.layers.Layer]:
        """The task layers next to `bert` (built after it)."""
        return []

    def _prune_heads(self, plan: dict[int, tuple[list[int], list[int]]]) -> None:
        for layer, (heads, _) in plan.items():
            self.bert.encoder.layer[layer].attention.prune_heads(heads)
        # Keras's traced train/test/predict functions captured the old variables: trace again on next use
        self.train_function = self.test_function = self.predict_function = None

    def _base(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
              output_attentions, output_hidden_states, training):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         training=training)

    def _finish(self, out, return_dict):
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()

    def _classifier_dropout(self) -> float:
        cfg = self.config
        return cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob


class TFBertModel(TFBertPreTrainedModel):
    """The encoder: -> last_hidden_state (B, T, C) and pooler_output (B, C)."""

    add_pooling_layer = True

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, training=False):
        """input_ids (B, T); attention_mask (B, T) 1 token / 0 padding, or (B, T, T); token_type_ids (B, T) segment
        ids (default 0); position_ids (B, T) (default 0..T-1); head_mask (H,) or (layers, H), 1 keeps a head, 0
        silences it. `encoder_hidden_states`, `past_key_values`, `use_cache` keep 4.x's signature; BERT as a
        cross-attending decoder is not implemented."""
        if encoder_hidden_states is not None or encoder_attention_mask is not None or past_key_values is not None:
            raise ConfigError("BERT with cross-attention or a cache (encoder_hidden_states, past_key_values) is not "
                              "implemented; only the encoder (and its is_decoder=True causal variant) is.")
        out = self._base(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                         output_attentions, output_hidden_states, training)
        return self._finish(out, return_dict)


class TFBertForMaskedLM(TFBertPreTrainedModel):
    """Encoder + masked-language-model head (tied to the word embeddings): -> logits (B, T, V); with `labels`
    (B, T) (-100 = not masked) the masked-LM loss."""

    def __init__(self, config: BertConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.mlm = TFBertMLMHead(config, self.bert.embeddings, name="mlm___cls")

    def _heads(self):
        return [self.mlm]

    def get_output_embeddings(self) -> keras.layers.Layer:
        head = self.mlm.predictions
        return self.bert.get_input_embeddings() if head.decoder is None else head.decoder

    def get_bias(self) -> dict[str, Any]:
        head = self.mlm.predictions
        out = {"bias": head.bias}
        if head.decoder is not None:
            out["decoder_bias"] = head.decoder.bias
        return out

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        base = self._base(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                          output_attentions, output_hidden_states, training)
        logits = tf.cast(self.mlm(base.last_hidden_state), tf.float32)
        loss = token_loss(logits, labels) if labels is not None else None
        return self._finish(TFMaskedLMOutput(loss=loss, logits=logits, hidden_states=base.hidden_states,
                                             attentions=base.attentions), return_dict)


class TFBertForSequenceClassification(TFBertPreTrainedModel):
    """Encoder + pooler + linear classifier: -> logits (B, num_labels); regression when num_labels == 1."""

    add_pooling_layer = True

    def __init__(self, config: BertConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.num_labels = config.num_labels
        self.classifier = dense(config.num_labels, "classifier", True, config.initializer_range)

    def _heads(self):
        return [self.classifier]

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        base = self._base(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                          output_attentions, output_hidden_states, training)
        pooled = _dropout(base.pooler_output, self._classifier_dropout(), training)
        logits = tf.cast(self.classifier(pooled), tf.float32)
        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        return self._finish(TFSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=base.hidden_states,
                                                       attentions=base.attentions), return_dict)


class TFBertForTokenClassification(TFBertPreTrainedModel):
    """Encoder + linear classifier per token: -> logits (B, T, num_labels)."""

    def __init__(self, config: BertConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.num_labels = config.num_labels
        self.classifier = dense(config.num_labels, "classifier", True, config.initializer_range)

    def _heads(self):
        return [self.classifier]

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        base = self._base(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                          output_attentions, output_hidden_states, training)
        hidden = _dropout(base.last_hidden_state, self._classifier_dropout(), training)
        logits = tf.cast(self.classifier(hidden), tf.float32)
        loss = token_loss(logits, labels) if labels is not None else None
        return self._finish(TFTokenClassifierOutput(loss=loss, logits=logits, hidden_states=base.hidden_states,
                                                    attentions=base.attentions), return_dict)


class TFBertForQuestionAnswering(TFBertPreTrainedModel):
    """Encoder + span head: -> start_logits, end_logits (B, T); with start_positions and end_positions (B,) the
    mean of the two cross-entropies."""

    def __init__(self, config: BertConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.num_labels = config.num_labels
        self.qa_outputs = dense(config.num_labels, "qa_outputs", True, config.initializer_range)

    def _heads(self):
        return [self.qa_outputs]

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None,
             start_positions=None, end_positions=None, training=False):
        base = self._base(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                          output_attentions, output_hidden_states, training)
        logits = tf.cast(self.qa_outputs(base.last_hidden_state), tf.float32)  # (B, T, 2)
        start, end = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start, end, start_positions, end_positions)
        return self._finish(TFQuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end,
                                                           hidden_states=base.hidden_states,
                                                           attentions=base.attentions), return_dict)


__all__ = [
    "TFBertForMaskedLM", "TFBertForQuestionAnswering", "TFBertForSequenceClassification",
    "TFBertForTokenClassification", "TFBertMainLayer", "TFBertModel", "TFBertPreTrainedModel",
]
