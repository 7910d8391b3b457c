"""JAX/Flax: `FlaxPreTrainedModel`, the Flax Auto classes, outputs, shared layers and generation.

Needs `jax` and `flax` (`pip install pretrained[flax]`), never torch. Names are imported lazily, so importing this
package imports no framework; `pretrained.flax.msgpack` and `pretrained.flax.convert` need only numpy (and msgpack).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "FlaxPreTrainedModel": "base",
    "FlaxGenerationMixin": "generation",
    **{name: "auto" for name in (
        "FlaxAutoModel", "FlaxAutoModelForCausalLM", "FlaxAutoModelForMaskedLM", "FlaxAutoModelForSeq2SeqLM",
        "FlaxAutoModelForSequenceClassification", "FlaxAutoModelForQuestionAnswering",
        "FlaxAutoModelForTokenClassification")},
    **{name: "outputs" for name in (
        "FlaxBaseModelOutput", "FlaxBaseModelOutputWithPast", "FlaxBaseModelOutputWithPastAndCrossAttentions",
        "FlaxBaseModelOutputWithPooling", "FlaxBaseModelOutputWithPoolingAndCrossAttentions", "FlaxCausalLMOutput",
        "FlaxCausalLMOutputWithCrossAttentions", "FlaxMaskedLMOutput", "FlaxQuestionAnsweringModelOutput",
        "FlaxSeq2SeqLMOutput", "FlaxSeq2SeqModelOutput", "FlaxSequenceClassifierOutput",
        "FlaxTokenClassifierOutput")},
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
