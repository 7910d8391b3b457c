"""TensorFlow / Flax checkpoints in PyTorch (issue 19): start -> first forward of the bench's ~1B Llama re-saved by
transformers 4.57.6 as `tf_model.h5` (by its TFMistralForCausalLM: 4.57 has no TF Llama) and as `flax_model.msgpack`
(by its FlaxLlamaForCausalLM), each in the dtype 4.57's save writes (h5: float32; msgpack: bfloat16, as converted
from the bf16 PyTorch weights).

Sides, each a fresh process (interpreter start, imports, load, 16-token forward; wall time from spawn to exit):
  ours-legacy   `AutoModelForCausalLM.from_pretrained(folder, from_tf=True | from_flax=True, torch_dtype="auto")`
  ours-st       the same weights as PyTorch safetensors (made once by `pretrained convert` from the legacy folder),
                through our loader, same dtype: the target is ours-legacy <= 2x its time, and peak RSS <= 1.2x the
                parameters' bytes (RSS is also given with the runtime's own baseline: `import torch, pretrained`).
  ref457        4.57's own TF / Flax class reading its file (the only 4.x route that works: its PyTorch from_tf /
                from_flax leave the weights on the meta device), run with the isolated environments' interpreters
                (/work/ref457tf/venv: TF_USE_LEGACY_KERAS=1; /work/ref457/venv); never in .venv.

The legacy folders are built once into bench/.cache (about a minute each, by 4.57 in a child):
  llama-1b-tf-h5          tf_model.h5 (float32, ~4 GB)  from llama-1b-bf16-single-as-mistral (bench_tf.py makes it)
  llama-1b-flax-msgpack   flax_model.msgpack (bf16)      from llama-1b-bf16-single (bench_flax.py makes it)

Usage: .venv/bin/python bench/bench_legacy.py [--formats h5,msgpack] [--runs 3] [--ref-runs 1] [--no-ref]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE_DIR, ChildFailed, main_guard, run_child  # noqa: E402

TF_PYTHON = Path("/work/ref457tf/venv/bin/python")
FLAX_PYTHON = Path("/work/ref457/venv/bin/python")
SINGLE = CACHE_DIR / "llama-1b-bf16-single"
AS_MISTRAL = CACHE_DIR / "llama-1b-bf16-single-as-mistral"
FOLDERS = {"h5": CACHE_DIR / "llama-1b-tf-h5", "msgpack": CACHE_DIR / "llama-1b-flax-msgpack"}

BUILD = {
    "h5": (TF_PYTHON, """
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from transformers import TFMistralForCausalLM
m = TFMistralForCausalLM.from_pretrained({src!r}, from_pt=True)
m.save_pretrained({out!r}, max_shard_size="100GB")
"""),
    "msgpack": (FLAX_PYTHON, """
from transformers import FlaxLlamaForCausalLM
m = FlaxLlamaForCausalLM.from_pretrained({src!r}, from_pt=True)
m.save_pretrained({out!r}, max_shard_size="100GB")
"""),
}

OURS = """
import time
t0 = time.perf_counter()
import torch
from pretrained import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({path!r}, torch_dtype="auto"{kw})
print("LOAD", time.perf_counter() - t0)
print("PARAMS", sum(p.numel() * p.element_size() for p in m.parameters()))
with torch.no_grad():
    out = m(torch.arange(16)[None]).logits
print(float(out.float().sum()))
"""
BASELINE = """
import torch, pretrained
from pretrained import AutoModelForCausalLM
print(float(torch.ones(16, 16).sum()))
"""
REF = {
    "h5": (TF_PYTHON, """
import os, time
t0 = time.perf_counter()
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf
from transformers import TFMistralForCausalLM
m = TFMistralForCausalLM.from_pretrained({path!r})
print("LOAD", time.perf_counter() - t0)
out = m(tf.constant(np.arange(16, dtype=np.int32)[None])).logits
print(float(tf.reduce_sum(tf.cast(out, tf.float32))))
"""),
    "msgpack": (FLAX_PYTHON, """
import time
t0 = time.perf_counter()
import numpy as np, jax.numpy as jnp
from transformers import FlaxLlamaForCausalLM
m = FlaxLlamaForCausalLM.from_pretrained({path!r})
print("LOAD", time.perf_counter() - t0)
out = m(np.arange(16, dtype=np.int32)[None]).logits
print(float(jnp.sum(out.astype(jnp.float32))))
"""),
}


def build(fmt: str) -> Path:
    folder = FOLDERS[fmt]
    weights = "tf_model.h5" if fmt == "h5" else "flax_model.msgpack"
    if not (folder / weights).is_file():
        src = AS_MISTRAL if fmt == "h5" else SINGLE
        if not (src / "config.json").is_file():
            raise SystemExit(f"{src} is missing: run bench/bench_tf.py / bench_flax.py once (they make it)")
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"[bench] writing {folder} with 4.57 ...", flush=True)
        python, code = BUILD[fmt]
        run_child(code.format(src=str(src), out=str(partial)), python=python)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(partial, folder)
    converted = folder.with_name(folder.name + "-as-safetensors")
    if not (converted / "config.json").is_file():
        print(f"[bench] converting {folder} -> {converted} ...", flush=True)
        run_child(f"from pretrained.cli import main; raise SystemExit(main(['convert', {str(folder)!r}, "
                  f"{str(converted)!r}]))")
    return folder


def _lines(stdout: str) -> dict:
    found = {}
    for line in stdout.strip().splitlines():
        head, _, rest = line.partition(" ")
        if head in ("LOAD", "PARAMS"):
            found[head] = float(rest)
        else:
            found["out"] = line.strip()
    return found


def measure(fmt: str, runs: int, ref_runs: int) -> dict:
    folder = build(fmt)
    flag = ", from_tf=True" if fmt == "h5" else ", from_flax=True"
    sides = {"ours-legacy": (None, OURS.format(path=str(folder), kw=flag)),
             "ours-st": (None, OURS.format(path=str(folder.with_name(folder.name + "-as-safetensors")), kw=""))}
    if ref_runs:
        python, code = REF[fmt]
        sides["ref457"] = (python, code.format(path=str(folder)))
    print(f"\n=== {fmt}: {folder.name} (warm page cache) ===", flush=True)
    _, base_rss, _ = run_child(BASELINE)
    res = {s: {"wall": [], "rss": [], "load": [], "out": None, "params": None} for s in sides}
    for side, (python, code) in sides.items():  # one untimed warm-up each (page cache)
        if side != "ref457":
            run_child(code, python=python)
    for i in range(max(runs, ref_runs)):
        for side, (python, code) in sides.items():
            if i >= (ref_runs if side == "ref457" else runs):
                continue
            try:
                wall, rss, stdout = run_child(code, python=python)
            except ChildFailed as e:
                print(f"  {side}: FAILED {str(e)[-600:]}", flush=True)
                continue
            got = _lines(stdout)
            r = res[side]
            r["wall"].append(wall), r["rss"].append(rss), r["load"].append(got.get("LOAD"))
            r["out"], r["params"] = got.get("out"), got.get("PARAMS") or r["params"]
            print(f"  run {i + 1} {side:11s}: wall {wall:7.2f} s  load {got.get('LOAD', 0):7.2f} s  "
                  f"peak RSS {rss / 2**30:6.2f} GiB  out {got.get('out')}", flush=True)
    params = res["ours-legacy"]["params"]
    print(f"\n  parameters: {params / 2**30:.2f} GiB; baseline (import torch + pretrained) RSS {base_rss / 2**30:.2f} GiB")
    print(f"  {'side':12s}{'median wall (s)':>16s}{'median RSS (GiB)':>18s}{'RSS/params':>12s}"
          f"{'(RSS-base)/params':>19s}")
    for side, r in res.items():
        if not r["wall"]:
            continue
        r["wall_median"], r["rss_median"] = statistics.median(r["wall"]), statistics.median(r["rss"])
        print(f"  {side:12s}{r['wall_median']:16.2f}{r['rss_median'] / 2**30:18.2f}"
              f"{r['rss_median'] / params:12.2f}{(r['rss_median'] - base_rss) / params:19.2f}")
    o, s = res["ours-legacy"], res["ours-st"]
    if o["wall"] and s["wall"]:
        print(f"  ours-legacy / ours-st: time {o['wall_median'] / s['wall_median']:.2f}x (target <= 2x), "
              f"peak RSS {o['rss_median'] / s['rss_median']:.2f}x")
    if res.get("ref457", {}).get("wall") and o["wall"]:
        print(f"  ours-legacy / ref457: time {o['wall_median'] / res['ref457']['wall_median']:.3f}x")
    print(f"  outputs: " + ", ".join(f"{k} {v['out']}" for k, v in res.items()))
    res["params"], res["baseline_rss"], res["load_average"] = params, base_rss, os.getloadavg()
    print(f"  load average {os.getloadavg()}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", default="h5,msgpack")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ref-runs", type=int, default=1)
    ap.add_argument("--no-ref", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {fmt: measure(fmt, args.runs, 0 if args.no_ref else args.ref_runs) for fmt in args.formats.split(",")}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main_guard(main)
