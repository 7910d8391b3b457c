"""The Llama-family TensorFlow classes (Llama, Mistral, Qwen2, Gemma) against our PyTorch classes on the same
checkpoint: logits, hidden states and attentions (atol 1e-5, fp32), the base model, sequence classification (with
its loss), a left-padded batch, the fixed-size cache step by step under one XLA compilation, the growing cache,
sliding windows, rope scaling, 4.x's weight names, and no buffer that grows with max_position_embeddings.

Each family gets one tiny checkpoint written by our PyTorch class (initializer_range 0.2: sharp attention, so a wrong
position, mask or window moves the logits far more than the tolerance), read by both frameworks once per module.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install pretrained[tf])")
import torch  # noqa: E402

import pretrained  # noqa: E402
from pretrained import registry  # noqa: E402

from flax_tf_common import CLEAN, LLAMA_FAMILIES as FAMILIES, LLAMA_PREFIX as PREFIX  # noqa: E402
from flax_tf_common import assert_close as _close, llama_ids as _ids, torch_forward as _pt  # noqa: E402
from flax_tf_common import ROPE_CASES, assert_window_of_4, left_padded, llama_family, long_mistral_config  # noqa
from flax_tf_common import assert_left_padded_batch, assert_logits_and_states, rope_scaled_llama, window_config  # noqa


class Family:
    def __init__(self, model_type: str, folder) -> None:
        self.model_type, self.folder = model_type, folder
        self.pt, self.pt_base = llama_family(model_type, folder / "lm")
        torch.manual_seed(1)
        pretrained.AutoModelForSequenceClassification.from_config(
            registry.config_class(model_type)(**FAMILIES[model_type], num_labels=3)).save_pretrained(folder / "cls")
        self.tf = pretrained.TFAutoModelForCausalLM.from_pretrained(folder / "lm")
        self.tf_base = pretrained.TFAutoModel.from_pretrained(folder / "lm")


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request, tmp_path_factory) -> Family:
    return Family(request.param, tmp_path_factory.mktemp(f"tf-{request.param}"))


def test_classes_and_names(fam):
    prefix = PREFIX[fam.model_type]
    assert type(fam.tf).__name__ == f"TF{prefix}ForCausalLM" and type(fam.tf_base).__name__ == f"TF{prefix}Model"
    assert fam.tf.can_generate() and not fam.tf_base.can_generate()
    assert fam.tf.loading_info.as_dict() == CLEAN
    model_name = f"tf_{fam.model_type}_for_causal_lm"
    paths = {w.path.split("/", 1)[1]: tuple(w.shape) for w in fam.tf.weights}
    assert all(w.path.split("/")[0].startswith(model_name) for w in fam.tf.weights)
    layer = {p.split("/", 2)[2]: s for p, s in paths.items() if p.startswith("model/layers.0/")}
    expected = {"self_attn/q_proj/kernel", "self_attn/k_proj/kernel", "self_attn/v_proj/kernel",
                "self_attn/o_proj/kernel", "mlp/gate_proj/kernel", "mlp/up_proj/kernel", "mlp/down_proj/kernel",
                "input_layernorm/weight", "post_attention_layernorm/weight"}
    if fam.model_type == "qwen2":
        expected |= {"self_attn/q_proj/bias", "self_attn/k_proj/bias", "self_attn/v_proj/bias"}
    assert set(layer) == expected
    assert layer["mlp/down_proj/kernel"] == (37, 32)  # [in, out]
    assert paths["model/embed_tokens/embeddings"] == (99, 32) and paths["model/norm/weight"] == (32,)
    assert ("lm_head/kernel" in paths) == (fam.model_type != "gemma")  # Gemma's head is the tied embedding
    assert fam.tf.num_parameters() == sum(p.numel() for p in fam.pt.parameters())
    assert fam.tf_base.num_parameters() == sum(p.numel() for p in fam.pt_base.parameters())


def test_causal_lm_logits_equal_pytorch(fam):
    out = assert_logits_and_states(fam.tf, fam.pt)
    assert out.logits.dtype == tf.float32


def test_base_model_equals_pytorch(fam):
    ids = _ids(seed=2)
    _close(fam.tf_base(ids).last_hidden_state, _pt(fam.pt_base, ids).last_hidden_state)
    tup = fam.tf_base(ids, output_attentions=True, use_cache=False, return_dict=False)
    assert len(tup) == 2 and tuple(tup[1][0].shape) == (2, 4, 9, 9)  # (hidden, attentions): None fields left out
    weights = tup[1][0].numpy()
    assert np.allclose(weights.sum(-1), 1, atol=1e-5) and np.all(np.triu(weights[0, 0], 1) == 0)  # causal


def test_sequence_classification_equals_pytorch(fam):
    folder = fam.folder / "cls"
    pt = pretrained.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    model, info = pretrained.TFAutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == f"TF{PREFIX[fam.model_type]}ForSequenceClassification"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids = _ids(batch=3, seed=3)
    ids[0, 6:] = 0  # right padding: the last real token is read
    ids[1, :2] = 0  # left padding
    labels = np.array([0, 2, 1])
    ref = _pt(pt, ids, labels=labels)
    out = model(ids, labels=labels)
    _close(out.logits, ref.logits)
    assert out.logits.shape == (3, 3) and out.loss.shape == (1,)
    _close(out.loss[0], ref.loss, atol=1e-5)


def test_left_padded_batch(fam):
    assert_left_padded_batch(fam.tf, fam.pt)


def test_fixed_cache_step_by_step_compiles_once(fam):
    """Prefill a left-padded prompt into a fixed-size cache, then one token at a time through one step compiled with
    XLA: every step's logits equal the PyTorch full forward's at that position, and the step is traced once."""
    ids, mask, positions = left_padded(seed=4, row=1, pad=2)
    ref = _pt(fam.pt, ids, attention_mask=mask, position_ids=positions).logits.numpy()
    B, L, P = 2, 11, 5  # cache of 11 slots, a 5-token prompt
    cache = fam.tf.init_cache(B, L)
    assert len(cache) == 2 and tuple(cache[0][0].shape) == (B, 2, L, 8)
    full_mask = np.concatenate([mask, np.ones((B, L - ids.shape[1]), mask.dtype)], axis=1)
    out = fam.tf(ids[:, :P], attention_mask=full_mask, position_ids=positions[:, :P], past_key_values=cache,
                 cache_position=np.arange(P, dtype=np.int32))
    _close(out.logits.numpy()[mask[:, :P] == 1], ref[:, :P][mask[:, :P] == 1])
    traces = []

    @tf.function(jit_compile=True)
    def step(token, cache, position, at):
        traces.append(1)
        o = fam.tf(token, attention_mask=full_mask, position_ids=position, past_key_values=cache,
                   cache_position=at, use_cache=True)
        return o.logits, o.past_key_values

    cache = out.past_key_values
    for t in range(P, ids.shape[1]):
        logits, cache = step(tf.constant(ids[:, t:t + 1]), cache, tf.constant(positions[:, t:t + 1]),
                             tf.constant([t], tf.int32))
        _close(logits[:, 0], ref[:, t])
    assert len(traces) == 1  # one trace, one compilation, for every position
    assert tuple(cache[1][0].shape) == (B, 2, L, 8)  # never grows


def test_growing_cache(fam):
    """4.x's cache: a call without `cache_position` appends its tokens; positions continue after the cache."""
    ids = _ids(seq=7, seed=5)
    ref = fam.tf(ids).logits.numpy()
    out = fam.tf(ids[:, :4], use_cache=True)
    assert tuple(out.past_key_values[0][0].shape) == (2, 2, 4, 8)
    out = fam.tf(ids[:, 4:], past_key_values=out.past_key_values)
    _close(out.logits, ref[:, 4:])
    assert tuple(out.past_key_values[0][1].shape) == (2, 2, 7, 8)


@pytest.mark.parametrize("rope", ROPE_CASES)
def test_rope_scaling_equals_pytorch(tmp_path, rope):
    ids, expected = rope_scaled_llama(tmp_path, rope)
    _close(pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path)(ids).logits, expected)


def test_sliding_window_is_pytorchs():
    """Query q sees keys q - W < k <= q: with W=4, position 8 attends to 5..8."""
    model = pretrained.TFMistralModel.from_config(window_config())
    assert_window_of_4(model(_ids(seq=9), output_attentions=True).attentions[0].numpy()[0, 0])


def test_no_buffer_grows_with_max_positions():
    """A 131072-position Mistral builds, runs and caches in memory proportional to what is asked."""
    model = pretrained.TFMistralForCausalLM.from_config(long_mistral_config())
    out = model(_ids(seq=5), past_key_values=model.init_cache(2, 8), cache_position=np.arange(5, dtype=np.int32))
    assert tuple(out.logits.shape) == (2, 5, 99)
    sizes = [int(np.prod(t.shape)) for t in tf.nest.flatten(out.past_key_values)] + \
        [int(np.prod(w.shape)) for w in model.weights]
    assert max(sizes) < 10_000


def test_inputs_embeds_and_dict_inputs(fam):
    ids = _ids(seed=6)
    ref = fam.tf(ids).logits
    table = fam.tf.get_input_embeddings().embeddings
    embeds = tf.gather(table, ids)
    if fam.model_type == "gemma":  # the scale applies to looked-up ids only, as in PyTorch
        embeds = embeds * 32**0.5
    _close(fam.tf(inputs_embeds=embeds).logits, ref)
    _close(fam.tf({"input_ids": ids, "attention_mask": np.ones_like(ids)}).logits, ref)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        fam.tf(input_ids=ids, inputs_embeds=embeds)


def test_bf16_computation(fam):
    cls = registry.model_class(type(fam.tf.config), "AutoModelForCausalLM", "tf")
    model = cls.from_pretrained(fam.folder / "lm", dtype="bfloat16")
    assert {w.dtype for w in model.weights} == {"bfloat16"}
    logits = model(_ids(seed=9)).logits
    assert logits.dtype == tf.float32  # 4.x's TF heads hand out float32 logits
    _close(logits, fam.tf(_ids(seed=9)).logits, atol=0.5)
