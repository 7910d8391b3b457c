"""Running a model on its device plan: forward hooks on the modules the plan names.

Three kinds of placement need work at run time (everything else runs as an ordinary module):
- a module on another GPU than its inputs: inputs are moved to it (`MoveInputs`);
- disk weights run on the CPU: their pages are asked for before the block runs (and the next disk block's are
  asked for meanwhile), and handed back to the kernel after (`PageInOut`);
- CPU or disk weights run on a GPU: copied in before the block (the next block's copy starts on a side stream
  while this one computes) and dropped after (`StreamIn`).
A plan with a single device gets no hooks at all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .offload import DiskStore, whole_huge_pages


def move_to(value: Any, device: torch.device) -> Any:
    """Tensors in nested tuples/lists/dicts moved to `device` (other values untouched)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(move_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: move_to(v, device) for k, v in value.items()}
    return value


def torch_device(device: Any) -> torch.device:
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


class Hook:
    """Pre/post forward behaviour attached to one module; `next` is the following hook in run order."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.next: Hook | None = None
        self.handles = [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                        module.register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs):
        return self.before(args, kwargs)

    def _post(self, module, args, output):
        self.after()
        return None

    def before(self, args, kwargs):
        return None

    def after(self) -> None:
        pass

    def prefetch(self) -> None:
        pass

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class MoveInputs(Hook):
    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__(module)
        self.device = device

    def before(self, args, kwargs):
        return move_to(args, self.device), move_to(kwargs, self.device)


class PageInOut(Hook):
    """Disk weights used in place on the CPU: before the block runs the next block's pages are asked for
    (read-ahead); after it ran its pages are handed back (see `offload.Pager`)."""

    def __init__(self, module: nn.Module, store: DiskStore) -> None:
        super().__init__(module)
        self.pager = store.pager
        self.ranges = store.pages(list(module.parameters()) + list(module.buffers()))
        self.releasable = whole_huge_pages(self.ranges)
        store.settle(self.ranges)

    def prefetch(self) -> None:
        self.pager.bring_in(self.ranges)

    def before(self, args, kwargs):
        if self.next is not None:
            self.next.prefetch()
        return None

    def after(self) -> None:
        self.pager.hand_back(self.releasable)


class StreamIn(Hook):
    """CPU/disk weights run on a GPU: copied in before the block (prefetched by the previous block on a side
    stream), dropped after. Between forwards the module holds its CPU/disk tensors, so `state_dict()` and
    `save_pretrained` see the real weights."""

    def __init__(self, module: nn.Module, device: torch.device, pin: bool = False) -> None:
        super().__init__(module)
        self.device = device
        self.stored = {n: t for n, t in _tensors(module)}
        if pin and torch.cuda.is_available():  # page-locked CPU weights copy to the GPU asynchronously;
            for n, t in self.stored.items():  # disk weights stay mapped (pinning would load them all into RAM)
                if t.device.type == "cpu" and not t.is_pinned():
                    self.stored[n] = t.pin_memory()
                    _assign(module, n, self.stored[n])
        self.ready: dict[str, torch.Tensor] | None = None
        self.event = None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _copy(self) -> dict[str, torch.Tensor]:
        return {n: t.to(self.device, non_blocking=True) for n, t in self.stored.items()}

    def prefetch(self) -> None:
        if self.stream is None or self.ready is not None:
            return
        with torch.cuda.stream(self.stream):
            self.ready = self._copy()
            self.event = torch.cuda.Event()
            self.event.record(self.stream)

    def before(self, args, kwargs):
        if self.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self.event)
            weights, self.ready = self.ready, None
        else:
            weights = self._copy()
        for n, t in weights.items():
            _assign(self.module, n, t)
        if self.next is not None:
            self.next.prefetch()
        return move_to(args, self.device), move_to(kwargs, self.device)

    def after(self) -> None:
        for n, t in self.stored.items():
            _assign(self.module, n, t)


def _tensors(module: nn.Module):
    yield from module.named_parameters()
    yield from ((n, b) for n, b in module.named_buffers() if b is not None)


def _assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


def attach_hooks(model: nn.Module, device_map: dict[str, Any], store: DiskStore | None,
                 force_stream: bool = False) -> list[Hook]:
    """Hooks for `device_map` (module name -> GPU index, "cpu" or "disk"), in the model's run order.

    `force_stream` makes CPU/disk modules copy their weights in and out even when running on the CPU — the
    GPU code path, exercised on machines without one (tests).
    """
    devices = set(device_map.values())
    gpus = sorted(d for d in devices if isinstance(d, int))
    execution = torch.device("cuda", gpus[0]) if gpus else torch.device("cpu")
    if len(devices) == 1 and "disk" not in devices and not force_stream:
        return []
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    hooks: list[Hook] = []
    for name in sorted(device_map, key=lambda n: order.get(n, -1)):
        device, module = device_map[name], model.get_submodule(name)
        if isinstance(device, int):
            hooks.append(MoveInputs(module, torch_device(device)))
        elif execution.type != "cpu" or force_stream:
            hooks.append(StreamIn(module, execution, pin=device == "cpu"))
        elif device == "disk":
            hooks.append(PageInOut(module, store))
    for a, b in zip(hooks, hooks[1:]):
        a.next = b
    return hooks
