"""Mistral in JAX/Flax: Llama (`llama/modeling_flax.py`) with sliding-window attention in every layer and no
projection biases. Query position q attends to key position k when q - sliding_window < k <= q, as the PyTorch
class (4.x's FlaxMistral let one position more through); the cache keeps every position and the mask windows it."""

from __future__ import annotations

from ..llama.modeling_flax import (
    FlaxCausalLMMixin,
    FlaxLlamaAttention,
    FlaxLlamaDecoderLayer,
    FlaxLlamaForCausalLMModule,
    FlaxLlamaModule,
    FlaxLlamaPreTrainedModel,
)
from .configuration import MistralConfig


class FlaxMistralAttention(FlaxLlamaAttention):
    @staticmethod
    def projection_biases(config: MistralConfig) -> tuple[bool, bool]:
        return False, False


class FlaxMistralDecoderLayer(FlaxLlamaDecoderLayer):
    attention_class = FlaxMistralAttention

    @staticmethod
    def mlp_bias(config: MistralConfig) -> bool:
        return False


class FlaxMistralModule(FlaxLlamaModule):
    layer_class = FlaxMistralDecoderLayer

    def sliding_windows(self) -> list[int | None]:
        return [self.config.sliding_window] * self.config.num_hidden_layers


class FlaxMistralForCausalLMModule(FlaxLlamaForCausalLMModule):
    base_module_class = FlaxMistralModule


class FlaxMistralPreTrainedModel(FlaxLlamaPreTrainedModel):
    config_class = MistralConfig


class FlaxMistralModel(FlaxMistralPreTrainedModel):
    module_class = FlaxMistralModule


class FlaxMistralForCausalLM(FlaxCausalLMMixin, FlaxMistralPreTrainedModel):
    module_class = FlaxMistralForCausalLMModule


__all__ = ["FlaxMistralForCausalLM", "FlaxMistralModel", "FlaxMistralPreTrainedModel"]
