"""The local Hub (tests/hub_server) driven by the real huggingface_hub client, with no code of ours in between.

These tests pin what the client sends and expects, so a client upgrade that changes the protocol fails here first.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub")
import httpx2  # noqa: E402  (huggingface_hub's HTTP client)
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download  # noqa: E402
from huggingface_hub.hf_api import RepoFolder  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def api(hub_server):
    return HfApi(endpoint=hub_server.endpoint, token=hub_server.token)


def test_environment_points_the_client_at_the_local_hub(hub_server):
    from huggingface_hub import constants

    assert constants.ENDPOINT == hub_server.endpoint == os.environ["HF_ENDPOINT"]
    assert constants.HF_HUB_DISABLE_XET and constants.HF_HUB_DISABLE_TELEMETRY and not constants.HF_HUB_OFFLINE
    assert hf.get_token() is None  # no token leaks in from the machine running the tests


def test_download_by_branch_tag_full_and_short_commit_and_pr(hub_server, hub_cache, api):
    repo = "org/revisions"
    v1 = hub_server.seed(repo, {"config.json": '{"v": 1}'}, tag="v1")
    v2 = hub_server.seed(repo, {"config.json": '{"v": 2}'})
    pr = api.upload_file(path_or_fileobj=b'{"v": 3}', path_in_repo="config.json", repo_id=repo, create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and hub_server.commits(repo, "refs/pr/1")[1:] == hub_server.commits(repo)

    cases = {"main": (v2, 2), "v1": (v1, 1), v1: (v1, 1), v1[:7]: (v1, 1), "refs/pr/1": (pr.oid, 3)}
    for revision, (commit, version) in cases.items():
        path = Path(hf_hub_download(repo, "config.json", revision=revision))
        assert path.read_text() == f'{{"v": {version}}}'
        assert path.parent.name == commit  # the snapshot is named by the full commit id the server resolved

    storage = hub_cache / "models--org--revisions"
    assert {p.name for p in storage.iterdir()} >= {"blobs", "refs", "snapshots"}
    refs = {str(p.relative_to(storage / "refs")): p.read_text() for p in (storage / "refs").rglob("*") if p.is_file()}
    assert refs == {"main": v2, "v1": v1, v1[:7]: v1, "refs/pr/1": pr.oid}
    assert ("HEAD", f"/{repo}/resolve/refs%2Fpr%2F1/config.json") in hub_server.requests  # the revision is quoted


def test_snapshot_layout_and_a_new_commit_reuses_unchanged_blobs(hub_server, hub_cache):
    repo, weights = "org/snapshot", os.urandom(4096)
    c1 = hub_server.seed(repo, {"config.json": "{}", "model.safetensors": weights, "tokenizer/vocab.txt": "a\nb\n"})
    snap1 = Path(snapshot_download(repo))
    storage = hub_cache / "models--org--snapshot"
    assert snap1 == storage / "snapshots" / c1 and (storage / "refs" / "main").read_text() == c1
    files = sorted(str(p.relative_to(snap1)) for p in snap1.rglob("*") if p.is_file())
    assert files == [".gitattributes", "config.json", "model.safetensors", "tokenizer/vocab.txt"]
    # blobs are named by ETag: the git blob id of a regular file, the sha256 of a large (LFS) file
    assert (snap1 / "config.json").resolve() == (storage / "blobs" / git_blob_id(b"{}")).resolve()
    assert (snap1 / "model.safetensors").resolve() == (storage / "blobs" / sha256(weights)).resolve()

    hub_server.clear_log()
    c2 = hub_server.seed(repo, {"config.json": '{"changed": true}'})
    snap2 = Path(snapshot_download(repo))
    assert snap2.name == c2 and snap1.is_dir() and (storage / "refs" / "main").read_text() == c2
    assert (snap2 / "model.safetensors").resolve() == (snap1 / "model.safetensors").resolve()  # same blob file
    assert (snap2 / "config.json").read_text() == '{"changed": true}'
    assert len(list((storage / "blobs").iterdir())) == 5  # .gitattributes, 2 configs, weights, vocab
    gets = [path for method, path in hub_server.requests if method == "GET"]
    assert f"/{repo}/resolve/{c2}/config.json" in gets and not [p for p in gets if p.startswith("/cdn/")]
    assert hub_server.requests[:2] == [("GET", f"/api/models/{repo}/revision/main"),
                                       ("GET", f"/api/models/{repo}/tree/{c2}")]


def test_file_metadata_etags_redirect_and_range(hub_server, hub_cache):
    repo, weights = "org/metadata", os.urandom(3000)
    commit = hub_server.seed(repo, {"config.json": '{"a": 1}', "model.safetensors": weights})
    meta = get_hf_file_metadata(hf_hub_url(repo, "config.json"))
    assert (meta.commit_hash, meta.etag, meta.size) == (commit, git_blob_id(b'{"a": 1}'), 8)
    assert meta.location == hf_hub_url(repo, "config.json")
    meta = get_hf_file_metadata(hf_hub_url(repo, "model.safetensors"))
    assert (meta.commit_hash, meta.etag, meta.size) == (commit, sha256(weights), 3000)
    # a large file is a 302 to another origin (the "CDN"): the client reads X-Linked-* there and does not follow
    assert meta.location == f"http://127.0.0.1:{hub_server.cdn_port}/cdn/lfs/{sha256(weights)}"
    # ...and git holds only its LFS pointer
    pointer = hub_server.store.git(repo, "show", "main:model.safetensors").decode()
    assert pointer == f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(weights)}\nsize 3000\n"

    session = hf.get_session()
    r = session.get(hf_hub_url(repo, "config.json"), headers={"Range": "bytes=2-4"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b'a":', "bytes 2-4/8")
    r = session.get(meta.location, headers={"Range": "bytes=2990-"})
    assert (r.status_code, r.content) == (206, weights[2990:])


def test_interrupted_download_resumes_with_a_range_request(hub_server, hub_cache):
    # The client writes in chunks of DOWNLOAD_CHUNK_SIZE (10 MiB): only bytes of completed chunks survive a
    # dropped connection, so the file is 12 MiB and the connection drops after 11 MiB.
    repo, data = "org/resume", os.urandom(12 * 2**20)
    hub_server.seed(repo, {"model.safetensors": data})
    hub_server.clear_log()
    hub_server.drop_connection_once(after_bytes=11 * 2**20, path_contains=sha256(data))
    path = Path(hf_hub_download(repo, "model.safetensors"))
    assert path.read_bytes() == data
    gets = [(r["path"], r["range"]) for r in hub_server.log if r["method"] == "GET"]
    chunk = hf.constants.DOWNLOAD_CHUNK_SIZE
    assert gets == [(f"/cdn/lfs/{sha256(data)}", None), (f"/cdn/lfs/{sha256(data)}", f"bytes={chunk}-")]
    assert [p.name for p in path.resolve().parent.iterdir()] == [sha256(data)]  # no *.incomplete left behind


def test_errors_map_to_the_clients_typed_errors(hub_server, hub_cache, api):
    commit = hub_server.seed("org/errors", {"config.json": "{}"})
    hub_server.seed("org/private", {"config.json": "{}"}, private=True)
    hub_server.seed("org/gated", {"config.json": "{}"}, gated=True)

    def error(call, *args, **kwargs) -> HfHubHTTPError:
        with pytest.raises(HfHubHTTPError) as info:
            call(*args, **kwargs)
        return info.value

    for repo, token, status in [("org/missing", None, 401), ("org/missing", hub_server.token, 404),
                                ("org/private", None, 401)]:
        e = error(hf_hub_download, repo, "config.json", token=token)
        assert type(e) is RepositoryNotFoundError and e.response.status_code == status
        assert e.response.headers["X-Error-Code"] == "RepoNotFound"
    e = error(hf_hub_download, "org/gated", "config.json")
    assert isinstance(e, GatedRepoError) and e.response.status_code == 403
    e = error(hf_hub_download, "org/errors", "config.json", revision="nope")
    assert isinstance(e, RevisionNotFoundError) and e.response.status_code == 404
    e = error(hf_hub_download, "org/errors", "nopé.json")
    assert isinstance(e, RemoteEntryNotFoundError) and isinstance(e, EntryNotFoundError)
    assert (hub_cache / "models--org--errors" / ".no_exist" / commit / "nopé.json").exists()  # via X-Repo-Commit
    e = error(hf_hub_download, "org/errors", "config.json", token="hf_wrong")
    assert type(e) is HfHubHTTPError and e.response.status_code == 401
    assert e.server_message == "Invalid credentials in Authorization header"
    for repo in ("org/private", "org/gated"):  # the test user's token opens both
        assert Path(hf_hub_download(repo, "config.json", token=hub_server.token)).read_text() == "{}"

    assert type(error(HfApi(token=False).repo_info, "org/private")) is RepositoryNotFoundError
    assert isinstance(error(api.repo_info, "org/errors", revision="nope"), RevisionNotFoundError)
    assert isinstance(error(lambda: list(api.list_repo_tree("org/errors", "nope"))), RemoteEntryNotFoundError)
    assert isinstance(error(snapshot_download, "org/errors", revision="nope"), RevisionNotFoundError)


def test_create_repo_conflict_exist_ok_private_and_whoami(hub_server, api):
    assert api.whoami()["name"] == "test-user"
    assert api.create_repo("org/created").repo_id == "org/created"
    assert api.list_repo_files("org/created") == [".gitattributes"]  # as on the Hub: one initial commit
    assert len(hub_server.commits("org/created")) == 1
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("org/created")
    assert e.value.response.status_code == 409
    assert api.create_repo("org/created", exist_ok=True).repo_id == "org/created"
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(token=False).create_repo("org/anonymous")
    assert e.value.response.status_code == 401

    api.create_repo("org/created-private", private=True)
    assert api.repo_info("org/created-private").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).repo_info("org/created-private")


def test_upload_folder_then_download_identical_bytes(hub_server, hub_cache, api, tmp_path):
    repo = "org/uploaded"
    files = {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(2048), "big.txt": b"x" * 200_000,
             "sub/notes.md": b"hello", "empty.txt": b"", "sub/ünï cödé.txt": "ü".encode()}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    api.create_repo(repo)
    hub_server.clear_log()
    info = api.upload_folder(repo_id=repo, folder_path=tmp_path, commit_message="upload")

    assert info.oid == hub_server.commits(repo)[0]
    assert info.commit_url == f"{hub_server.endpoint}/{repo}/commit/{info.oid}"
    assert hub_server.store.log(repo, info.oid)[0]["title"] == "upload"
    large = sorted(sha256(files[n]) for n in ("model.safetensors", "big.txt"))  # by extension, by size
    requests, verify = hub_server.requests, ("POST", f"/{repo}.git/info/lfs/objects/verify")
    batch = ("POST", f"/{repo}.git/info/lfs/objects/batch")
    assert requests[:2] == [("POST", f"/api/models/{repo}/preupload/main"), batch]
    puts = [("PUT", f"/cdn/upload/{repo}/{s}") for s in large]  # to the "S3" origin, presigned: no token sent
    assert sorted(requests[2:-1]) == sorted([*puts, verify, verify])
    assert requests[-1] == ("POST", f"/api/models/{repo}/commit/main")
    assert all(r["auth"] is None for r in hub_server.log if r["method"] == "PUT")

    snapshot = Path(snapshot_download(repo))
    for name, data in files.items():
        assert (snapshot / name).read_bytes() == data
    tree = {f.path: f for f in api.list_repo_tree(repo, recursive=True)}
    assert tree["model.safetensors"].lfs.sha256 == sha256(files["model.safetensors"])
    assert tree["config.json"].lfs is None and tree["config.json"].blob_id == git_blob_id(files["config.json"])
    assert tree["empty.txt"].size == 0 and isinstance(tree["sub"], RepoFolder)
    siblings = {s.rfilename: s for s in api.repo_info(repo, files_metadata=True).siblings}
    assert siblings["big.txt"].size == 200_000 and siblings["big.txt"].lfs.sha256 == sha256(files["big.txt"])
    assert api.list_repo_refs(repo).branches[0].target_commit == info.oid


def test_recommitting_unchanged_files_uploads_no_lfs_bytes(hub_server, api, tmp_path):
    repo, weights = "org/unchanged", os.urandom(2048)
    (tmp_path / "model.safetensors").write_bytes(weights)
    (tmp_path / "config.json").write_text("{}")
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=tmp_path)
    head = hub_server.commits(repo)

    # Same files again: the LFS batch answers "already stored" (no upload action), preupload reported the files'
    # current oids, so the client sees a no-op and makes no commit (it reads the head from repo_info instead).
    hub_server.clear_log()
    info = api.upload_folder(repo_id=repo, folder_path=tmp_path)
    assert info.oid == head[0] and hub_server.commits(repo) == head
    assert hub_server.requests == [("POST", f"/api/models/{repo}/preupload/main"),
                                   ("POST", f"/{repo}.git/info/lfs/objects/batch"),
                                   ("GET", f"/api/models/{repo}/revision/main")]

    hub_server.clear_log()  # same bytes under a new name: the LFS batch says "already stored", no PUT, one commit
    info = api.upload_file(path_or_fileobj=weights, path_in_repo="copy.safetensors", repo_id=repo)
    assert hub_server.commits(repo) == [info.oid, *head]
    assert not [p for m, p in hub_server.requests if m == "PUT"]
    assert ("POST", f"/{repo}.git/info/lfs/objects/batch") in hub_server.requests

    hub_server.clear_log()  # LFS objects belong to a repo: the same bytes pushed to another repo are uploaded again
    api.create_repo("org/unchanged-elsewhere")
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id="org/unchanged-elsewhere")
    puts = [p for m, p in hub_server.requests if m == "PUT"]
    assert puts == [f"/cdn/upload/org/unchanged-elsewhere/{sha256(weights)}"]


def test_pull_requests_branches_tags_and_deletes(hub_server, hub_cache, api):
    repo = "org/prs"
    base = hub_server.seed(repo, {"config.json": "1", "extra/a.txt": "a", "extra/b.txt": "b"})
    pr = api.upload_file(path_or_fileobj=b"2", path_in_repo="config.json", repo_id=repo, create_pr=True)
    assert (pr.pr_num, pr.pr_revision, pr.pr_url) == (1, "refs/pr/1", f"{hub_server.endpoint}/{repo}/discussions/1")
    assert hub_server.commits(repo)[0] == base and hub_server.commits(repo, "refs/pr/1")[:2] == [pr.oid, base]
    assert Path(hf_hub_download(repo, "config.json", revision="refs/pr/1")).read_text() == "2"
    assert api.upload_file(path_or_fileobj=b"3", path_in_repo="x", repo_id=repo, create_pr=True).pr_num == 2
    refs = api.list_repo_refs(repo, include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1", "refs/pr/2"]

    api.create_branch(repo, branch="dev")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_branch(repo, branch="dev")
    assert e.value.response.status_code == 409
    api.create_branch(repo, branch="dev", exist_ok=True)
    dev = api.upload_file(path_or_fileobj=b"dev", path_in_repo="config.json", repo_id=repo, revision="dev")
    api.create_tag(repo, tag="release", revision="dev")
    assert Path(hf_hub_download(repo, "config.json", revision="release")).read_text() == "dev"
    assert {r.name: r.target_commit for r in api.list_repo_refs(repo).branches} == {"main": base, "dev": dev.oid}
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo, revision="no-such-branch")

    api.delete_folder("extra", repo_id=repo)
    assert api.list_repo_files(repo) == [".gitattributes", "config.json"]
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("extra/a.txt", repo_id=repo)
    titles = [c.title for c in api.list_repo_commits(repo)]
    assert titles == ["Delete folder extra with huggingface_hub", "seed", "initial commit"]


def test_validate_yaml_guards_readme_uploads(hub_server, api):
    repo = "org/card"
    head = hub_server.seed(repo, {})
    for bad, reason in [("---\nlicense: mit\nlicense: apache-2.0\n---\n", "duplicated key"),
                        ("---\nlicense: mit\n", "never closed")]:
        with pytest.raises(ValueError, match=f"Invalid metadata in README.md.(.|\n)*{reason}"):
            api.upload_file(path_or_fileobj=bad.encode(), path_in_repo="README.md", repo_id=repo)
    assert hub_server.commits(repo)[0] == head and ("POST", "/api/validate-yaml") in hub_server.requests
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\ntags:\n- test\n---\n# Card\n", path_in_repo="README.md",
                    repo_id=repo)
    with pytest.warns(UserWarning, match="empty or missing yaml metadata"):
        api.upload_file(path_or_fileobj=b"# No metadata\n", path_in_repo="README.md", repo_id=repo)
    assert len(hub_server.commits(repo)) == 4


def test_stopped_server_is_really_down_and_cached_files_still_resolve(hub_server, hub_cache, api):
    repo = "org/downtime"
    hub_server.seed(repo, {"config.json": "{}"})
    cached = hf_hub_download(repo, "config.json")
    hub_server.stop()
    try:
        assert not hub_server.running
        with pytest.raises(httpx2.ConnectError):
            api.repo_info(repo)
        assert hf_hub_download(repo, "config.json") == cached  # HEAD fails => the client falls back to its cache
        with pytest.raises(LocalEntryNotFoundError):  # nothing cached: fails at once. (hf_hub_download of an
            snapshot_download("org/never-downloaded")  # uncached file would retry its HEAD 5 times: 23 s of backoff)
    finally:
        hub_server.start()
    assert api.repo_info(repo).sha == hub_server.commits(repo)[0]


def test_injected_server_error_is_retried_by_the_client(hub_server, api):
    hub_server.seed("org/flaky", {"config.json": "{}"})
    hub_server.clear_log()
    hub_server.fail_once(503, path_contains="/api/models/org/flaky/tree/")
    assert [f.path for f in api.list_repo_tree("org/flaky")] == [".gitattributes", "config.json"]
    assert [p for m, p in hub_server.requests].count("/api/models/org/flaky/tree/main") == 2  # http_backoff retried


def test_without_hf_hub_disable_xet_uploads_ask_for_a_xet_token(hub_server, tmp_path):
    """Pins what the client does when Xet is NOT disabled (hf_xet installed): downloads of a file the server serves
    without Xet headers use plain HTTP, but uploads go through hf_xet, which first asks the Hub for a Xet write token
    (GET /api/models/{repo}/xet-write-token/{revision}). The local Hub does not speak Xet: that request 404s and the
    upload fails with a ConnectionError raised by hf_xet. If this test fails, the client changed its protocol."""
    pytest.importorskip("hf_xet")
    repo, weights = "org/xet", os.urandom(3000)
    hub_server.seed(repo, {"model.safetensors": weights})
    script = textwrap.dedent(f"""
        import os
        import huggingface_hub as hf
        from huggingface_hub.utils._runtime import is_xet_available
        assert is_xet_available()
        path = hf.hf_hub_download({repo!r}, "model.safetensors")
        print("downloaded", os.path.getsize(path))
        try:
            hf.HfApi(token={hub_server.token!r}).upload_file(
                path_or_fileobj=b"\\0" * 100, path_in_repo="new.safetensors", repo_id={repo!r})
        except Exception as e:
            print("upload error", type(e).__module__, type(e).__name__, e)
    """)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_XET"}
    env.update(HF_HOME=str(tmp_path), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    hub_server.clear_log()
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert run.returncode == 0, run.stderr
    assert "downloaded 3000" in out
    assert "upload error builtins ConnectionError" in out and f"/api/models/{repo}/xet-write-token/main" in out
    assert "404" in out
    assert hub_server.requests == [
        ("HEAD", f"/{repo}/resolve/main/model.safetensors"),
        ("GET", f"/cdn/lfs/{sha256(weights)}"),
        ("POST", f"/api/models/{repo}/preupload/main"),
        ("GET", f"/api/models/{repo}/xet-write-token/main"),  # no LFS batch call: Xet replaces it
    ]
    assert hub_server.log[-1]["auth"] == f"Bearer {hub_server.token}"
