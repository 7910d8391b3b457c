"""The TensorFlow BERT classes: outputs equal our PyTorch classes on the same checkpoint (fp32, atol 1e-5) with
padding, segment ids, head masks, the pooler and the tied (and untied) MLM head; weight names are 4.57's; saves load
both ways; head pruning equals 4.57's PyTorch pruning (tests/data/bert_pruned, recorded by
tests/reference/record_bert_pruning.py); resize_token_embeddings; compile + fit on the model's own loss.

Checkpoints are written by our PyTorch classes (initializer_range 0.2 and noise on every parameter: sharp attention,
biases and norms off their initial values, so a weight read into the wrong place or a wrong mask moves the outputs
far beyond the tolerance) and read by the TF classes through `from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install pretrained[tf])")
import keras  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from pretrained.models import bert  # noqa: E402

from flax_tf_common import BERT_CASES as CASES, BERT_TINY as TINY, CLEAN, bert_batch, bert_dims  # noqa: E402
from flax_tf_common import assert_parity_with_states, assert_reloads_in_pytorch, bert_names  # noqa: E402
from flax_tf_common import bert_torch_out, close  # noqa: E402
from flax_tf_common import assert_h5_round_trip, pair_fixture, save_perturbed, write_legacy_bert  # noqa: E402

V, C, L, H, I = bert_dims()
RECORDED = Path(__file__).resolve().parents[1] / "data" / "bert_pruned"


pair = pair_fixture(bert, "Bert", lambda **extra: bert.BertConfig(**TINY, **extra), CASES, "TF", "tf-bert")


def batch(seed=1):
    """Two rows of 9 tokens, the second right-padded by 3; segment ids 0/1/2."""
    return bert_batch(seed, np.int32)


torch_out = bert_torch_out


def outputs(out) -> dict:
    """The array fields of an output (logits, pooler_output, start/end logits, last hidden state)."""
    return {k: v for k, v in out.items() if not isinstance(v, tuple) and k != "loss"}


def test_parity_padded_batch_with_segments(pair):
    model, tf_model, _ = pair
    ids, mask, segments = batch()
    expected = torch_out(model, ids, mask, segments, output_hidden_states=True, output_attentions=True)
    got = tf_model(ids, attention_mask=mask, token_type_ids=segments, output_hidden_states=True,
                   output_attentions=True)
    assert_parity_with_states(got, expected, outputs, lambda out, name: out[name], L)


def test_defaults_and_tuple_output(pair):
    """No mask, no segment ids, no positions: all-ones, zeros, 0..T-1; return_dict=False gives the tuple."""
    model, tf_model, _ = pair
    ids = np.random.default_rng(2).integers(2, V, (1, 5)).astype(np.int32)
    expected = [v.numpy() for v in torch_out(model, ids).to_tuple()]
    got = tf_model(ids, return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(expected)
    for a, b in zip(got, expected):
        close(a, b)


def test_xla_compiled_call(pair):
    """The call compiles with XLA (tf.function(jit_compile=True)) to the same values."""
    model, tf_model, _ = pair
    if type(tf_model).__name__ not in ("TFBertForMaskedLM", "TFBertForSequenceClassification"):
        pytest.skip("two classes are enough (XLA compiles slowly on CPU)")
    ids, mask, segments = batch()
    compiled = tf.function(lambda i, m, s: tf_model(i, attention_mask=m, token_type_ids=s, return_dict=False),
                           jit_compile=True)
    for a, b in zip(compiled(ids, mask, segments), torch_out(model, ids, mask, segments).to_tuple()):
        close(a, b.numpy())


def test_head_mask(pair):
    model, tf_model, _ = pair
    ids, mask, segments = batch(seed=3)
    for head_mask in (np.array([[1, 0, 1, 1], [0, 1, 1, 0.5]], dtype=np.float32),
                      np.array([1, 0.5, 0, 1], dtype=np.float32)):  # (heads,): the same mask for every layer
        expected = outputs(torch_out(model, ids, mask, segments, head_mask=torch.tensor(head_mask)))
        got = tf_model(ids, attention_mask=mask, token_type_ids=segments, head_mask=head_mask)
        for name, value in expected.items():
            close(got[name], value.numpy(), name)
    with pytest.raises(ValueError, match="head_mask of shape"):
        tf_model(ids, head_mask=np.ones((3, H), np.float32))


def test_weight_names_are_4x(pair):
    """Every weight is at its 4.57 TF name (first component: the model's own name) with 4.57's shape."""
    model, tf_model, _ = pair
    task = type(tf_model).__name__.removeprefix("TFBert")
    names = {w.path.split("/", 1)[1]: tuple(w.shape) for w in tf_model.weights}
    model_name = {"Model": "tf_bert_model", "ForMaskedLM": "tf_bert_for_masked_lm",
                  "ForSequenceClassification": "tf_bert_for_sequence_classification",
                  "ForQuestionAnswering": "tf_bert_for_question_answering",
                  "ForTokenClassification": "tf_bert_for_token_classification"}[task]
    assert all(w.path.split("/")[0].startswith(model_name) for w in tf_model.weights)
    expected = bert_names(task, tf_model.config, prefix="bert/", layer="encoder/layer_._{}/", word="weight",
                          table="embeddings", norm=("gamma", "beta"), mlm="mlm___cls/predictions/")
    assert names == expected
    assert tf_model.num_parameters() == model.num_parameters()


def test_tf_save_loads_in_pytorch_and_h5_round_trip(pair, tmp_path):
    """Our default save (PyTorch-layout safetensors) loads in the PyTorch class with nothing missing or unexpected
    and equal outputs; the h5 save (4.x's layout) loads back into the TF class with identical weights."""
    model, tf_model, _ = pair
    tf_model.save_pretrained(tmp_path / "st")
    assert_reloads_in_pytorch(model, tmp_path / "st", batch(), outputs)

    assert_h5_round_trip(tf_model, tmp_path / "h5")
    assert (tmp_path / "h5" / "tf_model.h5").is_file()


def test_legacy_gamma_beta_and_position_ids(pair, tmp_path):
    """Checkpoints converted from the original TensorFlow BERT name LayerNorm parameters gamma/beta, and those
    older than 4.31 save the position_ids buffer: both load, with the same outputs."""
    model, tf_model, folder = pair
    write_legacy_bert(model, folder, tmp_path)
    again, info = type(tf_model).from_pretrained(tmp_path, output_loading_info=True)
    assert info == CLEAN
    ids, mask, segments = batch()
    for name, value in outputs(tf_model(ids, attention_mask=mask, token_type_ids=segments)).items():
        close(again(ids, attention_mask=mask, token_type_ids=segments)[name], value, name)


def test_dropout_only_in_training(pair):
    _, tf_model, _ = pair
    ids, mask, _ = batch()
    evaluated = np.asarray(tf_model(ids, attention_mask=mask)[0])
    assert np.array_equal(evaluated, np.asarray(tf_model(ids, attention_mask=mask, training=False)[0]))
    trained = np.asarray(tf_model(ids, attention_mask=mask, training=True)[0])
    assert not np.allclose(trained, evaluated)


def test_base_checkpoint_into_task_model(tmp_path):
    """A BertModel checkpoint loads into a task class: the encoder's weights are the checkpoint's (the base prefix
    added), the head is reported missing and initialised."""
    model = save_perturbed(bert.BertModel, bert.BertConfig(**TINY), tmp_path)
    tf_model, info = bert.TFBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == ["classifier/bias", "classifier/kernel"] and info["unexpected_keys"] == []
    ids, mask, segments = batch()
    base = tf_model.bert(input_ids=ids, attention_mask=mask, token_type_ids=segments)
    close(base.pooler_output, torch_out(model, ids, mask, segments).pooler_output.numpy())


def test_is_decoder_is_causal_and_3d_mask(tmp_path):
    """`is_decoder=True` makes the self-attention causal, and a (B, T, T) mask is taken as it is, as in the PyTorch
    class."""
    model = save_perturbed(bert.BertModel, bert.BertConfig(**TINY, is_decoder=True), tmp_path)
    tf_model = bert.TFBertModel.from_pretrained(tmp_path)
    ids, mask, segments = batch()
    close(tf_model(ids, attention_mask=mask, token_type_ids=segments).last_hidden_state,
          torch_out(model, ids, mask, segments).last_hidden_state.numpy())
    square = np.tril(np.ones((9, 9), np.int32))[None].repeat(2, 0) * mask[:, None, :]
    close(tf_model(ids, attention_mask=square).last_hidden_state,
          torch_out(model, ids, square).last_hidden_state.numpy())


# ---- pruning ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded():
    expected = json.loads((RECORDED / "expected.json").read_text())
    expected["prunes"] = [{int(k): v for k, v in p.items()} for p in expected["prunes"]]
    return expected, load_file(RECORDED / "outputs.safetensors")


PRUNE_MODELS = {"base": ("TFBertModel", "BertModel", "pruned_base"),
                "classifier": ("TFBertForSequenceClassification", "BertForSequenceClassification", "pruned")}


def check_step(model, recorded, key: str, step: str, **kwargs) -> None:
    expected, outputs_ = recorded
    out = model(**{k: np.asarray(v, np.int32) for k, v in expected["inputs"].items()}, **kwargs)
    fields = [f for f in ("last_hidden_state", "pooler_output", "logits") if f"{key}.{step}.{f}" in outputs_]
    assert fields
    for field in fields:
        close(out[field], outputs_[f"{key}.{step}.{field}"], f"{key} {step} {field}")


@pytest.mark.parametrize("key", PRUNE_MODELS)
def test_prune_heads_equals_457_pytorch_pruning(tmp_path, recorded, key):
    """4.57's checkpoint, pruned step by step in TF: the outputs are 4.57's after each step, the saved weights are
    exactly those 4.57 saved after the same steps, and the save reloads in TF and in our PyTorch class."""
    expected, _ = recorded
    tf_name, pt_name, folder = PRUNE_MODELS[key]
    model = getattr(bert, tf_name).from_pretrained(RECORDED / "unpruned")
    check_step(model, recorded, key, "unpruned")
    check_step(model, recorded, key, "head_mask", head_mask=np.asarray(expected["head_mask"], np.float32))
    for i, prune in enumerate(expected["prunes"], 1):
        model.prune_heads(prune)
        check_step(model, recorded, key, f"step{i}")
    last = f"step{len(expected['prunes'])}"
    attention = model.bert.encoder.layer[0].attention
    assert attention.pruned_heads == {0, 1, 2} and attention.self_attention.num_attention_heads == 1
    assert tuple(attention.self_attention.query.kernel.shape) == (C, C // H)
    assert tuple(attention.dense_output.dense.kernel.shape) == (C // H, C)

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pruned_heads"] == expected["saved_pruned_heads"] == {"0": [0, 1, 2], "1": [1]}
    mine, theirs = load_file(tmp_path / "model.safetensors"), load_file(RECORDED / folder / "model.safetensors")
    prefix = "bert." if key == "base" else ""  # BertModel's own save has no base prefix; the TF main layer does
    assert set(mine) == {prefix + k for k in theirs}
    for name, value in theirs.items():
        np.testing.assert_array_equal(mine[prefix + name], value, err_msg=name)
    again, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert info == CLEAN
    check_step(again, recorded, key, last)
    pt, info = getattr(bert, pt_name).from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    with torch.no_grad():
        out = pt.eval()(**{k: torch.tensor(v) for k, v in expected["inputs"].items()})
    check_step(lambda **kw: out, recorded, key, last)


@pytest.mark.parametrize("key", PRUNE_MODELS)
def test_457_pruned_checkpoint_loads(recorded, key):
    expected, _ = recorded
    tf_name, _, folder = PRUNE_MODELS[key]
    model, info = getattr(bert, tf_name).from_pretrained(RECORDED / folder, output_loading_info=True)
    assert info == CLEAN
    check_step(model, recorded, key, f"step{len(expected['prunes'])}")
    model.prune_heads({0: [0, 1], 1: [1]})  # pruning what is already gone changes nothing
    check_step(model, recorded, key, f"step{len(expected['prunes'])}")


def test_zeroing_heads_equals_pruning_them(pair):
    """Pruning equals masking the same heads; a mask over the original heads still applies to a pruned model (the
    kept heads' entries are used); bad requests change nothing."""
    _, tf_model, folder = pair
    if type(tf_model).__name__ != "TFBertForSequenceClassification":
        pytest.skip("one class is enough")
    pruned = type(tf_model).from_pretrained(folder)
    ids, mask, segments = batch()
    prune = {0: [0, 2], 1: [1]}
    head_mask = np.ones((L, H), np.float32)
    for layer, heads in prune.items():
        head_mask[layer, heads] = 0.0
    masked = tf_model(ids, attention_mask=mask, head_mask=head_mask, output_attentions=True)
    assert np.all(np.asarray(masked.attentions[0])[:, [0, 2]] == 0)
    pruned.predict({"input_ids": ids, "attention_mask": mask}, verbose=0)  # Keras traces (and keeps) a function
    pruned.prune_heads(prune)
    close(pruned(ids, attention_mask=mask).logits, masked.logits)
    close(pruned.predict({"input_ids": ids, "attention_mask": mask}, verbose=0).logits, masked.logits)
    assert not np.allclose(tf_model(ids, attention_mask=mask).logits, masked.logits, atol=1e-3)
    more = np.array([[0, 0, 0, 1], [1, 0, 0.5, 1]], np.float32)
    close(pruned(ids, attention_mask=mask, head_mask=more).logits,
          tf_model(ids, attention_mask=mask, head_mask=more).logits)
    shapes = {w.path: tuple(w.shape) for w in pruned.weights}
    for bad in ({0: [4]}, {2: [0]}, {0: [-1]}):
        with pytest.raises(ValueError):
            pruned.prune_heads(bad)
    assert {w.path: tuple(w.shape) for w in pruned.weights} == shapes


# ---- resizing, training ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_resize_token_embeddings(untied, tmp_path):
    """Old rows kept, the MLM bias padded with zeros, the head follows, the logits of the old vocabulary unchanged;
    the resized model saves and loads in PyTorch with equal logits."""
    model = save_perturbed(bert.BertForMaskedLM, bert.BertConfig(**TINY, tie_word_embeddings=not untied),
                           tmp_path / "pt")
    tf_model = bert.TFBertForMaskedLM.from_pretrained(tmp_path / "pt")
    ids, mask, segments = batch()
    before = np.asarray(tf_model(ids, attention_mask=mask, token_type_ids=segments).logits)
    table = tf_model.get_input_embeddings().weight.numpy()
    layer = tf_model.resize_token_embeddings(V + 5, pad_to_multiple_of=8)
    assert layer is tf_model.get_input_embeddings() and tf_model.config.vocab_size == 104
    assert tuple(layer.weight.shape) == (104, C)
    np.testing.assert_array_equal(layer.weight.numpy()[:V], table)
    bias = tf_model.mlm.predictions.bias.numpy()
    assert bias.shape == (104,) and np.all(bias[V:] == 0)
    after = np.asarray(tf_model(ids, attention_mask=mask, token_type_ids=segments).logits)
    assert after.shape == (2, 9, 104)
    close(after[..., :V], before)
    tf_model.save_pretrained(tmp_path / "tf")
    pt = bert.BertForMaskedLM.from_pretrained(tmp_path / "tf").eval()
    assert pt.config.vocab_size == 104
    close(after, torch_out(pt, ids, mask, segments).logits.numpy())


def test_fit_reduces_the_models_own_loss():
    """compile() without a loss trains on the model's own loss: labels in the inputs (classifier, QA) or as the
    target (masked LM); one step lowers the loss on the batch."""
    config = bert.BertConfig(**TINY, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    g = np.random.default_rng(0)
    ids = g.integers(2, V, (8, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    labels = {  # (the other heads' losses are checked against PyTorch in test_losses_equal_pytorch)
        "ForQuestionAnswering": {"start_positions": g.integers(0, 9, (8,)).astype(np.int32),
                                 "end_positions": g.integers(0, 9, (8,)).astype(np.int32)},
        "ForMaskedLM": {"labels": np.where(g.random((8, 9)) < 0.3, ids, -100).astype(np.int32)},
    }
    for task, extra in labels.items():
        keras.utils.set_random_seed(0)
        model = getattr(bert, "TFBert" + task).from_config(config)
        before = float(model(ids, attention_mask=mask, **extra).loss[0])
        # one class traced into a graph (without XLA, slow to compile on CPU), the other run eagerly (fast)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False, run_eagerly=task == "ForMaskedLM")
        if task == "ForMaskedLM":  # the labels as the target y
            history = model.fit({"input_ids": ids, "attention_mask": mask}, extra["labels"], batch_size=8,
                                epochs=1, verbose=0)
        else:
            history = model.fit({"input_ids": ids, "attention_mask": mask, **extra}, batch_size=8, epochs=1,
                                verbose=0)
        np.testing.assert_allclose(history.history["loss"][0], before, rtol=1e-5)
        after = float(model(ids, attention_mask=mask, **extra).loss[0])
        assert after < before, task


def test_losses_equal_pytorch(pair):
    model, tf_model, _ = pair
    task = type(tf_model).__name__.removeprefix("TFBert")
    ids, mask, segments = batch()
    g = np.random.default_rng(5)
    labels = {"ForMaskedLM": {"labels": np.where(g.random((2, 9)) < 0.5, ids, -100)},
              "ForSequenceClassification": {"labels": np.array([1, 0])},
              "ForTokenClassification": {"labels": np.where(mask == 1, g.integers(0, 2, (2, 9)), -100)},
              "ForQuestionAnswering": {"start_positions": np.array([1, 12]), "end_positions": np.array([3, 4])}}
    if task not in labels:
        pytest.skip("no loss")
    extra = labels[task]
    expected = torch_out(model, ids, mask, segments,
                         **{k: torch.tensor(v, dtype=torch.long) for k, v in extra.items()}).loss
    got = tf_model(ids, attention_mask=mask, token_type_ids=segments,
                   **{k: v.astype(np.int32) for k, v in extra.items()}).loss
    close(np.reshape(got, ()), expected.numpy())


def test_bad_inputs():
    model = bert.TFBertModel.from_config(bert.BertConfig(**TINY))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(attention_mask=np.ones((1, 3), np.int32))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(np.ones((1, 65), np.int32))
    from pretrained.errors import ConfigError

    with pytest.raises(ConfigError, match="cross-attention"):
        model(np.ones((1, 3), np.int32), encoder_hidden_states=np.zeros((1, 3, C), np.float32))
