"""Lower-bit weights (issue 16): int8/int4 quantize-while-loading on torch's packed kernels (TorchAoConfig forms),
compressed-tensors checkpoints both ways (written by the real library, loaded by transformers), save/reload,
dequantize, generation, and the typed errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import pretrained
from pretrained import AutoModelForCausalLM, TorchAoConfig
from pretrained.errors import CorruptCheckpointError, QuantizationError
from pretrained.quantization.base import quantizer_for
from pretrained.quantization.compressed import pack_int32, unpack_int32
from pretrained.quantization.linear import QuantizedLinear, quantize_weight
from pretrained.quantization.loading import _file_mapped, release_pages

transformers = pytest.importorskip("transformers")

CFG = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, initializer_range=0.05)
LINEARS_PER_LAYER = 7


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A bf16 Llama written by the reference, and its logits on fixed ids."""
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG)).to(torch.bfloat16).eval()
    folder = tmp_path_factory.mktemp("llama")
    ref.save_pretrained(folder)
    ids = torch.randint(0, CFG["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = ref(ids).logits.float()
    return folder, ids, logits


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def quantized_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, QuantizedLinear))


# ---- configs and dispatch ------------------------------------------------------------------------------------------
class Int4WeightOnlyConfig:  # the reference's config object, as far as it is data (read by class name)
    def __init__(self, group_size=128):
        self.group_size = group_size


def test_config_forms():
    assert TorchAoConfig("int4_weight_only").group_size == 128
    assert TorchAoConfig("int4_weight_only", group_size=64).to_dict()["quant_type_kwargs"] == {"group_size": 64}
    assert TorchAoConfig("int8_weight_only", group_size=64).group_size is None  # per channel
    assert TorchAoConfig(Int4WeightOnlyConfig(group_size=32)).group_size == 32
    serialized = {"quant_method": "torchao", "quant_type": {"default": {"_type": "Int4WeightOnlyConfig",
                                                                          "_version": 2, "_data": {"group_size": 64}}}}
    handler = quantizer_for(serialized)
    assert (handler.config.bits, handler.config.group_size) == (4, 64)
    plain = quantizer_for({"quant_method": "torchao", "quant_type": "int8_weight_only"})
    assert plain.config.bits == 8 and plain.method == "torchao"
    again = TorchAoConfig.from_dict(TorchAoConfig("int4_weight_only", group_size=32).to_dict())
    assert again == TorchAoConfig("int4_weight_only", group_size=32)
    assert pretrained.TorchAoConfig is TorchAoConfig


def test_configs_import_no_framework():
    import subprocess
    import sys

    code = ("import sys, pretrained; pretrained.TorchAoConfig('int8_weight_only'); pretrained.CompressedTensorsConfig()"
            "; print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("config, words", [
    ({"quant_method": "awq", "bits": 4}, ["'awq'", "'torchao'", "'compressed-tensors'", "'bitsandbytes'"]),
    ({"bits": 4}, ["quant_method"]),
    (TorchAoConfig.__new__(TorchAoConfig), ["quant_method"]),
])
def test_unknown_method_is_a_typed_error(config, words):
    if isinstance(config, TorchAoConfig):
        config = {"quant_method": None}
    with pytest.raises(QuantizationError) as e:
        quantizer_for(config)
    for word in words:
        assert word in str(e.value)


@pytest.mark.parametrize("quant_type", ["int8_dynamic_activation_int8_weight", "autoquant", "int3_weight_only"])
def test_unsupported_torchao_types(quant_type):
    with pytest.raises(QuantizationError, match=quant_type):
        TorchAoConfig(quant_type)


def test_unknown_method_in_config_json(llama, tmp_path):
    folder, _, _ = llama
    for name in ("model.safetensors", "generation_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "hqq", "nbits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationError, match="'hqq' is not supported.*'torchao'"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


# ---- the layer -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, group, floor", [(8, None, 0.9999), (4, 32, 0.996), (4, 64, 0.9955), (4, 128, 0.995)])
def test_layer_accuracy_and_exactness(bits, group, floor):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
    layer = QuantizedLinear.from_linear(linear, bits, group, name="proj")
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    y = layer(x)
    assert y.shape == (3, 5, 96) and y.dtype == torch.bfloat16
    with torch.no_grad():
        assert cosine(y.float(), linear(x).float()) >= floor
        # the kernel computes exactly x @ (q * scale)ᵀ + b, up to bf16 rounding of the result
        exact = x.float() @ layer.dequantized_weight(torch.float32).t() + linear.bias.float()
    torch.testing.assert_close(y.float(), exact, atol=0.02, rtol=0.01)
    q, scale = layer.int_weight()
    ref_q, ref_scale = quantize_weight(linear.weight, bits, group)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)
    assert int(q.min()) >= -(1 << (bits - 1)) and int(q.max()) < (1 << (bits - 1))
    rebuilt = QuantizedLinear(256, 96, True, bits=bits, group_size=group, placeholder=False)
    rebuilt.bias = linear.bias
    rebuilt.set_quantized(q, scale, "cpu")
    assert torch.equal(rebuilt.qweight, layer.qweight) and torch.equal(rebuilt(x), y)
    assert torch.equal(layer(x.float()), layer(x.float()))  # float32 activations: cast at the layer
    assert layer(x.float()).dtype == torch.float32


def test_symmetric_int4_scale_search():
    """Symmetric int4 at group 128 reaches the issue's per-layer target of 0.995 on Gaussian weights, which
    compressed-tensors' absmax / 7.5 rule (~0.9939) does not: each group's scale is chosen by least squared error,
    and a group whose extreme weight is positive gets a negative scale so that the extreme lands on -8."""
    torch.manual_seed(0)
    linear = nn.Linear(1024, 512, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
    x = torch.randn(64, 1024, dtype=torch.bfloat16)
    layer = QuantizedLinear.from_linear(linear, 4, 128)
    q, scale = layer.int_weight()
    w = linear.weight.float().view(512, 8, 128)
    extreme_positive = w.amax(-1) > -w.amin(-1)
    assert torch.equal(scale < 0, extreme_positive)  # the sign follows each group's extreme
    plain_scale = (w.abs().amax(-1, keepdim=True) / 7.5).bfloat16().float()
    plain = ((w / plain_scale).round().clamp(-8, 7) * plain_scale).view(512, 1024)
    with torch.no_grad():
        expected = x.float() @ linear.weight.float().t()
        ours = cosine(layer(x).float(), expected)
        theirs = cosine(x.float() @ plain.t(), expected)
        # the kernel's numbers are exactly those of the stored integers and scales (w = q * scale)
        exact = x.float() @ (q.float().view(512, 8, 128) * scale.float().unsqueeze(-1)).view(512, 1024).t()
    assert ours >= 0.995 > theirs
    torch.testing.assert_close(layer(x).float(), exact, atol=0.02, rtol=0.01)


def test_asymmetric_int4_layer():
    """Asymmetric int4 (integer zero point per group, least-squares range and scale) reaches the per-layer target
    of 0.995 at group 128 on Gaussian weights too; exact round trip."""
    torch.manual_seed(0)
    linear = nn.Linear(1024, 512, bias=True).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
    x = torch.randn(64, 1024, dtype=torch.bfloat16)
    layer = QuantizedLinear.from_linear(linear, 4, 128, symmetric=False)
    symmetric = QuantizedLinear.from_linear(linear, 4, 128)
    with torch.no_grad():
        expected = x.float() @ linear.weight.float().t() + linear.bias.float()
        accurate, plain = cosine(layer(x).float(), expected), cosine(symmetric(x).float(), expected)
        exact = x.float() @ layer.dequantized_weight(torch.float32).t() + linear.bias.float()
    assert accurate >= 0.995 and plain >= 0.995
    torch.testing.assert_close(layer(x).float(), exact, atol=0.02, rtol=0.01)
    q, scale = layer.int_weight()
    zero = layer.zero_point()
    assert zero.shape == (512, 8) and int(zero.min()) >= -8 and int(zero.max()) <= 7
    rebuilt = QuantizedLinear(1024, 512, True, bits=4, group_size=128, placeholder=False, symmetric=False)
    rebuilt.bias = linear.bias
    rebuilt.set_quantized(q, scale, "cpu", zero)
    assert torch.equal(rebuilt.scales, layer.scales) and torch.equal(rebuilt(x), layer(x))
    with pytest.raises(QuantizationError, match="zero point"):
        rebuilt.set_quantized(q, scale, "cpu")


@pytest.mark.parametrize("bits, group", [(8, None), (4, 64)])
def test_layer_dtype_moves(bits, group):
    """.half()/.float() cast the scales and the compute dtype follows; int4 cannot move to a device it has no
    packed layout for."""
    linear = nn.Linear(256, 64).to(torch.bfloat16)
    layer = QuantizedLinear.from_linear(linear, bits, group, name="proj")
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    expected = layer(x).float()
    layer.half()
    assert layer.scales.dtype == torch.float16 and layer(x.half()).dtype == torch.float16
    torch.testing.assert_close(layer(x.half()).float(), expected, atol=0.05, rtol=0.02)
    layer.float()
    assert layer(x.float()).dtype == torch.float32
    if bits == 4:
        with pytest.raises(QuantizationError, match="'proj'.*meta"):
            layer.to("meta")


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_matches_compressed_tensors(bits):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    torch.manual_seed(0)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1))
    for k in (64, 96, 100):
        q = torch.randint(low, high, (16, k), dtype=torch.int8)
        ours = pack_int32(q, bits)
        assert torch.equal(ours, helpers.pack_to_int32(q, bits))
        assert torch.equal(unpack_int32(ours, bits, k), q)


@pytest.mark.parametrize("shape, bits, group, words", [
    ((48, 64), 4, 32, ["'x.proj'", "in_features is not divisible by the group size"]),
    ((64, 40), 4, 32, ["'x.proj'", "out_features divisible by 16"]),
    ((64, 64), 4, 16, ["'x.proj'", "group_size 16"]),
    ((40, 64), 8, None, ["'x.proj'", "in_features divisible by 16"]),
])
def test_shapes_the_kernel_cannot_take(shape, bits, group, words):
    with pytest.raises(QuantizationError) as e:
        QuantizedLinear(*shape, bits=bits, group_size=group, name="x.proj")
    for word in words:
        assert word in str(e.value)


def test_release_pages_only_touches_file_mappings(llama):
    from safetensors import safe_open

    folder, _, _ = llama
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        mapped = handle.get_tensor("model.layers.0.mlp.up_proj.weight")
        before = mapped.clone()
        assert _file_mapped(mapped.data_ptr(), mapped.data_ptr() + mapped.numel() * 2)
        release_pages(mapped)
        assert torch.equal(mapped, before)  # dropped pages come back from the file
    owned = torch.randn(1 << 16)
    copy = owned.clone()
    assert not _file_mapped(owned.data_ptr(), owned.data_ptr() + owned.numel() * 4)
    release_pages(owned)
    assert torch.equal(owned, copy)


# ---- quantize while loading ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, floor", [
    (TorchAoConfig("int8_weight_only"), 0.9999),
    (TorchAoConfig("int4_weight_only", group_size=32), 0.97),
    ({"quant_method": "torchao", "quant_type": "int4_weight_only", "quant_type_kwargs": {"group_size": 64}}, 0.97),
])
def test_quantize_while_loading(llama, config, floor):
    folder, ids, expected = llama
    float_model = AutoModelForCausalLM.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)
    names = quantized_names(model)
    assert len(names) == LINEARS_PER_LAYER * CFG["num_hidden_layers"] and "lm_head" not in names
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    assert model.is_quantized and model.hf_quantizer.method == "torchao"
    assert model.config.quantization_config["quant_method"] == "torchao"
    assert not any(t.is_meta for t in model.state_dict().values())
    assert cosine(logits_of(model, ids), expected) >= floor
    assert model.num_parameters() == float_model.num_parameters()
    assert model.get_memory_footprint() < 0.8 * float_model.get_memory_footprint()
    assert model.loading_info.missing_keys == [] and model.loading_info.unexpected_keys == []


def test_generate_dynamic_and_static_cache(llama):
    folder, ids, _ = llama
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=TorchAoConfig("int4_weight_only",
                                                                                           group_size=32))
    dynamic = model.generate(ids[:1], max_new_tokens=8, do_sample=False)
    static = model.generate(ids[:1], max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert dynamic.shape == (1, 15) and torch.equal(dynamic, static)


def test_dequantize_restores_float_layers(llama):
    folder, ids, _ = llama
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=TorchAoConfig("int8_weight_only"))
    quantized = logits_of(model, ids)
    expected_weight = model.model.layers[0].mlp.up_proj.dequantized_weight(torch.float32)
    assert model.dequantize() is model
    assert not quantized_names(model) and type(model.model.layers[0].mlp.up_proj) is nn.Linear
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight.float(), expected_weight.bfloat16().float())
    assert "quantization_config" not in model.config.to_dict() and not model.is_quantized
    assert cosine(logits_of(model, ids), quantized) > 0.9999
    with pytest.raises(ValueError, match="not quantized"):
        model.dequantize()


def test_modules_to_not_convert_and_int8_head(llama):
    folder, ids, expected = llama
    config = TorchAoConfig("int4_weight_only", group_size=32, modules_to_not_convert=["lm_head", "mlp"])
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)
    assert not any(".mlp." in n for n in quantized_names(model)) and len(quantized_names(model)) == 8
    head = AutoModelForCausalLM.from_pretrained(folder, quantization_config=TorchAoConfig(
        "int4_weight_only", group_size=32, lm_head_bits=8))
    assert isinstance(head.lm_head, QuantizedLinear) and head.lm_head.bits == 8
    assert head.model.layers[0].mlp.up_proj.bits == 4
    assert cosine(logits_of(head, ids), expected) >= 0.97


def test_tied_head_is_untied_when_quantized(tmp_path):
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**CFG, "tie_word_embeddings": True}))
    ref.to(torch.bfloat16).save_pretrained(tmp_path)
    ids = torch.randint(0, CFG["vocab_size"], (1, 6))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=TorchAoConfig("int8_weight_only"))
    assert type(plain.lm_head) is nn.Linear and plain.lm_head.weight is plain.model.embed_tokens.weight
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=TorchAoConfig(
        "int8_weight_only", lm_head_bits=8))
    assert isinstance(model.lm_head, QuantizedLinear) and not model.config.tie_word_embeddings
    assert model.loading_info.missing_keys == []
    with torch.no_grad():
        assert cosine(model(ids).logits, ref.to(torch.bfloat16)(ids).logits) > 0.999


def test_layer_the_kernel_cannot_take_names_it(tmp_path):
    torch.manual_seed(0)
    config = {**CFG, "hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 3}
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).save_pretrained(tmp_path)
    with pytest.raises(QuantizationError, match=r"model\.layers\.0\.self_attn\.q_proj.*not divisible"):
        AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=TorchAoConfig("int4_weight_only",
                                                                                         group_size=32))


def test_quantized_layers_cannot_go_to_disk(llama, tmp_path):
    folder, _, _ = llama
    device_map = {"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    with pytest.raises(pretrained.errors.DeviceMapError, match="disk"):
        AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, offload_folder=tmp_path,
                                             quantization_config=TorchAoConfig("int8_weight_only"))


def test_other_families(tmp_path):
    """BERT and T5 (nn.Linear) and GPT-2 (Conv1D, a Linear stored transposed) quantize at load too."""
    torch.manual_seed(0)
    cases = [
        (transformers.BertModel(transformers.BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4, intermediate_size=128)),
         pretrained.AutoModel, lambda m, x: m(x).last_hidden_state),
        (transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=99, n_embd=64, n_layer=2, n_head=4)),
         pretrained.AutoModelForCausalLM, lambda m, x: m(x).logits),
        (transformers.T5EncoderModel(transformers.T5Config(vocab_size=99, d_model=64, d_kv=16, d_ff=128,
                                                           num_layers=2, num_heads=4)),
         pretrained.T5EncoderModel, lambda m, x: m(x).last_hidden_state),
    ]
    ids = torch.randint(0, 99, (2, 6))
    for i, (ref, auto, run) in enumerate(cases):
        folder = tmp_path / str(i)
        ref.eval().save_pretrained(folder)
        model = auto.from_pretrained(folder, quantization_config=TorchAoConfig("int8_weight_only"))
        assert quantized_names(model)
        with torch.no_grad():
            assert cosine(run(model, ids), run(ref, ids)) > 0.999, type(ref).__name__
        if "GPT2" in type(ref).__name__:
            with pytest.raises(QuantizationError, match="Conv1D"):
                model.save_pretrained(tmp_path / "gpt2-out")
            model.dequantize()
            assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
            model.save_pretrained(tmp_path / "gpt2-float")
            back = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2-float")
            with torch.no_grad():
                assert cosine(run(back, ids), run(ref, ids)) > 0.999


# ---- portable saves: compressed-tensors ----------------------------------------------------------------------------
@pytest.mark.parametrize("config", [TorchAoConfig("int4_weight_only", group_size=32), TorchAoConfig("int8_weight_only"),
                                    TorchAoConfig("int4_weight_only", group_size=64, lm_head_bits=8),
                                    TorchAoConfig("int4_weight_only", group_size=32, symmetric=False)])
def test_save_reload_exact_and_transformers_loads_it(llama, tmp_path, config):
    pytest.importorskip("compressed_tensors")
    folder, ids, _ = llama
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)
    ours = logits_of(model, ids)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "compressed-tensors" and saved["format"] == "pack-quantized"
    assert saved["quantization_status"] == "compressed"
    weights = saved["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["strategy"], weights["symmetric"]) == (
        config.bits, "group" if config.bits == 4 else "channel", config.symmetric)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
    assert "model.layers.0.mlp.down_proj.weight" not in keys and packed.dtype == torch.int32
    assert packed.shape == (CFG["hidden_size"], math.ceil(CFG["intermediate_size"] * config.bits / 32))
    assert {"model.layers.0.mlp.down_proj.weight_scale", "model.layers.0.mlp.down_proj.weight_shape"} <= keys
    assert ("model.layers.0.mlp.down_proj.weight_zero_point" in keys) == (not config.symmetric)

    again = AutoModelForCausalLM.from_pretrained(tmp_path)  # config.json carries the quantization_config
    assert again.hf_quantizer.method == "compressed-tensors" and quantized_names(again) == quantized_names(model)
    for name in quantized_names(model):
        a, b = model.get_submodule(name), again.get_submodule(name)
        assert torch.equal(a.qweight, b.qweight) and torch.equal(a.scales, b.scales), name
        assert a.symmetric == b.symmetric
    assert torch.equal(logits_of(again, ids), ours)
    again.save_pretrained(tmp_path / "second")  # a loaded checkpoint saves the same bytes' meaning again
    third = AutoModelForCausalLM.from_pretrained(tmp_path / "second")
    assert torch.equal(logits_of(third, ids), ours)

    if not config.symmetric:
        # transformers 5.24 + compressed-tensors 0.20 cannot load asymmetric pack-quantized checkpoints, not even the
        # library's own (it expects the zero points unpacked); check ours against the library's packing instead
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

        layer = model.model.layers[0].mlp.down_proj
        with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
            stored = f.get_tensor("model.layers.0.mlp.down_proj.weight_zero_point")
        assert torch.equal(stored, pack_to_int32(layer.zero_point(), 4, packed_dim=0))
        return
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        reference = theirs(ids).logits.float()
    torch.testing.assert_close(reference, ours, atol=0.05, rtol=0.02)  # bf16 rounding of two different matmuls


def _write_with_compressed_tensors(folder, bits: int, fmt: str, symmetric: bool = True):
    """A checkpoint written by the compressed-tensors library itself (scales from its own qparams helper)."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.utils import calculate_qparams

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG)).to(torch.bfloat16).eval()
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric,
                            strategy="group" if bits == 4 else "channel", group_size=32 if bits == 4 else None)
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)}, ignore=["lm_head"]))
    for module in model.modules():
        if hasattr(module, "weight_scale"):
            w = module.weight.detach().float()
            w = w.view(w.shape[0], -1, 32) if bits == 4 else w.unsqueeze(1)
            scale, zero = calculate_qparams(w.amin(-1), w.amax(-1), args)
            module.weight_scale.data = scale.to(module.weight_scale.dtype).reshape(module.weight_scale.shape)
            if not symmetric:
                module.weight_zero_point.data = zero.to(module.weight_zero_point.dtype).reshape(
                    module.weight_zero_point.shape)
    compressor = ModelCompressor.from_pretrained_model(model, fmt)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(folder)
    return ct


@pytest.mark.parametrize("bits, fmt, symmetric", [(4, "pack-quantized", True), (8, "pack-quantized", True),
                                                  (8, "int-quantized", True), (4, "pack-quantized", False)])
def test_loads_what_compressed_tensors_writes(tmp_path, bits, fmt, symmetric):
    _write_with_compressed_tensors(tmp_path, bits, fmt, symmetric)
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors import safe_open

    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.loading_info.missing_keys == [] and model.loading_info.unexpected_keys == []
    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer, QuantizedLinear) and layer.bits == bits and type(model.lm_head) is nn.Linear
    name = "model.layers.1.mlp.down_proj"
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        if fmt == "pack-quantized":
            stored = unpack_from_int32(f.get_tensor(f"{name}.weight_packed"), bits,
                                       f.get_tensor(f"{name}.weight_shape").tolist())
        else:
            stored = f.get_tensor(f"{name}.weight")
        stored_scale = f.get_tensor(f"{name}.weight_scale")
        if not symmetric:
            stored_zero = unpack_from_int32(f.get_tensor(f"{name}.weight_zero_point"), bits,
                                            (CFG["hidden_size"], CFG["intermediate_size"] // 32), packed_dim=0)
    q, scale = layer.int_weight()
    assert torch.equal(q, stored.to(torch.int8)) and torch.equal(scale, stored_scale.to(scale.dtype))
    assert layer.symmetric == symmetric
    if not symmetric:
        assert torch.equal(layer.zero_point(), stored_zero.to(torch.int8))
        return  # transformers 5.24 cannot load this (see test_save_reload_exact_and_transformers_loads_it)
    ids = torch.randint(0, CFG["vocab_size"], (2, 7))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(model, ids), theirs(ids).logits.float(), atol=0.05, rtol=0.02)


def _edit_checkpoint(source, target, config_edit=None, tensors_edit=None):
    from safetensors.torch import load_file, save_file

    config = json.loads((source / "config.json").read_text())
    if config_edit:
        config_edit(config["quantization_config"])
    target.mkdir()
    (target / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(source / "model.safetensors"))
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})


def test_bad_compressed_checkpoints(llama, tmp_path):
    folder, _, _ = llama
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=TorchAoConfig("int4_weight_only",
                                                                                           group_size=32))
    model.save_pretrained(tmp_path / "good")
    good = tmp_path / "good"
    name = "model.layers.0.mlp.up_proj"

    def asym(q):  # an asymmetric scheme whose checkpoint lacks the zero points
        q["config_groups"]["group_0"]["weights"]["symmetric"] = False

    def asym8(q):
        q["config_groups"]["group_0"]["weights"].update(symmetric=False, num_bits=8, strategy="channel")

    def w8a8(q):
        q["config_groups"]["group_0"]["input_activations"] = {"num_bits": 8, "type": "int", "dynamic": True}

    def nvfp4(q):
        q["config_groups"]["group_0"]["format"] = "nvfp4-pack-quantized"

    def frozen(q):
        q["quantization_status"] = "frozen"

    for edit, words in [(asym, r"lacks model\.layers\.0\.self_attn\.q_proj\.weight_zero_point"),
                        (asym8, "asymmetric 8-bit channel"), (w8a8, "activations"),
                        (nvfp4, "nvfp4-pack-quantized"), (frozen, "frozen")]:
        with pytest.raises((QuantizationError, CorruptCheckpointError), match=words):
            target = tmp_path / edit.__name__
            _edit_checkpoint(good, target, config_edit=edit)
            AutoModelForCausalLM.from_pretrained(target)

    def drop_scale(t):
        del t[f"{name}.weight_scale"]

    _edit_checkpoint(good, tmp_path / "no_scale", tensors_edit=drop_scale)
    with pytest.raises(CorruptCheckpointError, match=rf"{name}.weight_scale"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "no_scale")

    def bad_shape(t):
        t[f"{name}.weight_shape"] = torch.tensor([CFG["intermediate_size"], 32])

    _edit_checkpoint(good, tmp_path / "bad_shape", tensors_edit=bad_shape)
    with pytest.raises(CorruptCheckpointError, match=rf"{name}.weight_shape"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "bad_shape")

    def wrong_size(t):
        t[f"{name}.weight_packed"] = t[f"{name}.weight_packed"][:, :4].contiguous()

    _edit_checkpoint(good, tmp_path / "wrong_size", tensors_edit=wrong_size)
    with pytest.raises(pretrained.errors.ShapeMismatchError, match=f"{name}.weight_packed"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "wrong_size")

    with pytest.raises(QuantizationError, match="already quantized"):
        AutoModelForCausalLM.from_pretrained(good, quantization_config={"quant_method": "bitsandbytes",
                                                                        "load_in_8bit": True})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels():
    torch.manual_seed(0)
    for bits, group in [(8, None), (4, 128)]:
        linear = nn.Linear(512, 256).to(torch.bfloat16)
        layer = QuantizedLinear.from_linear(linear, bits, group)
        gpu = QuantizedLinear(512, 256, True, bits=bits, group_size=group, placeholder=False, device="cuda")
        gpu.bias = nn.Parameter(linear.bias.detach().cuda(), requires_grad=False)
        q, scale = layer.int_weight()
        gpu.set_quantized(q, scale, "cuda")
        assert torch.equal(gpu.int_weight()[0], q)
        x = torch.randn(4, 512, dtype=torch.bfloat16)
        torch.testing.assert_close(gpu(x.cuda()).float().cpu(), layer(x).float(), atol=0.05, rtol=0.02)
        moved = QuantizedLinear.from_linear(linear, bits, group).cuda()  # repacked for the CUDA kernel
        assert torch.equal(moved.int_weight()[0], q)
        torch.testing.assert_close(moved(x.cuda()).float().cpu(), layer(x).float(), atol=0.05, rtol=0.02)
        assert torch.equal(moved.cpu().int_weight()[0], q)


# ---- the command line ----------------------------------------------------------------------------------------------
def test_cli_quantize_streams_the_same_model(llama, tmp_path, capsys):
    from pretrained.cli import main

    folder, ids, _ = llama
    out = tmp_path / "q"
    assert main(["quantize", str(folder), str(out), "--bits", "4", "--group-size", "32", "--lm-head-bits", "8",
                 "--max-shard-size", "20KB"]) == 0
    assert "quantized 15 layers to int4" in capsys.readouterr().out
    assert (out / "model.safetensors.index.json").exists() and (out / "generation_config.json").exists()
    streamed = AutoModelForCausalLM.from_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(folder, quantization_config=TorchAoConfig(
        "int4_weight_only", group_size=32, lm_head_bits=8))
    assert torch.equal(logits_of(streamed, ids), logits_of(loaded, ids))
    # a quantized source, and a group size the layers cannot take, are refused; DST is left as it was
    assert main(["quantize", str(out), str(tmp_path / "again")]) == 2
    assert "already quantized" in capsys.readouterr().err and not (tmp_path / "again").exists()
    before = sorted(p.name for p in out.iterdir())
    assert main(["quantize", str(folder), str(out), "--group-size", "256"]) == 2
    assert "not divisible" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == before


def test_cli_quantize_tied_head(tmp_path, capsys):
    from pretrained.cli import main

    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**CFG, "tie_word_embeddings": True}))
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "src")
    assert main(["quantize", str(tmp_path / "src"), str(tmp_path / "q"), "--bits", "8", "--lm-head-bits", "8"]) == 0
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "src", quantization_config=TorchAoConfig(
        "int8_weight_only", lm_head_bits=8))
    ids = torch.randint(0, CFG["vocab_size"], (1, 5))
    assert isinstance(streamed.lm_head, QuantizedLinear)
    assert torch.equal(logits_of(streamed, ids), logits_of(loaded, ids))


def test_cli_quantize_asymmetric(llama, tmp_path, capsys):
    from pretrained.cli import main

    folder, ids, _ = llama
    assert main(["quantize", str(folder), str(tmp_path / "q"), "--group-size", "32", "--asymmetric"]) == 0
    config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert config["config_groups"]["group_0"]["weights"]["symmetric"] is False
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    loaded = AutoModelForCausalLM.from_pretrained(folder, quantization_config=TorchAoConfig(
        "int4_weight_only", group_size=32, symmetric=False))
    assert not streamed.model.layers[0].mlp.up_proj.symmetric
    assert torch.equal(logits_of(streamed, ids), logits_of(loaded, ids))


def test_layer_missing_from_checkpoint_stays_float(tmp_path):
    """A new task head (not in a base checkpoint) is initialised in float and reported, never quantized from
    random values."""
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=128)).save_pretrained(tmp_path)
    model = pretrained.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_labels=3, quantization_config=TorchAoConfig("int8_weight_only"))
    assert type(model.classifier) is nn.Linear and not model.classifier.weight.is_meta
    assert model.loading_info.missing_keys == ["classifier.bias", "classifier.weight"]
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, QuantizedLinear)
    assert model(torch.randint(0, 99, (1, 5))).logits.shape == (1, 3)
