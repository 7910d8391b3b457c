"""Legacy `tf_model.h5` files, as transformers 4.57.6's TensorFlow classes wrote them, against our TF classes.

The files and 4.57's outputs are recorded in tests/data/tf457/ by tests/reference/record_tf_457.py (4.57 and its
Keras 2 run in an isolated environment, never in this one; see that script). Here, with our library only:
  - our h5 reader alone (h5py + numpy, no framework imported) reads every recorded file, one file and sharded (with
    4.57's empty first shard), with 4.57's weight names, shapes, dtypes and values;
  - every recorded folder loads into our TF class and gives 4.57's outputs on the recorded inputs (fp32, 1e-5); a
    head class's folder loads into the family's base class with 4.57's output;
  - greedy `generate` gives 4.57's tokens (one unpadded row, and a left-padded batch);
  - our h5 save has 4.57's layout (top-level layer groups, their `weight_names`, datasets at the full names; shards
    at the root + an index), holds the same values and loads back with the same outputs;
  - BERT pruning and head_mask equal 4.57's PyTorch pruning (tests/data/bert_pruned: 4.57's TF classes have neither;
    see prune.json);
  - the other direction (our h5 files loaded in 4.57) cannot run here: the script's --check-ours records it in
    ours_in_457.json, checked when present.
The reader tests need only h5py; everything else skips with a reason where tensorflow is absent.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="tf_model.h5 files need h5py (pip install pretrained[tf])")

from flax_tf_common import assert_as_base, assert_outputs, check_ours_in_457, load_recordings  # noqa: E402
from flax_tf_common import LEGACY_ATOL as ATOL, LEGACY_RTOL as RTOL, our_class as _our_class, recorded_models  # noqa

TESTS = Path(__file__).resolve().parents[1]
DATA = TESTS / "data" / "tf457"
PRUNED = TESTS / "data" / "bert_pruned"
SRC = TESTS.parent / "src"
INPUTS, CASES = load_recordings(DATA, "record_tf_457.py")
SHARDED = [n for n, m in CASES.items() if "shard" in m["options"]]
BASE_CLASS = {"bert": "TFBertModel", "gpt2": "TFGPT2Model", "t5": "TFT5Model", "mistral": "TFMistralModel"}


# ---- helpers ---------------------------------------------------------------------------------------------------
def relative(name: str) -> str:
    """A 4.x TF weight name without the model's own first component (T5's shared embedding is "shared/shared/...")."""
    return name.split("/", 1)[1] if "/" in name else name


def recorded_weights(meta: dict) -> dict[str, dict]:
    return {relative(w["name"]): w for w in meta["weights"]}


def h5_files(folder: Path) -> list[Path]:
    single = folder / "tf_model.h5"
    return [single] if single.is_file() else sorted(folder.glob("tf_model-*-of-*.h5"))


def h5_arrays(folder: Path) -> dict[str, np.ndarray]:
    """Every weight of a folder's h5 file(s), read with h5py directly (not our reader), by relative name."""
    out = {}
    for path in h5_files(folder):
        with h5py.File(path, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in np.asarray(f.attrs["layer_names"]).reshape(-1).tolist()]
            for layer in names:
                obj = f[layer]
                if isinstance(obj, h5py.Dataset):  # a shard: the dataset is the weight
                    out[relative(layer) if "model." in layer else layer] = obj[()]
                    continue
                for full in np.asarray(obj.attrs["weight_names"]).reshape(-1).tolist():
                    full = full.decode() if isinstance(full, bytes) else str(full)
                    out.setdefault(relative(full), obj[full][()])
    return out


def tf_module():
    return pytest.importorskip("tensorflow", reason="the TF classes need tensorflow (pip install pretrained[tf])")


def our_class(family: str, name: str):
    """Our TF class by its 4.x name: the package export, else the family's modeling_tf module. Skips while the
    family's TF module does not exist yet; any other import error fails."""
    tf_module()
    return _our_class(family, name, "tf")


def forward_kwargs(meta: dict) -> dict:
    tf = tf_module()
    return {k: tf.constant(np.array(INPUTS[k], dtype=np.int32)) for k in meta["forward_inputs"]}


@pytest.fixture(scope="module")
def loaded():
    """Each case's model, loaded once from its recorded folder."""
    return recorded_models(CASES, DATA, our_class)


# ---- the recordings ----------------------------------------------------------------------------------------------
def test_recordings_are_complete():
    expected = {"bert_model", "bert_masked_lm", "bert_seq_cls", "bert_qa", "bert_token_cls", "bert_seq_cls_sharded",
                "gpt2_model", "gpt2_lm_head", "t5_model", "t5_cond_gen", "t5_v1_1_cond_gen", "t5_encoder",
                "mistral_model", "mistral_causal_lm", "mistral_seq_cls", "mistral_causal_lm_sharded"}
    assert expected <= set(CASES)
    for name in SHARDED:
        meta = CASES[name]
        assert "tf_model.h5.index.json" in meta["files"] and len(meta["h5"]) > 2, name
    # 4.57 writes an empty first shard when the first weight exceeds max_shard_size: readers must accept it
    assert any(not layout["datasets"] for layout in CASES["mistral_causal_lm_sharded"]["h5"].values())
    for name, meta in CASES.items():
        # 4.57's own PyTorch class on the same weights agrees with its TF class: the recordings are sound
        for field, diff in meta["pt457_max_abs_diff"].items():
            assert diff < 1e-5, (name, field, diff)
        for key in ("greedy", "greedy_left_padded"):
            if key in meta:
                assert meta[f"pt457_{key}_equal"], (name, key)
                assert meta[f"{key}_min_margin"] > 1e-3, (name, key, "tokens too close to a tie to compare")
    prune = json.loads((DATA / "prune.json").read_text())
    assert prune["tf_prune_heads"].startswith("NotImplementedError")
    assert prune["tf_head_mask"].startswith("NotImplementedError")


# ---- our h5 reader, without TensorFlow ---------------------------------------------------------------------------
def _reader():
    try:
        return importlib.import_module("pretrained.checkpoint.h5")
    except ModuleNotFoundError as e:
        if e.name != "pretrained.checkpoint.h5":
            raise
        pytest.skip("pretrained.checkpoint.h5 does not exist yet")


@pytest.mark.parametrize("name", list(CASES))
def test_h5_reader_reads_457_files(name):
    h5 = _reader()
    meta, folder = CASES[name], DATA / name
    got = {}
    for path in h5_files(folder):
        part = h5.read_h5(path)
        assert not set(part) & set(got), f"{path.name} repeats weights of an earlier file"
        got.update(part)
    want = recorded_weights(meta)
    assert sorted(got) == sorted(want), "weight names differ from 4.57's (without the model's first component)"
    direct = h5_arrays(folder)
    for key, w in want.items():
        assert list(got[key].shape) == w["shape"], key
        assert str(got[key].dtype) == w["dtype"], key
        np.testing.assert_array_equal(got[key], direct[key], err_msg=key)


@pytest.mark.parametrize("name", SHARDED)
def test_h5_reader_checks_sharded_index(name):
    h5 = _reader()
    folder = DATA / name
    index = json.loads((folder / "tf_model.h5.index.json").read_text())
    weight_map = {k: str(folder / v) for k, v in index["weight_map"].items()}
    reader = h5.H5CheckpointReader([str(p) for p in h5_files(folder)], weight_map,
                                   str(folder / "tf_model.h5.index.json"))
    try:
        assert sorted(reader.infos) == sorted(recorded_weights(CASES[name]))
        assert reader.model_name == CASES[name]["model_name"]
        for key, info in reader.infos.items():
            assert Path(info.path).name == index["weight_map"][f"{CASES[name]['model_name']}/{key}"], key
    finally:
        reader.close()


def test_h5_reader_imports_no_framework():
    """Reading every recorded file imports neither TensorFlow/Keras nor torch nor jax."""
    _reader()
    code = (
        "import sys, pathlib\n"
        "from pretrained.checkpoint.h5 import read_h5\n"
        f"data = pathlib.Path({str(DATA)!r})\n"
        "n = sum(len(read_h5(p)) for p in sorted(data.rglob('*.h5')))\n"
        "bad = sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'torch', 'jax') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "print(n)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= sum(len(m["weights"]) for m in CASES.values())


# ---- our TF classes on 4.57's files --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_loads_457_h5_with_equal_outputs(name, loaded):
    meta = CASES[name]
    model = loaded(name)
    assert model.num_parameters() == meta["num_parameters"]
    out = model(**forward_kwargs(meta), training=False)
    assert_outputs(out, meta, DATA / name)


@pytest.mark.parametrize("name", [n for n, m in CASES.items() if "as_base" in m])
def test_head_folder_loads_into_base_class(name):
    meta = CASES[name]
    base = our_class(meta["family"], meta["as_base"]["class"]).from_pretrained(DATA / name)
    out = base(**forward_kwargs(meta), training=False)  # T5: TFT5Model, with the decoder inputs
    assert_as_base(out, meta, DATA / name)


GEN = [(n, key) for n, m in CASES.items() for key in ("greedy", "greedy_left_padded") if key in m]


@pytest.mark.parametrize(("name", "key"), GEN, ids=[f"{n}-{k}" for n, k in GEN])
def test_greedy_generate_equals_457(name, key, loaded):
    tf = tf_module()
    meta = CASES[name]
    model = loaded(name)
    if not hasattr(model, "generate"):
        pytest.skip("TFGenerationMixin.generate is not there yet")
    prefix = "gen_encoder_" if meta["family"] == "t5" else "gen_"
    ids = np.array(INPUTS[prefix + "input_ids"], dtype=np.int32)
    kw = {"input_ids": tf.constant(ids[:1])}
    if key == "greedy_left_padded":
        kw = {"input_ids": tf.constant(ids),
              "attention_mask": tf.constant(np.array(INPUTS[prefix + "attention_mask"], dtype=np.int32))}
    out = model.generate(**kw, max_new_tokens=INPUTS["new_tokens"], do_sample=False)
    assert np.asarray(getattr(out, "sequences", out)).tolist() == meta[key]


# ---- our h5 save against 4.57's layout ---------------------------------------------------------------------------
def _layout(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(root layer_names, {group: weight_names}) of a one-file h5."""
    def names(value):
        return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).reshape(-1).tolist()]

    with h5py.File(path, "r") as f:
        groups = {}
        for layer in names(f.attrs["layer_names"]):
            groups[layer] = names(f[layer].attrs["weight_names"])
            for full in groups[layer]:
                assert isinstance(f[layer].get(full), h5py.Dataset), f"{layer}: no dataset at {full}"
        return names(f.attrs["layer_names"]), groups


@pytest.mark.parametrize("name", [n for n in CASES if n not in SHARDED])
def test_h5_save_has_457_layout(name, loaded, tmp_path):
    meta = CASES[name]
    model = loaded(name)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "tf_model.h5").is_file() and not (tmp_path / "model.safetensors").exists()
    ours_layers, ours_groups = _layout(tmp_path / "tf_model.h5")
    theirs = meta["h5"]["tf_model.h5"]
    # weightless layers (dropout_N) carry a per-process number in 4.57: compare the layers that hold weights
    theirs_groups = {g: v["weight_names"] for g, v in theirs["groups"].items() if v["weight_names"]}
    ours_weighted = {g: v for g, v in ours_groups.items() if v}
    assert sorted(ours_weighted) == sorted(theirs_groups), "top-level layers holding weights differ from 4.57's"
    assert set(ours_weighted) <= set(ours_layers)
    for group, names in theirs_groups.items():
        assert sorted(map(relative, ours_weighted[group])) == sorted(map(relative, names)), group
    ours, recorded = h5_arrays(tmp_path), h5_arrays(DATA / name)
    assert sorted(ours) == sorted(recorded)
    for key, ref in recorded.items():
        assert ours[key].shape == ref.shape and ours[key].dtype == ref.dtype, key
        np.testing.assert_array_equal(ours[key], ref, err_msg=key)
    again = type(model).from_pretrained(tmp_path)
    assert_outputs(again(**forward_kwargs(meta), training=False), meta, DATA / name)


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_h5_save_has_457_layout(name, loaded, tmp_path):
    meta = CASES[name]
    model = loaded(name)
    model.save_pretrained(tmp_path, safe_serialization=False, max_shard_size=meta["options"]["shard"])
    index = json.loads((tmp_path / "tf_model.h5.index.json").read_text())
    shards = sorted(tmp_path.glob("tf_model-*-of-*.h5"))
    n = len(shards)
    assert n > 1 and not (tmp_path / "tf_model.h5").exists()
    assert [s.name for s in shards] == [f"tf_model-{i:05d}-of-{n:05d}.h5" for i in range(1, n + 1)]
    assert sorted(map(relative, index["weight_map"])) == sorted(recorded_weights(meta))
    assert set(index["weight_map"].values()) <= {s.name for s in shards}
    assert index["metadata"]["total_size"] == meta["index"]["metadata"]["total_size"]
    for shard in shards:  # datasets at the root, listed in layer_names; the index says where each weight is
        with h5py.File(shard, "r") as f:
            listed = [x.decode() if isinstance(x, bytes) else str(x)
                      for x in np.asarray(f.attrs["layer_names"]).reshape(-1).tolist()]
            for ds in listed:
                assert isinstance(f.get(ds), h5py.Dataset), (shard.name, ds)
        for full, where in index["weight_map"].items():
            if relative(full) in listed:
                assert where == shard.name, full
    ours, recorded = h5_arrays(tmp_path), h5_arrays(DATA / name)
    assert sorted(ours) == sorted(recorded)
    for key, ref in recorded.items():
        np.testing.assert_array_equal(ours[key], ref, err_msg=key)
    again = type(model).from_pretrained(tmp_path)
    assert_outputs(again(**forward_kwargs(meta), training=False), meta, DATA / name)


def test_our_h5_files_load_in_457():
    """Recorded by `record_tf_457.py --check-ours` (4.57 is not installed here): each folder our TF classes saved
    as h5 (and as our default safetensors, with from_pt=True) loaded in 4.57's TF class with every weight from the
    file and outputs equal to ours."""
    check_ours_in_457(DATA, "record_tf_457.py", CASES)


# ---- BERT pruning and head_mask against 4.57's PyTorch classes ---------------------------------------------------
PRUNE = json.loads((PRUNED / "expected.json").read_text()) if (PRUNED / "expected.json").is_file() else None
PRUNE_CLASSES = {"classifier": "TFBertForSequenceClassification", "base": "TFBertModel"}


def _prune_outputs() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(PRUNED / "outputs.safetensors")


def _prune_forward(model, **extra):
    tf = tf_module()
    kw = {k: tf.constant(np.array(v, dtype=np.int32)) for k, v in PRUNE["inputs"].items()}
    return model(**kw, **extra, training=False)


def _assert_step(out, which: str, step: str, ref: dict) -> None:
    fields = [k.split(".")[-1] for k in ref if k.startswith(f"{which}.{step}.")]
    assert fields
    for field in fields:
        np.testing.assert_allclose(np.asarray(getattr(out, field)), ref[f"{which}.{step}.{field}"],
                                   atol=ATOL, rtol=RTOL, err_msg=f"{which} {step} {field}")


def _pytorch_shapes(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", framework="numpy") as f:
        return {k: "x".join(map(str, f.get_slice(k).get_shape())) for k in f.keys()}


def _unprefixed(shapes: dict[str, str]) -> dict[str, str]:
    if any(k.startswith("bert.") for k in shapes) and not any(k.startswith("classifier.") for k in shapes):
        return {k.removeprefix("bert."): v for k, v in shapes.items()}
    return shapes


@pytest.mark.skipif(PRUNE is None, reason="tests/data/bert_pruned is missing: run record_bert_pruning.py")
@pytest.mark.parametrize("which", list(PRUNE_CLASSES))
def test_prune_heads_equals_457_pytorch(which, tmp_path):
    """4.57's TF prune_heads raises NotImplementedError; ours follows 4.57's PyTorch pruning step by step: outputs,
    config.pruned_heads and the saved (PyTorch-layout) shapes; the pruned save loads back with the same outputs."""
    tf = tf_module()
    ref = _prune_outputs()
    model = our_class("bert", PRUNE_CLASSES[which]).from_pretrained(PRUNED / "unpruned")
    _assert_step(_prune_forward(model), which, "unpruned", ref)
    _assert_step(_prune_forward(model, head_mask=tf.constant(PRUNE["head_mask"])), which, "head_mask", ref)
    for i, prune in enumerate(PRUNE["prunes"], 1):
        step = f"step{i}"
        model.prune_heads({int(k): v for k, v in prune.items()})
        _assert_step(_prune_forward(model), which, step, ref)
        want = PRUNE["models"][which][step]
        assert {str(k): sorted(v) for k, v in model.config.pruned_heads.items()} == want["pruned_heads"]
    model.save_pretrained(tmp_path / "pt")
    # (a base model's keys with or without its "bert." prefix: PyTorch's BertModel writes none, and reads both)
    assert _unprefixed(_pytorch_shapes(tmp_path / "pt")) == _unprefixed(want["shapes"])
    again = type(model).from_pretrained(tmp_path / "pt")
    _assert_step(_prune_forward(again), which, step, ref)
    model.save_pretrained(tmp_path / "h5", safe_serialization=False)
    again = type(model).from_pretrained(tmp_path / "h5")
    _assert_step(_prune_forward(again), which, step, ref)


@pytest.mark.skipif(PRUNE is None, reason="tests/data/bert_pruned is missing: run record_bert_pruning.py")
@pytest.mark.parametrize(("which", "folder"), [("classifier", "pruned"), ("base", "pruned_base")])
def test_loads_457_pytorch_pruned_checkpoint(which, folder):
    """A checkpoint 4.57's PyTorch class pruned and saved (config.pruned_heads, smaller attention weights) loads into
    our TF class with the pruned outputs (4.57's own TF class fails on it: see prune.json)."""
    ref = _prune_outputs()
    model = our_class("bert", PRUNE_CLASSES[which]).from_pretrained(PRUNED / folder)
    _assert_step(_prune_forward(model), which, f"step{len(PRUNE['prunes'])}", ref)
