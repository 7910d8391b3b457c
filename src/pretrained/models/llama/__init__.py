from .configuration import LlamaConfig
from .modeling import (
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
    LlamaPreTrainedModel,
)

__all__ = ["LlamaConfig", "LlamaForCausalLM", "LlamaForQuestionAnswering", "LlamaForSequenceClassification",
           "LlamaForTokenClassification", "LlamaModel", "LlamaPreTrainedModel"]
