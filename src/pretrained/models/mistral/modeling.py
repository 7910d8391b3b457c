"""Mistral: Llama with sliding-window attention in every layer and no projection biases.

The window is applied through the attention mask (sdpa and eager alike): query position q may attend to key
position k when q - sliding_window < k <= q. The cache keeps every position; the mask does the windowing.
"""

from __future__ import annotations

from ...modeling.heads import (
    DecoderForCausalLM,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
)
from ..llama.modeling import LlamaAttention, LlamaDecoderLayer, LlamaModel, LlamaPreTrainedModel
from .configuration import MistralConfig


class MistralAttention(LlamaAttention):
    @staticmethod
    def projection_biases(config: MistralConfig) -> tuple[bool, bool]:
        return False, False


class MistralDecoderLayer(LlamaDecoderLayer):
    attention_class = MistralAttention

    @staticmethod
    def mlp_bias(config: MistralConfig) -> bool:
        return False


class MistralPreTrainedModel(LlamaPreTrainedModel):
    config_class = MistralConfig
    facts = LlamaPreTrainedModel.facts.but(no_split_modules=("MistralDecoderLayer",))


class MistralModel(MistralPreTrainedModel, LlamaModel):
    layer_class = MistralDecoderLayer

    def sliding_windows(self) -> list[int | None]:
        return [self.config.sliding_window] * len(self.layers)


class MistralForCausalLM(DecoderForCausalLM, MistralPreTrainedModel):
    base_class = MistralModel


class MistralForSequenceClassification(DecoderForSequenceClassification, MistralPreTrainedModel):
    base_class = MistralModel


class MistralForQuestionAnswering(DecoderForQuestionAnswering, MistralPreTrainedModel):
    base_class = MistralModel


class MistralForTokenClassification(DecoderForTokenClassification, MistralPreTrainedModel):
    base_class = MistralModel
