"""Outputs of the Flax classes, with the 4.x class and field names.

They behave as the PyTorch outputs do (`pretrained.modeling.outputs.ModelOutput`: attribute, key and tuple access,
None fields skipped), and also:
- `out["past_key_values"] = cache` sets a field, as 4.x's wrappers do after a cached call;
- each class is a JAX pytree, so an output can leave a `jax.jit`-compiled function.

The key/value cache keeps 4.x's name here, `past_key_values` (the Flax API is 4.x's; there is no Flax in 5.x).
Shapes: B batch, T tokens, C hidden, V vocabulary, H heads, S attended positions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import jax

from ..modeling.neutral import SettableModelOutput


class FlaxModelOutput(SettableModelOutput):
    """Base of the Flax output dataclasses."""


def flax_output(cls: type) -> type:
    """`@dataclass`, registered as a JAX pytree (children: the fields in order, None ones included)."""
    cls = dataclass(cls)
    names = tuple(f.name for f in fields(cls))
    jax.tree_util.register_pytree_node(
        cls,
        lambda out: (tuple(getattr(out, n) for n in names), None),
        lambda _, children: cls(*children),
    )
    return cls


@flax_output
class FlaxBaseModelOutput(FlaxModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    hidden_states: tuple | None = None  # embeddings + one per layer
    attentions: tuple | None = None  # (B, H, T, S) per layer


@flax_output
class FlaxBaseModelOutputWithPast(FlaxModelOutput):
    last_hidden_state: Any = None  # (B, T, C)
    past_key_values: Any = None  # the updated "cache" collection, when one was given
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax_output
class FlaxBaseModelOutputWithPooling(FlaxModelOutput):
    last_hidden_state: Any = None
    pooler_output: Any = None  # (B, C)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax_output
class FlaxBaseModelOutputWithPoolingAndCrossAttentions(FlaxModelOutput):
    last_hidden_state: Any = None
    pooler_output: Any = None
    hidden_states: tuple | None = None
    past_key_values: Any = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@flax_output
class FlaxBaseModelOutputWithPastAndCrossAttentions(FlaxModelOutput):
    last_hidden_state: Any = None
    past_key_values: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@flax_output
class FlaxCausalLMOutput(FlaxModelOutput):
    """Next-token logits. 4.x made this name an alias of FlaxMaskedLMOutput and set `past_key_values` on it
    after a cached call; here it is a field."""

    logits: Any = None  # (B, T, V)
    past_key_values: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax_output
class FlaxCausalLMOutputWithCrossAttentions(FlaxModelOutput):
    logits: Any = None
    past_key_values: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@flax_output
class FlaxMaskedLMOutput(FlaxModelOutput):
    logits: Any = None  # (B, T, V)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax_output
class FlaxSequenceClassifierOutput(FlaxModelOutput):
    logits: Any = None  # (B, num_labels)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax_output
class FlaxTokenClassifierOutput(FlaxModelOutput):
    logits: Any = None  # (B, T, num_labels)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax_output
class FlaxQuestionAnsweringModelOutput(FlaxModelOutput):
    start_logits: Any = None  # (B, T)
    end_logits: Any = None  # (B, T)
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax_output
class FlaxSeq2SeqModelOutput(FlaxModelOutput):
    last_hidden_state: Any = None  # decoder's (B, T, C)
    past_key_values: Any = None
    decoder_hidden_states: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None
    encoder_last_hidden_state: Any = None
    encoder_hidden_states: tuple | None = None
    encoder_attentions: tuple | None = None


@flax_output
class FlaxSeq2SeqLMOutput(FlaxModelOutput):
    logits: Any = None  # (B, T, V)
    past_key_values: Any = None
    decoder_hidden_states: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None
    encoder_last_hidden_state: Any = None
    encoder_hidden_states: tuple | None = None
    encoder_attentions: tuple | None = None


__all__ = [
    "FlaxBaseModelOutput", "FlaxBaseModelOutputWithPast", "FlaxBaseModelOutputWithPastAndCrossAttentions",
    "FlaxBaseModelOutputWithPooling", "FlaxBaseModelOutputWithPoolingAndCrossAttentions", "FlaxCausalLMOutput",
    "FlaxCausalLMOutputWithCrossAttentions", "FlaxMaskedLMOutput", "FlaxModelOutput",
    "FlaxQuestionAnsweringModelOutput", "FlaxSeq2SeqLMOutput", "FlaxSeq2SeqModelOutput",
    "FlaxSequenceClassifierOutput", "FlaxTokenClassifierOutput",
]
