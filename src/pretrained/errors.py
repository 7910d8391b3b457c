"""Every exception the library raises.

Each error says what went wrong, where (file, tensor, key) and how to fix it. They subclass the built-in
exception a caller would most likely already catch (``OSError`` for files, ``ValueError`` for bad values,
``KeyError`` for lookups), so code written against the reference library keeps working.
"""

from __future__ import annotations


class PretrainedError(Exception):
    """Base class of every error raised by `pretrained`."""


class ConfigError(PretrainedError, ValueError):
    """A configuration is malformed or inconsistent (names the file or the key)."""


class UnknownModelTypeError(ConfigError, KeyError):
    """A `model_type` (or a config class) that no registered family handles."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(PretrainedError, OSError):
    """A checkpoint on disk is missing, incomplete or corrupt."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A folder or repo holds no weights (or no config) in any format we read."""


class CorruptCheckpointError(CheckpointError):
    """A weights file is truncated, has a bad header, or disagrees with its index."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint carries code or objects that safe loading refuses to run."""


class SaveInterruptedError(CheckpointError):
    """A save into this folder was interrupted before it completed."""


class UnsafePathError(CorruptCheckpointError):
    """A file name read from a file (the save record `.pretrained-save.json`, an index's `weight_map`, a Hub file
    name) is not a plain name inside its folder: absolute, with `..`, a separator, a NUL, or not of the form our
    writer makes. Raised before anything is read, renamed or deleted."""


class ShapeMismatchError(PretrainedError, RuntimeError):
    """Tensors in the checkpoint do not fit the model's parameters."""


class LoadingError(PretrainedError, RuntimeError):
    """A checkpoint could not be loaded into a model (strict loading, wrong family, ...)."""


class DtypeError(PretrainedError, ValueError):
    """A dtype argument that is not a torch dtype, a dtype name, or "auto"."""


class DeviceMapError(PretrainedError, ValueError):
    """A device map or memory budget that cannot be honoured (names the module or device and how to fix)."""


class HubError(PretrainedError, OSError):
    """The Hub could not give what was asked (names the repo, revision and file, and what to do)."""


class RepoNotFoundError(HubError, CheckpointNotFoundError):
    """No repo of that id that this token can see (it does not exist, or it is private)."""


class GatedRepoError(RepoNotFoundError):
    """A gated or private repo refused access: no token, a wrong token, or access not yet granted."""


class RevisionNotFoundError(HubError, CheckpointNotFoundError):
    """The repo exists but has no branch, tag or commit of that name."""


class RepoFileNotFoundError(HubError, CheckpointNotFoundError):
    """The repo and revision exist but hold no file of that name."""


class OfflineError(HubError, CheckpointNotFoundError):
    """The Hub cannot be asked (offline mode, `local_files_only=True`, no connection, server down) and the file
    is not in the local cache."""


class HubPermissionError(HubError, PermissionError):
    """The token may not write to that repo (pushing needs a write token with access to the namespace)."""


class RemoteCodeError(PretrainedError, ValueError):
    """Custom code that comes with a checkpoint (`auto_map`) cannot be used: a malformed entry, a missing file, a
    relative import that leaves the repo's folder, or a class whose code cannot be saved."""


class UntrustedCodeError(RemoteCodeError):
    """A checkpoint needs its own code and `trust_remote_code=True` was not given (names the repo and files)."""


class MissingDependencyError(RemoteCodeError, ImportError):
    """A checkpoint's custom code imports a package that is not installed (names the `pip install` to run)."""


class QuantizationError(PretrainedError, ValueError):
    """A quantization request or a quantized checkpoint that cannot be honoured: an unknown `quant_method` (names it
    and the supported ones), a malformed `quantization_config`, a layer whose shape the kernel cannot take (names the
    layer and why), or a device without the kernel."""


class QuantizationLibraryError(QuantizationError, ImportError):
    """A quantization method runs on a library that is not installed (bitsandbytes): names the `pip install`."""


class TensorParallelError(PretrainedError, ValueError):
    """A tensor-parallel load that cannot split as asked: head counts or a split dimension not divisible by the
    world size (names both numbers), a plan entry naming no module or an unsupported style, tp_size against the
    world size, or tp_plan with a device_map. Raised alike on every rank, before any rendezvous or read."""
