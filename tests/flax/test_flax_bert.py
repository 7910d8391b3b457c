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

from pretrained.models import bert  # noqa: E402

from flax_tf_common import BERT_CASES as CASES, BERT_TINY as TINY, bert_batch, bert_dims, bert_torch_out  # noqa
from flax_tf_common import assert_parity_with_states, assert_reloads_in_pytorch, bert_names, close  # noqa: E402
from flax_tf_common import msgpack_round_trip, pair_fixture, save_perturbed, write_legacy_bert  # noqa: E402

V, C, L, H, I = bert_dims()


pair = pair_fixture(bert, "Bert", lambda **extra: bert.BertConfig(**TINY, **extra), CASES, "Flax", "bert", clean=False)


def batch(seed=1):
    """Two rows of 9 tokens, the second right-padded by 3; segment ids 0/1/2."""
    return bert_batch(seed, np.int64)


torch_out = bert_torch_out


def outputs(out) -> dict:
    """The array fields of an output (logits, pooler_output, start/end logits, last hidden state)."""
    return {k: v for k, v in vars(out).items() if v is not None and not isinstance(v, tuple) and k != "loss"}


def test_parity_padded_batch_with_segments(pair):
    model, flax_model, _ = pair
    ids, mask, segments = batch()
    expected = torch_out(model, ids, mask, segments, output_hidden_states=True, output_attentions=True)
    got = flax_model(ids, attention_mask=mask, token_type_ids=segments, output_hidden_states=True,
                     output_attentions=True)
    assert_parity_with_states(got, expected, outputs, getattr, L)


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
    expected = bert_names(task, flax_model.config, prefix="" if task == "Model" else "bert/", layer="encoder/layer/{}/",
                          word="embedding", table="embedding", norm=("scale", "bias"), mlm="cls/predictions/")
    assert flat == expected


def test_flax_save_loads_in_pytorch(pair, tmp_path):
    """Our default save (PyTorch-layout safetensors) loads in the PyTorch class with nothing missing or unexpected;
    outputs equal."""
    model, flax_model, _ = pair
    flax_model.save_pretrained(tmp_path)
    assert_reloads_in_pytorch(model, tmp_path, batch(), outputs)


def test_msgpack_round_trip(pair, tmp_path):
    msgpack_round_trip(pair[1], tmp_path)


def test_legacy_gamma_beta_and_position_ids(pair, tmp_path):
    """Checkpoints converted from the original TensorFlow BERT name LayerNorm parameters gamma/beta, and those
    older than 4.31 save the position_ids buffer: both load, with the same outputs."""
    model, flax_model, folder = pair
    write_legacy_bert(model, folder, tmp_path)
    again, info = type(flax_model).from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask, segments = batch()
    for name, value in outputs(flax_model(ids, attention_mask=mask, token_type_ids=segments)).items():
        close(getattr(again(ids, attention_mask=mask, token_type_ids=segments), name), value, name)


def test_base_checkpoint_into_task_model(tmp_path):
    """A BertModel checkpoint loads into the Flax task classes: the encoder's weights are the checkpoint's (the
    base prefix added), the head is reported missing and initialised."""
    model = save_perturbed(bert.BertModel, bert.BertConfig(**TINY), tmp_path)
    flax_model, info = bert.FlaxBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == ["classifier/bias", "classifier/kernel"] and info["unexpected_keys"] == []
    ids, mask, segments = batch()
    base = flax_model.module.apply({"params": flax_model.params}, ids, mask, segments,
                                   method=lambda m, *a: m.bert(*a))
    close(base.pooler_output, torch_out(model, ids, mask, segments).pooler_output.numpy())


def test_is_decoder_is_causal(tmp_path):
    """`is_decoder=True` makes the self-attention causal, as in the PyTorch class."""
    model = save_perturbed(bert.BertModel, bert.BertConfig(**TINY, is_decoder=True), tmp_path)
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
