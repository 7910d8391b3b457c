"""Big-model dispatch: plan a device map (`plan.py`, pure), keep offloaded weights (`offload.py`), run across
devices (`hooks.py`).

Names are imported lazily, so importing one submodule (the loader imports `offload`) does not import the others.
"""

from __future__ import annotations

from .._lazy import lazy_exports


_EXPORTS = {
    name: "plan"
    for name in ("DevicePlan", "ModuleSizes", "STRATEGIES", "available_memory", "device_for", "infer_auto_device_map",
                 "normalize_device", "parse_device_map", "parse_max_memory", "plan_device_map", "sizes_from_model")
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
