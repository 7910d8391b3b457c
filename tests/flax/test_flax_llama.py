"""The Llama-family Flax classes (Llama, Mistral, Qwen2, Gemma) against our PyTorch classes on the same checkpoint:
logits and hidden states (atol 1e-5, fp32), a left-padded batch, the fixed-size cache step by step, sliding windows,
rope scaling, 4.x's parameter names, and no buffer that grows with max_position_embeddings.

Each family gets one tiny checkpoint written by our PyTorch class (initializer_range 0.2: sharp attention, so a wrong
position, mask or window moves the logits far more than the tolerance), read by both frameworks once per module.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="jax/flax not installed (pip install pretrained[flax])")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pretrained  # noqa: E402
from pretrained import registry  # noqa: E402

from flax_tf_common import CLEAN, LLAMA_FAMILIES as FAMILIES, LLAMA_PREFIX as PREFIX, LLAMA_TINY as BASE  # noqa
from flax_tf_common import assert_close as _close, llama_ids as _ids, torch_forward as _pt  # noqa: E402
from flax_tf_common import ROPE_CASES, assert_window_of_4, left_padded, llama_family, long_mistral_config  # noqa
from flax_tf_common import assert_left_padded_batch, assert_logits_and_states, rope_scaled_llama, window_config  # noqa


class Family:
    def __init__(self, model_type: str, folder) -> None:
        self.model_type, self.folder = model_type, folder
        self.pt, self.pt_base = llama_family(model_type, folder)
        self.fx = pretrained.FlaxAutoModelForCausalLM.from_pretrained(folder)
        self.fx_base = pretrained.FlaxAutoModel.from_pretrained(folder)


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request, tmp_path_factory) -> Family:
    return Family(request.param, tmp_path_factory.mktemp(f"flax-{request.param}"))


def test_classes_and_names(fam):
    prefix = PREFIX[fam.model_type]
    assert type(fam.fx).__name__ == f"Flax{prefix}ForCausalLM" and type(fam.fx_base).__name__ == f"Flax{prefix}Model"
    assert fam.fx.can_generate() and not fam.fx_base.can_generate()
    assert fam.fx.loading_info.as_dict() == CLEAN
    layer = fam.fx.params["model"]["layers"]["0"]
    assert set(layer) == {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}
    assert set(layer["self_attn"]["q_proj"]) == ({"kernel", "bias"} if fam.model_type == "qwen2" else {"kernel"})
    assert set(layer["self_attn"]["o_proj"]) == {"kernel"} and set(layer["input_layernorm"]) == {"weight"}
    assert layer["mlp"]["down_proj"]["kernel"].shape == (37, 32)  # [in, out]
    assert fam.fx.params["model"]["embed_tokens"]["embedding"].shape == (99, 32)
    assert ("lm_head" in fam.fx.params) == (fam.model_type != "gemma")  # Gemma's head is the tied embedding
    assert set(fam.fx_base.params) == {"embed_tokens", "layers", "norm"}
    assert fam.fx.num_parameters() == sum(p.numel() for p in fam.pt.parameters())


def test_causal_lm_logits_equal_pytorch(fam):
    assert_logits_and_states(fam.fx, fam.pt)


def test_base_model_equals_pytorch(fam):
    ids = _ids(seed=2)
    _close(fam.fx_base(ids).last_hidden_state, _pt(fam.pt_base, ids).last_hidden_state)
    tup = fam.fx_base(ids, output_attentions=True, return_dict=False)
    assert len(tup) == 2 and tup[1][0].shape == (2, 4, 9, 9)  # (hidden, attentions): None fields left out
    weights = np.asarray(tup[1][0])
    assert np.allclose(weights.sum(-1), 1, atol=1e-5) and np.all(np.triu(weights[0, 0], 1) == 0)  # causal


def test_left_padded_batch(fam):
    assert_left_padded_batch(fam.fx, fam.pt)


def test_cache_step_by_step(fam):
    """Prefill a left-padded prompt into a fixed-size cache, then one token at a time: every step's logits equal
    the full forward's at that position (PyTorch, no cache)."""
    ids, mask, positions = left_padded(seq=10, seed=4, row=1, pad=2)
    ref = _pt(fam.pt, ids, attention_mask=mask, position_ids=positions).logits.numpy()
    B, L, P = 2, 12, 5  # cache of 12 slots, a 5-token prompt
    cache = fam.fx.init_cache(B, L)
    layer = cache["model"]["layers"]["0"]["self_attn"]
    assert layer["cached_key"].shape == (B, L, 2, 8) and int(layer["cache_index"]) == 0
    full_mask = np.concatenate([mask, np.ones((B, L - ids.shape[1]), mask.dtype)], axis=1)
    out = fam.fx(ids[:, :P], attention_mask=full_mask, position_ids=positions[:, :P], past_key_values=cache)
    _close(np.asarray(out.logits)[mask[:, :P] == 1], ref[:, :P][mask[:, :P] == 1])
    cache = out.past_key_values
    for t in range(P, ids.shape[1]):
        out = fam.fx(ids[:, t:t + 1], attention_mask=full_mask, position_ids=positions[:, t:t + 1],
                     past_key_values=cache)
        cache = out.past_key_values
        _close(out.logits[:, 0], ref[:, t])
    assert int(cache["model"]["layers"]["1"]["self_attn"]["cache_index"]) == ids.shape[1]
    assert cache["model"]["layers"]["0"]["self_attn"]["cached_key"].shape == (B, L, 2, 8)  # never grows
    tup = fam.fx(ids[:, :1], past_key_values=fam.fx.init_cache(B, L), return_dict=False)
    assert len(tup) == 2 and "model" in tup[1]  # (logits, cache)


def test_cache_defaults_positions_after_the_cache(fam):
    ids = _ids(seq=6, seed=5)
    ref = np.asarray(fam.fx(ids).logits)
    out = fam.fx(ids[:, :4], past_key_values=fam.fx.init_cache(2, 8))
    out = fam.fx(ids[:, 4:], past_key_values=out.past_key_values)  # positions 4, 5 without being told
    _close(out.logits, ref[:, 4:])


def test_jit_with_params(fam):
    ids = jnp.asarray(_ids(seed=6))
    run = jax.jit(lambda params, ids: fam.fx(ids, params=params).logits)
    _close(run(fam.fx.params, ids), fam.fx(ids).logits)
    out = jax.jit(lambda params, ids: fam.fx(ids, params=params))(fam.fx.params, ids)  # an output leaves jit
    assert type(out).__name__ == "FlaxCausalLMOutput"


def test_second_forward_compiles_nothing(fam, caplog):
    """A second eager forward of the same shapes runs the programs the first compiled (the blocks were once compiled
    anew on every call, which doubled the time of a forward)."""
    ids = _ids(seed=11)
    first = fam.fx(ids).logits
    with caplog.at_level(logging.DEBUG, logger="jax"), jax.log_compiles():
        second = fam.fx(ids).logits
    assert [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()] == []
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_eager_blocks_equal_the_lifted_ones(fam):
    """An eager forward runs each block as a program of its own (`eager_block`, compiled with the CPU options of
    `eager_jit`); a traced call, or one that asks for attention weights, runs the lifted blocks: the same numbers (to
    float32 rounding: the two compilers fuse differently)."""
    ids = _ids(seed=5)
    eager = fam.fx(ids, output_hidden_states=True)
    lifted = fam.fx(ids, output_hidden_states=True, output_attentions=True)
    traced = jax.jit(lambda i: fam.fx(i).logits)(ids)
    for a, b in zip(eager.hidden_states, lifted.hidden_states, strict=True):
        _close(a, b)
    _close(eager.logits, lifted.logits)
    _close(eager.logits, traced)


def test_eager_jit_falls_back_where_the_options_are_unknown(monkeypatch):
    from pretrained.flax import layers

    monkeypatch.setattr(layers, "CPU_EAGER_OPTIONS", {"xla_no_such_option_here": True})
    double = layers.eager_jit(lambda x: 2 * x)
    np.testing.assert_array_equal(np.asarray(double(jnp.arange(3.0))), [0.0, 2.0, 4.0])  # compiled without them
    with pytest.raises(TypeError):  # any other error still reaches the caller
        layers.eager_jit(lambda x: x + "text")(jnp.arange(3.0))


def test_dropout_only_in_train(fam):
    ids = _ids(seed=7)
    a = fam.fx(ids, train=False, dropout_rng=jax.random.PRNGKey(0)).logits
    _close(a, fam.fx(ids).logits)


@pytest.mark.parametrize("rope", ROPE_CASES)
def test_rope_scaling_equals_pytorch(tmp_path, rope):
    ids, expected = rope_scaled_llama(tmp_path, rope)
    _close(pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path)(ids).logits, expected)


def test_sliding_window_is_pytorchs():
    """Query q sees keys q - W < k <= q: with W=4, position 8 attends to 5..8 (4.x's Flax Mistral also saw 4)."""
    model = pretrained.FlaxMistralModel(window_config())
    assert_window_of_4(np.asarray(model(_ids(seq=9), output_attentions=True).attentions[0])[0, 0])


def test_no_buffer_grows_with_max_positions():
    """A 131072-position Mistral builds, runs and caches in memory proportional to what is asked (4.x built a
    131072^2 causal mask per layer and ran out of memory)."""
    model = pretrained.FlaxMistralForCausalLM(long_mistral_config())
    out = model(_ids(seq=5), past_key_values=model.init_cache(2, 8))
    assert out.logits.shape == (2, 5, 99)
    leaves = jax.tree_util.tree_leaves(out.past_key_values) + jax.tree_util.tree_leaves(model.params)
    assert max(x.size for x in leaves) < 10_000


def test_computation_dtype_bf16(fam):
    model = registry.model_class(type(fam.fx.config), "AutoModelForCausalLM", "flax").from_pretrained(
        fam.folder, dtype=jnp.bfloat16)
    logits = model(_ids(seed=9)).logits
    assert logits.dtype == jnp.bfloat16  # computed in bf16; the parameters keep the checkpoint's float32
    assert model.params["model"]["embed_tokens"]["embedding"].dtype == jnp.float32
    _close(logits, fam.fx(_ids(seed=9)).logits, atol=0.25)


def test_gradient_checkpointing_same_gradients():
    config = pretrained.LlamaConfig(**BASE)
    model = pretrained.FlaxLlamaForCausalLM(config)
    ids = _ids(seed=10)

    def loss(params):
        return model(ids, params=params).logits.astype(jnp.float32).mean()

    plain = jax.jit(jax.grad(loss))(model.params)
    model.enable_gradient_checkpointing()
    remat = jax.jit(jax.grad(loss))(model.params)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat)):
        _close(a, b, atol=1e-6)
