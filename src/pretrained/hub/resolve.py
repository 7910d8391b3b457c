"""Resolve `(name_or_path, filename)` to a local file: a folder wins, otherwise a Hub repo id is downloaded
into the standard huggingface_hub cache (`models--org--name/{blobs,refs,snapshots}`) by `hf_hub_download`, one
file at a time, only the files a load asks for. huggingface_hub is imported only when a repo id is used.

One load reads one commit: the hub arguments that `pop_hub_kwargs` returns carry a `_pin` record, and the first
file downloaded pins the branch or tag to the commit it came from; the load's later files are read at that commit
(a push landing on `main` mid-load cannot mix two checkpoints, and files already cached need no request at all).

Every huggingface_hub failure becomes one of our typed errors (`hub_error` has the table).
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..checkpoint.atomic import is_relative_name, locate
from ..errors import (CheckpointNotFoundError, GatedRepoError, HubError, HubPermissionError, OfflineError,
                      RepoFileNotFoundError, RepoNotFoundError, RevisionNotFoundError, UnsafePathError)

HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "_pin")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_IGNORED = ("proxies", "resume_download", "_from_auto", "_from_pipeline", "low_cpu_mem_usage", "trust_remote_code",
            "code_revision", "mirror", "_commit_hash", "user_agent")


def pop_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the Hub/location arguments out of `kwargs` (in place) and return them, with a `_pin` record (kept if
    `kwargs` had one) that makes every file resolved with them come from one commit."""
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    if hub.get("_pin") is None:
        hub["_pin"] = {}
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
    hub_only: bool = False,
    _pin: dict | None = None,
) -> str | None:
    """Local path of `filename` from a folder or a repo; None if absent and not `required`.

    `filename` is a repo file name ("config.json", "sub/modeling_x.py"); one that could leave the folder or the
    cache snapshot (absolute, "..", a backslash, NUL) raises UnsafePathError before anything is looked up.
    `hub_only`: `name_or_path` is a repo id even if a folder of that name exists (code that an `auto_map` says
    lives in another repo). `_pin` (from `pop_hub_kwargs`): {(repo_id, revision): commit}, filled by the first
    download and used by the next. Raises CheckpointNotFoundError for a folder, and for a repo one of the
    `HubError`s that `hub_error` lists (`OfflineError` when the Hub cannot be asked and the file is not cached).
    """
    source = os.fspath(name_or_path)
    if not is_relative_name(filename):
        raise UnsafePathError(
            f"The file name {filename!r} asked of '{source}' is not a relative path of plain names (it is absolute, "
            "or has '..', a backslash or a NUL), so it could name a file outside the checkpoint; nothing was read. "
            "If it comes from a checkpoint's file (an index, a config), that file is corrupt or hostile."
        )
    if os.path.isdir(source) and not hub_only:
        folder = os.path.join(source, subfolder) if subfolder else source
        path = locate(folder, filename) if os.path.isdir(folder) else None
        if path is None and required:
            raise CheckpointNotFoundError(
                f"No file named '{filename}' in the folder '{folder}'. Check the path, or save a model there "
                "with save_pretrained()."
            )
        return path
    if _looks_like_path(source) and not hub_only:
        raise CheckpointNotFoundError(
            f"'{source}' is not a folder. Give the path of a folder holding config.json and the weights, "
            "or a Hub repo id such as 'org/name'."
        )
    return _download(source, filename, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                     force_download=force_download, local_files_only=local_files_only, token=token,
                     required=required, pin=_pin)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _download(repo_id: str, filename: str, *, required: bool, subfolder: str = "", revision: str | None = None,
              cache_dir: str | os.PathLike | None = None, force_download: bool = False,
              local_files_only: bool = False, token: str | bool | None = None, pin: dict | None = None) -> str | None:
    """hf_hub_download into the standard cache, with every huggingface_hub failure turned into our typed error."""
    import huggingface_hub as hf
    from huggingface_hub import errors as hf_errors

    where = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
    shown = revision or "main"  # what error messages name: the caller's revision, not the pinned commit
    key = (repo_id, shown)
    commit = revision if revision and _COMMIT.fullmatch(revision) else (pin or {}).get(key)
    if commit is not None and not force_download:
        cached = hf.try_to_load_from_cache(repo_id, where, cache_dir=cache_dir, revision=commit)
        if cached is hf._CACHED_NO_EXIST:  # a commit never changes: known absent, no need to ask again
            if not required:
                return None
            raise RepoFileNotFoundError(f"'{repo_id}' at revision '{shown}' has no file '{where}'. Check the file "
                                        "name, the subfolder and the revision.")
    try:
        path = hf.hf_hub_download(repo_id, filename, subfolder=subfolder or None, revision=commit or revision,
                                  cache_dir=cache_dir, force_download=force_download,
                                  local_files_only=local_files_only, token=token)
    except hf_errors.RemoteEntryNotFoundError as e:  # before HfHubHTTPError: it is one
        if pin is not None and commit is None:
            _pin_from_no_exist(pin, key, e)
        if not required:
            return None
        raise hub_error(e, repo_id, revision=shown, filename=where) from e
    except hf_errors.LocalEntryNotFoundError as e:  # could not ask the Hub, and not cached
        if not required and revision_is_cached(repo_id, commit or revision, cache_dir):
            return None  # what the Hub had at this revision is cached, and this optional file is not among it
        raise OfflineError(
            f"'{where}' of '{repo_id}' (revision '{shown}') is not in the local cache, and "
            f"{_why_offline(e, local_files_only)}. Connect once (without HF_HUB_OFFLINE=1 or local_files_only=True) "
            "to download it, or pass the path of a local folder instead."
        ) from e
    except hf_errors.HFValidationError as e:
        raise RepoNotFoundError(
            f"'{repo_id}' is neither a local folder nor a valid Hub repo id ({e}). Give an existing folder, or a repo "
            "id such as 'org/name'."
        ) from e
    except hf_errors.HfHubHTTPError as e:
        raise hub_error(e, repo_id, revision=shown, filename=where) from e
    if pin is not None and commit is None:
        parts = os.path.normpath(path).split(os.sep)
        if "snapshots" in parts[:-1] and _COMMIT.fullmatch(parts[parts.index("snapshots") + 1]):
            pin[key] = parts[parts.index("snapshots") + 1]
    return path


def _pin_from_no_exist(pin: dict, key: tuple[str, str], error: Exception) -> None:
    """A 404 for a file still names the commit it was looked up in (X-Repo-Commit): pin to it."""
    response = getattr(error, "response", None)
    commit = response.headers.get("X-Repo-Commit") if response is not None else None
    if commit and _COMMIT.fullmatch(commit):
        pin[key] = commit


def revision_is_cached(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the cache holds a snapshot of `repo_id` at `revision` (a commit id, or a branch/tag it recorded)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = os.path.join(cache_dir or constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model"))
    revision = revision or "main"
    ref = os.path.join(storage, "refs", revision)
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            revision = f.read().strip()
    return bool(revision) and os.path.isdir(os.path.join(storage, "snapshots", revision))


def _why_offline(error: BaseException, local_files_only: bool) -> str:
    from huggingface_hub import constants
    from huggingface_hub import errors as hf_errors

    if local_files_only:
        return "local_files_only=True forbids asking the Hub"
    if constants.is_offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    cause = error.__cause__
    if isinstance(cause, hf_errors.HfHubHTTPError) and cause.response is not None:
        return f"the Hub at {constants.ENDPOINT} answered HTTP {cause.response.status_code}"
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return f"the Hub at {constants.ENDPOINT} could not be reached{detail}"


def hub_error(error: Exception, repo_id: str, *, revision: str | None = None, filename: str | None = None,
              writing: bool = False) -> HubError:
    """Our typed error for a huggingface_hub HTTP error met while reading (or, with `writing`, pushing to) a repo.

    huggingface_hub 2.x raises                          -> we raise
    GatedRepoError (X-Error-Code: GatedRepo)            -> GatedRepoError
    any HfHubHTTPError 401/403 while pushing            -> HubPermissionError
    RepositoryNotFoundError (404, or 401 unauthenticated),
      DisabledRepoError                                 -> RepoNotFoundError (unknown, or private without a token)
    other HfHubHTTPError 401/403 (bad token, no access) -> GatedRepoError
    RevisionNotFoundError                               -> RevisionNotFoundError
    RemoteEntryNotFoundError                            -> RepoFileNotFoundError (None for an optional file)
    any other HfHubHTTPError (5xx...)                   -> HubError
    `_download` adds: LocalEntryNotFoundError (offline mode, local_files_only, connection refused, 5xx after
    retries; the cause is named) -> OfflineError, or None for an optional file of a cached revision;
    HFValidationError (not a repo id) -> RepoNotFoundError. All are OSErrors, as the reference raises.
    """
    from huggingface_hub import errors as hf_errors

    rev = revision or "main"
    status = getattr(getattr(error, "response", None), "status_code", None)
    server = getattr(error, "server_message", None)
    said = f" The Hub said: {server}" if server else ""
    if isinstance(error, hf_errors.GatedRepoError):
        return GatedRepoError(
            f"'{repo_id}' is a gated repo and this token has no access to it. Request access on the repo's page, "
            "then pass token=... (or log in with `hf auth login`) with the account that was granted access." + said
        )
    if writing and status in (401, 403):
        return HubPermissionError(
            f"Pushing to '{repo_id}' was refused (HTTP {status}): pass a write token with token=... (or log in "
            "with `hf auth login`) whose account may write to that namespace." + said
        )
    if isinstance(error, hf_errors.RepositoryNotFoundError) or isinstance(error, hf_errors.DisabledRepoError):
        return RepoNotFoundError(
            f"'{repo_id}' is neither a local folder nor a Hub repo this token can see (HTTP {status}). Check the "
            "name (a repo id looks like 'org/name'); for a private repo pass token=... or log in with "
            "`hf auth login`." + said
        )
    if status == 401 or status == 403:
        return GatedRepoError(
            f"Access to '{repo_id}' was refused (HTTP {status}): it is private or gated, and the token is missing, "
            "invalid, or not granted access. Pass token=... (or log in with `hf auth login`)." + said
        )
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"Revision '{rev}' does not exist in '{repo_id}'. Give a branch, a tag, a commit id or 'refs/pr/N' "
            "of that repo (see its 'Files and versions' page)." + said
        )
    if isinstance(error, hf_errors.RemoteEntryNotFoundError):
        return RepoFileNotFoundError(
            f"'{repo_id}' at revision '{rev}' has no file '{filename}'. Check the file name, the subfolder and the "
            "revision." + said
        )
    return HubError(f"The Hub failed on '{repo_id}' (revision '{rev}'"
                    + (f", file '{filename}'" if filename else "") + f"): HTTP {status}.{said} Try again later.")
