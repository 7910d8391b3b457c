"""Record what the reference (transformers 5.x with bitsandbytes, on the CPU) writes and computes for bitsandbytes
8-bit and 4-bit models, so tests/test_quant_bnb.py can check our loader against the real library's files.

Regenerate (from the repository root, with the test environment; no network):

    .venv/bin/python tests/reference/record_quant_bnb.py

Writes into tests/data/quant/bnb/:
    src/             config.json + model.safetensors of a seeded tiny float32 LlamaForCausalLM
    <variant>/       the reference's `from_pretrained(src, quantization_config=BitsAndBytesConfig(...))` saved by its
                     `save_pretrained` before any forward (the layout bitsandbytes defines: `weight` + `SCB` +
                     `weight_format` for 8-bit; packed `weight` + `weight.absmax` + `weight.quant_map` +
                     `weight.quant_state.bitsandbytes__<type>` (+ `weight.nested_*`) for 4-bit)
    outputs.safetensors  "<variant>" -> the reference's logits on INPUT_IDS (float32)
    expected.json    versions, the variants' BitsAndBytesConfig arguments, the inputs
Variants: int8, nf4, fp4, nf4_dq (nf4 + double quant), fp4_bf16 (fp4, bfloat16 compute dtype).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import bitsandbytes
import torch
import transformers
from safetensors.torch import save_file

if not transformers.__version__.startswith("5."):
    sys.exit(f"needs transformers 5.x (found {transformers.__version__})")

OUT = Path(__file__).resolve().parents[1] / "data" / "quant" / "bnb"
CONFIG = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
INPUT_IDS = [[1, 17, 42, 8, 63, 90, 2, 55], [3, 11, 77, 51, 29, 4, 93, 12]]
VARIANTS = {
    "int8": dict(load_in_8bit=True),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "nf4_dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4_bf16": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype="bfloat16"),
}


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**CONFIG)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights of a trained model's scale, so 4-bit rounding is visible but not dominant
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(OUT / "src")
    ids = torch.tensor(INPUT_IDS)
    outputs = {}
    for name, kwargs in VARIANTS.items():
        q = transformers.AutoModelForCausalLM.from_pretrained(
            OUT / "src", quantization_config=transformers.BitsAndBytesConfig(**kwargs), device_map="cpu")
        q.save_pretrained(OUT / name)  # before any forward: bitsandbytes' CPU forward repacks 4-bit weights
        with torch.no_grad():
            outputs[name] = q(ids).logits.float().contiguous()
    save_file(outputs, OUT / "outputs.safetensors")
    expected = {"transformers_version": transformers.__version__, "bitsandbytes_version": bitsandbytes.__version__,
                "torch_version": torch.__version__, "config": CONFIG, "input_ids": INPUT_IDS, "variants": VARIANTS}
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
