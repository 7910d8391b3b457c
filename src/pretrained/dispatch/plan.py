"""Device maps, planned: which device each part of a model goes to, worked out from byte sizes and budgets.

Everything here is pure — sizes in, a small dataclass out — except `available_memory()`, which asks the machine.

    sizes = sizes_from_model(model)                     # or ModuleSizes({...}) by hand, from integers
    plan = plan_device_map(sizes, {0: "20GiB", 1: "20GiB", "cpu": "64GB"}, no_split=["LlamaDecoderLayer"])
    plan.device_map   # {"model.embed_tokens": 0, "model.layers.0": 0, ..., "lm_head": 1}
    plan.used         # {0: 13_476_298_752, 1: 13_476_298_752} bytes

Words
- A *part* is a module or a tensor, named as `named_modules()` and `state_dict()` name them ("" is the model).
- A part is *atomic* when a plan may not cut it: a tensor, a module without child modules, or a no-split block
  (a module whose class is in `no_split`, e.g. a decoder layer whose residual stream must stay on one device).
- Devices, in the order they are filled: GPUs (ints, ascending), "mps", "cpu", "disk". Disk has no limit unless
  `max_memory` gives it one ({"disk": 0} forbids it).
- A device map names parts; a tensor goes where the longest prefix of its name that the map names says.

How a plan is made
1. Fill the devices in order. Take the next part; with it come the parts that hold tensors tied to its tensors
   (a tied weight is one tensor, so it has one device). If they fit in what the device has left, place them.
   If not, cut something: a tied partner that can be cut (when the part alone would fit), else the part itself;
   when nothing can be cut, move on to the next device.
2. Offloaded layers run on the lowest GPU that holds weights, so when anything lands on "cpu" or "disk" that
   GPU keeps room for the largest layer still to be placed; when anything lands on "disk", the CPU keeps such
   room too (disk layers are read into memory to run). The fill is repeated with those reserves until it needs
   no reserve it did not keep.
3. Strategies: "sequential" fills in order. "balanced" uses the smallest per-GPU ceiling that still keeps as much
   on the GPUs as filling in order does. "balanced_low_0" first gives GPU 0 the smallest ceiling that keeps as
   much (GPU 0 stays free for generation's outputs), then balances the others. "auto" is "balanced".
4. The map is cleaned: a module whose tensors all share a device becomes one entry; one device is {"": device}.

Where this differs from accelerate's `infer_auto_device_map` / `get_balanced_memory` (on purpose)
- Reserves are kept only when something is offloaded; accelerate always keeps them, so a model that exactly fits
  a GPU still gets its last layers offloaded there. And the reserve is kept on the GPU the offloaded layers will
  run on (the lowest one holding weights, as our hooks and accelerate's dispatch choose); accelerate keeps it on
  GPU 0 even when that reserve leaves GPU 0 empty and the layers then run on GPU 1, which kept no room.
- "balanced" searches for its ceiling instead of using total/n + 1.25 x a layer: it never offloads more than
  "sequential" does (accelerate's ceiling can push layers to the CPU when GPUs differ in size), and it spreads
  the layers at least as evenly.
- A part that fits alone but not with its tied partners, none of which can be cut, is cut itself (as
  transformers 5 does) rather than sent whole to the next device (accelerate).
- Disk may have a budget; tensors are sized exactly in the dtype they will have (accelerate never counts a
  tensor larger than it is on the meta model); tied copies are counted once and kept in the map.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from ..checkpoint.shards import parse_size
from ..errors import DeviceMapError
from ..modeling.dtype import as_dtype, module_dtype

Device = Union[int, str]  # a GPU index, "mps", "cpu" or "disk"
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_NAMED = ("mps", "cpu", "disk")  # the named devices, in filling order after the GPUs
_DEVICE_FORMS = "a GPU index (0, 1, ...), 'cuda:N', 'mps', 'cpu' or 'disk'"


# ---- inputs --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModuleSizes:
    """The model as the planner sees it: every tensor's name and size in bytes, in module order.

    Modules are the prefixes of the tensor names. `sizes_from_model` builds one from a model (a meta model will
    do); tests build them by hand:

        ModuleSizes({"embed.weight": 400, "layers.0.w": 100, "layers.1.w": 100, "head.weight": 0},
                    classes={"layers.0": "Block", "layers.1": "Block"}, tied=[["embed.weight", "head.weight"]])
    """

    tensors: Mapping[str, int]  # tensor name -> bytes (a tied copy: 0, its bytes are counted once)
    classes: Mapping[str, str] = field(default_factory=dict)  # module name -> class name, for no-split blocks
    tied: Sequence[Sequence[str]] = ()  # groups of tensor names that are one tensor: they share a device
    optional: frozenset[str] = frozenset()  # tensors a hand-written map may leave out (non-persistent buffers)
    parts: dict[str, list[str]] = field(init=False, repr=False, compare=False)  # module -> its tensors and children
    total: dict[str, int] = field(init=False, repr=False, compare=False)  # part -> bytes of everything under it

    def __post_init__(self) -> None:
        parts: dict[str, list[str]] = {"": []}
        total = {"": 0}
        for tensor, nbytes in self.tensors.items():
            if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
                raise DeviceMapError(f"Tensor '{tensor}' has size {nbytes!r}; sizes are whole numbers of bytes >= 0.")
            total[""] += nbytes
            pieces, parent = tensor.split("."), ""
            for i in range(1, len(pieces) + 1):
                name = ".".join(pieces[:i])
                if name not in total:
                    parts[parent].append(name)
                    total[name] = 0
                    if i < len(pieces):
                        parts[name] = []
                total[name] += nbytes
                parent = name
        both = [t for t in self.tensors if t in parts]
        if both:
            raise DeviceMapError(f"'{both[0]}' is both a tensor and a module; tensor names must be leaves.")
        tied = tuple(tuple(group) for group in self.tied if len(group) > 1)
        unknown = [name for group in tied for name in group if name not in self.tensors]
        if unknown:
            raise DeviceMapError(f"Tied tensor '{unknown[0]}' is not a tensor of the model.")
        object.__setattr__(self, "tensors", dict(self.tensors))
        object.__setattr__(self, "classes", dict(self.classes))
        object.__setattr__(self, "tied", tied)
        object.__setattr__(self, "optional", frozenset(self.optional))
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "total", total)

    @property
    def modules(self) -> list[str]:
        """Names of the modules that hold tensors, "" (the model) first."""
        return list(self.parts)


def sizes_from_model(model: nn.Module, dtype: torch.dtype | str | None = None,
                     keep_in_fp32: Sequence[str] | None = None) -> ModuleSizes:
    """The sizes of `model`'s parameters and buffers, read from their shapes (a meta model will do).

    dtype: size floating tensors as this dtype (None: as they are); modules named in `keep_in_fp32` (default:
        the model's facts) count as float32 under float16/bfloat16. Integer tensors keep their own size.
    Tied weights are counted once: a tensor shared under two names, or a tie the model declares and its config
    turns on (`model.active_ties()`, for a skeleton not tied yet), costs nothing under its second name.
    """
    facts = getattr(model, "facts", None)
    keep = tuple(keep_in_fp32 if keep_in_fp32 is not None else getattr(facts, "keep_in_fp32_modules", ()))
    dtype = as_dtype(dtype) if dtype is not None else None
    tensors: dict[str, int] = {}
    classes = {name: type(module).__name__ for name, module in model.named_modules(remove_duplicate=False)}
    optional: set[str] = set()
    first_name: dict[int, str] = {}  # id(tensor) -> the first name it was seen under
    ties: list[tuple[str, str]] = []
    for module_name, module, leaf, tensor in _walk(model):
        name = f"{module_name}.{leaf}" if module_name else leaf
        seen = first_name.setdefault(id(tensor), name)
        if seen != name:
            tensors[name] = 0
            ties.append((seen, name))
            continue
        if dtype is not None and tensor.is_floating_point():
            itemsize = module_dtype(module_name, dtype, keep).itemsize
        else:
            itemsize = tensor.element_size()
        tensors[name] = tensor.numel() * itemsize
        if leaf in module._non_persistent_buffers_set:
            optional.add(name)
    declared = model.active_ties() if callable(getattr(model, "active_ties", None)) else {}
    for target, source in declared.items():
        if target in tensors and source in tensors:
            tensors[target] = 0
            ties.append((source, target))
    return ModuleSizes(tensors, classes, _groups(ties), frozenset(optional))


def _walk(module: nn.Module, name: str = ""):
    """(module name, module, leaf, tensor) in filling order: a module's parameters, its children, its buffers
    (the order accelerate treats them in); a module shared under two names is walked under both."""
    for leaf, param in module._parameters.items():
        if param is not None:
            yield name, module, leaf, param
    for child_name, child in module._modules.items():
        if child is not None:
            yield from _walk(child, f"{name}.{child_name}" if name else child_name)
    for leaf, buffer in module._buffers.items():
        if buffer is not None:
            yield name, module, leaf, buffer


def _groups(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Pairs of names that are one tensor, merged into groups (first-seen order)."""
    groups: list[list[str]] = []
    for a, b in pairs:
        hit = [g for g in groups if a in g or b in g]
        merged = [n for g in hit for n in g]
        merged += [n for n in (a, b) if n not in merged]
        groups = [g for g in groups if g not in hit] + [merged]
    return groups


def normalize_device(value: Any, what: str = "device") -> Device:
    """A device as plans write it: a GPU index (from 0, "0", "cuda", "cuda:1" or torch.device("cuda", 1)),
    "mps", "cpu" or "disk"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, (str, torch.device)):
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        if text in ("cpu", "disk", "mps", "mps:0"):
            return text.partition(":")[0]
        match = re.fullmatch(r"cuda(?::(\d+))?", text)
        if match:
            return int(match.group(1) or 0)
    raise DeviceMapError(f"{what} {value!r} is not a device: use {_DEVICE_FORMS}.")


def parse_max_memory(max_memory: Mapping[Any, int | str]) -> dict[Device, int]:
    """Budgets in bytes per device, in filling order (GPUs, "mps", "cpu", "disk"). Keys: GPU indices, "cuda:N",
    "mps", "cpu", "disk"; values: bytes, or strings such as "20GiB" (2^30 bytes each) and "20GB" (10^9)."""
    if not isinstance(max_memory, Mapping):
        raise DeviceMapError(f"max_memory must be a dict such as {{0: '20GiB', 'cpu': '64GB'}}, got {max_memory!r}.")
    budgets: dict[Device, int] = {}
    for key, value in max_memory.items():
        device = normalize_device(key, "max_memory key")
        if device in budgets:
            raise DeviceMapError(f"max_memory names device {device!r} twice (as {key!r} and an earlier key).")
        budgets[device] = _bytes(value, device)
    return {d: budgets[d] for d in _in_order(budgets)}


def _bytes(value: Any, device: Device) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    if isinstance(value, str):
        if re.fullmatch(r"\s*(0+\.?0*|\.0+)\s*[A-Za-z]*\s*", value):
            return 0  # "0", "0GB": nothing on this device
        try:
            return parse_size(value)
        except ValueError as e:
            raise DeviceMapError(f"max_memory[{device!r}]: {e}") from None
    raise DeviceMapError(f"max_memory[{device!r}] = {value!r} is not a size: give bytes or a string like '20GiB'.")


def _in_order(devices: Iterable[Device]) -> list[Device]:
    devices = list(devices)
    return sorted(d for d in devices if isinstance(d, int)) + [d for d in _NAMED if d in devices]


def _is_gpu(device: Device) -> bool:
    return isinstance(device, int) or device == "mps"


# ---- the plan ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DevicePlan:
    """Where every part of a model goes, and what that costs each device."""

    device_map: dict[str, Device]  # part name -> device, cleaned (see the module docstring)
    used: dict[Device, int]  # bytes of weights placed on each device that holds any, in device order
    budget: dict[Device, int | None]  # what was planned against, per device (None: no limit)
    reserved: dict[Device, int]  # room kept free for offloaded layers to run in (their GPU; the CPU for disk)
    strategy: str

    @property
    def offloaded(self) -> bool:
        """Whether some weights are brought in to run: from "disk", or from "cpu" to a GPU."""
        return "disk" in self.used or ("cpu" in self.used and any(_is_gpu(d) for d in self.used))

    def device_for(self, name: str) -> Device | None:
        return device_for(name, self.device_map)


def device_for(name: str, device_map: Mapping[str, Device]) -> Device | None:
    """The device of part `name` under `device_map`: the entry of the longest prefix of `name` (None if none)."""
    while True:
        if name in device_map:
            return device_map[name]
        if not name:
            return None
        name = name.rpartition(".")[0]


def plan_device_map(
    sizes: ModuleSizes,
    max_memory: Mapping[Any, int | str],
    no_split: Iterable[str] | str = (),
    tied: Sequence[Sequence[str]] | None = None,
    strategy: str = "auto",
) -> DevicePlan:
    """Place `sizes` on the devices `max_memory` budgets.

    max_memory: device -> bytes or "20GiB"; keys as in `parse_max_memory`. "disk" is added without a limit
        unless given. Planning needs no GPU: `{0: "20GiB", 1: "20GiB"}` plans for two GPUs anywhere.
    no_split: class names of blocks never cut across devices.
    tied: groups of tensor names that share a device (default: `sizes.tied`).
    strategy: "auto" (= "balanced"), "balanced", "balanced_low_0" or "sequential".
    """
    if strategy not in STRATEGIES:
        raise DeviceMapError(f"Unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    if tied is not None:
        sizes = dataclasses.replace(sizes, tied=tied)
    budgets: dict[Device, int | None] = dict(parse_max_memory(max_memory))
    budgets.setdefault("disk", None)
    planner = _Planner(sizes, [no_split] if isinstance(no_split, str) else no_split)
    if strategy == "sequential":
        placed, used, reserved = planner.place(budgets, {})
    else:
        placed, used, reserved = planner.balanced(budgets, low_zero=strategy == "balanced_low_0")
    device_map = _clean(sizes, placed, next(iter(budgets)))
    holding = set(device_map.values())
    return DevicePlan(device_map, {d: used[d] for d in budgets if d in holding}, budgets, reserved, strategy)


_Placement = tuple[dict[str, Device], dict[Device, int], dict[Device, int]]  # placed parts, used, reserved


class _Planner:
    """One model's placement problem; `place` fills devices under given ceilings."""

    def __init__(self, sizes: ModuleSizes, no_split: Iterable[str]) -> None:
        self.sizes = sizes
        self.no_split = frozenset(no_split)
        self.partners = {t: [o for o in group if o != t] for group in sizes.tied for t in group}
        self._largest: dict[str, int] = {}

    def atomic(self, name: str) -> bool:
        s = self.sizes
        return (name in s.tensors or s.classes.get(name) in self.no_split
                or all(p in s.tensors for p in s.parts[name]))

    def largest_layer(self, name: str) -> int:
        """Bytes of the largest atomic part in `name` (what must fit at once to run it)."""
        if name not in self._largest:
            self._largest[name] = self.sizes.total[name] if self.atomic(name) else \
                max((self.largest_layer(p) for p in self.sizes.parts[name]), default=0)
        return self._largest[name]

    def group(self, queue: list[str]) -> list[str]:
        """The next part and the queued parts holding tensors tied to it (and to those, and so on)."""
        members = [queue[0]]
        for member in members:  # grows while we walk it
            for tensor, partners in self.partners.items():
                if not _inside(tensor, member):
                    continue
                for partner in partners:
                    holder = next((q for q in queue if _inside(partner, q)), None)
                    if holder is not None and holder not in members:
                        members.append(holder)
        return members

    def fill(self, budgets: Mapping[Device, int | None], ceilings: Mapping[Device, int],
             reserve_on: set[Device]) -> tuple[dict[str, Device], dict[Device, int]]:
        devices = list(budgets)
        placed: dict[str, Device] = {}
        used = dict.fromkeys(devices, 0)
        queue, current = [""], 0
        while queue:
            device = devices[current]
            group = self.group(queue)
            need = sum(self.sizes.total[g] for g in group)
            room = self.room(device, budgets[device], ceilings, used[device], reserve_on, queue, group)
            if room is None or need <= room:
                for g in group:
                    placed[g] = device
                    queue.remove(g)
                used[device] += need
                continue
            cut = self.what_to_cut(group, room)
            if cut is not None:
                at = queue.index(cut)
                queue[at:at + 1] = self.sizes.parts[cut]
                continue
            current += 1
            if current == len(devices):
                left = sum(self.sizes.total[q] for q in queue)
                raise DeviceMapError(
                    f"The model does not fit in max_memory: {_fmt(left)} ('{queue[0] or 'the model'}' and what "
                    f"follows) is left after every device is full. Raise a budget, or drop the 'disk' limit and give "
                    f"an offload folder."
                )
        return placed, used

    def room(self, device: Device, budget: int | None, ceilings: Mapping[Device, int], used: int,
             reserve_on: set[Device], queue: list[str], group: list[str]) -> int | None:
        if budget is None:
            return None
        limit = min(budget, ceilings.get(device, budget))
        if device in reserve_on:  # keep room to run the largest layer that may still be offloaded
            largest = max((self.largest_layer(q) for q in queue if q not in group), default=0)
            limit = min(limit, budget - largest)
        return limit - used

    def what_to_cut(self, group: list[str], room: int) -> str | None:
        first, partners = group[0], group[1:]
        if partners and self.sizes.total[first] <= room:
            cuttable = [p for p in partners if not self.atomic(p)]
            if cuttable:
                return cuttable[0]
        return None if self.atomic(first) else first

    def reserves_needed(self, placed: Mapping[str, Device], budgets: Mapping[Device, int | None]) -> dict[Device, int]:
        """Room the plan must keep free where offloaded layers run: on the GPU they run on (the lowest GPU that
        holds weights, as the hooks choose) for layers on cpu/disk; on the CPU for layers on disk."""
        needed: dict[Device, int] = {}
        holding = [d for d in budgets if _is_gpu(d) and d in placed.values()]
        runs_on = [(holding[0] if holding else None, ("cpu", "disk")), ("cpu" if "cpu" in budgets else None, ("disk",))]
        for device, sources in runs_on:
            sizes = [self.largest_layer(n) for n, d in placed.items() if d in sources]
            if device is not None and sizes:
                needed[device] = max(sizes)
        return needed

    def place(self, budgets: Mapping[Device, int | None], ceilings: Mapping[Device, int]) -> _Placement:
        reserve_on: set[Device] = set()
        while True:
            placed, used = self.fill(budgets, ceilings, reserve_on)
            needed = self.reserves_needed(placed, budgets)
            if needed.keys() <= reserve_on:
                return placed, used, needed
            reserve_on |= needed.keys()

    def balanced(self, budgets: Mapping[Device, int | None], low_zero: bool) -> _Placement:
        gpus = [d for d in budgets if _is_gpu(d) and budgets[d]]
        base = self.place(budgets, {})
        if len(gpus) < 2:
            return base

        def keeps_up(ceilings: Mapping[Device, int]) -> _Placement | None:
            """The plan under `ceilings`, if it keeps as much on the GPUs (and off disk) as filling in order."""
            try:
                plan = self.place(budgets, ceilings)
            except DeviceMapError:  # a disk budget ran out under these ceilings
                return None
            on_gpus = sum(plan[1][d] for d in gpus) >= sum(base[1][d] for d in gpus)
            return plan if on_gpus and plan[1]["disk"] <= base[1]["disk"] else None

        ceilings: dict[Device, int] = {}
        plan = base
        if low_zero:
            ceilings, plan = _smallest_ceiling(keeps_up, ceilings, gpus[:1], budgets[gpus[0]])
        rest = gpus[1:] if low_zero else gpus
        if len(rest) > 1:
            ceilings, plan = _smallest_ceiling(keeps_up, ceilings, rest, max(budgets[d] for d in rest))
        return plan


def _smallest_ceiling(keeps_up: Callable[[Mapping[Device, int]], _Placement | None], ceilings: dict[Device, int],
                      devices: list[Device], top: int) -> tuple[dict[Device, int], _Placement]:
    """Binary search for the smallest ceiling on `devices` under which `keeps_up` holds (it holds at `top`)."""
    low, high = -1, top
    best = keeps_up({**ceilings, **dict.fromkeys(devices, high)})
    assert best is not None, "the ceiling at the budget changes nothing"
    while high - low > 1:
        mid = (low + high) // 2
        plan = keeps_up({**ceilings, **dict.fromkeys(devices, mid)})
        if plan is None:
            low = mid
        else:
            high, best = mid, plan
    return {**ceilings, **dict.fromkeys(devices, high)}, best


def _inside(tensor: str, part: str) -> bool:
    return not part or tensor == part or tensor.startswith(part + ".")


def _prefixes(name: str) -> list[str]:
    pieces = name.split(".")
    return [""] + [".".join(pieces[:i]) for i in range(1, len(pieces) + 1)]


def _clean(sizes: ModuleSizes, placed: Mapping[str, Device], default: Device) -> dict[str, Device]:
    """The smallest map that puts every tensor where `placed` does: one entry per part whose tensors share a
    device, in model order."""
    if not sizes.tensors:
        return {"": default}
    devices_under: dict[str, set[Device]] = {}
    for tensor in sizes.tensors:
        device = device_for(tensor, placed)
        for prefix in _prefixes(tensor):
            devices_under.setdefault(prefix, set()).add(device)
    cleaned: dict[str, Device] = {}

    def emit(part: str) -> None:
        devices = devices_under[part]
        if len(devices) == 1:
            cleaned[part] = next(iter(devices))
        else:
            for child in sizes.parts[part]:
                emit(child)

    emit("")
    return cleaned


def _fmt(n: int) -> str:
    return next((f"{n / s:.1f} {u}" for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if n >= s), f"{n} B")


# ---- the ecosystem's entry points ----------------------------------------------------------------------------
def infer_auto_device_map(
    model: nn.Module,
    max_memory: Mapping[Any, int | str] | None = None,
    no_split_module_classes: Iterable[str] | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    strategy: str = "sequential",
) -> dict[str, Device]:
    """A device map for `model` (a meta model will do), under the ecosystem's name and arguments.

    max_memory: device -> bytes or "20GiB" (default: `available_memory()`); no_split_module_classes: default the
    model's `_no_split_modules`; dtype: the dtype the weights will be loaded in (default: as they are).
    `strategy` defaults to "sequential", which is what this function does in accelerate (balancing is
    `get_balanced_memory`'s job there; here pass strategy="balanced").
    """
    if no_split_module_classes is None:
        no_split_module_classes = getattr(model, "_no_split_modules", None) or ()
    budgets = available_memory() if max_memory is None else max_memory
    sizes = sizes_from_model(model, dtype=dtype)
    return plan_device_map(sizes, budgets, no_split_module_classes, strategy=strategy).device_map


def parse_device_map(device_map: Mapping[str, Any] | int | str | torch.device,
                     model: nn.Module | ModuleSizes) -> dict[str, Device]:
    """A user's device map, checked against `model` and with its devices normalised (see `normalize_device`).

    Accepts a dict (part name -> device; "" covers everything not named more precisely), or one device (an int,
    "cuda:1", "cpu", torch.device) for the whole model. Raises `DeviceMapError` for a name the model does not
    have, a device that is not one, a tensor no entry covers, or tied tensors mapped to different devices.
    The strategies ("auto", ...) are not maps: plan them with `plan_device_map`.
    """
    if isinstance(device_map, str) and device_map in STRATEGIES:
        raise DeviceMapError(f"device_map={device_map!r} is a strategy, not a map: plan it with plan_device_map().")
    if not isinstance(device_map, Mapping):
        device_map = {"": device_map}
    sizes = model if isinstance(model, ModuleSizes) else sizes_from_model(model)
    known = set(sizes.tensors) | set(sizes.parts)
    if isinstance(model, nn.Module):
        known |= {name for name, _ in model.named_modules()}  # modules without tensors may be named too
    parsed: dict[str, Device] = {}
    for name, device in device_map.items():
        if not isinstance(name, str):
            raise DeviceMapError(f"device_map key {name!r} is not a module name (a string such as 'model.layers.0').")
        if name and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise DeviceMapError(f"device_map names '{name}', which is not a module or tensor of the model.{hint}")
        parsed[name] = normalize_device(device, f"device_map['{name}']:")
    uncovered = [t for t in sizes.tensors if t not in sizes.optional and device_for(t, parsed) is None]
    if uncovered:
        more = f" and {len(uncovered) - 3} more" if len(uncovered) > 3 else ""
        raise DeviceMapError(
            f"device_map gives no device for {', '.join(repr(t) for t in uncovered[:3])}{more}. Add an entry for "
            "them or a module holding them, or \"\" for everything not named."
        )
    for group in sizes.tied:
        where = {t: device_for(t, parsed) for t in group}
        if len({d for d in where.values() if d is not None}) > 1:
            raise DeviceMapError(
                f"Tied weights are one tensor but the device_map splits them: "
                f"{', '.join(f'{t} -> {d!r}' for t, d in where.items())}. Map them to one device."
            )
    return parsed


def available_memory() -> dict[Device, int]:
    """Memory free now: each CUDA GPU's free bytes, then the CPU's available RAM (/proc/meminfo's MemAvailable,
    else psutil). Nothing is shaved off: pass max_memory to plan with a margin."""
    budgets: dict[Device, int] = {}
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            budgets[index] = torch.cuda.mem_get_info(index)[0]
    budgets["cpu"] = _available_ram()
    return budgets


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        raise DeviceMapError("Cannot tell how much memory is free here (no /proc/meminfo, no psutil): pass "
                             "max_memory, e.g. {'cpu': '16GiB'}.") from None
    return int(psutil.virtual_memory().available)
