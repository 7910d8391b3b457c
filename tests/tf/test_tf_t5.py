"""The TensorFlow T5 classes: outputs equal our PyTorch classes on the same checkpoint (fp32, atol 1e-5) with padded
encoder and decoder inputs (relative position buckets past `relative_attention_max_distance`), the original T5 (tied,
rescaled head, relu) and T5 v1.1 (untied head, gated-gelu), the encoder alone, labels (shifted right) and the loss;
encode/decode apart; the growing cache and the fixed-size cache (one XLA-compiled step, cross-attention keys and
values computed once) equal the full forward; weight names are 4.57's; saves load both ways;
resize_token_embeddings.

Checkpoints are written by our PyTorch classes (noise on every parameter) and read by the TF classes through
`from_pretrained`.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install pretrained[tf])")

from pretrained.models import t5  # noqa: E402
from pretrained.tf.outputs import TFBaseModelOutput  # noqa: E402

from flax_tf_common import CLEAN, assert_h5_round_trip, close, pair_fixture, reload_in_pytorch, torch_call  # noqa

V, C, D, F, L, H = 99, 32, 8, 37, 2, 4
# 8 buckets and a max distance of 6: 9-token inputs reach the exact, the logarithmic and the last bucket
TINY = dict(vocab_size=V, d_model=C, d_kv=D, d_ff=F, num_layers=L, num_heads=H, relative_attention_num_buckets=8,
            relative_attention_max_distance=6)
V11 = {"tie_word_embeddings": False, "feed_forward_proj": "gated-gelu"}
CASES = [("Model", {}), ("ForConditionalGeneration", {}), ("ForConditionalGeneration", V11), ("EncoderModel", {})]


pair = pair_fixture(t5, "T5", lambda **extra: t5.T5Config(**TINY, **extra), CASES, "TF", "tf-t5", variant="-v1.1")


def batch(seed=1):
    """Encoder: two rows of 9 tokens, the second right-padded by 3; decoder: 7 tokens, the first padded by 2."""
    g = np.random.default_rng(seed)
    ids = g.integers(2, V, (2, 9)).astype(np.int32)
    mask = np.ones((2, 9), np.int32)
    mask[1, 6:] = 0
    dec = g.integers(2, V, (2, 7)).astype(np.int32)
    dec_mask = np.ones((2, 7), np.int32)
    dec_mask[0, 5:] = 0
    return ids, mask, dec, dec_mask


torch_out = torch_call


def is_seq2seq(tf_model) -> bool:
    return not isinstance(tf_model, t5.TFT5EncoderModel)


def main(out):
    return np.asarray(out.logits if "logits" in out.keys() else out.last_hidden_state)


def test_parity_padded_batch(pair):
    model, tf_model, _ = pair
    ids, mask, dec, dec_mask = batch()
    kw = dict(input_ids=ids, attention_mask=mask)
    if is_seq2seq(tf_model):
        kw.update(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    expected = torch_out(model, **kw, output_hidden_states=True, output_attentions=True)
    got = tf_model(**kw, output_hidden_states=True, output_attentions=True)
    close(main(got), main(expected))
    tuples = [k for k, v in expected.items() if isinstance(v, tuple) and k != "cache"]
    assert tuples and all(k in got.keys() for k in tuples)
    for name in tuples:
        assert len(got[name]) == len(expected[name]), name
        for i, (a, b) in enumerate(zip(got[name], expected[name])):
            close(a, b.numpy(), f"{name} {i}")
    if is_seq2seq(tf_model):
        close(got.encoder_last_hidden_state, expected.encoder_last_hidden_state.numpy())


def test_defaults_and_tuple_output(pair):
    model, tf_model, _ = pair
    ids = np.random.default_rng(2).integers(2, V, (1, 5)).astype(np.int32)
    kw = dict(input_ids=ids)
    if is_seq2seq(tf_model):
        kw.update(decoder_input_ids=ids[:, :3], use_cache=False)
    got = tf_model(**kw, return_dict=False)
    expected = torch_out(model, **kw, return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(expected)
    for a, b in zip(got, expected):
        close(a, b.numpy())


def test_labels_and_loss(pair):
    """Labels alone: the decoder inputs are the labels shifted right (start token first, -100 -> pad)."""
    model, tf_model, _ = pair
    if not isinstance(tf_model, t5.TFT5ForConditionalGeneration):
        pytest.skip("no head")
    ids, mask, dec, _ = batch(seed=3)
    labels = dec.copy()
    labels[1, 5:] = -100
    expected = torch_out(model, input_ids=ids, attention_mask=mask, labels=labels)
    got = tf_model(ids, attention_mask=mask, labels=labels)
    close(main(got), main(expected))
    close(np.reshape(got.loss, ()), expected.loss.numpy())
    shifted = np.asarray(tf_model.prepare_decoder_input_ids_from_labels(labels))
    assert shifted[0, 0] == tf_model.config.decoder_start_token_id and (shifted[1, 6:] == 0).all()
    assert tf_model.can_generate()


def test_encode_then_decode(pair):
    """The encoder alone (`get_encoder()`), then the decoder given `encoder_outputs` (an output or a tuple)."""
    _, tf_model, _ = pair
    if not is_seq2seq(tf_model):
        pytest.skip("encoder only")
    ids, mask, dec, dec_mask = batch()
    whole = main(tf_model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask))
    encoded = tf_model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True)
    for given in (encoded, (encoded.last_hidden_state,)):
        close(main(tf_model(encoder_outputs=given, attention_mask=mask, decoder_input_ids=dec,
                            decoder_attention_mask=dec_mask)), whole)


def test_growing_cache_equals_full_forward(pair):
    """Decoder tokens one at a time against the returned cache: per layer (self k, self v, cross k, cross v)."""
    _, tf_model, _ = pair
    if not is_seq2seq(tf_model):
        pytest.skip("encoder only")
    ids, mask, dec, _ = batch(seed=4)
    full = main(tf_model(ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False))
    encoded = tf_model.get_encoder()(input_ids=ids, attention_mask=mask)
    out = tf_model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=dec[:, :3], use_cache=True)
    entry = out.past_key_values[0]
    assert len(out.past_key_values) == L and len(entry) == 4
    assert tuple(entry[0].shape) == (2, H, 3, D) and tuple(entry[2].shape) == (2, H, 9, D)
    steps = [main(out)]
    for t in range(3, 7):
        out = tf_model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=dec[:, t:t + 1],
                       past_key_values=out.past_key_values, use_cache=True)
        steps.append(main(out))
    close(np.concatenate(steps, axis=1), full)


@pytest.mark.parametrize("precomputed", [True, False], ids=["cross-once", "cross-each-step"])
def test_fixed_cache_one_compiled_step(pair, precomputed):
    """A fixed-size cache from init_cache (with the cross-attention keys and values computed once from
    `encoder_outputs`, or recomputed at each step), each token through the same XLA-compiled step, positions from
    `cache_position` (the relative position bias of a query counts from it)."""
    _, tf_model, _ = pair
    if not is_seq2seq(tf_model):
        pytest.skip("encoder only")
    ids, mask, dec, _ = batch(seed=5)
    full = main(tf_model(ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False))
    encoded = TFBaseModelOutput(last_hidden_state=tf_model.get_encoder()(input_ids=ids, attention_mask=mask)[0])
    cache = tf_model.init_cache(2, 10, encoder_outputs=encoded if precomputed else None)
    assert len(cache[0]) == (4 if precomputed else 2) and tuple(cache[0][0].shape) == (2, H, 10, D)
    out = tf_model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=dec[:, :3], past_key_values=cache,
                   cache_position=tf.range(3), use_cache=True)
    steps = [main(out)]

    @tf.function(jit_compile=True)
    def step(token, cache, at):
        o = tf_model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=token, past_key_values=cache,
                     cache_position=at[None], use_cache=True)
        return (o.logits if "logits" in o.keys() else o.last_hidden_state), o.past_key_values

    cache = out.past_key_values
    for t in range(3, 7):
        logits, cache = step(dec[:, t:t + 1], cache, tf.constant(t, tf.int32))
        steps.append(np.asarray(logits))
    assert step.experimental_get_tracing_count() == 1
    close(np.concatenate(steps, axis=1), full)


def test_weight_names_are_4x(pair):
    model, tf_model, _ = pair
    names = {w.path.split("/", 1)[1]: tuple(w.shape) for w in tf_model.weights}
    gated = tf_model.config.is_gated_act
    expected = {"shared/embeddings": (V, C)}
    stacks = ["encoder", "decoder"] if is_seq2seq(tf_model) else ["encoder"]
    for stack in stacks:
        expected[f"{stack}/final_layer_norm/weight"] = (C,)
        expected[f"{stack}/block_._0/layer_._0/SelfAttention/relative_attention_bias/embeddings"] = (8, H)
        for i in range(L):
            b = f"{stack}/block_._{i}/"
            attns = [("layer_._0", "SelfAttention")] + ([("layer_._1", "EncDecAttention")] if stack == "decoder"
                                                        else [])
            for layer, attn in attns:
                expected.update({f"{b}{layer}/{attn}/{n}/kernel": (C, H * D) for n in "qkv"})
                expected[f"{b}{layer}/{attn}/o/kernel"] = (H * D, C)
                expected[f"{b}{layer}/layer_norm/weight"] = (C,)
            ff = f"{b}layer_._{len(attns)}/"
            expected[ff + "layer_norm/weight"] = (C,)
            expected[ff + "DenseReluDense/wo/kernel"] = (F, C)
            for wi in (("wi_0", "wi_1") if gated else ("wi",)):
                expected[ff + f"DenseReluDense/{wi}/kernel"] = (C, F)
    if isinstance(tf_model, t5.TFT5ForConditionalGeneration) and not tf_model.config.tie_word_embeddings:
        expected["lm_head/kernel"] = (C, V)
    assert names == expected
    assert tf_model.num_parameters() == model.num_parameters()
    # each stack's layer lists the shared table too (4.x's h5 groups do)
    for stack in stacks:
        assert any(w.path.endswith("/shared/embeddings") for w in getattr(tf_model, stack).weights)


def test_tf_save_loads_in_pytorch_and_h5_round_trip(pair, tmp_path):
    model, tf_model, _ = pair
    tf_model.save_pretrained(tmp_path / "st")
    reloaded = reload_in_pytorch(model, tmp_path / "st")
    ids, mask, dec, dec_mask = batch()
    kw = dict(input_ids=ids, attention_mask=mask)
    if is_seq2seq(tf_model):
        kw.update(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    close(main(torch_out(reloaded.eval(), **kw)), main(torch_out(model, **kw)))
    assert_h5_round_trip(tf_model, tmp_path / "h5")


def test_encoder_model_reads_a_full_checkpoint(pair):
    """A T5ForConditionalGeneration checkpoint (safetensors, and the TF class's h5) loads into TFT5EncoderModel: the
    decoder and the head are read and dropped, not reported."""
    model, tf_model, folder = pair
    if not isinstance(tf_model, t5.TFT5ForConditionalGeneration):
        pytest.skip("needs a full checkpoint")
    encoder, info = t5.TFT5EncoderModel.from_pretrained(folder, output_loading_info=True)
    assert info == CLEAN
    ids, mask, _, _ = batch()
    close(encoder(ids, attention_mask=mask).last_hidden_state,
          torch_out(model.encoder, input_ids=ids, attention_mask=mask).last_hidden_state.numpy())


def test_resize_token_embeddings(pair, tmp_path):
    model, tf_model, folder = pair
    if not isinstance(tf_model, t5.TFT5ForConditionalGeneration):
        pytest.skip("the head follows the table: checked on the LM head class")
    tf_model = type(tf_model).from_pretrained(folder)
    ids, mask, dec, _ = batch()
    before = main(tf_model(ids, attention_mask=mask, decoder_input_ids=dec))
    table = tf_model.shared.embeddings.numpy()
    tf_model.resize_token_embeddings(V + 5, pad_to_multiple_of=8)
    assert tf_model.config.vocab_size == 104 and tuple(tf_model.shared.embeddings.shape) == (104, C)
    np.testing.assert_array_equal(tf_model.shared.embeddings.numpy()[:V], table)
    after = main(tf_model(ids, attention_mask=mask, decoder_input_ids=dec))
    assert after.shape == (2, 7, 104)
    close(after[..., :V], before)
    tf_model.save_pretrained(tmp_path)
    pt = type(model).from_pretrained(tmp_path).eval()
    close(after, main(torch_out(pt, input_ids=ids, attention_mask=mask, decoder_input_ids=dec)))


def test_bad_inputs():
    from pretrained.errors import ConfigError

    model = t5.TFT5ForConditionalGeneration.from_config(t5.T5Config(**TINY))
    ids = np.ones((1, 3), np.int32)
    with pytest.raises(ValueError, match="decoder_input_ids, decoder_inputs_embeds or labels"):
        model(ids)
    with pytest.raises(ConfigError, match="head_mask"):
        model(ids, decoder_input_ids=ids, head_mask=np.ones((L, H), np.float32))
    with pytest.raises(ValueError, match="encoder keeps no cache"):
        model.get_encoder()(input_ids=ids, use_cache=True)
