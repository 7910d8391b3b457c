"""Save benchmark (c): a child loads the bf16 checkpoint (untimed), then times
save_pretrained(max_shard_size="500MB") plus an explicit fsync of every
written file and of the directory. The fsync is done by the child for both
libraries so the work is identical. Reported: median in-child save time and
the child's peak RSS (whole process, load included).

Usage: .venv/bin/python bench/bench_save.py [--runs N] [--only ours|ref|both]
"""
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE_DIR, compare, parse_args,  # noqa: E402
                    main_guard)

LIBS = {"ours": "pretrained", "ref": "transformers"}

CHILD = """
import os, time, torch
from {lib} import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.bfloat16)
out_dir = {out!r}
t0 = time.perf_counter()
m.save_pretrained(out_dir, max_shard_size="500MB")
for root, dirs, files in os.walk(out_dir):
    for name in files + dirs:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
fd = os.open(out_dir, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
elapsed = time.perf_counter() - t0
shards = [f for f in os.listdir(out_dir) if f.endswith(".safetensors")]
print("TIME", elapsed)
print(f"{{len(shards)}} shards, {{sum(os.path.getsize(os.path.join(out_dir, f)) for f in shards)}} bytes")
"""


SCRATCH = CACHE_DIR / "save-scratch"  # each run saves to a temp dir here


def clear_scratch():
    shutil.rmtree(SCRATCH, ignore_errors=True)


def child_code(lib, path):
    """A callable giving fresh child code (new temp output dir) per run."""
    def make():
        SCRATCH.mkdir(parents=True, exist_ok=True)
        out = tempfile.mkdtemp(prefix=f"{lib}-", dir=SCRATCH)
        return CHILD.format(lib=lib, path=str(path), out=out)
    return make


def main():
    args = parse_args(__doc__.splitlines()[0], None)
    path = args.path
    print(f"checkpoint: {path}")
    print("time = in-child save_pretrained + fsync; RSS = whole child")
    try:
        return compare("(c) save_pretrained bf16, 500MB shards, fsync",
                       child_code(LIBS["ours"], path),
                       child_code(LIBS["ref"], path),
                       runs=args.runs, only=args.only, after_run=clear_scratch)
    finally:
        clear_scratch()


if __name__ == "__main__":
    main_guard(main)
