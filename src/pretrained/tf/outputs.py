"""Outputs of the TensorFlow classes, with 4.x's class and field names (the cache keeps 4.x's name,
`past_key_values`: the TF API is 4.x's).

They behave as the PyTorch and Flax outputs do (`pretrained.modeling.outputs.ModelOutput`: attribute, key and tuple
access, None fields skipped) and also travel through TensorFlow and Keras: each class implements TensorFlow's nest
protocol (`__tf_flatten__`), so a `tf.function` (XLA-compiled too) can return one, and is registered with Keras's
tree utilities, so `model.predict` can gather them batch by batch.
Shapes: B batch, T tokens, C hidden, V vocabulary, H heads, S attended positions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..modeling.neutral import SettableModelOutput


class TFModelOutput(SettableModelOutput):
    """Base of the TF output dataclasses."""

    def __tf_flatten__(self) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        names = tuple(f.name for f in fields(self))
        return names, tuple(getattr(self, n) for n in names)

    @classmethod
    def __tf_unflatten__(cls, metadata: tuple[str, ...], components: tuple[Any, ...]) -> TFModelOutput:
        return cls(**dict(zip(metadata, components)))


def _register_with_keras_tree(cls: type) -> None:
    """Let Keras's tree utilities (optree, namespace "keras") see into the output, as they see into a dict."""
    try:
        import optree
    except ImportError:  # Keras then uses dm-tree, which reads the nest protocol above
        return
    names = tuple(f.name for f in fields(cls))
    try:
        optree.register_pytree_node(cls, lambda out: (tuple(getattr(out, n) for n in names), None, names),
                                    lambda _, children: cls(*children), namespace="keras")
    except ValueError:  # already registered (module reloaded)
        pass


def tf_output(cls: type) -> type:
    """`@dataclass` + registration with Keras's tree utilities."""
    cls = dataclass(cls)
    _register_with_keras_tree(cls)
    return cls


@tf_output
class TFBaseModelOutput(TFModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFBaseModelOutputWithPooling(TFModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    pooler_output: Any = None  # (B, C)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFBaseModelOutputWithPoolingAndCrossAttentions(TFModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    pooler_output: Any = None  # (B, C)
    past_key_values: Any = None  # the key/value cache (see tf/layers.py)
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@tf_output
class TFBaseModelOutputWithPast(TFModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    past_key_values: Any = None  # the key/value cache (see tf/layers.py)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFBaseModelOutputWithCrossAttentions(TFModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@tf_output
class TFBaseModelOutputWithPastAndCrossAttentions(TFModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    past_key_values: Any = None  # the key/value cache (see tf/layers.py)
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@tf_output
class TFSeq2SeqModelOutput(TFModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    past_key_values: Any = None  # the key/value cache (see tf/layers.py)
    decoder_hidden_states: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None
    encoder_last_hidden_state: Any = None
    encoder_hidden_states: tuple | None = None
    encoder_attentions: tuple | None = None


@tf_output
class TFCausalLMOutput(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    logits: Any = None  # (B, T, V)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFCausalLMOutputWithPast(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    logits: Any = None  # (B, T, V)
    past_key_values: Any = None  # the key/value cache (see tf/layers.py)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFCausalLMOutputWithCrossAttentions(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    logits: Any = None  # (B, T, V)
    past_key_values: Any = None  # the key/value cache (see tf/layers.py)
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@tf_output
class TFMaskedLMOutput(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    logits: Any = None  # (B, T, V)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFSeq2SeqLMOutput(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    logits: Any = None  # (B, T, V)
    past_key_values: Any = None  # the key/value cache (see tf/layers.py)
    decoder_hidden_states: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None
    encoder_last_hidden_state: Any = None
    encoder_hidden_states: tuple | None = None
    encoder_attentions: tuple | None = None


@tf_output
class TFSequenceClassifierOutput(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    logits: Any = None  # (B, num_labels)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFSequenceClassifierOutputWithPast(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    logits: Any = None  # (B, num_labels)
    past_key_values: Any = None  # the key/value cache (see tf/layers.py)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFTokenClassifierOutput(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    logits: Any = None  # (B, T, num_labels)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@tf_output
class TFQuestionAnsweringModelOutput(TFModelOutput):
    loss: Any = None  # (1,) the model's own loss, when labels are given
    start_logits: Any = None  # (B, T)
    end_logits: Any = None  # (B, T)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


__all__ = [
    "TFBaseModelOutput",
    "TFBaseModelOutputWithCrossAttentions",
    "TFBaseModelOutputWithPast",
    "TFBaseModelOutputWithPastAndCrossAttentions",
    "TFBaseModelOutputWithPooling",
    "TFBaseModelOutputWithPoolingAndCrossAttentions",
    "TFCausalLMOutput",
    "TFCausalLMOutputWithCrossAttentions",
    "TFCausalLMOutputWithPast",
    "TFMaskedLMOutput",
    "TFModelOutput",
    "TFQuestionAnsweringModelOutput",
    "TFSeq2SeqLMOutput",
    "TFSeq2SeqModelOutput",
    "TFSequenceClassifierOutput",
    "TFSequenceClassifierOutputWithPast",
    "TFTokenClassifierOutput",
]
