"""JAX/Flax benchmarks, side by side with transformers 4.57.6's Flax classes (the last line that had them).

  (a) start -> first forward of the ~1B bf16 Llama (common.py's checkpoint): a fresh process imports jax and the
      library, loads the checkpoint with dtype=bfloat16 (--dtype float32: computation in fp32, params still bf16)
      and runs a 16-token forward. The time runs from just before the process is spawned to the moment the
      forward's logits are ready (the child prints the clock then, before it sums them as a checksum); the process's
      exit after it (freeing the model and the runtime) is not part of it: the whole process's wall time is shown
      apart. Ours from
      one safetensors file
      and from the 4 shards; 4.57 from the one file (it cannot read sharded safetensors into Flax). The single
      file is made once from the shards in bench/.cache/llama-1b-bf16-single. A "baseline" child (import jax and
      our Flax classes, one tiny jnp op) gives the runtime's own peak RSS: the target is peak RSS <= 1.2 x the
      checkpoint + that baseline.
  (b) 128 greedy tokens, batch 1, on the 134M fp32 Llama (bench_generate.py's checkpoint): ours Flax `generate`,
      4.57's Flax `generate` as a user calls it and wrapped in `jax.jit` (its documented fast path), and our
      PyTorch eager `generate`. Each child loads (LOAD), runs one untimed generate of the same length (WARMUP:
      compilation for the Flax sides), then times one generate (TIME); tokens/s = 128 / TIME. The last line is a
      checksum of the new tokens, which must be the same for every side.

4.57 runs with the isolated environment's interpreter (default /work/ref457/venv/bin/python, or --ref-python; see
tests/reference/record_flax_457.py for how it is set up); it never goes into .venv. Sides alternate after one
untimed warm-up each; medians; peak RSS is each child's ru_maxrss from os.wait4, as in the other scripts.

Usage: .venv/bin/python bench/bench_flax.py [--scenario a|b|all] [--runs N] [--sides ours,ref457,...]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE_DIR, DEFAULT_CKPT, main_guard, param_count, run_child  # noqa: E402

REF_PYTHON = Path("/work/ref457/venv/bin/python")
SINGLE_CKPT = CACHE_DIR / "llama-1b-bf16-single"
NEW_TOKENS = 128

LOAD_CHILD = """
import time
t0 = time.perf_counter()
import numpy as np, jax, jax.numpy as jnp
from {lib} import FlaxAutoModelForCausalLM
m = FlaxAutoModelForCausalLM.from_pretrained({path!r}, dtype=jnp.{dtype})
print("LOAD", time.perf_counter() - t0)
out = m(jnp.arange(16, dtype=jnp.int32)[None]).logits.block_until_ready()
print("FIRST", time.time())
total = float(jnp.asarray(out, jnp.float32).sum())
import ml_dtypes, numpy, flax
print("VERSIONS", f"jax {{jax.__version__}} flax {{flax.__version__}} numpy {{numpy.__version__}} "
      f"ml_dtypes {{ml_dtypes.__version__}}")
print(total)
"""

BASELINE_CHILD = """
import jax, jax.numpy as jnp
from {lib} import FlaxAutoModelForCausalLM
print(float(jnp.ones((16, 16)).sum()))
"""

PROMPT = "np.random.default_rng(0).integers(3, 32000, size=(1, 16))"
CHECKSUM = """
new = np.asarray(seq)[0, 16:]
assert new.size == {n}, new.size
print("TIME", t)
print(int((new * np.arange(1, new.size + 1)).sum()) % 1000003, int(new.sum()))
"""

GEN_FLAX_CHILD = """
import time
import numpy as np, jax, jax.numpy as jnp
from {lib} import FlaxAutoModelForCausalLM
t0 = time.perf_counter()
m = FlaxAutoModelForCausalLM.from_pretrained({path!r})
print("LOAD", time.perf_counter() - t0)
ids = jnp.asarray({prompt}, dtype=jnp.int32)
kw = dict(max_new_tokens={n}, do_sample=False, eos_token_id=None, pad_token_id=0)
def gen(ids):
    out = m.generate(ids, **kw)
    return getattr(out, "sequences", out)
{wrap}
t0 = time.perf_counter()
jax.block_until_ready(gen(ids))
print("WARMUP", time.perf_counter() - t0)
t0 = time.perf_counter()
seq = jax.block_until_ready(gen(ids))
t = time.perf_counter() - t0
""" + CHECKSUM

GEN_TORCH_CHILD = """
import time
import numpy as np, torch
from pretrained import AutoModelForCausalLM
t0 = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.float32).eval()
print("LOAD", time.perf_counter() - t0)
ids = torch.tensor({prompt})
kw = dict(max_new_tokens={n}, min_new_tokens={n}, do_sample=False, eos_token_id=None, pad_token_id=0)
t0 = time.perf_counter()
m.generate(ids, **kw)
print("WARMUP", time.perf_counter() - t0)
t0 = time.perf_counter()
seq = m.generate(ids, **kw).numpy()
t = time.perf_counter() - t0
""" + CHECKSUM


def in_child(call: str) -> None:
    """Make a checkpoint in a child process, never in this one: a child's ru_maxrss (wait4) starts from this
    process's peak RSS (Popen's vfork/exec hands the parent's high-water mark to the child), so a parent that
    once held a model inflates every later measurement."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); {call}"
    print(run_child(code)[2], end="", flush=True)


def ensure_single_file(sharded: Path) -> Path:
    """The sharded bf16 checkpoint as one model.safetensors (format "pt"), made once."""
    target = SINGLE_CKPT / "model.safetensors"
    if target.is_file() and (SINGLE_CKPT / "config.json").is_file():
        return SINGLE_CKPT
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    print(f"[bench] writing {SINGLE_CKPT} (one file) ...", flush=True)
    tmp = SINGLE_CKPT.with_name(SINGLE_CKPT.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {}
    for shard in sorted(set(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values())):
        with safe_open(sharded / shard, framework="pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    del tensors
    for name in ("config.json", "generation_config.json"):
        if (sharded / name).is_file():
            shutil.copy(sharded / name, tmp / name)
    shutil.rmtree(SINGLE_CKPT, ignore_errors=True)
    tmp.rename(SINGLE_CKPT)
    return SINGLE_CKPT


def parse(stdout: str) -> dict:
    got = {"out": ""}
    for line in stdout.strip().splitlines():
        head, _, rest = line.partition(" ")
        if head in ("TIME", "WARMUP", "LOAD", "FIRST"):
            got[head.lower()] = float(rest)
        elif head == "VERSIONS":
            got["versions"] = rest
        else:
            got["out"] = line.strip()
    return got


def compare_sides(title: str, sides: dict, runs: int, timing: str) -> dict:
    """sides: name -> (python or None, code). One untimed warm-up of each, then `runs` alternating rounds.
    timing: "inner" (the child's TIME line), "first" (spawn -> the child's FIRST clock reading) or "wall"."""
    print(f"\n=== {title} ({runs} runs each, warm page cache) ===", flush=True)
    for name, (python, code) in sides.items():
        print(f"  warm-up {name} ...", flush=True)
        run_child(code, python=python)
    res = {name: [] for name in sides}
    for i in range(runs):
        for name, (python, code) in sides.items():
            spawned = time.time()
            wall, rss, stdout = run_child(code, python=python)
            r = parse(stdout)
            r["wall"], r["rss"] = wall, rss
            r["t"] = {"inner": r.get("time"), "first": r.get("first", 0.0) - spawned, "wall": wall}[timing]
            if i == 0 and "versions" in r:
                print(f"  {name}: {r['versions']}")
            res[name].append(r)
            extra = "".join(f"  {k} {r[k]:7.2f} s" for k in ("load", "warmup") if k in r)
            print(f"  run {i + 1} {name:14s}: time {r['t']:8.3f} s  (wall {wall:7.3f} s){extra}  "
                  f"peak RSS {rss / 2**30:6.2f} GiB  out {r['out']}", flush=True)
    summary = {}
    print(f"\n  {'side':14s}{'median time (s)':>17s}{'median wall (s)':>17s}{'median peak RSS (GiB)':>24s}"
          f"{'load (s)':>10s}{'warm-up (s)':>13s}")
    for name, rs in res.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("t", "wall", "rss", "load", "warmup")
               if all(k in r for r in rs)}
        med["out"] = rs[-1]["out"]
        summary[name] = med
        print(f"  {name:14s}{med['t']:17.3f}{med['wall']:17.3f}{med['rss'] / 2**30:24.2f}"
              f"{med.get('load', float('nan')):10.2f}{med.get('warmup', float('nan')):13.2f}")
    outs = {name: s["out"] for name, s in summary.items()}
    print(f"  outputs: {outs}")
    return summary


def outputs_agree(summary: dict, rel: float) -> bool:
    vals = [s["out"] for s in summary.values()]
    try:
        nums = [float(v) for v in vals]
        return all(abs(a - nums[0]) <= rel * max(abs(nums[0]), 1e-9) for a in nums)
    except ValueError:
        return len(set(vals)) == 1


def scenario_a(args) -> dict:
    in_child("import bench_flax as b, common as c; b.ensure_single_file(c.ensure_checkpoint(c.DEFAULT_CKPT))")
    sharded, single = DEFAULT_CKPT, SINGLE_CKPT
    n = param_count(sharded)
    ckpt_bytes = (single / "model.safetensors").stat().st_size
    print(f"checkpoint: {n:,} parameters, one file {ckpt_bytes / 1e9:.2f} GB ({ckpt_bytes / 2**30:.2f} GiB)")
    all_sides = {
        "ours": (None, LOAD_CHILD.format(lib="pretrained", path=str(single), dtype=args.dtype)),
        "ours-sharded": (None, LOAD_CHILD.format(lib="pretrained", path=str(sharded), dtype=args.dtype)),
        "ref457": (args.ref_python, LOAD_CHILD.format(lib="transformers", path=str(single), dtype=args.dtype)),
    }
    sides = {k: v for k, v in all_sides.items() if k in args.sides}
    _, base_rss, _ = run_child(BASELINE_CHILD.format(lib="pretrained"))
    print(f"runtime baseline (import jax + our Flax classes, one jnp op): peak RSS {base_rss / 2**30:.2f} GiB")
    summary = compare_sides(f"(a) start -> first forward, ~1B bf16 Llama, computation dtype {args.dtype}", sides,
                            args.runs, timing="first")
    target = 1.2 * ckpt_bytes + base_rss
    for name, s in summary.items():
        print(f"  {name:14s} peak RSS {s['rss'] / 2**30:.2f} GiB = baseline + "
              f"{(s['rss'] - base_rss) / ckpt_bytes:.2f} x checkpoint (target <= 1.2, i.e. "
              f"{target / 2**30:.2f} GiB)")
    if "ref457" in summary:
        for name in ("ours", "ours-sharded"):
            if name in summary:
                print(f"  {name}/ref457 start -> first forward {summary[name]['t'] / summary['ref457']['t']:.3f}x "
                      f"(target <= 0.1)   whole process, exit included "
                      f"{summary[name]['wall'] / summary['ref457']['wall']:.3f}x   "
                      f"peak RSS {summary[name]['rss'] / summary['ref457']['rss']:.3f}x")
    agree = "match" if outputs_agree(summary, 5e-2) else "NOTE: DIFFER"
    print(f"  logits sums {agree} (bf16 computation: relative 5e-2; in fp32 ours and 4.57 agree to 3e-6)")
    return summary


def scenario_b(args) -> dict:
    import bench_generate

    in_child("import bench_generate; bench_generate.ensure_checkpoint()")
    path = bench_generate.CKPT
    fmt = dict(path=str(path), prompt=PROMPT, n=NEW_TOKENS)
    all_sides = {
        "ours": (None, GEN_FLAX_CHILD.format(lib="pretrained", wrap="", **fmt)),
        "ref457": (args.ref_python, GEN_FLAX_CHILD.format(lib="transformers", wrap="", **fmt)),
        "ref457-jit": (args.ref_python, GEN_FLAX_CHILD.format(lib="transformers", wrap="gen = jax.jit(gen)", **fmt)),
        "ours-torch": (None, GEN_TORCH_CHILD.format(**fmt)),
    }
    sides = {k: v for k, v in all_sides.items() if k in args.sides}
    summary = compare_sides(f"(b) generate {NEW_TOKENS} tokens, greedy, batch 1, fp32 134M Llama", sides,
                            args.runs, timing="inner")
    for name, s in summary.items():
        print(f"  {name:14s} {NEW_TOKENS / s['t']:8.1f} tokens/s  (compile/warm-up {s.get('warmup', 0):.2f} s)")
    if "ours" in summary:
        for other in ("ref457", "ref457-jit", "ours-torch"):
            if other in summary:
                print(f"  tokens/s ours / {other} = {summary[other]['t'] / summary['ours']['t']:.2f}x")
    print(f"  tokens {'identical' if outputs_agree(summary, 0) else 'NOTE: DIFFER'} across sides")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["a", "b", "all"], default="all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ref-python", type=Path, default=REF_PYTHON)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="(a): the computation dtype passed as dtype= (params stay bf16 either way)")
    ap.add_argument("--sides", default="ours,ours-sharded,ref457,ref457-jit,ours-torch",
                    help="comma-separated subset of: ours, ours-sharded, ref457 (a and b), ref457-jit, ours-torch (b)")
    args = ap.parse_args()
    args.sides = set(args.sides.split(","))
    if args.sides & {"ref457", "ref457-jit"} and not args.ref_python.is_file():
        sys.exit(f"{args.ref_python} not found: set up the 4.57 environment (tests/reference/record_flax_457.py) "
                 "or pass --sides without ref457")
    results = {}
    if args.scenario in ("a", "all"):
        results["a"] = scenario_a(args)
    if args.scenario in ("b", "all"):
        results["b"] = scenario_b(args)
    return results


if __name__ == "__main__":
    main_guard(main)
