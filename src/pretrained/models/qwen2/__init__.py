"""The Qwen2 family: its config, its PyTorch classes (`modeling.py`), its Flax classes (`modeling_flax.py`)
and its TensorFlow classes (`modeling_tf.py`).

Names are imported lazily: the config imports no framework, a PyTorch class imports torch only, a Flax class jax
and flax only, a TensorFlow class tensorflow and keras only.
"""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "Qwen2Config": "configuration",
    "Qwen2Model": "modeling", "Qwen2ForCausalLM": "modeling", "Qwen2ForSequenceClassification": "modeling",
    "Qwen2ForQuestionAnswering": "modeling", "Qwen2ForTokenClassification": "modeling",
    "Qwen2PreTrainedModel": "modeling",
    "FlaxQwen2Model": "modeling_flax", "FlaxQwen2ForCausalLM": "modeling_flax",
    "FlaxQwen2PreTrainedModel": "modeling_flax",
    "TFQwen2Model": "modeling_tf", "TFQwen2ForCausalLM": "modeling_tf",
    "TFQwen2ForSequenceClassification": "modeling_tf", "TFQwen2PreTrainedModel": "modeling_tf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
