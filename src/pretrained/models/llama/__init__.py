from .configuration import LlamaConfig
from .modeling import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel

__all__ = ["LlamaConfig", "LlamaForCausalLM", "LlamaModel", "LlamaPreTrainedModel"]
