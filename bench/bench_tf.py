"""TensorFlow benchmarks, side by side with transformers 4.57.6's TF classes (the last line that had them).

4.57 has no TF Llama, so its side loads the bench's Llama checkpoints as Mistral (the same architecture when there
is no sliding window and no biases): a scratch folder next to each checkpoint holds its config rewritten to
model_type "mistral" and symlinks to its weights (bench/.cache/*-as-mistral). 4.57's TF classes cannot read
PyTorch safetensors without `from_pt=True` (which goes through torch); they need Keras 2 (tf-keras), so their
child sets TF_USE_LEGACY_KERAS=1 before importing TensorFlow.

  (a) start -> first forward of the ~1B bf16 Llama (common.py's checkpoint; the one-file copy bench_flax.py makes
      in bench/.cache/llama-1b-bf16-single): a fresh process imports TensorFlow and the library, loads the
      checkpoint and runs a 16-token forward. Ours: `TFAutoModelForCausalLM.from_pretrained` on the as-Mistral
      folder (the very files 4.57 reads), and on the 4 Llama shards; 4.57: `TFMistralForCausalLM.from_pretrained(
      ..., from_pt=True)`. Each child prints its load time and the bytes of the parameters it holds (4.57 holds
      float32). A "baseline" child (import TensorFlow and our TF classes, one tiny op) gives the runtime's own peak
      RSS: the target is peak RSS <= 1.2 x the loaded parameters + that baseline, and time <= 1/10 of 4.57's.
  (b) 128 greedy tokens, batch 1, on the 134M fp32 Llama (bench_generate.py's checkpoint): ours `generate` (and,
      with --sides ours-xla, wrapped in `tf.function(jit_compile=True)`), against 4.57's TF `generate` as a user
      calls it (eager) and wrapped in `tf.function(jit_compile=True)` (its documented XLA path). Each child loads
      (LOAD), runs one untimed generate of the same length (WARMUP: tracing and XLA compilation where there is
      any), then times one generate (TIME); tokens/s = 128 / TIME. The last line is a checksum of the new tokens.

4.57 runs with its isolated environment's interpreter (default /work/ref457tf/venv/bin/python, or --ref-python; see
tests/reference/record_tf_457.py for how it is set up); it never goes into .venv. Sides alternate after one
untimed warm-up each; medians; peak RSS is each child's ru_maxrss from os.wait4, as in the other scripts. A side
whose child fails is reported (its stderr's last lines) and left out; the others still run.

Usage: .venv/bin/python bench/bench_tf.py [--scenario a|b|all] [--runs N] [--sides ours,ref457,...] [--json PATH]
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CKPT, ChildFailed, ensure_checkpoint, main_guard, param_count, run_child  # noqa: E402

REF_PYTHON = Path("/work/ref457tf/venv/bin/python")
NEW_TOKENS = 128

PRELUDE = """
import os, time
t_start = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
{legacy}
import numpy as np
import tensorflow as tf
"""
LEGACY = 'os.environ["TF_USE_LEGACY_KERAS"] = "1"  # 4.57\'s TF classes are Keras 2 models'

LOAD_CHILD = PRELUDE + """
from {lib} import {cls}
m = {cls}.from_pretrained({path!r}{kw})
print("LOAD", time.perf_counter() - t_start)
print("PARAMS", sum(int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size for w in m.weights))
out = m(tf.constant(np.arange(16, dtype=np.int32)[None])).logits
print(float(tf.reduce_sum(tf.cast(out, tf.float32))))
"""

BASELINE_CHILD = PRELUDE + """
from {lib} import {cls}
print(float(tf.reduce_sum(tf.ones((16, 16)))))
"""

GEN_CHILD = PRELUDE + """
from {lib} import {cls}
t0 = time.perf_counter()
m = {cls}.from_pretrained({path!r}{kw})
print("LOAD", time.perf_counter() - t0)
ids = tf.constant(np.random.default_rng(0).integers(3, 32000, size=(1, 16)), dtype=tf.int32)
mask = tf.ones_like(ids)  # given, as a tokenizer does (4.57's XLA generate cannot derive it in a graph)
m.generation_config.eos_token_id = None  # no EOS: every side makes all {n} tokens
m.generation_config.pad_token_id = {pad}
kw = dict(max_new_tokens={n}, do_sample=False)
def gen(ids, mask):
    out = m.generate(ids, attention_mask=mask, **kw)
    return getattr(out, "sequences", out)
{wrap}
t0 = time.perf_counter()
np.asarray(gen(ids, mask))
print("WARMUP", time.perf_counter() - t0)
t0 = time.perf_counter()
seq = np.asarray(gen(ids, mask))
t = time.perf_counter() - t0
new = seq[0, 16:]
assert new.size == {n}, new.size
print("TIME", t)
print(int((new * np.arange(1, new.size + 1)).sum()) % 1000003, int(new.sum()))
"""
XLA_WRAP = "gen = tf.function(gen, jit_compile=True)"
# 4.57's generate tests `pad_token_id in input_ids[:, -1]` with a Python `if`, which fails inside tf.function, and
# wants a pad token whenever there is an EOS token: the XLA sides have neither (no EOS, so no pad is ever used)
XLA = dict(wrap=XLA_WRAP, pad="None")
EAGER = dict(wrap="", pad="0")


def as_mistral(src: Path) -> Path:
    """A folder next to `src` with its Llama config rewritten as Mistral and symlinks to its weight files."""
    dst = src.with_name(src.name + "-as-mistral")
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {}
    assert not cfg.get("attention_bias") and not cfg.get("mlp_bias"), "Mistral has no biases"
    assert rope.get("rope_type", "default") == "default" and not cfg.get("rope_scaling"), "plain RoPE only"
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None,
               rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    dst.mkdir(exist_ok=True)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in src.iterdir():
        if f.name.endswith((".safetensors", ".safetensors.index.json")):
            link = dst / f.name
            if not link.is_symlink() or os.readlink(link) != str(f.resolve()):
                link.unlink(missing_ok=True)
                link.symlink_to(f.resolve())
    return dst


def parse(stdout: str) -> dict:
    got = {"out": ""}
    for line in stdout.strip().splitlines():
        head, _, rest = line.partition(" ")
        if head in ("TIME", "WARMUP", "LOAD", "PARAMS"):
            got[head.lower()] = float(rest)
        else:
            got["out"] = line.strip()
    return got


def _failed(name: str, err: ChildFailed) -> str:
    tail = "\n".join(str(err).strip().splitlines()[-6:])
    print(f"  {name}: child FAILED, left out\n    " + tail.replace("\n", "\n    "), flush=True)
    return tail


def compare_sides(title: str, sides: dict, runs: int, use_inner_time: bool) -> dict:
    """sides: name -> (python or None, code). One untimed warm-up of each, then `runs` alternating rounds."""
    print(f"\n=== {title} ({runs} runs each, warm page cache) ===", flush=True)
    failed = {}
    for name, (python, code) in sides.items():
        print(f"  warm-up {name} ...", flush=True)
        try:
            run_child(code, python=python)
        except ChildFailed as e:
            failed[name] = _failed(name, e)
    live = {k: v for k, v in sides.items() if k not in failed}
    res = {name: [] for name in live}
    for i in range(runs):
        for name, (python, code) in live.items():
            if name in failed:
                continue
            try:
                wall, rss, stdout = run_child(code, python=python)
            except ChildFailed as e:
                failed[name] = _failed(name, e)
                continue
            r = parse(stdout)
            r["wall"], r["rss"] = wall, rss
            r["t"] = r["time"] if use_inner_time else wall
            res[name].append(r)
            extra = "".join(f"  {k} {r[k]:7.2f} s" for k in ("load", "warmup") if k in r)
            print(f"  run {i + 1} {name:14s}: time {r['t']:8.3f} s  (wall {wall:7.3f} s){extra}  "
                  f"peak RSS {rss / 2**30:6.2f} GiB  out {r['out']}", flush=True)
    summary = {}
    print(f"\n  {'side':14s}{'median time (s)':>17s}{'median wall (s)':>17s}{'median peak RSS (GiB)':>24s}"
          f"{'load (s)':>10s}{'warm-up (s)':>13s}{'params (GiB)':>14s}")
    for name, rs in res.items():
        if name in failed or not rs:
            continue
        med = {k: statistics.median(r[k] for r in rs) for k in ("t", "wall", "rss", "load", "warmup", "params")
               if all(k in r for r in rs)}
        med["out"] = rs[-1]["out"]
        med["runs"] = len(rs)
        summary[name] = med
        print(f"  {name:14s}{med['t']:17.3f}{med['wall']:17.3f}{med['rss'] / 2**30:24.2f}"
              f"{med.get('load', float('nan')):10.2f}{med.get('warmup', float('nan')):13.2f}"
              f"{med.get('params', float('nan')) / 2**30:14.2f}")
    for name, why in failed.items():
        summary[name] = {"failed": why}
    print(f"  outputs: { {n: s['out'] for n, s in summary.items() if 'out' in s} }")
    return summary


def outputs_agree(summary: dict, rel: float) -> bool:
    vals = [s["out"] for s in summary.values() if "out" in s]
    try:
        nums = [float(v) for v in vals]
        return all(abs(a - nums[0]) <= rel * max(abs(nums[0]), 1e-9) for a in nums)
    except ValueError:
        return len(set(vals)) == 1


def _ours_cls():
    return "TFAutoModelForCausalLM"


def scenario_a(args) -> dict:
    from bench_flax import ensure_single_file

    sharded = ensure_checkpoint(DEFAULT_CKPT)
    single = ensure_single_file(sharded)
    mistral = as_mistral(single)
    n = param_count(sharded)
    ckpt_bytes = (single / "model.safetensors").stat().st_size
    print(f"checkpoint: {n:,} parameters, bf16, one file {ckpt_bytes / 1e9:.2f} GB ({ckpt_bytes / 2**30:.2f} GiB); "
          f"as float32 {4 * n / 1e9:.2f} GB")
    ours = dict(legacy="", lib="pretrained", cls=_ours_cls(), kw="")
    ref = dict(legacy=LEGACY, lib="transformers", cls="TFMistralForCausalLM", kw=", from_pt=True")
    all_sides = {
        "ours": (None, LOAD_CHILD.format(path=str(mistral), **ours)),
        "ours-llama": (None, LOAD_CHILD.format(path=str(single), **ours)),
        "ours-sharded": (None, LOAD_CHILD.format(path=str(sharded), **ours)),
        "ref457": (args.ref_python, LOAD_CHILD.format(path=str(mistral), **ref)),
    }
    sides = {k: v for k, v in all_sides.items() if k in args.sides}
    baselines = {}
    for name, (python, fmt) in (("ours", (None, ours)), ("ref457", (args.ref_python, ref))):
        if any(k.startswith(name) for k in sides):
            try:
                wall, rss, _ = run_child(BASELINE_CHILD.format(**fmt), python=python)
                baselines[name] = rss
                print(f"runtime baseline {name} (import tensorflow + the TF classes, one op): peak RSS "
                      f"{rss / 2**30:.2f} GiB, wall {wall:.2f} s")
            except ChildFailed as e:
                _failed(f"baseline {name}", e)
    summary = compare_sides("(a) start -> first forward, ~1B Llama (bf16 file)", sides, args.runs,
                            use_inner_time=False)
    for name, s in summary.items():
        if "params" not in s:
            continue
        lib = "ref457" if name.startswith("ref457") else "ours"
        base_rss = baselines.get(lib, 0)
        line = (f"  {name:14s} holds {s['params'] / 2**30:.2f} GiB of parameters; peak RSS {s['rss'] / 2**30:.2f} GiB "
                f"= its baseline ({base_rss / 2**30:.2f}) + {(s['rss'] - base_rss) / s['params']:.2f} x parameters")
        if lib == "ours":
            line += f" (target <= 1.2, i.e. {(1.2 * s['params'] + base_rss) / 2**30:.2f} GiB)"
        print(line)
    if "t" in summary.get("ref457", {}):
        for name in ("ours", "ours-llama", "ours-sharded"):
            if "t" in summary.get(name, {}):
                print(f"  {name}/ref457 time {summary[name]['t'] / summary['ref457']['t']:.3f}x (target <= 0.1)"
                      f"   peak RSS {summary[name]['rss'] / summary['ref457']['rss']:.3f}x")
    print(f"  logits sums {'match' if outputs_agree(summary, 1e-2) else 'NOTE: DIFFER'} (relative 1e-2)")
    summary["_baseline_rss"] = baselines
    return summary


def scenario_b(args) -> dict:
    import bench_generate

    path = bench_generate.ensure_checkpoint()
    mistral = as_mistral(path)
    ours = dict(legacy="", lib="pretrained", cls=_ours_cls(), kw="", n=NEW_TOKENS)
    ref = dict(legacy=LEGACY, lib="transformers", cls="TFMistralForCausalLM", kw=", from_pt=True", n=NEW_TOKENS)
    all_sides = {
        "ours": (None, GEN_CHILD.format(path=str(path), **EAGER, **ours)),
        "ours-xla": (None, GEN_CHILD.format(path=str(path), **XLA, **ours)),
        "ref457": (args.ref_python, GEN_CHILD.format(path=str(mistral), **EAGER, **ref)),
        "ref457-xla": (args.ref_python, GEN_CHILD.format(path=str(mistral), **XLA, **ref)),
    }
    sides = {k: v for k, v in all_sides.items() if k in args.sides}
    summary = compare_sides(f"(b) generate {NEW_TOKENS} tokens, greedy, batch 1, fp32 134M Llama", sides,
                            args.runs, use_inner_time=True)
    for name, s in summary.items():
        if "t" in s:
            print(f"  {name:14s} {NEW_TOKENS / s['t']:8.1f} tokens/s  (first call, tracing/compile included: "
                  f"{s.get('warmup', 0):.2f} s)")
    for mine in ("ours", "ours-xla"):
        if "t" not in summary.get(mine, {}):
            continue
        for other in ("ref457", "ref457-xla"):
            if "t" in summary.get(other, {}):
                print(f"  tokens/s {mine} / {other} = {summary[other]['t'] / summary[mine]['t']:.2f}x"
                      f"{'   (target >= 1.5)' if other == 'ref457' else ''}")
    print(f"  tokens {'identical' if outputs_agree(summary, 0) else 'NOTE: DIFFER'} across sides")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["a", "b", "all"], default="all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ref-python", type=Path, default=REF_PYTHON)
    ap.add_argument("--sides", default="ours,ours-sharded,ref457,ref457-xla",
                    help="comma-separated subset of: ours, ours-llama, ours-sharded (a), ours-xla (b), "
                         "ref457 (a and b), ref457-xla (b)")
    ap.add_argument("--json", type=Path, help="also write the medians here")
    args = ap.parse_args()
    args.sides = set(args.sides.split(","))
    if any(s.startswith("ref457") for s in args.sides) and not args.ref_python.is_file():
        sys.exit(f"{args.ref_python} not found: set up the 4.57 TF environment (tests/reference/record_tf_457.py) "
                 "or pass --sides without ref457")
    results = {}
    if args.scenario in ("a", "all"):
        results["a"] = scenario_a(args)
    if args.scenario in ("b", "all"):
        results["b"] = scenario_b(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
    return results


if __name__ == "__main__":
    main_guard(main)
