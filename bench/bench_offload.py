"""Big-model inference bench: steady-state forward of 16 tokens with most blocks offloaded to disk.

The ~1B bf16 Llama with max_memory={"cpu": "800MB"} and an offload folder (the rest of the blocks on disk),
against the same model wholly in memory, for this library and for the reference (transformers + accelerate),
in alternating child processes. Reports the median forward time (TIME, measured in the child over 5 forwards
after one warm-up), the whole child's wall time (load included) and peak RSS.

Targets: ours offloaded / ours in memory <= 1.1, and ours offloaded / ref offloaded <= 0.8.

`--paired N`: instead, one child of ours loads the model twice (offloaded and in memory) and alternates their
forwards N times; the median of the per-pair ratios is less exposed to a noisy machine than medians taken
minutes apart.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, main_guard, parse_args, run_child  # noqa: E402

LIBS = {"ours": "pretrained", "ref": "transformers"}

CHILD = """
import statistics, tempfile, shutil, time, torch
from {lib} import AutoModelForCausalLM
folder = tempfile.mkdtemp(prefix="offload-", dir="bench/.cache")
kw = dict(device_map="auto", max_memory={{"cpu": "800MB"}}, offload_folder=folder) if {offload} else {{}}
t = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained("{path}", dtype=torch.bfloat16, **kw)
load = time.perf_counter() - t
placed = getattr(m, "hf_device_map", {{}})
x = torch.arange(16)[None]
with torch.no_grad():
    m(x)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        out = m(x).logits
        times.append(time.perf_counter() - t)
shutil.rmtree(folder, ignore_errors=True)
print("load", round(load, 3), "s; blocks on disk:", sum(1 for k, v in placed.items() if v == "disk"))
print("TIME", statistics.median(times))
print(float(out.float().sum()))
"""


PAIRED = """
import statistics, tempfile, shutil, time, torch
from pretrained import AutoModelForCausalLM
folder = tempfile.mkdtemp(prefix="offload-", dir="bench/.cache")
off = AutoModelForCausalLM.from_pretrained("{path}", dtype=torch.bfloat16, device_map="auto",
                                           max_memory={{"cpu": "800MB"}}, offload_folder=folder)
mem = AutoModelForCausalLM.from_pretrained("{path}", dtype=torch.bfloat16)
x = torch.arange(16)[None]
a, b = [], []
with torch.no_grad():
    same = torch.equal(off(x).logits, mem(x).logits)
    for _ in range({n}):
        t = time.perf_counter(); off(x); a.append(time.perf_counter() - t)
        t = time.perf_counter(); mem(x); b.append(time.perf_counter() - t)
shutil.rmtree(folder, ignore_errors=True)
print(f"offloaded {{statistics.median(a):.4f}} s, in memory {{statistics.median(b):.4f}} s, "
      f"median of paired ratios {{statistics.median(x / y for x, y in zip(a, b)):.3f}} (target <= 1.1), "
      f"outputs {{'identical' if same else 'DIFFER'}}")
"""


def main():
    args = parse_args(__doc__.splitlines()[0],
                      lambda ap: ap.add_argument("--paired", type=int, default=0, metavar="N"))
    if args.paired:
        _, rss, out = run_child(PAIRED.format(path=args.path, n=args.paired))
        print(out.strip(), f"(peak RSS {rss / 2**30:.2f} GiB, both models)")
        return {}
    results = {}
    for offload in (True, False):
        code = {side: CHILD.format(lib=lib, path=args.path, offload=offload) for side, lib in LIBS.items()}
        name = "offloaded (cpu 800MB + disk)" if offload else "in memory"
        results[offload] = compare(f"forward of 16 tokens, {name}", code["ours"], code["ref"], args.runs, args.only)
    if args.only == "both":
        ours_off, ours_mem = results[True]["ours"]["time_median"], results[False]["ours"]["time_median"]
        ref_off = results[True]["ref"]["time_median"]
        print(f"\n  ours offloaded / ours in memory: {ours_off / ours_mem:.3f} (target <= 1.1)")
        print(f"  ours offloaded / ref offloaded:  {ours_off / ref_off:.3f} (target <= 0.8)")


if __name__ == "__main__":
    main_guard(main)
