"""The tensor-parallel plan: which module splits how. Pure functions over names and integers (no framework).

A family's config declares `base_model_tp_plan` (module pattern of the base model, "*" = any one name segment,
usually a layer index -> style); a task class adds its head's entry (PyTorch: `_tp_plan`, Flax: `tp_plan`, e.g.
{"lm_head": "colwise_gather_output"}). The same plan drives PyTorch tensor parallelism (`distributed/`) and JAX
sharding (`flax/sharding.py`).

Styles, in PyTorch terms (a Linear's weight is (out_features, in_features), an Embedding's (vocab, hidden)):
- "colwise": split the output features (weight dim 0, and the bias); the input is whole, the output is local.
- "rowwise": split the input features (weight dim 1); the input is local, the partial outputs are summed across
  ranks (all-reduce) and the bias, whole on every rank, is added once after the sum.
- "colwise_gather_output": colwise, then the local outputs are gathered so every rank has the whole output (a
  language-model head: full logits everywhere).
- "rowwise_split_input": rowwise on a whole input (each rank takes its part of the input features first).
- "embedding_rowwise": an embedding table split by vocabulary (weight dim 0); each rank looks up the ids it holds,
  the others give zeros, and the sum across ranks is the lookup.
- "replicate": whole on every rank (the same as naming no style).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import TensorParallelError

STYLES = ("colwise", "rowwise", "colwise_gather_output", "rowwise_split_input", "embedding_rowwise", "replicate")
COLWISE = ("colwise", "colwise_gather_output")
ROWWISE = ("rowwise", "rowwise_split_input")
# Styles whose split dimension is a vocabulary: when it does not divide over the ranks the module is replicated
# (with a warning) instead of failing, as most vocabularies (GPT-2's 50257) are odd.
VOCAB_STYLES = ("colwise_gather_output", "embedding_rowwise")
# Config keys that count attention heads: each must divide over the ranks (colwise q/k/v keep whole heads).
HEAD_KEYS = ("num_attention_heads", "num_key_value_heads", "n_head", "num_heads")


def pattern_regex(pattern: str) -> re.Pattern:
    """"layers.*.mlp.up_proj" -> a regex where "*" is one name segment."""
    return re.compile("".join("[^.]+" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)))


def style_of(plan: Mapping[str, str], module: str) -> str | None:
    """The style the first matching pattern of `plan` gives `module` (a dotted module name), or None."""
    for pattern, style in plan.items():
        if pattern_regex(pattern).fullmatch(module):
            return style
    return None


def split_dim(style: str | None, leaf: str, ndim: int) -> int | None:
    """Which dim of a module's tensor `leaf` ("weight", "bias") the style splits, in PyTorch layout; None = whole."""
    if style in COLWISE:
        return 0 if leaf in ("weight", "bias") else None
    if style in ROWWISE:
        return 1 if leaf == "weight" and ndim >= 2 else None
    if style == "embedding_rowwise":
        return 0 if leaf == "weight" else None
    return None


def family_plan(config: Any, model_cls: type, has_prefix: bool, head_attr: str = "_tp_plan") -> dict[str, str]:
    """The plan the family declares for a model: the config's `base_model_tp_plan` (under the base-model prefix in
    a task model) and the class's own head entries (`head_attr`)."""
    plan: dict[str, str] = {}
    prefix = _prefix(model_cls)
    for pattern, style in (getattr(config, "base_model_tp_plan", None) or {}).items():
        plan[f"{prefix}.{pattern}" if has_prefix and prefix else pattern] = style
    for klass in reversed(model_cls.__mro__):  # the head's entries, most derived last
        plan.update(klass.__dict__.get(head_attr) or {})
    return plan


def _prefix(model_cls: type) -> str:
    facts = getattr(model_cls, "facts", None)
    return getattr(facts, "base_model_prefix", "") or getattr(model_cls, "base_model_prefix", "") or ""


def merge_plan(family: Mapping[str, str], requested: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(the plan to apply, the entries the user gave). `requested` is "auto" (the family's plan) or a dict, which,
    as in the reference, overrides or adds single entries of the family's plan (an empty dict splits nothing)."""
    if requested is None or requested == "auto":
        return dict(family), {}
    if not isinstance(requested, Mapping):
        raise TensorParallelError(f"tp_plan must be 'auto' or a dict of module pattern -> style, not {requested!r}.")
    if not requested:
        return {}, {}
    merged = dict(family)
    merged.update(requested)
    return merged, dict(requested)


def check_styles(plan: Mapping[str, str]) -> None:
    bad = {p: s for p, s in plan.items() if s not in STYLES}
    if bad:
        lines = ", ".join(f"'{p}': '{s}'" for p, s in bad.items())
        raise TensorParallelError(f"Tensor-parallel plan entries with an unsupported style: {lines}. Supported styles: "
                         f"{', '.join(STYLES)}.")


def check_patterns(plan: Mapping[str, str], modules: Iterable[str], given: Mapping[str, str]) -> dict[str, str]:
    """Module name -> style for every module a pattern names. A pattern the user gave (`given`) that names no
    module is an error (a typo would otherwise leave the model whole); family patterns that name none here (a head
    the class lacks) are dropped."""
    modules = list(modules)
    out: dict[str, str] = {}
    unused = []
    for pattern, style in plan.items():
        regex = pattern_regex(pattern)
        hits = [m for m in modules if regex.fullmatch(m)]
        if not hits and pattern in given:
            unused.append(pattern)
        for m in hits:
            out.setdefault(m, style)
    if unused:
        raise TensorParallelError(
            f"Tensor-parallel plan entries name no module of the model: {', '.join(map(repr, unused))}. "
            f"Module names look like {', '.join(repr(m) for m in modules[1:4])}; '*' stands for one "
            "name segment (a layer index).")
    return out


def check_heads(config: Any, world: int) -> None:
    """Every head count of the config divides over `world` ranks (colwise q/k/v keep whole heads per rank)."""
    counts = {k: getattr(config, k) for k in HEAD_KEYS if isinstance(getattr(config, k, None), int)}
    bad = {k: v for k, v in counts.items() if v % world}
    if bad:
        shown = " and ".join(f"{k}={v}" for k, v in counts.items())
        raise TensorParallelError(f"Tensor parallelism over {world} ranks splits attention by heads, but {shown}: "
                         f"{', '.join(bad)} is not divisible by {world}. Run with a number of ranks that divides "
                         "every head count (e.g. --nproc-per-node 1, 2 or a common divisor).")


def local_range(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's equal part of `size` (size divisible by world)."""
    part = size // world
    return rank * part, (rank + 1) * part
