"""Lower-bit weights: tokens/s and memory of a quantized 1B Llama on the CPU, ours against the reference's paths.

Sides (each a fresh child process; bench/.cache/llama-1b-bf16, the bf16 ~1B Llama of common.py):
  ours-bf16        AutoModelForCausalLM.from_pretrained(path)                        (no quantization)
  ours-int8        ... quantization_config=TorchAoConfig("int8_weight_only")
  ours-int4        ... quantization_config=TorchAoConfig("int4_weight_only", group_size=128)
  ours-int4-h8     ... TorchAoConfig("int4_weight_only", group_size=128, lm_head_bits=8)
  ours-int4-asym   ... TorchAoConfig("int4_weight_only", group_size=128, symmetric=False)
  ours-int4-static ... int4, generate(..., cache_implementation="static")
  ours-int4-compiled  int4, static cache + compile_config=CompileConfig(): the compiled decoding step
  ref-bf16         transformers' from_pretrained(path, dtype=bfloat16)
  ref-nf4          transformers + BitsAndBytesConfig(load_in_4bit=True, nf4, compute bf16): the reference's int4
                   path that works on this CPU (its torchao int4 needs a kernel package this CPU lacks)
  ref-nf4-static   the same with cache_implementation="static": the reference's fastest int4 here (it does not
                   compile a bitsandbytes model, and says so)
  ref-int8         transformers + BitsAndBytesConfig(load_in_8bit=True)
Each child: loads (LOAD seconds), one untimed generate of the same length (compilation, for the compiled side:
not in TIME), then one timed greedy generate of 64 new tokens, batch 1 (TIME), and prints a
checksum of the tokens. Steady RSS is the child's resident memory after generating (mapped checkpoint pages the
model touched included); peak RSS is its ru_maxrss (for the quantized sides the load's peak). Runs alternate the
sides; medians are reported.

Then, in this process, per-layer cosine similarity of the quantized layer's output to the float layer's on random
bf16 inputs, for int8 and int4 g32/g64/g128, over a sample of the checkpoint's Linear weights.

Threads: torch.set_num_threads(N) and OMP_NUM_THREADS=N in every child (--threads, default 1).

Usage: .venv/bin/python bench/bench_quant.py [--runs 3] [--sides ours-int4,ref-nf4,...] [--threads 1] [--no-cosine]
"""
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse  # noqa: E402
import os  # noqa: E402

from common import DEFAULT_CKPT, ensure_checkpoint, main_guard, run_child, _summary  # noqa: E402

NEW_TOKENS = 64
CHILD = """
import os, time, torch
torch.set_num_threads({threads})
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
{setup}
t0 = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained({path!r}, {kwargs}).eval()
print("LOAD", round(time.perf_counter() - t0, 2))
print("STEADY", rss())
ids = torch.randint(3, 32000, (1, 16), generator=torch.Generator().manual_seed(0))
kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0{gen})
with torch.no_grad():
    m.generate(ids, max_new_tokens={n}, min_new_tokens={n}, **kw)  # untimed: compiles where the side compiles
    t0 = time.perf_counter()
    out = m.generate(ids, max_new_tokens={n}, min_new_tokens={n}, **kw)
    t = time.perf_counter() - t0
print("AFTER", rss())
new = out[0, ids.shape[1]:]
assert new.numel() == {n}
print("TIME", t)
print(int((new * torch.arange(1, new.numel() + 1)).sum()) % 1000003)
"""

OURS = "from pretrained import AutoModelForCausalLM, TorchAoConfig"
REF = "from transformers import AutoModelForCausalLM, BitsAndBytesConfig"
STATIC = ', cache_implementation="static"'
NF4 = "dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', " \
      "bnb_4bit_compute_dtype=torch.bfloat16)"
INT4 = 'quantization_config=TorchAoConfig("int4_weight_only", group_size=128)'
SIDES = {  # name: (imports, from_pretrained keywords, generate keywords)
    "ours-bf16": (OURS, "dtype=torch.bfloat16", ""),
    "ours-int8": (OURS, 'quantization_config=TorchAoConfig("int8_weight_only")', ""),
    "ours-int4": (OURS, INT4, ""),
    "ours-int4-h8": (OURS, 'quantization_config=TorchAoConfig("int4_weight_only", group_size=128, lm_head_bits=8)', ""),
    "ours-int4-asym": (OURS, 'quantization_config=TorchAoConfig("int4_weight_only", group_size=128, symmetric=False)',
                       ""),
    "ours-int4-static": (OURS, INT4, STATIC),
    "ours-int4-compiled": (OURS + "\nfrom pretrained.generation.config import CompileConfig", INT4,
                           STATIC + ", compile_config=CompileConfig()"),
    "ref-bf16": (REF, "dtype=torch.bfloat16", ""),
    "ref-nf4": (REF, NF4, ""),
    # the reference's fastest int4 here: its static cache (it skips compiling a bitsandbytes model, as it says)
    "ref-nf4-static": (REF, NF4, STATIC),
    "ref-int8": (REF, "dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(load_in_8bit=True)", ""),
}


def _lines(stdout):
    found = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("LOAD", "STEADY", "AFTER"):
            found[key] = float(value)
    return found


def speed(args):
    # bitsandbytes' CPU kernels run their own OpenMP threads, which torch.set_num_threads does not reach: the
    # children get the thread count through the environment too, so every side runs on the same number of cores
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    path = str(args.path)
    sides = args.sides.split(",")
    codes = {s: CHILD.format(setup=SIDES[s][0], kwargs=SIDES[s][1], gen=SIDES[s][2], path=path, n=NEW_TOKENS,
                             threads=args.threads) for s in sides}
    print(f"\n=== generate {NEW_TOKENS} tokens, greedy, batch 1, {args.threads} thread(s), {path} ===", flush=True)
    for side in sides:
        print(f"  warm-up {side} ...", flush=True)
        run_child(codes[side])
    res = {s: {"tps": [], "peak": [], "steady": [], "load": [], "out": []} for s in sides}
    for i in range(args.runs):
        for side in sides:
            wall, peak, stdout = run_child(codes[side])
            inner, checksum = _summary(stdout)
            extra = _lines(stdout)
            r = res[side]
            r["tps"].append(NEW_TOKENS / inner)
            r["peak"].append(peak)
            r["steady"].append(extra["AFTER"])
            r["load"].append(extra["LOAD"])
            r["out"].append(checksum)
            print(f"  run {i + 1} {side:18s} {NEW_TOKENS / inner:6.2f} tok/s  load {extra['LOAD']:5.1f} s  "
                  f"steady RSS {extra['AFTER'] / 2**30:5.2f} GiB  peak RSS {peak / 2**30:5.2f} GiB  "
                  f"out {checksum}", flush=True)
    print(f"\n  {'side':18s} {'tok/s':>7s} {'load s':>7s} {'steady GiB':>11s} {'peak GiB':>9s}  tokens")
    med = {}
    for side, r in res.items():
        med[side] = {k: statistics.median(v) for k, v in r.items() if k != "out"}
        m = med[side]
        print(f"  {side:18s} {m['tps']:7.2f} {m['load']:7.1f} {m['steady'] / 2**30:11.2f} {m['peak'] / 2**30:9.2f}"
              f"  {r['out'][-1]}")

    def ratio(a, b):
        if a in med and b in med:
            print(f"  {a} / {b}: speed {med[a]['tps'] / med[b]['tps']:.2f}x, "
                  f"peak RSS {med[a]['peak'] / med[b]['peak']:.2f}x, "
                  f"steady RSS {med[a]['steady'] / med[b]['steady']:.2f}x")

    print()
    for a, b in [("ours-int4", "ref-nf4"), ("ours-int4-h8", "ref-nf4"), ("ours-int4-asym", "ref-nf4"),
                 ("ours-int4-static", "ref-nf4-static"), ("ours-int4-compiled", "ref-nf4-static"),
                 ("ours-int4", "ours-bf16"),
                 ("ours-int8", "ours-bf16"), ("ours-int8", "ref-int8"), ("ours-bf16", "ref-bf16")]:
        ratio(a, b)
    print(f"  load average: {os.getloadavg()}")
    return med


def cosines(args, samples=12):
    import torch
    from safetensors import safe_open

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from pretrained.quantization.linear import QuantizedLinear

    torch.manual_seed(0)
    index = Path(args.path)
    files = sorted(index.glob("*.safetensors"))
    names = []
    for f in files:
        with safe_open(str(f), "pt") as h:
            names += [(f, k) for k in h.keys() if k.endswith("proj.weight") or k == "lm_head.weight"]
    step = max(1, len(names) // samples)
    picked = names[::step][:samples]
    print(f"\n=== per-layer cosine to the float layer, {len(picked)} of {len(names)} Linear weights, "
          "random bf16 inputs (64 rows) ===")
    schemes = [(8, None, True), (4, 32, True), (4, 64, True), (4, 128, True), (4, 128, False)]
    table = {s: [] for s in schemes}
    for f, key in picked:
        with safe_open(str(f), "pt") as h:
            w = h.get_tensor(key)
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16)
        linear.weight = torch.nn.Parameter(w, requires_grad=False)
        x = torch.randn(64, w.shape[1], dtype=torch.bfloat16)
        with torch.no_grad():
            ref = (x.float() @ w.float().t()).flatten().double()
            row = []
            for bits, group, symmetric in schemes:
                layer = QuantizedLinear.from_linear(linear, bits, group, symmetric=symmetric)
                y = layer(x).float().flatten().double()
                c = torch.nn.functional.cosine_similarity(y, ref, dim=0).item()
                table[(bits, group, symmetric)].append(c)
                row.append(f"{c:.5f}")
        print(f"  {key:45s} {' '.join(row)}")
    print(f"  {'scheme':12s} {'min':>8s} {'median':>8s}")
    print("  columns: int8, int4 g32, g64, g128, g128 asymmetric")
    for (bits, group, symmetric), values in table.items():
        label = "int8" if bits == 8 else f"int4 g{group}" + ("" if symmetric else " asym")
        print(f"  {label:12s} {min(values):8.5f} {statistics.median(values):8.5f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--no-cosine", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()
    args.path = ensure_checkpoint(args.checkpoint or DEFAULT_CKPT)
    if not args.no_speed:
        speed(args)
    if not args.no_cosine:
        cosines(args)


if __name__ == "__main__":
    main_guard(main)
