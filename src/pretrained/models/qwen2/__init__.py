from .configuration import Qwen2Config
from .modeling import (
    Qwen2ForCausalLM,
    Qwen2ForQuestionAnswering,
    Qwen2ForSequenceClassification,
    Qwen2ForTokenClassification,
    Qwen2Model,
    Qwen2PreTrainedModel,
)

__all__ = ["Qwen2Config", "Qwen2ForCausalLM", "Qwen2ForQuestionAnswering", "Qwen2ForSequenceClassification",
           "Qwen2ForTokenClassification", "Qwen2Model", "Qwen2PreTrainedModel"]
