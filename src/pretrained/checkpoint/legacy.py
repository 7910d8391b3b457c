"""TensorFlow and Flax checkpoints read by the PyTorch classes, without TensorFlow, Keras, JAX or Flax.

`from_pretrained(..., from_tf=True)` reads 4.x's `tf_model.h5` (one file, or `tf_model-0000i-of-0000n.h5` + its
index) with h5py (`checkpoint/h5.py`) and TensorFlow 1 checkpoints (`model.ckpt.index` + `.data-*`) with our own
tensor-bundle reader (`checkpoint/tf1.py`); `from_flax=True` reads `flax_model.msgpack` (one file, or shards + index)
with our msgpack walker (`flax/msgpack.py`). `LegacyReader` presents any of them the way `CheckpointReader` presents
safetensors — PyTorch names, PyTorch shapes, torch dtypes — so `modeling/loading.py`'s `load_into` streams them into
the meta skeleton like any checkpoint: same key mapping, shape checks, coverage rules and report.

Names and layouts come from the one mapping per family that the TF and Flax classes use the other way round
(`tf/convert.py`, `flax/convert.py`, plus a family's exceptions as data in `models/<family>/key_rules.py`): every
stored weight names exactly one PyTorch tensor. Each tensor is read once: a view of the mapped file (nothing read
until used), laid out as PyTorch wants it (transposed, squeezed) as a view, then copied once into a new tensor of the
destination dtype, and the file's pages are given back before the next tensor, so the peak stays near one copy of
the parameters.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError, HubError
from .files import CheckpointFiles, find_single_or_index
from .reader import TensorInfo

logger = logging.getLogger("pretrained")

TF_WEIGHTS = "tf_model.h5"
TF_INDEX = "tf_model.h5.index.json"
FLAX_WEIGHTS = "flax_model.msgpack"
FLAX_INDEX = "flax_model.msgpack.index.json"
TF1_SUFFIX = ".index"

# TF 1 training checkpoints carry optimizer state and counters next to the weights: never weights of a model.
TF1_SKIPPED = re.compile(r"(^|/)(adam_[mv]|Adam(_\d+)?|AdamWeightDecayOptimizer(_\d+)?|Momentum|global_step|"
                         r"bad_steps|good_steps|loss_scale|current_loss_scale|beta[12]_power)(/|$)")

_TORCH_DTYPES = {np.dtype(k): v for k, v in {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "int64": torch.int64,
    "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}.items()}
_RAW_VIEW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def torch_dtype(dtype: np.dtype, path: str, name: str) -> torch.dtype:
    """The torch dtype of a numpy dtype (bfloat16 and float8 from ml_dtypes by name)."""
    dtype = np.dtype(dtype)
    found = _TORCH_DTYPES.get(dtype)
    if found is None:
        found = {"bfloat16": torch.bfloat16, "float8_e4m3fn": getattr(torch, "float8_e4m3fn", None),
                 "float8_e5m2": getattr(torch, "float8_e5m2", None)}.get(dtype.name)
    if found is None:
        raise CheckpointError(f"'{path}': weight '{name}' has the dtype {dtype}, which has no torch equivalent that "
                              "pretrained reads. Convert the checkpoint to float32, float16 or bfloat16.")
    return found


def _as_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A torch view of a numpy array (any strides), of torch dtype `dtype`: types numpy lacks (bfloat16, float8)
    go through an unsigned integer view of the same width."""
    if dtype in (torch.bfloat16,) or str(dtype).startswith("torch.float8"):
        array = array.view(_RAW_VIEW[array.dtype.itemsize])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only mapping: only ever read from
            return torch.from_numpy(array).view(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


# ---- the family's rules, as data -------------------------------------------------------------------------------
def family_rules(model_type: str | None, kind: str):
    """A family's exceptions for `kind` ("tf", "flax" or "tf1") from `models/<model_type>/key_rules.py` (data only,
    no framework), as the rule objects of `tf/convert.py` / `flax/convert.py`."""
    from ..flax.convert import KeyRules
    from ..tf.convert import TFKeyRules

    data = None
    if model_type and re.fullmatch(r"[a-z0-9_]+", model_type):
        try:
            module = importlib.import_module(f"pretrained.models.{model_type}.key_rules")
        except ModuleNotFoundError as e:
            if e.name != f"pretrained.models.{model_type}.key_rules":
                raise
            module = None
        data = getattr(module, {"tf": "TF_KEY_RULES", "flax": "FLAX_KEY_RULES", "tf1": "TF1_KEY_RULES"}[kind], None)
    return KeyRules.of(data) if kind == "flax" else TFKeyRules.of(data)


# ---- finding the files -----------------------------------------------------------------------------------------
def _tf1_prefix(path: str) -> str | None:
    """The checkpoint prefix of a TF 1 checkpoint named by its `.index` file or by its prefix; None otherwise."""
    if path.endswith(TF1_SUFFIX) and os.path.isfile(path):
        return path[: -len(TF1_SUFFIX)]
    if not os.path.exists(path) and os.path.isfile(path + TF1_SUFFIX):
        return path
    return None


def _tf1_in_folder(folder: str) -> str | None:
    """The one TF 1 checkpoint in a local folder (Google's `bert_model.ckpt.index`), if there is exactly one."""
    found = sorted(n for n in os.listdir(folder) if n.endswith(".ckpt" + TF1_SUFFIX) or n == "model.ckpt.index")
    return os.path.join(folder, found[0][: -len(TF1_SUFFIX)]) if len(found) == 1 else None


def find_legacy_files(source: str | os.PathLike, kind: str, hub: dict) -> CheckpointFiles | None:
    """The TensorFlow (`kind` "tf": h5, then a TF 1 checkpoint in a local folder) or Flax ("flax") weight files of a
    file, folder or Hub repo; None when there are none. Formats: "h5", "tf1", "msgpack"."""
    source = os.fspath(source)
    if kind == "tf":
        prefix = _tf1_prefix(source)
        if prefix is not None:
            return CheckpointFiles("tf1", [prefix])
        if os.path.isfile(source):
            return CheckpointFiles("h5", [source]) if source.endswith(".h5") else None
    elif os.path.isfile(source):
        return CheckpointFiles("msgpack", [source]) if source.endswith(".msgpack") else None
    single, index, fmt = (TF_WEIGHTS, TF_INDEX, "h5") if kind == "tf" else (FLAX_WEIGHTS, FLAX_INDEX, "msgpack")
    found = find_single_or_index(source, single, index, fmt, hub)
    if found is not None:
        return found
    if kind == "tf" and os.path.isdir(source):
        folder = os.path.join(source, hub.get("subfolder") or "")
        prefix = _tf1_in_folder(folder) if os.path.isdir(folder) else None
        if prefix is not None:
            return CheckpointFiles("tf1", [prefix])
    return None


def open_legacy(source: str | os.PathLike, model_type: str | None, *, from_tf: bool = False, from_flax: bool = False,
                hub: dict | None = None) -> LegacyReader:
    """`from_pretrained(..., from_tf=True / from_flax=True)`: the reader over the source's TF or Flax weights; a
    CheckpointNotFoundError saying what was looked for when there are none."""
    hub = dict(hub or {})
    kind = "tf" if from_tf else "flax"
    files = find_legacy_files(source, kind, hub)
    if files is None:
        looked = (f"{TF_WEIGHTS}, {TF_INDEX} or a TensorFlow 1 checkpoint (*.ckpt.index)" if from_tf
                  else f"{FLAX_WEIGHTS} or {FLAX_INDEX}")
        flag = "from_tf=True" if from_tf else "from_flax=True"
        raise CheckpointNotFoundError(
            f"{flag} was given, but '{os.fspath(source)}' holds no {looked}. Drop {flag} to load PyTorch weights "
            "(model.safetensors), or check the path and the revision.")
    return LegacyReader(files, model_type)


def open_legacy_fallback(source: str | os.PathLike, model_type: str | None, hub: dict) -> LegacyReader | None:
    """A folder or repo without PyTorch weights: its TensorFlow or Flax weights when it holds only those (logged,
    with the command that converts them once); None when it holds neither."""
    if os.path.isfile(os.fspath(source)):
        return None
    for kind, flag in (("tf", "from_tf"), ("flax", "from_flax")):
        try:
            files = find_legacy_files(source, kind, dict(hub))
        except HubError:  # the Hub cannot be asked now: the PyTorch lookup's own error stands
            return None
        if files is not None and files.format != "tf1":
            shown = files.index_path or files.files[0]
            logger.warning(
                "'%s' holds no PyTorch weights; loading its %s weights from '%s' (as with %s=True). To load faster "
                "next time, convert them once: pretrained convert %s <folder>", os.fspath(source),
                "TensorFlow" if kind == "tf" else "Flax", shown, flag, os.fspath(source))
            return LegacyReader(files, model_type)
    return None


# ---- the reader ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """How one PyTorch tensor is made from one stored array: `layout` turns the stored (numpy) array into the
    PyTorch layout, as a view."""

    stored: str
    layout: Callable[[np.ndarray], np.ndarray]


class LegacyReader:
    """A TensorFlow (h5, TF 1) or Flax (msgpack) checkpoint seen as PyTorch names and tensors: the interface of
    `CheckpointReader` (`infos`, `iter_tensors`, `format`, `paths`, `first_floating_dtype`). `infos` carry PyTorch
    shapes and the stored dtypes; `stored_name(name)` gives the name a tensor has in the file."""

    def __init__(self, files: CheckpointFiles, model_type: str | None) -> None:
        self.format = files.format
        self.files = files
        self.metadata: dict[str, dict[str, str]] = {}
        weight_map = files.weight_map or None
        if files.format == "h5":
            from .h5 import H5CheckpointReader

            self._source = H5CheckpointReader(files.files, weight_map, files.index_path)
        elif files.format == "msgpack":
            from ..flax.msgpack import MsgpackReader

            self._source = MsgpackReader(files.files, weight_map, files.index_path)
        elif files.format == "tf1":
            from .tf1 import TF1CheckpointReader

            self._source = TF1CheckpointReader(files.files[0])
        else:
            raise ValueError(f"Unknown legacy checkpoint format {files.format!r}.")
        self.paths = list(self._source.paths)
        # 4.57's Flax save writes "dtype": "float32" into config.json whatever the parameters' dtype (it is the
        # computation dtype there): the weights, not that config value, say which dtype "auto" keeps.
        self.dtype_from_weights = files.format == "msgpack"
        self.infos: dict[str, TensorInfo] = {}
        self._sources: dict[str, _Source] = {}
        self.skipped: list[str] = []
        self._map_names(model_type)

    def _map_names(self, model_type: str | None) -> None:
        if self.format == "msgpack":
            from ..flax.convert import slot as flax_slot

            rules = family_rules(model_type, "flax")

            def one(name: str, shape: tuple[int, ...]):
                sl = flax_slot(tuple(name.split("/")), len(shape), rules)
                return sl.pytorch_name, sl.to_pytorch, sl.pytorch_shape(shape)
        else:
            from ..tf.convert import slot as tf_slot

            rules = family_rules(model_type, "tf1" if self.format == "tf1" else "tf")

            def one(name: str, shape: tuple[int, ...]):
                path = name
                if self.format == "tf1":  # Google's "layer_3" is 4.x's Keras "layer_._3"
                    path = re.sub(r"(?<=/)layer_(\d+)(?=/)", r"layer_._\1", name)
                sl = tf_slot(path, shape, rules)
                return sl.pytorch_name, sl.to_pytorch, sl.pytorch_shape

        for stored in self._source.names_on_disk():
            entry = self._source.infos[stored]
            if self.format == "tf1" and TF1_SKIPPED.search(stored):
                self.skipped.append(stored)
                continue
            name, layout, shape = one(stored, tuple(entry.shape))
            if name in self.infos:
                raise CorruptCheckpointError(
                    f"'{entry.path}': the weights '{self._sources[name].stored}' and '{stored}' both name the PyTorch "
                    f"tensor '{name}'. The checkpoint is damaged or from another model; re-download or re-save it.")
            dtype = torch_dtype(entry.dtype, entry.path, stored)
            start = getattr(entry, "start", 0) or 0
            self.infos[name] = TensorInfo(name, dtype, tuple(int(d) for d in shape), entry.path, start, entry.nbytes)
            self._sources[name] = _Source(stored, layout)

    def stored_name(self, name: str) -> str:
        """The name a PyTorch tensor has in the file ("bert/encoder/layer_._0/.../kernel:0")."""
        return self._sources[name].stored

    def first_floating_dtype(self) -> torch.dtype | None:
        for info in self.infos.values():
            if info.dtype.is_floating_point:
                return info.dtype
        return None

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, in the PyTorch layout, as a new tensor of `dtype` (default: the stored one)."""
        return self._read(name, dtype or self.infos[name].dtype)

    def _read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        info, src = self.infos[name], self._sources[name]
        try:
            array = src.layout(self._source.array(src.stored))
        except CheckpointError:
            raise
        except (OSError, ValueError) as e:  # the file changed or is damaged where its header did not say
            raise CorruptCheckpointError(
                f"'{info.path}': weight '{src.stored}' cannot be read ({type(e).__name__}: {e}). Re-download or "
                "re-save the checkpoint.") from e
        view = _as_torch(array, info.dtype)
        if tuple(view.shape) != info.shape:
            raise CorruptCheckpointError(f"'{info.path}': weight '{src.stored}' has the shape {list(view.shape)}, "
                                         f"not {list(info.shape)}. Re-download or re-save the checkpoint.")
        out = torch.empty(info.shape, dtype=dtype)
        out.copy_(view)  # the one read: layout and dtype in one pass
        del view, array
        self._source.release(src.stored)
        return out

    def iter_tensors(self, names: set[str] | None = None,
                     dtypes: dict[str, torch.dtype] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield `(PyTorch name, tensor)` in on-disk order, each a new tensor in `dtypes[name]` (default: stored)."""
        dtypes = dtypes or {}
        try:
            for name in self.infos:
                if names is None or name in names:
                    yield name, self._read(name, dtypes.get(name, self.infos[name].dtype))
        finally:
            self.close()

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> LegacyReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- load_tf_weights: into a model that already exists ------------------------------------------------------------
def load_tf_weights(model: Any, config: Any, path: str | os.PathLike) -> Any:
    """Load TensorFlow weights into the PyTorch `model` (built with `config`), without TensorFlow: a TF 1 checkpoint
    (`.../model.ckpt.index`, or its prefix `.../model.ckpt`, or a folder holding one `*.ckpt.index`) or a 4.x
    `tf_model.h5`. Names map as for `from_pretrained(..., from_tf=True)`; optimizer slots (`adam_m`, `adam_v`) and
    `global_step` are skipped; weights the checkpoint lacks keep their values; shapes are checked before anything is
    read. Returns the model (its report in `model.loading_info`). The class attribute `load_tf_weights` of the BERT
    classes, as the reference documents it."""
    from ..modeling.loading import load_into

    files = find_legacy_files(path, "tf", {})
    if files is None:
        raise CheckpointNotFoundError(
            f"'{os.fspath(path)}' is no TensorFlow checkpoint: give the '.index' file of a TF 1 checkpoint (or its "
            f"prefix, e.g. 'bert_model.ckpt'), or a {TF_WEIGHTS}.")
    reader = LegacyReader(files, getattr(config, "model_type", None) or getattr(model.config, "model_type", None))
    device = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
    model.loading_info = load_into(model, reader, device=device)
    return model
