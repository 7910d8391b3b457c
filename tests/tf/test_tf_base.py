"""TFPreTrainedModel: loading and saving on the ecosystem's files, both ways, the Keras side, and what goes wrong.

Round trips: our TF save (PyTorch-layout safetensors) loads in our PyTorch class and in transformers 5 with equal
outputs, and a PyTorch save loads in TF; sharded safetensors both ways; 4.x's `tf_model.h5` (one file and shards +
index, Keras 2's layout, checked with h5py) written and read back; the TF SavedModel export and its signature;
`compile()` + `fit()` on the model's own loss; resize_token_embeddings against PyTorch's; num_parameters; the
name mapping (`tf/convert.py`) both ways; missing / unexpected / mismatched keys (typed errors, LoadingInfo); bad
files (typed errors naming the file and tensor); the Auto classes and the Hub.

One tiny Llama checkpoint (written by our PyTorch class) serves the module.
"""

from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install pretrained[tf])")
import h5py  # noqa: E402
import keras  # noqa: E402
import torch  # noqa: E402

import pretrained  # noqa: E402
from pretrained import errors  # noqa: E402
from pretrained.checkpoint import h5 as h5_format  # noqa: E402
from pretrained.checkpoint.header import read_header  # noqa: E402
from pretrained.checkpoint.numpy_writer import write_safetensors  # noqa: E402
from pretrained.tf import convert  # noqa: E402

from flax_tf_common import CLEAN, IDS, LLAMA_TINY as CONFIG, llama_checkpoint  # noqa: E402
from flax_tf_common import assert_close as _close, files as _files  # noqa: E402
from flax_tf_common import assert_no_weights, assert_push_and_reload, assert_shape_mismatch_error  # noqa: E402
from flax_tf_common import assert_unexpected_head_reported, assert_wrong_config_class, pytorch_logits  # noqa


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(folder, our PyTorch LlamaForCausalLM, its logits on IDS)."""
    return llama_checkpoint(tmp_path_factory.mktemp("tf-base-ckpt"))


@pytest.fixture(scope="module")
def tfm(ckpt):
    return pretrained.TFLlamaForCausalLM.from_pretrained(ckpt[0])


def _same_weights(a, b):
    wa = {w.path.split("/", 1)[1]: w.numpy() for w in a.weights}
    wb = {w.path.split("/", 1)[1]: w.numpy() for w in b.weights}
    assert set(wa) == set(wb)
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]), k


# ---- PyTorch-layout safetensors ---------------------------------------------------------------------------------
def test_loads_pytorch_checkpoint(ckpt, tfm):
    _close(tfm(IDS).logits, ckpt[2])
    assert tfm.loading_info.as_dict() == CLEAN
    assert tfm.framework == "tf" and tfm.name_or_path == str(ckpt[0])


def test_default_save_loads_in_our_pytorch_class(tfm, tmp_path):
    tfm.save_pretrained(tmp_path)
    assert _files(tmp_path) == ["config.json", "generation_config.json", "model.safetensors"]
    header = read_header(tmp_path / "model.safetensors")
    assert header.metadata == {"format": "pt"}
    assert header.tensors["model.layers.0.mlp.down_proj.weight"].shape == (32, 37)  # PyTorch [out, in]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    pt = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    _close(pytorch_logits(pt), tfm(IDS).logits)


def test_default_save_loads_in_transformers(tfm, tmp_path):
    import transformers

    tfm.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    _close(pytorch_logits(hf), tfm(IDS).logits)


def test_sharded_safetensors_both_ways(ckpt, tfm, tmp_path):
    ckpt[1].save_pretrained(tmp_path / "pt", max_shard_size="10KB")
    assert "model.safetensors.index.json" in _files(tmp_path / "pt")
    _close(pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "pt")(IDS).logits, ckpt[2])
    tfm.save_pretrained(tmp_path / "tf", max_shard_size="10KB")
    names = _files(tmp_path / "tf")
    shards = [n for n in names if n.startswith("model-")]
    assert len(shards) > 2 and "model.safetensors.index.json" in names
    index = json.loads((tmp_path / "tf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ckpt[1].state_dict())
    pt = pretrained.LlamaForCausalLM.from_pretrained(tmp_path / "tf").eval()
    _close(pytorch_logits(pt), ckpt[2])
    _same_weights(pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "tf"), tfm)


def test_bf16_checkpoint(ckpt, tmp_path):
    pretrained.LlamaForCausalLM.from_pretrained(ckpt[0], dtype=torch.bfloat16).save_pretrained(tmp_path)
    model = pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path)  # float32 by default, as 4.x
    assert {w.dtype for w in model.weights} == {"float32"}
    kept = pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path, dtype="bfloat16")
    assert {w.dtype for w in kept.weights} == {"bfloat16"}
    ref = pretrained.LlamaForCausalLM.from_pretrained(tmp_path).eval()  # bf16 values are exact in float32
    assert np.array_equal(model.model.embed_tokens.embeddings.numpy(),
                          ref.model.embed_tokens.weight.float().detach().numpy())
    kept.save_pretrained(tmp_path / "again")
    assert read_header(tmp_path / "again" / "model.safetensors").tensors["lm_head.weight"].dtype == "BF16"


def test_tf_format_safetensors(tfm, tmp_path):
    """4.x's TF save with safe_serialization=True: Keras names ("model/norm/weight:0"), metadata format "tf"."""
    pretrained.LlamaConfig(**CONFIG).save_pretrained(tmp_path)
    arrays = {w.path.split("/", 1)[1] + ":0": w.numpy() for w in tfm.weights}
    write_safetensors(tmp_path / "model.safetensors", arrays, {"format": "tf"})
    model, info = pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _same_weights(model, tfm)


# ---- tf_model.h5 -----------------------------------------------------------------------------------------------
def test_h5_round_trip_in_keras2_layout(tfm, tmp_path):
    tfm.save_pretrained(tmp_path, safe_serialization=False)
    assert _files(tmp_path) == ["config.json", "generation_config.json", "tf_model.h5"]
    with h5py.File(tmp_path / "tf_model.h5", "r") as f:
        assert list(f.attrs["layer_names"]) == ["model", "lm_head"]
        assert f.attrs["backend"] == "tensorflow" and "keras_version" in f.attrs
        names = list(f["model"].attrs["weight_names"])
        assert names[0] == "tf_llama_for_causal_lm/model/embed_tokens/embeddings:0"
        assert "tf_llama_for_causal_lm/model/layers.0/self_attn/q_proj/kernel:0" in names
        assert f["model/tf_llama_for_causal_lm/model/layers.0/mlp/down_proj/kernel:0"].shape == (37, 32)
        assert list(f["lm_head"].attrs["weight_names"]) == ["tf_llama_for_causal_lm/lm_head/kernel:0"]
        assert len(f["top_level_model_weights"].attrs["weight_names"]) == 0
    again, info = pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _same_weights(again, tfm)
    base, info = pretrained.TFLlamaModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == ["lm_head/kernel:0"] and info["missing_keys"] == []


def test_sharded_h5(tfm, tmp_path):
    tfm.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="10KB")
    names = _files(tmp_path)
    shards = [n for n in names if re.fullmatch(r"tf_model-\d{5}-of-\d{5}\.h5", n)]
    assert len(shards) > 2 and "tf_model.h5.index.json" in names and "tf_model.h5" not in names
    index = json.loads((tmp_path / "tf_model.h5.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"} and set(index["metadata"]) == {"total_size"}
    assert "tf_llama_for_causal_lm/model/norm/weight:0" in index["weight_map"]
    with h5py.File(tmp_path / index["weight_map"]["tf_llama_for_causal_lm/model/norm/weight:0"], "r") as f:
        assert "model/norm/weight:0" in list(f.attrs["layer_names"]) and f["model/norm/weight:0"].shape == (32,)
    _same_weights(pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path), tfm)
    reader = h5_format.open_h5(pretrained.tf.base.find_tf_checkpoint(tmp_path, hub={}))
    assert reader.model_name == "tf_llama_for_causal_lm" and "model/norm/weight:0" in reader.infos
    reader.close()


def test_h5_reader_gives_arrays_by_weight_name(tfm, tmp_path):
    tfm.save_pretrained(tmp_path, safe_serialization=False)
    arrays = h5_format.read_h5(tmp_path / "tf_model.h5")
    assert set(arrays) == {w.path.split("/", 1)[1] + ":0" for w in tfm.weights}
    reader = h5_format.H5CheckpointReader([str(tmp_path / "tf_model.h5")])
    entry = reader.infos["model/layers.1/self_attn/o_proj/kernel:0"]
    assert entry.start is not None and entry.layer == "model"  # contiguous: a view of the mapped file
    view = reader.array(entry.name)
    assert not view.flags.writeable and np.array_equal(view, tfm.model.layers[1].self_attn.o_proj.kernel.numpy())
    assert [name for name, _ in reader.layers] == ["model", "lm_head"]
    reader.close()


def test_h5_written_by_h5py_chunked_and_shared(tmp_path):
    """A file Keras 2 could write: chunked `weight_names0/1` attributes, a compressed dataset (read through h5py), a
    weight listed by two layers, a weightless layer."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    with h5py.File(tmp_path / "tf_model.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"one", b"two", b"dropout_3"])
        g = f.create_group("one")
        g.attrs["weight_names0"] = np.array([b"m/one/kernel:0"])
        g.attrs["weight_names1"] = np.array([b"m/one/bias:0"])
        g.create_dataset("m/one/kernel:0", data=a, compression="gzip", chunks=(1, 3))
        g.create_dataset("m/one/bias:0", data=np.ones(3, np.float32))
        g = f.create_group("two")
        g.attrs["weight_names"] = np.array([b"m/one/kernel:0"])
        g.create_dataset("m/one/kernel:0", data=a)
        f.create_group("dropout_3").attrs["weight_names"] = np.zeros((0,), np.float64)
    reader = h5_format.H5CheckpointReader([str(tmp_path / "tf_model.h5")])
    assert set(reader.infos) == {"one/kernel:0", "one/bias:0"} and reader.model_name == "m"
    assert reader.infos["one/kernel:0"].start is None and np.array_equal(reader.array("one/kernel:0"), a)
    assert reader.layers[2] == ("dropout_3", [])
    reader.close()


def test_folder_order_and_stale_formats(ckpt, tfm, tmp_path):
    """Safetensors first (the shared format), tf_model.h5 otherwise; a save removes the other format's files."""
    tfm.save_pretrained(tmp_path, safe_serialization=False)
    ckpt[1].save_pretrained(tmp_path)  # PyTorch's save leaves the h5 there: both formats now
    assert {"tf_model.h5", "model.safetensors"} <= set(_files(tmp_path))
    bumped = pretrained.LlamaForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        bumped.lm_head.weight.add_(1.0)
    bumped.save_pretrained(tmp_path)
    assert not np.array_equal(pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path).lm_head.kernel.numpy(),
                              tfm.lm_head.kernel.numpy())  # safetensors read
    _same_weights(pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path, use_safetensors=False), tfm)  # h5 read
    tfm.save_pretrained(tmp_path)  # our safetensors save removes the h5
    assert "tf_model.h5" not in _files(tmp_path)
    tfm.save_pretrained(tmp_path, safe_serialization=False)  # and the h5 save removes the safetensors
    assert "model.safetensors" not in _files(tmp_path) and "tf_model.h5" in _files(tmp_path)
    with pytest.raises(errors.CheckpointNotFoundError, match="model.safetensors"):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    _same_weights(pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "tf_model.h5"), tfm)  # a file given


# ---- SavedModel, Keras training -----------------------------------------------------------------------------------
def test_saved_model_export(tfm, tmp_path):
    tfm.save_pretrained(tmp_path, saved_model=True)
    assert os.path.isdir(tmp_path / "saved_model" / "1") and "model.safetensors" in _files(tmp_path)
    loaded = tf.saved_model.load(str(tmp_path / "saved_model" / "1"))
    assert {"serving_default", "int64_serving"} <= set(loaded.signatures)
    out = loaded.signatures["serving_default"](input_ids=tf.constant(IDS), attention_mask=tf.ones_like(IDS))
    assert set(out) == {"logits"}
    _close(out["logits"], tfm(IDS).logits)
    out = loaded.signatures["int64_serving"](input_ids=tf.constant(IDS, tf.int64),
                                             attention_mask=tf.ones(IDS.shape, tf.int64))
    _close(out["logits"], tfm(IDS).logits)


def test_compile_fit_uses_the_models_own_loss(ckpt, tmp_path):
    model = pretrained.TFLlamaForCausalLM.from_pretrained(ckpt[0])
    ids = np.random.RandomState(3).randint(2, 99, (4, 8)).astype(np.int32)
    before = float(model(ids, labels=ids).loss[0])
    with torch.no_grad():
        ref = ckpt[1](torch.tensor(ids, dtype=torch.long), labels=torch.tensor(ids, dtype=torch.long)).loss
    _close(before, ref)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    history = model.fit({"input_ids": ids, "labels": ids}, epochs=1, batch_size=4, verbose=0)
    _close(history.history["loss"][0], before, atol=1e-4)
    assert float(model(ids, labels=ids).loss[0]) < before - 0.1
    assert model.evaluate({"input_ids": ids, "labels": ids}, verbose=0) < before


def test_fit_with_targets_and_predict(ckpt):
    model = pretrained.TFLlamaForSequenceClassification.from_pretrained(ckpt[0], num_labels=3)
    assert model.loading_info.missing_keys == ["score/kernel"]
    assert model.loading_info.unexpected_keys == ["lm_head.weight"]
    ids = np.random.RandomState(4).randint(2, 99, (4, 6)).astype(np.int32)
    labels = np.array([0, 1, 2, 1])
    before = float(model(ids, labels=labels).loss[0])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"], jit_compile=False)
    history = model.fit(ids, labels, epochs=3, batch_size=4, verbose=0)  # y given apart: moved into the inputs
    assert "accuracy" in history.history and float(model(ids, labels=labels).loss[0]) < before
    predicted = model.predict(ids, verbose=0)
    assert type(predicted).__name__ == "TFSequenceClassifierOutputWithPast" and predicted.logits.shape == (4, 3)
    _close(predicted.logits, model(ids).logits)
    with pytest.raises(ValueError, match="no labels"):
        model.train_step({"input_ids": ids})
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    assert np.isfinite(model.fit(ids, labels, epochs=1, verbose=0).history["loss"][0])  # a Keras loss on logits


# ---- embeddings, heads, counting ------------------------------------------------------------------------------------
def test_resize_token_embeddings(ckpt, tmp_path):
    model = pretrained.TFLlamaForCausalLM.from_pretrained(ckpt[0])
    pt = pretrained.LlamaForCausalLM.from_pretrained(ckpt[0]).eval()
    layer = model.resize_token_embeddings(120)
    pt.resize_token_embeddings(120)
    assert layer is model.get_input_embeddings() and tuple(layer.embeddings.shape) == (120, 32)
    assert tuple(model.lm_head.kernel.shape) == (32, 120) and model.config.vocab_size == 120
    assert model.model.embed_tokens.embeddings.path.endswith("model/embed_tokens/embeddings")  # still 4.x's name
    ids = np.concatenate([IDS, [[110, 119], [100, 105]]], axis=1).astype(np.int32)
    out = model(ids).logits.numpy()
    with torch.no_grad():
        ref = pt(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    _close(out[:, :7, :99], ref[:, :7, :99])  # old tokens, old vocabulary: equal to PyTorch's after its resize
    _close(out[:, 7:], ref[:, 7:], atol=0.05)  # new tokens: both embed them near the old rows' mean
    new_rows = model.get_input_embeddings().embeddings.numpy()[99:]
    old_mean = pt.model.embed_tokens.weight[:99].mean(0).detach().numpy()
    assert np.abs(new_rows - old_mean).max() < 1e-3  # new rows at the old mean, as PyTorch's
    assert model.num_parameters() == sum(p.numel() for p in pt.parameters())
    model.save_pretrained(tmp_path)
    assert pretrained.LlamaForCausalLM.from_pretrained(tmp_path).config.vocab_size == 120
    model.resize_token_embeddings(64, pad_to_multiple_of=48)
    assert model.config.vocab_size == 96 and tuple(model(IDS % 90).logits.shape) == (2, 7, 96)
    tied = pretrained.TFGemmaForCausalLM.from_config(pretrained.GemmaConfig(**CONFIG, head_dim=8))
    tied.resize_token_embeddings(101)
    assert tied.get_output_embeddings() is tied.get_input_embeddings()
    assert tuple(tied(IDS).logits.shape) == (2, 7, 101)


def test_embeddings_accessors_and_heads(tfm):
    assert tfm.get_input_embeddings() is tfm.model.embed_tokens
    assert tfm.get_output_embeddings() is tfm.lm_head
    model = pretrained.TFLlamaForCausalLM.from_config(copy.deepcopy(tfm.config))
    model.set_input_embeddings(tfm.get_input_embeddings().embeddings.numpy()[:50])
    assert model.config.vocab_size == 50 and tuple(model.model.embed_tokens.embeddings.shape) == (50, 32)
    with pytest.raises(NotImplementedError, match="no prunable attention heads"):
        tfm.prune_heads({0: [1]})
    with pytest.raises(ValueError, match="Layer 5 does not exist"):
        tfm.prune_heads({5: [1]})
    with pytest.raises(ValueError, match=r"Heads \[9\] of layer 0"):
        tfm.prune_heads({0: [9]})
    assert tfm.config.pruned_heads == {}
    assert tuple(tfm.dummy_inputs["input_ids"].shape) == (3, 5)
    assert not pretrained.TFLlamaModel.can_generate() and pretrained.TFLlamaForCausalLM.can_generate()


def test_num_parameters(tfm):
    total = sum(int(np.prod(w.shape)) for w in tfm.weights)
    assert tfm.num_parameters() == total == 19744 and tfm.num_parameters(only_trainable=True) == total
    model = pretrained.TFLlamaForCausalLM.from_config(copy.deepcopy(tfm.config))
    model.model.embed_tokens.trainable = False
    assert model.num_parameters(only_trainable=True) == total - 99 * 32 and model.num_parameters() == total


# ---- the name mapping -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, name, perm", [
    ("model/layers.0/self_attn/q_proj/kernel", "model.layers.0.self_attn.q_proj.weight", (1, 0)),
    ("model/embed_tokens/embeddings", "model.embed_tokens.weight", None),
    ("model/norm/weight", "model.norm.weight", None),
    ("bert/encoder/layer_._11/attention/self/query/kernel", "bert.encoder.layer.11.attention.self.query.weight",
     (1, 0)),
    ("bert/embeddings/LayerNorm/gamma", "bert.embeddings.LayerNorm.weight", None),
    ("bert/embeddings/LayerNorm/beta", "bert.embeddings.LayerNorm.bias", None),
    ("classifier/bias:0", "classifier.bias", None),
])
def test_generic_rule(path, name, perm):
    shape = (4, 6) if perm else (6,)
    sl = convert.slot(path, shape)
    assert sl.pytorch_name == name and sl.perm == perm and sl.path == convert.keras_path(path)


def test_rules_both_ways():
    rules = convert.TFKeyRules.of({"keep_layout": [r"/c_attn/kernel$"], "squeeze": [r"/c_attn/bias$"],
                                   "pytorch_names": {r"^shared/shared/weight$": "shared.weight"}})
    keras_weights = {"h/0/c_attn/kernel": np.arange(12.0).reshape(3, 4), "h/0/c_attn/bias": np.arange(4.0)[None],
                     "shared/shared/weight": np.ones((5, 3)), "h/0/mlp/kernel": np.arange(6.0).reshape(2, 3),
                     "conv/kernel": np.arange(24.0).reshape(2, 3, 4)}
    state = convert.pytorch_state(keras_weights, rules)
    assert state["h.0.c_attn.weight"].shape == (3, 4) and state["h.0.c_attn.bias"].shape == (4,)
    assert state["shared.weight"].shape == (5, 3) and state["h.0.mlp.weight"].shape == (3, 2)
    assert state["conv.weight"].shape == (4, 3, 2)  # [out, in, window] <- [window, in, out]
    back = convert.keras_state(state, {p: a.shape for p, a in keras_weights.items()}, rules)
    for p, a in keras_weights.items():
        assert np.array_equal(back[p], a), p
    with pytest.raises(ValueError, match="unknown keys"):
        convert.TFKeyRules.of({"nope": ()})
    with pytest.raises(ValueError, match="both map to the PyTorch name"):
        convert.slots({"a/kernel": (2, 2), "a/weight": (2, 2)})


# ---- missing, unexpected, mismatched ----------------------------------------------------------------------------
def test_unexpected_weights_reported(ckpt):
    assert_unexpected_head_reported(pretrained.TFLlamaModel, ckpt[0])


def test_missing_weights_initialised_and_reported(ckpt, tmp_path):
    pretrained.LlamaModel.from_pretrained(ckpt[0]).save_pretrained(tmp_path)  # no head
    model, info = pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == ["lm_head/kernel"] and info["unexpected_keys"] == []
    kernel = model.lm_head.kernel.numpy()
    assert kernel.std() > 0.05 and np.abs(kernel).max() <= 2 * 0.2 + 1e-6  # truncated normal(0.2), not zeros
    base = pretrained.TFLlamaModel.from_pretrained(tmp_path)
    _close(model.model(IDS).last_hidden_state, base(IDS).last_hidden_state)


def test_shape_mismatch_is_a_typed_error(ckpt):
    assert_shape_mismatch_error(pretrained.TFLlamaForCausalLM, ckpt[0])
    model, info = pretrained.TFLlamaForCausalLM.from_pretrained(ckpt[0], intermediate_size=40,
                                                                 ignore_mismatched_sizes=True, output_loading_info=True)
    assert ("model/layers.0/mlp/gate_proj/kernel", (37, 32), (32, 40)) in info["mismatched_keys"]
    assert info["missing_keys"] == [] and tuple(model.model.layers[0].mlp.gate_proj.kernel.shape) == (32, 40)
    assert model.model.layers[0].mlp.gate_proj.kernel.numpy().std() > 0.05


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_no_weights(ckpt, tmp_path):
    assert_no_weights(pretrained.TFLlamaForCausalLM, ckpt[0], tmp_path, "model.safetensors.*tf_model.h5")


def test_corrupt_files_name_the_file(tfm, tmp_path):
    tfm.save_pretrained(tmp_path / "st")
    path = tmp_path / "st" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(errors.CorruptCheckpointError, match=re.escape(str(path))):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "st")
    tfm.save_pretrained(tmp_path / "h5", safe_serialization=False)
    path = tmp_path / "h5" / "tf_model.h5"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(errors.CorruptCheckpointError, match=re.escape(str(path))):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "h5")
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(errors.CorruptCheckpointError, match=re.escape(str(path)) + "' is not an HDF5 file"):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "h5")
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    with pytest.raises(errors.CorruptCheckpointError, match="git-lfs pointer"):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "h5")
    path.write_bytes(good)
    with h5py.File(path, "a") as f:
        del f.attrs["layer_names"]
    with pytest.raises(errors.CorruptCheckpointError, match="without the root attribute 'layer_names'"):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "h5")
    path.write_bytes(good)
    with h5py.File(path, "a") as f:
        del f["model/tf_llama_for_causal_lm/model/norm/weight:0"]
    with pytest.raises(errors.CorruptCheckpointError,
                       match=re.escape(str(path)) + ".*'tf_llama_for_causal_lm/model/norm/weight:0'"):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path / "h5")


def test_sharded_h5_damage(tfm, tmp_path):
    tfm.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="10KB")
    index_path = tmp_path / "tf_model.h5.index.json"
    second = sorted(n for n in os.listdir(tmp_path) if n.startswith("tf_model-"))[1]
    data = (tmp_path / second).read_bytes()
    os.remove(tmp_path / second)
    with pytest.raises(errors.CorruptCheckpointError,
                       match=re.escape(second) + ".*" + re.escape(str(index_path)) + ".*missing"):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path)
    (tmp_path / second).write_bytes(data)
    index = json.loads(index_path.read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = next(s for s in index["weight_map"].values() if s != index["weight_map"][name])
    index_path.write_text(json.dumps(index))
    with pytest.raises(errors.CorruptCheckpointError, match=re.escape(str(index_path)) + ".*disagree"):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path)
    index["weight_map"][name] = "../outside.h5"
    index_path.write_text(json.dumps(index))
    with pytest.raises(errors.UnsafePathError):
        pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path)


def test_wrong_config_class(ckpt):
    assert_wrong_config_class(pretrained.TFLlamaForCausalLM, ckpt[0])


# ---- the rest of the API ---------------------------------------------------------------------------------------------
@pytest.fixture
def clean_registry():
    from pretrained import registry

    before = {k: (v.models.copy(), v.flax_models.copy(), v.tf_models.copy()) for k, v in registry.FAMILIES.items()}
    families = dict(registry.FAMILIES)
    yield
    registry.FAMILIES.clear()
    registry.FAMILIES.update(families)
    for k, (models, flax_models, tf_models) in before.items():
        registry.FAMILIES[k].models, registry.FAMILIES[k].flax_models = models, flax_models
        registry.FAMILIES[k].tf_models = tf_models


def test_auto_classes(ckpt, tfm, clean_registry):
    assert type(pretrained.TFAutoModel.from_pretrained(ckpt[0])).__name__ == "TFLlamaModel"
    with pytest.raises(errors.UnknownModelTypeError, match="TFAutoModelForMaskedLM.*TFAutoModelForCausalLM"):
        pretrained.TFAutoModelForMaskedLM.from_pretrained(ckpt[0])
    fresh = pretrained.TFAutoModelForCausalLM.from_config(copy.deepcopy(tfm.config))
    assert type(fresh) is pretrained.TFLlamaForCausalLM and tuple(fresh.lm_head.kernel.shape) == (32, 99)
    from pretrained import registry

    expected = {"llama": "TFLlama", "mistral": "TFMistral", "qwen2": "TFQwen2", "gemma": "TFGemma"}
    for model_type, prefix in expected.items():
        assert registry.FAMILIES[model_type].tf_models["AutoModelForSequenceClassification"].endswith(
            f"modeling_tf:{prefix}ForSequenceClassification")
    assert registry.FAMILIES["bert"].tf_models["AutoModelForMaskedLM"].endswith("modeling_tf:TFBertForMaskedLM")
    assert registry.FAMILIES["gpt2"].tf_models["AutoModelForCausalLM"].endswith("modeling_tf:TFGPT2LMHeadModel")
    assert registry.FAMILIES["t5"].tf_models["AutoModelForSeq2SeqLM"].endswith(
        "modeling_tf:TFT5ForConditionalGeneration")

    class MyConfig(pretrained.LlamaConfig):
        model_type = "my-tf-llama"

    class MyModel(pretrained.TFLlamaForCausalLM):
        config_class = MyConfig

    pretrained.AutoConfig.register("my-tf-llama", MyConfig)
    pretrained.TFAutoModelForCausalLM.register(MyConfig, MyModel)
    assert type(pretrained.TFAutoModelForCausalLM.from_config(MyConfig(**CONFIG))) is MyModel
    with pytest.raises(ValueError, match="TFAutoModelForCausalLM already has a class"):
        pretrained.TFAutoModelForCausalLM.register(MyConfig, MyModel)
    from pretrained.remote_code import check_auto_class

    assert check_auto_class("TFAutoModelForCausalLM") == "TFAutoModelForCausalLM"


def test_subfolder_and_hub_args(tfm, tmp_path):
    tfm.save_pretrained(tmp_path / "sub")
    model = pretrained.TFLlamaForCausalLM.from_pretrained(tmp_path, subfolder="sub", revision=None, from_pt=True,
                                                          local_files_only=True, trust_remote_code=False,
                                                          token=None, cache_dir=None)
    _same_weights(model, tfm)


def test_push_to_hub_and_load_by_repo_id(hub_server, hub_cache, tfm):
    assert_push_and_reload(hub_server, tfm, pretrained.TFAutoModelForCausalLM, "tf-push", _same_weights)
