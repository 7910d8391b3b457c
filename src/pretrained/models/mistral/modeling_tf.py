"""Mistral in TensorFlow (Keras 3): Llama (`llama/modeling_tf.py`) with sliding-window attention in every layer and
no projection or MLP biases. Weight names are 4.57's TFMistral names (`model/layers.0/self_attn/q_proj/kernel`,
norms `weight`), so its `tf_model.h5` files load as they are. Query position q attends to key position k when
q - sliding_window < k <= q, as the PyTorch class (4.57's TFMistral built no window at all); the cache keeps every
position and the mask windows it."""

from __future__ import annotations

from ..llama.modeling_tf import (
    TFLlamaAttention,
    TFLlamaDecoderLayer,
    TFLlamaForCausalLM,
    TFLlamaForSequenceClassification,
    TFLlamaMainLayer,
    TFLlamaModel,
    TFLlamaPreTrainedModel,
)
from .configuration import MistralConfig


class TFMistralAttention(TFLlamaAttention):
    @staticmethod
    def projection_biases(config: MistralConfig) -> tuple[bool, bool]:
        return False, False


class TFMistralDecoderLayer(TFLlamaDecoderLayer):
    attention_class = TFMistralAttention

    @staticmethod
    def mlp_bias(config: MistralConfig) -> bool:
        return False


class TFMistralMainLayer(TFLlamaMainLayer):
    layer_class = TFMistralDecoderLayer

    def sliding_windows(self) -> list[int | None]:
        return [self.config.sliding_window] * self.config.num_hidden_layers


class TFMistralPreTrainedModel(TFLlamaPreTrainedModel):
    config_class = MistralConfig
    main_layer_class = TFMistralMainLayer


class TFMistralModel(TFMistralPreTrainedModel, TFLlamaModel):
    pass


class TFMistralForCausalLM(TFMistralPreTrainedModel, TFLlamaForCausalLM):
    pass


class TFMistralForSequenceClassification(TFMistralPreTrainedModel, TFLlamaForSequenceClassification):
    pass


__all__ = ["TFMistralForCausalLM", "TFMistralForSequenceClassification", "TFMistralModel", "TFMistralPreTrainedModel"]
