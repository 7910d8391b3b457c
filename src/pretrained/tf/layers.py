"""Layers and pieces the TensorFlow (Keras 3) families share, written once (the PyTorch twins live in
`pretrained/layers/`, the Flax ones in `flax/layers.py`; the numerics follow them op by op).

Initialisers a load can skip. Every weight initialiser of our Keras layers is a `ModelInitializer` (4.x's
`get_initializer(range)` is one): while `skip_init()` is active it gives zeros instead of random values, and a
load builds its model under `keras.StatelessScope` so that no initialiser runs at all: the variables are created
empty and each receives its checkpoint value as its initial value (`tf/base.py`). A layer whose weight `w` is created
in `build` keeps its initialiser as the attribute `w_initializer` (Keras's own convention: `kernel_initializer`,
`embeddings_initializer`, `gamma_initializer`), so that a weight the checkpoint lacks can be initialised afterwards.

The key/value cache of the decoders (`past_key_values`, 4.x's name), one (key, value) pair per layer, each
(B, K, S, D):
- growing (4.x's): without `cache_position`, a call appends its T tokens (S grows by T) and returns the longer
  cache; a call with no cache and `use_cache=True` returns the first one;
- fixed-size: `model.init_cache(batch_size, max_length)` gives zeros of S = max_length; a call with `cache_position`
  (T,) int32 writes its tokens at those slots (contiguous: `cache_position[0]` onwards, one `dynamic_update_slice`)
  and attends over all S slots, later slots and padding masked. Shapes never change while decoding, so one step
  compiled with `tf.function(jit_compile=True)` serves every position. `attention_mask` (B, S) covers the whole cache
  (1 token, 0 padding); a shorter one is padded with ones (the slots after the queries are hidden causally anyway).
`position_ids` (B, T) default to `cache_position` (fixed), or past length + 0..T-1; with left padding pass
`cumsum(attention_mask) - 1`.

Shapes: B batch, T new tokens, S attended positions, H heads, K key/value heads, D head_dim, C hidden.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# inverse_frequencies: numpy, shared with the other framework; the families import it from here
from ..layers.neutral import activation_table, inverse_frequencies, pick_activation  # noqa: F401

try:  # XLA's in-place slice update; runs eagerly, in graphs and compiled (4.x's TF generation used it too)
    from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice as _dynamic_update_slice
except ImportError:  # pragma: no cover - a TensorFlow build without it
    _dynamic_update_slice = None


# ---- initialisers ----------------------------------------------------------------------------------------------------
_SKIP_INIT = contextvars.ContextVar("pretrained_tf_skip_init", default=False)


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """While active, every `ModelInitializer` gives zeros (a model about to receive its weights from a file)."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def is_skipping_init() -> bool:
    return _SKIP_INIT.get()


class ModelInitializer(keras.initializers.Initializer):
    """A weight's initialiser that a load can skip: `base` (any Keras initialiser or its name), or zeros under
    `skip_init()`."""

    def __init__(self, base: Any = "glorot_uniform") -> None:
        self.base = keras.initializers.get(base)

    def __call__(self, shape, dtype=None):
        if _SKIP_INIT.get():
            return keras.ops.zeros(shape, dtype=dtype)
        return self.base(shape, dtype=dtype)

    def get_config(self) -> dict:
        return {"base": keras.initializers.serialize(self.base)}

    @classmethod
    def from_config(cls, config: dict) -> ModelInitializer:
        return cls(keras.initializers.deserialize(config["base"]))


def get_initializer(initializer_range: float = 0.02) -> ModelInitializer:
    """4.x's weight initialiser: a truncated normal of standard deviation `initializer_range` (skippable)."""
    return ModelInitializer(keras.initializers.TruncatedNormal(stddev=initializer_range))


def initializer(spec: Any) -> ModelInitializer:
    """A skippable initialiser from a Keras initialiser or its name ("zeros", "ones")."""
    return spec if isinstance(spec, ModelInitializer) else ModelInitializer(spec)


def dense(units: int, name: str, use_bias: bool = False, initializer_range: float = 0.02, **kwargs: Any):
    """A Keras Dense layer with 4.x's names (`kernel` [in, out], `bias`) and skippable initialisers."""
    return keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=get_initializer(initializer_range),
                              bias_initializer=initializer("zeros"), name=name, **kwargs)


def build_child(layer: keras.layers.Layer, input_shape: Any) -> None:
    """Build a sublayer from its parent's `build` (its variables then sit under the parent's path)."""
    if not layer.built:
        layer.build(input_shape)


def replace_variable(variable: Any, value: Any) -> None:
    """Give a Keras variable a new value of another shape (resizing an embedding): its path, name and owner stay,
    its storage is a new tf.Variable. (Keras variables cannot change shape through `assign`.)"""
    value = tf.convert_to_tensor(value, dtype=variable.dtype)
    old = variable._value  # the backing tf.Variable (Keras 3 on TensorFlow)
    variable._value = tf.Variable(value, dtype=old.dtype, trainable=old.trainable, name=old.name.split(":")[0])
    variable._shape = tuple(int(d) for d in value.shape)


# ---- activations -----------------------------------------------------------------------------------------------------
ACTIVATIONS = activation_table(tf.nn.silu, tf.nn.gelu, tf.nn.relu, tf.tanh, tf.pow)


def activation(name: str):
    return pick_activation(ACTIVATIONS, name)


# ---- normalisation ---------------------------------------------------------------------------------------------------
class TFRMSNorm(keras.layers.Layer):
    """y = weight * x / sqrt(mean(x^2) + eps), normalised in float32; `offset=1.0` is Gemma's (1 + weight) form
    (weight initialised to zeros), computed in float32 too. The weight is named `weight`, as 4.x's TFMistral."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, offset: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_size, self.eps, self.offset = hidden_size, eps, offset
        self.weight_initializer = initializer("zeros" if offset else "ones")

    def build(self, input_shape=None) -> None:
        self.weight = self.add_weight(name="weight", shape=(self.hidden_size,), initializer=self.weight_initializer)
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:  # (..., C)
        dtype = x.dtype
        x32 = tf.cast(x, tf.float32)
        x32 = x32 * tf.math.rsqrt(tf.reduce_mean(tf.square(x32), axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return tf.cast(x32 * (self.offset + tf.cast(self.weight, tf.float32)), dtype)
        return tf.cast(self.weight, dtype) * tf.cast(x32, dtype)


# ---- rotary positions (the frequencies, `inverse_frequencies`, come from layers/neutral.py) --------------------------
def rotary_cos_sin(position_ids: tf.Tensor, inv_freq: np.ndarray, scaling: float, dtype) -> tuple[tf.Tensor, tf.Tensor]:
    """(cos, sin), each (B, T, D), for positions (B, T): computed from the positions (no table)."""
    freqs = tf.cast(position_ids, tf.float32)[..., None] * tf.constant(inv_freq)[None, None, :]
    emb = tf.concat([freqs, freqs], axis=-1)
    return tf.cast(tf.cos(emb) * scaling, dtype), tf.cast(tf.sin(emb) * scaling, dtype)


def rotate_half(x: tf.Tensor) -> tf.Tensor:
    x1, x2 = tf.split(x, 2, axis=-1)
    return tf.concat([-x2, x1], axis=-1)


def apply_rotary(q: tf.Tensor, k: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """q (B, H, T, D), k (B, K, T, D); cos, sin (B, T, D)."""
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


# ---- the key/value cache and masks -----------------------------------------------------------------------------------
def cache_layout(past_key_values: Any, T: Any, cache_position: Any = None) -> tuple[tf.Tensor, Any]:
    """(q_positions (T,) int32: each new token's slot along the attended positions, kv_len S) for a call with T new
    tokens and this cache (see the module's doc)."""
    if past_key_values is None:
        return tf.range(T, dtype=tf.int32), T
    S = tf.shape(past_key_values[0][0])[2]
    if cache_position is not None:
        return tf.cast(cache_position, tf.int32), S
    return S + tf.range(T, dtype=tf.int32), S + T


def update_cache(past: Any, key: tf.Tensor, value: tf.Tensor,
                 cache_position: Any = None) -> tuple[tf.Tensor, tf.Tensor]:
    """One layer's (keys, values) to attend over, which are also its new cache entry: key and value (B, K, T, D)
    alone (no cache), appended to a growing cache, or written into a fixed one at `cache_position`."""
    if past is None:
        return key, value
    past_k, past_v = past
    if cache_position is None:
        return (tf.concat([past_k, tf.cast(key, past_k.dtype)], axis=2),
                tf.concat([past_v, tf.cast(value, past_v.dtype)], axis=2))
    start = tf.cast(cache_position[0], tf.int32)
    at = tf.stack([0, 0, start, 0])
    if _dynamic_update_slice is not None:
        return (_dynamic_update_slice(past_k, tf.cast(key, past_k.dtype), at),
                _dynamic_update_slice(past_v, tf.cast(value, past_v.dtype), at))
    S = tf.shape(past_k)[2]  # pragma: no cover - without XLA's op: a one-hot write
    hot = tf.one_hot(tf.cast(cache_position, tf.int32), S, dtype=past_k.dtype)  # (T, S)
    keep = 1 - tf.reduce_sum(hot, axis=0)[None, None, :, None]
    return (past_k * keep + tf.einsum("bktd,ts->bksd", tf.cast(key, past_k.dtype), hot),
            past_v * keep + tf.einsum("bktd,ts->bksd", tf.cast(value, past_v.dtype), hot))


def causal_mask(attention_mask: Any, q_positions: tf.Tensor, kv_len: Any,
                sliding_window: int | None = None) -> tf.Tensor:
    """Boolean (B|1, 1, T, S) mask, True = may attend: a query sees the slots up to its own, with a
    `sliding_window` W only the last W of them (q - W < k <= q, as the PyTorch side), and no padding.
    `attention_mask` (B, M), 1 = token, 0 = padding: shorter than S is padded with ones, longer keeps its last S."""
    kv = tf.range(kv_len, dtype=tf.int32)[None, :]
    q = tf.cast(q_positions, tf.int32)[:, None]
    allowed = kv <= q
    if sliding_window is not None:
        allowed = tf.logical_and(allowed, kv > q - sliding_window)
    allowed = allowed[None, None]
    if attention_mask is not None:
        m = tf.cast(attention_mask, tf.int32)
        M = tf.shape(m)[1]
        m = tf.pad(m, [[0, 0], [0, tf.maximum(kv_len - M, 0)]], constant_values=1)
        m = m[:, tf.shape(m)[1] - kv_len:]
        allowed = tf.logical_and(allowed, tf.not_equal(m, 0)[:, None, None, :])
    return allowed


# ---- attention -------------------------------------------------------------------------------------------------------
def attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask: tf.Tensor, scaling: float, dropout: float = 0.0,
           training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Grouped-query attention: q (B, H, T, D), k and v (B, K, S, D), mask (B|1, 1, T, S) -> (out (B, T, H, D),
    weights (B, H, T, S)). Scores in the computation dtype, softmax in float32 (as the PyTorch eager path)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # head h reads key/value head h // groups
        k, v = tf.repeat(k, groups, axis=1), tf.repeat(v, groups, axis=1)
    scores = tf.matmul(q, k, transpose_b=True) * tf.cast(scaling, q.dtype)
    scores = tf.where(mask, scores, tf.cast(scores.dtype.min, scores.dtype))
    weights = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1), q.dtype)
    if training and dropout > 0.0:
        weights = tf.nn.dropout(weights, rate=dropout)
    return tf.transpose(tf.matmul(weights, tf.cast(v, weights.dtype)), (0, 2, 1, 3)), weights


class TFGatedMLP(keras.layers.Layer):
    """down(act(gate(x)) * up(x)), the Llama-family feed-forward block (`gate_proj`, `up_proj`, `down_proj`)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, use_bias: bool = False,
                 initializer_range: float = 0.02, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.act = activation(act)
        self.gate_proj = dense(intermediate_size, "gate_proj", use_bias, initializer_range)
        self.up_proj = dense(intermediate_size, "up_proj", use_bias, initializer_range)
        self.down_proj = dense(hidden_size, "down_proj", use_bias, initializer_range)

    def build(self, input_shape=None) -> None:
        build_child(self.gate_proj, (None, self.hidden_size))
        build_child(self.up_proj, (None, self.hidden_size))
        build_child(self.down_proj, (None, self.intermediate_size))
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


__all__ = [
    "ACTIVATIONS", "ModelInitializer", "TFGatedMLP", "TFRMSNorm", "activation", "apply_rotary", "attend",
    "build_child", "cache_layout", "causal_mask", "dense", "get_initializer", "initializer", "inverse_frequencies",
    "is_skipping_init", "replace_variable", "rotary_cos_sin", "skip_init", "update_cache",
]
