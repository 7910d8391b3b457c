"""Generation throughput: tokens/s for 128 new tokens, batch 1, greedy, on a ~100M-parameter fp32 Llama (CPU).

Ours with the default (dynamic) cache, with cache_implementation="static", and with the static cache plus a
compiled decoding step (compile_config=CompileConfig()), each against the reference (its default generate) in the
same run. The child loads the model (not timed), runs one untimed warm-up generate of the same length (for the
compiled variant this is where compilation happens; its time is printed as WARMUP), then times one 128-token
generate and prints "TIME <seconds>" and a checksum of the generated tokens (must match the reference).

Usage: .venv/bin/python bench/bench_generate.py [--runs N] [--only ours|ref|both] [--cache dynamic|static|compiled|all]
"""
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse  # noqa: E402

from common import CACHE_DIR, compare, main_guard  # noqa: E402

CKPT = CACHE_DIR / "llama-100m-fp32"
NEW_TOKENS = 128
LLAMA_100M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=12, vocab_size=32000, max_position_embeddings=1024,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

CHILD = """
import time, torch
torch.manual_seed(0)
from {lib} import AutoModelForCausalLM
{imports}
m = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.float32).eval()
ids = torch.randint(3, 32000, (1, 16), generator=torch.Generator().manual_seed(0))
kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0{extra})
t0 = time.perf_counter()
m.generate(ids, max_new_tokens={n}, min_new_tokens={n}, **kw)
print("WARMUP", round(time.perf_counter() - t0, 2))
t0 = time.perf_counter()
out = m.generate(ids, max_new_tokens={n}, min_new_tokens={n}, **kw)
t = time.perf_counter() - t0
new = out[0, ids.shape[1]:]
assert new.numel() == {n}, new.numel()
print("TIME", t)
print(int((new * torch.arange(1, new.numel() + 1)).sum()) % 1000003, int(new.sum()))
"""


def ensure_checkpoint():
    if (CKPT / "config.json").is_file():
        return CKPT
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    print(f"[bench] creating checkpoint at {CKPT} ...", flush=True)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_100M))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0) if p.ndim == 1 else p.normal_(0.0, 0.02, generator=gen)
    tmp = CKPT.with_name(CKPT.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tmp.rename(CKPT)
    print(f"[bench] done ({model.num_parameters():,} parameters)", flush=True)
    return CKPT


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["ours", "ref", "both"], default="both")
    ap.add_argument("--cache", choices=["dynamic", "static", "compiled", "all"], default="all")
    args = ap.parse_args()
    path = ensure_checkpoint()
    ref = CHILD.format(lib="transformers", path=str(path), n=NEW_TOKENS, extra="", imports="")
    results = {}
    variants = {"dynamic": ("", ""), "static": (', cache_implementation="static"', ""),
                "compiled": (', cache_implementation="static", compile_config=CompileConfig()',
                             "from pretrained import CompileConfig")}
    for cache in (list(variants) if args.cache == "all" else [args.cache]):
        extra, imports = variants[cache]
        ours = CHILD.format(lib="pretrained", path=str(path), n=NEW_TOKENS, extra=extra, imports=imports)
        res = compare(f"generate {NEW_TOKENS} tokens, greedy, batch 1, fp32 ~100M Llama, ours: {cache} cache",
                      ours, ref, runs=args.runs, only=args.only)
        for side in ("ours", "ref"):
            if side in res:
                print(f"  {side:4s} {NEW_TOKENS / res[side]['time_median']:8.1f} tokens/s")
        if "time_ratio" in res:
            print(f"  speed ratio ref_time/ours_time = {1 / res['time_ratio']:.3f}")
        results[cache] = res
    return results


if __name__ == "__main__":
    main_guard(main)
