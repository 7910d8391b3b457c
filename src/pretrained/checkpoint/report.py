"""`LoadingInfo`: what a load did, the same report for every framework (`output_loading_info=True` hands it over
as a dict). Framework-neutral."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoadingInfo:
    """missing_keys: the model's parameters the checkpoint lacked (initialised afresh; names as the model spells
    them: "model.norm.weight", or Flax paths "model/norm/weight"); unexpected_keys: checkpoint tensors that meet no
    parameter (as the checkpoint spells them); mismatched_keys: (model name, checkpoint shape, model shape) of
    tensors skipped with `ignore_mismatched_sizes=True`."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, ckpt, model shapes)
    error_msgs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        return {"missing_keys": self.missing_keys, "unexpected_keys": self.unexpected_keys,
                "mismatched_keys": self.mismatched_keys, "error_msgs": self.error_msgs}
