"""The TensorFlow path never imports torch or jax, and reading a tf_model.h5 never imports TensorFlow.

1. A subprocess where `import torch`, `import jax` (and flax, transformers) fail: the neutral layer imports no
   framework; a PyTorch-layout checkpoint loads into a TF class (the Auto class and the family's), runs (equal to the
   PyTorch class, run here), saves as safetensors and as sharded h5, and both saves read back.
2. A subprocess where tensorflow and keras fail as well: `pretrained.checkpoint.h5` reads the tf_model.h5 the TF class
   wrote, and `pretrained.tf.convert` turns it into the PyTorch state dict (what issue 19's PyTorch `from_tf` needs).
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install pretrained[tf])")
import torch  # noqa: E402

import pretrained  # noqa: E402
from blocking import BLOCKER  # noqa: E402
from flax_tf_common import neutral_modules, no_torch_llama_config, run_json_script  # noqa: E402

NEUTRAL = neutral_modules(["pretrained.tf", "pretrained.tf.convert"], checkpoint_modules=["pretrained.checkpoint.h5"])

TF_SCRIPT = BLOCKER + textwrap.dedent("""
    neutral, folder, out = json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    for name in neutral:
        importlib.import_module(name)
    frameworks = sorted(m for m in ("jax", "flax", "torch", "tensorflow", "keras", "h5py") if m in sys.modules)
    import numpy as np
    from pretrained import TFAutoModelForCausalLM, TFLlamaForCausalLM
    ids = np.arange(2, 16, dtype=np.int32).reshape(2, 7)
    model = TFAutoModelForCausalLM.from_pretrained(folder)
    logits = model(ids).logits.numpy()
    model.save_pretrained(out + "/st")
    model.save_pretrained(out + "/h5", safe_serialization=False, max_shard_size="10KB")
    again = [float(np.abs(TFLlamaForCausalLM.from_pretrained(out + d)(ids).logits.numpy() - logits).max())
             for d in ("/st", "/h5")]
    print(json.dumps({"frameworks_after_neutral": frameworks, "logits": logits.tolist(), "reload_diff": again,
                      "class": type(model).__name__,
                      "blocked_loaded": [m for m in sys.modules if m.split(".")[0] in BLOCKED]}))
""")

H5_SCRIPT = BLOCKER + textwrap.dedent("""
    path, out = sys.argv[2], sys.argv[3]
    import numpy as np
    from pretrained.checkpoint.h5 import read_h5
    from pretrained.tf.convert import TFKeyRules, keras_path, pytorch_state
    weights = {keras_path(name): array for name, array in read_h5(path).items()}
    state = pytorch_state(weights, TFKeyRules.of({}))
    np.savez(out, **state)
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    print(json.dumps({"names": sorted(state), "blocked_loaded": loaded}))
""")


def _run(script: str, *args: str) -> dict:
    return run_json_script(script, *args, env={"TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tf-no-torch")
    torch.manual_seed(0)
    pt = pretrained.LlamaForCausalLM.from_config(no_torch_llama_config()).eval()
    pt.save_pretrained(folder / "ckpt")
    return folder, pt


def test_tf_load_forward_save_without_torch_or_jax(ckpt):
    folder, pt = ckpt
    with torch.no_grad():
        expected = pt(torch.arange(2, 16).reshape(2, 7)).logits.numpy()
    result = _run(TF_SCRIPT, "torch,jax,flax,transformers", json.dumps(NEUTRAL), str(folder / "ckpt"), str(folder))
    assert result["frameworks_after_neutral"] == []  # the neutral layer imports no framework at all
    assert result["blocked_loaded"] == [] and result["class"] == "TFLlamaForCausalLM"
    np.testing.assert_allclose(np.array(result["logits"], np.float32), expected, atol=1e-5, rtol=0)
    assert max(result["reload_diff"]) == 0.0


def test_h5_reads_without_tensorflow(ckpt):
    folder, pt = ckpt
    model = pretrained.TFLlamaForCausalLM.from_pretrained(folder / "ckpt")
    model.save_pretrained(folder / "for-h5", safe_serialization=False)
    result = _run(H5_SCRIPT, "torch,jax,flax,transformers,tensorflow,keras", str(folder / "for-h5" / "tf_model.h5"),
                  str(folder / "state.npz"))
    assert result["blocked_loaded"] == []
    state = {k: v.detach().numpy() for k, v in pt.state_dict().items()}
    assert result["names"] == sorted(state)
    with np.load(folder / "state.npz") as read:
        for name, value in state.items():
            assert np.array_equal(read[name], value), name
