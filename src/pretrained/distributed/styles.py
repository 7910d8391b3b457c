"""The parallel styles as forwards of the very modules the model already has.

A split module keeps its class's behaviour and its parameter names; only its class is swapped for a subclass whose
forward adds the collective (a rowwise Linear sums its partial outputs, a vocabulary-split Embedding sums its
partial lookups, a gathered head concatenates its outputs). The collectives are torch.distributed's (gloo on CPUs,
NCCL on GPUs). A family's own subclass (Gemma's scaled embedding) stays outermost: its forward calls the split
lookup through `super()`.

Inference only: the collectives here carry no gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .plan import COLWISE, ROWWISE


class _Split:
    """What every split module records: its rank, the world size, and the process group."""

    tp_rank: int
    tp_world: int
    tp_group: object

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tp={self.tp_style} rank {self.tp_rank}/{self.tp_world}"


class RowwiseLinear(_Split, nn.Linear):
    """y = all_reduce(x_local @ W_local^T) + b: the bias, whole on every rank, is added once, after the sum."""

    tp_style = "rowwise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "tp_split_input", False):  # the input is whole: take this rank's features
            part = x.shape[-1] // self.tp_world
            x = x[..., self.tp_rank * part:(self.tp_rank + 1) * part]
        y = F.linear(x, self.weight)
        dist.all_reduce(y, group=self.tp_group)
        return y if self.bias is None else y + self.bias


class GatheredLinear(_Split, nn.Linear):
    """Colwise with the output gathered: every rank gets the whole output (the lm_head's full logits)."""

    tp_style = "colwise_gather_output"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = F.linear(x, self.weight, self.bias).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.tp_world)]
        dist.all_gather(parts, local, group=self.tp_group)
        return torch.cat(parts, dim=-1)


class VocabSplitEmbedding(_Split, nn.Embedding):
    """Rows [tp_start, tp_start + local rows) of the table: ids outside give zeros here; the sum over ranks is the
    whole lookup (exact: every id is found on exactly one rank)."""

    tp_style = "embedding_rowwise"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.tp_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside[..., None], 0)
        dist.all_reduce(out, group=self.tp_group)
        return out


_BY_STYLE = {"rowwise": RowwiseLinear, "rowwise_split_input": RowwiseLinear, "colwise_gather_output": GatheredLinear,
             "embedding_rowwise": VocabSplitEmbedding}
_CLASSES: dict[tuple[type, type], type] = {}


def _split_class(cls: type, split: type) -> type:
    """`split` itself for the plain torch class, else a subclass of `cls` over `split` (cls's forward first)."""
    if cls is split.__mro__[2]:  # nn.Linear / nn.Embedding itself
        return split
    key = (cls, split)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{split.__name__}{cls.__name__}", (cls, split), {"__module__": __name__})
    return _CLASSES[key]


def base_class(style: str) -> type | None:
    """The torch class a module of this style must be (an instance of)."""
    if style in COLWISE or style in ROWWISE:
        return nn.Linear
    if style == "embedding_rowwise":
        return nn.Embedding
    return None


def apply_style(module: nn.Module, style: str, rank: int, world: int, group: object = None) -> None:
    """Make `module` (its tensors already local) run `style`. "colwise" needs nothing: a Linear of local output
    features computes local outputs."""
    if style == "colwise" or style == "replicate":
        return
    split = _BY_STYLE[style]
    module.__class__ = _split_class(type(module), split)
    module.tp_rank, module.tp_world, module.tp_group = rank, world, group
    if style == "rowwise_split_input":
        module.tp_split_input = True
    if style == "embedding_rowwise":
        module.tp_start = rank * module.num_embeddings // world


def sizes_after_split(module: nn.Module, style: str, world: int) -> None:
    """Record the local sizes on the module (in_features / out_features / num_embeddings)."""
    if style in COLWISE:
        module.out_features //= world
    elif style in ROWWISE:
        module.in_features //= world
    elif style == "embedding_rowwise":
        module.num_embeddings //= world
