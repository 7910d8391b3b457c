"""Qwen2 in JAX/Flax (4.x had none): Llama (`llama/modeling_flax.py`) with biases on the q/k/v projections (not on
o, nor in the MLP) and, when the config asks for it, sliding-window attention in the layers `config.layer_types`
marks "sliding_attention"."""

from __future__ import annotations

from ...errors import ConfigError
from ..llama.modeling_flax import (
    FlaxCausalLMMixin,
    FlaxLlamaAttention,
    FlaxLlamaDecoderLayer,
    FlaxLlamaForCausalLMModule,
    FlaxLlamaModule,
    FlaxLlamaPreTrainedModel,
)
from .configuration import Qwen2Config


class FlaxQwen2Attention(FlaxLlamaAttention):
    @staticmethod
    def projection_biases(config: Qwen2Config) -> tuple[bool, bool]:
        return True, False


class FlaxQwen2DecoderLayer(FlaxLlamaDecoderLayer):
    attention_class = FlaxQwen2Attention

    @staticmethod
    def mlp_bias(config: Qwen2Config) -> bool:
        return False


class FlaxQwen2Module(FlaxLlamaModule):
    layer_class = FlaxQwen2DecoderLayer

    def sliding_windows(self) -> list[int | None]:
        cfg = self.config
        sliding = [t == "sliding_attention" for t in cfg.layer_types]
        if any(sliding) and cfg.sliding_window is None:
            raise ConfigError("layer_types has sliding_attention layers but sliding_window is None (it is None "
                              "unless use_sliding_window=True); set both, or make every layer full_attention.")
        return [cfg.sliding_window if s else None for s in sliding]


class FlaxQwen2ForCausalLMModule(FlaxLlamaForCausalLMModule):
    base_module_class = FlaxQwen2Module


class FlaxQwen2PreTrainedModel(FlaxLlamaPreTrainedModel):
    config_class = Qwen2Config


class FlaxQwen2Model(FlaxQwen2PreTrainedModel):
    module_class = FlaxQwen2Module


class FlaxQwen2ForCausalLM(FlaxCausalLMMixin, FlaxQwen2PreTrainedModel):
    module_class = FlaxQwen2ForCausalLMModule


__all__ = ["FlaxQwen2ForCausalLM", "FlaxQwen2Model", "FlaxQwen2PreTrainedModel"]
