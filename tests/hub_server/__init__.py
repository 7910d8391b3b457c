"""Test fixture: a real local Hugging Face Hub (HTTP server process + git repositories) on 127.0.0.1.

`HubServer` starts/stops the server process (server.py) and seeds repositories directly on disk (store.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from .store import TOKEN, Store, is_lfs

__all__ = ["HubServer", "reserve_port", "TOKEN"]


def reserve_port() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1; keep it until the server takes the port (see HubServer.start)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class HubServer:
    token = TOKEN

    def __init__(self, root: str | Path, port: socket.socket | int):
        self.root = Path(root)
        self._held = port if isinstance(port, socket.socket) else None
        self.port = port.getsockname()[1] if isinstance(port, socket.socket) else port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.store = Store(self.root)
        self.cdn_port: int | None = None
        self._proc: subprocess.Popen | None = None

    # -- process ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the server process (same ports as before after a `stop`). No-op if it runs."""
        if self._proc is not None:
            return
        if self.cdn_port is None:
            with reserve_port() as s:
                self.cdn_port = s.getsockname()[1]
        if self._held is not None:
            self._held.close()
            self._held = None
        cmd = [sys.executable, "-m", "hub_server.server", "--root", str(self.root), "--port", str(self.port),
               "--cdn-port", str(self.cdn_port), "--parent-pid", str(os.getpid())]
        tests_dir = str(Path(__file__).parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
        with open(self.root / "server.log", "ab") as err:
            self._proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err)
        if self._proc.stdout.readline().strip() != b"ready":
            self._proc.wait()
            self._proc = None
            raise RuntimeError(f"hub server did not start:\n{(self.root / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        """Kill the server process: connections are refused until `start`."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc.stdout.close()
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None

    # -- repositories -------------------------------------------------------------------------------------------
    def seed(self, repo_id: str, files: dict[str, bytes | str | Path | None], message: str = "seed",
             branch: str = "main", tag: str | None = None, private: bool = False, gated: bool = False) -> str:
        """Commit `files` (path -> bytes, text, or a local Path to read; None deletes) onto `branch`, bypassing HTTP.
        Creates the repo if needed (private/gated apply then only); a new branch starts from main. Large files
        (see store.is_lfs) go to the content store with an LFS pointer in git. Returns the commit id."""
        self.store.create(repo_id, private=private, gated=gated)
        ops = []
        for path, content in files.items():
            if content is None:
                ops.append(("delete", path))
                continue
            data = content.read_bytes() if isinstance(content, Path) else content
            data = data.encode() if isinstance(data, str) else data
            if is_lfs(path, len(data), data):
                ops.append(("lfs", path, self.store.put_lfs(repo_id, data), len(data)))
            else:
                ops.append(("blob", path, data))
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        sha = self.store.commit(repo_id, ref, ops, message, base=self.store.resolve(repo_id, "main"))
        if tag is not None:
            self.store.git(repo_id, "update-ref", f"refs/tags/{tag}", sha)
        return sha

    def commits(self, repo_id: str, branch: str = "main") -> list[str]:
        """Commit ids of `branch` (or a full ref such as refs/pr/1), newest first."""
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        return self.store.git(repo_id, "rev-list", ref).decode().split()

    # -- request log and fault injection ------------------------------------------------------------------------
    @property
    def log(self) -> list[dict]:
        """Every request since `clear_log`: dicts with method, path (raw, without query), query, range, auth."""
        try:
            return [json.loads(line) for line in (self.root / "requests.log").read_text().splitlines()]
        except FileNotFoundError:
            return []

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, raw path without the query string) of every request since `clear_log`, CDN port included."""
        return [(r["method"], r["path"]) for r in self.log]

    def clear_log(self) -> None:
        (self.root / "requests.log").write_text("")

    def _add_fault(self, fault: dict) -> None:
        path = self.root / "faults.json"
        faults = json.loads(path.read_text()) if path.exists() else []
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(faults + [fault]))
        tmp.replace(path)

    def drop_connection_once(self, after_bytes: int, path_contains: str = "") -> None:
        """The next GET whose path contains `path_contains` sends `after_bytes` of its body, then the connection
        dies (large files are served from the CDN port at /cdn/lfs/<sha256>)."""
        self._add_fault({"kind": "drop", "after": after_bytes, "path": path_contains})

    def fail_once(self, status: int = 500, path_contains: str = "") -> None:
        """The next request whose path contains `path_contains` is answered with `status`."""
        self._add_fault({"kind": "status", "status": status, "path": path_contains})
