"""Start-to-first-forward benchmark: a fresh process imports torch and the
library, loads the ~1B Llama checkpoint and runs one forward pass.

  (a) load in bfloat16 (the checkpoint's own dtype)
  (b) load in float32 (upcast while loading)

Usage: .venv/bin/python bench/bench_load.py [--scenario a|b|all] [--runs N]
                                            [--only ours|ref|both]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (compare, parse_args,  # noqa: E402
                    main_guard, param_count)

LIBS = {"ours": "pretrained", "ref": "transformers"}

CHILD = """
import torch
from {lib} import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.{dtype})
out = m(torch.arange(16)[None]).logits
print(float(out.float().sum()))
"""

SCENARIOS = {"a": "bfloat16", "b": "float32"}


def main():
    args = parse_args(__doc__.splitlines()[0], lambda ap: ap.add_argument("--scenario", choices=["a", "b", "all"], default="all"))
    path = args.path
    n = param_count(path)
    print(f"checkpoint: {path}")
    print(f"parameters: {n:,}  bf16 size {2 * n / 2**30:.2f} GiB  "
          f"fp32 size {4 * n / 2**30:.2f} GiB  "
          f"(1.2 x fp32 = {1.2 * 4 * n / 2**30:.2f} GiB)")

    results = {}
    for key in (["a", "b"] if args.scenario == "all" else [args.scenario]):
        dtype = SCENARIOS[key]
        code = {side: CHILD.format(lib=lib, path=str(path), dtype=dtype)
                for side, lib in LIBS.items()}
        results[key] = compare(f"({key}) start -> first forward, {dtype}",
                               code["ours"], code["ref"], runs=args.runs,
                               only=args.only)
        if key == "b":
            for side in results[key]:
                if isinstance(results[key][side], dict):
                    rss = results[key][side]["rss_median"]
                    print(f"  {side} peak RSS / fp32 size = "
                          f"{rss / (4 * n):.2f} (target <= 1.2)")
    return results


if __name__ == "__main__":
    main_guard(main)
