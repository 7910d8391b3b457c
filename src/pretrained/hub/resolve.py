"""Resolve `(name_or_path, filename)` to a local file: a folder wins, otherwise a Hub repo id is downloaded
into the standard huggingface_hub cache. huggingface_hub is imported only when a repo id is used."""

from __future__ import annotations

import os
from typing import Any

from ..checkpoint.atomic import locate
from ..errors import CheckpointNotFoundError

HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
_IGNORED = ("proxies", "resume_download", "_from_auto", "_from_pipeline", "low_cpu_mem_usage", "trust_remote_code",
            "code_revision", "mirror", "_commit_hash", "user_agent")


def pop_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the Hub/location arguments out of `kwargs` (in place) and return them."""
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    if "use_auth_token" in kwargs:  # legacy spelling
        hub.setdefault("token", kwargs.pop("use_auth_token"))
    for key in _IGNORED:
        kwargs.pop(key, None)
    return hub


def is_local(name_or_path: str | os.PathLike) -> bool:
    return os.path.isdir(name_or_path)


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    subfolder: str = "",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
    required: bool = True,
) -> str | None:
    """Local path of `filename` from a folder or a repo; None if absent and not `required`."""
    source = os.fspath(name_or_path)
    if os.path.isdir(source):
        folder = os.path.join(source, subfolder) if subfolder else source
        path = locate(folder, filename) if os.path.isdir(folder) else None
        if path is None and required:
            raise CheckpointNotFoundError(
                f"No file named '{filename}' in the folder '{folder}'. Check the path, or save a model there "
                "with save_pretrained()."
            )
        return path
    if _looks_like_path(source):
        raise CheckpointNotFoundError(
            f"'{source}' is not a folder. Give the path of a folder holding config.json and the weights, "
            "or a Hub repo id such as 'org/name'."
        )
    return _download(source, filename, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                     force_download=force_download, local_files_only=local_files_only, token=token,
                     required=required)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _download(repo_id: str, filename: str, *, required: bool, **hub: Any) -> str | None:
    import huggingface_hub as hf
    from huggingface_hub import errors as hf_errors

    revision = hub.get("revision") or "main"
    try:
        return hf.hf_hub_download(repo_id, filename, subfolder=hub.get("subfolder") or None,
                                  revision=hub.get("revision"), cache_dir=hub.get("cache_dir"),
                                  force_download=hub.get("force_download", False),
                                  local_files_only=hub.get("local_files_only", False), token=hub.get("token"))
    except hf_errors.RepositoryNotFoundError as e:
        raise CheckpointNotFoundError(
            f"'{repo_id}' is neither a local folder nor a Hub repo you can access. Check the name; for a private "
            "or gated repo pass token=... or log in with `hf auth login`."
        ) from e
    except hf_errors.RevisionNotFoundError as e:
        raise CheckpointNotFoundError(
            f"Revision '{revision}' does not exist in '{repo_id}'. Use a branch, tag or commit id of that repo."
        ) from e
    except hf_errors.LocalEntryNotFoundError as e:
        if not required:
            return None
        raise CheckpointNotFoundError(
            f"'{filename}' of '{repo_id}' (revision '{revision}') is not in the local cache and the Hub cannot be "
            "reached (offline mode or no network). Connect once to download it, or pass a local folder."
        ) from e
    except hf_errors.EntryNotFoundError as e:  # after Local...: that one subclasses it
        if not required:
            return None
        raise CheckpointNotFoundError(f"'{repo_id}' at revision '{revision}' has no file '{filename}'.") from e
