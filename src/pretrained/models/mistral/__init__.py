"""The Mistral family: its config, its PyTorch classes (`modeling.py`), its Flax classes (`modeling_flax.py`)
and its TensorFlow classes (`modeling_tf.py`).

Names are imported lazily: the config imports no framework, a PyTorch class imports torch only, a Flax class jax
and flax only, a TensorFlow class tensorflow and keras only.
"""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "MistralConfig": "configuration",
    "MistralModel": "modeling", "MistralForCausalLM": "modeling", "MistralForSequenceClassification": "modeling",
    "MistralForQuestionAnswering": "modeling", "MistralForTokenClassification": "modeling",
    "MistralPreTrainedModel": "modeling",
    "FlaxMistralModel": "modeling_flax", "FlaxMistralForCausalLM": "modeling_flax",
    "FlaxMistralPreTrainedModel": "modeling_flax",
    "TFMistralModel": "modeling_tf", "TFMistralForCausalLM": "modeling_tf",
    "TFMistralForSequenceClassification": "modeling_tf", "TFMistralPreTrainedModel": "modeling_tf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
