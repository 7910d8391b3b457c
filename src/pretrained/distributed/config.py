"""`DistributedConfig`: the reference's bundle of parallelism options, as far as pretrained honours them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class DistributedConfig:
    """Tensor-parallel options for `from_pretrained(..., distributed_config=DistributedConfig(tp_plan="auto"))`,
    the same as passing `tp_plan=` / `tp_size=` directly.

    tp_plan: "auto" (the family's plan) or a dict of module pattern -> style that overrides single entries of it.
    tp_size: how many ranks split the model; None = the world size (the only value supported besides it).
    """

    tp_plan: Any = "auto"
    tp_size: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistributedConfig:
        unknown = sorted(set(values) - {"tp_plan", "tp_size"})
        if unknown:
            raise ValueError(f"DistributedConfig: pretrained supports tensor parallelism only (tp_plan, tp_size); "
                             f"got {', '.join(unknown)}.")
        return cls(**values)
