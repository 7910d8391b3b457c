"""Layers the Flax families share: activations, RMSNorm, rotary positions, masks, attention and the fixed-size
key/value cache, written once (the PyTorch twins live in `pretrained/layers/`; the numerics follow them op by op).

Shapes: B batch, T new tokens, S attended positions (T, or the cache's max_length), H heads, K key/value heads,
D head_dim, C hidden.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# inverse_frequencies: numpy, shared with the other framework; the families import it from here
from ..layers.neutral import activation_table, inverse_frequencies, pick_activation  # noqa: F401


# ---- activations -----------------------------------------------------------------------------------------------------
ACTIVATIONS = activation_table(jax.nn.silu, jax.nn.gelu, jax.nn.relu, jnp.tanh, jnp.power)


def activation(name: str):
    return pick_activation(ACTIVATIONS, name)


# ---- matrix products -------------------------------------------------------------------------------------------------
_NARROW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def wide_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                     preferred_element_type=None, **kwargs: Any) -> jax.Array:
    """`lax.dot_general` for `nn.Dense(dot_general=...)`: 16-bit operands are multiplied with float32 accumulation
    and the result rounded back to their dtype, as torch's CPU and CUDA matmuls do. Same numbers as a 16-bit
    product that accumulates wide, and on XLA:CPU 5-6x faster than its bf16 dot (measured: a (16, 2048) x
    (2048, 8192) product, 29 ms -> 4.8 ms under jit). Other dtypes go through unchanged."""
    if preferred_element_type is None and lhs.dtype == rhs.dtype and lhs.dtype in _NARROW:
        if kwargs:
            return _dot_wide(lhs, rhs, dimension_numbers, precision, **kwargs)
        return _dot_wide_jitted(lhs, rhs, _hashable(dimension_numbers), precision)  # see rms_normalise
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)


def _dot_wide(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision, **kwargs: Any) -> jax.Array:
    out = lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32,
                          **kwargs)
    return out.astype(lhs.dtype)


_dot_wide_jitted = jax.jit(_dot_wide, static_argnums=(2, 3))


# XLA:CPU options for programs an eager call compiles at the top level. The older loop emitters compile the 1B
# Llama's block in 0.15-0.19 s against 0.25-0.30 s with the default fusion emitters, and the block then runs as fast
# (12-13 ms for 16 tokens either way). jax takes compiler options on a top-level jit only, so traced code (generate's
# loop) never sees them.
CPU_EAGER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def eager_jit(fn: Any, **jit_kwargs: Any) -> Any:
    """`jax.jit(fn)` for calls outside any trace, compiled with CPU_EAGER_OPTIONS when the default backend is the CPU
    (and plainly when it is not, or when this jaxlib does not know the options)."""
    plain = jax.jit(fn, **jit_kwargs)
    if jax.default_backend() != "cpu":
        return plain
    chosen = [jax.jit(fn, compiler_options=CPU_EAGER_OPTIONS, **jit_kwargs)]

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return chosen[0](*args, **kwargs)
        except jax.errors.JaxRuntimeError as e:  # "No such compile option": a jaxlib without it
            if chosen[0] is plain or "compile option" not in str(e):
                raise
            chosen[0] = plain
            return plain(*args, **kwargs)

    return call


def _hashable(x: Any) -> Any:
    return tuple(_hashable(v) for v in x) if isinstance(x, (list, tuple)) else x


def matmul_t(x: jax.Array, table: jax.Array) -> jax.Array:
    """x @ table.T (a (V, C) table: tied output embeddings, GPT-2's Conv1D) with `wide_dot_general`."""
    return wide_dot_general(x, table, (((x.ndim - 1,), (1,)), ((), ())))


# ---- normalisation ---------------------------------------------------------------------------------------------------
class FlaxRMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps), normalised in float32; `offset=1.0` is Gemma's (1 + weight) form
    (weight initialised to zeros), computed in float32 too. The parameter is `weight`, as 4.x names it."""

    hidden_size: int
    eps: float = 1e-6
    offset: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (..., C)
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        weight = self.param("weight", init, (self.hidden_size,), self.param_dtype)
        return rms_normalise(x, weight, self.eps, self.offset, jnp.dtype(self.dtype))


# Small helpers the forward calls outside the compiled blocks are jitted themselves: called eagerly (a model's
# `__call__`), each is one compiled program instead of one per operation (a first forward compiled ~20 single-op
# programs, 20-50 ms each); inside a traced function they are inlined as usual.
@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def rms_normalise(x: jax.Array, weight: jax.Array, eps: float, offset: float, dtype: Any) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    if offset:
        return (x32 * (offset + weight.astype(jnp.float32))).astype(dtype)
    return (weight * x32.astype(x.dtype)).astype(dtype)


# ---- rotary positions (the frequencies, `inverse_frequencies`, come from layers/neutral.py) --------------------------
@functools.partial(jax.jit, static_argnums=(3,))
def rotary_cos_sin(position_ids: jax.Array, inv_freq: np.ndarray, scaling: float, dtype) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each (B, T, D), for positions (B, T): computed from the positions themselves (no table); jitted
    as the helpers above."""
    freqs = position_ids[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return (jnp.cos(emb) * scaling).astype(dtype), (jnp.sin(emb) * scaling).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(q: jax.Array, k: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q (B, T, H, D), k (B, T, K, D); cos, sin (B, T, D)."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


# ---- masks -----------------------------------------------------------------------------------------------------------
def causal_mask(attention_mask: jax.Array | None, q_positions: jax.Array, kv_len: int,
                sliding_window: int | None = None) -> jax.Array:
    """Boolean (B|1, 1, T, S) mask, True = may attend, built from the actual lengths (no precomputed table).

    `q_positions` (T,): the slot of each query along the S attended positions (its cache index, or 0..T-1). A query
    sees the slots up to its own, and with a `sliding_window` W only the last W of them (q - W < k <= q, as the
    PyTorch side). `attention_mask` (B, M), 1 = token, 0 = padding: shorter than S (a cache) is padded with ones
    (later slots are hidden causally anyway); longer keeps its last S columns.
    """
    kv = jnp.arange(kv_len)[None, :]
    q = q_positions[:, None]
    allowed = kv <= q
    if sliding_window is not None:
        allowed = allowed & (kv > q - sliding_window)
    allowed = allowed[None, None]
    if attention_mask is not None:
        m = attention_mask
        if m.shape[-1] < kv_len:
            m = jnp.pad(m, ((0, 0), (0, kv_len - m.shape[-1])), constant_values=1)
        allowed = allowed & (m[:, None, None, -kv_len:] != 0)
    return allowed


# ---- the fixed-size key/value cache ----------------------------------------------------------------------------------
def update_cache(module: nn.Module, key: jax.Array, value: jax.Array,
                 init_cache: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inside an attention module: write the new key/value (B, T, K, D) into the module's "cache" collection
    (`cached_key`, `cached_value` (B, max_length, K, D), `cache_index`, as 4.x lays it out) and return
    (keys, values, q_positions) to attend with.

    Without a cache: (key, value, 0..T-1). With one: the whole buffer, the new tokens written at cache_index (the
    index then advances by T) and their slots as q_positions, so shapes never change while decoding. The
    `init_cache=True` pass (`init_cache()` runs it under `jax.eval_shape`) only declares the variables, sized by
    its input (B, max_length). Writing past max_length is not checked inside jit: size the cache for the whole
    sequence.
    """
    T = key.shape[1]
    initialised = module.has_variable("cache", "cached_key")
    if not initialised and not init_cache:
        return key, value, jnp.arange(T)
    cached_key = module.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = module.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    index = module.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
    if not initialised:
        return key, value, jnp.arange(T)
    at = index.value
    cached_key.value = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), (0, at, 0, 0))
    cached_value.value = lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype),
                                                  (0, at, 0, 0))
    index.value = at + T
    return cached_key.value, cached_value.value, at + jnp.arange(T)


def cache_index_of(cache: Any) -> jax.Array | None:
    """The `cache_index` of a cache collection (every layer holds the same one), or None."""
    if cache is None:
        return None
    stack = [cache]
    while stack:
        node = stack.pop()
        if hasattr(node, "items"):
            if "cache_index" in node:
                return node["cache_index"]
            stack.extend(v for _, v in sorted(node.items(), reverse=True))
    return None


# ---- attention -------------------------------------------------------------------------------------------------------
def _wide_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum accumulating 16-bit operands in float32 (see `wide_dot_general`), rounded back to their dtype."""
    if a.dtype == b.dtype and a.dtype in _NARROW:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)
    return jnp.einsum(spec, a, b)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scaling: float, dtype,
           dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Grouped-query attention: q (B, T, H, D), k and v (B, S, K, D), mask (B|1, 1, T, S) -> (out (B, T, H, D),
    weights (B, H, T, S)). Scores in the computation dtype, softmax in float32 (as the PyTorch eager path)."""
    groups = q.shape[2] // k.shape[2]
    if groups > 1:  # head h reads key/value head h // groups
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = _wide_einsum("bthd,bshd->bhts", q, k) * jnp.asarray(scaling, dtype=q.dtype)
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(dtype)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(dtype)
    return _wide_einsum("bhts,bshd->bthd", weights, v.astype(dtype)), weights


class FlaxGatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), the Llama-family feed-forward block (`gate_proj`, `up_proj`, `down_proj`)."""

    hidden_size: int
    intermediate_size: int
    act: str
    use_bias: bool = False
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        def dense(features: int) -> nn.Dense:
            return nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=nn.initializers.normal(self.init_std), dot_general=wide_dot_general)

        self.gate_proj = dense(self.intermediate_size)
        self.up_proj = dense(self.intermediate_size)
        self.down_proj = dense(self.hidden_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(activation(self.act)(self.gate_proj(x)) * self.up_proj(x))
