"""The Flax T5 classes: outputs equal our PyTorch classes on the same checkpoint (fp32, atol 1e-5) with padded
encoder and decoder masks and relative positions far enough apart to reach the logarithmic buckets; `encode` /
`decode` equal the full call; step-by-step decoding through the fixed-size cache equals the full decoder forward,
also jit-compiled; the parameter and cache trees are 4.x's; saves load both ways; both config dialects of the
untied head (4.x's tie_word_embeddings=False, 5.x's scale_decoder_outputs=False) read the same.

Checkpoints are written by our PyTorch classes (every parameter perturbed so that a weight read into the wrong place
shows) and read by the Flax classes through `from_pretrained`.
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

from pretrained.models import t5  # noqa: E402

from flax_tf_common import close, msgpack_round_trip, reload_in_pytorch  # noqa: E402

V, C, D, H, F = 99, 32, 8, 4, 37
BASE = dict(vocab_size=V, d_model=C, d_kv=D, d_ff=F, num_layers=2, num_heads=H, relative_attention_num_buckets=8,
            relative_attention_max_distance=20)
CONFIGS = {
    "t5": {},  # the original: relu, head tied to `shared`, decoder outputs rescaled
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_decoder_layers=3),
}
CASES = [("t5", "Model"), ("t5", "ForConditionalGeneration"), ("t5", "EncoderModel"),
         ("v1_1", "ForConditionalGeneration")]
E, T = 30, 25  # encoder / decoder tokens: distances up to 29 > max_distance 20


def perturb(model):
    """Noise on every parameter, relative (T5 scales nothing in attention: its weights keep their sizes), so that
    the norms leave their ones and a weight read into the wrong place shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0 + 0.2 * torch.randn_like(p))


def build(config_name, task, folder, **extra):
    torch.manual_seed(0)
    model = getattr(t5, "T5" + task)(t5.T5Config(**BASE, **CONFIGS[config_name], **extra)).eval()
    perturb(model)
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is not model.shared.weight:
        with torch.no_grad():  # an untied head starts at std 1.0: logits O(10), where 1e-5 is fp32's last digit
            head.weight.mul_(0.1)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def pair(request, tmp_path_factory):
    """(PyTorch model, Flax model loaded from its save, folder)."""
    config_name, task = request.param
    folder = tmp_path_factory.mktemp(f"t5-{config_name}-{task}")
    model = build(config_name, task, folder)
    flax_model, info = getattr(t5, "FlaxT5" + task).from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    return model, flax_model, folder


def batch(seed=1):
    """Encoder ids (2, E), the second row padded after 18; decoder ids (2, T), the second row padded after 20."""
    g = np.random.default_rng(seed)
    ids, dec = g.integers(2, V, (2, E)), g.integers(2, V, (2, T))
    mask, dmask = np.ones((2, E), dtype=np.int64), np.ones((2, T), dtype=np.int64)
    mask[1, 18:] = 0
    dmask[1, 20:] = 0
    return ids, mask, dec, dmask


def torch_out(model, ids, mask, dec=None, dmask=None, **kw):
    t = lambda a: None if a is None else torch.tensor(a)  # noqa: E731
    extra = {} if dec is None else dict(decoder_input_ids=t(dec), decoder_attention_mask=t(dmask), use_cache=False)
    with torch.no_grad():
        return model(t(ids), attention_mask=t(mask), **extra, **kw)


def is_encoder(flax_model) -> bool:
    return isinstance(flax_model, t5.FlaxT5EncoderModel)


def test_parity_padded_batch(pair):
    model, flax_model, _ = pair
    ids, mask, dec, dmask = batch()
    if is_encoder(flax_model):
        expected = torch_out(model, ids, mask, output_hidden_states=True, output_attentions=True)
        got = flax_model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        pairs = {"last_hidden_state": (got.last_hidden_state, expected.last_hidden_state)}
        seqs = {"hidden_states": (got.hidden_states, expected.hidden_states),
                "attentions": (got.attentions, expected.attentions)}
    else:
        expected = torch_out(model, ids, mask, dec, dmask, output_hidden_states=True, output_attentions=True)
        got = flax_model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask,
                         output_hidden_states=True, output_attentions=True)
        main = "logits" if hasattr(expected, "logits") else "last_hidden_state"
        pairs = {main: (getattr(got, main), getattr(expected, main)),
                 "encoder_last_hidden_state": (got.encoder_last_hidden_state, expected.encoder_last_hidden_state)}
        seqs = {name: (getattr(got, name), getattr(expected, name)) for name in (
            "decoder_hidden_states", "decoder_attentions", "cross_attentions", "encoder_hidden_states",
            "encoder_attentions")}
    for name, (a, b) in pairs.items():
        close(a, b.numpy(), name)
    for name, (a, b) in seqs.items():
        assert a is not None and len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y.numpy(), f"{name}[{i}]")


def test_tuple_output_and_default_masks(pair):
    model, flax_model, _ = pair
    ids, _, dec, _ = batch(seed=2)
    if is_encoder(flax_model):
        expected = [torch_out(model, ids, None).last_hidden_state.numpy()]
        got = flax_model(ids, return_dict=False)
    else:
        with torch.no_grad():
            out = model(torch.tensor(ids), decoder_input_ids=torch.tensor(dec), use_cache=False)
        expected = [v.numpy() for v in out.to_tuple()]
        got = flax_model(ids, decoder_input_ids=dec, return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(expected)
    for a, b in zip(got, expected):
        close(a, b)


def test_encode_decode_equal_the_full_call(pair):
    _, flax_model, _ = pair
    if is_encoder(flax_model):
        pytest.skip("the encoder model has no decoder")
    ids, mask, dec, dmask = batch()
    full = flax_model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
    encoded = flax_model.encode(ids, attention_mask=mask)
    close(encoded.last_hidden_state, full.encoder_last_hidden_state)
    decoded = flax_model.decode(dec, encoded, encoder_attention_mask=mask, decoder_attention_mask=dmask)
    main = "logits" if hasattr(full, "logits") else "last_hidden_state"
    close(getattr(decoded, main), getattr(full, main))
    assert decoded.past_key_values is None


def test_cached_decoding_equals_the_full_decoder(pair):
    """A prefix of 5 decoder tokens through a fresh cache, then one token per jit-compiled step: each output equals
    the full decoder forward's at that position (relative position bias from the cache's index), and the cache
    keeps its max_length size."""
    model, flax_model, _ = pair
    if is_encoder(flax_model):
        pytest.skip("the encoder model has no decoder")
    ids, mask, dec, _ = batch()
    expected = torch_out(model, ids, mask, dec, np.ones_like(dec))
    main = "logits" if hasattr(expected, "logits") else "last_hidden_state"
    expected = getattr(expected, main).numpy()
    encoded = flax_model.encode(ids, attention_mask=mask)
    L = T + 3
    cache = flax_model.init_cache(2, L, encoded)
    shapes = jax.tree_util.tree_map(jnp.shape, cache)
    out = flax_model.decode(dec[:, :5], encoded, encoder_attention_mask=mask, past_key_values=cache)
    close(getattr(out, main), expected[:, :5], "prefix")
    cache = out.past_key_values

    @jax.jit
    def step(token, cache):
        out = flax_model.decode(token, encoded, encoder_attention_mask=mask,
                                decoder_attention_mask=jnp.ones((2, L), dtype=jnp.int32), past_key_values=cache)
        return getattr(out, main), out.past_key_values

    for i in range(5, T):
        value, cache = step(dec[:, i:i + 1], cache)
        close(value[:, 0], expected[:, i], f"step {i}")
        assert jax.tree_util.tree_map(jnp.shape, cache) == shapes


def test_generation_hooks(pair):
    """4.x's prepare/update_inputs_for_generation: a cache of max_length and the decoder mask laid over it."""
    _, flax_model, _ = pair
    if not isinstance(flax_model, t5.FlaxT5ForConditionalGeneration):
        pytest.skip("only the conditional-generation model generates")
    ids, mask, _, _ = batch()
    encoded = flax_model.encode(ids, attention_mask=mask)
    state = flax_model.prepare_inputs_for_generation(jnp.zeros((2, 1), jnp.int32), 12, attention_mask=mask,
                                                     encoder_outputs=encoded)
    assert state["decoder_attention_mask"].shape == (2, 12)
    out = flax_model.decode(jnp.zeros((2, 1), jnp.int32), state["encoder_outputs"],
                            encoder_attention_mask=state["encoder_attention_mask"],
                            decoder_attention_mask=state["decoder_attention_mask"],
                            past_key_values=state["past_key_values"])
    state = flax_model.update_inputs_for_generation(out, state)
    assert state["past_key_values"] is out.past_key_values


def test_cache_layout_is_4x(pair):
    _, flax_model, _ = pair
    if is_encoder(flax_model):
        pytest.skip("the encoder model has no decoder")
    encoded = flax_model.encode(np.ones((3, 4), dtype=np.int32))
    flat = {"/".join(k): v.shape for k, v in flatten_dict(flax_model.init_cache(3, 10, encoded)).items()}
    expected = {}
    for i in range(flax_model.config.num_decoder_layers):
        a = f"decoder/block/{i}/layer/0/SelfAttention/"
        expected.update({a + "cached_key": (3, 10, H, D), a + "cached_value": (3, 10, H, D), a + "cache_index": ()})
    assert flat == expected


def test_parameter_tree_is_4x(pair):
    _, flax_model, _ = pair
    cfg = flax_model.config
    flat = {"/".join(k): v.shape for k, v in flatten_dict(flax_model.params).items()}
    inner = H * D
    ff = {"wi_0/kernel": (C, F), "wi_1/kernel": (C, F)} if cfg.is_gated_act else {"wi/kernel": (C, F)}
    ff["wo/kernel"] = (F, C)
    expected = {"shared/embedding": (V, C)}
    stacks = [("encoder", cfg.num_layers)]
    if not is_encoder(flax_model):
        stacks.append(("decoder", cfg.num_decoder_layers))
    for stack, n in stacks:
        expected[f"{stack}/final_layer_norm/weight"] = (C,)
        for i in range(n):
            b = f"{stack}/block/{i}/layer/"
            attention = {"layer_norm/weight": (C,), **{f"SelfAttention/{p}/kernel": (C, inner) for p in "qkv"},
                         "SelfAttention/o/kernel": (inner, C)}
            expected.update({b + "0/" + k: v for k, v in attention.items()})
            if i == 0:
                expected[b + "0/SelfAttention/relative_attention_bias/embedding"] = (8, H)
            last = 1
            if stack == "decoder":
                expected.update({b + "1/" + k.replace("SelfAttention", "EncDecAttention"): v
                                 for k, v in attention.items()})
                last = 2
            expected[b + f"{last}/layer_norm/weight"] = (C,)
            expected.update({b + f"{last}/DenseReluDense/{k}": v for k, v in ff.items()})
    if isinstance(flax_model, t5.FlaxT5ForConditionalGeneration) and not cfg.tie_word_embeddings:
        expected["lm_head/kernel"] = (C, V)
    assert flat == expected


def test_flax_save_loads_in_pytorch(pair, tmp_path):
    model, flax_model, _ = pair
    flax_model.save_pretrained(tmp_path)
    reloaded = reload_in_pytorch(model, tmp_path)
    ids, mask, dec, dmask = batch()
    args = (ids, mask) if is_encoder(flax_model) else (ids, mask, dec, dmask)
    close(torch_out(reloaded.eval(), *args)[0].numpy(), torch_out(model, *args)[0].numpy())


def test_msgpack_round_trip(pair, tmp_path):
    msgpack_round_trip(pair[1], tmp_path)


def test_encoder_model_reads_a_full_checkpoint(tmp_path):
    """T5EncoderModel takes the encoder half of a ForConditionalGeneration checkpoint: the decoder and the head are
    read past, not reported; the unused cross-attention table of old checkpoints is ignored too."""
    model = build("v1_1", "ForConditionalGeneration", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = np.zeros((8, H), np.float32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    encoder, info = t5.FlaxT5EncoderModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    full, info = t5.FlaxT5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask, _, _ = batch()
    close(encoder(ids, attention_mask=mask).last_hidden_state,
          model.encoder(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.detach())


def test_5x_dialect_untied_head(tmp_path):
    """transformers 5 writes tie_word_embeddings=True and scale_decoder_outputs=False for an untied head (with
    lm_head.weight stored): the Flax class reads it as the untied, unscaled head, as the PyTorch class does."""
    model = build("v1_1", "ForConditionalGeneration", tmp_path)
    config = t5.T5Config.from_pretrained(tmp_path)
    config.tie_word_embeddings, config.scale_decoder_outputs = True, False
    config.save_pretrained(tmp_path)
    assert "lm_head.weight" in load_file(tmp_path / "model.safetensors")
    flax_model, info = t5.FlaxT5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert "lm_head" in flax_model.params
    ids, mask, dec, dmask = batch()
    expected = torch_out(model, ids, mask, dec, dmask).logits.numpy()
    close(flax_model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask).logits, expected)
    reread = t5.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()  # the PyTorch class agrees
    close(torch_out(reread, ids, mask, dec, dmask).logits.numpy(), expected)


def test_gradient_checkpointing_and_dropout(pair):
    _, flax_model, folder = pair
    ids, mask, dec, dmask = batch()
    kw = {} if is_encoder(flax_model) else dict(decoder_input_ids=dec, decoder_attention_mask=dmask)
    evaluated = np.asarray(flax_model(ids, attention_mask=mask, **kw)[0])
    remat = type(flax_model).from_pretrained(folder, gradient_checkpointing=True)
    close(remat(ids, attention_mask=mask, **kw)[0], evaluated)
    a = flax_model(ids, attention_mask=mask, train=True, dropout_rng=jax.random.PRNGKey(1), **kw)[0]
    b = flax_model(ids, attention_mask=mask, train=True, dropout_rng=jax.random.PRNGKey(1), **kw)[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), evaluated)
