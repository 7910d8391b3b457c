"""Gemma: Llama with embeddings scaled by sqrt(hidden_size), RMSNorms that scale by (1 + w) in float32, a
tanh-approximated GELU gate, an explicit `head_dim`, and word embeddings tied to the head by default."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...modeling.heads import (
    DecoderForCausalLM,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
)
from ..llama.modeling import LlamaDecoderLayer, LlamaModel, LlamaPreTrainedModel
from .configuration import GemmaConfig


class GemmaTextScaledWordEmbedding(nn.Embedding):
    """An embedding table whose lookups are multiplied by `embed_scale`.

    The scale is a non-persistent buffer made in the default dtype at construction (the model's dtype when
    loading), and cast to the table's dtype at each lookup: sqrt(3072) = 55.43 becomes 55.5 in bfloat16.
    Embeddings passed in as `inputs_embeds` are not scaled.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, embed_scale: float) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scalar_embed_scale = embed_scale
        self.register_buffer("embed_scale", torch.tensor(embed_scale), persistent=False)

    def reset_buffers(self) -> None:
        """Refill the scale, e.g. after building on the meta device."""
        with torch.no_grad():
            self.embed_scale.fill_(self.scalar_embed_scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        return super().forward(input_ids) * self.embed_scale.to(self.weight.dtype)


class GemmaDecoderLayer(LlamaDecoderLayer):
    norm_offset = 1.0

    @staticmethod
    def mlp_bias(config: GemmaConfig) -> bool:
        return False


class GemmaPreTrainedModel(LlamaPreTrainedModel):
    config_class = GemmaConfig
    facts = LlamaPreTrainedModel.facts.but(no_split_modules=("GemmaDecoderLayer",))


class GemmaModel(GemmaPreTrainedModel, LlamaModel):
    layer_class = GemmaDecoderLayer

    def __init__(self, config: GemmaConfig) -> None:
        if getattr(config, "use_bidirectional_attention", None):
            raise ConfigError("use_bidirectional_attention=True is not supported by pretrained's Gemma; it is a "
                              "causal decoder here. Set it to None or False.")
        super().__init__(config)

    def embeddings(self, config: GemmaConfig) -> nn.Embedding:
        return GemmaTextScaledWordEmbedding(config.vocab_size, config.hidden_size, self.padding_idx,
                                            embed_scale=config.hidden_size**0.5)


class GemmaForCausalLM(DecoderForCausalLM, GemmaPreTrainedModel):
    base_class = GemmaModel


class GemmaForSequenceClassification(DecoderForSequenceClassification, GemmaPreTrainedModel):
    base_class = GemmaModel


class GemmaForQuestionAnswering(DecoderForQuestionAnswering, GemmaPreTrainedModel):
    """Not in the reference library (its Gemma has no question-answering class); the generic head on Gemma."""

    base_class = GemmaModel


class GemmaForTokenClassification(DecoderForTokenClassification, GemmaPreTrainedModel):
    base_class = GemmaModel
