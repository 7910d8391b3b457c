"""Shared helpers for the benchmarks: a synthetic checkpoint, a child-process
runner that records wall time and peak RSS, and an alternating comparison.

Caches are NOT dropped: every comparison starts with one untimed warm-up run
of each side so the checkpoint files sit in the page cache for the timed runs.
"""
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
DEFAULT_CKPT = CACHE_DIR / "llama-1b-bf16"
N_SHARDS = 4

LLAMA_1B = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
    num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
    tie_word_embeddings=False, max_position_embeddings=2048,
)


def _shards(path):
    """Shard file names listed in the index, or None if there is no index."""
    index = Path(path) / "model.safetensors.index.json"
    if not index.is_file():
        return None
    return sorted(set(json.loads(index.read_text())["weight_map"].values()))


def _is_complete(path):
    shards = _shards(path)
    return (shards is not None and len(shards) == N_SHARDS
            and (Path(path) / "config.json").is_file()
            and all((Path(path) / s).is_file() for s in shards))


def ensure_checkpoint(path=DEFAULT_CKPT):
    """Create a ~1B-param bf16 Llama checkpoint in 4 shards with the reference
    library, unless a complete one is already there. Returns the path."""
    path = Path(path)
    if _is_complete(path):
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    print(f"[bench] creating checkpoint at {path} ...", flush=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B, dtype="bfloat16"))
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm weights
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    # Largest tensors are the 131 MB embeddings; this limit gives 4 shards.
    shard_mb = math.ceil(total / N_SHARDS / 1e6) + 10
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size=f"{shard_mb}MB")
    n = len(_shards(tmp) or [])
    if n != N_SHARDS:
        raise RuntimeError(f"got {n} shards with max_shard_size={shard_mb}MB, "
                           f"expected {N_SHARDS}; adjust the shard size")
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)  # only a complete checkpoint ever appears at `path`
    print(f"[bench] done ({total / 1e9:.2f} GB, {n} shards)", flush=True)
    return path


def param_count(path=DEFAULT_CKPT):
    """Number of parameters, read from the safetensors headers (no data)."""
    total = 0
    for shard in _shards(path):
        with open(Path(path) / shard, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(math.prod(v["shape"]) for k, v in header.items()
                     if k != "__metadata__")
    return total


class ChildFailed(RuntimeError):
    pass


def run_child(code: str, python=None):
    """Run `python -c code` (python: this interpreter unless given); return (wall_seconds, peak_rss_bytes, stdout).

    Wall time spans spawn to exit (interpreter start and imports included);
    peak RSS is the child's own ru_maxrss from wait4 (KiB on Linux).
    Raises ChildFailed (carrying stderr) if the child exits non-zero."""
    env = dict(os.environ)
    src = REPO_ROOT / "src"
    if (src / "pretrained").is_dir():  # works without an editable install
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(src), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(python or sys.executable), "-c", code], stdout=out,
                                stderr=err, env=env, cwd=REPO_ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise ChildFailed(f"child exited with {proc.returncode}\n"
                          f"--- stdout ---\n{stdout}--- stderr ---\n{stderr}")
    return wall, usage.ru_maxrss * 1024, stdout


def _summary(stdout):
    """Pick the child's reported numbers: an optional 'TIME <s>' line (used
    instead of wall time) and the last other line (a checksum)."""
    inner, other = None, ""
    for line in stdout.strip().splitlines():
        if line.startswith("TIME "):
            inner = float(line.split()[1])
        else:
            other = line.strip()
    return inner, other


def _run(code, after_run):
    """run_child on code (a str, or a callable returning one); then after_run."""
    try:
        return run_child(code() if callable(code) else code)
    finally:
        if after_run:
            after_run()


def compare(name, ours_code, ref_code, runs=5, only="both", after_run=None):
    """Alternate ours/ref runs after one untimed warm-up of each; print every
    run and a table of medians and ratios. Returns a dict of the results.
    Codes may be callables returning the code (fresh per run); after_run is
    called after every child, successful or not (e.g. to delete outputs)."""
    sides = {"ours": ours_code, "ref": ref_code}
    if only != "both":
        sides = {only: sides[only]}
    print(f"\n=== {name} ({runs} runs each, warm page cache) ===", flush=True)
    for side, code in sides.items():
        print(f"  warm-up {side} ...", flush=True)
        _run(code, after_run)
    res = {side: {"time": [], "rss": [], "out": []} for side in sides}
    for i in range(runs):
        for side, code in sides.items():
            wall, rss, stdout = _run(code, after_run)
            inner, checksum = _summary(stdout)
            t = wall if inner is None else inner
            r = res[side]
            r["time"].append(t), r["rss"].append(rss), r["out"].append(checksum)
            print(f"  run {i + 1} {side:4s}: time {t:8.3f} s  "
                  f"(wall {wall:7.3f} s)  peak RSS {rss / 2**30:6.2f} GiB  "
                  f"out {checksum}", flush=True)
    print(f"\n  {'':6s}{'median time (s)':>17s}{'median peak RSS (GiB)':>24s}")
    for side, r in res.items():
        r["time_median"] = statistics.median(r["time"])
        r["rss_median"] = statistics.median(r["rss"])
        print(f"  {side:6s}{r['time_median']:17.3f}"
              f"{r['rss_median'] / 2**30:24.2f}")
    if len(res) == 2:
        o, f = res["ours"], res["ref"]
        res["time_ratio"] = o["time_median"] / f["time_median"]
        res["rss_ratio"] = o["rss_median"] / f["rss_median"]
        print(f"  {'ratio ours/ref':20s}  time {res['time_ratio']:.3f}x"
              f"   peak RSS {res['rss_ratio']:.3f}x")
        a, b = o["out"][-1], f["out"][-1]
        try:
            same = math.isclose(float(a), float(b), rel_tol=1e-3)
        except ValueError:
            same = a == b
        print(f"  outputs: ours {a} / ref {b}  "
              f"({'match' if same else 'NOTE: DIFFER'})")
    return res


def main_guard(fn):
    """Run fn(); on a failing child print its output and exit non-zero."""
    try:
        fn()
    except ChildFailed as e:
        print(f"\n[bench] FAILED: {e}", file=sys.stderr)
        sys.exit(1)


def parse_args(description, extra=None):
    """The options every bench script takes (--runs, --only, --checkpoint), plus `extra(parser)`'s."""
    import argparse
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["ours", "ref", "both"], default="both")
    ap.add_argument("--checkpoint", default=None, help="checkpoint dir (default: bench/.cache/llama-1b-bf16)")
    if extra:
        extra(ap)
    args = ap.parse_args()
    args.path = ensure_checkpoint(args.checkpoint or DEFAULT_CKPT)
    return args
