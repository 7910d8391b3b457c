"""Tensor-parallel loading and saving: from a meta skeleton to this rank's part of the model, and back to a whole
checkpoint.

`from_pretrained(..., tp_plan="auto")` calls, in order:
1. `prepare(model, ...)` on the meta skeleton: the world size from the torchrun environment; the plan resolved
   against the model's module names and checked (styles, patterns, head counts, divisibility, ties) — every rank
   fails alike here, before any rendezvous or read, so nothing hangs; then the process group is started (if none
   exists) and each planned module is given its style and local meta tensors. World size 1: None (an ordinary load).
2. `TensorParallel.reader(reader, model)`: the checkpoint reader seen through this rank's slices (`SlicedReader`).
3. `load_into` as for any load, onto `TensorParallel.device`.
4. `TensorParallel.finish(model)`: the ranks agree that every one of them loaded (a rank whose load raised says so
   through `agree(failed=True)`, and the others raise too instead of waiting in the first forward's collective);
   then `model.tp_size`, `model.tp_plan`.
Saving a split model (`save_pretrained`, every rank calls it) gathers each split tensor on rank 0, which writes an
ordinary checkpoint through the usual atomic writer; all ranks then wait for it at a barrier.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import TensorParallelError
from .config import DistributedConfig
from .group import Group, init_process_group, planned_world
from .plan import VOCAB_STYLES, check_heads, check_patterns, check_styles, family_plan, merge_plan, split_dim
from .reader import SlicedReader
from .styles import apply_style, base_class, sizes_after_split


@dataclass
class TensorParallel:
    """A model split over `group`: its plan (pattern -> style, as resolved), and each split tensor's cut (model
    tensor name -> (dim, start, stop) of the whole tensor)."""

    group: Group
    plan: dict[str, str]
    cuts: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    disable_mmap: bool = False
    saving: bool = False  # inside `save`: save_pretrained then writes as for any model

    @property
    def device(self) -> torch.device:
        return self.group.device

    def reader(self, reader: Any, model: nn.Module) -> SlicedReader:
        from ..modeling.loading import key_mapper

        targets = set(model.state_dict(keep_vars=True))
        to_model = key_mapper(model, list(reader.infos), targets)
        cuts, world = {}, self.group.world
        for ckpt_name, info in reader.infos.items():  # a tensor of another shape stays whole: load_into reports it
            cut = self.cuts.get(to_model(ckpt_name))
            if cut is not None and len(info.shape) > cut[0] and info.shape[cut[0]] == (cut[2] - cut[1]) * world:
                cuts[ckpt_name] = cut
        return SlicedReader(reader, cuts, mapped=not self.disable_mmap)

    def agree(self, failed: bool = False) -> None:
        """Every rank says whether its load failed (a collective): a rank whose own load went well raises when
        another's did not, rather than wait for it in the model's first collective."""
        flag = torch.tensor([1.0 if failed else 0.0], device=self.device)
        dist.all_reduce(flag, group=self.group.group)
        if not failed and flag.item():
            raise TensorParallelError(
                f"Rank {self.group.rank} loaded its part, but {int(flag.item())} other rank(s) failed to load "
                "theirs (their errors say why: a missing or damaged file on that machine?). Fix it and start all "
                "ranks again.")

    def finish(self, model: nn.Module) -> None:
        self.agree()
        model.tp_size = self.group.world
        model._tp = self

    def gather_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole state dict on rank 0 (None elsewhere); every rank must call it (collective, one split tensor
        at a time, in state-dict order). Tied tensors come back as one tensor under both names."""
        rank0 = self.group.rank == 0
        out: dict[str, torch.Tensor] = {}
        seen: dict[tuple, torch.Tensor] = {}
        for name, t in model.state_dict().items():
            key = (t.data_ptr(), tuple(t.shape), t.dtype) if t.numel() else None
            if key is not None and key in seen:
                if rank0:
                    out[name] = seen[key]
                continue
            cut = self.cuts.get(name)
            if cut is None:
                whole = t
            else:
                local = t.contiguous()
                parts = [torch.empty_like(local) for _ in range(self.group.world)] if rank0 else None
                dist.gather(local, parts, dst=0, group=self.group.group)
                whole = torch.cat(parts, dim=cut[0]).cpu() if rank0 else None
            if key is not None:  # on every rank: each skips the same tied copies, so the collectives pair up
                seen[key] = whole
            if rank0:
                out[name] = whole
        return out if rank0 else None

    def save(self, model: nn.Module, save_directory: Any, is_main_process: bool = True,
             state_dict: Mapping[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
        """Gather (unless a `state_dict` is given: rank 0 writes that one), rank 0 writes (when `is_main_process`
        there), every rank waits until it is written. An error on rank 0 is raised there after the barrier, so the
        others never wait forever."""
        state = self.gather_state_dict(model) if state_dict is None else state_dict
        self.saving = True
        try:
            if self.group.rank == 0:
                type(model).save_pretrained(model, save_directory, is_main_process=is_main_process, state_dict=state,
                                            **kwargs)
        finally:
            self.saving = False
            dist.barrier(group=self.group.group)


def _requested(tp_plan: Any, tp_size: Any, distributed_config: Any) -> tuple[Any, Any]:
    if distributed_config is None:
        return tp_plan, tp_size
    if isinstance(distributed_config, Mapping):
        distributed_config = DistributedConfig.from_dict(dict(distributed_config))
    if not isinstance(distributed_config, DistributedConfig):
        raise TypeError(f"distributed_config must be a DistributedConfig (or a dict of its fields), not "
                        f"{type(distributed_config).__name__}.")
    if tp_plan is not None and tp_plan != distributed_config.tp_plan or (
            tp_size is not None and tp_size != distributed_config.tp_size):
        raise TensorParallelError(
            "Give the tensor-parallel options once: tp_plan/tp_size, or distributed_config, not both "
            "with different values.")
    return distributed_config.tp_plan or "auto", distributed_config.tp_size


def prepare(model: nn.Module, tp_plan: Any = None, tp_size: Any = None, distributed_config: Any = None, *,
            device_map: Any = None, disable_mmap: bool = False) -> TensorParallel | None:
    """Split the meta skeleton `model` for this rank (see the module's docstring); None when nothing is split."""
    tp_plan, tp_size = _requested(tp_plan, tp_size, distributed_config)
    if tp_plan is None and tp_size is None:
        return None
    world = planned_world()
    if tp_size is not None and (not isinstance(tp_size, int) or tp_size < 1):
        raise TensorParallelError(f"tp_size must be a positive number of ranks, not {tp_size!r}.")
    if tp_size is not None and tp_size != world:
        raise TensorParallelError(
            f"tp_size={tp_size} but the world has {world} process(es): pretrained splits a model over "
            "every rank of the world; run with as many processes as tp_size (torchrun "
            "--nproc-per-node), or leave tp_size out.")
    if world == 1:
        return None  # a plain process: an ordinary load
    if device_map is not None:
        raise TensorParallelError(
            "tp_plan and device_map cannot be combined: a tensor-parallel load places each rank's part "
            "on its own device (the LOCAL_RANK GPU, or the CPU). Drop device_map.")
    family = family_plan(model.config, type(model), has_prefix=model.base_model is not model)
    plan, given = merge_plan(family, tp_plan)
    check_styles(plan)
    modules = dict(model.named_modules())
    styles = check_patterns(plan, list(modules), given)
    for name, style in styles.items():
        want = base_class(style)
        if want is not None and not isinstance(modules[name], want):
            raise TensorParallelError(
                f"Tensor-parallel plan: '{name}' is a {type(modules[name]).__name__}, and the style "
                f"'{style}' splits an nn.{want.__name__}. Change that plan entry.")
    if not any(s != "replicate" for s in styles.values()):
        if tp_plan in (None, "auto"):
            raise TensorParallelError(
                f"{type(model).__name__} declares no tensor-parallel plan (its config has no base_model_tp_plan): "
                "nothing would be split. Pass tp_plan={module pattern: style} (styles: colwise, rowwise, "
                "colwise_gather_output, embedding_rowwise), or load it without tp_plan.")
        return None  # an empty plan: every rank loads the whole model
    check_heads(model.config, world)
    styles = _check_sizes(modules, styles, world)
    _check_ties(model, styles, world)
    group = init_process_group()
    tp = TensorParallel(group, plan, disable_mmap=disable_mmap)
    for name, style in styles.items():
        module = modules[name]
        apply_style(module, style, group.rank, world, group.group)
        for leaf, param in list(module.named_parameters(recurse=False)):
            dim = split_dim(style, leaf, param.ndim)
            if dim is None:
                continue
            part = param.shape[dim] // world
            tp.cuts[f"{name}.{leaf}" if name else leaf] = (dim, group.rank * part, (group.rank + 1) * part)
            shape = list(param.shape)
            shape[dim] = part
            module._parameters[leaf] = nn.Parameter(torch.empty(shape, dtype=param.dtype, device="meta"),
                                                    requires_grad=param.requires_grad)
        sizes_after_split(module, style, world)
    for target, source in _ties(model).items():  # a tied target shares its source's cut
        if source in tp.cuts:
            tp.cuts[target] = tp.cuts[source]
    return tp


def _check_sizes(modules: dict[str, nn.Module], styles: dict[str, str], world: int) -> dict[str, str]:
    """Every split dim divides over the ranks; a vocabulary that does not is replicated instead (with a warning)."""
    out = {}
    for name, style in styles.items():
        bad = [(leaf, p.shape[d]) for leaf, p in modules[name].named_parameters(recurse=False)
               if (d := split_dim(style, leaf, p.ndim)) is not None and p.shape[d] % world]
        if bad and style in VOCAB_STYLES:
            warnings.warn(f"Tensor-parallel plan: '{name}' ({style}) has {bad[0][1]} rows, not divisible by {world} "
                          "ranks; it is replicated instead.", UserWarning, stacklevel=4)
            out[name] = "replicate"
            continue
        if bad:
            leaf, size = bad[0]
            raise TensorParallelError(
                f"Tensor-parallel plan: '{name}.{leaf}' ({style}) splits a dimension of {size}, which is "
                f"not divisible by {world} ranks. Run with a number of ranks that divides it, or "
                "replicate that module in tp_plan.")
        out[name] = style
    return out


def _ties(model: nn.Module) -> dict[str, str]:
    return dict(model.active_ties()) if hasattr(model, "active_ties") else {}


def _check_ties(model: nn.Module, styles: dict[str, str], world: int) -> None:
    """A tied target and its source are one tensor: both must be cut alike (both by vocabulary rows, or neither)."""
    for target, source in _ties(model).items():
        t_mod, _, t_leaf = target.rpartition(".")
        s_mod, _, s_leaf = source.rpartition(".")
        t_dim = split_dim(styles.get(t_mod), t_leaf, 2)
        s_dim = split_dim(styles.get(s_mod), s_leaf, 2)
        if t_dim != s_dim:
            raise TensorParallelError(
                f"'{target}' is tied to '{source}' (tie_word_embeddings), but the tensor-parallel plan "
                f"splits them differently ('{styles.get(t_mod, 'replicate')}' and "
                f"'{styles.get(s_mod, 'replicate')}'). Give both the same split, e.g. "
                "'embedding_rowwise' and 'colwise_gather_output', or replicate both.")
