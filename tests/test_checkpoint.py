"""Checkpoint files: discovery, the formats the ecosystem writes (single, sharded, variants, pickle), stale-file
cleanup, loading reports, and bad input (every error names the file, and nothing on disk changes)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open

import pretrained
from pretrained.checkpoint.shards import parse_size, shard_filenames
from pretrained.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    LoadingError,
    ShapeMismatchError,
    UnsafeCheckpointError,
)

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
# shard counts of the tiny untied model (107,136 bytes in 21 tensors, the largest 16,384 bytes)
SHARDS = {"25KB": 5, "30KB": 4, "40KB": 3, "60KB": 2, "5GB": 1}


def tiny_model(seed: int = 0, cls=None, **overrides):
    torch.manual_seed(seed)
    cls = cls or pretrained.LlamaForCausalLM
    return cls.from_config(pretrained.LlamaConfig(**{**TINY, **overrides}))


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name].cpu(), tensor.cpu()), name


def digest(folder) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with a hash of its bytes."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d + "/" for d in dirs]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            out[rel] = "dir" if name.endswith("/") else hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def weight_files(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith((".safetensors", ".bin")))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def safetensors_keys_and_metadata(path):
    with safe_open(path, "pt") as f:
        return set(f.keys()), f.metadata()


@pytest.fixture(scope="module")
def model_a():
    return tiny_model(0)


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory, model_a):
    folder = tmp_path_factory.mktemp("sharded")
    model_a.save_pretrained(folder, max_shard_size="30KB")
    return folder


def copy_of(folder, tmp_path):
    dest = tmp_path / "ckpt"
    shutil.copytree(folder, dest)
    return dest


# ---- formats --------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_shard_size", ["5GB", "60KB", "30KB", "25KB", 25_000])
def test_save_layout_matches_the_ecosystem(tmp_path, model_a, max_shard_size):
    import transformers

    model_a.save_pretrained(tmp_path / "ours", max_shard_size=max_shard_size)
    names = sorted(os.listdir(tmp_path / "ours"))
    count = SHARDS.get(max_shard_size, 5)
    shards = shard_filenames(count, "model.safetensors")
    index_name = "model.safetensors.index.json"
    expected = sorted(["config.json", "generation_config.json", *shards] + ([index_name] if count > 1 else []))
    assert names == expected
    state = state_of(model_a)
    seen = set()
    limit = parse_size(max_shard_size)
    for shard in shards:
        keys, metadata = safetensors_keys_and_metadata(tmp_path / "ours" / shard)
        assert metadata == {"format": "pt"}
        assert not keys & seen
        seen |= keys
        size = sum(state[k].nbytes for k in keys)
        assert size <= limit or len(keys) == 1
    assert seen == set(state)

    # the reference library writes the same files for the same model and limit
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert_same_state(state_of(ref_model), state)
    ref_model.save_pretrained(tmp_path / "ref", max_shard_size=max_shard_size)
    ref_names = sorted(os.listdir(tmp_path / "ref"))
    if count > 1:
        ours, ref = read_json(tmp_path / "ours" / index_name), read_json(tmp_path / "ref" / index_name)
        assert ours["metadata"] == ref["metadata"]
        assert ours["metadata"] == {"total_size": sum(t.nbytes for t in state.values()),
                                    "total_parameters": sum(t.numel() for t in state.values())}
        assert list(ours) == list(ref) == ["metadata", "weight_map"]
        assert list(ours["weight_map"]) == list(ref["weight_map"]) == sorted(state)
        assert set(ours["weight_map"].values()) == set(shards)
        for shard in shards:
            keys, _ = safetensors_keys_and_metadata(tmp_path / "ours" / shard)
            assert keys == {k for k, f in ours["weight_map"].items() if f == shard}
        # the reference may cut shards elsewhere, but names them by the same rule
        ref_shards = [n for n in ref_names if n.endswith(".safetensors")]
        assert ref_shards == shard_filenames(len(ref_shards), "model.safetensors")
        assert set(ref_names) - set(ref_shards) == set(names) - set(shards)
    else:
        assert ref_names == names
        assert safetensors_keys_and_metadata(tmp_path / "ref" / "model.safetensors") == \
            safetensors_keys_and_metadata(tmp_path / "ours" / "model.safetensors")

    # and we read both
    for folder in ("ours", "ref"):
        loaded = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path / folder)
        assert_same_state(state_of(loaded), state)


@pytest.mark.parametrize("max_shard_size", ["5GB", "20KB"])
def test_variant_save_and_load(tmp_path, max_shard_size):
    import transformers

    model = tiny_model(1).half()
    state = state_of(model)
    model.save_pretrained(tmp_path, variant="fp16", max_shard_size=max_shard_size)
    count = {"5GB": 1, "20KB": 3}[max_shard_size]  # half the bytes of float32: 20KB cuts like 40KB there
    shards = shard_filenames(count, "model.fp16.safetensors")
    index = ["model.safetensors.index.fp16.json"] if count > 1 else []
    assert sorted(os.listdir(tmp_path)) == sorted(["config.json", "generation_config.json", *shards, *index])
    if index:
        assert set(read_json(tmp_path / index[0])["weight_map"].values()) == set(shards)
    assert read_json(tmp_path / "config.json")["dtype"] == "float16"

    loaded = pretrained.LlamaForCausalLM.from_pretrained(tmp_path, variant="fp16")
    assert_same_state(state_of(loaded), state)
    with pytest.raises(CheckpointNotFoundError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path)  # no plain weights in the folder
    assert "model.safetensors" in str(err.value) and str(tmp_path) in str(err.value)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, variant="fp16")
    assert_same_state(state_of(ref), state)

    # a variant and a plain save live side by side; each save only replaces its own files
    plain = tiny_model(2)
    plain.save_pretrained(tmp_path, max_shard_size="60KB")
    assert set(shards) <= set(os.listdir(tmp_path))
    # (config.json is shared: it now says float32, so ask for the variant's dtype)
    assert_same_state(state_of(pretrained.LlamaForCausalLM.from_pretrained(tmp_path, variant="fp16",
                                                                           dtype=torch.float16)), state)
    assert_same_state(state_of(pretrained.LlamaForCausalLM.from_pretrained(tmp_path)), state_of(plain))


@pytest.mark.parametrize("max_shard_size", ["5GB", "40KB"])
def test_pickle_format(tmp_path, model_a, max_shard_size):
    import transformers

    state = state_of(model_a)
    model_a.save_pretrained(tmp_path, safe_serialization=False, max_shard_size=max_shard_size)
    count = SHARDS[max_shard_size]
    shards = shard_filenames(count, "pytorch_model.bin")
    index = ["pytorch_model.bin.index.json"] if count > 1 else []
    assert sorted(os.listdir(tmp_path)) == sorted(["config.json", "generation_config.json", *shards, *index])
    on_disk = {}
    for shard in shards:
        part = torch.load(tmp_path / shard, weights_only=True)
        assert not set(part) & set(on_disk)
        on_disk.update(part)
    assert_same_state(on_disk, state)
    if index:
        data = read_json(tmp_path / index[0])
        assert list(data["weight_map"]) == sorted(state) and set(data["weight_map"].values()) == set(shards)
        assert data["metadata"]["total_size"] == sum(t.nbytes for t in state.values())

    for kwargs in ({}, {"use_safetensors": False}):
        assert_same_state(state_of(pretrained.LlamaForCausalLM.from_pretrained(tmp_path, **kwargs)), state)
    assert_same_state(state_of(transformers.AutoModelForCausalLM.from_pretrained(tmp_path)), state)

    before = digest(tmp_path)
    with pytest.raises(CheckpointNotFoundError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    assert "use_safetensors=True" in str(err.value) and str(tmp_path) in str(err.value)
    assert digest(tmp_path) == before


def test_safetensors_first_unless_told_otherwise(tmp_path):
    safe, pickled = tiny_model(1), tiny_model(2)
    pickled.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="60KB")
    safe.save_pretrained(tmp_path, max_shard_size="40KB")  # leaves the pickle files alone
    assert {"pytorch_model.bin.index.json", "model.safetensors.index.json"} <= set(os.listdir(tmp_path))
    assert_same_state(state_of(pretrained.LlamaForCausalLM.from_pretrained(tmp_path)), state_of(safe))
    assert_same_state(state_of(pretrained.LlamaForCausalLM.from_pretrained(tmp_path, use_safetensors=False)),
                      state_of(pickled))
    model = tiny_model(3)
    pretrained.load_sharded_checkpoint(model, tmp_path, prefer_safe=False)
    assert_same_state(state_of(model), state_of(pickled))
    pretrained.load_sharded_checkpoint(model, tmp_path)
    assert_same_state(state_of(model), state_of(safe))


@pytest.mark.parametrize("max_shard_size", ["5GB", "30KB"])
def test_tied_weights_are_written_once(tmp_path, max_shard_size):
    import transformers

    model = tiny_model(4, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path, max_shard_size=max_shard_size)
    keys = set()
    for name in weight_files(tmp_path):
        keys |= safetensors_keys_and_metadata(tmp_path / name)[0]
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert keys == set(model.state_dict()) - {"lm_head.weight"}
    if os.path.exists(tmp_path / "model.safetensors.index.json"):
        index = read_json(tmp_path / "model.safetensors.index.json")
        assert set(index["weight_map"]) == keys
        assert index["metadata"]["total_size"] == sum(model.state_dict()[k].nbytes for k in keys)
    assert read_json(tmp_path / "config.json")["tie_word_embeddings"] is True

    loaded, info = pretrained.LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert_same_state(state_of(loaded), state_of(model))
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert_same_state(state_of(ref), state_of(model))
    assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()


def test_shared_memory_in_a_given_state_dict(tmp_path, model_a):
    # a tied model's own state dict, passed explicitly: the tie is still written once
    tied = tiny_model(4, tie_word_embeddings=True)
    tied.save_pretrained(tmp_path / "tied", state_dict=tied.state_dict())
    keys, _ = safetensors_keys_and_metadata(tmp_path / "tied" / "model.safetensors")
    assert keys == set(tied.state_dict()) - {"lm_head.weight"}
    loaded = pretrained.LlamaForCausalLM.from_pretrained(tmp_path / "tied")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert_same_state(state_of(loaded), state_of(tied))

    # an untied model given two names for one tensor: refused (as the reference does), not one name dropped
    model_a.save_pretrained(tmp_path / "existing")
    before = digest(tmp_path / "existing")
    state = dict(model_a.state_dict())
    state["model.norm.weight"] = state["model.layers.0.input_layernorm.weight"]
    with pytest.raises(ValueError) as err:
        model_a.save_pretrained(tmp_path / "existing", state_dict=state)
    assert "model.norm.weight" in str(err.value) and "model.layers.0.input_layernorm.weight" in str(err.value)
    assert digest(tmp_path / "existing") == before
    # a copy is fine, and both names come back
    state["model.norm.weight"] = state["model.norm.weight"].clone()
    model_a.save_pretrained(tmp_path / "existing", state_dict=state)
    loaded = pretrained.LlamaForCausalLM.from_pretrained(tmp_path / "existing")
    assert_same_state(state_of(loaded), {k: v.detach() for k, v in state.items()})


def test_save_arguments(tmp_path, model_a):
    (tmp_path / "a-file").write_text("keep me")
    with pytest.raises(NotADirectoryError):
        model_a.save_pretrained(tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "keep me"
    model_a.save_pretrained(tmp_path / "not-main", is_main_process=False)
    assert not (tmp_path / "not-main").exists()
    with pytest.raises(ValueError):
        model_a.save_pretrained(tmp_path / "bad-size", max_shard_size="lots")
    assert not (tmp_path / "bad-size").exists()  # refused before anything is created


def test_a_tensor_bigger_than_the_limit_gets_its_own_shard(tmp_path, model_a):
    model_a.save_pretrained(tmp_path, max_shard_size="10KB")  # the embeddings are 16,384 bytes
    index = read_json(tmp_path / "model.safetensors.index.json")
    for big in ("model.embed_tokens.weight", "lm_head.weight"):
        shard = index["weight_map"][big]
        assert [k for k, f in index["weight_map"].items() if f == shard] == [big]
        assert os.path.getsize(tmp_path / shard) > 10_000
    for shard in set(index["weight_map"].values()):
        keys = [k for k, f in index["weight_map"].items() if f == shard]
        if len(keys) > 1:
            assert sum(model_a.state_dict()[k].nbytes for k in keys) <= 10_000
    assert_same_state(state_of(pretrained.LlamaForCausalLM.from_pretrained(tmp_path)), state_of(model_a))


def test_stale_weight_files_are_removed_and_other_files_kept(tmp_path):
    user_files = {"tokenizer.json": '{"version": "1.0"}', "README.md": "# my model\n",
                  "model-notes.txt": "not a shard", "model-00001-of-00009.safetensors.bak": "backup",
                  "pytorch_model-00001-of-00002.bin.txt": "x"}
    tmp_path.mkdir(exist_ok=True)
    for name, text in user_files.items():
        (tmp_path / name).write_text(text)

    def check(model, count):
        names = set(os.listdir(tmp_path))
        weights = shard_filenames(count, "model.safetensors") + (["model.safetensors.index.json"] if count > 1 else [])
        assert names == {"config.json", "generation_config.json", *weights, *user_files}
        for name, text in user_files.items():
            assert (tmp_path / name).read_text() == text
        assert_same_state(state_of(pretrained.LlamaForCausalLM.from_pretrained(tmp_path)), state_of(model))

    for step, (size, seed) in enumerate([("25KB", 1), ("60KB", 2), ("5GB", 3), ("30KB", 4), ("30KB", 5), ("5GB", 6)]):
        model = tiny_model(seed)
        model.save_pretrained(tmp_path, max_shard_size=size)
        check(model, SHARDS[size])


def test_load_sharded_checkpoint(tmp_path, sharded_folder, model_a):
    model = tiny_model(7)
    result = pretrained.load_sharded_checkpoint(model, sharded_folder)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    assert_same_state(state_of(model), state_of(model_a))

    # a checkpoint lacking one tensor and carrying an extra one
    state = state_of(tiny_model(8))
    dropped = state.pop("model.layers.1.mlp.up_proj.weight")
    state["extra.weight"] = torch.ones(3)
    tiny_model(8).save_pretrained(tmp_path / "odd", state_dict=state, max_shard_size="40KB")
    before = state_of(model)
    with pytest.raises(LoadingError) as err:
        pretrained.load_sharded_checkpoint(model, tmp_path / "odd", strict=True)
    assert "model.layers.1.mlp.up_proj.weight" in str(err.value) and "extra.weight" in str(err.value)
    assert_same_state(state_of(model), before)  # strict: nothing was loaded

    result = pretrained.load_sharded_checkpoint(model, tmp_path / "odd", strict=False)
    assert list(result.missing_keys) == ["model.layers.1.mlp.up_proj.weight"]
    assert list(result.unexpected_keys) == ["extra.weight"]
    after = state_of(model)
    assert torch.equal(after["model.layers.1.mlp.up_proj.weight"], before["model.layers.1.mlp.up_proj.weight"])
    assert not torch.equal(dropped, after["model.layers.1.mlp.up_proj.weight"])
    del state["extra.weight"]
    for name, tensor in state.items():
        assert torch.equal(after[name], tensor), name

    # the reference's function reports the same keys
    from transformers.trainer_utils import load_sharded_checkpoint as reference_load

    ref_result = reference_load(tiny_model(9), tmp_path / "odd", strict=False)
    assert sorted(ref_result.missing_keys) == sorted(result.missing_keys)
    assert sorted(ref_result.unexpected_keys) == sorted(result.unexpected_keys)


def test_shape_mismatch(tmp_path, sharded_folder, model_a):
    folder = copy_of(sharded_folder, tmp_path)
    before = digest(folder)
    with pytest.raises(ShapeMismatchError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder, vocab_size=64)
    message = str(err.value)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert name in message
    assert "[128, 32]" in message and "[64, 32]" in message
    assert "ignore_mismatched_sizes" in message
    index = read_json(folder / "model.safetensors.index.json")
    assert index["weight_map"]["model.embed_tokens.weight"] in message  # names the file

    model, info = pretrained.LlamaForCausalLM.from_pretrained(folder, vocab_size=64, ignore_mismatched_sizes=True,
                                                              output_loading_info=True)
    assert sorted(info["mismatched_keys"]) == [("lm_head.weight", (128, 32), (64, 32)),
                                               ("model.embed_tokens.weight", (128, 32), (64, 32))]
    assert info["unexpected_keys"] == []
    assert info["missing_keys"] == []  # a mismatched tensor is in the checkpoint: reported once, as mismatched
    state, expected = state_of(model), state_of(model_a)
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        t = state[name]
        assert t.shape == (64, 32) and t.device.type == "cpu" and torch.isfinite(t).all()
        assert 0.005 < t.std().item() < 0.05  # initialised with initializer_range, not left empty
    for name, tensor in expected.items():
        if name not in ("lm_head.weight", "model.embed_tokens.weight"):
            assert torch.equal(state[name], tensor), name
    assert digest(folder) == before

    # the reference library reports the same mismatches
    import transformers

    _, ref_info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, vocab_size=64, ignore_mismatched_sizes=True, output_loading_info=True)
    assert sorted((n, tuple(a), tuple(b)) for n, a, b in ref_info["mismatched_keys"]) == \
        sorted(info["mismatched_keys"])
    assert set(ref_info["missing_keys"]) == set(info["missing_keys"])


# ---- bad input ------------------------------------------------------------------------------------


def _load(folder, how):
    if how == "model":
        return pretrained.LlamaForCausalLM.from_pretrained(folder)
    if how == "auto":
        return pretrained.AutoModelForCausalLM.from_pretrained(folder)
    return pretrained.load_sharded_checkpoint(tiny_model(5), folder, prefer_safe=False)


@pytest.mark.parametrize("how", ["model", "auto", "sharded"])
@pytest.mark.parametrize("cut", ["one-byte", "half", "header-only", "4-bytes", "empty"])
@pytest.mark.parametrize("which", [0, 2])
def test_truncated_shard(tmp_path, sharded_folder, how, cut, which):
    folder = copy_of(sharded_folder, tmp_path)
    shard = folder / shard_filenames(SHARDS["30KB"], "model.safetensors")[which]
    data = shard.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    keep = {"one-byte": len(data) - 1, "half": len(data) // 2, "header-only": header, "4-bytes": 4, "empty": 0}[cut]
    shard.write_bytes(data[:keep])
    before = digest(folder)
    with pytest.raises(CorruptCheckpointError) as err:
        _load(folder, how)
    assert str(shard) in str(err.value)
    assert digest(folder) == before


def test_truncated_single_file(tmp_path, model_a):
    model_a.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    before = digest(tmp_path)
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path)
    assert str(path) in str(err.value) and "truncated" in str(err.value)
    assert digest(tmp_path) == before


@pytest.mark.parametrize("how", ["model", "auto", "sharded"])
def test_shard_named_in_the_index_but_missing(tmp_path, sharded_folder, how):
    folder = copy_of(sharded_folder, tmp_path)
    missing = shard_filenames(SHARDS["30KB"], "model.safetensors")[1]
    os.unlink(folder / missing)
    before = digest(folder)
    with pytest.raises(CorruptCheckpointError) as err:
        _load(folder, how)
    message = str(err.value)
    assert missing in message and str(folder / "model.safetensors.index.json") in message
    assert digest(folder) == before


def test_config_but_no_weights(tmp_path):
    pretrained.LlamaConfig(**TINY).save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("weights coming soon")
    before = digest(tmp_path)
    for how in ("model", "auto", "sharded"):
        with pytest.raises(CheckpointNotFoundError) as err:
            _load(tmp_path, how)
        assert str(tmp_path) in str(err.value) and "model.safetensors" in str(err.value)
        assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(CheckpointNotFoundError):
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path / "does-not-exist")
    assert digest(tmp_path) == before


BAD_INDEXES = {
    "bad-json": '{"metadata": {}, "weight_map": {"a": "b",}}',
    "truncated": '{"metadata": {"total_size": 10}, "weight_map": {"model.norm.weight": "model-0000',
    "a-list": '["model-00001-of-00004.safetensors"]',
    "no-weight-map": '{"metadata": {"total_size": 10}}',
    "weight-map-list": '{"weight_map": ["model-00001-of-00004.safetensors"]}',
    "non-string-file": '{"weight_map": {"model.norm.weight": 3}}',
    "outside-folder": '{"weight_map": {"model.norm.weight": "../model-00001-of-00004.safetensors"}}',
    "absolute-path": '{"weight_map": {"model.norm.weight": "/etc/passwd"}}',
}


@pytest.mark.parametrize("kind", sorted(BAD_INDEXES))
def test_malformed_index(tmp_path, sharded_folder, kind):
    folder = copy_of(sharded_folder, tmp_path)
    index = folder / "model.safetensors.index.json"
    index.write_text(BAD_INDEXES[kind])
    before = digest(folder)
    for how in ("model", "sharded"):
        with pytest.raises(CorruptCheckpointError) as err:
            _load(folder, how)
        assert str(index) in str(err.value)
    assert digest(folder) == before


def _corrupt_header(path):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] -= 4  # the byte range no longer fits the shape
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(raw) == n
    path.write_bytes(data[:8] + raw + data[8 + n:])


CORRUPTIONS = {
    "garbage": lambda p: p.write_bytes(b"\x00" * 16 + b"not a safetensors file" * 50),
    "huge-header-length": lambda p: p.write_bytes((2**62).to_bytes(8, "little") + p.read_bytes()[8:]),
    "header-not-json": lambda p: p.write_bytes(p.read_bytes()[:8] + b"\xff" * 20 + p.read_bytes()[28:]),
    "header-a-list": lambda p: p.write_bytes((2).to_bytes(8, "little") + b"[]"),
    "bad-byte-range": _corrupt_header,
    "unknown-dtype": lambda p: p.write_bytes(p.read_bytes().replace(b'"dtype":"F32"', b'"dtype":"X32"', 1)),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_safetensors(tmp_path, sharded_folder, kind):
    folder = copy_of(sharded_folder, tmp_path)
    shard = folder / shard_filenames(SHARDS["30KB"], "model.safetensors")[3]
    CORRUPTIONS[kind](shard)
    before = digest(folder)
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert str(shard) in str(err.value)
    assert digest(folder) == before


def test_corrupt_pickle(tmp_path, model_a):
    model_a.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="40KB")
    shard = tmp_path / "pytorch_model-00002-of-00003.bin"
    shard.write_bytes(shard.read_bytes()[: 300])
    before = digest(tmp_path)
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path)
    assert str(shard) in str(err.value)
    assert digest(tmp_path) == before


class _WritesAFile:
    """Unpickling this calls open(marker, "w"): a pickle that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _write_evil(path, kind, marker):
    payload = {"model.norm.weight": torch.ones(32)}
    if kind == "open":
        payload["model.embed_tokens.weight"] = _WritesAFile(marker)
    elif kind == "system":
        payload["lm_head.weight"] = _RunsAShellCommand(marker)
    if kind == "legacy":
        payload["x"] = _RunsAShellCommand(marker)
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif kind == "raw-pickle":
        with open(path, "wb") as f:
            pickle.dump(_WritesAFile(marker), f, protocol=2)
    else:
        torch.save(payload, path)


@pytest.mark.parametrize("kind", ["open", "system", "legacy", "raw-pickle"])
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_code_carrying_pickle_is_refused(tmp_path, model_a, kind, layout):
    folder = tmp_path / "ckpt"
    marker = tmp_path / "PWNED"
    if layout == "single":
        pretrained.LlamaConfig(**TINY).save_pretrained(folder)
        evil = folder / "pytorch_model.bin"
    else:
        model_a.save_pretrained(folder, safe_serialization=False, max_shard_size="40KB")
        evil = folder / "pytorch_model-00002-of-00003.bin"
    _write_evil(evil, kind, marker)
    assert not marker.exists()
    before = digest(folder)
    for call in (lambda: pretrained.LlamaForCausalLM.from_pretrained(folder),
                 lambda: pretrained.AutoModelForCausalLM.from_pretrained(folder, use_safetensors=False),
                 lambda: pretrained.load_sharded_checkpoint(tiny_model(5), folder, prefer_safe=False)):
        with pytest.raises(UnsafeCheckpointError) as err:
            call()
        assert str(evil) in str(err.value)
        assert isinstance(err.value, CheckpointError) and isinstance(err.value, OSError)
        assert not marker.exists()
    assert digest(folder) == before
    with pytest.raises(ValueError, match="weights_only"):
        pretrained.LlamaForCausalLM.from_pretrained(folder, weights_only=False)
    assert not marker.exists()
