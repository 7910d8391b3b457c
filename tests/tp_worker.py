"""One rank of the tensor-parallel tests, started by `torchrun --nproc-per-node 2 tests/tp_worker.py SPEC OUT`.

SPEC (JSON): {"models": [{"name", "path", "save", "bf16", "disable_mmap", "distributed_config", "tp_plan"}],
"errors": [{"name", "path", "kwargs"}], "rank_errors": [{"name", "paths": [one per rank], "kwargs"}], "ids": [[...]],
"padded": [[...]], "mask": [[...]], "new_tokens": int}. Every check runs in this one launch (each
launch costs seconds of startup); the results go to OUT/rank{R}.json (numbers) and OUT/rank{R}-{name}.safetensors
(the local slices), which the test compares with a single-process run. An error in a check is recorded, not raised,
so that one failure does not leave the other rank waiting in a collective: a rank that cannot go on exits non-zero.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from pretrained import AutoModelForCausalLM
from pretrained.distributed import DistributedConfig

SLICES = ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
          "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight",
          "model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight", "lm_head.weight",
          "model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.o_proj.bias", "model.norm.weight")


def run_model(spec: dict, m: dict, out: str, rank: int) -> dict:
    kwargs = {"tp_plan": m.get("tp_plan", "auto")} if not m.get("distributed_config") else {
        "distributed_config": DistributedConfig(tp_plan="auto")}
    dtype = torch.bfloat16 if m.get("bf16") else torch.float32
    if m.get("disable_mmap"):
        kwargs["disable_mmap"] = True
    model = AutoModelForCausalLM.from_pretrained(m["path"], dtype=dtype, **kwargs)
    state = model.state_dict()
    local = {k: state[k].contiguous() for k in SLICES if k in state}
    save_file({k: v.clone() for k, v in local.items()}, os.path.join(out, f"rank{rank}-{m['name']}.safetensors"))
    r = {
        "tp_size": model.tp_size,
        "tp_plan": model.tp_plan,
        "shapes": {k: list(v.shape) for k, v in local.items()},
        "layer_bytes": sum(p.nbytes for n, p in model.named_parameters() if ".layers." in n),
        "classes": {n: type(mod).__name__ for n, mod in model.named_modules()
                    if n in ("model.embed_tokens", "lm_head", "model.layers.0.self_attn.o_proj")},
    }
    if m.get("bf16"):
        return r
    ids = torch.tensor(spec["ids"], device=model.device)
    with torch.no_grad():
        r["logits"] = model(ids).logits.tolist()
    n = spec["new_tokens"]
    r["greedy"] = model.generate(ids, max_new_tokens=n, do_sample=False).tolist()
    r["greedy_static"] = model.generate(ids, max_new_tokens=n, do_sample=False,
                                        cache_implementation="static").tolist()
    padded, mask = torch.tensor(spec["padded"], device=model.device), torch.tensor(spec["mask"], device=model.device)
    r["padded"] = model.generate(padded, attention_mask=mask, max_new_tokens=n, do_sample=False).tolist()
    if m.get("save"):
        model.save_pretrained(os.path.join(out, f"saved-{m['name']}"))
        r["saved"] = True
    return r


def run_error(e: dict) -> dict:
    try:
        AutoModelForCausalLM.from_pretrained(e["path"], **e["kwargs"])
    except Exception as err:  # recorded for the test: type and message
        return {"type": type(err).__name__, "mro": [c.__name__ for c in type(err).__mro__], "message": str(err)}
    return {"type": None}


def main() -> int:
    if os.environ.get("TP_DUMP_AFTER"):  # debugging a hang: print every rank's stack after that many seconds
        faulthandler.dump_traceback_later(float(os.environ["TP_DUMP_AFTER"]), exit=True)
    spec_path, out = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    rank = int(os.environ["RANK"])
    results: dict = {"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "errors": {}, "models": {}}
    for e in spec.get("errors", []):  # first: they fail before any rendezvous, on every rank alike
        results["errors"][e["name"]] = run_error(e)
    results["group_after_errors"] = dist.is_initialized()  # the checks fail before any rendezvous
    status = 0
    for m in spec.get("models", []):
        try:
            results["models"][m["name"]] = run_model(spec, m, out, rank)
        except Exception:
            results["models"][m["name"]] = {"failed": traceback.format_exc()}
            status = 1
            break  # the other rank may be inside a collective: stop here rather than run the next model
    results["group_started"] = dist.is_initialized()
    if status == 0:  # a load that fails on one rank only (its own files): the others must raise, not wait
        for e in spec.get("rank_errors", []):
            results["errors"][e["name"]] = run_error({"path": e["paths"][rank], "kwargs": e["kwargs"]})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    if dist.is_initialized() and status == 0:
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
