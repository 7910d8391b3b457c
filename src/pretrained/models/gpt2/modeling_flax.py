"""GPT-2 in JAX/Flax: the same pre-norm causal decoder as `modeling.py`, as `flax.linen` modules.

Parameter paths are those of the 4.x Flax classes (`transformer/h/0/attn/c_attn/kernel`). GPT-2's projections are
Conv1D layers whose PyTorch weight is (in, out); the Flax `kernel` is kept as 4.x keeps it, (out, in), i.e. the
PyTorch weight transposed. The language-model head reuses `wte` (no `lm_head` parameter while tied).

Decoding uses a cache of fixed size (`init_cache(batch, max_length)`): each attention layer holds `cached_key`,
`cached_value` (B, max_length, H, D) and `cache_index` in the linen "cache" collection; a call with
`past_key_values` writes its tokens at `cache_index` and attends over the whole buffer under a mask built from the
positions (no max_position_embeddings-squared buffer exists anywhere). Imports no torch.
Shapes: B batch, T new tokens, S attended positions (T, or max_length with a cache), H heads, D head_dim, C n_embd.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ...errors import ConfigError
from ...flax.base import FlaxPreTrainedModel
from ...flax.layers import activation, attend, cache_index_of, causal_mask, matmul_t, update_cache, wide_dot_general
from ...flax.outputs import FlaxBaseModelOutputWithPastAndCrossAttentions, FlaxCausalLMOutputWithCrossAttentions
from .configuration import GPT2Config

from .key_rules import FLAX_KEY_RULES  # data, shared with the PyTorch loader of 4.x files


class FlaxConv1D(nn.Module):
    """y = x @ kernel.T + bias, with `kernel` (features, in) as 4.x stores it."""

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", jax.nn.initializers.normal(self.init_std), (self.features, x.shape[-1]),
                            self.param_dtype)
        y = matmul_t(jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype))
        if self.use_bias:
            y = y + jnp.asarray(self.param("bias", jax.nn.initializers.zeros, (self.features,), self.param_dtype),
                                self.dtype)
        return y


class FlaxGPT2Attention(nn.Module):
    config: GPT2Config
    layer_idx: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        C = cfg.n_embd
        residual_std = cfg.initializer_range / (2 * cfg.n_layer) ** 0.5
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.c_attn = FlaxConv1D(3 * C, init_std=cfg.initializer_range, **kw)
        self.c_proj = FlaxConv1D(C, init_std=residual_std, **kw)
        self.resid_dropout = nn.Dropout(rate=cfg.resid_pdrop)

    @nn.compact
    def _cache(self, k, v, init_cache: bool):
        return update_cache(self, k, v, init_cache)

    def __call__(self, x, attention_mask=None, deterministic: bool = True, init_cache: bool = False,
                 output_attentions: bool = False):
        cfg = self.config
        B, T, C = x.shape
        H = cfg.n_head
        D = C // H
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (t.reshape(B, T, H, D) for t in (q, k, v))
        k, v, q_pos = self._cache(k, v, init_cache)  # the whole fixed-size buffer once a cache exists
        mask = causal_mask(attention_mask, q_pos, k.shape[1])  # (B|1, 1, T, S)
        if cfg.reorder_and_upcast_attn:  # scores in float32 whatever the computation dtype
            q, k = q.astype(jnp.float32), k.astype(jnp.float32)
        scaling = D**-0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scaling /= float(self.layer_idx + 1)
        dropout = cfg.attn_pdrop if not deterministic else 0.0
        out, weights = attend(q, k, v, mask, scaling, self.dtype, dropout,
                              self.make_rng("dropout") if dropout > 0.0 else None)
        out = out.reshape(B, T, C)
        out = self.resid_dropout(self.c_proj(out), deterministic=deterministic)
        return out, weights if output_attentions else None


class FlaxGPT2MLP(nn.Module):
    config: GPT2Config
    intermediate_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.c_fc = FlaxConv1D(self.intermediate_size, init_std=cfg.initializer_range, **kw)
        self.c_proj = FlaxConv1D(cfg.n_embd, init_std=cfg.initializer_range / (2 * cfg.n_layer) ** 0.5, **kw)
        self.act = activation(cfg.activation_function)
        self.dropout = nn.Dropout(rate=cfg.resid_pdrop)

    def __call__(self, x, deterministic: bool = True):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))), deterministic=deterministic)


class FlaxGPT2Block(nn.Module):
    config: GPT2Config
    layer_idx: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.ln_1 = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, use_fast_variance=False, **kw)
        self.attn = FlaxGPT2Attention(cfg, layer_idx=self.layer_idx, **kw)
        self.ln_2 = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, use_fast_variance=False, **kw)
        self.mlp = FlaxGPT2MLP(cfg, cfg.n_inner if cfg.n_inner is not None else 4 * cfg.n_embd, **kw)

    def __call__(self, x, attention_mask=None, deterministic: bool = True, init_cache: bool = False,
                 output_attentions: bool = False):
        attn, weights = self.attn(self.ln_1(x), attention_mask, deterministic, init_cache, output_attentions)
        x = x + attn
        return x + self.mlp(self.ln_2(x), deterministic=deterministic), weights


class FlaxGPT2BlockCollection(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        # deterministic, init_cache, output_attentions: Python booleans, static under remat (flax counts self as 0)
        cls = nn.remat(FlaxGPT2Block, static_argnums=(3, 4, 5)) if self.gradient_checkpointing else FlaxGPT2Block
        self.blocks = [cls(self.config, layer_idx=i, dtype=self.dtype, param_dtype=self.param_dtype, name=str(i))
                       for i in range(self.config.n_layer)]

    def __call__(self, x, attention_mask=None, deterministic: bool = True, init_cache: bool = False,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        hidden, attentions = [], []
        for block in self.blocks:
            if output_hidden_states:
                hidden.append(x)
            x, weights = block(x, attention_mask, deterministic, init_cache, output_attentions)
            if output_attentions:
                attentions.append(weights)
        return x, hidden, tuple(attentions) if output_attentions else None


class FlaxGPT2Module(nn.Module):
    """Token + position embeddings -> n_layer blocks -> final LayerNorm: hidden states (B, T, C)."""

    config: GPT2Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        cfg = self.config
        if cfg.add_cross_attention:
            raise ConfigError("GPT-2 with cross-attention (add_cross_attention=True) is not implemented; only the "
                              "decoder-only GPT-2 is.")
        embed = dict(dtype=self.dtype, param_dtype=self.param_dtype,
                     embedding_init=jax.nn.initializers.normal(cfg.initializer_range))
        self.wte = nn.Embed(cfg.vocab_size, cfg.n_embd, **embed)
        self.wpe = nn.Embed(cfg.n_positions, cfg.n_embd, **embed)
        self.dropout = nn.Dropout(rate=cfg.embd_pdrop)
        self.h = FlaxGPT2BlockCollection(cfg, dtype=self.dtype, param_dtype=self.param_dtype,
                                         gradient_checkpointing=self.gradient_checkpointing)
        self.ln_f = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, use_fast_variance=False, dtype=self.dtype,
                                 param_dtype=self.param_dtype)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 init_cache: bool = False, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(T), (B, T))
        x = self.wte(input_ids.astype("i4")) + self.wpe(position_ids.astype("i4"))
        x = self.dropout(x, deterministic=deterministic)
        x, hidden, attentions = self.h(x, attention_mask, deterministic, init_cache, output_attentions,
                                       output_hidden_states)
        x = self.ln_f(x)
        hidden = tuple(hidden) + (x,) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (x, hidden, attentions) if v is not None)
        return FlaxBaseModelOutputWithPastAndCrossAttentions(last_hidden_state=x, hidden_states=hidden,
                                                             attentions=attentions)


class FlaxGPT2LMHeadModule(nn.Module):
    """GPT-2 + language-model head (the token embeddings, transposed, while tied): -> logits (B, T, vocab)."""

    config: GPT2Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        self.transformer = FlaxGPT2Module(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                                          gradient_checkpointing=self.gradient_checkpointing)
        if not self.config.tie_word_embeddings:
            self.lm_head = nn.Dense(self.config.vocab_size, use_bias=False, dtype=self.dtype,
                                    param_dtype=self.param_dtype,
                                    kernel_init=jax.nn.initializers.normal(self.config.initializer_range),
                                    dot_general=wide_dot_general)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 init_cache: bool = False, output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True):
        base = self.transformer(input_ids, attention_mask, position_ids, deterministic, init_cache,
                                output_attentions, output_hidden_states, return_dict=True)
        x = base.last_hidden_state
        if self.config.tie_word_embeddings:
            table = self.transformer.variables["params"]["wte"]["embedding"]  # (V, C)
            logits = matmul_t(x, jnp.asarray(table, self.dtype))
        else:
            logits = self.lm_head(x)
        if not return_dict:
            return tuple(v for v in (logits, base.hidden_states, base.attentions) if v is not None)
        return FlaxCausalLMOutputWithCrossAttentions(logits=logits, hidden_states=base.hidden_states,
                                                     attentions=base.attentions)


class FlaxGPT2PreTrainedModel(FlaxPreTrainedModel):
    """Weights, loading, the fixed-size cache and the 4.x call convention shared by the GPT-2 classes."""

    config_class = GPT2Config
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    module_class: type[nn.Module] = None
    flax_key_rules = FLAX_KEY_RULES

    def __init__(self, config: GPT2Config, input_shape: tuple = (1, 1), seed: int = 0, dtype: Any = jnp.float32,
                 _do_init: bool = True, gradient_checkpointing: bool = False, **kwargs):
        module = self.module_class(config=config, dtype=dtype, gradient_checkpointing=gradient_checkpointing, **kwargs)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, params: dict | None = None,
                 past_key_values: dict | None = None, dropout_rng=None, train: bool = False,
                 output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                 return_dict: bool | None = None):
        """`past_key_values`: a cache from `init_cache` (or a previous output's `past_key_values`): the tokens are
        written at its index and the output carries the updated cache. `attention_mask` then covers the cache's
        max_length positions (shorter masks are padded with ones; later positions are hidden causally anyway)."""
        cfg = self.config
        input_ids = jnp.asarray(input_ids, dtype="i4")
        B, T = input_ids.shape
        if position_ids is None:  # after the cache's tokens (left padding: pass the mask's running count)
            start = cache_index_of(past_key_values)
            position_ids = jnp.broadcast_to((0 if start is None else start) + jnp.arange(T, dtype="i4"), (B, T))
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), dtype="i4")
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


class FlaxGPT2Model(FlaxGPT2PreTrainedModel):
    """-> last_hidden_state (B, T, C)."""

    module_class = FlaxGPT2Module


class FlaxGPT2LMHeadModel(FlaxGPT2PreTrainedModel):
    """GPT-2 + tied language-model head: -> next-token logits (B, T, vocab); decodes through `init_cache`."""

    module_class = FlaxGPT2LMHeadModule

    def prepare_inputs_for_generation(self, input_ids, max_length: int, attention_mask=None):
        """The decoding state for a prompt (B, T): a fresh cache of `max_length`, the mask over all max_length
        positions (the prompt's, then ones: later positions are hidden causally) and the prompt's positions
        (left padding counted out)."""
        B, T = input_ids.shape
        full_mask = jnp.ones((B, max_length), dtype="i4")
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask, dtype="i4")
            position_ids = jnp.where(attention_mask == 0, 1, attention_mask.cumsum(axis=-1) - 1)
            full_mask = lax.dynamic_update_slice(full_mask, attention_mask, (0, 0))
        else:
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype="i4"), (B, T))
        return {"past_key_values": self.init_cache(B, max_length), "attention_mask": full_mask,
                "position_ids": position_ids}

    def update_inputs_for_generation(self, model_outputs, model_kwargs: dict) -> dict:
        model_kwargs["past_key_values"] = model_outputs.past_key_values
        model_kwargs["position_ids"] = model_kwargs["position_ids"][:, -1:] + 1
        return model_kwargs


__all__ = ["FlaxGPT2LMHeadModel", "FlaxGPT2Model", "FlaxGPT2PreTrainedModel"]
