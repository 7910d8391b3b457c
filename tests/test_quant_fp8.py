"""fp8 block-wise checkpoints (`quant_method: "fp8"`): dequantized at load on CPUs (equal to the reference's
dequantizing load, recorded by tests/reference/record_quant_fp8.py into tests/data/quant/fp8/), re-quantized to int8
on request, partial blocks, per-tensor and ue8m0 scales, the GPU kernel (skipped without CUDA), and bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pretrained import AutoModelForCausalLM
from pretrained.errors import CorruptCheckpointError, QuantizationError
from pretrained.quantization.fp8 import FineGrainedFP8Config, Fp8Linear, dequantize_fp8

DATA = Path(__file__).parent / "data" / "quant" / "fp8"
EXPECTED = json.loads((DATA / "expected.json").read_text())
IDS = torch.tensor(EXPECTED["input_ids"])
REF_OUT = load_file(DATA / "outputs.safetensors")
LAYER = "model.layers.0.mlp.down_proj"
FP8_MAX = 448.0


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def slow_dequantize(q: torch.Tensor, s: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """The definition, element by element over blocks: w[i, j] = q[i, j] * s[i // bm, j // bn] (float32)."""
    out = torch.empty(q.shape)
    for r in range(s.shape[0]):
        for c in range(s.shape[1]):
            rows, cols = slice(r * bm, (r + 1) * bm), slice(c * bn, (c + 1) * bn)
            out[rows, cols] = q[rows, cols].float() * s[r, c]
    return out


def fp8_checkpoint(folder: Path, block: tuple[int, int] | None, *, intermediate: int = 80, ue8m0: bool = False,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny Llama checkpoint with fp8 Linears (blocks of `block`, partial at the edges when the sizes do not
    divide; one scale per tensor when block is None). Returns the float32 weights it was made from."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=intermediate,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    tensors, floats = {}, {}
    for name, p in model.named_parameters():
        w = p.detach().normal_(0.0, 0.08) if p.ndim == 2 else p.detach()
        if name.endswith("proj.weight"):
            rows, cols = w.shape
            bm, bn = block or (rows, cols)
            s = torch.empty(-(-rows // bm), -(-cols // bn))
            for r in range(s.shape[0]):
                for c in range(s.shape[1]):
                    s[r, c] = w[r * bm:(r + 1) * bm, c * bn:(c + 1) * bn].abs().max() / FP8_MAX
            if ue8m0:
                s = torch.exp2(torch.ceil(torch.log2(s)))
            q = (w / torch.nn.functional.pad(s.repeat_interleave(bm, 0).repeat_interleave(bn, 1),
                                             (0, 0, 0, 0))[:rows, :cols]).clamp(-FP8_MAX, FP8_MAX)
            tensors[name] = q.to(torch.float8_e4m3fn)
            if block is None:
                tensors[name[:-6] + "weight_scale_inv"] = s.reshape(())
            elif ue8m0:
                tensors[name[:-6] + "weight_scale_inv"] = (torch.log2(s) + 127).to(torch.uint8)
            else:
                tensors[name[:-6] + "weight_scale_inv"] = s
        else:
            tensors[name] = w.to(torch.bfloat16).contiguous()
        floats[name] = w.clone()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg["dtype"] = "bfloat16"
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                  "weight_block_size": list(block) if block else None,
                                  **({"scale_fmt": "ue8m0"} if ue8m0 else {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    return floats


# ---- the reference's dequantizing load ---------------------------------------------------------------------------
def test_dequantized_load_equals_the_reference():
    model = AutoModelForCausalLM.from_pretrained(DATA / "block32")
    assert model.dtype == torch.bfloat16
    state = model.state_dict()
    for key, tensor in REF_OUT.items():
        if ".dequant." in key:
            name = key.split(".dequant.", 1)[1]
            assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    torch.testing.assert_close(logits(model), REF_OUT["block32.bf16"], rtol=0, atol=0)
    # a dequantized model is a plain float model: nothing on it claims fp8 any more
    assert not getattr(model, "is_quantized", False) and not hasattr(model.config, "quantization_config")
    assert type(model.get_submodule(LAYER)) is torch.nn.Linear


def test_float_save_round_trips_and_the_reference_loads_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = AutoModelForCausalLM.from_pretrained(DATA / "block32")
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    saved = load_file(tmp_path / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in saved.values())  # no fp8 tensor without its config
    ours = logits(model)
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path)), ours, rtol=0, atol=0)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(theirs), ours, rtol=0, atol=0)


def test_dequantize_option_and_dict_form():
    a = AutoModelForCausalLM.from_pretrained(DATA / "block32",
                                             quantization_config=FineGrainedFP8Config(dequantize=True))
    b = AutoModelForCausalLM.from_pretrained(DATA / "block32", quantization_config={"quant_method": "fp8",
                                                                                    "dequantize": True})
    torch.testing.assert_close(logits(a), REF_OUT["block32.bf16"], rtol=0, atol=0)
    torch.testing.assert_close(logits(b), REF_OUT["block32.bf16"], rtol=0, atol=0)


# ---- re-quantized to int8 ----------------------------------------------------------------------------------------
def test_requantize_to_int8(tmp_path):
    from pretrained.quantization.linear import QuantizedLinear

    model = AutoModelForCausalLM.from_pretrained(DATA / "block32", quantization_config={"quant_method": "fp8",
                                                                                        "requantize": "int8"})
    layer = model.get_submodule(LAYER)
    assert isinstance(layer, QuantizedLinear) and layer.bits == 8
    assert type(model.lm_head) is torch.nn.Linear  # float in the checkpoint, float here
    # each layer's int8 weight is within int8 rounding of the fp8 checkpoint's values
    ckpt = load_file(DATA / "block32" / "model.safetensors")
    want = dequantize_fp8(ckpt[f"{LAYER}.weight"], ckpt[f"{LAYER}.weight_scale_inv"], torch.float32, (32, 32))
    got = layer.dequantized_weight(torch.float32)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos > 0.9999
    ours = logits(model)
    cos = torch.nn.functional.cosine_similarity(ours.flatten(), REF_OUT["block32.bf16"].flatten(), dim=0)
    assert cos > 0.999
    assert model.config.quantization_config["quant_method"] == "compressed-tensors"
    model.save_pretrained(tmp_path)  # our int8 layout, with the config that describes it
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["quant_method"] == \
        "compressed-tensors"
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path)), ours, rtol=0, atol=0)


# ---- other shapes of the format ----------------------------------------------------------------------------------
@pytest.mark.parametrize("block, ue8m0", [((32, 32), False), ((48, 32), False), (None, False), ((32, 32), True)])
def test_block_shapes_and_scale_formats(tmp_path, block, ue8m0):
    fp8_checkpoint(tmp_path, block, ue8m0=ue8m0)  # intermediate 80: partial blocks of 32 and 48
    ckpt = load_file(tmp_path / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name in (f"{LAYER}.weight", "model.layers.0.mlp.gate_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        q, s = ckpt[name], ckpt[name[:-6] + "weight_scale_inv"]
        if ue8m0:
            s = torch.exp2(s.float() - 127)
        rows, cols = q.shape
        bm, bn = block or (rows, cols)
        want = slow_dequantize(q, s.reshape(-(-rows // bm), -(-cols // bn)), bm, bn).to(torch.bfloat16)
        assert torch.equal(model.state_dict()[name], want), name


def test_dequantize_fp8_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(70, 100, generator=g) * 50).to(torch.float8_e4m3fn)
    s = torch.rand(3, 4, generator=g)  # blocks of 32 x 32 (70 = 2*32 + 6, 100 = 3*32 + 4)
    assert torch.equal(dequantize_fp8(q, s, torch.float32, (32, 32)), slow_dequantize(q, s, 32, 32))
    s = torch.rand(2, 2, generator=g)  # 35 x 50 exactly: the broadcast path
    assert torch.equal(dequantize_fp8(q, s, torch.float32, (35, 50)), slow_dequantize(q, s, 35, 50))
    assert torch.equal(dequantize_fp8(q, s, torch.float32), slow_dequantize(q, s, 35, 50))
    with pytest.raises(QuantizationError, match="do not fit"):
        dequantize_fp8(q, s, torch.float32, (32, 32))


# ---- bad input ---------------------------------------------------------------------------------------------------
def _damaged(tmp_path: Path, change, config_change=None) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(DATA / "block32", folder)
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if config_change:
        cfg = json.loads((folder / "config.json").read_text())
        config_change(cfg["quantization_config"])
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("change, config_change, words", [
    (lambda t: t.pop(f"{LAYER}.weight_scale_inv"), None, f"'{LAYER}.weight_scale_inv'"),
    (lambda t: t.__setitem__(f"{LAYER}.weight_scale_inv", torch.ones(2, 2)), None, "weight_block_size"),
    (lambda t: None, lambda q: q.__setitem__("weight_block_size", [64, 64]), "weight_block_size"),
    (lambda t: t.__setitem__(f"{LAYER}.weight_scale_inv", torch.ones(2, 3, dtype=torch.int32)), None, "int32"),
])
def test_damaged_checkpoint_is_a_typed_error(tmp_path, change, config_change, words):
    folder = _damaged(tmp_path, change, config_change)
    before = digest(folder)
    with pytest.raises(CorruptCheckpointError, match=words) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert "model.safetensors" in str(err.value)
    assert digest(folder) == before


@pytest.mark.parametrize("config, words", [
    ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size"),
    ({"quant_method": "fp8", "activation_scheme": "per-token"}, "activation_scheme"),
    ({"quant_method": "fp8", "scale_fmt": "e5m2"}, "scale_fmt"),
    ({"quant_method": "fp8", "requantize": "int4"}, "requantize"),
])
def test_bad_config_values(config, words):
    with pytest.raises(QuantizationError, match=words):
        FineGrainedFP8Config.from_dict(config)


def test_fp8_is_not_a_quantize_while_loading_method(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(QuantizationError, match="TorchAoConfig"):
        AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=FineGrainedFP8Config())


def test_config_round_trip_keeps_unknown_keys():
    stored = json.loads((DATA / "block32" / "config.json").read_text())["quantization_config"]
    config = FineGrainedFP8Config.from_dict({**stored, "fmt": "e4m3"})
    assert config.to_dict() == {**stored, "fmt": "e4m3"}
    assert config.weight_block_size == (32, 32)


# ---- the GPU kernel ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp8_linear_on_the_gpu_matches_the_dequantized_product():
    from pretrained.quantization.fp8 import _scaled_mm_available

    if not _scaled_mm_available(torch.device("cuda")):
        pytest.skip("this GPU / CUDA has no scaled_mm with 128x128 blocks")
    g = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(384, 512, device="cuda", generator=g) * 60).to(torch.float8_e4m3fn)
    s = torch.rand(3, 4, device="cuda", generator=g) * 0.01
    x = torch.randn(5, 512, device="cuda", generator=g, dtype=torch.bfloat16)
    got = Fp8Linear(w, s, None, torch.bfloat16)(x).float()
    want = x.float() @ dequantize_fp8(w, s, torch.float32, (128, 128)).t()
    assert ((got - want).norm() / want.norm()) < 0.02
