"""Custom code that comes with a checkpoint: the trust gate, pinned revisions and the module cache.

A checkpoint's `config.json` may carry `auto_map`, e.g. `{"AutoConfig": "configuration_x.XConfig",
"AutoModel": "modeling_x.XModel"}`, or `"org/other--modeling_x.XModel"` for code kept in another repo. This is
the only module of the library that imports such code, and it does so only when the caller said
`trust_remote_code=True`:

1. the module file and every file it imports relatively are fetched (a folder, or the Hub at one commit);
   a relative import that leaves the repo's folder is refused;
2. their imports are read with `ast` (nothing runs) and a missing package is named with its `pip install`;
3. the files are copied into the module cache, `<HF_MODULES_CACHE or HF_HOME/modules>/pretrained_modules/`,
   under `<org>/<name>/<commit>/` for a Hub repo and `local/<content hash>/` for a folder: a commit's code is
   never reused for another commit, and a folder's changed code gets a new directory;
4. the copy is imported as its own package (one per repo and commit, so two repos' `modeling_x.py` never meet).

Framework-neutral: nothing here imports torch.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import types
import uuid
from typing import Any

from .errors import MissingDependencyError, RemoteCodeError, UntrustedCodeError

PACKAGE = "pretrained_modules"  # the package (and cache folder) our copies of checkpoint code live under
_COMMIT = re.compile(r"[0-9a-f]{40}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
# import name -> pip name, where they differ (the common ones; anything else is installed under its import name)
_PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "Pillow", "cv2": "opencv-python", "yaml": "PyYAML",
              "bs4": "beautifulsoup4", "attr": "attrs", "google": "protobuf", "skimage": "scikit-image",
              "flash_attn": "flash-attn", "sentencepiece": "sentencepiece", "Crypto": "pycryptodome"}


# ---- auto_map -------------------------------------------------------------------------------------------------------
def parse_reference(reference: Any) -> tuple[str | None, str, str]:
    """`"org/repo--modeling_x.XModel"` -> ("org/repo", "modeling_x", "XModel"); no repo part -> (None, ...).

    A module part may name a subfolder with dots ("sub.modeling_x"); every part must be a Python identifier, so
    a reference can name no absolute path and no parent folder."""
    if isinstance(reference, (list, tuple)):  # tokenizer entries are pairs; the first non-empty one is used
        reference = next((r for r in reference if r), None)
    if not isinstance(reference, str):
        raise RemoteCodeError(f"auto_map entry {reference!r} is not a string such as 'modeling_x.XModel'.")
    repo, sep, ref = reference.rpartition("--")
    module, _, name = ref.rpartition(".")
    parts = module.split(".")
    if not module or not name or not all(_IDENT.fullmatch(p) for p in (*parts, name)):
        raise RemoteCodeError(
            f"auto_map entry '{reference}' is not of the form 'module_file.ClassName' (or 'org/repo--module_file."
            "ClassName'); module and class names must be Python identifiers, which rules out paths."
        )
    if sep and (not _REPO_ID.fullmatch(repo) or ".." in repo):
        raise RemoteCodeError(f"auto_map entry '{reference}' names '{repo}' as the code's repo; that is not a Hub repo "
                              "id ('org/name'). Code is only taken from the checkpoint itself or from a Hub repo.")
    return (repo if sep else None), module, name


def check_auto_map(auto_map: Any, source: str) -> None:
    """Check every entry of the `auto_map` of `source`'s config.json before any of its code is fetched: a module
    or repo part that could name a path ("../x", "/abs", "a/b") raises RemoteCodeError naming the file and key."""
    if not isinstance(auto_map, dict):
        raise RemoteCodeError(f"config.json of '{source}': 'auto_map' is {type(auto_map).__name__}, not an object "
                              "mapping Auto class names to 'module_file.ClassName'. Fix or remove it.")
    for key, reference in auto_map.items():
        try:
            parse_reference(reference)
        except RemoteCodeError as e:
            raise RemoteCodeError(f"config.json of '{source}', key auto_map[{key!r}]: {e} Nothing was fetched or "
                                  "run; fix that entry, or load without trust_remote_code.") from e


def code_files(auto_map: dict[str, Any]) -> list[str]:
    """The module files an `auto_map` names ("configuration_x.py", "modeling_x.py (from 'org/r')"), for messages."""
    out = []
    for ref in auto_map.values():
        try:
            repo, module, _ = parse_reference(ref)
        except RemoteCodeError:
            out.append(repr(ref))
            continue
        name = module.replace(".", "/") + ".py"
        out.append(f"{name} (from '{repo}')" if repo else name)
    return sorted(set(out))


def check_trust(source: str, auto_map: dict[str, Any], trust_remote_code: bool | None, *, has_local: bool,
                what: str, hub: dict[str, Any] | None = None) -> bool:
    """Whether to use the checkpoint's own classes: True with trust; False when the library has its own class for
    this model type; otherwise an UntrustedCodeError that names the repo, the files that would run and the switch."""
    if trust_remote_code:
        check_auto_map(auto_map, source)
        return True
    if has_local:
        return False
    commit = loaded_commit(hub or {})
    at = f" (at commit {commit})" if commit and not os.path.isdir(source) else ""
    raise UntrustedCodeError(
        f"'{source}'{at} needs its own code for {what}: config.json's auto_map names "
        f"{', '.join(code_files(auto_map))} (and whatever those files import from the repo). That code would run "
        "on this machine with your permissions, so it was not loaded. Read it first; then, to allow it, pass "
        "trust_remote_code=True (and pin what you read with revision=... or code_revision=<commit>)."
    )


def loaded_commit(hub: dict[str, Any]) -> str | None:
    """The commit a load's first Hub file came from (its `_pin` record), or the full commit id it asked for."""
    pinned = next(iter((hub.get("_pin") or {}).values()), None)
    revision = hub.get("revision")
    return pinned or (revision if isinstance(revision, str) and _COMMIT.fullmatch(revision) else None)


def get_class(reference: Any, source: str | os.PathLike, *, code_revision: str | None = None,
              hub: dict[str, Any] | None = None) -> type:
    """The class an `auto_map` entry names, from the checkpoint `source` (a folder or a repo id). Call this only
    after the caller chose `trust_remote_code=True`: it imports the code.

    `hub` holds the load's Hub arguments (`revision`, `_pin`, `cache_dir`, `token`, `subfolder`, ...). Code in the
    checkpoint's own repo is read at `code_revision`, else at `revision` through the load's `_pin` (the same commit
    as config.json); code in another repo at `code_revision`, else its main branch.
    """
    repo, module, name = parse_reference(reference)
    source = os.fspath(source)
    hub = dict(hub or {})
    same = repo is None or repo == source
    where = source if same else repo
    if code_revision is not None:
        hub["revision"], hub["_pin"] = code_revision, {}
    elif not same:
        hub.pop("revision", None)
        hub["_pin"] = {}
    if not same:  # another repo's code comes from the Hub, never from a folder that happens to have its name
        hub.pop("subfolder", None)
        hub["hub_only"] = True
    package = _prepare(where, module.replace(".", "/") + ".py", hub)
    mod = importlib.import_module(f"{package}.{module}")
    cls = getattr(mod, name, None)
    if not isinstance(cls, type):
        raise RemoteCodeError(f"'{module}.py' of '{where}' defines no class '{name}' (auto_map names it).")
    return cls


# ---- fetching and caching -------------------------------------------------------------------------------------------
def modules_cache() -> str:
    """Where copies of checkpoint code live: $HF_MODULES_CACHE, else $HF_HOME/modules (as the reference)."""
    if os.environ.get("HF_MODULES_CACHE"):
        return os.path.expanduser(os.environ["HF_MODULES_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "modules")


def _prepare(where: str, entry: str, hub: dict[str, Any]) -> str:
    """Fetch `entry` and its relative imports, check their imports, copy them into the cache; the package name."""
    from .hub.resolve import resolve_file

    local = os.path.isdir(where) and not hub.get("hub_only")
    files: dict[str, str] = {}  # path inside the repo -> local path
    todo = [entry]
    while todo:
        rel = todo.pop()
        if rel in files:
            continue
        path = resolve_file(where, rel, **hub, required=False)
        if path is None:
            raise RemoteCodeError(f"'{where}' has no file '{rel}', which its custom code needs"
                                  + (" (auto_map names it)." if rel == entry else " (imported relatively)."))
        files[rel] = path
        todo.extend(relative_imports(path, rel, where))
    check_requirements(files, where)
    if local:  # keyed by the content of every .py file of the folder: one package per version of its code
        key = ("local", _folder_digest(os.path.join(where, hub.get("subfolder") or "")))
    else:
        commit = _commit_of(files[entry])
        if commit is None:
            raise RemoteCodeError(f"Could not tell which commit of '{where}' the file '{entry}' came from.")
        key = (*where.split("/"), commit)
    folder = os.path.join(modules_cache(), PACKAGE, *key)
    for rel, path in files.items():
        _copy(path, os.path.join(folder, *rel.split("/")))
    importlib.invalidate_caches()
    return _package(folder, "/".join(key))


def _folder_digest(root: str) -> str:
    digest = hashlib.sha256()
    for folder, dirs, names in sorted(os.walk(root)):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest.update(os.path.relpath(path, root).encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:32]


def _commit_of(path: str) -> str | None:
    parts = os.path.normpath(path).split(os.sep)
    if "snapshots" in parts[:-1]:
        commit = parts[parts.index("snapshots") + 1]
        return commit if _COMMIT.fullmatch(commit) else None
    return None


def _copy(src: str, dst: str) -> None:
    """Copy unless an identical file is there (atomically: a concurrent import never sees half a file)."""
    with open(src, "rb") as f:
        data = f.read()
    if os.path.isfile(dst):
        with open(dst, "rb") as f:
            if f.read() == data:
                return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dst)


def _package(folder: str, key: str) -> str:
    """A package in sys.modules whose path is `folder` (one per repo and commit); its name."""
    root = sys.modules.get(PACKAGE)
    if root is None:
        root = types.ModuleType(PACKAGE, "Copies of checkpoint code, one package per repo and commit.")
        root.__path__ = []
        sys.modules[PACKAGE] = root
    slug = re.sub(r"[^A-Za-z0-9_]", "_", key.rsplit("/", 1)[0])[:60]
    name = f"{PACKAGE}.{slug}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if name not in sys.modules:
        pkg = types.ModuleType(name, f"Code of {key}")
        pkg.__path__ = [folder]
        pkg.__package__ = name
        sys.modules[name] = pkg
        setattr(root, name.rpartition(".")[2], pkg)
    return name


# ---- reading code without running it --------------------------------------------------------------------------------
def relative_imports(path: str, rel: str, where: str = "") -> list[str]:
    """Paths (inside the repo) of the files that the file at repo path `rel` imports relatively, read with `ast`.

    `from .x import y` -> "x.py"; `from . import x` -> "x.py"; `from .sub.x import y` -> "sub/x.py". An import that
    climbs above the repo's root (`from .. import x` at the root) raises RemoteCodeError."""
    tree = _parse(path, rel, where)
    here = rel.split("/")[:-1]
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if node.level - 1 > len(here):
            raise RemoteCodeError(
                f"'{rel}' of '{where}' imports '{'.' * node.level}{node.module or ''}', which is outside the repo's "
                "folder; only code inside the checkpoint's own folder is loaded."
            )
        base = here[:len(here) - (node.level - 1)]
        if node.module:
            out.append("/".join(base + node.module.split(".")) + ".py")
        else:
            out.extend("/".join(base + [a.name]) + ".py" for a in node.names)
    return out


def _parse(path: str, rel: str, where: str) -> ast.AST:
    try:
        with open(path, encoding="utf-8") as f:
            return ast.parse(f.read(), filename=rel)
    except (SyntaxError, UnicodeDecodeError) as e:
        raise RemoteCodeError(f"'{rel}' of '{where}' is not valid Python source: {e}.") from e


def imported_packages(path: str, rel: str = "", where: str = "") -> set[str]:
    """Top-level names of the absolute imports of a file, skipping those inside `try:` blocks (optional ones)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(_parse(path, rel or path, where))
    return found


def check_requirements(files: dict[str, str], where: str) -> None:
    """Raise MissingDependencyError naming the packages the code imports that are not installed (found without
    importing them) and the `pip install` that would add them."""
    own = {rel.split("/")[0].removesuffix(".py") for rel in files}
    needed = set().union(*(imported_packages(p, r, where) for r, p in files.items())) - own - {"__future__"}
    missing = sorted(n for n in needed if n not in sys.modules and importlib.util.find_spec(n) is None)
    if missing:
        pip = " ".join(_PIP_NAMES.get(n, n) for n in missing)
        raise MissingDependencyError(
            f"The custom code of '{where}' imports packages that are not installed: {', '.join(missing)}. "
            f"Run `pip install {pip}`, then load again."
        )


# ---- saving custom code ---------------------------------------------------------------------------------------------
def check_auto_class(auto_class: Any) -> str:
    """The name of an Auto class (given by name or as the class), checked against the library's."""
    from . import registry

    name = auto_class if isinstance(auto_class, str) else getattr(auto_class, "__name__", repr(auto_class))
    if name not in ("AutoConfig", *registry.TASKS, *registry.FLAX_TASKS, *registry.TF_TASKS):
        raise ValueError(f"{name} is not an Auto class; use one of AutoConfig, {', '.join(registry.TASKS)}, or "
                         f"their Flax and TF twins ({', '.join(registry.FLAX_TASKS + registry.TF_TASKS)}).")
    return name


def files_for_class(cls: type) -> tuple[str, dict[str, str]]:
    """For a class to share: its auto_map entry ("modeling_x.XModel") and {file name: source text} of its module
    file and the files it imports relatively (all from the module's own folder, as the saved folder is flat)."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if cls.__module__ == "__main__" or not path or not path.endswith(".py"):
        raise RemoteCodeError(
            f"{cls.__name__} is defined in {cls.__module__!r}, not in a module file, so its code cannot be saved "
            "with the checkpoint. Move it into a .py file (e.g. modeling_x.py) and import it from there."
        )
    folder = os.path.dirname(path)
    entry = os.path.basename(path)
    texts: dict[str, str] = {}
    todo = [entry]
    while todo:
        rel = todo.pop()
        if rel in texts:
            continue
        file = os.path.join(folder, rel)
        if "/" in rel or not os.path.isfile(file):
            raise RemoteCodeError(
                f"{cls.__name__}'s module imports '{rel}' relatively, which is not a module file next to "
                f"'{entry}' in '{folder}'; only modules in the same folder can be saved with a checkpoint."
            )
        with open(file, encoding="utf-8") as f:
            texts[rel] = f.read()
        todo.extend(relative_imports(file, rel, folder))
    return f"{entry.removesuffix('.py')}.{cls.__name__}", texts


def code_to_save(config: Any, model_cls: type | None = None) -> dict[str, str]:
    """What `save_pretrained` writes for classes registered with `register_for_auto_class`: sets their entries in
    `config.auto_map` and returns {file name: source} of the module files (and their relative imports)."""
    files: dict[str, str] = {}
    for cls in (type(config), model_cls):
        auto_class = getattr(cls, "_auto_class", None) if cls is not None else None
        if auto_class is None:
            continue
        entry, texts = files_for_class(cls)
        auto_map = dict(getattr(config, "auto_map", None) or {})
        auto_map[auto_class] = entry
        config.auto_map = auto_map
        files.update(texts)
    return files
