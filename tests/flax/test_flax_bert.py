"""The Flax BERT classes: outputs equal our PyTorch classes on the same checkpoint (fp32, atol 1e-5) with padding,
segment ids, head masks, the pooler and the tied MLM head; the parameter tree is 4.x's; saves load both ways; legacy
LayerNorm gamma/beta names and saved position_ids load.

Checkpoints are written by our PyTorch classes (initializer_range 0.2: sharp attention, so a wrong mask or position
moves the outputs far beyond the tolerance) and read by the Flax classes through `from_pretrained`.
"""

from __future__ import annotations

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="jax/flax not installed (pip install pretrained[flax])")
import jax  # noqa: E402
import torch  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from pretrained.models import bert  # noqa: E402

V, C, L, H, I = 99, 32, 2, 4, 37
TINY = dict(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H, intermediate_size=I,
            max_position_embeddings=64, type_vocab_size=3, pad_token_id=0, initializer_range=0.2)
TASKS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification"]
CASES = [(t, {}) for t in TASKS] + [("ForMaskedLM", {"tie_word_embeddings": False})]


def perturb(model):
    """Noise on every parameter: biases and norms leave their initial zeros and ones, so that a parameter read
    into the wrong place changes the outputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def close(actual, expected, what=""):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=1e-5, rtol=1e-5, err_msg=what)


def _id(case):
    return case[0] + ("-untied" if case[1] else "")


@pytest.fixture(scope="module", params=CASES, ids=_id)
def pair(request, tmp_path_factory):
    """(PyTorch model, Flax model loaded from its save, folder)."""
    task, extra = request.param
    torch.manual_seed(0)
    model = getattr(bert, "Bert" + task)(bert.BertConfig(**TINY, **extra)).eval()
    perturb(model)
    folder = tmp_path_factory.mktemp(f"bert-{_id(request.param)}")
    model.save_pretrained(folder)
    flax_model, info = getattr(bert, "FlaxBert" + task).from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    return model, flax_model, folder


def batch(seed=1):
    """Two rows of 9 tokens, the second right-padded by 3; segment ids 0/1/2."""
    g = np.random.default_rng(seed)
    ids = g.integers(2, V, (2, 9))
    mask = np.ones((2, 9), dtype=np.int64)
    mask[1, 6:] = 0
    segments = g.integers(0, 3, (2, 9))
    return ids, mask, segments


def torch_out(model, ids, mask=None, segments=None, **kw):
    t = lambda a: None if a is None else torch.tensor(a)  # noqa: E731
    with torch.no_grad():
        return model(t(ids), attention_mask=t(mask), token_type_ids=t(segments), **kw)


def outputs(out) -> dict:
    """The array fields of an output (logits, pooler_output, start/end logits, last hidden state)."""
    return {k: v for k, v in vars(out).items() if v is not None and not isinstance(v, tuple) and k != "loss"}


def test_parity_padded_batch_with_segments(pair):
    model, flax_model, _ = pair
    ids, mask, segments = batch()
    expected = torch_out(model, ids, mask, segments, output_hidden_states=True, output_attentions=True)
    got = flax_model(ids, attention_mask=mask, token_type_ids=segments, output_hidden_states=True,
                     output_attentions=True)
    want = outputs(expected)
    assert set(outputs(got)) == set(want)
    for name, value in want.items():
        close(getattr(got, name), value.numpy(), name)
    assert len(got.hidden_states) == L + 1 and len(got.attentions) == L
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        close(a, b.numpy(), f"hidden state {i}")
    for i, (a, b) in enumerate(zip(got.attentions, expected.attentions)):
        close(a, b.numpy(), f"attentions {i}")


def test_defaults_and_tuple_output(pair):
    """No mask, no segment ids, no positions: all-ones, zeros, 0..T-1; return_dict=False gives the tuple."""
    model, flax_model, _ = pair
    ids = np.random.default_rng(2).integers(2, V, (1, 5))
    expected = [v.numpy() for v in torch_out(model, ids).to_tuple()]
    got = flax_model(ids, return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(expected)
    for a, b in zip(got, expected):
        close(a, b)


def test_head_mask(pair):
    model, flax_model, _ = pair
    ids, mask, segments = batch(seed=3)
    head_mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=np.float32)
    expected = outputs(torch_out(model, ids, mask, segments, head_mask=torch.tensor(head_mask)))
    got = flax_model(ids, attention_mask=mask, token_type_ids=segments, head_mask=head_mask)
    for name, value in expected.items():
        close(getattr(got, name), value.numpy(), name)


def test_parameter_tree_is_4x(pair):
    _, flax_model, _ = pair
    flat = {"/".join(k): v.shape for k, v in flatten_dict(flax_model.params).items()}
    task = type(flax_model).__name__.removeprefix("FlaxBert")
    p = "" if task == "Model" else "bert/"
    expected = {f"{p}embeddings/word_embeddings/embedding": (V, C),
                f"{p}embeddings/position_embeddings/embedding": (64, C),
                f"{p}embeddings/token_type_embeddings/embedding": (3, C),
                f"{p}embeddings/LayerNorm/scale": (C,), f"{p}embeddings/LayerNorm/bias": (C,)}
    for i in range(L):
        a = f"{p}encoder/layer/{i}/"
        expected.update({
            **{a + f"attention/self/{n}/kernel": (C, C) for n in ("query", "key", "value")},
            **{a + f"attention/self/{n}/bias": (C,) for n in ("query", "key", "value")},
            a + "attention/output/dense/kernel": (C, C), a + "attention/output/dense/bias": (C,),
            a + "attention/output/LayerNorm/scale": (C,), a + "attention/output/LayerNorm/bias": (C,),
            a + "intermediate/dense/kernel": (C, I), a + "intermediate/dense/bias": (I,),
            a + "output/dense/kernel": (I, C), a + "output/dense/bias": (C,),
            a + "output/LayerNorm/scale": (C,), a + "output/LayerNorm/bias": (C,),
        })
    labels = flax_model.config.num_labels
    if task in ("Model", "ForSequenceClassification"):
        expected.update({f"{p}pooler/dense/kernel": (C, C), f"{p}pooler/dense/bias": (C,)})
    if task == "ForMaskedLM":
        expected.update({"cls/predictions/bias": (V,), "cls/predictions/transform/dense/kernel": (C, C),
                         "cls/predictions/transform/dense/bias": (C,),
                         "cls/predictions/transform/LayerNorm/scale": (C,),
                         "cls/predictions/transform/LayerNorm/bias": (C,)})
        if not flax_model.config.tie_word_embeddings:  # tied: the word embeddings, transposed
            expected.update({"cls/predictions/decoder/kernel": (C, V), "cls/predictions/decoder/bias": (V,)})
    if task in ("ForSequenceClassification", "ForTokenClassification"):
        expected.update({"classifier/kernel": (C, labels), "classifier/bias": (labels,)})
    if task == "ForQuestionAnswering":
        expected.update({"qa_outputs/kernel": (C, labels), "qa_outputs/bias": (labels,)})
    assert flat == expected


def test_flax_save_loads_in_pytorch(pair, tmp_path):
    """Our default save (PyTorch-layout safetensors) loads in the PyTorch class with nothing missing or unexpected;
    outputs equal."""
    model, flax_model, _ = pair
    flax_model.save_pretrained(tmp_path)
    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    ids, mask, segments = batch()
    expected = outputs(torch_out(model, ids, mask, segments))
    got = outputs(torch_out(reloaded.eval(), ids, mask, segments))
    for name in expected:
        close(got[name].numpy(), expected[name].numpy(), name)


def test_msgpack_round_trip(pair, tmp_path):
    _, flax_model, _ = pair
    flax_model.save_pretrained(tmp_path, safe_serialization=False)
    again = type(flax_model).from_pretrained(tmp_path)
    mine, theirs = flatten_dict(flax_model.params), flatten_dict(again.params)
    assert set(mine) == set(theirs)
    for path, value in mine.items():
        np.testing.assert_array_equal(np.asarray(theirs[path]), np.asarray(value))


def test_legacy_gamma_beta_and_position_ids(pair, tmp_path):
    """Checkpoints converted from the original TensorFlow BERT name LayerNorm parameters gamma/beta, and those
    older than 4.31 save the position_ids buffer: both load, with the same outputs."""
    model, flax_model, folder = pair
    state = {}
    for name, value in load_file(folder / "model.safetensors").items():
        if "LayerNorm." in name:
            name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[name] = value
    prefix = "" if isinstance(model, bert.BertModel) else "bert."
    state[prefix + "embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    again, info = type(flax_model).from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask, segments = batch()
    for name, value in outputs(flax_model(ids, attention_mask=mask, token_type_ids=segments)).items():
        close(getattr(again(ids, attention_mask=mask, token_type_ids=segments), name), value, name)


def test_base_checkpoint_into_task_model(tmp_path):
    """A BertModel checkpoint loads into the Flax task classes: the encoder's weights are the checkpoint's (the
    base prefix added), the head is reported missing and initialised."""
    torch.manual_seed(0)
    model = bert.BertModel(bert.BertConfig(**TINY)).eval()
    perturb(model)
    model.save_pretrained(tmp_path)
    flax_model, info = bert.FlaxBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == ["classifier/bias", "classifier/kernel"] and info["unexpected_keys"] == []
    ids, mask, segments = batch()
    base = flax_model.module.apply({"params": flax_model.params}, ids, mask, segments,
                                   method=lambda m, *a: m.bert(*a))
    close(base.pooler_output, torch_out(model, ids, mask, segments).pooler_output.numpy())


def test_is_decoder_is_causal(tmp_path):
    """`is_decoder=True` makes the self-attention causal, as in the PyTorch class."""
    torch.manual_seed(0)
    config = bert.BertConfig(**TINY, is_decoder=True)
    model = bert.BertModel(config).eval()
    perturb(model)
    model.save_pretrained(tmp_path)
    flax_model = bert.FlaxBertModel.from_pretrained(tmp_path)
    ids, mask, segments = batch()
    close(flax_model(ids, attention_mask=mask, token_type_ids=segments).last_hidden_state,
          torch_out(model, ids, mask, segments).last_hidden_state.numpy())


def test_jit_and_gradient_checkpointing(pair):
    model, flax_model, folder = pair
    ids, mask, segments = batch()
    expected = outputs(flax_model(ids, attention_mask=mask, token_type_ids=segments))
    remat = type(flax_model).from_pretrained(folder, gradient_checkpointing=True)
    got = jax.jit(lambda p, i, m, s: remat(i, attention_mask=m, token_type_ids=s, params=p))(
        remat.params, ids, mask, segments)
    for name, value in expected.items():
        close(getattr(got, name), value, name)


def test_dropout_only_in_training(pair):
    _, flax_model, _ = pair
    ids, mask, segments = batch()
    first = lambda out: np.asarray(out[0])  # noqa: E731
    evaluated = first(flax_model(ids, attention_mask=mask))
    a = first(flax_model(ids, attention_mask=mask, train=True, dropout_rng=jax.random.PRNGKey(1)))
    b = first(flax_model(ids, attention_mask=mask, train=True, dropout_rng=jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, evaluated)
