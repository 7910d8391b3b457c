"""The prelude of the scripts that tests run in a subprocess where some packages must not be importable (the
no-torch / no-TensorFlow / no-JAX proofs). The script's first argument names them, comma-separated: the prelude
installs an import hook that refuses them, checks that each is refused, and leaves `BLOCKED`, `importlib`, `json`
and `sys` defined for the rest of the script (whose own arguments start at sys.argv[2])."""

BLOCKER = """
import importlib, json, sys
BLOCKED = tuple(sys.argv[1].split(","))

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Refuse())
for name in BLOCKED:
    try:
        importlib.import_module(name)
        raise SystemExit(f"{name} imported although blocked")
    except ImportError:
        pass
"""
