"""Llama: pre-norm decoder blocks of grouped-query attention with rotary positions and a gated SiLU MLP.

Module names equal the checkpoint names (`model.layers.0.self_attn.q_proj.weight`).
Shapes: B batch, T new tokens, S cached + new tokens, H heads, K kv heads, D head_dim, C hidden.

Llama is also the template of the Mistral, Qwen2 and Gemma families: each subclasses these modules and states
only its difference through the small hooks below (`projection_biases`, `mlp_bias`, `norm_offset`,
`layer_class`, `embeddings`, `sliding_windows`). The task heads live in `modeling/heads.py`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...generation.cache import DynamicCache
from ...layers.attention import attend, cache_positions, causal_mask
from ...layers.mlp import GatedMLP
from ...layers.norms import RMSNorm
from ...layers.rotary import RotaryEmbedding, apply_rotary
from ...modeling.base import ModelFacts, PreTrainedModel
from ...modeling.heads import (
    DecoderForCausalLM,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
)
from ...modeling.outputs import BaseModelOutputWithPast, accepts_past_key_values
from .configuration import LlamaConfig


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        qkv_bias, o_bias = self.projection_biases(config)
        C, D = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(C, self.num_heads * D, bias=qkv_bias)
        self.k_proj = nn.Linear(C, self.num_kv_heads * D, bias=qkv_bias)
        self.v_proj = nn.Linear(C, self.num_kv_heads * D, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * D, C, bias=o_bias)

    @staticmethod
    def projection_biases(config: LlamaConfig) -> tuple[bool, bool]:
        """(bias on q/k/v, bias on o)."""
        return config.attention_bias, config.attention_bias

    def forward(self, x, position_embeddings, mask, cache=None, output_attentions=False, cache_position=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, cache_position)  # (B, K, S, D)
        out, weights = attend(q, k, v, mask, self.scaling, self.config._attn_implementation,
                              dropout=self.config.attention_dropout if self.training else 0.0,
                              want_weights=output_attentions)
        return self.o_proj(out.reshape(B, T, -1)), weights  # (B, T, C)


class LlamaDecoderLayer(nn.Module):
    attention_class: type[LlamaAttention] = LlamaAttention
    norm_offset = 0.0  # RMSNorm scales by (norm_offset + w); Gemma's 1.0 gives its (1 + w)

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        C, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = self.attention_class(config, layer_idx)
        self.mlp = GatedMLP(C, config.intermediate_size, config.hidden_act, self.mlp_bias(config))
        self.input_layernorm = RMSNorm(C, eps=eps, offset=self.norm_offset)
        self.post_attention_layernorm = RMSNorm(C, eps=eps, offset=self.norm_offset)

    @staticmethod
    def mlp_bias(config: LlamaConfig) -> bool:
        return config.mlp_bias

    def forward(self, x, position_embeddings, mask, cache=None, output_attentions=False, cache_position=None):
        attn, weights = self.self_attn(self.input_layernorm(x), position_embeddings, mask, cache, output_attentions,
                                       cache_position)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, weights


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    facts = ModelFacts(
        base_model_prefix="model",
        no_split_modules=("LlamaDecoderLayer",),
        input_embeddings="embed_tokens",
        supports_gradient_checkpointing=True,
    )


class LlamaModel(LlamaPreTrainedModel):
    """The decoder stack: token ids -> final hidden states (B, T, C)."""

    layer_class: type[LlamaDecoderLayer] = LlamaDecoderLayer

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.padding_idx, self.vocab_size = config.pad_token_id, config.vocab_size
        self.embed_tokens = self.embeddings(config)
        self.layers = nn.ModuleList(self.layer_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, offset=self.layer_class.norm_offset)
        self.rotary_emb = RotaryEmbedding(config.rope_parameters, config.head_dim, config.max_position_embeddings)
        self.gradient_checkpointing = False
        self.post_init()

    def embeddings(self, config: LlamaConfig) -> nn.Embedding:
        """The token embedding table (`embed_tokens`)."""
        return nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)

    def sliding_windows(self) -> list[int | None]:
        """Per layer, how many most recent positions a query may attend to (None: all earlier ones)."""
        return [None] * len(self.layers)

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S): 1 token, 0 padding
        position_ids: torch.LongTensor | None = None,  # (B, T)
        cache: DynamicCache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,  # (T,) where the new tokens go in the cache
    ):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = (cfg.use_cache and not self.training) if use_cache is None else use_cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = DynamicCache()
        T = x.shape[1]
        cache_position, kv_len, fixed = cache_positions(cache, T, x.device, cache_position)
        if position_ids is None:
            position_ids = cache_position[None]
        windows = self.sliding_windows()
        masks = {w: causal_mask(attention_mask, T, kv_len, x.device, w, cache_position if fixed else None)
                 for w in set(windows)}
        write_at = cache_position if fixed else None
        rope = self.rotary_emb(x, position_ids)
        all_hidden, all_attn = [], []
        for layer, window in zip(self.layers, windows):
            if output_hidden_states:
                all_hidden.append(x)
            if self.gradient_checkpointing and self.training:
                x, weights = checkpoint(layer, x, rope, masks[window], cache, output_attentions, write_at,
                                        **self.gradient_checkpointing_kwargs)
            else:
                x, weights = layer(x, rope, masks[window], cache, output_attentions, write_at)
            if output_attentions:
                all_attn.append(weights)
        x = self.norm(x)
        if output_hidden_states:
            all_hidden.append(x)
        out = BaseModelOutputWithPast(
            last_hidden_state=x,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )
        return out if (cfg.return_dict if return_dict is None else return_dict) else out.to_tuple()


class LlamaForCausalLM(DecoderForCausalLM, LlamaPreTrainedModel):
    """Decoder + language-model head: token ids -> next-token logits (B, T, vocab)."""

    base_class = LlamaModel


class LlamaForSequenceClassification(DecoderForSequenceClassification, LlamaPreTrainedModel):
    base_class = LlamaModel


class LlamaForQuestionAnswering(DecoderForQuestionAnswering, LlamaPreTrainedModel):
    base_class = LlamaModel
    facts = LlamaPreTrainedModel.facts.but(base_model_prefix="transformer")  # the ecosystem's name for this class


class LlamaForTokenClassification(DecoderForTokenClassification, LlamaPreTrainedModel):
    base_class = LlamaModel
