"""FlaxGPT2Model / FlaxGPT2LMHeadModel: outputs equal our PyTorch classes on the same checkpoint (fp32, atol 1e-5),
padded batches included; decoding through the fixed-size cache equals the full forward, also jit-compiled; the
parameter tree is 4.x's; saves load both ways; no buffer grows with n_positions squared.

Checkpoints are written by our PyTorch classes (initializer_range 0.2: sharp attention, so a wrong position, mask or
scale moves the outputs far beyond the tolerance) and read by the Flax classes through `from_pretrained`.
"""

from __future__ import annotations

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="jax/flax not installed (pip install pretrained[flax])")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from pretrained.models.gpt2 import (  # noqa: E402
    FlaxGPT2LMHeadModel,
    FlaxGPT2Model,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
)

from flax_tf_common import close, reload_in_pytorch, save_perturbed  # noqa: E402

V = 99
TINY = dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2)
VARIANTS = {
    "default": {},
    # an untied head, the inverse-layer scaling and float32 scores: the options the PyTorch class implements
    "untied": dict(tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
                   activation_function="relu"),
}
PAIRS = {"Model": (GPT2Model, FlaxGPT2Model), "LMHeadModel": (GPT2LMHeadModel, FlaxGPT2LMHeadModel)}


CASES = [("default", "Model"), ("default", "LMHeadModel"), ("untied", "LMHeadModel")]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, tmp_path_factory):
    """(PyTorch model, Flax model loaded from its save, folder)."""
    variant, name = request.param
    torch_cls, flax_cls = PAIRS[name]
    folder = tmp_path_factory.mktemp(f"gpt2-{variant}-{name}")
    model = save_perturbed(torch_cls, GPT2Config(**TINY, **VARIANTS[variant]), folder)
    flax_model, info = flax_cls.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    return model, flax_model, folder


def batch(seq=9, seed=1):
    """Two rows, the second left-padded by 3: ids (2, seq), mask, positions (the mask's running count)."""
    g = np.random.default_rng(seed)
    ids = g.integers(2, V, (2, seq))
    mask = np.ones((2, seq), dtype=np.int64)
    mask[1, :3] = 0
    positions = np.where(mask == 0, 1, mask.cumsum(-1) - 1)
    return ids, mask, positions


def torch_out(model, ids, mask, positions, **kw):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions),
                     use_cache=False, **kw)


def main(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_parity_padded_batch(pair):
    model, flax_model, _ = pair
    ids, mask, positions = batch()
    expected = torch_out(model, ids, mask, positions, output_hidden_states=True)
    got = flax_model(ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    real = mask.astype(bool)  # a left-padding row's pad positions attend to nothing: not compared
    close(np.asarray(main(got))[real], main(expected).numpy()[real], "logits / last hidden state")
    assert len(got.hidden_states) == len(expected.hidden_states) == TINY["n_layer"] + 1
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        close(np.asarray(a)[real], b.numpy()[real], f"hidden state {i}")


def test_parity_attention_weights(pair):
    model, flax_model, _ = pair
    ids = np.random.default_rng(3).integers(2, V, (2, 6))
    with torch.no_grad():
        expected = model(torch.tensor(ids), output_attentions=True, use_cache=False).attentions
    got = flax_model(ids, output_attentions=True).attentions
    assert len(got) == TINY["n_layer"]
    for a, b in zip(got, expected):
        close(a, b.numpy())


def test_default_positions_and_tuple_output(pair):
    model, flax_model, _ = pair
    ids = np.random.default_rng(4).integers(2, V, (1, 5))
    with torch.no_grad():
        expected = main(model(torch.tensor(ids), use_cache=False)).numpy()
    out = flax_model(ids, return_dict=False)
    assert isinstance(out, tuple)
    close(out[0], expected)


def test_cache_decoding_equals_full_forward(pair):
    """Prompt (left-padded) through a fresh cache of max_length, then one token at a time: each step's output
    equals the full forward's at that position; the cache keeps its size."""
    model, flax_model, _ = pair
    if not hasattr(flax_model, "prepare_inputs_for_generation"):
        pytest.skip("decoding goes through the LM head model")
    ids, mask, _ = batch(seq=12)
    prompt, steps, L = 8, 4, 16
    full_mask = mask.copy()
    expected = main(torch_out(model, ids, full_mask, np.where(mask == 0, 1, mask.cumsum(-1) - 1))).numpy()
    state = flax_model.prepare_inputs_for_generation(jnp.asarray(ids[:, :prompt]), L,
                                                     attention_mask=jnp.asarray(mask[:, :prompt]))
    shapes = jax.tree_util.tree_map(jnp.shape, state["past_key_values"])
    out = flax_model(ids[:, :prompt], **state)
    real = mask[:, :prompt].astype(bool)
    close(np.asarray(out.logits)[real], expected[:, :prompt][real], "prompt")
    state = flax_model.update_inputs_for_generation(out, state)

    @jax.jit
    def step(token, cache, positions, attention_mask):
        out = flax_model(token, attention_mask=attention_mask, position_ids=positions, past_key_values=cache)
        return out.logits, out.past_key_values

    for i in range(prompt, prompt + steps):
        logits, cache = step(ids[:, i:i + 1], state["past_key_values"], state["position_ids"],
                             state["attention_mask"])
        close(logits[:, 0], expected[:, i], f"step {i}")
        assert jax.tree_util.tree_map(jnp.shape, cache) == shapes
        state = flax_model.update_inputs_for_generation(type(out)(logits=logits, past_key_values=cache), state)


def test_cache_layout_is_4x(pair):
    _, flax_model, _ = pair
    cache = flax_model.init_cache(3, 10)
    flat = {"/".join(k): v.shape for k, v in flatten_dict(cache).items()}
    prefix = "transformer/" if isinstance(flax_model, FlaxGPT2LMHeadModel) else ""
    expected = {}
    for i in range(TINY["n_layer"]):
        base = f"{prefix}h/{i}/attn/"
        expected.update({base + "cached_key": (3, 10, 4, 8), base + "cached_value": (3, 10, 4, 8),
                         base + "cache_index": ()})
    assert flat == expected


def test_parameter_tree_is_4x(pair):
    _, flax_model, _ = pair
    flat = {"/".join(k): v.shape for k, v in flatten_dict(flax_model.params).items()}
    lm = isinstance(flax_model, FlaxGPT2LMHeadModel)
    p = "transformer/" if lm else ""
    C, I = TINY["n_embd"], 4 * TINY["n_embd"]
    expected = {f"{p}wte/embedding": (V, C), f"{p}wpe/embedding": (TINY["n_positions"], C),
                f"{p}ln_f/scale": (C,), f"{p}ln_f/bias": (C,)}
    for i in range(TINY["n_layer"]):
        h = f"{p}h/{i}/"
        expected.update({
            h + "ln_1/scale": (C,), h + "ln_1/bias": (C,), h + "ln_2/scale": (C,), h + "ln_2/bias": (C,),
            h + "attn/c_attn/kernel": (3 * C, C), h + "attn/c_attn/bias": (3 * C,),  # Conv1D: (out, in)
            h + "attn/c_proj/kernel": (C, C), h + "attn/c_proj/bias": (C,),
            h + "mlp/c_fc/kernel": (I, C), h + "mlp/c_fc/bias": (I,),
            h + "mlp/c_proj/kernel": (C, I), h + "mlp/c_proj/bias": (C,),
        })
    if lm and not flax_model.config.tie_word_embeddings:
        expected["lm_head/kernel"] = (C, V)
    assert flat == expected


def test_flax_save_loads_in_pytorch(pair, tmp_path):
    """Our default save (PyTorch-layout safetensors) loads in the PyTorch class, outputs equal."""
    model, flax_model, _ = pair
    flax_model.save_pretrained(tmp_path)
    torch_cls = type(model)
    reloaded = reload_in_pytorch(model, tmp_path)
    ids, mask, positions = batch()
    real = mask.astype(bool)
    close(main(torch_out(reloaded.eval(), ids, mask, positions)).numpy()[real],
          main(torch_out(model, ids, mask, positions)).numpy()[real])
    state = load_file(tmp_path / "model.safetensors")
    assert state["h.0.attn.c_attn.weight" if torch_cls is GPT2Model else "transformer.h.0.attn.c_attn.weight"].shape \
        == (TINY["n_embd"], 3 * TINY["n_embd"])  # the PyTorch Conv1D layout, (in, out)


def test_msgpack_round_trip(pair, tmp_path):
    _, flax_model, _ = pair
    flax_model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "flax_model.msgpack").exists() and not (tmp_path / "model.safetensors").exists()
    again = type(flax_model).from_pretrained(tmp_path)
    for path, value in flatten_dict(flax_model.params).items():
        np.testing.assert_array_equal(np.asarray(flatten_dict(again.params)[path]), np.asarray(value))


def test_old_checkpoint_mask_buffers_are_ignored(pair, tmp_path):
    """Checkpoints older than 4.x's buffer cleanup hold `attn.bias` (n_positions x n_positions) and
    `attn.masked_bias`: read past, not reported."""
    model, flax_model, folder = pair
    state = load_file(folder / "model.safetensors")
    prefix = "transformer." if isinstance(model, GPT2LMHeadModel) else ""
    n = TINY["n_positions"]
    for i in range(TINY["n_layer"]):
        state[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((n, n), dtype=np.float32))[None, None]
        state[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    again, info = type(flax_model).from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == [] and info["missing_keys"] == []


def test_no_buffer_grows_with_positions_squared():
    """4.x builds an (n_positions, n_positions) causal mask in every attention layer; here masks come from the
    actual lengths: nothing in the traced forward (or in a cached step) is n_positions^2 large."""
    n = 8192
    config = GPT2Config(**{**TINY, "n_positions": n, "n_layer": 1})
    model = FlaxGPT2LMHeadModel(config)
    ids = jnp.ones((1, 4), dtype=jnp.int32)
    cache = model.init_cache(1, 8)

    def sizes(jaxpr):
        for var in jaxpr.constvars:
            yield int(np.prod(var.aval.shape))
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                yield int(np.prod(getattr(v.aval, "shape", ())))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from sizes(sub)

    for fn in (lambda p: model(ids, params=p).logits,
               lambda p: model(ids, params=p, past_key_values=cache).logits):
        closed = jax.make_jaxpr(fn)(model.params)
        biggest = max(max(sizes(closed.jaxpr)), max((int(np.size(c)) for c in closed.consts), default=0))
        assert biggest < n * n // 64, biggest


def test_gradient_checkpointing_same_outputs(pair):
    model, flax_model, folder = pair
    remat = type(flax_model).from_pretrained(folder)
    remat.enable_gradient_checkpointing()
    ids, mask, positions = batch()
    close(main(remat(ids, attention_mask=mask, position_ids=positions)),
          main(flax_model(ids, attention_mask=mask, position_ids=positions)))


def test_dropout_only_in_training(pair):
    _, flax_model, _ = pair
    ids = np.random.default_rng(5).integers(2, V, (2, 6))
    eval_out = main(flax_model(ids))
    a = main(flax_model(ids, train=True, dropout_rng=jax.random.PRNGKey(1)))
    b = main(flax_model(ids, train=True, dropout_rng=jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(eval_out))
