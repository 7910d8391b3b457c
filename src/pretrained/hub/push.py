"""`PushToHubMixin`: upload what `save_pretrained` writes to a Hub repo, as one commit.

A push goes in four steps, all through huggingface_hub (`HfApi`):

1. create the repo if needed (`exist_ok=True`), and the target branch when `revision` names a new one;
2. read the target revision's head commit and its file listing (`repo_info`, `list_repo_tree`);
3. save into a temporary folder, and compare each file with the remote one: the git blob sha1 for a regular
   file, the sha256 (LFS oid) for a large one. Unchanged files are left out; weight files of the same format and
   variant that the new save no longer has (stale shards, an index the new single file replaces) are deleted;
   a minimal model card (`README.md`) is added when the revision has none;
4. one `create_commit` with those additions and deletions — or none at all when nothing changed.

huggingface_hub is imported only when a push happens (the rest of the library stays import-light).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from ..checkpoint.atomic import STAGING_PREFIX, is_relative_name, list_files
from ..checkpoint.files import PT_INDEX, PT_WEIGHTS, SAFE_INDEX, SAFE_WEIGHTS
from ..checkpoint.shards import DEFAULT_MAX_SHARD_SIZE, add_variant, is_shard_of
from ..errors import UnsafePathError
from .resolve import hub_error

MODEL_CARD_NAME = "README.md"
LIBRARY_NAME = "pretrained"
# save_pretrained(..., push_to_hub=True, **these): the push arguments it accepts.
PUSH_KWARGS = ("repo_id", "commit_message", "commit_description", "private", "token", "create_pr", "revision", "tags")
_CHUNK = 8 * 2**20


class PushToHubMixin:
    """Adds `push_to_hub` to a class that has `save_pretrained(folder)` (a config, a model)."""

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
        create_pr: bool = False,
        revision: str | None = None,
        commit_description: str | None = None,
        tags: list[str] | str | None = None,
        safe_serialization: bool = True,
        variant: str | None = None,
    ):
        """Save into a temporary folder and upload it to the Hub repo `repo_id` in one commit.

        Args:
            repo_id: "org/name" (or "name", in the token owner's namespace). Created if it does not exist.
            commit_message: defaults to "Upload model" / "Upload config".
            private: visibility of a repo created now (an existing repo keeps its own).
            token: a write token (default: the logged-in one, or `HF_TOKEN`).
            max_shard_size, safe_serialization, variant: how a model's weights are written (see `save_pretrained`);
                ignored for a config.
            create_pr: open a pull request (`refs/pr/N`) against `revision` (default "main") instead of committing.
            revision: the branch to push to (created from "main" if missing), or "refs/pr/N" to add to that PR.
            commit_description: the commit's (or the pull request's) description.
            tags: added to the model card's metadata.

        Returns:
            The `huggingface_hub.CommitInfo` of the new commit (`.oid`, `.commit_url`, and `.pr_url` with
            `create_pr=True`). When every file is identical to the remote one and no stale file is left, no commit
            is made (and no pull request opened): the `CommitInfo` of the revision's existing head commit is
            returned instead, so `.oid` is unchanged and `.pr_url` is None.

        Raises:
            HubPermissionError: the token may not create or write to the repo.
            RepoNotFoundError / RevisionNotFoundError / HubError: see `pretrained.hub.resolve.hub_error`.
        """
        with tempfile.TemporaryDirectory(prefix="pretrained-push-") as folder:
            weights = self._save_for_push(folder, max_shard_size=max_shard_size,
                                          safe_serialization=safe_serialization, variant=variant)
            return push_folder(folder, repo_id, weights=weights, card=self._card_facts(),
                               commit_message=commit_message or self._default_commit_message(),
                               commit_description=commit_description, private=private, token=token,
                               create_pr=create_pr, revision=revision, tags=tags)

    # ---- hooks a class may override ------------------------------------------------------------
    def _save_for_push(self, folder: str, *, max_shard_size: int | str, safe_serialization: bool,
                       variant: str | None) -> list[str]:
        """Save into `folder`; return the weights file names whose stale shards a push deletes (none here)."""
        self.save_pretrained(folder)
        return []

    def _default_commit_message(self) -> str:
        return "Upload model" if hasattr(self, "config") else "Upload config"

    def _card_facts(self) -> dict[str, Any]:
        """What a new model card says about this object: model_type, architecture, the repo it came from."""
        config = getattr(self, "config", self)
        source = getattr(config, "_name_or_path", "") or ""
        architectures = getattr(config, "architectures", None) or [""]
        return {
            "model_type": getattr(config, "model_type", "") or "",
            "architecture": type(self).__name__ if config is not self else architectures[0],
            "base_model": source if _is_repo_id(source) else None,
            "tags": list(getattr(self, "model_tags", None) or []),
            "loader": _auto_class(type(self).__name__) if config is not self else "AutoConfig",
        }

    # ---- save_pretrained(..., push_to_hub=True) ------------------------------------------------
    def _push_after_save(self, folder: str | os.PathLike, before: dict[str, tuple], push: dict[str, Any],
                         weights: Iterable[str] = ()):
        """Push the files a save into `folder` just wrote (new or replaced since `before`, a `folder_state`).

        `push` holds the arguments of `PUSH_KWARGS`; `repo_id` defaults to the folder's name.
        """
        unknown = set(push) - set(PUSH_KWARGS)
        if unknown:
            raise TypeError("save_pretrained(push_to_hub=True) got unexpected arguments: "
                            f"{', '.join(sorted(unknown))}.")
        push = dict(push)
        folder = os.fspath(folder)
        repo_id = push.pop("repo_id", None) or os.path.basename(os.path.abspath(folder))
        after = folder_state(folder)
        changed = [name for name, state in after.items() if before.get(name) != state]
        return push_folder(folder, repo_id, files=changed, weights=list(weights), card=self._card_facts(),
                           commit_message=push.pop("commit_message", None) or self._default_commit_message(), **push)


def folder_state(folder: str | os.PathLike) -> dict[str, tuple]:
    """{file name: (mtime_ns, inode, size)} of the checkpoint files a reader sees at the top of `folder`."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return {}
    state = {}
    for name in list_files(folder):
        st = os.stat(os.path.join(folder, name))
        state[name] = (st.st_mtime_ns, st.st_ino, st.st_size)
    return state


def weights_names(safe_serialization: bool, variant: str | None) -> list[str]:
    """The weights file name and index name a save with these options writes (their shards follow the first)."""
    if safe_serialization:
        return [add_variant(SAFE_WEIGHTS, variant), add_variant(SAFE_INDEX, variant)]
    return [add_variant(PT_WEIGHTS, variant), add_variant(PT_INDEX, variant)]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    files: Iterable[str] | None = None,
    weights: Iterable[str] = (),
    card: dict[str, Any] | None = None,
    commit_message: str = "Upload folder",
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    tags: list[str] | str | None = None,
):
    """Upload `files` of `folder` (default: every visible file, subfolders included) to `repo_id` in one commit.

    `weights` = [weights file name, index name] (see `weights_names`): remote top-level files that are that file,
    one of its shards, or the index, and that the folder does not hold, are deleted in the same commit. `card` are
    the facts of a model card written when the target revision has no README.md. Returns a `CommitInfo` (see
    `PushToHubMixin.push_to_hub` for the no-change case).
    """
    from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub import errors as hf_errors

    folder = os.fspath(folder)
    present = _local_files(folder)  # what the folder holds: decides what is stale, and whether it has a card
    files = list(present) if files is None else list(files)
    unsafe = [n for n in files if not is_relative_name(n)]
    if unsafe:  # e.g. read from a save record: it would upload a file from outside the folder
        raise UnsafePathError(f"Refusing to push {', '.join(map(repr, unsafe))} from '{folder}': not a relative "
                              "path of plain names inside the folder. Nothing was uploaded.")
    local = {n: os.path.join(folder, n) for n in files}
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    api = HfApi(token=token)
    target = revision or "main"
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=target).sha
        remote = {} if head is None else {  # files, not folders; a name no repo can hold is no file of ours
            entry.path: entry for entry in api.list_repo_tree(repo_id, revision=head, recursive=True)
            if hasattr(entry, "blob_id") and is_relative_name(entry.path)
        }
    except hf_errors.HfHubHTTPError as e:
        raise hub_error(e, repo_id, revision=target, writing=True) from e

    additions = {name: path for name, path in sorted(local.items()) if not _same_as_remote(path, remote.get(name))}
    weights = list(weights)
    deletions = []
    if weights:
        main_name, index_name = weights
        deletions = sorted(n for n in remote if "/" not in n and n not in present
                           and (is_shard_of(n, main_name) or n == index_name))
    readme = None
    if MODEL_CARD_NAME not in remote and MODEL_CARD_NAME not in present:
        readme = model_card(repo_id, card or {}, tags).encode()
    elif MODEL_CARD_NAME in remote and MODEL_CARD_NAME not in present and tags:
        readme = _tagged_card(api, repo_id, head, tags)

    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in additions.items()]
    if readme is not None:
        operations.append(CommitOperationAdd(path_in_repo=MODEL_CARD_NAME, path_or_fileobj=readme))
    operations += [CommitOperationDelete(path_in_repo=name) for name in deletions]
    if not operations:  # identical: no empty commit, no pull request; say where the repo stands
        return CommitInfo(commit_url=f"{api.endpoint}/{repo_id}/commit/{head}", commit_message=commit_message,
                          commit_description=commit_description or "", oid=head, _endpoint=api.endpoint)
    try:
        return api.create_commit(repo_id, operations, commit_message=commit_message,
                                 commit_description=commit_description, revision=revision, create_pr=create_pr,
                                 parent_commit=head)
    except hf_errors.HfHubHTTPError as e:
        raise hub_error(e, repo_id, revision=target, writing=True) from e


def _local_files(folder: str) -> dict[str, str]:
    """{path in repo: local path} of every file in `folder`, skipping hidden entries and save leftovers."""
    found = {name: os.path.join(folder, name) for name in list_files(folder) if not name.startswith(".")}
    for entry in sorted(os.listdir(folder)):
        top = os.path.join(folder, entry)
        if not os.path.isdir(top) or entry.startswith((".", STAGING_PREFIX)):
            continue
        for root, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if not name.startswith("."):
                    path = os.path.join(root, name)
                    found[os.path.relpath(path, folder).replace(os.sep, "/")] = path
    return found


def _same_as_remote(path: str, entry: Any) -> bool:
    """Whether the local file has the remote file's content (sha256 for LFS files, git blob sha1 for others)."""
    if entry is None:
        return False
    size = os.path.getsize(path)
    if entry.lfs is not None:
        return entry.lfs.size == size and entry.lfs.sha256 == _file_hash(path, hashlib.sha256())
    if entry.size is not None and entry.size != size:
        return False
    return entry.blob_id == _file_hash(path, hashlib.sha1(), prefix=b"blob %d\0" % size)


def _file_hash(path: str, digest: Any, prefix: bytes = b"") -> str:
    digest.update(prefix)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_card(repo_id: str, facts: dict[str, Any], tags: list[str]) -> str:
    """A minimal model card: YAML metadata (library_name, tags, base_model) and a short description."""
    from huggingface_hub import ModelCardData

    model_type = facts.get("model_type") or ""
    all_tags = list(dict.fromkeys([*tags, *facts.get("tags", []), *([model_type] if model_type else [])]))
    base_model = facts.get("base_model") if facts.get("base_model") != repo_id else None
    data = ModelCardData(library_name=LIBRARY_NAME, tags=all_tags or None, base_model=base_model)
    what = f"A `{facts.get('architecture') or 'model'}`" + (f" (model_type `{model_type}`)" if model_type else "")
    loader = facts.get("loader") or "AutoModel"
    derived = f", derived from `{base_model}`" if base_model else ""
    return f"""---
{data.to_yaml()}
---

# {repo_id.split("/")[-1]}

{what}{derived}, saved with `{LIBRARY_NAME}` in the Hugging Face format (`config.json` + safetensors weights):
it loads with `{LIBRARY_NAME}` or with `transformers`.

```python
from {LIBRARY_NAME} import {loader}

{"config" if loader == "AutoConfig" else "model"} = {loader}.from_pretrained("{repo_id}")
```

This card was written on the first push; edit it to describe the model, its training data and its intended use.
"""


def _tagged_card(api: Any, repo_id: str, head: str, tags: list[str]) -> bytes | None:
    """The remote README.md with the missing `tags` added to its metadata (body untouched); None if none is missing."""
    from huggingface_hub import ModelCard, hf_hub_download

    path = hf_hub_download(repo_id, MODEL_CARD_NAME, revision=head, token=api.token)
    with open(path, encoding="utf-8") as f:
        card = ModelCard(f.read(), ignore_metadata_errors=True)
    present = list(card.data.tags or [])
    missing = [t for t in tags if t not in present]
    if not missing:
        return None
    card.data.tags = present + missing
    return str(card).encode()


def _auto_class(architecture: str) -> str:
    """The Auto class that loads `architecture` ("LlamaForCausalLM" -> "AutoModelForCausalLM")."""
    for head in ("ForCausalLM", "ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification",
                 "ForMaskedLM", "ForConditionalGeneration"):
        if architecture.endswith(head):
            return "AutoModelForSeq2SeqLM" if head == "ForConditionalGeneration" else f"AutoModel{head}"
    return "AutoModel"


def _is_repo_id(source: str) -> bool:
    """'org/name' that is not a local folder or file path."""
    return (source.count("/") == 1 and not source.startswith((".", "/", "~")) and not os.path.exists(source)
            and all(part for part in source.split("/")))
