"""Gemma in TensorFlow (Keras 3; 4.x had none): Llama (`llama/modeling_tf.py`) with embeddings scaled by
sqrt(hidden_size) (the scale cast to the computation dtype first, as PyTorch casts it to the table's), RMSNorms that
scale by (1 + w) in float32, a tanh-approximated GELU gate, an explicit `head_dim`, and the head tied to the
embeddings by default. Weight names follow 4.57's TFMistral (`model/layers.0/...`)."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ..llama.modeling_tf import (
    TFLlamaDecoderLayer,
    TFLlamaForCausalLM,
    TFLlamaForSequenceClassification,
    TFLlamaMainLayer,
    TFLlamaModel,
    TFLlamaPreTrainedModel,
)
from .configuration import GemmaConfig


class TFGemmaDecoderLayer(TFLlamaDecoderLayer):
    norm_offset = 1.0

    @staticmethod
    def mlp_bias(config: GemmaConfig) -> bool:
        return False


class TFGemmaMainLayer(TFLlamaMainLayer):
    layer_class = TFGemmaDecoderLayer

    def embed_scale(self) -> float | None:
        return self.config.hidden_size**0.5


class TFGemmaPreTrainedModel(TFLlamaPreTrainedModel):
    config_class = GemmaConfig
    main_layer_class = TFGemmaMainLayer

    def __init__(self, config: GemmaConfig, *inputs: Any, **kwargs: Any) -> None:
        if getattr(config, "use_bidirectional_attention", None):
            raise ConfigError("use_bidirectional_attention=True is not supported by pretrained's Gemma; it is a "
                              "causal decoder here. Set it to None or False.")
        super().__init__(config, *inputs, **kwargs)


class TFGemmaModel(TFGemmaPreTrainedModel, TFLlamaModel):
    pass


class TFGemmaForCausalLM(TFGemmaPreTrainedModel, TFLlamaForCausalLM):
    pass


class TFGemmaForSequenceClassification(TFGemmaPreTrainedModel, TFLlamaForSequenceClassification):
    pass


__all__ = ["TFGemmaForCausalLM", "TFGemmaForSequenceClassification", "TFGemmaModel", "TFGemmaPreTrainedModel"]
