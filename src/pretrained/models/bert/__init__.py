from .configuration import BertConfig
from .modeling import (
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
)

__all__ = [
    "BertConfig", "BertForMaskedLM", "BertForQuestionAnswering", "BertForSequenceClassification",
    "BertForTokenClassification", "BertModel", "BertPreTrainedModel",
]
