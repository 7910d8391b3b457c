"""Tensor-parallel load and decode: `from_pretrained(path, tp_plan="auto")` under `torchrun --nproc-per-node 2`
(gloo, CPU, OMP_NUM_THREADS=1 per rank) for ours and for the reference (transformers 5.x `tp_plan="auto"`), on the
~1B bf16 Llama of bench/common.py, loaded as bfloat16 and as float32; plus ours and the reference in one process as
the baseline.

Per rank: load time (the `from_pretrained` call alone, process-group start included, imports not), peak RSS
(ru_maxrss), memory right after loading — RSS, RssAnon (memory of its own: RSS less the mapped file pages, which
the page cache shares) and the smaps_rollup Private_* fields (Private_Clean also counts clean file pages that only
this process maps) — and tokens/s of 64 greedy new tokens after a 16-token prompt (min_new_tokens=64, one untimed
warm-up generate of 4 tokens), and the CPU time (user + system) per token, which a busy machine disturbs less than
the wall time. Runs alternate ours/ref; the table gives medians over runs and ranks.

    .venv/bin/python bench/bench_tp.py --runs 1
    .venv/bin/python bench/bench_tp.py --runs 3 --dtypes float32 --sides ours,ref --no-single
    .venv/bin/python bench/bench_tp.py --paired 6        # decode only, both libraries in the same two ranks
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CKPT, REPO_ROOT, ensure_checkpoint  # noqa: E402

RANK = r'''
import json, os, resource, sys, time
side, path, dtype_name, new_tokens, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
split = "WORLD_SIZE" in os.environ
import torch
torch.set_num_threads(1)
if side == "ours":
    from pretrained import AutoModelForCausalLM
else:
    from transformers import AutoModelForCausalLM
dtype = getattr(torch, dtype_name)
kwargs = {"tp_plan": "auto"} if split else {}
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
load_s = time.perf_counter() - t0

def fields(path):
    out = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out

status, rollup = fields("/proc/self/status"), fields("/proc/self/smaps_rollup")
r = {"side": side, "rank": int(os.environ.get("RANK", 0)), "dtype": dtype_name, "load_s": load_s,
     "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss": status["VmRSS"],
     "rss_anon": status["RssAnon"], "rss_file": status["RssFile"],
     "private": rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0),
     "private_dirty": rollup.get("Private_Dirty", 0),
     "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
if new_tokens:
    ids = torch.arange(1, 17)[None]
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        t0, c0 = time.perf_counter(), os.times()
        tokens = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        r["tokens_per_s"] = new_tokens / (time.perf_counter() - t0)
        c1 = os.times()
        r["cpu_ms_per_token"] = 1e3 * (c1.user - c0.user + c1.system - c0.system) / new_tokens
    r["checksum"] = int(tokens[0, 16:].sum())
    r["rss_after_generate"] = fields("/proc/self/status")["VmRSS"]
    r["rss_anon_after_generate"] = fields("/proc/self/status")["RssAnon"]
with open(os.path.join(out, f"{side}-{dtype_name}-{'tp' if split else 'single'}-rank{r['rank']}.json"), "w") as f:
    json.dump(r, f)
if split:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
'''

# --paired: both libraries' split models in the same two ranks, their generates alternating, so that the machine's
# load moves both alike (separate launches of a busy 2-core machine scatter tokens/s by +-30%)
PAIRED = r'''
import json, os, sys, time
path, dtype_name, new_tokens, rounds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import torch
torch.set_num_threads(1)
import pretrained, transformers
import torch.distributed as dist
dtype = getattr(torch, dtype_name)
models = {"ours": pretrained.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, tp_plan="auto"),
          "ref": transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, tp_plan="auto")}
ids = torch.arange(1, 17)[None]
res = {k: [] for k in models}
with torch.no_grad():
    for m in models.values():
        m.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    for i in range(rounds):
        for name in (("ours", "ref") if i % 2 == 0 else ("ref", "ours")):
            dist.barrier()
            t, c = time.perf_counter(), os.times()
            tokens = models[name].generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            wall, c1 = time.perf_counter() - t, os.times()
            res[name].append({"tokens_per_s": new_tokens / wall, "checksum": int(tokens[0, 16:].sum()),
                              "cpu_ms_per_token": 1e3 * (c1.user - c.user + c1.system - c.system) / new_tokens})
with open(os.path.join(out, f"paired-rank{dist.get_rank()}.json"), "w") as f:
    json.dump(res, f)
dist.barrier()
dist.destroy_process_group()
'''


def paired(dtype: str, path: Path, new_tokens: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        script = Path(out) / "paired.py"
        script.write_text(PAIRED)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), str(script), str(path), dtype, str(new_tokens), str(rounds), out]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO_ROOT, timeout=2400)
        if proc.returncode != 0:
            raise RuntimeError(f"paired {dtype} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        ranks = [json.loads(p.read_text()) for p in sorted(Path(out).glob("paired-rank*.json"))]
    print(f"\npaired decode, {dtype}, {new_tokens} new tokens, {rounds} rounds alternating in the same 2 ranks:")
    med = {}
    for side in ("ours", "ref"):
        runs = [r for rank in ranks for r in rank[side]]
        med[side] = {k: statistics.median(r[k] for r in runs) for k in ("tokens_per_s", "cpu_ms_per_token")}
        print(f"  {side:4s} tok/s " + " ".join(f"{r['tokens_per_s']:.2f}" for r in ranks[0][side])
              + f"  (median {med[side]['tokens_per_s']:.2f}; CPU {med[side]['cpu_ms_per_token']:.0f} ms/token; "
              f"checksum {ranks[0][side][-1]['checksum']})")
    print(f"  ours/ref tok/s {med['ours']['tokens_per_s'] / med['ref']['tokens_per_s']:.2f}x, CPU time per token "
          f"{med['ours']['cpu_ms_per_token'] / med['ref']['cpu_ms_per_token']:.2f}x")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


def run(side: str, dtype: str, path: Path, new_tokens: int, tp: bool, timeout: float = 1200) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        script = Path(out) / "rank.py"
        script.write_text(RANK)
        args = [str(script), side, str(path), dtype, str(new_tokens), out]
        if tp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                   "127.0.0.1", "--master-port", str(_free_port()), *args]
        else:
            cmd = [sys.executable, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO_ROOT, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{side} {dtype} {'tp' if tp else 'single'} failed:\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-6000:]}")
        return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]


def _mb(x: float) -> str:
    return f"{x / 2**20:8.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--sides", default="ours,ref")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-single", action="store_true", help="skip the one-process baselines")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    ap.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                    help="instead: decode only, ours and ref alternating ROUNDS times in the same two ranks")
    args = ap.parse_args()
    path = ensure_checkpoint(Path(args.checkpoint))
    if args.paired:
        print(f"[bench_tp] load average before: {os.getloadavg()}", flush=True)
        for dtype in args.dtypes.split(","):
            paired(dtype, path, args.new_tokens, args.paired)
        print(f"load average after: {os.getloadavg()}")
        return
    print(f"[bench_tp] checkpoint {path}; load average before: {os.getloadavg()}", flush=True)
    rows: dict[tuple, list[dict]] = {}
    for dtype in args.dtypes.split(","):
        configs = [(side, True) for side in args.sides.split(",")]
        if not args.no_single:
            configs += [(side, False) for side in args.sides.split(",")]
        for i in range(args.runs):
            for side, tp in configs:
                got = run(side, dtype, path, args.new_tokens, tp)
                rows.setdefault((dtype, side, tp), []).extend(got)
                for r in got:
                    print(f"  run {i + 1} {dtype:8s} {side:4s} {'tp' if tp else '1p'} rank {r['rank']}: load "
                          f"{r['load_s']:6.2f} s  peak RSS {_mb(r['peak_rss'])} MB  RssAnon {_mb(r['rss_anon'])} MB"
                          f"  Private {_mb(r['private'])} MB  tok/s {r.get('tokens_per_s', 0):6.2f} "
                          f"(CPU {r.get('cpu_ms_per_token', 0):5.0f} ms/token)  "
                          f"checksum {r.get('checksum')}  after generate: RSS {_mb(r.get('rss_after_generate', 0))} "
                          f"MB RssAnon {_mb(r.get('rss_anon_after_generate', 0))} MB", flush=True)
    print(f"\nload average after: {os.getloadavg()}")
    print(f"\n{'dtype':9s}{'side':5s}{'mode':5s}{'load s':>8s}{'peak RSS MB':>13s}{'RssAnon MB':>12s}"
          f"{'Private MB':>12s}{'params MB':>11s}{'tok/s':>8s}{'CPU ms/tok':>12s}")
    med = {}
    for (dtype, side, tp), rs in rows.items():
        m = {k: statistics.median(r[k] for r in rs) for k in ("load_s", "peak_rss", "rss_anon", "private",
                                                                "param_bytes")}
        m["tokens_per_s"] = statistics.median(r.get("tokens_per_s", 0) for r in rs)
        m["cpu_ms"] = statistics.median(r.get("cpu_ms_per_token", 0) for r in rs)
        med[(dtype, side, tp)] = m
        print(f"{dtype:9s}{side:5s}{'tp' if tp else '1p':5s}{m['load_s']:8.2f}{_mb(m['peak_rss']):>13s}"
              f"{_mb(m['rss_anon']):>12s}{_mb(m['private']):>12s}{_mb(m['param_bytes']):>11s}"
              f"{m['tokens_per_s']:8.2f}{m['cpu_ms']:12.0f}")
    for dtype in args.dtypes.split(","):
        o, f, s = med.get((dtype, "ours", True)), med.get((dtype, "ref", True)), med.get((dtype, "ours", False))
        if o and f:
            print(f"{dtype}: ours/ref TP per-rank load time {o['load_s'] / f['load_s']:.2f}x, peak RSS "
                  f"{o['peak_rss'] / f['peak_rss']:.2f}x, RssAnon {o['rss_anon'] / max(f['rss_anon'], 1):.2f}x, "
                  f"tok/s {o['tokens_per_s'] / max(f['tokens_per_s'], 1e-9):.2f}x, CPU time per token "
                  f"{o['cpu_ms'] / max(f['cpu_ms'], 1e-9):.2f}x")
        if o and s:
            print(f"{dtype}: ours TP per-rank RssAnon / ours single-process RssAnon "
                  f"{o['rss_anon'] / s['rss_anon']:.2f}x; / single-process model bytes "
                  f"{o['rss_anon'] / s['param_bytes']:.2f}x")


if __name__ == "__main__":
    main()
