"""Tensor parallelism on torch.distributed: `from_pretrained(..., tp_plan="auto")` under `torchrun`.

`plan` (which module splits how) and `config` import no framework; `group`, `styles`, `reader` and
`tensor_parallel` use torch.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "DistributedConfig": "config",
    "init_process_group": "group",
    "gather_state_dict": "tensor_parallel",
})
