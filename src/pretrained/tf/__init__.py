"""TensorFlow (Keras 3): `TFPreTrainedModel`, `TFModelUtilsMixin`, the TF Auto classes, outputs, shared layers and
generation.

Needs `tensorflow` and `keras` 3 (`pip install pretrained[tf]`), never torch or jax. Names are imported lazily, so
importing this package imports no framework; `pretrained.tf.convert` and `pretrained.checkpoint.h5` need only numpy
(and h5py).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TFPreTrainedModel": "base",
    "TFModelUtilsMixin": "base",
    "TFGenerationMixin": "generation",
    **{name: "auto" for name in (
        "TFAutoModel", "TFAutoModelForCausalLM", "TFAutoModelForMaskedLM", "TFAutoModelForSeq2SeqLM",
        "TFAutoModelForSequenceClassification", "TFAutoModelForQuestionAnswering",
        "TFAutoModelForTokenClassification")},
    **{name: "outputs" for name in (
        "TFBaseModelOutput", "TFBaseModelOutputWithPast", "TFBaseModelOutputWithCrossAttentions",
        "TFBaseModelOutputWithPastAndCrossAttentions", "TFBaseModelOutputWithPooling",
        "TFBaseModelOutputWithPoolingAndCrossAttentions", "TFCausalLMOutput", "TFCausalLMOutputWithPast",
        "TFCausalLMOutputWithCrossAttentions", "TFMaskedLMOutput", "TFQuestionAnsweringModelOutput",
        "TFSeq2SeqLMOutput", "TFSeq2SeqModelOutput", "TFSequenceClassifierOutput",
        "TFSequenceClassifierOutputWithPast", "TFTokenClassifierOutput", "TFModelOutput")},
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
