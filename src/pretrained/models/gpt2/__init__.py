from .configuration import GPT2Config
from .modeling import GPT2LMHeadModel, GPT2Model, GPT2PreTrainedModel

__all__ = ["GPT2Config", "GPT2LMHeadModel", "GPT2Model", "GPT2PreTrainedModel"]
