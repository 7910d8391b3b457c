"""bitsandbytes 4-bit (nf4, bfloat16 compute) on the synthetic 1B Llama (bench/.cache/llama-1b-bf16): ours against the
reference (transformers 5 + bitsandbytes on the CPU), each in a fresh child process.

Scenarios:
  load      whole process: imports, from_pretrained(path, quantization_config=nf4) and a 16-token forward;
            wall time and peak RSS (the child's ru_maxrss)
  generate  the child loads (not timed), runs one untimed 8-token warm-up generate, then times 64 greedy new
            tokens, batch 1 (TIME = that generate); prints tokens/s; the output checksum is of the new tokens
  roundtrip one run per side: load, one forward, save_pretrained, reload in the same library, forward again;
            prints the cosine (float64) and the largest difference of the two logits (1.0 and 0.0: the save gives
            the model back)

    .venv/bin/python bench/bench_quant_bnb.py --runs 3 --scenario load
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, main_guard, parse_args  # noqa: E402

SCRATCH = Path(__file__).resolve().parent / ".cache" / "bnb-scratch"

PRELUDE = """
import os, time, torch, shutil
torch.manual_seed(0)
path = {path!r}
"""
OURS = """
from pretrained import AutoModelForCausalLM, BitsAndBytesConfig
cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
load = lambda p, q=True: AutoModelForCausalLM.from_pretrained(p, **(dict(quantization_config=cfg) if q else {{}}))
"""
REF = """
import transformers
cfg = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16)
load = lambda p, q=True: transformers.AutoModelForCausalLM.from_pretrained(
    p, device_map="cpu", **(dict(quantization_config=cfg) if q else {{}}))
"""
LOAD = """
m = load(path)
with torch.no_grad():
    out = m(torch.arange(16)[None] + 100).logits
print(float(out.float().abs().sum()))
"""
GENERATE = """
m = load(path)
ids = torch.arange(8)[None] + 100
m.generate(ids, max_new_tokens=8, do_sample=False)
t0 = time.perf_counter()
out = m.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
dt = time.perf_counter() - t0
print("TIME", dt)
print("tokens/s", 64 / dt)
print(int(out[0, 8:].sum()))
"""
ROUNDTRIP = """
ids = torch.arange(16)[None] + 100
m = load(path)
with torch.no_grad():
    a = m(ids).logits.float()
out = {scratch!r}
shutil.rmtree(out, ignore_errors=True)
m.save_pretrained(out)
del m
m2 = load(out, q=False)
with torch.no_grad():
    b = m2(ids).logits.float()
shutil.rmtree(out, ignore_errors=True)
a, b = a.double().flatten(), b.double().flatten()  # float64: a float32 cosine of 512k equal values is not 1
print("cosine", float(torch.nn.functional.cosine_similarity(a, b, dim=0)), "max|diff|", float((a - b).abs().max()))
"""


def main() -> None:
    args = parse_args(__doc__, lambda ap: ap.add_argument("--scenario", choices=["load", "generate", "roundtrip",
                                                                                  "all"], default="all"))
    head = PRELUDE.format(path=str(args.path))
    code = {"ours": head + OURS.format(), "ref": head + REF.format()}
    scenarios = ["load", "generate", "roundtrip"] if args.scenario == "all" else [args.scenario]
    for name in scenarios:
        body = {"load": LOAD, "generate": GENERATE, "roundtrip": ROUNDTRIP.format(scratch=str(SCRATCH))}[name]
        runs = 1 if name == "roundtrip" else args.runs
        compare(f"bitsandbytes nf4 {name}", code["ours"] + body, code["ref"] + body, runs=runs, only=args.only)


if __name__ == "__main__":
    main_guard(main)
