"""Qwen2: Llama with biases on the q/k/v projections (not on o, nor in the MLP) and, when the config asks for
it, sliding-window attention in the layers that `config.layer_types` marks "sliding_attention"."""

from __future__ import annotations

from ...errors import ConfigError
from ...modeling.heads import (
    DecoderForCausalLM,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
)
from ..llama.modeling import LlamaAttention, LlamaDecoderLayer, LlamaModel, LlamaPreTrainedModel
from .configuration import Qwen2Config


class Qwen2Attention(LlamaAttention):
    @staticmethod
    def projection_biases(config: Qwen2Config) -> tuple[bool, bool]:
        return True, False


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_class = Qwen2Attention

    @staticmethod
    def mlp_bias(config: Qwen2Config) -> bool:
        return False


class Qwen2PreTrainedModel(LlamaPreTrainedModel):
    config_class = Qwen2Config
    facts = LlamaPreTrainedModel.facts.but(no_split_modules=("Qwen2DecoderLayer",))


class Qwen2Model(Qwen2PreTrainedModel, LlamaModel):
    layer_class = Qwen2DecoderLayer

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        self.sliding_windows()  # an inconsistent config fails here, not at the first forward

    def sliding_windows(self) -> list[int | None]:
        cfg = self.config
        sliding = [t == "sliding_attention" for t in cfg.layer_types]
        if any(sliding) and cfg.sliding_window is None:
            raise ConfigError("layer_types has sliding_attention layers but sliding_window is None (it is None "
                              "unless use_sliding_window=True); set both, or make every layer full_attention.")
        return [cfg.sliding_window if s else None for s in sliding]


class Qwen2ForCausalLM(DecoderForCausalLM, Qwen2PreTrainedModel):
    base_class = Qwen2Model


class Qwen2ForSequenceClassification(DecoderForSequenceClassification, Qwen2PreTrainedModel):
    base_class = Qwen2Model


class Qwen2ForQuestionAnswering(DecoderForQuestionAnswering, Qwen2PreTrainedModel):
    base_class = Qwen2Model
    facts = Qwen2PreTrainedModel.facts.but(base_model_prefix="transformer")  # the ecosystem's name for this class


class Qwen2ForTokenClassification(DecoderForTokenClassification, Qwen2PreTrainedModel):
    base_class = Qwen2Model
