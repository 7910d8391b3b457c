"""Where each loaded tensor goes: one device, or its slice on every device of a `jax.sharding.Mesh`.

The partition plan is data, the PyTorch tensor-parallel plan's: a family's config declares `base_model_tp_plan`
(module pattern of the base model, "*" = any layer index -> "colwise" | "rowwise"), a task class may add `tp_plan`
(e.g. {"lm_head": "colwise_gather_output"}). In PyTorch terms a "colwise" Linear splits its output features (weight
dim 0, and the bias), a "rowwise" one its input features (weight dim 1; the bias is replicated). The Flax layout of
each parameter follows from the PyTorch one through the same permutation `convert.Slot` uses for loading, so one
plan serves both frameworks. Parameters the plan does not name are replicated.

With a mesh, each device's slice is read from the mapped checkpoint file and nothing else
(`jax.make_array_from_single_device_arrays`, each slice copied once from a view of the file, `_owned_copy`): no
device, and no host buffer, ever holds a whole sharded tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..distributed.plan import STYLES, split_dim, style_of  # the styles, shared with PyTorch tensor parallelism
from ..errors import ConfigError
from .convert import Slot


def partition_plan(model_cls: type, config: Any, has_prefix: bool) -> dict[str, str]:
    """The plan over the model's PyTorch module names: the config's `base_model_tp_plan` (under the base-model
    prefix when the model has one) and the class's own `tp_plan`."""
    plan: dict[str, str] = {}
    prefix = getattr(model_cls, "base_model_prefix", "")
    for pattern, style in (getattr(config, "base_model_tp_plan", None) or {}).items():
        plan[f"{prefix}.{pattern}" if has_prefix and prefix else pattern] = style
    plan.update(getattr(model_cls, "tp_plan", None) or {})
    for pattern, style in plan.items():
        if style not in STYLES:
            raise ConfigError(f"Partition plan entry '{pattern}': '{style}' is not a style we place (known: "
                              f"{', '.join(STYLES)}).")
    return plan


def _style(plan: Mapping[str, str], module: str) -> str | None:
    return style_of(plan, module)


def pytorch_spec(style: str | None, leaf: str, ndim: int) -> list[int | None]:
    """Which PyTorch dim of a module's `weight` / `bias` the style splits: [dim] or [] (replicated)."""
    dim = split_dim(style, leaf, ndim)
    return [] if dim is None else [dim]


def spec_for(slot: Slot, shape: tuple[int, ...], plan: Mapping[str, str], axis: str,
             axis_size: int) -> tuple[PartitionSpec, str | None]:
    """(PartitionSpec of the Flax parameter, a note when a planned split had to be dropped)."""
    module, _, leaf = slot.pytorch_name.rpartition(".")
    style = _style(plan, module)
    split = pytorch_spec(style, leaf, len(shape))
    if not split:
        return PartitionSpec(), None
    flax_dim = split[0] if slot.perm is None else slot.perm.index(split[0])
    if shape[flax_dim] % axis_size:
        return PartitionSpec(), (f"'{slot.pytorch_name}' ({style}): dim {shape[flax_dim]} does not divide over "
                                 f"{axis_size} devices")
    spec = [None] * len(shape)
    spec[flax_dim] = axis
    return PartitionSpec(*spec), None


def tp_axis(mesh: Mesh, axis: str | None) -> str:
    if axis is not None:
        if axis not in mesh.axis_names:
            raise ConfigError(f"mesh_axis='{axis}' is not an axis of the mesh (its axes: {mesh.axis_names}).")
        return axis
    if len(mesh.axis_names) == 1:
        return mesh.axis_names[0]
    for name in ("model", "tp", "mp"):
        if name in mesh.axis_names:
            return name
    raise ConfigError(f"The mesh has the axes {mesh.axis_names}; say which one splits the weights with "
                      "mesh_axis=... (or name it 'model').")


def mesh_placer(mesh: Mesh, plan: Mapping[str, str], axis: str | None, dtype: Any = None
                ) -> Callable[[Slot, np.ndarray], jax.Array]:
    """place(slot, view in the checkpoint's layout) -> the parameter as a jax.Array sharded over `mesh` by the
    plan, each device's slice read from `view` alone."""
    axis = tp_axis(mesh, axis)
    size = mesh.shape[axis]
    dropped: list[str] = []

    def place(slot: Slot, view: np.ndarray) -> jax.Array:
        arr = slot.to_flax(view)
        spec, note = spec_for(slot, arr.shape, plan, axis, size)
        if note:
            dropped.append(note)
            warnings.warn(f"Partition plan: {note}; it is replicated instead.", UserWarning, stacklevel=4)

        sharding = NamedSharding(mesh, spec)
        pieces = []
        for device, index in sharding.addressable_devices_indices_map(arr.shape).items():
            part = arr[index]
            if dtype is not None and part.dtype != dtype:
                part = part.astype(dtype)
            pieces.append(_owned_copy(part, device))
        return jax.block_until_ready(jax.make_array_from_single_device_arrays(arr.shape, sharding, pieces))

    place.dropped = dropped  # type: ignore[attr-defined]
    return place


def device_placer(device: Any = None, dtype: Any = None) -> Callable[[Slot, np.ndarray], jax.Array]:
    """place(slot, view of the mapped file) -> the parameter on one device, in memory of its own (`_owned_copy`),
    cast there when asked."""

    def place(slot: Slot, view: np.ndarray) -> jax.Array:
        x = _owned_copy(slot.to_flax(view), device)
        if dtype is not None and x.dtype != dtype:
            x = x.astype(dtype)
        return x.block_until_ready()

    return place


def _owned_copy(array: np.ndarray, device: Any) -> jax.Array:
    """`array` (a view of the mapped file, in the Flax layout) copied once into memory the parameter owns. A strided
    view (a transposed kernel) is copied by the runtime, which on the CPU transposes in one cache-blocked pass (a
    5632 x 2048 bf16 kernel: ~8 ms, against ~50 ms for a compiled `jnp.transpose` of a copy). A contiguous one is
    copied here into 64-byte-aligned memory, which JAX on the CPU adopts as it is: handed the view itself, JAX would
    adopt the file's pages whenever they happen to be aligned (`may_alias=False` does not stop it for numpy input),
    tying the parameter to the file."""
    if array.flags.c_contiguous:
        raw = np.empty(array.nbytes + 64, np.uint8)
        skip = (-raw.ctypes.data) % 64
        owned = raw[skip:skip + array.nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(owned, array)
        array = owned
    return jax.device_put(array, device)


def bytes_per_device(params: Any) -> dict[Any, int]:
    """{device: bytes of parameters it holds} (replicated parameters count on every device)."""
    out: dict[Any, int] = {}
    for leaf in jax.tree_util.tree_leaves(params):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out
