"""A local Hugging Face Hub speaking the HTTP protocol of huggingface_hub 1.x/2.x (with Xet disabled).

Run as its own process: `python -m hub_server.server --root DIR --port P --cdn-port C`; prints "ready" once both
ports listen. Port P is the Hub (HF_ENDPOINT); port C plays the CDN / S3 bucket that large files are redirected to
and uploaded to: a different origin, so the client treats it exactly as it treats the real CDN (it does not follow
the HEAD redirect there and does not send its token there).

Every request is appended to DIR/requests.log (one JSON object per line). Faults to inject are read from
DIR/faults.json (a list, each used once): {"kind": "drop", "after": N, "path": substr} cuts the connection after N
body bytes; {"kind": "status", "status": 503, "path": substr} answers that status.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .store import TOKEN, USER, Store, is_lfs, iso

REPO = r"(?P<repo>[\w-][\w.-]*/[\w-][\w.-]*)"
REV = r"(?P<rev>refs/pr/\d+|[^/]+)"
ROUTES = [  # (methods, path regex on the raw path, handler name)
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/models/{REPO}(?:/revision/{REV})?", "info"),
    ("GET", rf"/api/models/{REPO}/tree/{REV}(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/models/{REPO}/paths-info/{REV}", "paths_info"),
    ("GET", rf"/api/models/{REPO}/refs", "list_refs"),
    ("GET", rf"/api/models/{REPO}/commits/{REV}", "commits"),
    ("POST", rf"/api/models/{REPO}/preupload/{REV}", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/{REV}", "commit"),
    ("POST", rf"/api/models/{REPO}/branch/(?P<rev>.+)", "branch"),
    ("POST", rf"/api/models/{REPO}/tag/{REV}", "tag"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/verify", "lfs_verify"),
    ("GET HEAD", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve"),
]
CDN_ROUTES = [("GET HEAD", r"/cdn/lfs/(?P<sha>[0-9a-f]{64})", "cdn_get"),
              ("PUT", rf"/cdn/upload/{REPO}/(?P<sha>[0-9a-f]{{64}})", "cdn_put")]  # presigned: no token needed
LOCK = threading.Lock()  # serializes writes (git refs, log file, faults file)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response carries a Content-Length

    do_GET = do_HEAD = do_POST = do_PUT = lambda self: self.dispatch()

    def log_message(self, *args):  # the request log is requests.log
        pass

    # -- plumbing -----------------------------------------------------------------------------------------------
    def dispatch(self):
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body = self.read_body()
        store: Store = self.server.store
        self.store, self.hub, self.cdn = store, f"http://{self.headers['Host']}", self.server.cdn
        with LOCK, open(store.root / "requests.log", "a") as log:
            entry = {"method": self.command, "path": url.path, "query": url.query,
                     "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
            log.write(json.dumps(entry) + "\n")
        self.drop_after = None
        try:
            fault = self.take_fault(url.path)
            if fault and fault["kind"] == "status":
                raise HubError(fault["status"], "Injected failure")
            self.drop_after = fault and fault["after"]
            for methods, pattern, name in CDN_ROUTES if self.server.role == "cdn" else ROUTES:
                m = re.fullmatch(pattern, url.path)
                if m and self.command in methods.split():
                    args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                    result = getattr(self, name)(**args)
                    if result is not None:
                        self.send(200, result)
                    return
            raise HubError(404, f"Sorry, we can't find the page you are looking for ({self.command} {url.path}).")
        except HubError as e:
            header = e.message.encode("ascii", "backslashreplace").decode()  # headers are latin-1
            headers = {**e.headers, "X-Error-Message": header, **({"X-Error-Code": e.code} if e.code else {})}
            self.send(e.status, {"error": e.message}, headers)
        except Exception as e:  # a bug of this server: answer (the client retries 500s), details in server.log
            traceback.print_exc()
            self.send(500, {"error": f"test hub server error: {e!r}"})

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, then the blank line
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Invalid JSON body")

    def take_fault(self, path: str) -> dict | None:
        faults_file = self.store.root / "faults.json"
        with LOCK:
            faults = json.loads(faults_file.read_text()) if faults_file.exists() else []
            for i, f in enumerate(faults):
                if f.get("path", "") in path and (f["kind"] == "status" or self.command == "GET"):
                    faults_file.write_text(json.dumps(faults[:i] + faults[i + 1:]))
                    return f
        return None

    def send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in {"Content-Type": "application/octet-stream", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if self.drop_after is not None and self.drop_after < len(body):  # injected network failure
            self.wfile.write(body[: self.drop_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def send_content(self, data: bytes, headers: dict):
        """200, or 206 for a `Range: bytes=a-b` request (how the client resumes an interrupted download)."""
        headers = {**headers, "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
        if rng is None or not m or m[1] == m[2] == "":
            return self.send(200, data, headers)
        start, end = (int(m[1]), int(m[2] or len(data) - 1)) if m[1] else (max(0, len(data) - int(m[2])), len(data) - 1)
        if start >= len(data) or start > end:
            return self.send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
        end = min(end, len(data) - 1)
        self.send(206, data[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    # -- access control -----------------------------------------------------------------------------------------
    def authorized(self) -> bool:
        header = self.headers.get("Authorization")
        if header is not None and header != f"Bearer {TOKEN}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return header is not None

    def need_repo(self, repo: str, write: bool = False, download: bool = False) -> dict:
        authed = self.authorized()
        meta = self.store.meta(repo)
        if meta is None or (meta["private"] and not authed):
            # as on the Hub: 401 when anonymous (it might exist), 404 when authenticated
            raise HubError(404 if authed else 401, "Repository not found", "RepoNotFound")
        if write and not authed:
            raise HubError(401, "You must be authenticated to write to this repository")
        if download and meta["gated"] and not authed:
            raise HubError(403, f"Access to model {repo} is restricted. You must have access to it and be "
                                "authenticated to access it. Please log in.", "GatedRepo")
        return meta

    def need_rev(self, repo: str, rev: str) -> str:
        commit = self.store.resolve(repo, rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def tree_item(self, e: dict) -> dict:
        return {k: v for k, v in e.items() if v is not None}

    # -- downloads ----------------------------------------------------------------------------------------------
    def resolve(self, repo: str, rev: str, path: str):
        self.need_repo(repo, download=True)
        commit = self.need_rev(repo, rev)
        entry = self.store.entries(repo, commit).get(path)
        headers = {"X-Repo-Commit": commit}
        if entry is None or entry["type"] != "file":
            raise HubError(404, f"{path} does not exist on \"{rev}\"", "EntryNotFound", headers)
        if entry["lfs"]:  # large file: redirect to the content store, like the Hub's redirect to its CDN
            sha = entry["lfs"]["oid"]
            self.send(302, b"", {**headers, "Location": f"{self.cdn}/cdn/lfs/{sha}", "ETag": f'"{sha}"',
                                 "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(entry["size"])})
        else:
            self.send_content(self.store.blob(repo, entry["oid"]), {**headers, "ETag": f'"{entry["oid"]}"'})

    def cdn_get(self, sha: str):
        try:
            data = self.store.lfs_path(sha).read_bytes()
        except FileNotFoundError:
            raise HubError(404, "NoSuchKey")
        self.send_content(data, {"ETag": f'"{sha}"'})

    def info(self, repo: str, rev: str = "main"):
        meta = self.need_repo(repo)
        commit = self.need_rev(repo, rev)
        files = [e for e in self.store.entries(repo, commit).values() if e["type"] == "file"]
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = [{"rfilename": e["path"], **({"size": e["size"], "blobId": e["oid"]} if blobs else {}),
                     **({"lfs": {"sha256": e["lfs"]["oid"], "size": e["lfs"]["size"],
                                 "pointerSize": e["lfs"]["pointerSize"]}} if blobs and e["lfs"] else {})}
                    for e in files]
        date = self.store.log(repo, commit, limit=1)[0]["date"]
        return {"_id": commit[:24], "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": commit,
                "lastModified": iso(int(date)), "createdAt": iso(meta["created"]), "private": meta["private"],
                "gated": "auto" if meta["gated"] else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "siblings": siblings, "spaces": []}

    def tree(self, repo: str, rev: str, path: str = ""):
        self.need_repo(repo)
        entries = self.store.entries(repo, self.need_rev(repo, rev))
        path = path.strip("/")
        if path and entries.get(path, {}).get("type") != "directory":
            raise HubError(404, f"{path} does not exist on \"{rev}\"", "EntryNotFound")
        prefix = path + "/" if path else ""
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        return [self.tree_item(e) for p, e in sorted(entries.items())
                if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])]

    def paths_info(self, repo: str, rev: str):
        self.need_repo(repo)
        entries = self.store.entries(repo, self.need_rev(repo, rev))
        paths = parse_qs(self.body.decode()).get("paths", [])
        return [self.tree_item(entries[p.strip("/")]) for p in paths if p.strip("/") in entries]

    def list_refs(self, repo: str):
        self.need_repo(repo)
        refs = self.store.refs(repo)

        def of(prefix, full_name=False):
            return [{"name": n if full_name else n[len(prefix):], "ref": n, "targetCommit": c}
                    for n, c in sorted(refs.items()) if n.startswith(prefix)]

        return {"branches": of("refs/heads/"), "converts": [], "tags": of("refs/tags/"),
                "pullRequests": of("refs/pr/", full_name=True)}

    def commits(self, repo: str, rev: str):
        self.need_repo(repo)
        return [{"id": c["id"], "title": c["title"], "message": c["message"], "authors": [{"user": c["author"]}],
                 "date": iso(int(c["date"]))} for c in self.store.log(repo, self.need_rev(repo, rev))]

    # -- uploads ------------------------------------------------------------------------------------------------
    def whoami(self):
        if not self.authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        return {"type": "user", "id": "0" * 24, "name": USER, "fullname": "Test User", "email": f"{USER}@example.com",
                "emailVerified": True, "isPro": False, "canPay": False, "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}

    def agent_harnesses(self):  # fetched by huggingface_hub >= 1.x to detect AI agents; empty registry here
        return {"standardEnvVars": [], "harnesses": {}}

    def create_repo(self):
        if not self.authorized():
            raise HubError(401, "You must be authenticated to create a repository")
        body = self.json_body()
        if body.get("type", "model") != "model":
            raise HubError(400, "This test Hub only hosts model repositories")
        repo = f"{body.get('organization') or USER}/{body.get('name')}"
        if not re.fullmatch(REPO, repo):
            raise HubError(400, f"Invalid repository name {repo!r}")
        url = f"{self.hub}/{repo}"
        private = body.get("visibility") == "private" or body.get("private") is True
        if not self.store.create(repo, private=private):  # the client reads `url` from the 409 body (exist_ok)
            return self.send(409, {"error": "You already created this model repo", "url": url},
                             {"X-Error-Message": "You already created this model repo"})
        return {"url": url, "name": repo, "id": self.store.resolve(repo, "main")}

    def validate_yaml(self):
        """Structural check of the README front matter (no YAML parser in the standard library)."""
        content = self.json_body().get("content", "")
        errors, warnings, keys = [], [], []
        m = re.match(r"---\r?\n(.*?)^---[ \t]*$", content, re.S | re.M) if content.startswith("---") else None
        if content.startswith("---") and not m:
            errors.append("Invalid YAML metadata: the block opened by '---' is never closed")
        for line in (m[1] if m else "").splitlines():
            indent = line[: len(line) - len(line.lstrip())]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" in indent:
                errors.append(f"Invalid YAML metadata: tab indentation in {line!r}")
            elif not indent and not line.startswith("- "):
                key, sep, _ = line.partition(":")
                if not sep:
                    errors.append(f"Invalid YAML metadata: cannot parse {line!r}")
                elif key.strip() in keys:
                    errors.append(f'Invalid YAML metadata: duplicated key "{key.strip()}"')
                keys.append(key.strip())
        if not keys and not errors:
            warnings.append("empty or missing yaml metadata in repo card")
        body = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
        self.send(400 if errors else 200, body)

    def preupload(self, repo: str, rev: str):
        self.need_repo(repo, write=True)
        entries = self.store.entries(repo, self.need_rev(repo, rev))
        files = []
        for f in self.json_body().get("files", []):
            lfs = is_lfs(f["path"], f["size"], base64.b64decode(f.get("sample", "")))
            current = entries.get(f["path"])
            oid = current and current["type"] == "file" and (current["lfs"] or {}).get("oid", current["oid"])
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid or None})
        return {"files": files}

    def lfs_batch(self, repo: str):
        self.need_repo(repo, write=True)
        objects = []
        for o in self.json_body().get("objects", []):
            obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if not self.store.has_lfs(repo, o["oid"]):  # already uploaded to this repo => no actions => no upload
                obj["actions"] = {"upload": {"href": f"{self.cdn}/cdn/upload/{repo}/{o['oid']}", "expires_in": 3600},
                                  "verify": {"href": f"{self.hub}/{repo}.git/info/lfs/objects/verify"}}
            objects.append(obj)
        self.send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def cdn_put(self, repo: str, sha: str):
        if self.store.meta(repo) is None:
            raise HubError(404, "NoSuchBucket")
        if hashlib.sha256(self.body).hexdigest() != sha:
            raise HubError(400, "Content does not match the sha256 of the upload URL")
        self.store.put_lfs(repo, self.body)
        self.send(200, b"", {"ETag": f'"{sha}"'})

    def lfs_verify(self, repo: str):
        self.need_repo(repo, write=True)
        body = self.json_body()
        oid = str(body.get("oid"))
        if not self.store.has_lfs(repo, oid) or self.store.lfs_path(oid).stat().st_size != body.get("size"):
            raise HubError(404, "Object not found")
        return {}

    def commit(self, repo: str, rev: str):
        self.need_repo(repo, write=True)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of the payload must be the commit header")
        header, ops = lines[0]["value"], []
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                ops.append(("blob", value["path"], base64.b64decode(value["content"])))
            elif key == "lfsFile":
                if not self.store.has_lfs(repo, value["oid"]):
                    raise HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                ops.append(("lfs", value["path"], value["oid"], self.store.lfs_path(value["oid"]).stat().st_size))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append(("delete" if key == "deletedFile" else "delete_folder", value["path"]))
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
        with LOCK:
            refs = self.store.refs(repo)
            ref = f"refs/heads/{rev}" if f"refs/heads/{rev}" in refs else rev
            if ref not in refs or not ref.startswith(("refs/heads/", "refs/pr/")):
                if self.store.resolve(repo, rev):
                    raise HubError(400, f"Cannot commit to {rev!r}: not a branch")
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            if header.get("parentCommit") and header["parentCommit"] != refs[ref]:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            pr = None
            if self.query.get("create_pr") == "1":
                pr = 1 + max([int(n.rsplit("/", 1)[1]) for n in refs if n.startswith("refs/pr/")] or [0])
            try:
                sha = self.store.commit(repo, f"refs/pr/{pr}" if pr else ref, ops, message, base=refs[ref])
            except LookupError as e:
                raise HubError(404, f"A file with this name doesn't exist: {e}", "EntryNotFound")
        return {"success": True, "commitOid": sha, "commitUrl": f"{self.hub}/{repo}/commit/{sha}", "hookOutput": "",
                **({"pullRequestUrl": f"{self.hub}/{repo}/discussions/{pr}"} if pr else {})}

    def branch(self, repo: str, rev: str):
        self.need_repo(repo, write=True)
        start = self.need_rev(repo, self.json_body().get("startingPoint") or "main")
        with LOCK:
            if f"refs/heads/{rev}" in self.store.refs(repo):
                raise HubError(409, f"Reference refs/heads/{rev} already exists")
            self.store.git(repo, "update-ref", f"refs/heads/{rev}", start, "0" * 40)
        return {}

    def tag(self, repo: str, rev: str):
        self.need_repo(repo, write=True)
        commit, name = self.need_rev(repo, rev), self.json_body()["tag"]
        with LOCK:
            if f"refs/tags/{name}" in self.store.refs(repo):
                raise HubError(409, f"Tag {name} already exists")
            self.store.git(repo, "update-ref", f"refs/tags/{name}", commit, "0" * 40)
        return {}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, role: str, store: Store, cdn: str):
        super().__init__(("127.0.0.1", port), Handler)
        self.role, self.store, self.cdn = role, store, cdn

    def handle_error(self, request, client_address):  # dropped connections are expected; keep stderr readable
        if not isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            super().handle_error(request, client_address)


def exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cdn-port", type=int, required=True)
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args()
    if args.parent_pid:  # do not outlive the test session, even if it is killed
        threading.Thread(target=exit_when_orphaned, args=(args.parent_pid,), daemon=True).start()
    store, cdn = Store(args.root), f"http://127.0.0.1:{args.cdn_port}"
    hub, cdn_server = Server(args.port, "hub", store, cdn), Server(args.cdn_port, "cdn", store, cdn)
    threading.Thread(target=cdn_server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    hub.serve_forever()


if __name__ == "__main__":
    main()
