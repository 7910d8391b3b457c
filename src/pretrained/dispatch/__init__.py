"""Big-model dispatch: plan a device map (`plan.py`, pure), keep offloaded weights (`offload.py`), run across
devices (`hooks.py`).

Names are imported lazily, so importing one submodule (the loader imports `offload`) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    name: "plan"
    for name in ("DevicePlan", "ModuleSizes", "STRATEGIES", "available_memory", "device_for", "infer_auto_device_map",
                 "normalize_device", "parse_device_map", "parse_max_memory", "plan_device_map", "sizes_from_model")
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pretrained.dispatch' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
