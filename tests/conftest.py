"""Shared fixtures: tiny configs and reference ("oracle") models built from the same config dict.

The reference library (`transformers`) is a test dependency only; the library under test never imports it.
"""

from __future__ import annotations

# --- Local Hub: point huggingface_hub at tests/hub_server BEFORE anything imports it --------------------------------
# huggingface_hub reads these variables once, at import (transformers imports it too), so they are set here, at the
# top of the first module pytest imports. The port is reserved now (a bound socket, closed when the server takes it).
import atexit
import os
import shutil
import sys
import tempfile

from hub_server import HubServer, reserve_port

if "huggingface_hub" in sys.modules:
    raise RuntimeError("huggingface_hub was imported before tests/conftest.py could point it at the local test Hub")
_HUB_PORT = reserve_port()
_HF_HOME = tempfile.mkdtemp(prefix="pretrained-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{_HUB_PORT.getsockname()[1]}",
    HF_HOME=_HF_HOME,  # no token file, no stored tokens, fresh xet/assets dirs
    HF_HUB_CACHE=os.path.join(_HF_HOME, "hub"),
    HF_HUB_DISABLE_XET="1",  # the local Hub speaks plain HTTP + LFS, not the Xet protocol
    HF_HUB_DISABLE_TELEMETRY="1",
)
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
              "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HUGGINGFACE_CO_STAGING", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
    os.environ.pop(_name, None)
# ---------------------------------------------------------------------------------------------------------------------

import pytest  # noqa: E402
import torch  # noqa: E402

# Small enough that a model builds in milliseconds, large enough to exercise grouped-query attention
# (4 heads, 2 kv heads), several layers and rotary embeddings (head_dim 8). initializer_range is 10x the usual
# 0.02 so that attention is sharp and logits are O(1): a wrong position, mask or scale then moves the logits far
# more than the 1e-5 parity tolerance, instead of hiding in near-uniform attention.
TINY_LLAMA = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
    "initializer_range": 0.2,
}


@pytest.fixture
def tiny_llama_config():
    """Factory: `tiny_llama_config(**overrides)` -> a fresh config dict (keyword arguments of a Llama config)."""

    def make(**overrides) -> dict:
        return {**TINY_LLAMA, **overrides}

    return make


@pytest.fixture
def reference_llama():
    """Factory: `reference_llama(config_dict, seed=0, base=False, **config_kwargs)` -> a seeded reference
    `transformers.LlamaForCausalLM` (or `LlamaModel` with base=True), in eval mode."""
    transformers = pytest.importorskip("transformers")

    def make(config: dict, seed: int = 0, base: bool = False, **config_kwargs):
        torch.manual_seed(seed)
        cls = transformers.LlamaModel if base else transformers.LlamaForCausalLM
        return cls(transformers.LlamaConfig(**config, **config_kwargs)).eval()

    return make


@pytest.fixture
def token_ids():
    """Factory: `token_ids(batch, seq, vocab=128, seed=0)` -> a (batch, seq) LongTensor of random ids."""

    def make(batch: int = 2, seq: int = 7, vocab: int = TINY_LLAMA["vocab_size"], seed: int = 0) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))

    return make


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """The local Hub (tests/hub_server): a server process on HF_ENDPOINT backed by real git repositories.
    `.endpoint`, `.token`, `.root`, `.seed(...)`, `.commits(...)`, `.requests`, `.clear_log()`, `.stop()`/`.start()`.
    A test that stops it must start it again (try/finally)."""
    server = HubServer(tmp_path_factory.mktemp("hub"), _HUB_PORT)
    assert server.endpoint == os.environ["HF_ENDPOINT"]
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A fresh, empty huggingface_hub cache directory for this test (env var and the constant read at import)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


_INDUCTOR: list[str | None] = []  # [None] when torch.compile works here, [why not] otherwise


@pytest.fixture
def inductor():
    """Skip unless torch.compile's default backend works on this machine: on CPUs it builds C++ (it needs a C++
    compiler and Python's headers), which a bare machine may lack. Probed once, on a one-line function."""
    if not _INDUCTOR:
        try:
            x = torch.arange(4.0)
            ok = torch.equal(torch.compile(lambda t: t * 2 + 1, dynamic=False)(x), x * 2 + 1)
            _INDUCTOR.append(None if ok else "torch.compile gave a wrong result on a probe")
        except Exception as e:  # noqa: BLE001 - any failure means: cannot compile here
            _INDUCTOR.append(f"torch.compile does not work here ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    if _INDUCTOR[0]:
        pytest.skip(_INDUCTOR[0])
