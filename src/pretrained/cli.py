"""The `pretrained` command.

    pretrained demo [--dir DIR]        build a tiny Llama, save it sharded, load it back, check the round trip,
                                       then generate 8 tokens greedily with the loaded model (and, with jax
                                       or tensorflow installed, compare the Flax / TF class's logits on the
                                       same files)
    pretrained inspect PATH [--json]   what a checkpoint holds, read from its headers, index and config only
    pretrained plan PATH [--max-memory 0=20GiB ...] [--dtype D] [--strategy S] [--json]
                                       the device map a checkpoint would get, from its config alone
    pretrained generate PATH --prompt TEXT [--max-new-tokens N] [--do-sample --temperature T --top-k K ...]
                       [--compile] [--framework flax|tf]
                                       stream a continuation (PATH holds tokenizer.json), then tokens/s
    pretrained convert SRC DST [--max-shard-size 5GB] [--dtype D] [--from pt|tf|flax]
                                       any checkpoint we read (safetensors, .bin, tf_model.h5, TF 1, msgpack) ->
                                       PyTorch-layout safetensors + config in DST, streamed, in one atomic commit
    pretrained quantize SRC DST [--bits 4|8] [--group-size 128] [--lm-head-bits 8] [--asymmetric] [--skip M]
                                       int4/int8 weights as a compressed-tensors checkpoint, streamed, atomic

torch is imported only by the subcommand that needs it, so `--help` is instant. A `PretrainedError` prints one
line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from typing import Any

from .errors import (CheckpointError, CheckpointNotFoundError, CorruptCheckpointError, PretrainedError,  # no torch
                     UnknownModelTypeError)

DEMO_NEW_TOKENS = 8  # the demo's short greedy generate on the loaded model
DEMO_SHARD_SIZE = 500_000  # bytes: cuts the demo model (1.7 MB in bfloat16) into 4 shards
DEMO_TOKENS = [1, 17, 42, 256, 7, 511, 99, 3]
FLAX_DEMO_TOLERANCE = 1e-4  # float32 logits of the Flax class vs PyTorch's, on the demo's weights
TF_DEMO_TOLERANCE = 1e-4  # float32 logits of the TF class vs PyTorch's, on the demo's weights
SETTINGS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "max_position_embeddings", "tie_word_embeddings", "dtype")  # the config values inspect shows


def _size(n: int) -> str:
    return next((f"{n / s:.1f} {u}" for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if n >= s), f"{n} B")


def _table(rows: list[tuple], indent: str = "  ") -> None:
    """Print rows as columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [str(row[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(row[1:], widths[1:])]
        print((indent + "  ".join(cells)).rstrip())


def _fields(pairs: list[tuple[str, Any]]) -> None:
    """Print `label  value` lines with the values aligned."""
    width = max(len(label) for label, _ in pairs)
    print("\n".join(f"{label.ljust(width)}  {value}" for label, value in pairs))


# ---- demo ------------------------------------------------------------------------------------------------------
def demo(args: argparse.Namespace) -> int:
    import resource
    import tempfile
    from collections import Counter

    import numpy as np
    import torch

    from . import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from .checkpoint.atomic import list_files
    from .checkpoint.files import find_checkpoint
    from .checkpoint.reader import read_safetensors_header

    torch.manual_seed(0)
    c = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
    model = LlamaForCausalLM.from_config(c, dtype=torch.bfloat16).eval()
    print(f"pretrained demo: a tiny {type(model).__name__}, saved sharded, loaded back, compared\n")
    _fields([("model", f"vocab {c.vocab_size}, hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
                       f"{c.num_attention_heads} heads ({c.num_key_value_heads} kv)"),
             ("parameters", f"{model.num_parameters():,} in {str(model.dtype)[6:]}")])

    with contextlib.nullcontext(args.dir) if args.dir else tempfile.TemporaryDirectory(prefix="pretrained-") as folder:
        start = time.perf_counter()
        model.save_pretrained(folder, max_shard_size=DEMO_SHARD_SIZE)
        print(f"\nsaved to {folder} in {time.perf_counter() - start:.3f} s (max_shard_size {DEMO_SHARD_SIZE:,} B)")
        _table([(n, _size(os.path.getsize(os.path.join(folder, n)))) for n in list_files(folder)])
        weights = find_checkpoint(folder).files
        dtypes = Counter(str(i.dtype)[6:] for path in weights for i in read_safetensors_header(path)[0].values())
        start = time.perf_counter()
        loaded, loading_info = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", output_loading_info=True)
        load_time = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        flax_model = _load_flax_demo(folder)  # after the peak: importing jax is not the load's memory
        tf_model = _load_tf_demo(folder)  # likewise tensorflow

    ids = torch.tensor([DEMO_TOKENS])
    with torch.inference_mode():
        expected, logits = model(ids).logits, loaded(ids).logits
    start = time.perf_counter()
    generated = loaded.generate(ids, max_new_tokens=DEMO_NEW_TOKENS, do_sample=False)[0, ids.shape[1]:]
    generate_time = time.perf_counter() - start
    identical = torch.equal(expected, logits) and loaded.dtype == model.dtype
    flax_diff = tf_diff = None
    if flax_model is not None or tf_model is not None:  # PyTorch's float32 logits on the same weights
        with torch.inference_mode():
            reference = LlamaForCausalLM.from_config(c, dtype=torch.float32).eval()
            reference.load_state_dict({k: v.float() for k, v in loaded.state_dict().items()})
            reference_logits = reference(ids).logits.numpy()
    if flax_model is not None:  # the Flax class on the same files, computing in float32
        flax_logits = np.asarray(flax_model(ids.numpy()).logits, dtype=np.float32)
        flax_diff = float(np.abs(flax_logits - reference_logits).max())
    if tf_model is not None:  # the TF class on the same files, computing in float32
        tf_logits = np.asarray(tf_model(ids.numpy()).logits, dtype=np.float32)
        tf_diff = float(np.abs(tf_logits - reference_logits).max())
    print()
    _fields([
        ("shards", len(weights)),
        ("tensors", f"{sum(dtypes.values())} ({', '.join(f'{n} {d}' for d, n in sorted(dtypes.items()))})"),
        ("load time", f"{load_time:.3f} s (AutoModelForCausalLM, dtype='auto' -> {str(loaded.dtype)[6:]})"),
        ("peak memory", f"{peak:.1f} MiB (process max RSS)"),
        ("loading info", ", ".join(f"{len(loading_info[k])} {k.removesuffix('_keys')}"
                                   for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))),
        ("forward", f"input {list(ids.shape)} -> logits {list(logits.shape)} {str(logits.dtype)[6:]}"),
        ("next token", int(logits[0, -1].argmax())),
        ("checksum", f"{logits.float().sum().item():.6f} (sum of logits)"),
        ("generate", f"{generated.tolist()} (greedy, {generated.numel()} new tokens, "
                     f"{generated.numel() / generate_time:.1f} tokens/s)"),
        ("flax", "not installed (pip install 'pretrained[flax]' to compare the Flax class)" if flax_model is None
         else f"{type(flax_model).__name__}, max |logits - PyTorch| {flax_diff:.3g} (float32)"),
        ("tensorflow", "not installed (pip install 'pretrained[tf]' to compare the TF class)" if tf_model is None
         else f"{type(tf_model).__name__}, max |logits - PyTorch| {tf_diff:.3g} (float32)"),
    ])
    flax_ok = flax_diff is None or flax_diff < FLAX_DEMO_TOLERANCE
    tf_ok = tf_diff is None or tf_diff < TF_DEMO_TOLERANCE
    if identical and flax_ok and tf_ok:
        print("\nround trip: identical")
        return 0
    if not flax_ok:
        print(f"\nflax: DIFFERENT from PyTorch (max |diff| {flax_diff:.3g} > {FLAX_DEMO_TOLERANCE})")
        return 1
    if not tf_ok:
        print(f"\ntensorflow: DIFFERENT from PyTorch (max |diff| {tf_diff:.3g} > {TF_DEMO_TOLERANCE})")
        return 1
    diff = (expected.float() - logits.float()).abs().max().item()
    print(f"\nround trip: DIFFERENT (max |diff| {diff:.3g}, dtypes {model.dtype} / {loaded.dtype})")
    return 1


def _load_flax_demo(folder: str):
    """The demo checkpoint through the Flax class, or None when jax/flax is not installed."""
    try:
        import flax  # noqa: F401
        import jax  # noqa: F401
    except ImportError:
        return None
    from .flax.auto import FlaxAutoModelForCausalLM

    return FlaxAutoModelForCausalLM.from_pretrained(folder)


def _load_tf_demo(folder: str):
    """The demo checkpoint through the TF (Keras) class in float32, or None when tensorflow is not installed."""
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        return None
    from .tf.auto import TFAutoModelForCausalLM

    return TFAutoModelForCausalLM.from_pretrained(folder)


# ---- inspect ---------------------------------------------------------------------------------------------------
def inspect_checkpoint(path: str) -> dict[str, Any]:
    """What a checkpoint holds, from its safetensors headers, index and config.json; no tensor data is read."""
    from .checkpoint.files import find_checkpoint
    from .checkpoint.reader import read_safetensors_header
    from .configuration import CONFIG_NAME, read_config_file
    from .hub.resolve import resolve_file

    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"'{path}' does not exist. Give a checkpoint folder or a .safetensors file.")
    files = find_checkpoint(path)
    if files.format != "safetensors":
        raise CheckpointError(f"'{files.files[0]}' is not a safetensors file; inspect reads safetensors headers only. "
                              "Convert a pickle checkpoint with save_pretrained(..., safe_serialization=True).")
    infos: dict[str, Any] = {}
    shards = []
    for file in files.files:
        tensors, _ = read_safetensors_header(file)
        for name in infos.keys() & tensors.keys():
            raise CorruptCheckpointError(f"Tensor '{name}' is in both '{infos[name].path}' and '{file}'.")
        infos.update(tensors)
        shards.append({"file": os.path.basename(file), "bytes": os.path.getsize(file), "tensors": len(tensors)})

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config_path = resolve_file(folder, CONFIG_NAME, required=False)
    config = read_config_file(config_path) if config_path else {}
    if "torch_dtype" in config:  # the v4 name
        config.setdefault("dtype", config["torch_dtype"])
    dtypes: dict[str, dict[str, int]] = {}
    for info in infos.values():
        entry = dtypes.setdefault(str(info.dtype)[6:], {"tensors": 0, "bytes": 0})  # "torch.bfloat16"[6:]
        entry["tensors"], entry["bytes"] = entry["tensors"] + 1, entry["bytes"] + info.nbytes
    report: dict[str, Any] = {
        "path": os.path.abspath(path), "format": "safetensors",
        "config": os.path.basename(config_path) if config_path else None,
        "model_type": config.get("model_type"), "architectures": config.get("architectures"),
        "settings": {k: config[k] for k in SETTINGS if k in config},
        "parameters": sum(math.prod(info.shape) for info in infos.values()),
        "tensors": len(infos), "tensor_bytes": sum(info.nbytes for info in infos.values()),
        "dtypes": dict(sorted(dtypes.items())), "shards": shards,
        "index": _check_index(files, infos) if files.index is not None else None,
    }
    report["model_class"], report["tied_weights"], report["tied_weights_note"] = _ties(config, infos)
    return report


def _check_index(files: Any, infos: dict[str, Any]) -> dict[str, Any]:
    total = (files.index.get("metadata") or {}).get("total_size")
    actual = sum(info.nbytes for info in infos.values())
    problems = [f"'{n}' is in the index but in no shard" for n in sorted(files.weight_map.keys() - infos.keys())]
    problems += [f"'{n}' is in a shard but not in the index" for n in sorted(infos.keys() - files.weight_map.keys())]
    return {"file": os.path.basename(files.index_path), "total_size": total, "header_bytes": actual,
            "total_size_matches": total == actual, "problems": problems}


def _ties(config: dict[str, Any], infos: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], str]:
    """The model class the config names, its tied weights (target <- source) and whether each is stored."""
    from . import registry

    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    if not model_type:
        return None, [], "no model_type in the config: tied weights unknown"
    try:
        family, config_cls = registry.family(model_type), registry.config_class(model_type)
    except UnknownModelTypeError:
        return None, [], f"model_type '{model_type}' is not registered: tied weights unknown"
    task = next((t for t, ref in family.models.items()
                 if (ref.__name__ if isinstance(ref, type) else ref.rpartition(":")[2]) in architectures), None)
    if task is None:
        return None, [], f"no registered '{model_type}' class among architectures {architectures}: tied weights unknown"
    model_cls = registry.model_class(config_cls, task)  # the class only: nothing is instantiated
    tied = bool(config_cls.from_dict(config).tie_word_embeddings)
    rows = []
    for target, source in model_cls.facts.tied_weights.items():
        stored, has_source = target in infos, source in infos
        if tied:
            status = "stored too (a redundant copy)" if stored else \
                f"not stored: loaded from {source}" + ("" if has_source else ", which is not here either")
        else:
            status = "stored (not tied)" if stored else "MISSING: not stored, and tie_word_embeddings is false"
        rows.append({"target": target, "source": source, "tied": tied, "target_stored": stored,
                     "source_stored": has_source, "status": status})
    return model_cls.__name__, rows, f"tie_word_embeddings={str(tied).lower()}"


def _print_inspect(r: dict[str, Any]) -> None:
    index = r["index"]
    layout = f"{len(r['shards'])} shards + {index['file']}" if index else r["shards"][0]["file"]
    fields = [("checkpoint", r["path"]), ("format", f"{r['format']}, {layout}"),
              ("config", r["config"] or "none (no config.json)")]
    if r["config"]:
        fields += [("model_type", r["model_type"]), ("architectures", ", ".join(r["architectures"] or []) or "-"),
                   *r["settings"].items()]
    fields += [("parameters", f"{r['parameters']:,}"), ("tensors", f"{r['tensors']} ({_size(r['tensor_bytes'])})")]
    _fields(fields)
    print("\ndtypes")
    _table([(d, f"{e['tensors']} tensors", _size(e["bytes"])) for d, e in r["dtypes"].items()])
    print("\nfiles")
    _table([(s["file"], _size(s["bytes"]), f"{s['tensors']} tensors") for s in r["shards"]])
    if index:
        verdict = "matches" if index["total_size_matches"] else "DOES NOT match"
        print(f"\nindex: total_size {index['total_size']} {verdict} the headers ({index['header_bytes']} bytes)")
        print("".join(f"  {problem}\n" for problem in index["problems"]), end="")
    print(f"\ntied weights ({r['model_class'] + ', ' if r['model_class'] else ''}{r['tied_weights_note']})")
    _table([(f"{t['target']} <- {t['source']}", t["status"]) for t in r["tied_weights"]] or [("none",)])


def inspect(args: argparse.Namespace) -> int:
    report = inspect_checkpoint(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_inspect(report)
    return 0


# ---- plan ------------------------------------------------------------------------------------------------------
def plan_checkpoint(path: str, max_memory: list[str] | None = None, dtype: str | None = None,
                    strategy: str = "auto") -> dict[str, Any]:
    """The device map the model in `path` would get: config.json -> skeleton on the meta device -> plan.
    No weight is read. `max_memory` holds "DEVICE=SIZE" strings (default: the memory free now)."""
    from .auto import AutoConfig
    from .dispatch.plan import available_memory, plan_device_map, sizes_from_model
    from .errors import DeviceMapError
    from .modeling.dtype import as_dtype, resolve_dtype

    config = AutoConfig.from_pretrained(path)
    model_cls = _model_class(config)
    load_dtype = as_dtype(dtype, "--dtype") if dtype else resolve_dtype(None, config.dtype, None)
    budgets: dict[str, str] = {}
    for item in max_memory or []:
        device, sep, size = item.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise DeviceMapError(f"--max-memory {item!r}: write DEVICE=SIZE, e.g. 0=20GiB, cuda:1=20GiB or cpu=64GB.")
        budgets[device.strip()] = size.strip()
    sizes = sizes_from_model(model_cls._skeleton(config, load_dtype))
    plan = plan_device_map(sizes, budgets or available_memory(), model_cls.facts.no_split_modules, strategy=strategy)
    return {
        "path": os.path.abspath(path), "model_class": model_cls.__name__, "model_type": config.model_type,
        "dtype": str(load_dtype).removeprefix("torch."),
        "dtype_source": "--dtype" if dtype else "config" if config.dtype is not None else "default",
        "total_bytes": sizes.total[""], "strategy": strategy,
        "no_split_modules": list(model_cls.facts.no_split_modules),
        "max_memory": {str(d): b for d, b in plan.budget.items()},
        "device_map": plan.device_map,
        "used": {str(d): b for d, b in plan.used.items()},
        "reserved": {str(d): b for d, b in plan.reserved.items()},
    }


def _model_class(config: Any) -> type:
    """The registered class `config.architectures` names, else the family's base model."""
    from . import registry

    family = registry.family(config.model_type)
    names = {task: ref.__name__ if isinstance(ref, type) else ref.rpartition(":")[2]
             for task, ref in family.models.items()}
    task = next((t for t, name in names.items() if name in (config.architectures or [])),
                "AutoModel" if "AutoModel" in names else next(iter(names)))
    return registry.model_class(type(config), task)


def _collapse(device_map: dict[str, Any]) -> list[tuple[str, Any]]:
    """Map entries with runs of numbered siblings on one device folded: model.layers.0-12 -> 0."""
    runs: list[list[Any]] = []  # [prefix, first, last, device] for numbered names, [name, None, None, device] else
    for name, device in device_map.items():
        stem, _, index = name.rpartition(".")
        last = runs[-1] if runs else None
        if index.isdigit() and last and last[0] == stem and last[2] == int(index) - 1 and last[3] == device:
            last[2] = int(index)
        elif index.isdigit():
            runs.append([stem, int(index), int(index), device])
        else:
            runs.append([name, None, None, device])
    return [((f"{p}." if p else "") + (f"{a}-{b}" if b != a else f"{a}") if a is not None else (p or '""'), d)
            for p, a, b, d in runs]


def _print_plan(r: dict[str, Any]) -> None:
    budget = ", ".join(f"{d}: {_size(b) if b is not None else 'no limit'}" for d, b in r["max_memory"].items())
    _fields([("model", f"{r['model_class']} ({r['model_type']}), {r['dtype']} ({r['dtype_source']}), "
                       f"{_size(r['total_bytes'])}"),
             ("strategy", r["strategy"]), ("no-split", ", ".join(r["no_split_modules"]) or "-"), ("budget", budget)])
    rows = _collapse(r["device_map"])
    width = max(len(name) for name, _ in rows)
    print("\ndevice map")
    print("".join(f"  {name.ljust(width)} -> {device}\n" for name, device in rows), end="")
    print("\nbytes per device")
    _table([(d, _size(b), f"of {_size(r['max_memory'][d])}" if r["max_memory"][d] is not None else "")
            for d, b in r["used"].items()])
    for device, nbytes in r["reserved"].items():
        print(f"  {device} also keeps {_size(nbytes)} free: offloaded layers are brought there to run")


def plan(args: argparse.Namespace) -> int:
    report = plan_checkpoint(args.path, args.max_memory, args.dtype, args.strategy)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_plan(report)
    return 0


# ---- generate ---------------------------------------------------------------------------------------------------
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    tokenizer_file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        raise CheckpointNotFoundError(f"No tokenizer.json in '{path}': the generate command needs one.")
    return Tokenizer.from_file(tokenizer_file)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings the command line asks for."""
    settings: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    if args.do_sample:
        settings["do_sample"] = True
    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "num_beams"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return settings


def generate(args: argparse.Namespace) -> int:
    """Load PATH and its tokenizer.json, continue the prompt, print the text as it streams, then tokens/s."""
    if args.framework == "flax":
        return _generate_flax(args)
    if args.framework == "tf":
        return _generate_tf(args)
    import torch

    from .auto import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from .generation.streamers import TextStreamer

    tokenizer = _tokenizer(args.path)
    config = AutoConfig.from_pretrained(args.path)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    load: dict[str, Any] = {"dtype": args.dtype} if args.dtype else {}
    if args.device_map:
        load["device_map"] = args.device_map
    model = auto.from_pretrained(args.path, **load)
    ids = torch.tensor([tokenizer.encode(args.prompt).ids])
    settings = _settings(args)
    if args.compile:  # a fixed-length cache, so that every one-token step has the same shapes
        from .generation.config import CompileConfig

        settings.update(cache_implementation="static", compile_config=CompileConfig())
    if args.seed is not None:
        torch.manual_seed(args.seed)
    beams = settings.get("num_beams", 1) > 1
    # the prompt is streamed too (decoder-only), so that the continuation's spacing is decoded in context
    streamer = None if beams else TextStreamer(tokenizer, skip_special_tokens=True)
    start = time.perf_counter()
    out = model.generate(ids, streamer=streamer, **settings)
    seconds = time.perf_counter() - start
    new = out.shape[1] - (1 if model.config.is_encoder_decoder else ids.shape[1])
    if beams:
        print(tokenizer.decode(out[0].tolist(), skip_special_tokens=True))
    compiling = ", compiling included" if args.compile else ""
    print(f"[{new} tokens in {seconds:.2f} s, {new / max(seconds, 1e-9):.1f} tokens/s{compiling}]", file=sys.stderr)
    return 0


def _generate_flax(args: argparse.Namespace) -> int:
    """`generate --framework flax`: the Flax class on the same checkpoint, decoding in one compiled loop (so the
    text is printed at the end, not streamed); torch is not imported."""
    import jax
    import numpy as np

    from .auto import AutoConfig
    from .errors import DeviceMapError, DtypeError
    from .flax.auto import FlaxAutoModelForCausalLM, FlaxAutoModelForSeq2SeqLM
    from .generation.config import GenerationConfig

    if args.device_map:
        raise DeviceMapError(f"--device-map {args.device_map} is for --framework pytorch; the Flax classes place "
                             "their parameters with from_pretrained(..., mesh=jax.sharding.Mesh(...)).")
    tokenizer = _tokenizer(args.path)
    config = AutoConfig.from_pretrained(args.path)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    auto = FlaxAutoModelForSeq2SeqLM if encoder_decoder else FlaxAutoModelForCausalLM
    load: dict[str, Any] = {}
    if args.dtype and args.dtype != "auto":  # the computation dtype (the parameters keep the checkpoint's)
        import jax.numpy as jnp

        if args.dtype not in ("float32", "bfloat16", "float16"):
            raise DtypeError(f"--dtype {args.dtype}: give float32, bfloat16, float16 or auto.")
        load["dtype"] = getattr(jnp, args.dtype)
    model = auto.from_pretrained(args.path, **load)
    ids = np.array([tokenizer.encode(args.prompt).ids], dtype=np.int32)
    key = jax.random.PRNGKey(args.seed if args.seed is not None else 0)
    start = time.perf_counter()
    out = model.generate(ids, prng_key=key, **_settings(args))
    row = np.asarray(out.sequences[0]).tolist()  # waits for the result
    seconds = time.perf_counter() - start
    first = 1 if encoder_decoder else ids.shape[1]
    eos = set((getattr(model, "generation_config", None) or GenerationConfig.from_model_config(config)).eos_token_ids)
    new = next((k + 1 for k, t in enumerate(row[first:]) if t in eos), len(row) - first)  # up to EOS, if any
    shown = row[first:first + new] if encoder_decoder else row[:first + new]
    print(tokenizer.decode(shown, skip_special_tokens=True))
    print(f"[{new} tokens in {seconds:.2f} s, {new / max(seconds, 1e-9):.1f} tokens/s, compiling included]",
          file=sys.stderr)
    return 0


def _generate_tf(args: argparse.Namespace) -> int:
    """`generate --framework tf`: the TF (Keras) class on the same checkpoint, decoding in one XLA-compiled loop (so
    the text is printed at the end, not streamed); neither torch nor jax is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices, before it is imported
    import numpy as np

    from .auto import AutoConfig
    from .errors import DeviceMapError, DtypeError
    from .generation.config import GenerationConfig
    from .tf.auto import TFAutoModelForCausalLM, TFAutoModelForSeq2SeqLM

    if args.device_map:
        raise DeviceMapError(f"--device-map {args.device_map} is for --framework pytorch; the TF classes run on "
                             "TensorFlow's default device (pick one with `with tf.device(...)` in Python).")
    tokenizer = _tokenizer(args.path)
    config = AutoConfig.from_pretrained(args.path)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    auto = TFAutoModelForSeq2SeqLM if encoder_decoder else TFAutoModelForCausalLM
    load: dict[str, Any] = {}
    if args.dtype:  # the variables' and computation dtype (default float32, as 4.x's TF classes)
        if args.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise DtypeError(f"--dtype {args.dtype}: give float32, bfloat16, float16 or auto.")
        load["dtype"] = args.dtype
    model = auto.from_pretrained(args.path, **load)
    ids = np.array([tokenizer.encode(args.prompt).ids], dtype=np.int32)
    start = time.perf_counter()
    out = model.generate(ids, seed=args.seed, **_settings(args))
    row = out.numpy()[0].tolist()
    seconds = time.perf_counter() - start
    first = 1 if encoder_decoder else ids.shape[1]
    eos = set((getattr(model, "generation_config", None) or GenerationConfig.from_model_config(config)).eos_token_ids)
    new = next((k + 1 for k, t in enumerate(row[first:]) if t in eos), len(row) - first)  # up to EOS, if any
    shown = row[first:first + new] if encoder_decoder else row[:first + new]
    print(tokenizer.decode(shown, skip_special_tokens=True))
    print(f"[{new} tokens in {seconds:.2f} s, {new / max(seconds, 1e-9):.1f} tokens/s, compiling included]",
          file=sys.stderr)
    return 0


# ---- convert -----------------------------------------------------------------------------------------------------
def convert(args: argparse.Namespace) -> int:
    """`pretrained convert SRC DST`: see checkpoint/convert.py."""
    from .checkpoint.convert import convert_checkpoint
    from .modeling.dtype import as_dtype

    dtype = as_dtype(args.dtype) if args.dtype else None
    report = convert_checkpoint(args.src, args.dst, max_shard_size=args.max_shard_size, dtype=dtype,
                                framework=getattr(args, "from"))
    skipped = f"; left out {len(report.skipped)} optimizer/step tensor(s)" if report.skipped else ""
    print(f"converted {report.tensors} tensors ({_size(report.total_bytes)}) from {report.source_format} into "
          f"{args.dst}: {', '.join(report.files)}{skipped}")
    return 0


def quantize(args: argparse.Namespace) -> int:
    """`pretrained quantize SRC DST`: see quantization/stream.py."""
    from .quantization.stream import quantize_checkpoint

    report = quantize_checkpoint(args.src, args.dst, bits=args.bits, group_size=args.group_size,
                                 modules_to_not_convert=args.skip, lm_head_bits=args.lm_head_bits,
                                 symmetric=not args.asymmetric, max_shard_size=args.max_shard_size)
    print(f"quantized {report.quantized} layers to int{args.bits}: {_size(report.source_bytes)} -> "
          f"{_size(report.written_bytes)} in {args.dst}: {', '.join(report.files)}")
    return 0


# ---- entry point -----------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrained", description="Load, save and inspect pretrained checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("demo", help="build a tiny Llama, save it sharded, load it back, generate 8 tokens (no network)")
    p.add_argument("--dir", help="save the checkpoint here and keep it (default: a temporary folder)")
    p.set_defaults(run=demo)
    p = commands.add_parser("inspect", help="summarise a checkpoint from its headers, index and config")
    p.add_argument("path", help="a checkpoint folder or a .safetensors file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=inspect)
    p = commands.add_parser("plan", help="plan a device map from a checkpoint's config (no weights read)")
    p.add_argument("path", help="a checkpoint folder (its config.json is read)")
    p.add_argument("--max-memory", action="append", metavar="DEVICE=SIZE",
                   help="a budget, repeatable: 0=20GiB (GPU 0; no GPU needed to plan), cpu=64GB, disk=0 "
                        "(default: the memory free now)")
    p.add_argument("--dtype", help="the dtype the weights would load in (default: the config's, else float32)")
    p.add_argument("--strategy", default="auto", choices=["auto", "balanced", "balanced_low_0", "sequential"])
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=plan)
    p = commands.add_parser("generate", help="continue a prompt with a checkpoint and its tokenizer.json")
    p.add_argument("path", help="a checkpoint folder holding tokenizer.json")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--num-beams", type=int)
    p.add_argument("--seed", type=int, help="seed sampling")
    p.add_argument("--dtype", help="float32, bfloat16, float16 or auto (default: the checkpoint's)")
    p.add_argument("--device-map", help="cpu, cuda:0, auto, balanced, ...")
    p.add_argument("--framework", choices=["pytorch", "flax", "tf"], default="pytorch",
                   help="the PyTorch class (default), or the JAX/Flax or TensorFlow class on the same checkpoint "
                        "(their decoding loop is compiled on the first call; the text is printed at the end)")
    p.add_argument("--compile", action="store_true",
                   help="decode over a fixed-length (static) cache with a torch.compile'd one-token step; the "
                        "first call compiles (tens of seconds), so it pays off on long generations")
    p.set_defaults(run=generate)
    p = commands.add_parser("convert", help="convert any checkpoint we read (TF h5 / TF 1 / Flax msgpack / .bin) to "
                                            "PyTorch-layout safetensors")
    p.add_argument("src", help="a folder, Hub repo, weights file, or TF 1 checkpoint (.index or its prefix)")
    p.add_argument("dst", help="the folder to write (created; replaced atomically)")
    p.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 5GB, 500MB (default 5GB)")
    p.add_argument("--dtype", help="convert floating tensors to float32, bfloat16 or float16 (default: as stored)")
    p.add_argument("--from", choices=["pt", "tf", "flax"],
                   help="which weights to read when SRC holds several (default: PyTorch, then TF, then Flax)")
    p.set_defaults(run=convert)
    p = commands.add_parser("quantize", help="a float checkpoint -> int4/int8 weights (compressed-tensors "
                                             "pack-quantized), streamed")
    p.add_argument("src", help="a float checkpoint folder or Hub repo")
    p.add_argument("dst", help="the folder to write (created; replaced atomically)")
    p.add_argument("--bits", type=int, choices=[4, 8], default=4, help="4 (group-wise, default) or 8 (per channel)")
    p.add_argument("--group-size", type=int, default=128, help="int4 group size: 32, 64, 128 (default) or 256")
    p.add_argument("--lm-head-bits", type=int, choices=[4, 8], help="also quantize the output head (e.g. 8)")
    p.add_argument("--asymmetric", action="store_true",
                   help="int4 with a zero point per group and a least-squares range (more accurate)")
    p.add_argument("--skip", action="append", metavar="MODULE",
                   help="a module name (or re:pattern) to keep in float, repeatable (default: lm_head)")
    p.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 5GB, 500MB (default 5GB)")
    p.set_defaults(run=quantize)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return its exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or bad arguments (2); argparse has printed why
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (PretrainedError, OSError) as e:
        print(f"pretrained {args.command}: error: {str(e).replace(chr(10), ' ')}", file=sys.stderr)
        return 2
