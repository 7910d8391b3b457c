"""Legacy `flax_model.msgpack` files, as transformers 4.57.6's Flax classes wrote them, against our Flax classes.

The files and 4.57's outputs are recorded in tests/data/flax457/ by tests/reference/record_flax_457.py (4.57 runs in
an isolated environment, never in this one; see that script). Here, with our classes only:
  - every recorded folder (single msgpack, sharded msgpack with 4.57's empty first shard, bf16 params) loads with
    the same parameter tree (names, shapes, dtypes) and gives 4.57's outputs on the recorded inputs (fp32, 1e-5);
  - a head class's folder loads into the family's base class (4.57 strips the prefix) with 4.57's output;
  - greedy (and where recorded, beam) `generate` gives 4.57's tokens on a left-padded batch;
  - our msgpack save restores (flax.serialization.msgpack_restore) to 4.57's nested tree: same keys, shapes, dtypes
    and values; sharded, every shard is a nested subset and the index's "/"-joined weight_map covers the tree;
  - the other direction (our msgpack files loaded in 4.57) cannot run here: the script's --check-ours records it in
    ours_in_457.json, checked when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="the Flax classes need jax (pip install pretrained[flax])")
pytest.importorskip("flax", reason="the Flax classes need flax (pip install pretrained[flax])")

import jax.numpy as jnp  # noqa: E402
from flax.serialization import msgpack_restore  # noqa: E402

from flax_tf_common import assert_as_base, assert_outputs, check_ours_in_457, load_recordings  # noqa: E402
from flax_tf_common import our_class as _our_class, recorded_models  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "flax457"
INPUTS, CASES = load_recordings(DATA, "record_flax_457.py")
BASE_CLASS = {"bert": "FlaxBertModel", "gpt2": "FlaxGPT2Model", "t5": "FlaxT5Model", "llama": "FlaxLlamaModel",
              "mistral": "FlaxMistralModel", "gemma": "FlaxGemmaModel"}


def our_class(family: str, name: str):
    """Our Flax class by its 4.x name: the package export, else the family's modeling_flax module. Skips while the
    family's Flax module does not exist yet; any other import error fails."""
    return _our_class(family, name, "flax")


def forward_kwargs(meta: dict) -> dict:
    return {k: jnp.asarray(np.array(INPUTS[k]), dtype=jnp.int32) for k in meta["forward_inputs"]}


def flat(tree, prefix="") -> dict[str, np.ndarray]:
    """'/'-joined path -> leaf, for a nested params mapping (dict or FrozenDict)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if hasattr(v, "items") and not hasattr(v, "shape"):
            out.update(flat(v, key))
        else:
            out[key] = v
    return out


def file_tree(folder: Path) -> dict[str, np.ndarray]:
    """The flattened parameters a folder's msgpack file(s) hold, read with flax's own reader."""
    single = folder / "flax_model.msgpack"
    if single.is_file():
        return flat(msgpack_restore(single.read_bytes()))
    tree = {}
    for shard in sorted(folder.glob("flax_model-*-of-*.msgpack")):
        part = flat(msgpack_restore(shard.read_bytes()))
        assert not set(part) & set(tree), f"{shard.name} repeats parameters of an earlier shard"
        tree.update(part)
    return tree


def _ids(items):
    return list(items)


@pytest.fixture(scope="module")
def loaded():
    """Each case's model, loaded once from its recorded folder (from_pretrained compiles nothing; outputs do)."""
    return recorded_models(CASES, DATA, our_class)


def test_recordings_are_complete():
    expected = {"bert_model", "bert_masked_lm", "bert_seq_cls", "bert_qa", "bert_token_cls", "gpt2_model",
                "gpt2_lm_head", "t5_model", "t5_cond_gen", "t5_encoder", "llama_model", "llama_causal_lm",
                "llama_causal_lm_sharded", "mistral_model", "mistral_causal_lm", "gemma_model", "gemma_causal_lm"}
    assert expected <= set(CASES)
    sharded = CASES["llama_causal_lm_sharded"]
    assert "flax_model.msgpack.index.json" in sharded["files"] and len(sharded["shards"]) > 2
    assert sharded["empty_shards"], "the recording should hold 4.57's empty first shard"
    # the recordings are consistent with 4.57's own PyTorch classes on the same weights
    for name, meta in CASES.items():
        for field, diff in meta.get("pt457_max_abs_diff", {}).items():
            assert diff < 2e-5, (name, field, diff)


@pytest.mark.parametrize("name", _ids(CASES))
def test_loads_457_msgpack_with_equal_outputs(name, loaded):
    meta = CASES[name]
    model = loaded(name)
    params = flat(model.params)
    recorded = meta["params"]
    assert sorted(params) == sorted(recorded), "parameter tree differs from 4.57's"
    for key, leaf in params.items():
        assert list(leaf.shape) == recorded[key]["shape"], key
        assert str(leaf.dtype) == recorded[key]["dtype"], f"{key}: params keep the checkpoint's dtype"
    assert_outputs(model(**forward_kwargs(meta)), meta, DATA / name)


@pytest.mark.parametrize("name", _ids(n for n, m in CASES.items() if "as_base" in m))
def test_head_folder_loads_into_base_class(name):
    meta = CASES[name]
    base = our_class(meta["family"], meta["as_base"]["class"]).from_pretrained(DATA / name)
    kw = forward_kwargs(meta)
    out = base(**kw)
    assert_as_base(out, meta, DATA / name)


@pytest.mark.parametrize("name", ["bert_model", "llama_causal_lm_sharded"])
def test_do_init_false(name):
    meta = CASES[name]
    model, params = our_class(meta["family"], meta["class"]).from_pretrained(DATA / name, _do_init=False)
    assert sorted(flat(params)) == sorted(meta["params"])
    assert_outputs(model(**forward_kwargs(meta), params=params), meta, DATA / name)


def _gen_kwargs(meta: dict) -> dict:
    prefix = "gen_encoder_" if meta["family"] == "t5" else "gen_"
    return {"input_ids": jnp.asarray(np.array(INPUTS[prefix + "input_ids"]), dtype=jnp.int32),
            "attention_mask": jnp.asarray(np.array(INPUTS[prefix + "attention_mask"]), dtype=jnp.int32),
            "max_new_tokens": INPUTS["new_tokens"], "do_sample": False}


@pytest.mark.parametrize("name", _ids(n for n, m in CASES.items() if "greedy" in m))
def test_greedy_generate_equals_457(name, loaded):
    meta = CASES[name]
    assert meta["greedy_min_margin"] > 1e-3, "recorded tokens too close to a tie to compare"
    model = loaded(name)
    if not hasattr(model, "generate"):
        pytest.skip("FlaxGenerationMixin.generate is not there yet")
    out = model.generate(**_gen_kwargs(meta))
    seqs = getattr(out, "sequences", out)
    assert np.asarray(seqs).tolist() == meta["greedy"]


@pytest.mark.parametrize("name", _ids(n for n, m in CASES.items() if "beam" in m))
def test_beam_generate_equals_457(name, loaded):
    meta = CASES[name]
    model = loaded(name)
    if not hasattr(model, "generate"):
        pytest.skip("FlaxGenerationMixin.generate is not there yet")
    out = model.generate(**_gen_kwargs(meta), num_beams=INPUTS["num_beams"])
    seqs = getattr(out, "sequences", out)
    assert np.asarray(seqs).tolist() == meta["beam"]


@pytest.mark.parametrize("name", ["bert_seq_cls", "gpt2_lm_head", "t5_cond_gen", "llama_causal_lm",
                                  "gemma_causal_lm", "llama_causal_lm_bf16"])
def test_msgpack_save_restores_to_457_tree(name, loaded, tmp_path):
    """Our msgpack, read by flax's own reader, is 4.57's nested tree: same keys, shapes, dtypes and values."""
    model = loaded(name)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "flax_model.msgpack").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    ours, theirs = file_tree(tmp_path), file_tree(DATA / name)
    assert sorted(ours) == sorted(theirs)
    for key, ref in theirs.items():
        got = ours[key]
        assert got.shape == ref.shape and got.dtype == ref.dtype, key
        np.testing.assert_array_equal(got, ref, err_msg=key)
    # and it loads back into our class with the same outputs
    meta = CASES[name]
    again = type(model).from_pretrained(tmp_path)
    assert_outputs(again(**forward_kwargs(meta)), meta, DATA / name)


def test_sharded_msgpack_save_restores_to_457_tree(loaded, tmp_path):
    name = "llama_causal_lm_sharded"
    meta = CASES[name]
    model = loaded(name)
    model.save_pretrained(tmp_path, safe_serialization=False, max_shard_size=meta["options"]["shard"])
    index = json.loads((tmp_path / "flax_model.msgpack.index.json").read_text())
    shards = sorted(tmp_path.glob("flax_model-*-of-*.msgpack"))
    assert len(shards) > 1 and not (tmp_path / "flax_model.msgpack").exists()
    n = len(shards)
    assert [s.name for s in shards] == [f"flax_model-{i:05d}-of-{n:05d}.msgpack" for i in range(1, n + 1)]
    ours, theirs = file_tree(tmp_path), file_tree(DATA / name)
    assert sorted(ours) == sorted(theirs) == sorted(index["weight_map"])
    for shard in shards:  # the index says where each tensor is
        for key in flat(msgpack_restore(shard.read_bytes())):
            assert index["weight_map"][key] == shard.name, key
    for key, ref in theirs.items():
        np.testing.assert_array_equal(ours[key], ref, err_msg=key)
    again = type(model).from_pretrained(tmp_path)
    assert_outputs(again(**forward_kwargs(meta)), meta, DATA / name)


def test_our_msgpack_files_load_in_457():
    """Recorded by `record_flax_457.py --check-ours` (4.57 is not installed here): each folder our Flax classes
    saved as msgpack loaded in 4.57 with every parameter from the file and outputs equal to ours."""
    check_ours_in_457(DATA, "record_flax_457.py",
                      set(CASES) - {n for n, m in CASES.items() if m["options"].get("bf16")})
