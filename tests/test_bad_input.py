"""Bad input, by class of defect: every malformed header, index, config, generation config or pickle gives a typed
error from `pretrained.errors` that names the file (and the tensor or key), and no load silently returns a model
that is partly or wholly random.

The safetensors header check is held to safetensors' own reader: over a few thousand generated mutations of files
that `safetensors.torch.save_file` wrote, our verdict (accept / reject) equals `safe_open`'s.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pretrained
from pretrained.checkpoint.reader import CheckpointReader, read_safetensors_header
from pretrained.errors import (
    ConfigError,
    CorruptCheckpointError,
    LoadingError,
    ShapeMismatchError,
    UnknownModelTypeError,
    UnsafeCheckpointError,
)

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
DEEP = b"[" * 50_000 + b"]" * 50_000


def tiny_model(seed=0, cls=None, **overrides):
    torch.manual_seed(seed)
    return (cls or pretrained.LlamaForCausalLM).from_config(pretrained.LlamaConfig(**{**TINY, **overrides}))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    tiny_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    tiny_model().save_pretrained(folder, max_shard_size="30KB")
    return folder


def copy_of(folder, tmp_path):
    dest = tmp_path / "ckpt"
    shutil.copytree(folder, dest)
    return dest


def split(blob: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return blob[8:8 + n], blob[8 + n:]


def join(header, data: bytes) -> bytes:
    if not isinstance(header, bytes):
        header = json.dumps(header, separators=(",", ":")).encode()
    return len(header).to_bytes(8, "little") + header + data


def edit_header(path: Path, fn) -> None:
    """Rewrite a safetensors file's header with fn(header dict) -> header (dict or bytes); data kept."""
    raw, data = split(path.read_bytes())
    path.write_bytes(join(fn(json.loads(raw)), data))


def first_tensor(header: dict) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


# ---- the header check equals safetensors' -----------------------------------------------------------------------


def _bases(folder) -> dict[str, bytes]:
    """Files as safetensors writes them: dtypes of every width, empty tensors, 0-d scalars, metadata, none at all."""
    sets = {
        "mixed": ({"w": torch.randn(3, 4), "b": torch.zeros(0), "s": torch.tensor(2.5),
                   "h": torch.ones(5, dtype=torch.float16), "i": torch.arange(7, dtype=torch.int8),
                   "m": torch.tensor([True, False, True]), "e": torch.zeros(2, 0, 3, dtype=torch.bfloat16),
                   "f8": torch.zeros(4, dtype=torch.float8_e4m3fn), "l": torch.arange(3)}, {"format": "pt", "k": "v"}),
        "plain": ({"a": torch.randn(2, 2), "c": torch.randn(3)}, None),
        "none": ({}, None),
        "metadata-only": ({}, {"format": "pt"}),
    }
    out = {}
    for name, (tensors, metadata) in sets.items():
        path = os.path.join(folder, f"{name}.safetensors")
        save_file(tensors, path, metadata=metadata)
        out[name] = Path(path).read_bytes()
    return out


def _field_edits(value: list) -> dict:
    return {"strings": [str(x) for x in value], "floats": [float(x) for x in value],
            "negative": [-1] + value[1:], "2^64": [2**64] + value[1:], "bools": [True for _ in value],
            "null": None, "nested": [value], "one-more": value + [0], "one-less": value[:-1], "object": {"0": value}}


def _literal(header: dict, name: str, text: str) -> bytes:
    """The header with `name` given an extra field whose JSON is `text` (written raw)."""
    h = json.loads(json.dumps(header))
    h[name]["x"] = "@@"
    return json.dumps(h, separators=(",", ":")).replace('"@@"', text).encode()


def mutations(blob: bytes, seed: int) -> dict[str, bytes]:
    """Damaged variants of a safetensors file: structural edits of its header, then byte-level ones, then seeded
    single-bit flips anywhere in the length and the header."""
    raw, data = split(blob)
    header = json.loads(raw)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    out = {"as-written": blob}

    def put(label, h, d=data):
        out[label] = join(h, d)

    def edited(fn):
        h = json.loads(raw)
        fn(h)
        return h

    for t in names[:3]:
        e = header[t]
        for field in ("shape", "data_offsets"):
            for label, value in _field_edits(list(e[field])).items():
                put(f"{t}.{field}={label}", edited(lambda h: h[t].update({field: value})))
        out[f"{t}.data_offsets=[1e999,64]"] = join(
            json.dumps(edited(lambda h: h[t].update(data_offsets="@@"))).replace('"@@"', "[1e999, 64]").encode(), data)
        for label, value in {"unknown": "X32", "lowercase": e["dtype"].lower(), "as-object": {e["dtype"]: None},
                             "as-object-with-value": {e["dtype"]: 1}, "number": 4, "null": None}.items():
            put(f"{t}.dtype={label}", edited(lambda h: h[t].update(dtype=value)))
        put(f"{t}.no-shape", edited(lambda h: h[t].pop("shape")))
        put(f"{t}.extra-field", edited(lambda h: h[t].update(extra={"x": [1, 2, {"y": None}]})))
        put(f"{t}.as-array", edited(lambda h: h.update({t: [e["dtype"], e["shape"], e["data_offsets"]]})))
        put(f"{t}.as-short-array", edited(lambda h: h.update({t: [e["dtype"], e["shape"]]})))
        put(f"{t}.null", edited(lambda h: h.update({t: None})))
        put(f"{t}.offsets-reversed", edited(lambda h: h[t].update(data_offsets=e["data_offsets"][::-1])))
        for delta in (-1, 1, 8):
            shifted = [x + delta for x in e["data_offsets"]]
            put(f"{t}.shifted{delta}", edited(lambda h: h[t].update(data_offsets=shifted)))
            put(f"{t}.grown{delta}", edited(lambda h: h[t].update(data_offsets=[e["data_offsets"][0],
                                                                                  e["data_offsets"][1] + delta])))
        text = raw.decode().rstrip()
        key = json.dumps(t) + ":{"
        out[f"{t}.field-twice"] = join(text.replace(key, key + f'"dtype":{json.dumps(e["dtype"])},', 1).encode(), data)
        out[f"{t}.name-twice"] = join((text[:-1] + f",{json.dumps(t)}:{json.dumps(e)}}}").encode(), data)
        out[f"{t}.name-twice-first-bad"] = join(
            ("{" + json.dumps(t) + ":" + json.dumps({**e, "dtype": "ZZ"}) + "," + text[1:]).encode(), data)
        for depth in (100, 125, 126, 127, 200):
            out[f"{t}.nested{depth}"] = join(_literal(header, t, "[" * depth + "]" * depth), data)
        for label, literal in {"NaN": "NaN", "Infinity": "Infinity", "1e999": "1e999", "400-digits": "9" * 400,
                               "-0": "-0", "lone-surrogate": '"\\udc00"', "surrogate-pair": '"\\ud83d\\ude00"',
                               "control-char": '"\x01"'}.items():
            out[f"{t}.extra={label}"] = join(_literal(header, t, literal), data)
        out[f"{t}.name-lone-surrogate"] = join(text.replace(json.dumps(t), json.dumps(t)[:-1] + '\\udc00"', 1)
                                               .encode(), data)
    if len(names) >= 2:
        put("aliased", edited(lambda h: h[names[1]].update(data_offsets=list(h[names[0]]["data_offsets"]))))
    for label, value in {"int-value": {"k": 1}, "list": ["k"], "null": None, "string": "pt",
                         "null-value": {"k": None}}.items():
        put(f"metadata={label}", edited(lambda h: h.update(__metadata__=value)))
    text = raw.decode().rstrip()
    out["metadata-twice"] = join(('{"__metadata__":{},"__metadata__":{}' + ("," + text[1:] if text != "{}" else "}"))
                                 .encode(), data)
    for label, value in {"array": [header], "string": "x", "null": None, "number": 3}.items():
        put(f"header={label}", value)
    n = len(raw)
    out.update({
        "length-1": (n - 1).to_bytes(8, "little") + raw + data, "length+1": (n + 1).to_bytes(8, "little") + raw + data,
        "trailing-byte": blob + b"\0", "trailing-8": blob + b"\0" * 8, "cut-1": blob[:-1],
        "cut-in-header": blob[:7 + n],
        "bom": join(b"\xef\xbb\xbf" + raw, data), "latin-1": join(raw.rstrip() + b"\xe9", data),
        "empty-header": join(b"", data), "length-over-limit": (100_000_001).to_bytes(8, "little") + raw + data,
        "5-bytes": blob[:5],
    })
    for label, pad in {"space": b" ", "newline": b"\n", "tab": b"\t", "cr": b"\r", "nul": b"\0", "formfeed": b"\x0c",
                       "nbsp": "\u00a0".encode()}.items():
        out[f"leading-{label}"] = join(pad + raw, data)
        out[f"trailing-{label}"] = join(raw.rstrip() + pad, data)
    rng = random.Random(seed)
    for i in range(300):
        flipped = bytearray(blob)
        at = rng.randrange(8 + n)
        flipped[at] ^= 1 << rng.randrange(8)
        out[f"flip{i}@{at}"] = bytes(flipped)
    return out


def safetensors_verdict(path) -> bool:
    try:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                f.get_tensor(name)
        return True
    except Exception:  # whatever safetensors raises: it refuses the file
        return False


def test_header_check_agrees_with_safetensors(tmp_path):
    verdicts = {True: 0, False: 0}
    disagreements = []
    for base, blob in _bases(tmp_path).items():
        for label, data in mutations(blob, seed=len(base)).items():
            path = tmp_path / "case.safetensors"
            path.write_bytes(data)
            theirs = safetensors_verdict(path)
            try:
                read_safetensors_header(str(path))
                ours = True
            except CorruptCheckpointError as e:
                ours = False
                assert str(path) in str(e), (base, label, str(e))
            verdicts[theirs] += 1
            if ours != theirs:
                disagreements.append(f"{base}/{label}: ours {ours}, safetensors {theirs}")
            if label == "as-written":
                assert ours, f"{base}: a file safetensors wrote was refused"
    assert not disagreements, "\n".join(disagreements)
    assert verdicts[True] > 100 and verdicts[False] > 1000  # the mutations exercise both verdicts


def test_neutral_modules_import_no_framework():
    code = ("import sys; import pretrained.checkpoint.header, pretrained.jsonfile, pretrained.configuration, "
            "pretrained.checkpoint.files; bad = [m for m in ('torch', 'numpy', 'jax', 'tensorflow') if m in "
            "sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# the examples the issue names, through a whole load: each a CorruptCheckpointError naming the file (and the
# tensor, where one tensor's entry is at fault). edit(header, first tensor) -> new header (dict, or raw bytes)
def _set(field, fn):
    def edit(h, t):
        h[t][field] = fn(h[t][field])
        return h
    return edit


def _aliased(h, t):  # a second tensor of the same size points at the first one's bytes
    size = lambda k: h[k]["data_offsets"][1] - h[k]["data_offsets"][0]
    other = next(k for k in sorted(h) if k not in (t, "__metadata__") and size(k) == size(t))
    h[other]["data_offsets"] = list(h[t]["data_offsets"])
    return h


HEADER_DEFECTS = {
    "offsets-strings": (_set("data_offsets", lambda v: [str(x) for x in v]), True),
    "offsets-1e999": (lambda h, t: json.dumps(h).replace(json.dumps(h[t]["data_offsets"]), "[1e999, 64]", 1).encode(),
                      False),
    "offsets-negative": (_set("data_offsets", lambda v: [-4, v[1]]), True),
    "offsets-floats": (_set("data_offsets", lambda v: [float(x) for x in v]), True),
    "shape-strings": (_set("shape", lambda v: [str(x) for x in v]), True),
    "shape-negative": (_set("shape", lambda v: [-x for x in v]), True),
    "overlap": (_set("data_offsets", lambda v: [v[0] + 4, v[1] + 4]), False),
    "aliased": (_aliased, False),
    "metadata-not-strings": (lambda h, t: {**h, "__metadata__": {"format": 5}}, False),
    "bom": (lambda h, t: b"\xef\xbb\xbf" + json.dumps(h).encode(), False),
}


@pytest.mark.parametrize("kind", sorted(HEADER_DEFECTS))
def test_header_defects_are_named(tmp_path, single, kind):
    folder = copy_of(single, tmp_path)
    path = folder / "model.safetensors"
    edit, names_tensor = HEADER_DEFECTS[kind]
    raw, data = split(path.read_bytes())
    header = json.loads(raw)
    tensor = first_tensor(header)
    path.write_bytes(join(edit(header, tensor), data))
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert str(path) in str(err.value)
    if names_tensor:
        assert tensor in str(err.value)


@pytest.mark.parametrize("how", ["length-1", "trailing-bytes", "data-short"])
def test_length_and_coverage_defects_are_named(tmp_path, single, how):
    folder = copy_of(single, tmp_path)
    path = folder / "model.safetensors"
    blob = path.read_bytes()
    raw, data = split(blob)
    path.write_bytes({"length-1": (len(raw) - 1).to_bytes(8, "little") + raw + data,
                      "trailing-bytes": blob + b"\0" * 16,
                      "data-short": join(raw, data[:-2])}[how])
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert str(path) in str(err.value)


def test_what_safetensors_raises_while_reading_is_named(tmp_path, single):
    """A file replaced after its header was checked (another process re-saving): safe_open's own error comes back
    as a CorruptCheckpointError naming the file."""
    folder = copy_of(single, tmp_path)
    path = folder / "model.safetensors"
    reader = CheckpointReader([str(path)], "safetensors")
    replacement = folder / "new.tmp"
    replacement.write_bytes(b"\x08" + b"\0" * 7 + b"not json")
    os.replace(replacement, path)
    with pytest.raises(CorruptCheckpointError) as err:
        list(reader.iter_tensors())
    assert str(path) in str(err.value)
    name = next(iter(reader.infos))
    with pytest.raises(CorruptCheckpointError) as err:
        reader.read(name)
    assert str(path) in str(err.value) and name in str(err.value)
    save_file({"other": torch.zeros(2)}, str(replacement))  # a valid file, without the tensor: get_tensor raises
    os.replace(replacement, path)
    with pytest.raises(CorruptCheckpointError) as err:
        reader.read(name)
    assert str(path) in str(err.value) and name in str(err.value)


# ---- index against shards -----------------------------------------------------------------------------------------


def _shared(weight_map):
    """A tensor that shares its shard with others."""
    counts = {}
    for shard in weight_map.values():
        counts[shard] = counts.get(shard, 0) + 1
    return next(k for k, v in sorted(weight_map.items()) if counts[v] > 1)


def _to_wrong_shard(m, shards):
    name = _shared(m)
    m[name] = next(s for s in shards if s != m[name])


def _drop_shard(m, shards):
    for name in [k for k, v in m.items() if v == shards[-1]]:
        del m[name]


INDEX_EDITS = {  # edit(weight_map, shard names) in place
    "tensor-in-wrong-shard": _to_wrong_shard,
    "tensor-the-shard-lacks": lambda m, s: m.update({"model.layers.9.mlp.up_proj.weight": s[0]}),
    "tensor-not-listed": lambda m, s: m.pop(_shared(m)),
    "shard-not-listed": _drop_shard,
}


@pytest.mark.parametrize("kind", sorted(INDEX_EDITS))
@pytest.mark.parametrize("how", ["model", "sharded"])
def test_index_disagreeing_with_shards(tmp_path, sharded, kind, how):
    folder = copy_of(sharded, tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    before = dict(index["weight_map"])
    shards = sorted(set(before.values()))
    INDEX_EDITS[kind](index["weight_map"], shards)
    index_path.write_text(json.dumps(index))
    changed = {k for k in before.keys() | index["weight_map"].keys() if before.get(k) != index["weight_map"].get(k)}
    with pytest.raises(CorruptCheckpointError) as err:
        if how == "model":
            pretrained.LlamaForCausalLM.from_pretrained(folder)
        else:
            pretrained.load_sharded_checkpoint(tiny_model(3), folder, strict=False)
    message = str(err.value)
    assert str(index_path) in message
    if kind == "shard-not-listed":
        assert shards[-1] in message
        return
    for name in changed:
        assert name in message
        for shard in {before.get(name), index["weight_map"].get(name)} - {None}:
            assert shard in message


def test_index_with_empty_weight_map(tmp_path, sharded):
    folder = copy_of(sharded, tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index_path.write_text(json.dumps({"metadata": {"total_size": 10}, "weight_map": {}}))
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert str(index_path) in str(err.value) and "weight_map" in str(err.value)


def test_a_byte_flip_that_renames_a_tensor_in_a_shard(tmp_path, sharded):
    folder = copy_of(sharded, tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"]["model.norm.weight"]
    blob = bytearray(shard.read_bytes())
    at = blob.index(b"model.norm.weight")
    blob[at + len("model.")] ^= 0x20  # "norm" -> "Norm": still valid JSON, still a valid safetensors file
    shard.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert "model.norm.weight" in str(err.value) and "model.Norm.weight" in str(err.value)
    assert str(shard) in str(err.value)


def test_a_file_the_index_names_as_a_shard_is_named_with_the_index(tmp_path, sharded):
    folder = copy_of(sharded, tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {k: ("config.json" if v == first else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert str(folder / "config.json") in str(err.value) and str(index_path) in str(err.value)


# ---- loads that would come back random --------------------------------------------------------------------------


def test_a_byte_flip_that_renames_a_tensor_in_a_single_file(tmp_path, single):
    folder = copy_of(single, tmp_path)
    path = folder / "model.safetensors"
    blob = bytearray(path.read_bytes())
    at = blob.index(b"lm_head.weight")
    blob[at + 3] ^= 0x01  # "lm_head" -> "lm_iead"
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert str(path) in str(err.value) and "lm_head.weight" in str(err.value) and "lm_iead.weight" in str(err.value)


@pytest.mark.parametrize("dtype", ["I32", "U32"])
def test_integers_where_the_model_has_floats_are_refused(tmp_path, single, dtype):
    folder = copy_of(single, tmp_path)
    path = folder / "model.safetensors"
    tensor = []

    def edit(h):
        tensor.append(first_tensor(h))
        h[tensor[0]]["dtype"] = dtype  # same width as F32: a valid file, with integers for a weight
        return h

    edit_header(path, edit)
    with pytest.raises(LoadingError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert str(path) in str(err.value) and tensor[0] in str(err.value)


def test_a_checkpoint_without_tensors_is_refused(tmp_path, single):
    folder = copy_of(single, tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(join(b"{}", b""))
    with pytest.raises(LoadingError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert str(path) in str(err.value) and "no tensors" in str(err.value)


def test_weights_of_another_family_are_refused(tmp_path, single):
    folder = copy_of(single, tmp_path)
    config_path = folder / "config.json"
    gpt2 = pretrained.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4)
    config_path.write_text(gpt2.to_json_string())
    with pytest.raises(LoadingError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    message = str(err.value)
    assert str(config_path) in message and str(folder / "model.safetensors") in message
    assert "none of them" in message and "model.embed_tokens.weight" in message


def test_a_checkpoint_supplying_few_weights_is_refused(tmp_path):
    # embeddings, norm, head and one norm of the last block: 4 of the model's 21 tensors
    state = {k: v for k, v in tiny_model().state_dict().items()
             if "layers" not in k or k == "model.layers.1.input_layernorm.weight"}
    tiny_model().save_pretrained(tmp_path, state_dict=state)
    with pytest.raises(LoadingError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(err.value)
    assert "model.layers.0.self_attn.q_proj.weight" in str(err.value)


def test_base_checkpoint_into_a_task_model_warns_and_loads(tmp_path, caplog):
    base = tiny_model(cls=pretrained.LlamaModel)
    base.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pretrained"):
        model, info = pretrained.LlamaForSequenceClassification.from_pretrained(tmp_path, num_labels=3,
                                                                               output_loading_info=True)
    assert info["missing_keys"] == ["score.weight"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("pretrained"))
    assert "score.weight" in warned and str(tmp_path / "model.safetensors") in warned
    assert torch.equal(model.model.embed_tokens.weight, base.embed_tokens.weight)


def test_unexpected_tensors_are_logged_with_the_file(tmp_path, caplog):
    tiny_model().save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pretrained"):
        _, info = pretrained.LlamaModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == ["lm_head.weight"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("pretrained"))
    assert "lm_head.weight" in warned and str(tmp_path / "model.safetensors") in warned


def test_more_layers_than_the_checkpoint_fails_before_building(tmp_path, single, monkeypatch):
    folder = copy_of(single, tmp_path)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = 5000
    config_path.write_text(json.dumps(config))
    built = []
    original = pretrained.LlamaForCausalLM._skeleton.__func__
    monkeypatch.setattr(pretrained.LlamaForCausalLM, "_skeleton",
                        classmethod(lambda cls, *a: built.append(1) or original(cls, *a)))
    with pytest.raises(ConfigError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    message = str(err.value)
    assert str(config_path) in message and "num_hidden_layers" in message and "model.safetensors" in message
    assert built == []


def test_shape_mismatch_caused_by_the_config_names_it(tmp_path, single):
    folder = copy_of(single, tmp_path)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] = 48
    config_path.write_text(json.dumps(config))
    with pytest.raises(ShapeMismatchError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert str(config_path) in str(err.value) and "mlp.up_proj.weight" in str(err.value)


# ---- config values ------------------------------------------------------------------------------------------------


BAD_VALUES = {
    "hidden_size": ["64", -64, 0, 1.5, None, True],
    "num_key_value_heads": [0, -2, "2"],
    "head_dim": [0, -8],
    "num_attention_heads": [0, "4"],
    "vocab_size": [-1, "128"],
    "num_hidden_layers": [0, -1, 10**9, "2"],
    "intermediate_size": [0, 2**40],
    "max_position_embeddings": [0, -1],
    "hidden_act": ["nope", 5, None],
    "rms_norm_eps": [-1.0, "x", None],
    "model_type": [5, []],
    "auto_map": ["x", 5, [], {"AutoModelForCausalLM": 5}],
    "id2label": ["x", [], 5, {"a": "b"}],
    "pruned_heads": ["x", [], {"a": [1]}, {"0": "x"}],
    "tie_word_embeddings": ["no", 5],
    "rope_parameters": ["x", 5, {"rope_type": "default", "rope_theta": "x"},
                        {"rope_type": "default", "rope_theta": -1.0}],
    "self": [1], "__class__": [1], "__dict__": [{}], "to_dict": [5], "use_return_dict": [True],
}
CASES = [(key, value) for key, values in BAD_VALUES.items() for value in values]


@pytest.mark.parametrize("key,value", CASES, ids=[f"{k}={json.dumps(v)[:20]}" for k, v in CASES])
@pytest.mark.parametrize("loader", ["auto-model", "family-config"])
def test_bad_config_values_name_the_file_and_key(tmp_path, single, key, value, loader):
    folder = copy_of(single, tmp_path)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        if loader == "auto-model":
            pretrained.AutoModelForCausalLM.from_pretrained(folder)
        else:
            pretrained.LlamaConfig.from_pretrained(folder)
    assert str(config_path) in str(err.value)
    assert key in str(err.value)


@pytest.mark.parametrize("model_type", ["no-such-family", "bert", "t5"])
def test_unknown_or_unfit_model_type_names_the_config_file(tmp_path, single, model_type):
    folder = copy_of(single, tmp_path)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = model_type
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(err.value, UnknownModelTypeError)
    assert str(config_path) in str(err.value) and model_type in str(err.value)


def test_rope_type_unknown_at_build_names_the_config_file(tmp_path, single):
    folder = copy_of(single, tmp_path)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_parameters"] = {"rope_type": "nope", "rope_theta": 10000.0}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert str(config_path) in str(err.value) and "nope" in str(err.value)


def test_valid_configs_still_build():
    for cls, kwargs in ((pretrained.LlamaConfig, dict(num_key_value_heads=None, head_dim=None)),
                        (pretrained.GPT2Config, dict(hidden_size=64, n_head=4)),
                        (pretrained.BertConfig, dict(type_vocab_size=0)),
                        (pretrained.T5Config, dict(num_decoder_layers=None, feed_forward_proj="gated-silu"))):
        cls(**kwargs)
    assert pretrained.LlamaConfig.from_dict({"label2id": {"A": 0}, "id2label": {"0": "A"}}).num_labels == 1


def test_activation_names_are_the_implemented_ones():
    from pretrained.configuration import ACTIVATIONS
    from pretrained.layers.mlp import ACTIVATIONS as IMPLEMENTED

    assert set(ACTIVATIONS) == set(IMPLEMENTED)


# ---- every JSON file we read ---------------------------------------------------------------------------------------


JSON_FILES = {"config": "config.json", "index": "model.safetensors.index.json",
              "generation": "generation_config.json"}
BAD_JSON = {"deep": b'{"x": ' + DEEP + b"}", "not-utf8": b'{"x": "caf\xe9"}', "array": b"[]", "null": b"null",
            "string": b'"x"', "number": b"5", "empty": b"", "truncated": b'{"x": [1, 2'}


@pytest.mark.parametrize("content", sorted(BAD_JSON))
@pytest.mark.parametrize("which", sorted(JSON_FILES))
def test_bad_json_files_are_named(tmp_path, sharded, which, content):
    folder = copy_of(sharded, tmp_path)
    path = folder / JSON_FILES[which]
    path.write_bytes(BAD_JSON[content])
    expected = CorruptCheckpointError if which == "index" else ConfigError
    with pytest.raises(expected) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text", ['{"self": 1}', '{"__class__": 1}', '{"copy": 1}', '{"max_new_tokens": "x"}',
                                  '{"compile_config": {"nope": 1}}'])
def test_bad_generation_config_values_are_named(tmp_path, single, text):
    folder = copy_of(single, tmp_path)
    path = folder / "generation_config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert str(path) in str(err.value)
    assert next(iter(json.loads(text))) in str(err.value)


# ---- pickles -------------------------------------------------------------------------------------------------------


BAD_PICKLES = {
    "text": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n",
    "random": bytes(random.Random(7).getrandbits(8) for _ in range(4096)),
    "empty": b"",
    "pickle-garbage": b"\x80\x02" + b"\x00" * 40,
}


@pytest.mark.parametrize("kind", sorted(BAD_PICKLES))
def test_garbage_bin_is_corrupt_not_unsafe(tmp_path, kind):
    pretrained.LlamaConfig(**TINY).save_pretrained(tmp_path)
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(BAD_PICKLES[kind])
    with pytest.raises(CorruptCheckpointError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path)
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert str(path) in str(err.value)
