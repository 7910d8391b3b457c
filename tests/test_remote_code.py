"""Custom code that comes with a checkpoint: the trust gate, pinning, the module cache and saving custom code —
on local folders and on the local Hub server.

Every code file written here appends to a marker file when its module top level runs, so a test can tell whether
any of it was imported.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pretrained
from pretrained import remote_code
from pretrained.errors import MissingDependencyError, RemoteCodeError, UntrustedCodeError

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

CONFIG_PY = '''
from pretrained import PretrainedConfig
open({marker!r}, "a").write("configuration_x\\n")


class XConfig(PretrainedConfig):
    model_type = "x-custom"

    def __init__(self, hidden_size=4, scale=1.0, **kwargs):
        self.hidden_size = hidden_size
        self.scale = scale
        super().__init__(**kwargs)
'''

MODELING_PY = '''
import torch
from torch import nn
from pretrained import PreTrainedModel
from .configuration_x import XConfig
{extra}
open({marker!r}, "a").write("modeling_x\\n")
VERSION = {version!r}


class XModel(PreTrainedModel):
    config_class = XConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def forward(self, x):
        return self.proj(x) * self.config.scale
'''

AUTO_MAP = {"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"}
X = torch.arange(8.0).reshape(2, 4)


@pytest.fixture(autouse=True)
def modules_cache(tmp_path, monkeypatch):
    cache = tmp_path / "modules-cache"
    monkeypatch.setenv("HF_MODULES_CACHE", str(cache))
    return cache


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "marker.txt"


def write_checkpoint(folder: Path, marker: Path, version: str = "v1", extra: str = "", config: dict | None = None,
                     seed: int = 0) -> dict[str, Path]:
    """A custom checkpoint: code, config.json with auto_map, weights. Returns {repo path: local path}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_x.py").write_text(CONFIG_PY.format(marker=str(marker)))
    (folder / "modeling_x.py").write_text(MODELING_PY.format(marker=str(marker), version=version, extra=extra))
    cfg = config or {"model_type": "x-custom", "hidden_size": 4, "scale": 2.0, "auto_map": AUTO_MAP}
    (folder / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(seed)
    save_file({"proj.weight": torch.randn(4, 4, generator=g), "proj.bias": torch.randn(4, generator=g)},
              str(folder / "model.safetensors"), {"format": "pt"})
    return {p.name: p for p in sorted(folder.iterdir())}


def ran(marker: Path, module: str = "") -> bool:
    """Whether any code (or the module `module`) of the checkpoint has run."""
    return marker.exists() and module in marker.read_text()


# ---- the trust gate: local folders ----------------------------------------------------------------------------------
def test_untrusted_folder_raises_and_runs_nothing(tmp_path, marker, modules_cache):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, marker)
    for load in (pretrained.AutoConfig.from_pretrained, pretrained.AutoModel.from_pretrained):
        for trust in (None, False):
            with pytest.raises(UntrustedCodeError) as e:
                load(folder, trust_remote_code=trust)
            msg = str(e.value)
            assert str(folder) in msg and "configuration_x.py" in msg and "modeling_x.py" in msg
            assert "trust_remote_code=True" in msg
    assert not ran(marker) and not modules_cache.exists()
    assert isinstance(e.value, RemoteCodeError) and isinstance(e.value, ValueError)


def test_trusted_folder_loads_its_classes_from_the_module_cache(tmp_path, marker, modules_cache):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, marker)
    model = pretrained.AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "XModel" and type(model.config).__name__ == "XConfig"
    assert ran(marker) and sys.modules[type(model).__module__].VERSION == "v1"
    module_file = Path(sys.modules[type(model).__module__].__file__)
    assert modules_cache in module_file.parents and module_file.parent.parent.name == "local"
    assert (module_file.parent / "configuration_x.py").is_file()  # the relative import was copied too
    expected = X @ model.proj.weight.T.detach() + model.proj.bias.detach()
    torch.testing.assert_close(model(X), expected * 2.0)
    config = pretrained.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config) is type(model.config) and config.scale == 2.0


def test_changed_folder_code_is_copied_again(tmp_path, marker):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, marker, version="v1")
    first = pretrained.AutoModel.from_pretrained(folder, trust_remote_code=True)
    write_checkpoint(folder, marker, version="v2")
    second = pretrained.AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert sys.modules[type(first).__module__].VERSION == "v1"
    assert sys.modules[type(second).__module__].VERSION == "v2"
    assert type(first) is not type(second)
    again = pretrained.AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(again) is type(second)  # unchanged code: the same cached module


def test_library_class_without_trust_checkpoint_class_with_it(tmp_path, marker, tiny_llama_config):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "configuration_x.py").write_text(
        f"from pretrained import LlamaConfig\nopen({str(marker)!r}, 'a').write('x')\n\n"
        "class MyLlamaConfig(LlamaConfig):\n    custom = True\n")
    (folder / "config.json").write_text(json.dumps(
        {**tiny_llama_config(), "model_type": "llama", "auto_map": {"AutoConfig": "configuration_x.MyLlamaConfig"}}))
    assert type(pretrained.AutoConfig.from_pretrained(folder)) is pretrained.LlamaConfig
    assert type(pretrained.AutoConfig.from_pretrained(folder, trust_remote_code=False)) is pretrained.LlamaConfig
    assert not ran(marker)
    config = pretrained.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == "MyLlamaConfig" and config.custom and ran(marker)


def test_missing_package_named_with_pip_install_before_anything_runs(tmp_path, marker):
    folder = tmp_path / "ckpt"
    extra = "import not_a_real_pkg_q7\ntry:\n    import also_missing_but_optional\nexcept ImportError:\n    pass\n"
    write_checkpoint(folder, marker, extra=extra)
    with pytest.raises(MissingDependencyError, match=r"`pip install not_a_real_pkg_q7`") as e:
        pretrained.AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert "also_missing" not in str(e.value) and isinstance(e.value, ImportError)
    assert not ran(marker, "modeling_x")  # the config's code (no missing imports) may have run; the model's not


@pytest.mark.parametrize("line", ["from .. import evil", "from ..evil import thing", "from ...x.y import z"])
def test_relative_import_escaping_the_folder_is_refused(tmp_path, marker, line):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, marker, extra=line)
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'a').write('evil')\nthing = 1\n")
    with pytest.raises(RemoteCodeError, match="outside the repo's folder"):
        pretrained.AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert not ran(marker, "modeling_x") and not ran(marker, "evil")


@pytest.mark.parametrize("ref", ["/etc/passwd.X", "../up.X", "mod", "a/b.X", "mod.X-y", "/tmp/code--mod.X",
                                 "../x--mod.X", "a/b/c--mod.X"])
def test_malformed_auto_map_entries_are_refused(tmp_path, marker, ref):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, marker, config={"model_type": "x-custom", "auto_map": {"AutoConfig": ref}})
    with pytest.raises(RemoteCodeError, match="auto_map entry"):
        pretrained.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with pytest.raises(UntrustedCodeError):  # untrusted: refused before the entry is even read
        pretrained.AutoConfig.from_pretrained(folder)
    assert not ran(marker)


def test_parse_reference():
    assert remote_code.parse_reference("org/r--modeling_x.XModel") == ("org/r", "modeling_x", "XModel")
    assert remote_code.parse_reference("sub.modeling_x.XModel") == (None, "sub.modeling_x", "XModel")
    assert remote_code.parse_reference(["tok.Slow", None]) == (None, "tok", "Slow")


# ---- saving custom code -----------------------------------------------------------------------------------------
@pytest.fixture
def user_package(tmp_path, marker, monkeypatch):
    """A user's own package holding configuration_x.py / modeling_x.py, imported normally (not remote code)."""
    name = f"userpkg_{uuid.uuid4().hex[:8]}"
    write_checkpoint(tmp_path / "src" / name, marker, version="user")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    modeling = __import__(f"{name}.modeling_x", fromlist=["XModel"])
    yield modeling
    for key in [k for k in sys.modules if k.startswith(name)]:
        del sys.modules[key]


def test_register_for_auto_class_saves_code_and_auto_map(tmp_path, user_package, marker):
    XModel, XConfig = user_package.XModel, user_package.XConfig
    XConfig.register_for_auto_class()
    XModel.register_for_auto_class("AutoModel")
    with pytest.raises(ValueError, match="not an Auto class"):
        XModel.register_for_auto_class("AutoNothing")
    torch.manual_seed(0)
    model = XModel.from_config(XConfig(hidden_size=4, scale=3.0))
    out = tmp_path / "saved"
    model.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["auto_map"] == AUTO_MAP
    assert (out / "modeling_x.py").read_text() == Path(user_package.__file__).read_text()
    assert (out / "configuration_x.py").is_file()  # the relative import travels along
    marker.unlink()
    with pytest.raises(UntrustedCodeError):
        pretrained.AutoModel.from_pretrained(out)
    assert not ran(marker)
    loaded = pretrained.AutoModel.from_pretrained(out, trust_remote_code=True)
    assert type(loaded) is not XModel and type(loaded).__name__ == "XModel" and ran(marker)
    torch.testing.assert_close(loaded(X), model(X))
    # a class loaded from remote code re-saves with its code
    again = tmp_path / "again"
    loaded.save_pretrained(again)
    assert json.loads((again / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert (again / "modeling_x.py").is_file() and (again / "configuration_x.py").is_file()
    # a config alone
    cfg_dir = tmp_path / "cfg"
    XConfig(scale=5.0).save_pretrained(cfg_dir)
    assert json.loads((cfg_dir / "config.json").read_text())["auto_map"] == {"AutoConfig": "configuration_x.XConfig"}
    assert pretrained.AutoConfig.from_pretrained(cfg_dir, trust_remote_code=True).scale == 5.0


def test_class_outside_a_module_file_cannot_be_saved_with_code(tmp_path):
    XModel = type("XModel", (pretrained.PreTrainedModel,), {"__module__": "__main__"})
    with pytest.raises(RemoteCodeError, match="module file"):
        remote_code.files_for_class(XModel)


# ---- the Hub --------------------------------------------------------------------------------------------------------
@pytest.fixture
def repo(request, hub_server):
    name = re.sub(r"[^A-Za-z0-9-]", "-", request.node.name)[:40].strip("-")
    return f"test-org/{name}-{uuid.uuid4().hex[:6]}"


def seed(hub_server, repo_id, tmp_path, marker, version, **kw):
    files = write_checkpoint(tmp_path / f"{repo_id.replace('/', '_')}-{version}", marker, version=version, **kw)
    return hub_server.seed(repo_id, files)


def test_hub_untrusted_runs_nothing(hub_server, hub_cache, repo, tmp_path, marker, modules_cache):
    commit = seed(hub_server, repo, tmp_path, marker, "v1")
    with pytest.raises(UntrustedCodeError, match=re.escape(repo)) as e:
        pretrained.AutoModel.from_pretrained(repo)
    assert "modeling_x.py" in str(e.value) and commit in str(e.value)
    assert not ran(marker) and not modules_cache.exists()


def test_hub_pinned_commit_loads_that_commits_code(hub_server, hub_cache, repo, tmp_path, marker, modules_cache):
    c1 = seed(hub_server, repo, tmp_path, marker, "v1")
    c2 = seed(hub_server, repo, tmp_path, marker, "v2")
    version = lambda m: sys.modules[type(m).__module__].VERSION  # noqa: E731
    main = pretrained.AutoModel.from_pretrained(repo, trust_remote_code=True)
    pinned = pretrained.AutoModel.from_pretrained(repo, revision=c1, trust_remote_code=True)
    assert (version(main), version(pinned)) == ("v2", "v1")
    org, name = repo.split("/")
    cached = modules_cache / "pretrained_modules" / org / name
    assert Path(sys.modules[type(pinned).__module__].__file__).parent == cached / c1
    assert (cached / c2 / "modeling_x.py").is_file()
    # code_revision pins the code alone; weights and config still follow `revision`
    mixed = pretrained.AutoModel.from_pretrained(repo, code_revision=c1, trust_remote_code=True)
    assert version(mixed) == "v1"
    seed(hub_server, repo, tmp_path, marker, "v3")  # main moves on: the pinned commit still gives its own code
    assert version(pretrained.AutoModel.from_pretrained(repo, revision=c1, trust_remote_code=True)) == "v1"
    assert version(pretrained.AutoModel.from_pretrained(repo, trust_remote_code=True)) == "v3"
    config = pretrained.AutoConfig.from_pretrained(repo, revision=c1, trust_remote_code=True)
    with pytest.raises(UntrustedCodeError):
        pretrained.AutoModel.from_config(config)
    assert version(pretrained.AutoModel.from_config(config, trust_remote_code=True)) == "v1"


def test_hub_same_module_name_in_two_repos_does_not_collide(hub_server, hub_cache, tmp_path, marker):
    a, b = f"test-org/a-{uuid.uuid4().hex[:6]}", f"test-org/b-{uuid.uuid4().hex[:6]}"
    seed(hub_server, a, tmp_path, marker, "from-a")
    seed(hub_server, b, tmp_path, marker, "from-b")
    ma = pretrained.AutoModel.from_pretrained(a, trust_remote_code=True)
    mb = pretrained.AutoModel.from_pretrained(b, trust_remote_code=True)
    assert type(ma) is not type(mb) and type(ma).__module__ != type(mb).__module__
    assert sys.modules[type(ma).__module__].VERSION == "from-a"
    assert sys.modules[type(mb).__module__].VERSION == "from-b"


def test_hub_code_from_another_repo(hub_server, hub_cache, tmp_path, marker):
    code, ckpt = f"test-org/code-{uuid.uuid4().hex[:6]}", f"test-org/ckpt-{uuid.uuid4().hex[:6]}"
    seed(hub_server, code, tmp_path, marker, "shared")
    auto_map = {k: f"{code}--{v}" for k, v in AUTO_MAP.items()}
    files = write_checkpoint(tmp_path / "ckpt", marker, config={"model_type": "x-custom", "scale": 1.0,
                                                                "auto_map": auto_map})
    hub_server.seed(ckpt, {"config.json": files["config.json"], "model.safetensors": files["model.safetensors"]})
    with pytest.raises(UntrustedCodeError, match=re.escape(code)):
        pretrained.AutoModel.from_pretrained(ckpt)
    assert not ran(marker)
    model = pretrained.AutoModel.from_pretrained(ckpt, trust_remote_code=True)
    assert sys.modules[type(model).__module__].VERSION == "shared"


def test_hub_escaping_import_refused(hub_server, hub_cache, repo, tmp_path, marker):
    seed(hub_server, repo, tmp_path, marker, "v1", extra="from ..other_repo import x")
    with pytest.raises(RemoteCodeError, match="outside the repo's folder"):
        pretrained.AutoModel.from_pretrained(repo, trust_remote_code=True)
    assert not ran(marker, "modeling_x")


def test_push_custom_model_and_load_by_repo_id(hub_server, hub_cache, repo, tmp_path, user_package, marker):
    XModel, XConfig = user_package.XModel, user_package.XConfig
    XConfig.register_for_auto_class()
    XModel.register_for_auto_class("AutoModel")
    torch.manual_seed(1)
    model = XModel.from_config(XConfig(scale=0.5))
    model.save_pretrained(tmp_path / "push", push_to_hub=True, repo_id=repo, token=hub_server.token)
    loaded = pretrained.AutoModel.from_pretrained(repo, trust_remote_code=True)
    torch.testing.assert_close(loaded(X), model(X))
    other = f"{repo}-2"
    model.push_to_hub(other, token=hub_server.token)
    from huggingface_hub import HfApi
    assert {"modeling_x.py", "configuration_x.py"} <= set(HfApi().list_repo_files(other))
    torch.testing.assert_close(pretrained.AutoModel.from_pretrained(other, trust_remote_code=True)(X), model(X))


def test_reference_library_loads_a_folder_we_saved_with_custom_code(tmp_path, user_package):
    transformers = pytest.importorskip("transformers")
    XModel, XConfig = user_package.XModel, user_package.XConfig
    XConfig.register_for_auto_class()
    XModel.register_for_auto_class("AutoModel")
    torch.manual_seed(2)
    model = XModel.from_config(XConfig(scale=1.5))
    model.save_pretrained(tmp_path / "ours")
    theirs = transformers.AutoModel.from_pretrained(tmp_path / "ours", trust_remote_code=True)
    assert type(theirs).__module__.startswith("transformers_modules")
    torch.testing.assert_close(theirs(X), model(X))
