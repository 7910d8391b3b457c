"""Gemma in JAX/Flax: Llama (`llama/modeling_flax.py`) with embeddings scaled by sqrt(hidden_size) (the scale cast
to the computation dtype first, as PyTorch casts it to the table's: 55.43 becomes 55.5 in bfloat16), RMSNorms that
scale by (1 + w) in float32, a tanh-approximated GELU gate, an explicit `head_dim`, and the head tied to the
embeddings by default."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ..llama.modeling_flax import (
    FlaxCausalLMMixin,
    FlaxLlamaDecoderLayer,
    FlaxLlamaForCausalLMModule,
    FlaxLlamaModule,
    FlaxLlamaPreTrainedModel,
)
from .configuration import GemmaConfig


class FlaxGemmaDecoderLayer(FlaxLlamaDecoderLayer):
    norm_offset = 1.0

    @staticmethod
    def mlp_bias(config: GemmaConfig) -> bool:
        return False


class FlaxGemmaModule(FlaxLlamaModule):
    layer_class = FlaxGemmaDecoderLayer

    def embed_scale(self) -> float | None:
        return self.config.hidden_size**0.5


class FlaxGemmaForCausalLMModule(FlaxLlamaForCausalLMModule):
    base_module_class = FlaxGemmaModule


class FlaxGemmaPreTrainedModel(FlaxLlamaPreTrainedModel):
    config_class = GemmaConfig

    def __init__(self, config: GemmaConfig, *args: Any, **kwargs: Any) -> None:
        if getattr(config, "use_bidirectional_attention", None):
            raise ConfigError("use_bidirectional_attention=True is not supported by pretrained's Gemma; it is a "
                              "causal decoder here. Set it to None or False.")
        super().__init__(config, *args, **kwargs)


class FlaxGemmaModel(FlaxGemmaPreTrainedModel):
    module_class = FlaxGemmaModule


class FlaxGemmaForCausalLM(FlaxCausalLMMixin, FlaxGemmaPreTrainedModel):
    module_class = FlaxGemmaForCausalLMModule


__all__ = ["FlaxGemmaForCausalLM", "FlaxGemmaModel", "FlaxGemmaPreTrainedModel"]
