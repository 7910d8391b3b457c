"""GPT-2: learned absolute positions, pre-norm blocks of causal multi-head attention and a GELU MLP.

Module names equal the checkpoint names (`transformer.h.0.attn.c_attn.weight`). GPT-2's projections are
`Conv1D`s: linear layers whose weight is stored transposed, (in, out), as OpenAI's TensorFlow code kept it.
Shapes: B batch, T new tokens, S cached + new tokens, H heads, D head_dim, C n_embd.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...generation.cache import DynamicCache
from ...generation.loop import GenerationMixin
from ...layers.attention import attend, cache_positions, causal_mask
from ...layers.mlp import activation
from ...modeling.base import ModelFacts, PreTrainedModel
from ...modeling.losses import causal_lm_loss
from ...modeling.outputs import (BaseModelOutputWithPastAndCrossAttentions, CausalLMOutputWithCrossAttentions,
                                 accepts_past_key_values)
from .configuration import GPT2Config


class Conv1D(nn.Module):
    """y = x @ weight + bias with `weight` of shape (nx, nf) = (in, out): an nn.Linear stored transposed.

    Args follow the ecosystem's order: `nf` output features, `nx` input features. `residual_projection` marks
    the projections that write into the residual stream, which GPT-2 initialises with a smaller std.
    """

    def __init__(self, nf: int, nx: int, residual_projection: bool = False) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.residual_projection = residual_projection
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.empty(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., nx) -> (..., nf)
        out = torch.addmm(self.bias, x.reshape(-1, self.nx), self.weight)
        return out.view(*x.shape[:-1], self.nf)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}"


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        C, self.num_heads = config.n_embd, config.n_head
        self.embed_dim, self.head_dim, self.split_size = C, C // self.num_heads, C
        self.scaling = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)
        self.c_attn = Conv1D(3 * C, C)  # q, k, v side by side
        self.c_proj = Conv1D(C, C, residual_projection=True)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, mask, cache=None, output_attentions=False, cache_position=None):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
                   for t in self.c_attn(x).split(self.split_size, dim=2))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, cache_position)  # (B, H, S, D)
        implementation = self.config._attn_implementation
        upcast = self.config.reorder_and_upcast_attn and implementation == "eager"
        dtype = v.dtype
        if upcast:  # scores and softmax in float32 whatever the model's dtype
            q, k, v = q.float(), k.float(), v.float()
        out, weights = attend(q, k, v, mask, self.scaling, implementation,
                              dropout=self.attn_dropout.p if self.training else 0.0, want_weights=output_attentions)
        if upcast:
            out, weights = out.to(dtype), None if weights is None else weights.to(dtype)
        return self.resid_dropout(self.c_proj(out.reshape(B, T, C))), weights  # (B, T, C)


class GPT2MLP(nn.Module):
    def __init__(self, intermediate_size: int, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, intermediate_size, residual_projection=True)
        self.act = activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        C = config.n_embd
        self.ln_1 = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config.n_inner if config.n_inner is not None else 4 * C, config)

    def forward(self, x, mask, cache=None, output_attentions=False, cache_position=None):
        attn, weights = self.attn(self.ln_1(x), mask, cache, output_attentions, cache_position)
        x = attn + x
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class GPT2PreTrainedModel(PreTrainedModel):
    config_class = GPT2Config
    facts = ModelFacts(
        base_model_prefix="transformer",
        no_split_modules=("GPT2Block",),
        input_embeddings="wte",
        supports_gradient_checkpointing=True,
        # Older checkpoints hold each block's causal-mask buffers (`attn.bias`, a lower-triangular matrix, and
        # `attn.masked_bias`, a constant): computed values, not weights. Read and dropped, not reported.
        ignore_unexpected=(r"(^|\.)(attn|crossattention)\.(masked_)?bias$",),
    )

    def _init_weights(self, module: nn.Module) -> None:
        """As the reference: normal(0, initializer_range) for Conv1D weights, except that projections into the
        residual stream get std / sqrt(2 * n_layer) (GPT-2 paper); zero biases; the rest as the base class."""
        if isinstance(module, Conv1D):
            std = self.config.initializer_range
            if module.residual_projection:
                std /= math.sqrt(2 * self.config.n_layer)
            module.weight.normal_(0.0, std)
            module.bias.zero_()
        else:
            super()._init_weights(module)


class GPT2Model(GPT2PreTrainedModel):
    """Token (and position) embeddings -> n_layer blocks -> final LayerNorm: hidden states (B, T, C)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        if config.add_cross_attention:
            raise NotImplementedError("GPT-2 with cross-attention (add_cross_attention=True) is not implemented; "
                                      "only the decoder-only GPT-2 is.")
        self.embed_dim = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T), or (..., T): leading dimensions are flattened
        cache: DynamicCache | None = None,
        attention_mask: torch.Tensor | None = None,  # (B, S): 1 token, 0 padding
        token_type_ids: torch.LongTensor | None = None,  # (B, T): embedded with wte, as GPT-2 does
        position_ids: torch.LongTensor | None = None,  # (B, T); default past .. past + T - 1
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        encoder_hidden_states: torch.Tensor | None = None,  # not supported (cross-attention)
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,  # (T,) where the new tokens go in a fixed-length cache
    ):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = (cfg.use_cache and not self.training) if use_cache is None else use_cache
        if encoder_hidden_states is not None or encoder_attention_mask is not None:
            raise NotImplementedError("GPT-2 cross-attention (encoder_hidden_states) is not implemented.")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputed blocks cannot append to a cache
        leading = (input_ids if inputs_embeds is None else inputs_embeds[..., 0]).shape[:-1]
        if input_ids is not None:
            input_ids = input_ids.reshape(-1, input_ids.shape[-1])
            inputs_embeds = self.wte(input_ids)
        else:
            inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])
        B, T = inputs_embeds.shape[:2]
        if use_cache and cache is None:
            cache = DynamicCache()
        cache_position, kv_len, fixed = cache_positions(cache, T, inputs_embeds.device, cache_position)
        if position_ids is None:
            position_ids = cache_position[None]
        x = inputs_embeds + self.wpe(position_ids).to(inputs_embeds.device)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids.reshape(-1, T))
        x = self.drop(x)
        if attention_mask is not None:
            attention_mask = attention_mask.reshape(B, -1)
        mask = causal_mask(attention_mask, T, kv_len, x.device, None, cache_position if fixed else None)
        write_at = cache_position if fixed else None

        all_hidden, all_attn = [], []
        for block in self.h:
            if output_hidden_states:
                all_hidden.append(x)
            if self.gradient_checkpointing and self.training:
                x, weights = checkpoint(block, x, mask, None, output_attentions, **self.gradient_checkpointing_kwargs)
            else:
                x, weights = block(x, mask, cache, output_attentions, write_at)
            if output_attentions:
                all_attn.append(weights)
        x = self.ln_f(x).view(*leading, T, -1)
        if output_hidden_states:
            all_hidden.append(x)
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )
        return out if (cfg.return_dict if return_dict is None else return_dict) else out.to_tuple()


class GPT2LMHeadModel(GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 + language-model head tied to the token embeddings: token ids -> next-token logits (B, T, vocab)."""

    facts = GPT2PreTrainedModel.facts.but(
        tied_weights={"lm_head.weight": "transformer.wte.weight"}, output_embeddings="lm_head", can_generate=True
    )

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: DynamicCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (B, T), shifted inside; -100 = ignore
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,  # 0 = all positions; n = only the last n
        cache_position: torch.LongTensor | None = None,  # (T,) where the new tokens go in a fixed-length cache
    ):
        extra = {} if cache_position is None else {"cache_position": cache_position}
        base = self.transformer(input_ids, cache=cache, attention_mask=attention_mask,
                                token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds,
                                encoder_hidden_states=encoder_hidden_states,
                                encoder_attention_mask=encoder_attention_mask, use_cache=use_cache,
                                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                return_dict=True, **extra)
        hidden = base.last_hidden_state if not logits_to_keep else base.last_hidden_state[..., -logits_to_keep:, :]
        logits = self.lm_head(hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        out = CausalLMOutputWithCrossAttentions(loss=loss, logits=logits, cache=base.cache,
                                                hidden_states=base.hidden_states, attentions=base.attentions)
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()
