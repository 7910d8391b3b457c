"""`pretrained quantize SRC DST --bits 4|8 [--group-size 128]`: a float checkpoint -> a compressed-tensors
`pack-quantized` checkpoint, streamed (one source tensor in memory at a time, its file pages given back after use),
written in one atomic commit. No model is run: the skeleton is built on the meta device only to know which tensors
are Linear weights (and to check every layer's shape against the kernels before a byte is written)."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..checkpoint.atomic import AtomicSave, list_files
from ..checkpoint.files import SAFE_INDEX, SAFE_WEIGHTS, find_checkpoint
from ..checkpoint.reader import CheckpointReader
from ..checkpoint.shards import DEFAULT_MAX_SHARD_SIZE, Entry, build_index, is_shard_of, plan_shards, shard_filenames
from ..checkpoint.writer import write_safetensors
from ..errors import QuantizationError
from .compressed import compressed_config, pack_int32
from .config import TorchAoConfig
from .linear import quantize_weight, quantize_weight_asymmetric
from .loading import release_pages
from .torchao import TorchAoHandler

COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model")


@dataclass
class QuantizeReport:
    quantized: int  # layers
    tensors: int  # written
    source_bytes: int
    written_bytes: int
    files: list[str]


def _model_class(config: Any) -> type:
    from .. import registry

    wanted = set(getattr(config, "architectures", None) or [])
    found = []
    for task in registry.TASKS:
        try:
            found.append(registry.model_class(type(config), task))
        except Exception:  # noqa: BLE001 - a family without that task
            continue
    for cls in found:
        if cls.__name__ in wanted:
            return cls
    if not found:
        raise QuantizationError(f"No model class is registered for model_type '{config.model_type}'.")
    return found[0]


class _Outputs:
    """The destination's tensors: output name -> (source name, how to make it from the source tensor or None to copy
    it, bytes). A quantized layer's pieces are made together, once, from its source weight."""

    def __init__(self, layers: dict[str, Any]) -> None:
        self.layers = layers
        self.entries: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor] | None, int]] = {}
        self.made: dict[str, dict[str, torch.Tensor]] = {}  # one layer's pieces, until each is taken

    def copy(self, name: str, src: str, nbytes: int) -> None:
        self.entries[name] = (src, None, nbytes)

    def add_layer(self, layer: str, src: str) -> None:
        module = self.layers[layer]
        n, k = module.out_features, module.in_features
        groups = 1 if module.bits == 8 else k // module.group_size
        sizes = {"weight_packed": n * math.ceil(k * module.bits / 32) * 4, "weight_scale": n * groups * 2,
                 "weight_shape": 16}
        if not module.symmetric:
            sizes["weight_zero_point"] = math.ceil(n / 8) * groups * 4
        for leaf, nbytes in sizes.items():
            self.entries[f"{layer}.{leaf}"] = (src, self._maker(layer, leaf), nbytes)

    def _maker(self, layer: str, leaf: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def make(weight: torch.Tensor) -> torch.Tensor:
            if layer not in self.made:
                self.made[layer] = _compress(self.layers[layer], weight)
            return self.made[layer].pop(leaf)
        return make


def _compress(module: Any, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A float weight -> its compressed-tensors pack-quantized pieces for `module`'s scheme."""
    w = weight.t() if module.transposed else weight
    if module.symmetric:
        q, scale = quantize_weight(w, module.bits, module.group_size, module.compute_dtype)
    else:
        q, scale, zero = quantize_weight_asymmetric(w, module.group_size, module.compute_dtype)
    out = {"weight_packed": pack_int32(q, module.bits), "weight_scale": scale,
           "weight_shape": torch.tensor([module.out_features, module.in_features])}
    if not module.symmetric:  # packed along the output dimension
        out["weight_zero_point"] = pack_int32(zero.t().contiguous(), 4).t().contiguous()
    return out


def _plan_outputs(source: str, model: Any, reader: CheckpointReader, handler: TorchAoHandler) -> _Outputs:
    from ..modeling.loading import key_mapper

    outputs = _Outputs(dict(handler.pending))
    to_model = key_mapper(model, list(reader.infos), set(model.state_dict()))
    table = model.get_input_embeddings() if handler.from_embeddings else None
    embedding = next((f"{n}.weight" for n, m in model.named_modules() if m is table), None)
    for src, info in reader.infos.items():
        name = to_model(src)
        layer, _, leaf = name.rpartition(".")
        if layer in outputs.layers and leaf == "weight":
            outputs.add_layer(layer, src)
        else:
            outputs.copy(name, src, info.nbytes)
        if handler.from_embeddings and name == embedding:
            outputs.add_layer(handler.from_embeddings, src)  # an untied head quantized from the embedding table
    missing = [n for n in outputs.layers if f"{n}.weight_packed" not in outputs.entries]
    if missing:
        raise QuantizationError(f"The checkpoint '{source}' lacks the weights of {', '.join(missing[:5])}; nothing "
                                "was written.")
    return outputs


def _write_shards(save: AtomicSave, reader: CheckpointReader, outputs: _Outputs, plan: list[list[str]],
                  filenames: list[str]) -> int:
    """Each shard's tensors made from their sources, one source tensor in memory at a time; returns bytes written."""
    entries = outputs.entries
    written = 0
    for names, filename in zip(plan, filenames):
        shard: dict[str, torch.Tensor] = {}
        for src, tensor in reader.iter_tensors({entries[n][0] for n in names}):
            mine = [n for n in names if entries[n][0] == src]
            for n in mine:
                make = entries[n][1]
                shard[n] = make(tensor) if make else tensor
            if any(entries[n][1] for n in mine):
                release_pages(tensor)
        ordered = {n: shard[n].contiguous() for n in names}
        written += sum(t.nbytes for t in ordered.values())
        write_safetensors(save.path(filename), ordered, {"format": "pt"})
        save.finished(filename)
        del shard, ordered
    return written


def quantize_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, *, bits: int = 4,
                        group_size: int = 128, modules_to_not_convert: list[str] | None = None,
                        lm_head_bits: int | None = None, symmetric: bool = True,
                        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> QuantizeReport:
    from ..auto import AutoConfig

    source, destination = os.fspath(source), os.fspath(destination)
    if os.path.isfile(destination):
        raise NotADirectoryError(f"The destination '{destination}' is a file; give a folder.")
    config = AutoConfig.from_pretrained(source)
    if getattr(config, "quantization_config", None):
        raise QuantizationError(f"'{source}' is already quantized (its config.json carries a quantization_config); "
                                "quantize its float original.")
    quant = TorchAoConfig("int4_weight_only" if bits == 4 else "int8_weight_only" if bits == 8 else f"int{bits}",
                          group_size=group_size if bits == 4 else None,
                          modules_to_not_convert=modules_to_not_convert, lm_head_bits=lm_head_bits,
                          symmetric=symmetric)
    files = find_checkpoint(source)
    reader = CheckpointReader(files.files, files.format, files.weight_map or None, files.index_path)
    dtype = reader.first_floating_dtype() or torch.float32
    model = _model_class(config)._skeleton(config, dtype)
    handler = TorchAoHandler(quant)
    handler.prepare(model)  # every layer's shape is checked here, before anything is written
    compressed = compressed_config(model)  # refuses layers with no compressed-tensors form
    outputs = _plan_outputs(source, model, reader, handler)

    entries = outputs.entries
    plan = plan_shards([Entry(n, size, entries[n][0]) for n, (_, _, size) in entries.items()], max_shard_size)
    filenames = shard_filenames(len(plan), SAFE_WEIGHTS)
    with AtomicSave(destination) as save:
        written = _write_shards(save, reader, outputs, plan, filenames)
        if len(plan) > 1:
            params = sum(math.prod(reader.infos[entries[n][0]].shape) for n in entries)
            save.write_text(SAFE_INDEX, json.dumps(build_index(plan, filenames, written, params), indent=2) + "\n")
        config_dict = json.loads(config.to_json_string())
        config_dict["quantization_config"] = compressed
        if handler.from_embeddings:
            config_dict["tie_word_embeddings"] = False
        save.write_text("config.json", json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
        if os.path.isdir(source):
            for name in COPIED:
                path = os.path.join(source, name)
                if os.path.isfile(path):
                    shutil.copyfile(path, save.path(name))
                    save.finished(name)
        stale = [n for n in list_files(destination)
                 if (is_shard_of(n, SAFE_WEIGHTS) or n == SAFE_INDEX) and n not in filenames]
        save.commit(remove=stale)
    return QuantizeReport(len(outputs.layers), len(entries), sum(i.nbytes for i in reader.infos.values()), written,
                          filenames)
