"""`pretrained convert SRC DST`: any checkpoint we read -> PyTorch-layout safetensors (+ config), streamed, atomic.

SRC is a folder, a Hub repo or a file: safetensors or safe `.bin` (PyTorch), `tf_model.h5` (one file or shards +
index), `flax_model.msgpack` (one or shards + index), or a TensorFlow 1 checkpoint (`model.ckpt.index`, its prefix, or
a folder holding one, e.g. Google's BERT releases with their `bert_config.json`). Tensors keep their PyTorch names as
the mapping of `checkpoint/legacy.py` gives them (no model is built): the shards are planned from the headers, then
each shard's tensors are read (one at a time, in the PyTorch layout), written and dropped, so memory holds at most one
shard. Everything lands in DST in one atomic commit (`checkpoint/atomic.py`): a failure leaves DST as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import CheckpointNotFoundError, ConfigError
from ..jsonfile import read_json_object
from .atomic import AtomicSave, list_files
from .files import SAFE_INDEX, SAFE_WEIGHTS, find_checkpoint
from .legacy import LegacyReader, find_legacy_files
from .reader import CheckpointReader
from .shards import DEFAULT_MAX_SHARD_SIZE, Entry, build_index, is_shard_of, plan_shards, shard_filenames
from .writer import write_safetensors

PROGRESS_BYTES = 10**8  # a bar only for inputs of this size and more


@dataclass
class ConvertReport:
    source_format: str
    files: list[str]  # the weight files written
    tensors: int
    total_bytes: int
    skipped: list[str]  # stored names left out (TF 1 optimizer slots, global_step)


def _config(source: str, hub: dict) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The source's config as a dict (config.json, else Google's bert_config.json as a BERT config) and the other
    text files to carry over (generation_config.json)."""
    from ..hub.resolve import resolve_file

    folder = source
    if os.path.isfile(source) or os.path.isfile(source + ".index"):
        folder = os.path.dirname(source) or "."
    extra = {}
    config = None
    found = resolve_file(folder, "config.json", required=False, **hub)
    if found is not None:
        config = read_json_object(found, ConfigError, "Config file", "Fix or re-download it.")
    elif os.path.isdir(folder) and os.path.isfile(os.path.join(folder, "bert_config.json")):
        config = {"model_type": "bert", "architectures": ["BertForPreTraining"],
                  **read_json_object(os.path.join(folder, "bert_config.json"), ConfigError, "Config file",
                                     "Fix or re-download it.")}
    generation = resolve_file(folder, "generation_config.json", required=False, **hub)
    if generation is not None:
        with open(generation, encoding="utf-8") as f:
            extra["generation_config.json"] = f.read()
    if config is not None:  # the PyTorch class names (4.x's TF/Flax saves may name their own classes)
        archs = config.get("architectures") or []
        config["architectures"] = [a[2:] if a.startswith("TF") else a[4:] if a.startswith("Flax") else a
                                   for a in archs if isinstance(a, str)] or None
        if config["architectures"] is None:
            del config["architectures"]
    return config, extra


def open_any(source: str | os.PathLike, model_type: str | None, framework: str | None = None,
             hub: dict | None = None):
    """A reader over any checkpoint format we read: PyTorch first (safetensors, then safe .bin), then TensorFlow
    (h5, TF 1), then Flax (msgpack); `framework` ("pt", "tf", "flax") to insist on one."""
    source, hub = os.fspath(source), dict(hub or {})
    if framework in (None, "pt"):
        try:
            files = find_checkpoint(source, **hub)
            return CheckpointReader(files.files, files.format, files.weight_map or None, files.index_path)
        except CheckpointNotFoundError as e:
            if type(e) is not CheckpointNotFoundError or framework == "pt":
                raise
    for kind in ("tf", "flax"):
        if framework in (None, kind):
            files = find_legacy_files(source, kind, hub)
            if files is not None:
                return LegacyReader(files, model_type)
    raise CheckpointNotFoundError(
        f"No checkpoint found in '{source}': looked for model.safetensors, pytorch_model.bin (and their indexes), "
        "tf_model.h5, a TensorFlow 1 checkpoint (*.ckpt.index) and flax_model.msgpack (and their indexes).")


def convert_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, *,
                       max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, dtype: torch.dtype | None = None,
                       framework: str | None = None, progress: bool | None = None, **hub: Any) -> ConvertReport:
    """Write the checkpoint at `source` into `destination` as PyTorch-layout safetensors (`model.safetensors`, or
    shards of at most `max_shard_size` + `model.safetensors.index.json`) with its config, in one atomic commit.
    `dtype` converts floating tensors (default: as stored). `progress`: a tqdm bar (default: inputs >= 100 MB)."""
    source, destination = os.fspath(source), os.fspath(destination)
    if os.path.isfile(destination):
        raise NotADirectoryError(f"The destination '{destination}' is a file; give a folder.")
    config, extra = _config(source, hub)
    reader = open_any(source, (config or {}).get("model_type"), framework, hub)
    infos = reader.infos

    def out_dtype(name: str) -> torch.dtype:
        stored = infos[name].dtype
        return dtype if dtype is not None and stored.is_floating_point else stored

    sizes = {n: int(torch.Size(i.shape).numel()) * out_dtype(n).itemsize for n, i in infos.items()}
    plan = plan_shards([Entry(n, sizes[n], n) for n in infos], max_shard_size)
    filenames = shard_filenames(len(plan), SAFE_WEIGHTS)
    total = sum(sizes.values())
    show = total >= PROGRESS_BYTES if progress is None else progress
    with AtomicSave(destination) as save:
        bar = tqdm(total=total, desc=f"Converting {reader.format} to safetensors", unit="B", unit_scale=True,
                   disable=not show)
        for names, filename in zip(plan, filenames):
            wanted = set(names)
            shard = {}
            for name, tensor in reader.iter_tensors(wanted, {n: out_dtype(n) for n in wanted}):
                tensor = tensor if tensor.dtype == out_dtype(name) else tensor.to(out_dtype(name))
                shard[name] = tensor.contiguous()
                bar.update(sizes[name])
            write_safetensors(save.path(filename), {n: shard[n] for n in names}, {"format": "pt"})
            save.finished(filename)
            del shard
        bar.close()
        if len(plan) > 1:
            total_params = sum(int(torch.Size(i.shape).numel()) for i in infos.values())
            save.write_text(SAFE_INDEX, json.dumps(build_index(plan, filenames, total, total_params), indent=2) + "\n")
        if config is not None:
            if dtype is not None:
                config["dtype"] = str(dtype).removeprefix("torch.")
                config.pop("torch_dtype", None)
            save.write_text("config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, text in extra.items():
            save.write_text(name, text)
        stale = [n for n in list_files(destination)
                 if (is_shard_of(n, SAFE_WEIGHTS) or n == SAFE_INDEX) and n not in filenames]
        save.commit(remove=stale)
    if hasattr(reader, "close"):
        reader.close()
    return ConvertReport(reader.format, filenames, len(infos), total, list(getattr(reader, "skipped", [])))
