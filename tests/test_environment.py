"""The test environment is pinned (constraints.txt): nothing installed may be missing from the pins or differ from
them, so a release upstream can never change what the suite runs against without a commit that says so."""

from __future__ import annotations

import re
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# Installed by `python -m venv` itself, not by the set-up: the venv's own pip, and the project (editable).
NOT_PINNED = {"pip", "pretrained"}


def pins() -> dict[str, Version]:
    found = {}
    for n, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"constraints.txt line {n}: {line!r} is not an exact pin NAME==VERSION"
        name = canonicalize_name(m[1])
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = Version(m[2])
    return found


def installed() -> dict[str, Version]:
    """What is installed in the environment's site-packages (not what a package vendors: setuptools puts its own
    `_vendor` folder, with .dist-info records, on sys.path once imported)."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions(path=paths)}


def test_every_installed_package_is_pinned_at_its_version():
    pinned, have = pins(), installed()
    unpinned = sorted(f"{n}=={v}" for n, v in have.items() if n not in pinned and n not in NOT_PINNED)
    # a local build tag (torch's "+cpu") is the same release as the pin
    wrong = sorted(f"{n}: installed {v}, pinned {pinned[n]}" for n, v in have.items()
                   if n in pinned and Version(v.public) != pinned[n])
    assert not unpinned, (f"installed but not pinned in constraints.txt: {unpinned} (environment {sys.prefix}). "
                          "Add them there (see its header), or set up with `make setup`.")
    assert not wrong, f"installed at another version than constraints.txt pins: {wrong}. Re-run `make setup`."


def test_every_pin_is_installed():
    have = installed()
    stale = sorted(n for n in pins() if n not in have)
    assert not stale, f"constraints.txt pins packages the set-up no longer installs: {stale}; remove them."


def test_test_extra_and_oracle_are_pinned():
    pinned = pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # the extras `make setup` installs (`tf-cpu`: the `tf` extra with the CPU-only TensorFlow wheel)
    wanted = [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["flax"] + extras["tf-cpu"]]
    missing = sorted(r.name for r in wanted if canonicalize_name(r.name) not in pinned)
    assert not missing, f"pyproject.toml requirements without a pin in constraints.txt: {missing}"
    outside = sorted(f"{r.name}: pin {pinned[canonicalize_name(r.name)]} not in {r.specifier}" for r in wanted
                     if pinned[canonicalize_name(r.name)] not in r.specifier)
    assert not outside, f"constraints.txt pins versions pyproject.toml excludes: {outside}"
    assert pinned["transformers"].major == 5, "the oracle is transformers 5.x"
