"""`ModuleUtilsMixin`: small conveniences every model has (device, dtype, parameter counts, masks, FLOPs,
memory hooks). The mask/FLOP/memory helpers are those 4.x had and 5.x dropped; their semantics follow 4.57."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def _current_rss() -> int:
    """Resident set size of this process in bytes (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ModuleUtilsMixin:
    # ---- where and what ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating parameter (float32 if there is none)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted once even when tied; optionally only trainable ones, or without embedding tables."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        total = sum(p.numel() for p in self.parameters() if id(p) not in skip and (p.requires_grad or not only_trainable))
        if not only_trainable:  # quantized layers (quantization/linear.py) hold their weight as low-bit buffers
            total += sum(m.logical_weight_numel for m in self.modules() if hasattr(m, "logical_weight_numel"))
        return total

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes taken by parameters (and buffers), counting tied tensors once."""
        total = sum(p.nelement() * p.element_size() for p in self.parameters())
        if return_buffers:
            total += sum(b.nelement() * b.element_size() for b in self.buffers())
        return total

    # ---- masks -------------------------------------------------------------------------------
    def invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) or (batch, q, seq) 1/0 mask -> additive (batch, 1, [1|q], seq): 0 keep, dtype-min drop."""
        m = encoder_attention_mask
        m = m[:, None, :, :] if m.dim() == 3 else m[:, None, None, :]
        m = m.to(dtype=self.dtype)
        return (1.0 - m) * torch.finfo(self.dtype).min

    def get_extended_attention_mask(
        self, attention_mask: torch.Tensor, input_shape: tuple[int, ...], device: Any = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Broadcastable additive mask; causal as well when the config says this is a decoder."""
        dtype = dtype or self.dtype
        if attention_mask.dim() == 3:
            extended = attention_mask[:, None, :, :]
        elif attention_mask.dim() == 2:
            if getattr(self.config, "is_decoder", False):
                batch, seq = input_shape[0], input_shape[1]
                ids = torch.arange(seq, device=attention_mask.device)
                causal = (ids[None, None, :] <= ids[None, :, None]).repeat(batch, 1, 1).to(attention_mask.dtype)
                if causal.shape[1] < attention_mask.shape[1]:  # cached prefix: always visible
                    prefix = attention_mask.shape[1] - causal.shape[1]
                    causal = torch.cat([torch.ones(batch, seq, prefix, dtype=causal.dtype, device=causal.device),
                                        causal], dim=-1)
                extended = causal[:, None, :, :] * attention_mask[:, None, None, :]
            else:
                extended = attention_mask[:, None, None, :]
        else:
            raise ValueError(
                f"attention_mask of shape {tuple(attention_mask.shape)} for inputs of shape {tuple(input_shape)}: "
                "expected 2 or 3 dimensions."
            )
        extended = extended.to(dtype=dtype)
        return (1.0 - extended) * torch.finfo(dtype).min

    def get_head_mask(self, head_mask: torch.Tensor | None, num_hidden_layers: int, is_attention_chunked: bool = False):
        """None -> [None] * layers; (heads,) or (layers, heads) -> (layers, batch=1, heads, 1, 1) in the model dtype."""
        if head_mask is None:
            return [None] * num_hidden_layers
        if head_mask.dim() == 1:
            head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
        elif head_mask.dim() == 2:
            head_mask = head_mask[:, None, :, None, None]
        else:
            raise ValueError(f"head_mask must have 1 or 2 dimensions, got shape {tuple(head_mask.shape)}.")
        if is_attention_chunked:
            head_mask = head_mask.unsqueeze(-1)
        return head_mask.to(dtype=self.dtype)

    # ---- FLOPs -------------------------------------------------------------------------------
    def estimate_tokens(self, input_dict: dict[str, Any]) -> int:
        """Number of tokens in the main input of `input_dict` (0 if it is absent)."""
        main = input_dict.get(getattr(self, "main_input_name", "input_ids"))
        return main.numel() if main is not None else 0

    def floating_point_ops(self, input_dict: dict[str, Any], exclude_embeddings: bool = True) -> int:
        """Rough forward+backward FLOPs of one batch: 6 x tokens x (non-embedding) parameters."""
        return 6 * self.estimate_tokens(input_dict) * self.num_parameters(exclude_embeddings=exclude_embeddings)

    # ---- memory hooks ------------------------------------------------------------------------
    def add_memory_hooks(self) -> None:
        """Record on every module the RSS before and after its forward (`mem_rss_pre_forward`,
        `mem_rss_post_forward`, `mem_rss_diff`); clear with `reset_memory_hooks_state`."""

        def pre(module, _inputs):
            module.mem_rss_pre_forward = _current_rss()

        def post(module, _inputs, _outputs):
            module.mem_rss_post_forward = _current_rss()
            module.mem_rss_diff = module.mem_rss_post_forward - module.mem_rss_pre_forward + getattr(
                module, "mem_rss_diff", 0)

        handles = []
        for module in self.modules():
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        self._memory_hook_handles = handles
        self.reset_memory_hooks_state()

    def reset_memory_hooks_state(self) -> None:
        for module in self.modules():
            module.mem_rss_diff = 0
            module.mem_rss_post_forward = 0
            module.mem_rss_pre_forward = 0

    def remove_memory_hooks(self) -> None:
        for handle in getattr(self, "_memory_hook_handles", []):
            handle.remove()
        self._memory_hook_handles = []
