"""Hub repositories as real bare git repositories, plus a content store for large ("LFS") files.

Layout under `root`: `repos/<org>/<name>.git` (bare git repo; `hub.json` inside holds private/gated flags),
`lfs/<sha256>` (the bytes of large files; git holds only the LFS pointer file, as on the Hub). `requests.log` and
`faults.json` belong to the server (see server.py).
Used by the server process and, directly on disk, by the test fixture's `seed`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

TOKEN = "hf_test_write_token"  # the one valid (write) token of the test Hub, owned by USER
USER = "test-user"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npy", ".npz")
LFS_MIN_SIZE = 100 * 1024  # anything larger goes to the content store, whatever its name
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
# Commits are made by a fixed identity and never read the user's or the system's git configuration.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": USER, "GIT_AUTHOR_EMAIL": f"{USER}@example.com",
    "GIT_COMMITTER_NAME": USER, "GIT_COMMITTER_EMAIL": f"{USER}@example.com",
}


def is_lfs(path: str, size: int, sample: bytes = b"") -> bool:
    """The Hub's rule, simplified: LFS by extension, by size, or when the content looks binary. Empty files never."""
    return size > 0 and (path.endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE or b"\0" in sample[:512])


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def parse_pointer(data: bytes) -> tuple[str, int] | None:
    m = re.fullmatch(rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n", data)
    return (m[1].decode(), int(m[2])) if m else None


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        (self.root / "lfs").mkdir(exist_ok=True)
        self._entries: dict[tuple[str, str], dict] = {}  # (repo, commit) -> entries; commits are immutable

    # -- repositories -------------------------------------------------------------------------------------------
    def gitdir(self, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_id}.git"

    def git(self, repo_id: str, *args: str, input: bytes | None = None, env: dict | None = None) -> bytes:
        cmd = ["git", "--git-dir", str(self.gitdir(repo_id)), *args]
        return subprocess.run(cmd, input=input, capture_output=True, check=True,
                              env={**os.environ, **GIT_ENV, **(env or {})}).stdout

    def meta(self, repo_id: str) -> dict | None:
        try:
            return json.loads((self.gitdir(repo_id) / "hub.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def create(self, repo_id: str, private: bool = False, gated: bool = False) -> bool:
        """New repo whose `main` holds one commit with `.gitattributes`, as the Hub creates them. False if it exists."""
        final = self.gitdir(repo_id)
        if final.exists():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".new-"))
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(tmp)], check=True,
                       env={**os.environ, **GIT_ENV})
        (tmp / "hub.json").write_text(json.dumps({"private": private, "gated": gated, "created": time.time()}))
        try:
            tmp.rename(final)
        except OSError:  # created concurrently
            return False
        self.commit(repo_id, "refs/heads/main", [("blob", ".gitattributes", GITATTRIBUTES.encode())], "initial commit")
        return True

    # -- refs and revisions -------------------------------------------------------------------------------------
    def refs(self, repo_id: str) -> dict[str, str]:
        """Full ref name -> commit (annotated tags peeled)."""
        out = self.git(repo_id, "for-each-ref", "--format=%(refname) %(objectname) %(*objectname)").decode()
        return {name: peeled or obj for name, obj, peeled in (line.split(" ") for line in out.splitlines())}

    def resolve(self, repo_id: str, rev: str) -> str | None:
        """Branch, tag, `refs/...` name, or a full or short (>= 4 hex digits) commit id -> full commit id."""
        refs = self.refs(repo_id)
        for name in (f"refs/heads/{rev}", f"refs/tags/{rev}", rev if rev.startswith("refs/") else None):
            if name in refs:
                return refs[name]
        if re.fullmatch(r"[0-9a-f]{4,40}", rev):
            try:
                sha = self.git(repo_id, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
            except subprocess.CalledProcessError:
                return None
            return sha if sha.startswith(rev) else None
        return None

    def log(self, repo_id: str, commit: str, limit: int = -1) -> list[dict]:
        """History of `commit`, newest first: dicts with id, date (unix time, str), author, title, message."""
        out = self.git(repo_id, "log", f"-n{limit}", "--format=%H%x00%ct%x00%an%x00%s%x00%B%x1e", commit).decode()
        keys = ("id", "date", "author", "title", "message")
        return [dict(zip(keys, rec.strip("\n").split("\0"))) for rec in out.split("\x1e") if rec.strip()]

    # -- reading ------------------------------------------------------------------------------------------------
    def entries(self, repo_id: str, commit: str) -> dict[str, dict]:
        """path -> {type: file|directory, path, oid, size, lfs: {oid, size, pointerSize} | None} at `commit`.
        `size` of an LFS file is the size of its content, `oid` the git id of its pointer, as in the Hub's API."""
        key = (repo_id, commit)
        if key not in self._entries:
            out = self.git(repo_id, "ls-tree", "-r", "-t", "-l", "-z", commit)
            entries = {}
            for rec in filter(None, out.split(b"\0")):
                info, path = rec.split(b"\t", 1)
                _, kind, oid, size = info.decode().split()
                kind = "file" if kind == "blob" else "directory"
                size = int(size) if kind == "file" else 0
                entries[path.decode()] = {"type": kind, "path": path.decode(), "oid": oid, "size": size, "lfs": None}
            small = [e for e in entries.values() if e["type"] == "file" and e["size"] < 200]
            for e in small:  # pointer files are small: read them to find the LFS ones
                pointer = parse_pointer(self.blob(repo_id, e["oid"]))
                if pointer:
                    e["lfs"] = {"oid": pointer[0], "size": pointer[1], "pointerSize": e["size"]}
                    e["size"] = pointer[1]
            self._entries[key] = entries
        return self._entries[key]

    def blob(self, repo_id: str, oid: str) -> bytes:
        return self.git(repo_id, "cat-file", "blob", oid)

    # -- content store ------------------------------------------------------------------------------------------
    # Bytes are stored once (lfs/<sha256>); each repo records which objects were uploaded to it (<repo>.git/lfs/),
    # since on the Hub an object must be uploaded to a repo before a commit of that repo can reference it.
    def lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256

    def has_lfs(self, repo_id: str, sha256: str) -> bool:
        ok = re.fullmatch(r"[0-9a-f]{64}", sha256) is not None
        return ok and (self.gitdir(repo_id) / "lfs" / sha256).exists() and self.lfs_path(sha256).exists()

    def put_lfs(self, repo_id: str, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.lfs_path(sha).exists():
            fd, tmp = tempfile.mkstemp(dir=self.root / "lfs")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.lfs_path(sha))
        (self.gitdir(repo_id) / "lfs").mkdir(exist_ok=True)
        (self.gitdir(repo_id) / "lfs" / sha).touch()
        return sha

    # -- writing ------------------------------------------------------------------------------------------------
    def commit(self, repo_id: str, ref: str, ops: list[tuple], message: str, base: str | None = None) -> str:
        """Commit `ops` onto `ref` (a full ref name; created from `base` if missing) and return the commit id.
        ops: ("blob", path, bytes) | ("lfs", path, sha256, size) | ("delete", path) | ("delete_folder", path).
        Raises LookupError(path) when deleting something that does not exist."""
        old = self.refs(repo_id).get(ref)
        parent = old or base
        present = self.entries(repo_id, parent) if parent else {}
        lines = []
        for op in ops:
            if op[0] in ("blob", "lfs"):
                data = op[2] if op[0] == "blob" else lfs_pointer(op[2], op[3])
                oid = self.git(repo_id, "hash-object", "-w", "--stdin", input=data).decode().strip()
                lines.append(f"100644 {oid}\t{op[1]}")
            else:
                path = op[1].strip("/")
                doomed = [p for p, e in present.items() if e["type"] == "file"
                          and (p == path if op[0] == "delete" else p.startswith(path + "/"))]
                if not doomed:
                    raise LookupError(path)
                lines += [f"0 {'0' * 40}\t{p}" for p in doomed]
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            if parent:
                self.git(repo_id, "read-tree", parent, env=env)
            self.git(repo_id, "update-index", "--index-info", input="".join(l + "\n" for l in lines).encode(), env=env)
            tree = self.git(repo_id, "write-tree", env=env).decode().strip()
        parents = ["-p", parent] if parent else []
        sha = self.git(repo_id, "commit-tree", tree, *parents, "-m", message).decode().strip()
        self.git(repo_id, "update-ref", ref, sha, old or "0" * 40)  # fails if someone moved the ref meanwhile
        return sha
