"""The bert family. Names load lazily: the PyTorch classes import torch, the Flax ones jax and flax, the TF
ones tensorflow and keras, and `import pretrained.models.bert` imports none of them."""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "BertConfig": "configuration",
    "BertForMaskedLM": "modeling",
    "BertForPreTraining": "modeling",
    "BertForPreTrainingOutput": "modeling",
    "BertForQuestionAnswering": "modeling",
    "BertForSequenceClassification": "modeling",
    "BertForTokenClassification": "modeling",
    "BertModel": "modeling",
    "BertPreTrainedModel": "modeling",
    "FlaxBertForMaskedLM": "modeling_flax",
    "FlaxBertForQuestionAnswering": "modeling_flax",
    "FlaxBertForSequenceClassification": "modeling_flax",
    "FlaxBertForTokenClassification": "modeling_flax",
    "FlaxBertModel": "modeling_flax",
    "FlaxBertPreTrainedModel": "modeling_flax",
    "TFBertForMaskedLM": "modeling_tf",
    "TFBertForQuestionAnswering": "modeling_tf",
    "TFBertForSequenceClassification": "modeling_tf",
    "TFBertForTokenClassification": "modeling_tf",
    "TFBertModel": "modeling_tf",
    "TFBertPreTrainedModel": "modeling_tf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
