"""The Llama family: its config, its PyTorch classes (`modeling.py`), its Flax classes (`modeling_flax.py`)
and its TensorFlow classes (`modeling_tf.py`).

Names are imported lazily: the config imports no framework, a PyTorch class imports torch only, a Flax class jax
and flax only, a TensorFlow class tensorflow and keras only.
"""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "LlamaConfig": "configuration",
    "LlamaModel": "modeling", "LlamaForCausalLM": "modeling", "LlamaForSequenceClassification": "modeling",
    "LlamaForQuestionAnswering": "modeling", "LlamaForTokenClassification": "modeling",
    "LlamaPreTrainedModel": "modeling",
    "FlaxLlamaModel": "modeling_flax", "FlaxLlamaForCausalLM": "modeling_flax",
    "FlaxLlamaPreTrainedModel": "modeling_flax",
    "TFLlamaModel": "modeling_tf", "TFLlamaForCausalLM": "modeling_tf",
    "TFLlamaForSequenceClassification": "modeling_tf", "TFLlamaPreTrainedModel": "modeling_tf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
