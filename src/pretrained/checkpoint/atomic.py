"""Crash-safe saving into a folder that may already hold a checkpoint.

A save is one commit of many files. It goes in four steps; a process killed between any two leaves a
folder that reads as exactly one complete checkpoint:

1. *stage*: every new file is written into a hidden staging folder inside the target and fsync'd.
   A reader sees the previous checkpoint (staging folders are invisible to it).
2. *mark*: a manifest ``.pretrained-save.json`` naming the staging folder, the new files and the stale files
   to delete is written atomically (write, fsync, rename). From here on a reader resolves names through the
   manifest, so it sees the new checkpoint: each new file is either still staged or already moved in.
3. *move*: new files are renamed into place (atomic per file), then stale files are deleted.
4. *unmark*: the manifest is removed; the folder is now an ordinary checkpoint.

The next save into the folder first finishes (rolls forward) any marked commit, and clears abandoned staging
folders. Nothing here imports torch.

The manifest is input like any other file: before a name in it is joined to the folder, it must be one our writer
makes (`is_plain_name`, no leading dot; the staging folder `STAGING_PREFIX` + 12 hex digits, a real folder). A
manifest that names anything else raises UnsafePathError, on load and on save, and nothing is read, renamed or
deleted. `is_plain_name` / `is_relative_name` are the one check every name read from a file goes through (index
shards, Hub file names, custom code paths).
"""

from __future__ import annotations

import json
import ntpath
import os
import re
import shutil
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterable

from ..errors import SaveInterruptedError, UnsafePathError

MARKER = ".pretrained-save.json"
STAGING_PREFIX = ".pretrained-staging-"
_ATOMIC_TMP = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # write_text_atomic's temp file names
_STAGING = re.compile(re.escape(STAGING_PREFIX) + r"[0-9a-f]{12}")  # AtomicSave's staging folder names


def is_plain_name(name: object) -> bool:
    """Whether `name` is a plain file name that stays inside any folder it is joined to: a non-empty string, not
    "." or "..", without a separator ("/" or "\\"), a NUL or a drive ("C:"), under POSIX and Windows rules alike."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and not ntpath.splitdrive(name)[0] and not os.path.isabs(name))


def is_relative_name(name: object) -> bool:
    """Whether `name` is a "/"-separated path of plain names ("config.json", "sub/modeling_x.py"): a repo file name
    that stays inside the folder (or cache snapshot) it is joined to."""
    return isinstance(name, str) and all(is_plain_name(part) for part in name.split("/"))


def fsync_path(path: str) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames and deletions inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str, text: str) -> None:
    """Replace one small file atomically (temp file, fsync, rename, fsync folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_path(folder)


def _read_marker(folder: str) -> dict | None:
    """The manifest of a save in progress in `folder`, checked (None if there is none).

    SaveInterruptedError: unreadable, or not a record of staged and removed files (nothing to roll forward; a new
    save replaces it). UnsafePathError: a record whose names are not ones our writer makes (see the module's doc)."""
    path = os.path.join(folder, MARKER)
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
        if not (isinstance(marker, dict) and isinstance(marker.get("staging"), str)
                and isinstance(marker.get("files"), list) and isinstance(marker.get("remove"), list)):
            raise ValueError("not a record of staged and removed files")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # cannot happen through our writer: it is renamed into place whole
        raise SaveInterruptedError(
            f"'{path}' (the record of a save in progress) is unreadable: {e}. A save into '{folder}' was "
            "interrupted; save the model again into this folder."
        ) from e
    staging = marker["staging"]
    bad = [repr(n) for n in (*marker["files"], *marker["remove"]) if not is_plain_name(n) or n.startswith(".")]
    if not _STAGING.fullmatch(staging):
        bad.insert(0, f"staging folder {staging!r}")
    elif os.path.islink(os.path.join(folder, staging)):
        bad.insert(0, f"staging folder {staging!r} (a symbolic link)")
    if bad:
        raise UnsafePathError(
            f"'{path}' (the record of a save in progress) names {', '.join(bad[:5])}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}: not a plain file name in '{folder}' or a "
            f"staging folder '{STAGING_PREFIX}<12 hex digits>' as pretrained writes them, so it was not written by "
            "pretrained. Nothing was read, renamed or deleted. If you trust this folder, delete that file and load "
            "or save again; otherwise discard the folder."
        )
    return marker


def locate(folder: str, filename: str) -> str | None:
    """The path a reader should open for `filename` in `folder`, or None if it is not part of the checkpoint."""
    marker = _read_marker(folder)
    if marker is not None:
        if filename in marker["files"]:
            for candidate in (os.path.join(folder, marker["staging"], filename), os.path.join(folder, filename)):
                if os.path.isfile(candidate):
                    return candidate
            raise SaveInterruptedError(
                f"A save into '{folder}' was interrupted and its file '{filename}' is gone (the staging folder "
                f"'{marker['staging']}' was removed?). Save the model again into this folder."
            )
        if filename in marker["remove"]:
            return None
    path = os.path.join(folder, filename)
    return path if os.path.isfile(path) else None


def list_files(folder: str) -> list[str]:
    """Names of the files a reader sees in `folder` (staging folders and the marker hidden)."""
    marker = _read_marker(folder)
    names = {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)) and n != MARKER}
    if marker is not None:
        names = (names - set(marker["remove"])) | set(marker["files"])
    return sorted(n for n in names if not n.startswith(STAGING_PREFIX) and not n.endswith(".tmp"))


def _roll_forward(folder: str, marker: dict) -> None:
    staging = os.path.join(folder, marker["staging"])
    for name in marker["files"]:
        staged = os.path.join(staging, name)
        if os.path.isfile(staged):
            os.replace(staged, os.path.join(folder, name))
    fsync_path(folder)
    for name in marker["remove"]:
        try:
            os.unlink(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    fsync_path(folder)
    os.unlink(os.path.join(folder, MARKER))
    fsync_path(folder)
    shutil.rmtree(staging, ignore_errors=True)


def recover(folder: str) -> None:
    """Finish a marked commit left by a killed save, and delete abandoned staging folders and the temp files
    of `write_text_atomic` (a save killed while writing the marker leaves `..pretrained-save.json.<hex>.tmp`)."""
    try:
        marker = _read_marker(folder)
    except SaveInterruptedError:  # unreadable (not by us): nothing to roll forward; the caller's save replaces all
        os.unlink(os.path.join(folder, MARKER))  # (UnsafePathError is no SaveInterruptedError: it propagates)
        marker = None
    if marker is not None:
        _roll_forward(folder, marker)
    for name in os.listdir(folder):
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        elif _ATOMIC_TMP.fullmatch(name) and os.path.isfile(os.path.join(folder, name)):
            os.unlink(os.path.join(folder, name))


class AtomicSave:
    """Stage files, then commit them into `folder` in one step.

        with AtomicSave(folder) as save:
            write(save.path("model.safetensors"))
            save.commit(remove=["old-shard.safetensors"])

    Leaving the block without `commit` (an exception) discards the staged files and leaves the folder as it was.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        recover(self.folder)
        self.staging_name = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.staging = os.path.join(self.folder, self.staging_name)
        os.mkdir(self.staging)
        self.files: list[str] = []
        self.committed = False
        self._flushing: dict[str, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def path(self, filename: str) -> str:
        if not is_plain_name(filename) or filename.startswith("."):
            raise ValueError(f"'{filename}' must be a plain file name (no folder, not hidden).")
        if filename not in self.files:
            self.files.append(filename)
        return os.path.join(self.staging, filename)

    def finished(self, filename: str) -> None:
        """Say a staged file is complete: it is fsync'd in the background while the next one is written."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="pretrained-fsync")
        self._flushing[filename] = self._pool.submit(fsync_path, os.path.join(self.staging, filename))

    def write_text(self, filename: str, text: str) -> None:
        with open(self.path(filename), "w", encoding="utf-8") as f:
            f.write(text)

    def commit(self, remove: Iterable[str] = ()) -> None:
        for name in self.files:
            pending = self._flushing.pop(name, None)
            if pending is not None:
                pending.result()
            else:
                fsync_path(os.path.join(self.staging, name))
        fsync_path(self.staging)
        remove = sorted(set(remove) - set(self.files))
        marker = {"staging": self.staging_name, "files": self.files, "remove": remove}
        write_text_atomic(os.path.join(self.folder, MARKER), json.dumps(marker, indent=1))
        _roll_forward(self.folder, marker)
        self.committed = True

    def __enter__(self) -> AtomicSave:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        # Once the marker is in place (our own: `recover` removed any earlier one) the staged files belong to a
        # commit that readers already see; an error after that point leaves them for `recover` to move in.
        if not self.committed and not os.path.exists(os.path.join(self.folder, MARKER)):
            shutil.rmtree(self.staging, ignore_errors=True)
