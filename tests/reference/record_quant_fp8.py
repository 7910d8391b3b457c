"""Write a tiny fp8 block-wise checkpoint (the layout DeepSeek-V3 and transformers' `FineGrainedFP8Config` use) and
record what the reference (transformers 5.x, on the CPU, where it dequantizes at load) computes from it, so
tests/test_quant_fp8.py can check our loader against it.

Regenerate (from the repository root, with the test environment; no network):

    .venv/bin/python tests/reference/record_quant_fp8.py

The format, as the reference reads it: config.json's `quantization_config` is
`{"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [bm, bn]}`; each quantized Linear has
`weight` (float8_e4m3fn, [out, in]) and `weight_scale_inv` (float32, [ceil(out/bm), ceil(in/bn)]): the multiplier that
turns a block of `weight` back into real values (w = weight.float() * weight_scale_inv[block]). Embeddings, norms
and `lm_head` stay in the float dtype.

Writes into tests/data/quant/fp8/:
    block32/         config.json + model.safetensors: every decoder Linear in fp8 with 32x32 blocks, the rest bfloat16
    outputs.safetensors  "block32.bf16" -> the reference's logits (dequantized bf16 load, float32 logits),
                         "block32.dequant.<name>" -> the reference's dequantized weight of two layers
    expected.json    versions, config, inputs
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

if not transformers.__version__.startswith("5."):
    sys.exit(f"needs transformers 5.x (found {transformers.__version__})")

OUT = Path(__file__).resolve().parents[1] / "data" / "quant" / "fp8"
CONFIG = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
BLOCK = (32, 32)
INPUT_IDS = [[1, 17, 42, 8, 63, 90, 2, 55], [3, 11, 77, 51, 29, 4, 93, 12]]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP8_MAX = 448.0  # largest finite float8_e4m3fn
RECORDED = ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight")


def quantize_blocks(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (bm x bn) block: scale_inv = amax / 448, q = w / scale_inv in float8_e4m3fn."""
    bm, bn = block
    rows, cols = w.shape
    tiles = w.float().reshape(rows // bm, bm, cols // bn, bn)
    amax = tiles.abs().amax(dim=(1, 3))
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (tiles / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(rows, cols), scale_inv.contiguous()


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "block32").mkdir(parents=True)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**CONFIG)
    model = transformers.LlamaForCausalLM(config).eval()
    tensors = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
            if name.endswith(".weight") and name.split(".")[-2] in LINEARS:
                q, s = quantize_blocks(p.data, BLOCK)
                tensors[name] = q
                tensors[name[: -len("weight")] + "weight_scale_inv"] = s
            else:
                tensors[name] = p.data.to(torch.bfloat16).contiguous()
    save_file(tensors, OUT / "block32" / "model.safetensors", metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg["dtype"] = "bfloat16"
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                  "weight_block_size": list(BLOCK)}
    (OUT / "block32" / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    ref = transformers.AutoModelForCausalLM.from_pretrained(
        OUT / "block32", quantization_config=transformers.FineGrainedFP8Config(dequantize=True,
                                                                               weight_block_size=list(BLOCK)))
    outputs = {}
    with torch.no_grad():
        outputs["block32.bf16"] = ref(torch.tensor(INPUT_IDS)).logits.float().contiguous()
    state = ref.state_dict()
    for name in RECORDED:
        outputs[f"block32.dequant.{name}"] = state[name].contiguous()
    save_file(outputs, OUT / "outputs.safetensors")
    expected = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
                "config": CONFIG, "block": list(BLOCK), "input_ids": INPUT_IDS,
                "reference_dtype": str(next(ref.parameters()).dtype).removeprefix("torch."),
                "reference_types": sorted({type(m).__name__ for m in ref.modules()})}
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
