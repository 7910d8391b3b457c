"""The Gemma family: its config, its PyTorch classes (`modeling.py`), its Flax classes (`modeling_flax.py`)
and its TensorFlow classes (`modeling_tf.py`).

Names are imported lazily: the config imports no framework, a PyTorch class imports torch only, a Flax class jax
and flax only, a TensorFlow class tensorflow and keras only.
"""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "GemmaConfig": "configuration",
    "GemmaModel": "modeling", "GemmaForCausalLM": "modeling", "GemmaForSequenceClassification": "modeling",
    "GemmaForQuestionAnswering": "modeling", "GemmaForTokenClassification": "modeling",
    "GemmaPreTrainedModel": "modeling",
    "FlaxGemmaModel": "modeling_flax", "FlaxGemmaForCausalLM": "modeling_flax",
    "FlaxGemmaPreTrainedModel": "modeling_flax",
    "TFGemmaModel": "modeling_tf", "TFGemmaForCausalLM": "modeling_tf",
    "TFGemmaForSequenceClassification": "modeling_tf", "TFGemmaPreTrainedModel": "modeling_tf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
