"""Removing attention heads ("head pruning"), family-neutral.

A family names its attention blocks in `ModelFacts.attention_blocks` as a path inside the base model with `*`
for the layer index (BERT: "encoder.layer.*.attention"). Each such block follows a small protocol:

    block.total_heads: int         heads the block had before any pruning
    block.pruned_heads: set[int]   heads already removed, numbered as in the unpruned block
    block.prune_heads(heads)       remove `heads` (a set of unpruned-numbering indices, none already removed)

Head numbers always refer to the *original* (unpruned) numbering, so pruning {0: [1]} after {0: [0, 2]} removes
what was head 1, whichever row it now occupies. The helpers below do the arithmetic (`kept_rows`) and the
surgery on a linear layer (`prune_linear`); `prune_attention_heads` checks a request and applies it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn


def attention_blocks(root: nn.Module, pattern: str) -> list[nn.Module]:
    """The blocks `pattern` names inside `root`, one per layer: "encoder.layer.*.attention" ->
    [root.encoder.layer[0].attention, root.encoder.layer[1].attention, ...]."""
    container, star, leaf = pattern.partition("*")
    if not star:
        raise ValueError(f"attention_blocks pattern '{pattern}' needs a '*' standing for the layer index.")
    layers = root.get_submodule(container.rstrip("."))
    leaf = leaf.lstrip(".")
    return [layer.get_submodule(leaf) if leaf else layer for layer in layers]


def check_heads(heads_to_prune: Mapping[int, Iterable[int]], total_heads: Sequence[int]) -> dict[int, set[int]]:
    """Validate `{layer: heads}` against each layer's head count before pruning; returns `{layer: set(heads)}`.

    Raises ValueError naming the layer (and head) and the valid range when a layer does not exist or a head is
    out of range; TypeError when an index is not an integer. Nothing is changed when anything is wrong.
    """
    if not isinstance(heads_to_prune, Mapping):
        raise TypeError(f"heads_to_prune must be a dict {{layer: [heads]}}, got {type(heads_to_prune).__name__}.")
    plan: dict[int, set[int]] = {}
    n_layers = len(total_heads)
    for layer, heads in heads_to_prune.items():
        layer = _as_index(layer, "layer")
        if not 0 <= layer < n_layers:
            raise ValueError(f"prune_heads: layer {layer} does not exist; the model has layers 0..{n_layers - 1}.")
        n_heads = total_heads[layer]
        wanted = set()
        for head in heads:
            head = _as_index(head, f"head of layer {layer}")
            if not 0 <= head < n_heads:
                raise ValueError(
                    f"prune_heads: head {head} of layer {layer} is out of range; valid heads are 0..{n_heads - 1} "
                    "(numbered as in the unpruned model)."
                )
            wanted.add(head)
        plan[layer] = plan.get(layer, set()) | wanted
    return plan


def _as_index(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"prune_heads: a {what} must be an int, got {value!r}.")
    if isinstance(value, str) and value.lstrip("-").isdigit():  # JSON object keys arrive as strings
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"prune_heads: a {what} must be an int, got {value!r}.") from None


def remaining_heads(total_heads: int, pruned: Iterable[int]) -> list[int]:
    """Original numbers of the heads still present, in the order their rows appear."""
    gone = set(pruned)
    return [h for h in range(total_heads) if h not in gone]


def kept_rows(total_heads: int, head_size: int, already_pruned: Iterable[int], remove: Iterable[int]) -> torch.Tensor:
    """Indices of the rows (of a query/key/value weight laid out head after head) that survive removing `remove`
    from a block that already lost `already_pruned`; both in the original numbering. A LongTensor on the CPU."""
    remove = set(remove)
    present = remaining_heads(total_heads, already_pruned)
    slots = [slot for slot, head in enumerate(present) if head not in remove]
    if not slots:
        return torch.zeros(0, dtype=torch.long)
    offsets = torch.arange(head_size)
    return (torch.tensor(slots)[:, None] * head_size + offsets).reshape(-1)


def prune_linear(layer: nn.Linear, index: torch.Tensor, dim: int = 0) -> nn.Linear:
    """Keep only `index` along `dim` of `layer`'s weight, in place, and return the layer: dim=0 keeps output rows
    (and those bias entries), dim=1 keeps input columns (the bias stays whole). New parameters with the old dtype,
    device and requires_grad (an optimiser must be given them again); on the meta device only the shapes change."""
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (output rows) or 1 (input columns), got {dim}.")
    weight, bias = layer.weight, layer.bias
    with torch.no_grad():
        if weight.is_meta:
            shape = list(weight.shape)
            shape[dim] = len(index)
            w = weight.new_empty(shape)
            b = None if bias is None else (bias.new_empty(len(index)) if dim == 0 else bias)
        else:
            index = index.to(weight.device)
            w = weight.index_select(dim, index).clone()
            b = None if bias is None else (bias.index_select(0, index) if dim == 0 else bias).clone()
    layer.weight = nn.Parameter(w, requires_grad=weight.requires_grad)
    if bias is not None:
        layer.bias = nn.Parameter(b, requires_grad=bias.requires_grad)
    layer.out_features, layer.in_features = w.shape
    return layer


def prune_attention_heads(
    blocks: Sequence[nn.Module], heads_to_prune: Mapping[int, Iterable[int]], record: dict[int, list[int]]
) -> None:
    """Check `heads_to_prune` against `blocks` (one per layer), remove the heads not yet removed, and merge them
    into `record` (a config's `pruned_heads`: {layer: sorted original head numbers})."""
    plan = check_heads(heads_to_prune, [block.total_heads for block in blocks])
    for layer, heads in plan.items():
        new = heads - blocks[layer].pruned_heads
        if new:
            blocks[layer].prune_heads(new)
        merged = set(record.get(layer, ())) | heads
        if merged:
            record[layer] = sorted(merged)
