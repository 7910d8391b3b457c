"""bitsandbytes 8-bit and 4-bit: the config, quantize-while-loading, checkpoints written by the reference
(transformers 5 + bitsandbytes on the CPU, recorded by tests/reference/record_quant_bnb.py into tests/data/quant/bnb/),
our saves (bit-identical to the reference's files, also after a forward), the reference loading our saves, and bad
input."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pretrained import AutoModelForCausalLM
from pretrained.errors import CorruptCheckpointError, QuantizationError, QuantizationLibraryError
from pretrained.quantization.bnb import BitsAndBytesConfig, unpack_cpu_layout

bnb = pytest.importorskip("bitsandbytes")

DATA = Path(__file__).parent / "data" / "quant" / "bnb"
EXPECTED = json.loads((DATA / "expected.json").read_text())
VARIANTS = EXPECTED["variants"]
IDS = torch.tensor(EXPECTED["input_ids"])
REF_OUT = load_file(DATA / "outputs.safetensors")
LAYER = "model.layers.0.self_attn.q_proj"


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def quantized():
    """Each variant quantized by us from the float source, while loading: {variant: model}."""
    return {v: AutoModelForCausalLM.from_pretrained(DATA / "src", quantization_config=BitsAndBytesConfig(**kw))
            for v, kw in VARIANTS.items()}


# ---- the config -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"load_in_8bit": True},
    {"load_in_4bit": True},
    {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
     "bnb_4bit_compute_dtype": torch.bfloat16, "llm_int8_skip_modules": ["lm_head", "q_proj"]},
    {"load_in_8bit": True, "llm_int8_threshold": 0.0, "llm_int8_has_fp16_weight": False},
    {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float16", "bnb_4bit_quant_storage": "bfloat16"},
])
def test_config_dict_is_the_reference_one(kwargs):
    transformers = pytest.importorskip("transformers")
    ours = BitsAndBytesConfig(**kwargs).to_dict()
    theirs = transformers.BitsAndBytesConfig(**kwargs).to_dict()
    theirs["quant_method"] = str(getattr(theirs["quant_method"], "value", theirs["quant_method"]))
    assert ours == theirs
    assert BitsAndBytesConfig.from_dict(json.loads(json.dumps(ours))) == BitsAndBytesConfig(**kwargs)


def test_config_reads_the_reference_config_json():
    stored = json.loads((DATA / "nf4_dq" / "config.json").read_text())["quantization_config"]
    config = BitsAndBytesConfig.from_dict(stored)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.quantization_method() == "nf4"
    assert config.to_dict() == stored


@pytest.mark.parametrize("kwargs, words", [
    ({"load_in_8bit": True, "load_in_4bit": True}, "both"),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}, "bnb_4bit_quant_type"),
    ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "int8"}, "bnb_4bit_compute_dtype"),
    ({"load_in_8bit": "yes"}, "load_in_8bit"),
    ({"load_in_8bit": True, "llm_int8_threshold": "6"}, "llm_int8_threshold"),
    ({"load_in_8bit": True, "llm_int8_skip_modules": "lm_head"}, "llm_int8_skip_modules"),
])
def test_config_bad_values(kwargs, words):
    with pytest.raises(QuantizationError, match=words):
        BitsAndBytesConfig(**kwargs)


def test_neither_8_nor_4_bits_is_refused():
    with pytest.raises(QuantizationError, match="neither"):
        AutoModelForCausalLM.from_pretrained(DATA / "src", quantization_config=BitsAndBytesConfig())


def test_without_the_library_a_typed_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(QuantizationLibraryError, match="pip install"):
        AutoModelForCausalLM.from_pretrained(DATA / "src", quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    with pytest.raises(ImportError):  # also an ImportError, as the reference's
        AutoModelForCausalLM.from_pretrained(DATA / "nf4")


# ---- quantize while loading ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_quantize_while_loading_matches_the_reference(quantized, variant):
    model = quantized[variant]
    kind = bnb.nn.Linear8bitLt if variant == "int8" else bnb.nn.Linear4bit
    assert isinstance(model.get_submodule(LAYER), kind)
    assert type(model.lm_head) is torch.nn.Linear  # the output head stays float by default
    assert getattr(model, "is_loaded_in_8bit" if variant == "int8" else "is_loaded_in_4bit")
    assert not any(p.is_meta for p in model.parameters())
    # the same library quantized the same weights: every tensor equals the reference's file
    ref = load_file(DATA / variant / "model.safetensors")
    ours = model.state_dict()
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        assert torch.equal(ours[name], tensor), name
    torch.testing.assert_close(logits(model), REF_OUT[variant], rtol=0, atol=1e-5)


def test_generate_and_counts(quantized):
    float_model = AutoModelForCausalLM.from_pretrained(DATA / "src")
    for variant in ("int8", "nf4"):
        model = quantized[variant]
        assert model.num_parameters() == float_model.num_parameters()  # the real count, not the packed one
        assert model.get_memory_footprint() < float_model.get_memory_footprint() / 2
        ids = IDS[:1, :4]
        eager = model.generate(ids, max_new_tokens=6)
        assert eager.shape == (1, 10)
        assert torch.equal(model.generate(ids, max_new_tokens=6, cache_implementation="static"), eager)


def test_skip_modules_stay_float(tmp_path):
    config = BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["q_proj", "lm_head"])
    model = AutoModelForCausalLM.from_pretrained(DATA / "src", quantization_config=config)
    assert type(model.get_submodule(LAYER)) is torch.nn.Linear
    assert isinstance(model.get_submodule("model.layers.0.self_attn.k_proj"), bnb.nn.Linear4bit)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(again.get_submodule(LAYER)) is torch.nn.Linear
    torch.testing.assert_close(logits(again), logits(model), rtol=0, atol=0)


# ---- pre-quantized checkpoints written by the reference -----------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_load_the_reference_checkpoint(variant):
    model = AutoModelForCausalLM.from_pretrained(DATA / variant)
    assert model.is_quantized and model.config.quantization_config["quant_method"] == "bitsandbytes"
    kind = bnb.nn.Linear8bitLt if variant == "int8" else bnb.nn.Linear4bit
    assert isinstance(model.get_submodule(LAYER), kind)
    torch.testing.assert_close(logits(model), REF_OUT[variant], rtol=0, atol=1e-5)


# ---- saving: the standard layout, before and after a forward -----------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_after_forward_is_the_reference_file(quantized, variant, tmp_path):
    model = quantized[variant]
    logits(model)  # bitsandbytes' CPU forward repacks 4-bit weights (on CPUs with AVX512-BF16)
    model.save_pretrained(tmp_path)
    ours, ref = load_file(tmp_path / "model.safetensors"), load_file(DATA / variant / "model.safetensors")
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved == json.loads((DATA / variant / "config.json").read_text())["quantization_config"]
    # and it loads back, in ours and in the reference, to the same outputs
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path)), REF_OUT[variant],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["int8", "nf4_dq", "fp4"])
def test_reference_loads_our_save(quantized, variant, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = quantized[variant]
    logits(model)
    model.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    torch.testing.assert_close(logits(theirs), REF_OUT[variant], rtol=0, atol=1e-5)


def test_pre_quantized_load_forward_save_is_exact(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(DATA / "nf4")
    logits(model)
    model.save_pretrained(tmp_path)
    ours, ref = load_file(tmp_path / "model.safetensors"), load_file(DATA / "nf4" / "model.safetensors")
    assert all(torch.equal(ours[n], t) for n, t in ref.items()) and set(ours) == set(ref)


def test_unpack_cpu_layout_inverts_the_kernel_layout():
    g = torch.Generator().manual_seed(0)
    for n, k in ((64, 64), (96, 128)):
        w = torch.randn(n, k, generator=g)
        packed, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
        standard = packed.clone()
        kernel, _ = bnb.functional._convert_weight_packed_for_cpu(packed, state)
        assert not torch.equal(kernel.reshape(-1), standard.reshape(-1))
        assert torch.equal(unpack_cpu_layout(kernel, (n, k)), standard)


# ---- dequantize ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["int8", "nf4_dq"])
def test_dequantize(variant, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(DATA / variant)
    logits(model)
    ref = load_file(DATA / variant / "model.safetensors")
    model.dequantize()
    layer = model.get_submodule(LAYER)
    assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32
    if variant == "int8":
        want = ref[f"{LAYER}.weight"].float() * ref[f"{LAYER}.SCB"][:, None] / 127
    else:
        qs = bnb.functional.QuantState.from_dict(
            {k.removeprefix(f"{LAYER}.weight."): v for k, v in ref.items() if k.startswith(f"{LAYER}.weight.")},
            device=torch.device("cpu"))
        want = bnb.functional.dequantize_4bit(ref[f"{LAYER}.weight"], qs)
    torch.testing.assert_close(layer.weight, want, rtol=0, atol=1e-7)
    assert not model.is_quantized and not hasattr(model.config, "quantization_config")
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    assert load_file(tmp_path / "model.safetensors")[f"{LAYER}.weight"].dtype == torch.float32


# ---- bad input ----------------------------------------------------------------------------------------------
def _damaged(tmp_path: Path, variant: str, change) -> Path:
    folder = tmp_path / variant
    shutil.copytree(DATA / variant, folder)
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _blob(payload: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(payload).encode()), dtype=torch.uint8)


@pytest.mark.parametrize("variant, change, words", [
    ("int8", lambda t: t.pop(f"{LAYER}.SCB"), f"'{LAYER}.SCB'"),
    ("nf4", lambda t: t.pop(f"{LAYER}.weight.absmax"), f"'{LAYER}.weight.absmax'"),
    ("nf4", lambda t: t.pop(f"{LAYER}.weight.quant_state.bitsandbytes__nf4"), "quant_state.bitsandbytes__"),
    ("nf4_dq", lambda t: t.pop(f"{LAYER}.weight.nested_absmax"), f"'{LAYER}.weight.nested_absmax'"),
    ("nf4", lambda t: t.__setitem__(f"{LAYER}.weight.quant_state.bitsandbytes__nf4", _blob(
        {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 32]})), "shape"),
    ("nf4", lambda t: t.__setitem__(f"{LAYER}.weight.quant_state.bitsandbytes__nf4", _blob(
        {"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [64, 64]})), "blocksize"),
    ("nf4", lambda t: t.__setitem__(f"{LAYER}.weight.quant_state.bitsandbytes__nf4",
                                    torch.tensor([0xFF, 0xFE, 0x7B], dtype=torch.uint8)), "JSON"),
    ("nf4", lambda t: t.__setitem__(f"{LAYER}.weight.quant_state.bitsandbytes__fp4", _blob(
        {"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [64, 64]})), "one quant type"),
    ("fp4", lambda t: t.__setitem__(f"{LAYER}.weight.quant_state.bitsandbytes__fp4", _blob(
        {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 64]})), "quant_type"),
])
def test_damaged_checkpoint_is_a_typed_error(tmp_path, variant, change, words):
    folder = _damaged(tmp_path, variant, change)
    before = digest(folder)
    with pytest.raises(CorruptCheckpointError, match=words) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert "model.safetensors" in str(err.value)  # names the file
    assert digest(folder) == before  # nothing on disk changed


def test_absmax_of_the_wrong_length_is_a_shape_error(tmp_path):
    from pretrained.errors import ShapeMismatchError

    folder = _damaged(tmp_path, "nf4", lambda t: t.__setitem__(f"{LAYER}.weight.absmax", torch.ones(7)))
    with pytest.raises(ShapeMismatchError, match=f"{LAYER}.weight.absmax"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_a_layer_stored_in_float_stays_float(tmp_path):
    src = load_file(DATA / "src" / "model.safetensors")

    def to_float(t):
        for key in [k for k in t if k.startswith(LAYER + ".")]:
            del t[key]
        t[f"{LAYER}.weight"] = src[f"{LAYER}.weight"]

    model = AutoModelForCausalLM.from_pretrained(_damaged(tmp_path, "nf4", to_float))
    assert type(model.get_submodule(LAYER)) is torch.nn.Linear
    assert torch.equal(model.get_submodule(LAYER).weight, src[f"{LAYER}.weight"])
    assert isinstance(model.get_submodule("model.layers.0.self_attn.k_proj"), bnb.nn.Linear4bit)


def test_copy_and_pickle(tmp_path):
    import copy

    model = AutoModelForCausalLM.from_pretrained(DATA / "nf4")
    twin = copy.deepcopy(model)
    torch.testing.assert_close(logits(twin), logits(model), rtol=0, atol=0)
    torch.save(model.get_submodule(LAYER), tmp_path / "layer.pt")
    layer = torch.load(tmp_path / "layer.pt", weights_only=False)
    x = torch.randn(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), model.get_submodule(LAYER)(x), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", ["int8", "nf4_dq"])
def test_on_the_gpu(variant, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(DATA / "src", quantization_config=BitsAndBytesConfig(
        **VARIANTS[variant]), device_map="cuda")
    assert model.get_submodule(LAYER).weight.device.type == "cuda"
    with torch.no_grad():
        out = model(IDS.cuda()).logits.float().cpu()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), REF_OUT[variant].flatten(), dim=0)
    assert cos > 0.999  # another kernel than the CPU's, the same weights
    model.save_pretrained(tmp_path)  # saved from the GPU, loaded on the CPU
    again = logits(AutoModelForCausalLM.from_pretrained(tmp_path))
    assert torch.nn.functional.cosine_similarity(again.flatten(), out.flatten(), dim=0) > 0.999


def test_4bit_codes_stored_in_a_float_dtype_round_trip(tmp_path):
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_quant_storage="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(DATA / "src", quantization_config=config)
    before = logits(model)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert saved[f"{LAYER}.weight"].dtype == torch.bfloat16 and saved[f"{LAYER}.weight"].shape == (64 * 64 // 4, 1)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(again.get_submodule(LAYER), bnb.nn.Linear4bit)
    torch.testing.assert_close(logits(again), before, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [{"load_in_8bit": True},
                                    {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                     "bnb_4bit_use_double_quant": True}])
def test_gpt2_conv1d_layers_match_the_reference(tmp_path, kwargs):
    """GPT-2's Conv1D (a Linear stored [in, out]) is quantized as its Linear: the same tensors as the reference's
    quantization, both directions of loading."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    source = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4,
                                                                  n_positions=32, bos_token_id=1, eos_token_id=2))
    with torch.no_grad():
        for p in source.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
    source.save_pretrained(tmp_path / "src")
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "src", quantization_config=transformers.BitsAndBytesConfig(**kwargs), device_map="cpu")
    ref.save_pretrained(tmp_path / "ref")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "src", quantization_config=BitsAndBytesConfig(**kwargs))
    layer = ours.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(layer, bnb.nn.Linear8bitLt if "load_in_8bit" in kwargs else bnb.nn.Linear4bit)
    theirs_file, ours_state = load_file(tmp_path / "ref" / "model.safetensors"), ours.state_dict()
    for name, tensor in theirs_file.items():
        assert torch.equal(ours_state[name], tensor), name
    ids = IDS[:1, :6]
    want = logits_of(ref, ids)
    torch.testing.assert_close(logits_of(ours, ids), want, rtol=0, atol=1e-5)
    ours.save_pretrained(tmp_path / "ours")
    torch.testing.assert_close(logits_of(transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ours", device_map="cpu"), ids), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(tmp_path / "ref"), ids), want,
                               rtol=0, atol=1e-5)
    ours.dequantize()
    assert type(ours.get_submodule("transformer.h.0.attn.c_attn")).__name__ == "Conv1D"
    assert ours.get_submodule("transformer.h.0.attn.c_attn").weight.shape == (64, 192)


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()
