"""Qwen2 in TensorFlow (Keras 3; 4.x had none): Llama (`llama/modeling_tf.py`) with biases on the q/k/v projections
(not on o, nor in the MLP) and, when the config asks for it, sliding-window attention in the layers
`config.layer_types` marks "sliding_attention". Weight names follow 4.57's TFMistral (`model/layers.0/...`)."""

from __future__ import annotations

from ...errors import ConfigError
from ..llama.modeling_tf import (
    TFLlamaAttention,
    TFLlamaDecoderLayer,
    TFLlamaForCausalLM,
    TFLlamaForSequenceClassification,
    TFLlamaMainLayer,
    TFLlamaModel,
    TFLlamaPreTrainedModel,
)
from .configuration import Qwen2Config


class TFQwen2Attention(TFLlamaAttention):
    @staticmethod
    def projection_biases(config: Qwen2Config) -> tuple[bool, bool]:
        return True, False


class TFQwen2DecoderLayer(TFLlamaDecoderLayer):
    attention_class = TFQwen2Attention

    @staticmethod
    def mlp_bias(config: Qwen2Config) -> bool:
        return False


class TFQwen2MainLayer(TFLlamaMainLayer):
    layer_class = TFQwen2DecoderLayer

    def sliding_windows(self) -> list[int | None]:
        cfg = self.config
        sliding = [t == "sliding_attention" for t in cfg.layer_types]
        if any(sliding) and cfg.sliding_window is None:
            raise ConfigError("layer_types has sliding_attention layers but sliding_window is None (it is None "
                              "unless use_sliding_window=True); set both, or make every layer full_attention.")
        return [cfg.sliding_window if s else None for s in sliding]


class TFQwen2PreTrainedModel(TFLlamaPreTrainedModel):
    config_class = Qwen2Config
    main_layer_class = TFQwen2MainLayer


class TFQwen2Model(TFQwen2PreTrainedModel, TFLlamaModel):
    pass


class TFQwen2ForCausalLM(TFQwen2PreTrainedModel, TFLlamaForCausalLM):
    pass


class TFQwen2ForSequenceClassification(TFQwen2PreTrainedModel, TFLlamaForSequenceClassification):
    pass


__all__ = ["TFQwen2ForCausalLM", "TFQwen2ForSequenceClassification", "TFQwen2Model", "TFQwen2PreTrainedModel"]
