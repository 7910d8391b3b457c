"""`tf_model.h5` files, as the 4.x TensorFlow classes wrote them, read and written with numpy and h5py only (never
TensorFlow: issue 19 lets PyTorch read these files through this module).

The formats (facts measured with transformers 4.57.6 and tf-keras 2.21):

One file, `tf_model.h5`: Keras 2's `save_weights` layout. The root attribute `layer_names` lists the model's
top-level layers (weightless ones such as `dropout_37` too); each has a group of that name whose attribute
`weight_names` lists the full names of the layer's weights, e.g.
`tf_bert_for_masked_lm/bert/encoder/layer_._0/intermediate/dense/kernel:0` (the first component is the model's own
Keras name), and each weight is the dataset at that name inside the group (`/bert/tf_bert_for_masked_lm/bert/...`,
nested groups). A weight shared by two layers (BERT's tied decoder) is listed, and stored, in both groups. A list
attribute longer than HDF5's 64 KB header limit is split into `weight_names0`, `weight_names1`, ...; an empty one is
an empty float64 array. The root also carries `backend` and `keras_version`, and an empty `top_level_model_weights`
group.

Sharded: `tf_model-0000i-of-0000n.h5` + `tf_model.h5.index.json`. Each shard holds its weights as datasets at the
root, at the weight name without its first component (`model/layers.0/self_attn/q_proj/kernel:0`; 4.x kept the full
name when it contains "model." or has one component), and a root attribute `layer_names` listing those names. The
index's `weight_map` keys are the full names (`tf_mistral_for_causal_lm/model/...:0`), its metadata `total_size`.

Names handed out here are the 4.x weight names without the model's own first component, `:0` kept
(`model/layers.0/self_attn/q_proj/kernel:0`): the name 4.x's loaders match on, the same for both layouts and for any
model instance name (`tf_mistral_for_causal_lm_1/...`). Arrays are numpy views of the mapped file where the dataset
is stored contiguously and uncompressed (what Keras writes), so reading costs nothing until the bytes are used;
anything else is read through h5py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError, CorruptCheckpointError
from .files import CheckpointFiles, check_index, find_single_or_index
from .numpy_reader import MappedFiles
from .shards import DEFAULT_MAX_SHARD_SIZE

TF_WEIGHTS = "tf_model.h5"
TF_INDEX = "tf_model.h5.index.json"
HDF5_OBJECT_HEADER_LIMIT = 64512  # bytes an attribute may hold (Keras 2 splits longer lists into numbered chunks)
KERAS2_ATTRS = {"backend": "tensorflow", "keras_version": "2.21.0"}  # the layout written here is Keras 2's
_FIX = "Re-download the checkpoint, or re-save it."
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise CheckpointError(
            "Reading or writing tf_model.h5 files needs h5py: pip install h5py (or pretrained[tf]).") from e
    return h5py


def relative_name(name: str) -> str:
    """A 4.x weight name without the model's own first component ("tf_x/model/norm/weight:0" ->
    "model/norm/weight:0"); a one-component name stays as it is."""
    head, sep, rest = name.partition("/")
    return rest if sep else name


def shard_dataset_name(full_name: str) -> str:
    """Where 4.x's sharded save puts a weight in its shard: the name without its first component, unless the name
    contains "model." or has one component (then the full name)."""
    return full_name if "model." in full_name or "/" not in full_name else relative_name(full_name)


def _strings(values: Any) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def read_list_attribute(obj: Any, name: str) -> list[str] | None:
    """A list attribute as Keras 2 writes it (one attribute, or chunks `name0`, `name1`, ...); None if absent."""
    if name in obj.attrs:
        return _strings(obj.attrs[name])
    if f"{name}0" not in obj.attrs:
        return None
    out, i = [], 0
    while f"{name}{i}" in obj.attrs:
        out += _strings(obj.attrs[f"{name}{i}"])
        i += 1
    return out


def write_list_attribute(obj: Any, name: str, values: Sequence[str]) -> None:
    """Write a list of names as Keras 2 does: variable-length strings, split into `name0`, `name1`, ... when the
    list is larger than HDF5's header limit; an empty list is an empty float64 array (what Keras writes)."""
    h5py = _h5py()
    values = list(values)
    if not values:
        obj.attrs[name] = np.zeros((0,), np.float64)
        return
    encoded = [v.encode("utf8") for v in values]
    too_long = [v for v in values if len(v.encode("utf8")) > HDF5_OBJECT_HEADER_LIMIT]
    if too_long:
        raise ValueError(f"The name {too_long[0][:80]!r}... is longer than HDF5's attribute limit "
                         f"({HDF5_OBJECT_HEADER_LIMIT} bytes); it cannot be stored in a tf_model.h5.")
    width = max(len(v) for v in encoded)
    chunks = 1
    while -(-len(values) // chunks) * width > HDF5_OBJECT_HEADER_LIMIT:
        chunks += 1
    dtype = h5py.string_dtype("ascii" if all(v.isascii() for v in values) else "utf-8")
    if chunks == 1:
        obj.attrs.create(name, np.array(values, dtype=object), dtype=dtype)
        return
    for i, part in enumerate(np.array_split(np.array(values, dtype=object), chunks)):
        obj.attrs.create(f"{name}{i}", part, dtype=dtype)


# ---- reading ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class H5Entry:
    """One weight of an h5 checkpoint: its dtype, shape, file, dataset path and, when the dataset is stored as one
    contiguous uncompressed block, where its bytes are (`start` None: read through h5py)."""

    name: str  # 4.x weight name without the model's own first component ("model/norm/weight:0")
    dtype: np.dtype
    shape: tuple[int, ...]
    path: str
    dataset: str  # absolute path of the dataset inside the file
    start: int | None
    nbytes: int
    layer: str | None = None  # the top-level layer group (one-file layout); None in a shard


def _open(path: str):
    """An h5py.File for reading, or a CorruptCheckpointError naming the file and what it is instead."""
    h5py = _h5py()
    try:
        with open(path, "rb") as f:
            head = f.read(200)
    except OSError as e:
        raise CorruptCheckpointError(f"'{path}' cannot be read ({e.strerror or e}). {_FIX}") from e
    if head.startswith(b"version https://git-lfs"):
        raise CorruptCheckpointError(
            f"'{path}' is a git-lfs pointer, not the weights: the repository was cloned without git-lfs. Run "
            "`git lfs install && git lfs pull` in it, or download the file again.")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        what = "not an HDF5 file" if not head.startswith(_SIGNATURE) else f"an unreadable HDF5 file ({e})"
        raise CorruptCheckpointError(f"'{path}' is {what}, so not a tf_model.h5 (truncated or damaged?). "
                                     f"{_FIX}") from e


class H5CheckpointReader:
    """The weights of one h5 checkpoint (one Keras 2 `save_weights` file, or 4.x's shards + index) as numpy arrays.

    `infos` maps every weight (4.x name without the model's first component) to an `H5Entry`; `model_name` is
    the model's own Keras name the file was written with ("tf_mistral_for_causal_lm"), when the file says it;
    `layers` lists the top-level layers of a one-file checkpoint with the names of their weights. Every defect
    raises a CorruptCheckpointError naming the file (and the weight).
    """

    format = "h5"

    def __init__(self, paths: Sequence[str], weight_map: Mapping[str, str] | None = None,
                 index_path: str | None = None) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.infos: dict[str, H5Entry] = {}
        self.layers: list[tuple[str, list[str]]] = []
        self.model_name: str | None = None
        for path in self.paths:
            self._scan(path)
        if weight_map is not None:
            if self.model_name is None:
                self.model_name = next((k.split("/", 1)[0] for k in weight_map if "/" in k), None)
            index = {relative_name(k): v for k, v in weight_map.items()}
            check_index(index_path or "the index", index, {n: e.path for n, e in self.infos.items()})
        self._files = MappedFiles()
        self._open_files: dict[str, Any] = {}

    def _scan(self, path: str) -> None:
        size = os.path.getsize(path)
        with _open(path) as f:
            names = read_list_attribute(f, "layer_names")
            if names is None:
                raise CorruptCheckpointError(
                    f"'{path}' is an HDF5 file without the root attribute 'layer_names', so not a tf_model.h5 as "
                    f"Keras 2 / transformers 4.x write it. {_FIX}")
            for layer in names:
                obj = f.get(layer)
                if obj is None:
                    raise CorruptCheckpointError(
                        f"'{path}' lists '{layer}' in its 'layer_names' but holds no group or dataset of that name. "
                        f"{_FIX}")
                if isinstance(obj, _h5py().Dataset):  # a 4.x shard: the weight itself
                    self._add(path, size, shard_name_to_relative(layer), obj, None)
                    continue
                weights = read_list_attribute(obj, "weight_names")
                if weights is None:
                    raise CorruptCheckpointError(
                        f"'{path}': the layer group '{layer}' has no 'weight_names' attribute. {_FIX}")
                self.layers.append((layer, [relative_name(w) for w in weights]))
                for full in weights:
                    if self.model_name is None and "/" in full:
                        self.model_name = full.split("/", 1)[0]
                    ds = obj.get(full)
                    if not isinstance(ds, _h5py().Dataset):
                        raise CorruptCheckpointError(
                            f"'{path}': the layer '{layer}' lists the weight '{full}' but holds no dataset of that "
                            f"name. {_FIX}")
                    self._add(path, size, relative_name(full), ds, layer)

    def _add(self, path: str, size: int, name: str, ds: Any, layer: str | None) -> None:
        dtype = ds.dtype
        if dtype.kind not in "fiub" or dtype.names is not None:
            raise CheckpointError(f"'{path}': weight '{name}' has the dtype {dtype}, which is not a numeric array "
                                  "type a model weight can have. Re-save the checkpoint.")
        shape = tuple(int(d) for d in ds.shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if name in self.infos:
            first = self.infos[name]
            if first.shape != shape:  # a weight two layers share is stored twice: the copies must agree
                raise CorruptCheckpointError(
                    f"'{path}': weight '{name}' is stored twice with different shapes ({list(first.shape)} in "
                    f"'{first.dataset}', {list(shape)} in '{ds.name}'). {_FIX}")
            return
        start = None
        plain = (ds.chunks is None and ds.compression is None and dtype.byteorder in "<=|"
                 and ds.id.get_create_plist().get_nfilters() == 0)
        if plain and nbytes:
            offset = ds.id.get_offset()
            if offset is not None:
                if offset + nbytes > size:
                    raise CorruptCheckpointError(
                        f"'{path}': weight '{name}' ends at byte {offset + nbytes} but the file has {size} bytes "
                        f"(truncated?). {_FIX}")
                start = int(offset)
        self.infos[name] = H5Entry(name, np.dtype(dtype).newbyteorder("="), shape, path, ds.name, start, nbytes,
                                   layer)

    def saved_format(self) -> str:
        return "tf"

    def array(self, name: str) -> np.ndarray:
        """The weight `name` as a numpy array: a read-only view of the mapped file when stored plainly."""
        info = self.infos[name]
        if info.start is not None:
            return self._files.view(info.path, info.start, info.nbytes, info.dtype, info.shape)
        f = self._open_files.get(info.path)
        if f is None:
            f = self._open_files[info.path] = _open(info.path)
        try:
            return np.asarray(f[info.dataset][()], dtype=info.dtype)
        except (OSError, ValueError) as e:
            raise CorruptCheckpointError(f"'{info.path}': weight '{name}' cannot be read ({e}). {_FIX}") from e

    def release(self, name: str) -> None:
        info = self.infos[name]
        if info.start is not None:
            self._files.release(info.path, info.start, info.nbytes)

    def names_on_disk(self) -> list[str]:
        """Every weight name, file by file in on-disk order."""
        order = {p: i for i, p in enumerate(self.paths)}
        return sorted(self.infos, key=lambda n: (order[self.infos[n].path], self.infos[n].start or 0))

    def close(self) -> None:
        for f in self._open_files.values():
            f.close()
        self._open_files.clear()
        self._files.close()


def shard_name_to_relative(name: str) -> str:
    """The name of a dataset in a 4.x shard, without the model's first component (see `shard_dataset_name`)."""
    return relative_name(name) if "model." in name and "/" in name else name


def read_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every weight of one h5 file as a numpy array (copies), by name without the model's first component."""
    reader = H5CheckpointReader([os.fspath(path)])
    try:
        return {name: np.array(reader.array(name)) for name in reader.names_on_disk()}
    finally:
        reader.close()


# ---- writing ---------------------------------------------------------------------------------------------------
def _storable(name: str, array: Any) -> np.ndarray:
    """The array as HDF5 stores it: bfloat16 / float8 (which HDF5 and Keras 2 have no type for) become float32."""
    a = np.asarray(array)
    if a.dtype.kind == "V" or a.dtype.name in ("bfloat16",) or a.dtype.name.startswith("float8"):
        return a.astype(np.float32)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"Weight '{name}' has the dtype {a.dtype}, which a tf_model.h5 cannot store.")
    return a


def write_h5(path: str | os.PathLike, layers: Sequence[tuple[str, Sequence[str]]],
             arrays: Mapping[str, Any]) -> None:
    """Write one `tf_model.h5` in Keras 2's `save_weights` layout: `layers` is [(top-level layer name, [full weight
    names])] in the model's order (weightless layers with an empty list), `arrays` maps every full weight name to
    its array (Keras layout). A weight listed under two layers is stored in both groups, as Keras does."""
    h5py = _h5py()
    with h5py.File(os.fspath(path), "w") as f:
        write_list_attribute(f, "layer_names", [name for name, _ in layers])
        for key, value in KERAS2_ATTRS.items():
            f.attrs[key] = value
        for layer, names in layers:
            group = f.create_group(layer)
            write_list_attribute(group, "weight_names", names)
            for name in names:
                a = _storable(name, arrays[name])
                group.create_dataset(name, data=a)
        if "top_level_model_weights" not in f:
            write_list_attribute(f.create_group("top_level_model_weights"), "weight_names", [])


def write_h5_shard(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write one shard of a sharded h5 checkpoint as 4.x does: each weight (full name) as a dataset at the root at
    `shard_dataset_name`, listed in the root attribute `layer_names` (sorted)."""
    h5py = _h5py()
    with h5py.File(os.fspath(path), "w") as f:
        names = []
        for full in sorted(arrays):
            name = shard_dataset_name(full)
            f.create_dataset(name, data=_storable(full, arrays[full]))
            names.append(name)
        write_list_attribute(f, "layer_names", names)


def save_h5(folder: str | os.PathLike, layers: Sequence[tuple[str, Sequence[str]]], arrays: Mapping[str, Any], *,
            max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, extra_files: Mapping[str, str] | None = None,
            remove: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Write a model's weights as 4.x did, in one atomic commit with `extra_files` (see `numpy_writer.save_arrays`):
    `tf_model.h5` when they fit in `max_shard_size`, else shards + `tf_model.h5.index.json` (keys the full names,
    sorted, metadata `total_size`). `arrays`: full 4.x weight name -> array-like (converted one shard at a time)."""
    import json

    from .numpy_writer import save_arrays

    def write(path: str, shard: dict[str, np.ndarray]) -> None:
        if os.path.basename(path) == TF_WEIGHTS:
            write_h5(path, layers, shard)
        else:
            write_h5_shard(path, shard)

    return save_arrays(folder, arrays, write, weights_name=TF_WEIGHTS, index_name=TF_INDEX,
                       max_shard_size=max_shard_size, extra_files=extra_files, remove=list(remove),
                       total_parameters=False,
                       index_json=lambda index: json.dumps(index, indent=2, sort_keys=True) + "\n")


# ---- finding ---------------------------------------------------------------------------------------------------
def find_h5_checkpoint(name_or_path: str | os.PathLike, resolve: Callable[..., str | None],
                       hub: Mapping[str, Any]) -> CheckpointFiles | None:
    """`tf_model.h5`, or `tf_model.h5.index.json` and its shards, of a folder or repo (format "h5"); None if it has
    neither. `resolve(source, filename, required=False, **hub)` finds one file (`hub.resolve.resolve_file`). A shard
    the index names but the folder lacks raises a CorruptCheckpointError naming the shard and the index."""
    return find_single_or_index(name_or_path, TF_WEIGHTS, TF_INDEX, "h5", hub, resolve)


def open_h5(files: CheckpointFiles) -> H5CheckpointReader:
    return H5CheckpointReader(files.files, files.weight_map or None, files.index_path)


__all__ = ["H5CheckpointReader", "H5Entry", "TF_INDEX", "TF_WEIGHTS", "find_h5_checkpoint", "open_h5", "read_h5",
           "read_list_attribute", "relative_name", "save_h5", "shard_dataset_name", "write_h5", "write_h5_shard",
           "write_list_attribute"]
