"""T5: an encoder-decoder of pre-norm blocks with relative position biases and no attention scaling.

One stack class serves as encoder (bidirectional buckets) and decoder (causal buckets, cross-attention, cache).
Module names equal the checkpoint names (`encoder.block.0.layer.0.SelfAttention.q.weight`); the relative
position table lives in block 0 of each stack and its bias is shared by every block of that stack.
Shapes: B batch, T new tokens, S cached + new tokens, E encoder tokens, H heads, D d_kv, C d_model.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...generation.cache import DynamicCache, EncoderDecoderCache
from ...generation.loop import GenerationMixin
from ...layers.attention import cache_positions, causal_mask
from ...layers.mlp import activation
from ...modeling.base import ModelFacts, PreTrainedModel
from ...modeling.losses import token_loss
from ...modeling.outputs import (
    accepts_past_key_values,
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    ModelOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from .configuration import T5Config


def _linear(n_in: int, n_out: int, init_std: float) -> nn.Linear:
    """A bias-free projection that remembers the std T5 initialises it with (before `initializer_factor`)."""
    layer = nn.Linear(n_in, n_out, bias=False)
    layer.init_std = init_std
    return layer


def _embedding(n: int, dim: int, init_std: float) -> nn.Embedding:
    table = nn.Embedding(n, dim)
    table.init_std = init_std
    return table


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Bucket of each (key position - query position): exact buckets for small distances, logarithmic ones up to
    `max_distance`, one last bucket beyond it. Bidirectional halves the buckets between "before" and "after";
    causal maps every key after the query to bucket 0 (such keys are masked anyway)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).to(torch.long) * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # log(0) is never used (small distances take the exact bucket); clamping keeps the unused branch finite
    scaled = torch.log(distance.float().clamp(min=max(max_exact, 1)) / max_exact) / math.log(max_distance / max_exact)
    far = (max_exact + (scaled * (num_buckets - max_exact)).to(torch.long)).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, far)


def _clamp_half(x: torch.Tensor) -> torch.Tensor:
    """In float16 keep the residual stream finite (just inside the range, further in once an inf appeared)."""
    if x.dtype != torch.float16:
        return x
    top = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), top - 1000, top)
    return torch.clamp(x, min=-limit, max=limit)


class T5LayerNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps): no mean subtracted, no bias. The statistic is taken in float32; the
    normalised value is cast to the weight's dtype only when that is half precision."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C)
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class T5DenseActDense(nn.Module):
    """wo(act(wi(x))); `wo` may be kept in float32 under float16 (the family's keep-in-fp32 fact)."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.wi = _linear(config.d_model, config.d_ff, config.d_model**-0.5)
        self.wo = _linear(config.d_ff, config.d_model, config.d_ff**-0.5)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = activation(config.dense_act_fn)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.wi(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        h = self.dropout(self.inner(x))
        if h.dtype != self.wo.weight.dtype and self.wo.weight.is_floating_point():
            h = h.to(self.wo.weight.dtype)
        return self.wo(h)


class T5DenseGatedActDense(T5DenseActDense):
    """wo(act(wi_0(x)) * wi_1(x)) — T5 v1.1's gated feed-forward."""

    def __init__(self, config: T5Config) -> None:
        nn.Module.__init__(self)
        self.wi_0 = _linear(config.d_model, config.d_ff, config.d_model**-0.5)
        self.wi_1 = _linear(config.d_model, config.d_ff, config.d_model**-0.5)
        self.wo = _linear(config.d_ff, config.d_model, config.d_ff**-0.5)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = activation(config.dense_act_fn)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.wi_0(x)) * self.wi_1(x)


class T5Attention(nn.Module):
    """Multi-head attention with an additive bias (relative positions + mask) and no 1/sqrt(D) scaling: T5 folds
    that into the initialisation of `q`. With `has_relative_attention_bias` it owns the stack's bucket table."""

    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool, layer_idx: int) -> None:
        super().__init__()
        self.config, self.is_decoder, self.layer_idx = config, is_decoder, layer_idx
        self.n_heads, self.key_value_proj_dim = config.num_heads, config.d_kv
        self.has_relative_attention_bias = has_relative_attention_bias
        C, inner = config.d_model, config.num_heads * config.d_kv
        self.q = _linear(C, inner, (C * config.d_kv) ** -0.5)
        self.k = _linear(C, inner, C**-0.5)
        self.v = _linear(C, inner, C**-0.5)
        self.o = _linear(inner, C, inner**-0.5)
        if has_relative_attention_bias:
            self.relative_attention_bias = _embedding(config.relative_attention_num_buckets, config.num_heads, C**-0.5)

    def compute_bias(self, q_len: int, kv_len: int, past: int = 0, device: torch.device | None = None,
                     query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """(1, H, q_len, kv_len) learned bias of each key position relative to each query. The queries start at
        `past`, or sit at `query_positions` (q_len,) when given (a fixed-length cache: read as a tensor, never as
        a Python number, so that a compiled step does not depend on it)."""
        table = self.relative_attention_bias
        device = table.weight.device if device is None else device
        if query_positions is None:
            query_pos = torch.arange(q_len, dtype=torch.long, device=device)[:, None] + past
        else:
            query_pos = query_positions.to(device=device, dtype=torch.long)[:, None]
        key_pos = torch.arange(kv_len, dtype=torch.long, device=device)[None, :]
        buckets = relative_position_bucket(key_pos - query_pos, bidirectional=not self.is_decoder,
                                           num_buckets=self.config.relative_attention_num_buckets,
                                           max_distance=self.config.relative_attention_max_distance)
        return table(buckets).permute(2, 0, 1).unsqueeze(0)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H*D) -> (B, H, L, D)
        return x.view(x.shape[0], x.shape[1], -1, self.key_value_proj_dim).transpose(1, 2)

    def forward(self, x, bias, encoder_states=None, cache=None, output_attentions=False, cache_position=None):
        """x (B, T, C); bias additive (B|1, H|1, T, S|E) or None; encoder_states (B, E, C) for cross-attention;
        cache: an EncoderDecoderCache (decoder only); cache_position (T,): where a fixed-length self-attention
        cache is written (it then returns its whole buffers). Returns (B, T, C) and the attention weights or None."""
        q = self._heads(self.q(x))  # (B, H, T, D)
        if encoder_states is None:  # self-attention: grow the cache with this step's keys
            k, v = self._heads(self.k(x)), self._heads(self.v(x))
            if cache is not None:
                k, v = cache.self_attention_cache.update(k, v, self.layer_idx, cache_position)  # (B, H, S, D)
        elif cache is not None and cache.is_updated.get(self.layer_idx):  # cross-attention, encoder K/V known
            k = cache.cross_attention_cache.keys[self.layer_idx]
            v = cache.cross_attention_cache.values[self.layer_idx]
        else:
            k, v = self._heads(self.k(encoder_states)), self._heads(self.v(encoder_states))  # (B, H, E, D)
            if cache is not None:
                k, v = cache.cross_attention_cache.update(k, v, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        if bias is not None:
            bias = bias.to(q.dtype)
        dropout = self.config.dropout_rate if self.training else 0.0
        if self.config._attn_implementation == "sdpa" and not output_attentions:
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=1.0)
            weights = None
        else:
            scores = torch.matmul(q, k.transpose(2, 3))
            if bias is not None:
                scores = scores + bias
            weights = nn.functional.softmax(scores.float(), dim=-1).to(q.dtype)
            weights = nn.functional.dropout(weights, p=dropout, training=self.training)
            out = torch.matmul(weights, v)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # (B, T, H*D)
        return self.o(out), weights


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool, layer_idx: int) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, is_decoder, has_relative_attention_bias, layer_idx)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x, bias, cache=None, output_attentions=False, cache_position=None):
        out, weights = self.SelfAttention(self.layer_norm(x), bias, None, cache, output_attentions, cache_position)
        return x + self.dropout(out), weights


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config: T5Config, layer_idx: int) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(config, True, False, layer_idx)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x, encoder_states, bias, cache=None, output_attentions=False):
        out, weights = self.EncDecAttention(self.layer_norm(x), bias, encoder_states, cache, output_attentions)
        return x + self.dropout(out), weights


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.DenseReluDense = (T5DenseGatedActDense if config.is_gated_act else T5DenseActDense)(config)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x):
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class T5Block(nn.Module):
    """layer[0] self-attention, (decoder) layer[1] cross-attention, layer[-1] feed-forward; each pre-norm + residual."""

    def __init__(self, config: T5Config, is_decoder: bool, layer_idx: int) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, is_decoder, layer_idx == 0, layer_idx)])
        if is_decoder:
            self.layer.append(T5LayerCrossAttention(config, layer_idx))
        self.layer.append(T5LayerFF(config))

    def forward(self, x, bias, encoder_states=None, cross_bias=None, cache=None, output_attentions=False,
                cache_position=None):
        x, self_weights = self.layer[0](x, bias, cache, output_attentions, cache_position)
        x = _clamp_half(x)
        cross_weights = None
        if self.is_decoder and encoder_states is not None:
            x, cross_weights = self.layer[1](x, encoder_states, cross_bias, cache, output_attentions)
            x = _clamp_half(x)
        return _clamp_half(self.layer[-1](x)), self_weights, cross_weights


def _additive(allowed: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Bias where attending is allowed, the dtype's lowest value where it is not."""
    if allowed is None:
        return bias
    if bias is None:
        bias = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, bias, torch.finfo(bias.dtype).min)


class T5Stack(nn.Module):
    """The encoder (is_decoder=False) or the decoder: embed_tokens -> blocks -> final_layer_norm."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        super().__init__()
        self.config, self.is_decoder = config, is_decoder
        self.embed_tokens = _embedding(config.vocab_size, config.d_model, 1.0)  # tied to the model's `shared`
        n_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList(T5Block(config, is_decoder, i) for i in range(n_layers))
        self.final_layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S): 1 token, 0 padding
        encoder_hidden_states: torch.Tensor | None = None,  # (B, E, C), decoder only
        encoder_attention_mask: torch.Tensor | None = None,  # (B, E)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        cache: EncoderDecoderCache | DynamicCache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,  # (T,) decoder: where the new tokens go in the cache
    ):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds"
                             + (" (decoder_input_ids, decoder_inputs_embeds or labels)." if self.is_decoder else "."))
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]

        if self.is_decoder:
            use_cache = (cfg.use_cache and not self.training) if use_cache is None else use_cache
            if isinstance(cache, DynamicCache):  # a bare cache: it holds the self-attention keys
                cache = EncoderDecoderCache(cache)
            if use_cache and cache is None:
                cache = EncoderDecoderCache()
        elif use_cache:
            raise ValueError("use_cache=True needs the decoder; the encoder keeps no cache.")
        else:
            cache = None  # the encoder keeps none
        # A fixed-length self-attention cache (given `cache_position`) is attended over whole: S = its length,
        # the queries sit at cache_position, the mask hides what they may not see (written or not).
        fixed = False
        if cache is not None and cache_position is not None:
            cache_position, S, fixed = cache_positions(cache.self_attention_cache, T, x.device, cache_position)

        # One additive bias for every block: relative positions (block 0's table) where attending is allowed.
        attn = self.block[0].layer[0].SelfAttention
        if fixed:
            position_bias = attn.compute_bias(T, S, device=x.device, query_positions=cache_position)  # (1, H, T, S)
            allowed = causal_mask(attention_mask, T, S, x.device, q_positions=cache_position)  # (B|1, 1, T, S)
        else:
            past = cache.get_seq_length() if cache is not None else 0
            S = past + T
            position_bias = attn.compute_bias(T, S, past, device=x.device)  # (1, H, T, S)
            allowed = None
            if self.is_decoder:
                allowed = (torch.arange(S, device=x.device)[None, :]
                           <= torch.arange(T, device=x.device)[:, None] + past)
                allowed = allowed[None, None]  # (1, 1, T, S)
            if attention_mask is not None:
                keep = attention_mask[:, None, None, -S:].to(device=x.device, dtype=torch.bool)  # (B, 1, 1, S)
                allowed = keep if allowed is None else allowed & keep
        write_at = cache_position if fixed else None
        bias = _additive(allowed, position_bias, position_bias.dtype)
        cross_bias = None
        if self.is_decoder and encoder_hidden_states is not None and encoder_attention_mask is not None:
            cross_keep = encoder_attention_mask[:, None, None, :].to(device=x.device, dtype=torch.bool)  # (B,1,1,E)
            cross_bias = _additive(cross_keep, None, position_bias.dtype)

        x = self.dropout(x)
        all_hidden, all_attn, all_cross = [], [], []
        for block in self.block:
            if output_hidden_states:
                all_hidden.append(x)
            args = (x, bias, encoder_hidden_states, cross_bias, cache, output_attentions, write_at)
            if self.gradient_checkpointing and self.training:
                x, weights, cross_weights = checkpoint(block, *args, **self.gradient_checkpointing_kwargs)
            else:
                x, weights, cross_weights = block(*args)
            all_attn.append(weights)
            all_cross.append(cross_weights)
        x = self.dropout(self.final_layer_norm(x))
        if output_hidden_states:
            all_hidden.append(x)

        hidden = tuple(all_hidden) if output_hidden_states else None
        attentions = tuple(all_attn) if output_attentions else None
        if self.is_decoder:
            out = BaseModelOutputWithPastAndCrossAttentions(
                last_hidden_state=x, cache=cache if use_cache else None, hidden_states=hidden,
                attentions=attentions,
                cross_attentions=tuple(all_cross) if output_attentions and encoder_hidden_states is not None else None)
        else:
            out = BaseModelOutput(last_hidden_state=x, hidden_states=hidden, attentions=attentions)
        return out if (cfg.return_dict if return_dict is None else return_dict) else out.to_tuple()


def _as_encoder_output(encoder_outputs) -> BaseModelOutput:
    """`encoder_outputs` as given by a caller: our output, another ModelOutput, or a tuple (last, hidden, attn)."""
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs
    if isinstance(encoder_outputs, ModelOutput) or hasattr(encoder_outputs, "last_hidden_state"):
        return BaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state,
                               hidden_states=getattr(encoder_outputs, "hidden_states", None),
                               attentions=getattr(encoder_outputs, "attentions", None))
    if isinstance(encoder_outputs, torch.Tensor):
        return BaseModelOutput(last_hidden_state=encoder_outputs)
    items = tuple(encoder_outputs)
    return BaseModelOutput(last_hidden_state=items[0], hidden_states=items[1] if len(items) > 1 else None,
                           attentions=items[2] if len(items) > 2 else None)


_EMBED_TIES = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}


class T5PreTrainedModel(PreTrainedModel):
    config_class = T5Config
    facts = ModelFacts(
        base_model_prefix="transformer",
        no_split_modules=("T5Block",),
        keep_in_fp32_modules=("wo",),
        input_embeddings="shared",
        supports_gradient_checkpointing=True,
        # old checkpoints carry a relative-position table in the decoder's first cross-attention, never used
        ignore_unexpected=(r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",),
    )

    def active_ties(self) -> dict[str, str]:
        """The stacks' `embed_tokens` always share `shared`; `lm_head` only when `tie_word_embeddings` says so."""
        untied = getattr(self, "_untied_weights", ())
        ties = {t: s for t, s in self.facts.tied_weights.items() if t in _EMBED_TIES and t not in untied}
        ties.update(super().active_ties())
        return ties

    def _init_weights(self, module: nn.Module) -> None:
        """normal(0, factor * std) with the std each projection and table was built with; norms to `factor`."""
        factor = self.config.initializer_factor
        if isinstance(module, (nn.Linear, nn.Embedding)) and hasattr(module, "init_std"):
            module.weight.normal_(0.0, factor * module.init_std)
        elif isinstance(module, T5LayerNorm):
            module.weight.fill_(factor * 1.0)
        else:
            super()._init_weights(module)

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        for stack in (getattr(self, "encoder", None), getattr(self, "decoder", None)):
            if stack is not None:
                stack.set_input_embeddings(value)

    def get_encoder(self) -> T5Stack:
        return self.encoder

    def _shift_right(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Decoder inputs from labels: `decoder_start_token_id` first, labels moved one right, -100 -> pad."""
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        if start is None:
            raise ValueError("config.decoder_start_token_id is not set; T5 starts decoding with the pad token (0).")
        if pad is None:
            raise ValueError("config.pad_token_id is not set; T5 uses 0.")
        shifted = input_ids.new_full(input_ids.shape, start)
        shifted[..., 1:] = input_ids[..., :-1]
        return shifted.masked_fill(shifted == -100, pad)

    def _encode(self, input_ids, attention_mask, inputs_embeds, encoder_outputs, output_attentions,
                output_hidden_states) -> BaseModelOutput:
        if encoder_outputs is None:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                return_dict=True)
        return _as_encoder_output(encoder_outputs)

    def _return(self, out: ModelOutput, return_dict: bool | None):
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()


class T5Model(T5PreTrainedModel):
    """Encoder + decoder: (source ids, decoder ids) -> decoder hidden states (B, T, C)."""

    facts = T5PreTrainedModel.facts.but(tied_weights=dict(_EMBED_TIES))

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.shared = _embedding(config.vocab_size, config.d_model, 1.0)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.post_init()

    def get_decoder(self) -> T5Stack:
        return self.decoder

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, E)
        attention_mask: torch.Tensor | None = None,  # (B, E)
        decoder_input_ids: torch.LongTensor | None = None,  # (B, T)
        decoder_attention_mask: torch.Tensor | None = None,  # (B, S)
        encoder_outputs=None,  # BaseModelOutput or tuple: skip the encoder
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,  # (T,) where the new decoder tokens go in the cache
    ):
        enc = self._encode(input_ids, attention_mask, inputs_embeds, encoder_outputs, output_attentions,
                           output_hidden_states)
        dec = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           inputs_embeds=decoder_inputs_embeds, encoder_hidden_states=enc.last_hidden_state,
                           encoder_attention_mask=attention_mask, cache=cache,
                           use_cache=use_cache, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, return_dict=True,
                           cache_position=cache_position)
        out = Seq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state, cache=dec.cache,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions, encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions)
        return self._return(out, return_dict)


class T5ForConditionalGeneration(T5PreTrainedModel, GenerationMixin):
    """Encoder + decoder + language-model head: -> next-token logits (B, T, vocab); loss from `labels`."""

    facts = T5PreTrainedModel.facts.but(
        tied_weights={**_EMBED_TIES, "lm_head.weight": "shared.weight"}, output_embeddings="lm_head",
        can_generate=True,
    )

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.model_dim = config.d_model
        self.shared = _embedding(config.vocab_size, config.d_model, 1.0)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.lm_head = _linear(config.d_model, config.vocab_size, 1.0)
        self.post_init()

    def get_decoder(self) -> T5Stack:
        return self.decoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift_right(labels)

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (B, T), -100 = ignore; decoder inputs are these shifted right
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,  # (T,) where the new decoder tokens go in the cache
    ):
        enc = self._encode(input_ids, attention_mask, inputs_embeds, encoder_outputs, output_attentions,
                           output_hidden_states)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        dec = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           inputs_embeds=decoder_inputs_embeds, encoder_hidden_states=enc.last_hidden_state,
                           encoder_attention_mask=attention_mask, cache=cache,
                           use_cache=use_cache, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, return_dict=True,
                           cache_position=cache_position)
        hidden = dec.last_hidden_state
        if self.config.scale_decoder_outputs:  # the original T5 reuses the input table as head: rescale first
            hidden = hidden * (self.model_dim**-0.5)
        logits = self.lm_head(hidden)
        loss = token_loss(logits, labels) if labels is not None else None
        out = Seq2SeqLMOutput(
            loss=loss, logits=logits, cache=dec.cache,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions, encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions)
        return self._return(out, return_dict)


class T5EncoderModel(T5PreTrainedModel):
    """The encoder alone: ids -> hidden states (B, E, C). Loads the encoder half of a full checkpoint."""

    facts = T5PreTrainedModel.facts.but(
        tied_weights={"encoder.embed_tokens.weight": "shared.weight"},
        ignore_unexpected=(r"^decoder\.",),
    )

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        config.use_cache = False  # as the reference: this model neither decodes nor caches
        config.is_encoder_decoder = False
        self.shared = _embedding(config.vocab_size, config.d_model, 1.0)
        self.encoder = T5Stack(config, is_decoder=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                           return_dict=True)
        return self._return(out, return_dict)
