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


class ShapeMismatchError(PretrainedError, RuntimeError):
    """Tensors in the checkpoint do not fit the model's parameters."""


class LoadingError(PretrainedError, RuntimeError):
    """A checkpoint could not be loaded into a model (strict loading, wrong family, ...)."""


class DtypeError(PretrainedError, ValueError):
    """A dtype argument that is not a torch dtype, a dtype name, or "auto"."""


class DeviceMapError(PretrainedError, ValueError):
    """A device map or memory budget that cannot be honoured (names the module or device and how to fix)."""
