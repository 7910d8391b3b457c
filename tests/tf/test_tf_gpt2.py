"""The TensorFlow GPT-2 classes: outputs equal our PyTorch classes on the same checkpoint (fp32, atol 1e-5) with
right and left padding, segment ids, the tied (and untied) head and the loss; the growing cache and the fixed-size
cache (one XLA-compiled step reused for every position) equal the full forward; weight names and layouts are
4.57's (Conv1D weights (in, out) as they are, biases (1, out)); saves load both ways; resize_token_embeddings.

Checkpoints are written by our PyTorch classes (initializer_range 0.2 and noise on every parameter) and read by the
TF classes through `from_pretrained`.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install pretrained[tf])")
from safetensors.numpy import load_file, save_file  # noqa: E402

from pretrained.models import gpt2  # noqa: E402

from flax_tf_common import CLEAN, assert_h5_round_trip, close, pair_fixture, reload_in_pytorch, torch_call  # noqa

V, C, L, H, P = 99, 32, 2, 4, 64
TINY = dict(vocab_size=V, n_embd=C, n_layer=L, n_head=H, n_positions=P, initializer_range=0.2)
CASES = [("Model", {}), ("LMHeadModel", {}), ("LMHeadModel", {"tie_word_embeddings": False})]


pair = pair_fixture(gpt2, "GPT2", lambda **extra: gpt2.GPT2Config(**TINY, **extra), CASES, "TF", "tf-gpt2")


def batch(seed=1):
    """Two rows of 9 tokens, the second right-padded by 3."""
    g = np.random.default_rng(seed)
    ids = g.integers(2, V, (2, 9)).astype(np.int32)
    mask = np.ones((2, 9), dtype=np.int32)
    mask[1, 6:] = 0
    return ids, mask


torch_out = torch_call


def main_tensor(out):
    return out.logits if "logits" in out.keys() else out.last_hidden_state


def main(out):
    return np.asarray(main_tensor(out))


def test_parity_padded_batch(pair):
    model, tf_model, _ = pair
    ids, mask = batch()
    expected = torch_out(model, ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    got = tf_model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    close(main(got), main(expected))
    assert len(got.hidden_states) == L + 1 and len(got.attentions) == L
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        close(a, b.numpy(), f"hidden state {i}")
    for i, (a, b) in enumerate(zip(got.attentions, expected.attentions)):
        close(a, b.numpy(), f"attentions {i}")
    segments = np.random.default_rng(4).integers(0, 3, ids.shape).astype(np.int32)  # embedded with wte
    close(main(tf_model(ids, attention_mask=mask, token_type_ids=segments)),
          main(torch_out(model, ids, attention_mask=mask, token_type_ids=segments)))


def test_left_padding_with_positions(pair):
    """A left-padded row with positions counting real tokens: the real positions equal the unpadded row's."""
    model, tf_model, _ = pair
    ids, _ = batch(seed=2)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    got = main(tf_model(ids, attention_mask=mask, position_ids=positions))
    expected = main(torch_out(model, ids, attention_mask=mask, position_ids=positions))
    close(got[0], expected[0])
    close(got[1, 3:], expected[1, 3:])  # a padding query sees no key at all: nothing defined to compare
    close(got[1, 3:], main(tf_model(ids[1:, 3:]))[0])


def test_defaults_and_tuple_output(pair):
    model, tf_model, _ = pair
    ids = np.random.default_rng(2).integers(2, V, (1, 5)).astype(np.int32)
    got = tf_model(ids, return_dict=False, use_cache=False)
    expected = torch_out(model, ids, return_dict=False, use_cache=False)
    assert isinstance(got, tuple) and len(got) == len(expected) == 1
    close(got[0], expected[0].numpy())


def test_growing_cache_equals_full_forward(pair):
    """Prompt with use_cache, then one token at a time appended to the returned cache (4.x's TF cache)."""
    _, tf_model, _ = pair
    ids, _ = batch(seed=3)
    full = main(tf_model(ids, use_cache=False))
    out = tf_model(ids[:, :5], use_cache=True)
    assert len(out.past_key_values) == L and tuple(out.past_key_values[0][0].shape) == (2, H, 5, C // H)
    steps = [main(out)]
    for t in range(5, 9):
        out = tf_model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(main(out))
    close(np.concatenate(steps, axis=1), full)


def test_fixed_cache_one_compiled_step(pair):
    """A fixed-size cache: the prompt, then each token through the same XLA-compiled step (shapes never change),
    with the right-padded mask covering the whole cache."""
    _, tf_model, _ = pair
    ids, mask = batch(seed=4)
    full = main(tf_model(ids, attention_mask=mask, use_cache=False))
    S = 12
    cache_mask = np.concatenate([mask, np.ones((2, S - 9), np.int32)], axis=1)
    cache = tf_model.init_cache(2, S)
    assert tuple(cache[0][0].shape) == (2, H, S, C // H)
    out = tf_model(ids[:, :4], attention_mask=cache_mask, past_key_values=cache, cache_position=tf.range(4),
                   use_cache=True)
    steps = [main(out)]

    @tf.function(jit_compile=True)
    def step(token, cache, at):
        o = tf_model(token, attention_mask=cache_mask, past_key_values=cache, cache_position=at[None],
                     use_cache=True)
        return main_tensor(o), o.past_key_values

    cache = out.past_key_values
    for t in range(4, 9):
        logits, cache = step(ids[:, t:t + 1], cache, tf.constant(t, tf.int32))
        steps.append(np.asarray(logits))
    assert step.experimental_get_tracing_count() == 1
    got = np.concatenate(steps, axis=1)
    close(got[0], full[0])
    close(got[1, :6], full[1, :6])  # the padded positions of row 1 attend differently (nothing to compare)


def test_weight_names_and_layouts_are_4x(pair):
    model, tf_model, _ = pair
    names = {w.path.split("/", 1)[1]: tuple(w.shape) for w in tf_model.weights}
    expected = {"transformer/wte/embeddings": (V, C), "transformer/wpe/embeddings": (P, C),
                "transformer/ln_f/gamma": (C,), "transformer/ln_f/beta": (C,)}
    for i in range(L):
        h = f"transformer/h_._{i}/"
        expected.update({h + "ln_1/gamma": (C,), h + "ln_1/beta": (C,), h + "ln_2/gamma": (C,),
                         h + "ln_2/beta": (C,), h + "attn/c_attn/weight": (C, 3 * C),
                         h + "attn/c_attn/bias": (1, 3 * C),
                         h + "attn/c_proj/weight": (C, C), h + "attn/c_proj/bias": (1, C),
                         h + "mlp/c_fc/weight": (C, 4 * C), h + "mlp/c_fc/bias": (1, 4 * C),
                         h + "mlp/c_proj/weight": (4 * C, C), h + "mlp/c_proj/bias": (1, C)})
    if not tf_model.config.tie_word_embeddings:
        expected["lm_head/kernel"] = (C, V)
    assert names == expected
    model_name = "tfgpt2_model" if type(tf_model).__name__ == "TFGPT2Model" else "tfgpt2lm_head_model"
    assert all(w.path.startswith(model_name) for w in tf_model.weights)
    prefix = "" if isinstance(model, gpt2.GPT2Model) else "transformer."
    by_path = {w.path.split("/", 1)[1]: w.numpy() for w in tf_model.weights}
    np.testing.assert_array_equal(by_path["transformer/h_._0/attn/c_attn/weight"],
                                  model.state_dict()[prefix + "h.0.attn.c_attn.weight"].numpy())  # not transposed
    np.testing.assert_array_equal(by_path["transformer/h_._1/mlp/c_fc/bias"][0],
                                  model.state_dict()[prefix + "h.1.mlp.c_fc.bias"].numpy())
    assert tf_model.num_parameters() == model.num_parameters()


def test_tf_save_loads_in_pytorch_and_h5_round_trip(pair, tmp_path):
    model, tf_model, _ = pair
    tf_model.save_pretrained(tmp_path / "st")
    reloaded = reload_in_pytorch(model, tmp_path / "st")
    ids, mask = batch()
    close(main(torch_out(reloaded.eval(), ids, attention_mask=mask)), main(torch_out(model, ids, attention_mask=mask)))
    assert_h5_round_trip(tf_model, tmp_path / "h5")


def test_old_mask_buffers_are_ignored(pair, tmp_path):
    """Checkpoints older than 4.x's non-persistent buffers carry attn.bias / attn.masked_bias: read and dropped."""
    _, tf_model, folder = pair
    state = load_file(folder / "model.safetensors")
    prefix = "transformer." if any(k.startswith("transformer.") for k in state) else ""
    for i in range(L):
        state[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((1, 1, P, P), np.uint8))
        state[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    again, info = type(tf_model).from_pretrained(tmp_path, output_loading_info=True)
    assert info == CLEAN
    ids, mask = batch()
    close(main(again(ids, attention_mask=mask)), main(tf_model(ids, attention_mask=mask)))


def test_loss_equals_pytorch(pair):
    model, tf_model, _ = pair
    if not hasattr(tf_model, "prepare_inputs_for_generation"):
        pytest.skip("no head")
    ids, mask = batch()
    labels = np.where(mask == 1, ids, -100)
    expected = torch_out(model, ids, attention_mask=mask, labels=labels).loss
    close(np.reshape(tf_model(ids, attention_mask=mask, labels=labels.astype(np.int32)).loss, ()), expected.numpy())
    assert tf_model.can_generate()


def test_resize_token_embeddings(pair, tmp_path):
    model, tf_model, folder = pair
    if not hasattr(tf_model, "prepare_inputs_for_generation"):
        pytest.skip("the head follows the table: checked on the LM head classes")
    tf_model = type(tf_model).from_pretrained(folder)
    ids, mask = batch()
    before = main(tf_model(ids, attention_mask=mask))
    table = tf_model.get_input_embeddings().embeddings.numpy()
    tf_model.resize_token_embeddings(V + 5, pad_to_multiple_of=8)
    assert tf_model.config.vocab_size == 104
    np.testing.assert_array_equal(tf_model.get_input_embeddings().embeddings.numpy()[:V], table)
    after = main(tf_model(ids, attention_mask=mask))
    assert after.shape == (2, 9, 104)
    close(after[..., :V], before)
    tf_model.save_pretrained(tmp_path)
    pt = type(model).from_pretrained(tmp_path).eval()
    close(after, main(torch_out(pt, ids, attention_mask=mask)))


def test_bad_inputs():
    from pretrained.errors import ConfigError

    model = gpt2.TFGPT2LMHeadModel.from_config(gpt2.GPT2Config(**TINY))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(attention_mask=np.ones((1, 3), np.int32))
    with pytest.raises(ConfigError, match="head_mask"):
        model(np.ones((1, 3), np.int32), head_mask=np.ones((L, H), np.float32))
    with pytest.raises(ValueError, match="n_positions"):
        model.init_cache(1, P + 1)
