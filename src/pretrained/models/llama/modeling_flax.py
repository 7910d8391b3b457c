"""Llama in JAX/Flax: the decoder of `modeling.py` as `flax.linen` modules, and the template of the Mistral, Qwen2
and Gemma Flax classes, which state only their difference through the same hooks as the PyTorch side
(`projection_biases`, `mlp_bias`, `norm_offset`, `embed_scale`, `sliding_windows`, `layer_class`).

Parameter paths are 4.x's Flax paths (`model/layers/0/self_attn/q_proj/kernel`, `model/embed_tokens/embedding`,
`model/norm/weight`, `lm_head/kernel`), so 4.x's msgpack files load as they are and PyTorch checkpoints map through
the generic rule of `pretrained.flax.convert`. With `tie_word_embeddings` the head is the embedding table (no
`lm_head` parameter), as in PyTorch.

Decoding uses a cache of fixed size (`init_cache(batch, max_length)`): each attention layer keeps `cached_key`,
`cached_value` (B, max_length, K, D) and `cache_index` in the linen "cache" collection; a call with
`past_key_values` writes its tokens at `cache_index` and attends over the whole buffer under a mask built from
positions and the attention mask (`flax/layers.py`). Rotary angles are computed from `position_ids` (no table).
Shapes: B batch, T new tokens, S attended positions, H heads, K kv heads, D head_dim, C hidden, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ...flax.base import FlaxPreTrainedModel
from ...flax.layers import (
    FlaxGatedMLP,
    FlaxRMSNorm,
    apply_rotary,
    attend,
    cache_index_of,
    causal_mask,
    eager_jit,
    inverse_frequencies,
    matmul_t,
    rotary_cos_sin,
    update_cache,
    wide_dot_general,
)
from ...flax.outputs import FlaxBaseModelOutputWithPast, FlaxCausalLMOutput
from .configuration import LlamaConfig


def _normal(config) -> Any:
    return nn.initializers.normal(stddev=config.initializer_range)


class FlaxLlamaAttention(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    sliding_window: int | None = None  # this layer's window (None: every earlier position)

    @staticmethod
    def projection_biases(config: LlamaConfig) -> tuple[bool, bool]:
        """(bias on q/k/v, bias on o)."""
        return config.attention_bias, config.attention_bias

    def setup(self) -> None:
        cfg = self.config
        qkv_bias, o_bias = self.projection_biases(cfg)
        H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

        def dense(features: int, bias: bool) -> nn.Dense:
            return nn.Dense(features, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=_normal(cfg), dot_general=wide_dot_general)

        self.q_proj, self.k_proj, self.v_proj = dense(H * D, qkv_bias), dense(K * D, qkv_bias), dense(K * D, qkv_bias)
        self.o_proj = dense(cfg.hidden_size, o_bias)

    @nn.compact  # linen declares variables in setup() or a compact method only
    def _cache(self, key, value, init_cache: bool):
        return update_cache(self, key, value, init_cache)

    def __call__(self, x, cos, sin, attention_mask, deterministic: bool = True, init_cache: bool = False,
                 output_attentions: bool = False):
        cfg = self.config
        B, T, _ = x.shape
        D = cfg.head_dim
        q = self.q_proj(x).reshape(B, T, -1, D)  # (B, T, H, D)
        k = self.k_proj(x).reshape(B, T, -1, D)  # (B, T, K, D)
        v = self.v_proj(x).reshape(B, T, -1, D)
        q, k = apply_rotary(q, k, cos, sin)
        k, v, q_positions = self._cache(k, v, init_cache)  # (B, S, K, D)
        mask = causal_mask(attention_mask, q_positions, k.shape[1], self.sliding_window)
        rate = cfg.attention_dropout
        rng = self.make_rng("dropout") if not deterministic and rate > 0.0 else None
        out, weights = attend(q, k, v, mask, D**-0.5, self.dtype, rate if rng is not None else 0.0, rng)
        return self.o_proj(out.reshape(B, T, -1)), (weights if output_attentions else None)


class FlaxLlamaDecoderLayer(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    sliding_window: int | None = None
    attention_class: ClassVar[type] = FlaxLlamaAttention
    norm_offset: ClassVar[float] = 0.0  # RMSNorm scales by (norm_offset + w); Gemma's 1.0 gives its (1 + w)

    @staticmethod
    def mlp_bias(config: LlamaConfig) -> bool:
        return config.mlp_bias

    def setup(self) -> None:
        cfg = self.config
        norm = lambda: FlaxRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, self.norm_offset, self.dtype,  # noqa: E731
                                   self.param_dtype)
        self.input_layernorm = norm()
        self.self_attn = self.attention_class(cfg, self.dtype, self.param_dtype, self.sliding_window)
        self.post_attention_layernorm = norm()
        self.mlp = FlaxGatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, self.mlp_bias(cfg),
                                cfg.initializer_range, self.dtype, self.param_dtype)

    def __call__(self, x, cos, sin, attention_mask, deterministic: bool = True, init_cache: bool = False,
                 output_attentions: bool = False):
        attn, weights = self.self_attn(self.input_layernorm(x), cos, sin, attention_mask, deterministic, init_cache,
                                       output_attentions)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, weights


@functools.cache
def lifted_block(layer_class: type, remat: bool) -> type:
    """The block class compiled once with `nn.jit` and reused by every layer (or `nn.remat` for gradient
    checkpointing). Made once per class: linen keeps the compiled program on the lifted class, so lifting it again in
    every `setup()` compiled the block again on every forward. Positional call: (x, cos, sin, attention_mask,
    deterministic, init_cache, output_attentions); self is 0."""
    return (nn.remat if remat else nn.jit)(layer_class, static_argnums=(5, 6, 7))


@functools.lru_cache(maxsize=64)
def eager_block(layer_class: type, config: LlamaConfig, dtype: Any, param_dtype: Any, window: int | None) -> Any:
    """One block's inference forward, (params, x, cos, sin, attention_mask) -> x, as a program of its own compiled
    with the CPU options of `eager_jit`: what an eager call (outside any trace) runs, once per distinct block and
    shape. Everything else (init, training, caches, attention weights, traced code) goes through `lifted_block`."""
    layer = layer_class(config, dtype, param_dtype, window, parent=None)
    return eager_jit(lambda params, x, cos, sin, mask: layer.apply({"params": params}, x, cos, sin, mask)[0])


class FlaxLlamaLayerCollection(nn.Module):
    """The blocks, named "0", "1", ... as 4.x names them (`model/layers/0/...`)."""

    config: LlamaConfig
    layer_class: type
    windows: tuple
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self) -> None:
        block = lifted_block(self.layer_class, self.gradient_checkpointing)
        self.blocks = [block(self.config, self.dtype, self.param_dtype, window, name=str(i))
                       for i, window in enumerate(self.windows)]

    def __call__(self, x, cos, sin, attention_mask, deterministic: bool = True, init_cache: bool = False,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        all_hidden, all_attn = (), ()
        if (deterministic and not (init_cache or output_attentions or self.is_initializing())
                and not isinstance(x, jax.core.Tracer) and "cache" not in self.variables):
            params = self.variables["params"]
            for i, window in enumerate(self.windows):
                if output_hidden_states:
                    all_hidden += (x,)
                run = eager_block(self.layer_class, self.config, self.dtype, self.param_dtype, window)
                x = run(params[str(i)], x, cos, sin, attention_mask)
            return x, (all_hidden if output_hidden_states else None), None
        for block in self.blocks:
            if output_hidden_states:
                all_hidden += (x,)
            x, weights = block(x, cos, sin, attention_mask, deterministic, init_cache, output_attentions)
            if output_attentions:
                all_attn += (weights,)
        return x, (all_hidden if output_hidden_states else None), (all_attn if output_attentions else None)


class FlaxLlamaModule(nn.Module):
    """The decoder stack: token ids (B, T) -> final hidden states (B, T, C)."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False
    layer_class: ClassVar[type] = FlaxLlamaDecoderLayer

    def embed_scale(self) -> float | None:
        """A factor the token embeddings are multiplied by (Gemma: sqrt(hidden_size)); None for none."""
        return None

    def sliding_windows(self) -> list[int | None]:
        """Per layer, how many most recent positions a query may attend to (None: all earlier ones)."""
        return [None] * self.config.num_hidden_layers

    def setup(self) -> None:
        cfg = self.config
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=_normal(cfg), dtype=self.dtype,
                                     param_dtype=self.param_dtype)
        self.layers = FlaxLlamaLayerCollection(cfg, self.layer_class, tuple(self.sliding_windows()), self.dtype,
                                               self.param_dtype, self.gradient_checkpointing)
        self.norm = FlaxRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, self.layer_class.norm_offset, self.dtype,
                                self.param_dtype)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 init_cache: bool = False, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        cfg = self.config
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids.astype("i4"))
        scale = self.embed_scale()
        if scale is not None:
            x = x * jnp.asarray(scale, dtype=x.dtype)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        inv_freq, scaling = inverse_frequencies(cfg.rope_parameters, cfg.head_dim)
        cos, sin = rotary_cos_sin(position_ids, inv_freq, scaling, x.dtype)
        x, all_hidden, all_attn = self.layers(x, cos, sin, attention_mask, deterministic, init_cache,
                                              output_attentions, output_hidden_states)
        x = self.norm(x)
        if output_hidden_states:
            all_hidden = all_hidden + (x,)
        if not return_dict:
            return tuple(v for v in (x, all_hidden, all_attn) if v is not None)
        return FlaxBaseModelOutputWithPast(last_hidden_state=x, hidden_states=all_hidden, attentions=all_attn)


class FlaxLlamaForCausalLMModule(nn.Module):
    """Decoder + language-model head: token ids -> next-token logits (B, T, V)."""

    config: LlamaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False
    base_module_class: ClassVar[type] = FlaxLlamaModule

    def setup(self) -> None:
        cfg = self.config
        self.model = self.base_module_class(cfg, self.dtype, self.param_dtype, self.gradient_checkpointing)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                    kernel_init=_normal(cfg), dot_general=wide_dot_general)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 init_cache: bool = False, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        out = self.model(input_ids, attention_mask, position_ids, deterministic, init_cache, output_attentions,
                         output_hidden_states, return_dict=True)
        h = out.last_hidden_state
        if self.config.tie_word_embeddings:
            logits = matmul_t(h, jnp.asarray(self.model.embed_tokens.embedding, self.dtype))
        else:
            logits = self.lm_head(h)
        if not return_dict:
            return tuple(v for v in (logits, out.hidden_states, out.attentions) if v is not None)
        return FlaxCausalLMOutput(logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class FlaxLlamaPreTrainedModel(FlaxPreTrainedModel):
    """Weights, loading and 4.x's call convention, shared by the Llama-family Flax classes."""

    config_class = LlamaConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    module_class: ClassVar[type | None] = None

    def __init__(self, config: LlamaConfig, input_shape: tuple = (1, 1), seed: int = 0, dtype: Any = jnp.float32,
                 _do_init: bool = True, gradient_checkpointing: bool = False, **kwargs: Any) -> None:
        module = self.module_class(config=config, dtype=dtype, gradient_checkpointing=gradient_checkpointing, **kwargs)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, params: dict | None = None,
                 past_key_values: dict | None = None, dropout_rng: jax.Array | None = None, train: bool = False,
                 output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                 return_dict: bool | None = None):
        """input_ids (B, T); attention_mask (B, T), or (B, max_length) with a cache (1 token, 0 padding; shorter
        masks are padded with ones); position_ids (B, T) (default: 0..T-1, after the cache's tokens with one; with
        left padding pass `attention_mask.cumsum(-1) - 1`). `past_key_values`: a cache from `init_cache` (or a
        previous output's): the tokens are written at its index and the output carries the updated cache.
        `train=True` with `dropout_rng` applies dropout."""
        cfg = self.config
        input_ids = jnp.asarray(input_ids, dtype="i4")
        B, T = input_ids.shape
        if attention_mask is None:  # numpy defaults: called eagerly, no single-op program to compile
            attention_mask = np.ones((B, T), dtype=np.int32)
        if position_ids is None:
            start = cache_index_of(past_key_values)
            position_ids = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)) if start is None else \
                jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))
        return_dict = cfg.return_dict if return_dict is None else return_dict
        variables = {"params": self._params_or_own(params)}
        if past_key_values is not None:
            variables["cache"] = past_key_values
        out = self.module.apply(
            variables, input_ids, jnp.asarray(attention_mask, dtype="i4"), jnp.asarray(position_ids, dtype="i4"),
            not train, False,
            cfg.output_attentions if output_attentions is None else output_attentions,
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states,
            return_dict,
            rngs={"dropout": dropout_rng} if dropout_rng is not None else {},
            mutable=["cache"] if past_key_values is not None else False,
        )
        if past_key_values is None:
            return out
        out, updated = out
        cache = dict(updated["cache"])
        if return_dict:
            out["past_key_values"] = cache
            return out
        return out[:1] + (cache,) + out[1:]


class FlaxCausalLMMixin:
    """What every decoder-only Flax class with a language-model head adds (first among the bases): 4.x's generation
    hooks and the head's partition plan."""

    tp_plan = {"lm_head": "colwise_gather_output"}

    def prepare_inputs_for_generation(self, input_ids, max_length: int, attention_mask=None) -> dict:
        """A fresh cache of `max_length`, the attention mask laid over it and the prompt's positions (left padding
        counted out), as 4.x's generation loop asks."""
        B, T = input_ids.shape
        past_key_values = self.init_cache(B, max_length)
        mask = jnp.ones((B, max_length), dtype="i4")
        if attention_mask is not None:
            mask = lax.dynamic_update_slice(mask, jnp.asarray(attention_mask, dtype="i4"), (0, 0))
            counted = jnp.cumsum(jnp.asarray(attention_mask, dtype="i4"), axis=-1) - 1
            position_ids = jnp.where(jnp.asarray(attention_mask) == 0, 1, counted)
        else:
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype="i4")[None, :], (B, T))
        return {"past_key_values": past_key_values, "attention_mask": mask, "position_ids": position_ids}

    def update_inputs_for_generation(self, model_outputs, model_kwargs: dict) -> dict:
        model_kwargs["past_key_values"] = model_outputs.past_key_values
        model_kwargs["position_ids"] = model_kwargs["position_ids"][:, -1:] + 1
        return model_kwargs


class FlaxLlamaModel(FlaxLlamaPreTrainedModel):
    """The bare decoder: -> last_hidden_state (B, T, C)."""

    module_class = FlaxLlamaModule


class FlaxLlamaForCausalLM(FlaxCausalLMMixin, FlaxLlamaPreTrainedModel):
    """Decoder + language-model head: -> logits (B, T, V); `generate` decodes with a fixed-size cache."""

    module_class = FlaxLlamaForCausalLMModule


__all__ = ["FlaxLlamaForCausalLM", "FlaxLlamaModel", "FlaxLlamaPreTrainedModel"]
