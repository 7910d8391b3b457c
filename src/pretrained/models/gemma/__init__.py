from .configuration import GemmaConfig
from .modeling import (
    GemmaForCausalLM,
    GemmaForQuestionAnswering,
    GemmaForSequenceClassification,
    GemmaForTokenClassification,
    GemmaModel,
    GemmaPreTrainedModel,
)

__all__ = ["GemmaConfig", "GemmaForCausalLM", "GemmaForQuestionAnswering", "GemmaForSequenceClassification",
           "GemmaForTokenClassification", "GemmaModel", "GemmaPreTrainedModel"]
