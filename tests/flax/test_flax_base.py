"""FlaxPreTrainedModel: loading and saving on the ecosystem's files, both ways, and what goes wrong.

Round trips: our Flax save (PyTorch-layout safetensors) loads in our PyTorch class and in transformers 5 with equal
outputs; 4.x's msgpack (one file, shards + index, written by flax.serialization) loads and is written back readable
by flax; sharded safetensors both ways; 4.x's flax-format safetensors. Then `_do_init=False`, missing / unexpected /
mismatched keys (typed errors, LoadingInfo), casting with masks, bad files, the Auto classes and the Hub.

One tiny Llama checkpoint (written by our PyTorch class) serves the module.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="jax/flax not installed (pip install pretrained[flax])")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from flax.serialization import msgpack_restore, to_bytes  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402

import pretrained  # noqa: E402
from pretrained import errors  # noqa: E402
from pretrained.checkpoint.numpy_writer import write_safetensors  # noqa: E402
from pretrained.checkpoint.header import read_header  # noqa: E402

from flax_tf_common import IDS, LLAMA_TINY as CONFIG, llama_checkpoint  # noqa: E402
from flax_tf_common import assert_close as _close, files as _files  # noqa: E402
from flax_tf_common import assert_no_weights, assert_push_and_reload, assert_shape_mismatch_error  # noqa: E402
from flax_tf_common import assert_unexpected_head_reported, assert_wrong_config_class, pytorch_logits  # noqa


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(folder, our PyTorch LlamaForCausalLM, its logits on IDS)."""
    return llama_checkpoint(tmp_path_factory.mktemp("flax-base-ckpt"))


@pytest.fixture(scope="module")
def fx(ckpt):
    return pretrained.FlaxLlamaForCausalLM.from_pretrained(ckpt[0])


def _same_params(a, b):
    fa, fb = flatten_dict(a), flatten_dict(b)
    assert set(fa) == set(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])), k


# ---- PyTorch-layout safetensors ---------------------------------------------------------------------------------
def test_loads_pytorch_checkpoint(ckpt, fx):
    _close(fx(IDS).logits, ckpt[2])
    assert fx.config.architectures == ["LlamaForCausalLM"] and fx.generation_config is not None


def test_default_save_loads_in_our_pytorch_class(fx, tmp_path):
    fx.save_pretrained(tmp_path)
    assert _files(tmp_path) == ["config.json", "generation_config.json", "model.safetensors"]
    assert read_header(tmp_path / "model.safetensors").metadata == {"format": "pt"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    pt = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert pt.loading_info.missing_keys == [] and pt.loading_info.unexpected_keys == []
    _close(pytorch_logits(pt), fx(IDS).logits)
    _same_params(pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path).params, fx.params)


def test_default_save_loads_in_transformers(fx, tmp_path):
    transformers = pytest.importorskip("transformers")
    fx.save_pretrained(tmp_path)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    _close(pytorch_logits(ref), fx(IDS).logits)


def test_sharded_safetensors_both_ways(ckpt, fx, tmp_path):
    folder, pt, logits = ckpt
    pt.save_pretrained(tmp_path / "pt", max_shard_size="10KB")
    assert "model.safetensors.index.json" in _files(tmp_path / "pt")
    _same_params(pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path / "pt").params, fx.params)
    fx.save_pretrained(tmp_path / "fx", max_shard_size="10KB")
    names = _files(tmp_path / "fx")
    shards = [n for n in names if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", n)]
    assert len(shards) > 2 and "model.safetensors.index.json" in names and "model.safetensors" not in names
    index = json.loads((tmp_path / "fx" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(pt.state_dict()) and set(index["weight_map"].values()) == set(shards)
    back = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path / "fx").eval()
    _close(pytorch_logits(back), logits)


def test_parameters_never_share_the_files_pages(ckpt, tmp_path):
    """Every parameter is a copy of its bytes, on one device and on a mesh: a checkpoint overwritten in place after
    the load (same size, other bytes) changes nothing, even with every tensor 64-byte aligned in the file (memory
    JAX on the CPU would otherwise adopt as it is)."""
    raw = (ckpt[0] / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].rstrip(b" ")
    header += b" " * (-(8 + len(header)) % 64)  # safetensors pads its header with spaces
    folder = tmp_path / "aligned"
    folder.mkdir()
    (folder / "config.json").write_bytes((ckpt[0] / "config.json").read_bytes())
    path = folder / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("model",))
    models = [pretrained.FlaxLlamaForCausalLM.from_pretrained(folder),
              pretrained.FlaxLlamaForCausalLM.from_pretrained(folder, mesh=mesh)]
    before = [jax.tree_util.tree_map(np.array, m.params) for m in models]
    with open(path, "r+b") as f:
        f.seek(8 + len(header))
        f.write(bytes(len(raw) - 8 - n))
    for model, params in zip(models, before, strict=True):
        _same_params(model.params, params)


def test_bf16_checkpoint_keeps_its_dtype(ckpt, tmp_path):
    pretrained.LlamaForCausalLM.from_pretrained(ckpt[0], dtype=torch.bfloat16).save_pretrained(tmp_path)
    model = pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path)
    leaves = jax.tree_util.tree_leaves(model.params)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}  # 4.x: params keep the checkpoint's dtype
    as_fp32 = pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path, param_dtype=jnp.float32)
    assert {x.dtype for x in jax.tree_util.tree_leaves(as_fp32.params)} == {jnp.dtype(jnp.float32)}
    _close(as_fp32.params["lm_head"]["kernel"], model.params["lm_head"]["kernel"], atol=0)


PEAK_SCRIPT = """
import sys
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
import jax.numpy as jnp
from pretrained import FlaxLlamaForCausalLM
FlaxLlamaForCausalLM  # the class and jax are imported and running before the baseline is read
(jnp.ones(3) + 1).block_until_ready()
before = status("VmRSS")
model = FlaxLlamaForCausalLM.from_pretrained(sys.argv[1])
print(status("VmHWM") - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak RSS from /proc (Linux)")
def test_load_peak_memory_near_one_copy(tmp_path):
    """Streaming from the mapped file: the load's peak stays near one copy of the parameters (4.x: 4.4x)."""
    import subprocess
    import sys

    config = pretrained.LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                                    num_attention_heads=8)
    config.save_pretrained(tmp_path)
    shapes = {n: tuple(x.shape) for n, x in flatten_dict(pretrained.FlaxLlamaForCausalLM(
        config, _do_init=False).params_shape_tree, sep=".").items()}
    rng = np.random.default_rng(0)
    arrays = {}
    for name, shape in shapes.items():  # PyTorch names and layouts
        torch_name = name.replace(".kernel", ".weight").replace(".embedding", ".weight")
        arrays[torch_name] = rng.standard_normal(shape[::-1] if name.endswith("kernel") else shape, np.float32)
    write_safetensors(tmp_path / "model.safetensors", arrays, {"format": "pt"})
    size = sum(a.nbytes for a in arrays.values())
    del arrays
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-2000:]
    growth = int(run.stdout.strip().splitlines()[-1])
    # one copy, plus the runtime's own working memory while loading (tracing the init, compiling the transposes)
    assert growth < 1.25 * size + 48e6, f"a {size / 1e6:.0f} MB checkpoint raised the peak RSS by {growth / 1e6:.0f} MB"


# ---- 4.x's msgpack ------------------------------------------------------------------------------------------------
def test_msgpack_round_trip(fx, tmp_path):
    fx.save_pretrained(tmp_path, safe_serialization=False)
    assert _files(tmp_path) == ["config.json", "flax_model.msgpack", "generation_config.json"]
    restored = msgpack_restore((tmp_path / "flax_model.msgpack").read_bytes())  # flax reads it as 4.x did
    _same_params(restored, fx.params)
    _same_params(pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path).params, fx.params)


def test_msgpack_written_by_flax_loads(fx, tmp_path):
    fx.config.save_pretrained(tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(to_bytes(fx.params))  # what 4.x's save_pretrained wrote
    model = pretrained.FlaxAutoModelForCausalLM.from_pretrained(tmp_path)
    _same_params(model.params, fx.params)
    _close(model(IDS).logits, fx(IDS).logits, atol=0)
    base = pretrained.FlaxLlamaModel.from_pretrained(tmp_path, output_loading_info=True)  # prefix stripped
    _same_params(base[0].params, fx.params["model"])
    assert base[1]["unexpected_keys"] == ["lm_head/kernel"]


def test_sharded_msgpack(fx, tmp_path):
    fx.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="5KB")  # the embedding alone is 12.7 KB
    names = _files(tmp_path)
    shards = [n for n in names if n.startswith("flax_model-")]
    assert len(shards) > 2 and "flax_model.msgpack.index.json" in names and "flax_model.msgpack" not in names
    index_text = (tmp_path / "flax_model.msgpack.index.json").read_text()
    index = json.loads(index_text)
    assert index_text == json.dumps(index, indent=2, sort_keys=True) + "\n"  # as 4.x wrote it
    assert set(index["weight_map"]) == {"/".join(k) for k in flatten_dict(fx.params)}
    assert index["metadata"]["total_size"] == sum(x.nbytes for x in jax.tree_util.tree_leaves(fx.params))
    first = msgpack_restore((tmp_path / shards[0]).read_bytes())
    assert flatten_dict(first)  # never an empty first shard (4.x wrote one when the first tensor was too big)
    _same_params(pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path).params, fx.params)
    fx.save_pretrained(tmp_path, safe_serialization=False)  # one file again: the shards and index go
    assert _files(tmp_path) == ["config.json", "flax_model.msgpack", "generation_config.json"]


def test_folder_order_and_stale_formats(fx, tmp_path):
    """4.57's order: flax_model.msgpack before model.safetensors; a save removes the other format's files, so the
    folder never holds two different models."""
    fx.save_pretrained(tmp_path)
    doubled = jax.tree_util.tree_map(lambda x: x * 2, fx.params)
    (tmp_path / "flax_model.msgpack").write_bytes(to_bytes(doubled))
    _same_params(pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path).params, doubled)
    fx.save_pretrained(tmp_path)
    assert "flax_model.msgpack" not in _files(tmp_path)
    fx.save_pretrained(tmp_path, safe_serialization=False)
    assert "model.safetensors" not in _files(tmp_path)


def test_flax_format_safetensors(fx, tmp_path):
    """4.x's save_pretrained(safe_serialization=True) wrote Flax paths joined by '.', metadata format 'flax'."""
    fx.config.save_pretrained(tmp_path)
    flat = {".".join(k): np.asarray(v) for k, v in flatten_dict(fx.params).items()}
    write_safetensors(tmp_path / "model.safetensors", flat, {"format": "flax"})
    _same_params(pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path).params, fx.params)


# ---- _do_init, missing / unexpected / mismatched ---------------------------------------------------------------------
def test_do_init_false_with_pytorch_safetensors(ckpt, fx):
    model, params = pretrained.FlaxLlamaForCausalLM.from_pretrained(ckpt[0], _do_init=False)  # 4.57 failed here
    assert {d.platform for x in jax.tree_util.tree_leaves(params) for d in x.devices()} == {"cpu"}
    with pytest.raises(ValueError, match="_do_init=False"):
        model.params
    _close(model(IDS, params=params).logits, ckpt[2])
    _, _, info = pretrained.FlaxLlamaForCausalLM.from_pretrained(ckpt[0], _do_init=False, output_loading_info=True)
    assert info["missing_keys"] == []


def test_missing_weights_initialised_and_reported(ckpt, tmp_path):
    pretrained.LlamaModel.from_pretrained(ckpt[0]).save_pretrained(tmp_path)  # a base checkpoint: no lm_head
    model, info = pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info == {"missing_keys": ["lm_head/kernel"], "unexpected_keys": [], "mismatched_keys": [],
                    "error_msgs": []}
    assert model.params["lm_head"]["kernel"].shape == (32, 99)
    assert float(jnp.std(model.params["lm_head"]["kernel"])) > 0.1  # initialised (normal, std 0.2)
    assert model.loading_info.missing_keys == ["lm_head/kernel"]


def test_missing_weights_with_do_init_false(ckpt, tmp_path, caplog):
    pretrained.LlamaModel.from_pretrained(ckpt[0]).save_pretrained(tmp_path)
    model, params = pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path, _do_init=False)
    assert "lm_head" not in params and "lm_head/kernel" in caplog.text
    with pytest.raises(errors.LoadingError, match="lm_head/kernel.*init_weights"):
        model(IDS, params=params)
    params = model.init_weights(jax.random.PRNGKey(0), (1, 1), params)
    assert model(IDS, params=params).logits.shape == (2, 7, 99)


def test_unexpected_weights_reported(ckpt):
    assert_unexpected_head_reported(pretrained.FlaxLlamaModel, ckpt[0])


def test_shape_mismatch_is_a_typed_error(ckpt):
    assert_shape_mismatch_error(pretrained.FlaxLlamaForCausalLM, ckpt[0])
    model, info = pretrained.FlaxLlamaForCausalLM.from_pretrained(ckpt[0], intermediate_size=40,
                                                                   ignore_mismatched_sizes=True,
                                                                   output_loading_info=True)
    assert ("model/layers/0/mlp/gate_proj/kernel", (37, 32), (32, 40)) in info["mismatched_keys"]
    assert info["missing_keys"] == [] and model.params["model"]["layers"]["0"]["mlp"]["gate_proj"]["kernel"].shape \
        == (32, 40)


# ---- casting --------------------------------------------------------------------------------------------------------
def test_to_bf16_with_mask(fx):
    flat = flatten_dict(fx.params)
    mask = flax.traverse_util.unflatten_dict({k: k[-1] != "embedding" for k in flat})
    cast = fx.to_bf16(fx.params, mask)
    for k, v in flatten_dict(cast).items():
        assert v.dtype == (jnp.float32 if k[-1] == "embedding" else jnp.bfloat16), k
    assert fx.params["lm_head"]["kernel"].dtype == jnp.float32  # a new tree; the model's own is untouched
    assert {x.dtype for x in jax.tree_util.tree_leaves(fx.to_fp16(fx.params))} == {jnp.dtype(jnp.float16)}
    back = fx.to_fp32(cast)
    assert {x.dtype for x in jax.tree_util.tree_leaves(back)} == {jnp.dtype(jnp.float32)}
    _close(fx(IDS, params=fx.to_bf16(fx.params)).logits, fx(IDS).logits, atol=0.3)
    del mask["lm_head"]
    with pytest.raises(ValueError, match="lm_head/kernel"):
        fx.to_bf16(fx.params, mask)


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_no_weights(ckpt, tmp_path):
    assert_no_weights(pretrained.FlaxLlamaForCausalLM, ckpt[0], tmp_path, "flax_model.msgpack.*model.safetensors")


def test_corrupt_files_name_the_file(fx, tmp_path):
    fx.save_pretrained(tmp_path / "st")
    path = tmp_path / "st" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(errors.CorruptCheckpointError, match=re.escape(str(path))):
        pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path / "st")
    fx.save_pretrained(tmp_path / "mp", safe_serialization=False)
    path = tmp_path / "mp" / "flax_model.msgpack"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(errors.CorruptCheckpointError, match=re.escape(str(path)) + ".*truncated"):
        pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path / "mp")
    path.write_bytes(b"\xc1 not msgpack")
    with pytest.raises(errors.CorruptCheckpointError, match=re.escape(str(path))):
        pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path / "mp")
    fx.save_pretrained(tmp_path / "sh", safe_serialization=False, max_shard_size="5KB")
    second = sorted(n for n in os.listdir(tmp_path / "sh") if n.startswith("flax_model-"))[1]
    os.remove(tmp_path / "sh" / second)
    with pytest.raises(errors.CorruptCheckpointError, match=re.escape(second) + ".*missing"):
        pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path / "sh")


def test_wrong_config_class(ckpt):
    assert_wrong_config_class(pretrained.FlaxLlamaForCausalLM, ckpt[0])


# ---- the rest of the API ---------------------------------------------------------------------------------------------
@pytest.fixture
def clean_registry():
    from pretrained import registry

    before = dict(registry.FAMILIES)
    yield
    registry.FAMILIES.clear()
    registry.FAMILIES.update(before)


def test_auto_classes(ckpt, fx, clean_registry):
    assert type(pretrained.FlaxAutoModel.from_pretrained(ckpt[0])).__name__ == "FlaxLlamaModel"
    with pytest.raises(errors.UnknownModelTypeError, match="FlaxAutoModelForMaskedLM.*FlaxAutoModelForCausalLM"):
        pretrained.FlaxAutoModelForMaskedLM.from_pretrained(ckpt[0])
    fresh = pretrained.FlaxAutoModelForCausalLM.from_config(fx.config, seed=1)
    assert type(fresh) is pretrained.FlaxLlamaForCausalLM and fresh.params["lm_head"]["kernel"].shape == (32, 99)

    class MyConfig(pretrained.LlamaConfig):
        model_type = "my-flax-llama"

    class MyModel(pretrained.FlaxLlamaForCausalLM):
        config_class = MyConfig

    pretrained.AutoConfig.register("my-flax-llama", MyConfig)
    pretrained.FlaxAutoModelForCausalLM.register(MyConfig, MyModel)
    assert type(pretrained.FlaxAutoModelForCausalLM.from_config(MyConfig(**CONFIG))) is MyModel
    with pytest.raises(ValueError, match="already has a class"):
        pretrained.FlaxAutoModelForCausalLM.register(MyConfig, MyModel)


def test_subfolder_and_revision_args(fx, tmp_path):
    fx.save_pretrained(tmp_path / "sub")
    model = pretrained.FlaxLlamaForCausalLM.from_pretrained(tmp_path, subfolder="sub", revision=None, from_pt=True,
                                                            local_files_only=True, trust_remote_code=False)
    _same_params(model.params, fx.params)


def test_num_parameters_and_params_setter(fx):
    total = sum(x.size for x in jax.tree_util.tree_leaves(fx.params))
    assert fx.num_parameters() == total
    assert fx.num_parameters(exclude_embeddings=True) == total - 99 * 32
    model = pretrained.FlaxLlamaForCausalLM(fx.config)
    model.params = fx.params
    with pytest.raises(errors.LoadingError, match="lm_head/kernel"):
        model.params = {"model": fx.params["model"]}
    pretrained.FlaxLlamaForCausalLM.register_for_auto_class  # a classmethod (custom classes call it)
    from pretrained.remote_code import check_auto_class

    assert check_auto_class("FlaxAutoModelForCausalLM") == "FlaxAutoModelForCausalLM"


def test_push_to_hub_and_load_by_repo_id(hub_server, hub_cache, fx):
    assert_push_and_reload(hub_server, fx, pretrained.FlaxAutoModelForCausalLM, "flax-push",
                           lambda model, fx: _same_params(model.params, fx.params))
