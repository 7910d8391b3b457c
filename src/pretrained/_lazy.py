"""Lazy package exports: a name is imported from its submodule the first time it is asked for (import time
matters: `import pretrained` must not import torch)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str | None]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """(`__getattr__`, `__dir__`) for `package`: `exports` maps a name to the submodule (relative to `package`)
    that defines it, or to None for a submodule of that name."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        module = exports[name]
        if module is None:
            return importlib.import_module(f".{name}", package)
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(importlib.import_module(package), name, value)  # cached: later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
