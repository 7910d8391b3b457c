from .configuration import MistralConfig
from .modeling import (
    MistralForCausalLM,
    MistralForQuestionAnswering,
    MistralForSequenceClassification,
    MistralForTokenClassification,
    MistralModel,
    MistralPreTrainedModel,
)

__all__ = ["MistralConfig", "MistralForCausalLM", "MistralForQuestionAnswering", "MistralForSequenceClassification",
           "MistralForTokenClassification", "MistralModel", "MistralPreTrainedModel"]
