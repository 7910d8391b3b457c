"""A corruption generator: a few rules make a few hundred damaged checkpoints; each is loaded (or saved into) in
its own process, and the outcome is classified.

Layout of one case (a fresh folder under ``<root>/cases/``)::

    NNNN/ckpt/       a copy of a tiny, valid Llama checkpoint, then damaged by the case's rule
    NNNN/outside/    a *different* valid checkpoint (another seed) and sentinel.txt: a decoy that a path escaping
                     the checkpoint folder would reach (reading it gives wrong logits, deleting it is caught)
    NNNN/outside2/   victim.txt

The whole ``NNNN/`` tree is hashed before and after the operation. The operation is ``load``
(``AutoModelForCausalLM.from_pretrained(ckpt)`` and a forward pass) or ``save`` (``save_pretrained(ckpt)`` of the
reference model, then a load and a forward pass of what was written).

Outcomes (exactly one per case):

- ``typed_named``: raised a ``pretrained.errors.PretrainedError`` (or the narrower type the case demands, e.g.
  ``UnsafeCheckpointError`` for a pickle that carries code) whose message contains the base name of a file at
  fault (the case lists which: the damaged file, and for a config/weights disagreement either side).
- ``correct``: no error, and the logits are bit-for-bit those of the reference model (same shape, ``torch.equal``).
- ``untyped``: raised something else (or a ``PretrainedError`` that is not the type the case demands).
- ``unnamed``: raised the right type, but the message names none of the files at fault.
- ``wrong``: no error, but the logits differ from the reference (the worst outcome: a silent wrong model).
- ``crash``: the process died (signal, or exit without a report).
- ``hang``: no report within the timeout; the process group is killed.

Flags, independent of the outcome: ``touched_outside`` (a file or folder outside ``ckpt/`` was created, changed or
deleted) and ``touched_inside`` (a *load* changed anything inside ``ckpt/``; a save may of course write there).
A case passes iff its outcome is ``typed_named`` or ``correct`` and neither flag is set.

Processes: ``run()`` builds the bases in a subprocess, then starts ``jobs`` worker subprocesses; each imports torch
and the library once (one thread, so forking is safe) and then ``fork()``s one child per case, with an address
space limit of 4 GiB and a file size limit of 256 MiB, so a case that hangs, crashes or balloons is counted and
costs nothing else. ``python tests/corruption.py --worker`` / ``--build ROOT`` are those subprocesses' entry points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

OUTCOMES = ("typed_named", "correct", "untyped", "unnamed", "wrong", "crash", "hang")
PASSING = ("typed_named", "correct")
TINY = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)
SHARD_SIZE = 8000  # bytes: the tiny model (27 kB) in 4 shards
INPUT_IDS = [[1, 5, 9, 13, 2, 63, 0, 31]]
SAFE, INDEX, BIN, CONFIG, GENCONFIG, MARKER = ("model.safetensors", "model.safetensors.index.json",
                                               "pytorch_model.bin", "config.json", "generation_config.json",
                                               ".pretrained-save.json")
AS_LIMIT, FSIZE_LIMIT = 4 << 30, 256 << 20


@dataclasses.dataclass(frozen=True)
class Case:
    rule: str
    name: str
    base: str  # "single" | "sharded" | "bin": which valid checkpoint the case starts from
    mutate: Callable[[dict], None]  # damages ctx["ckpt"] (ctx: paths, shard names; see `_context`)
    names: tuple[str, ...]  # files at fault: an error must name one of them ("{shard}" etc. filled from ctx)
    op: str = "load"  # "load" | "save"
    expect: str = "PretrainedError"  # the pretrained.errors class an error must be an instance of

    @property
    def id(self) -> str:
        return f"{self.rule}/{self.name}" + ("" if self.op == "load" else f"[{self.op}]")


# ---- file helpers ---------------------------------------------------------------------------------------------------
def _raw(text: str) -> str:
    """A value that `_dump` writes as raw JSON text (e.g. `1e999`, which json.dumps cannot produce)."""
    return f"@@raw:{text}@@"


def _dump(obj) -> str:
    return re.sub(r'"@@raw:(.*?)@@"', r"\1", json.dumps(obj, separators=(",", ":")))


DEEP = b"[" * 100_000 + b"]" * 100_000  # nesting far beyond any parser's recursion limit


def st_read(path: str) -> tuple[dict, bytes, bytes]:
    """(header dict, header bytes, data bytes) of a safetensors file."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8:8 + n], raw[8 + n:]


def st_write(path: str, header: dict | bytes, data: bytes, length: int | None = None) -> None:
    """Write a safetensors file: header (a dict is dumped compactly and space-padded to 8 bytes, as writers do)."""
    if not isinstance(header, bytes):
        header = _dump(header).encode()
        header += b" " * (-len(header) % 8)
    Path(path).write_bytes((len(header) if length is None else length).to_bytes(8, "little") + header + data)


def by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _json_file(path: str, fn: Callable) -> None:
    """Rewrite a JSON file after fn(parsed) edited it in place."""
    data = json.loads(Path(path).read_text())
    fn(data)
    Path(path).write_text(_dump(data))


# ---- rules: each yields Cases ----------------------------------------------------------------------------------------
def rule_control() -> Iterator[Case]:
    """Undamaged: each base loads, and a save over it round-trips (any outcome but `correct` is a harness fault)."""
    names = (SAFE, INDEX, BIN, CONFIG)
    for base in ("single", "sharded", "bin"):
        yield Case("control", f"pristine-{base}", base, lambda c: None, names)
    for base in ("single", "sharded"):
        yield Case("control", f"save-over-{base}", base, lambda c: None, names, op="save")


def _in(target: str) -> tuple[str, str]:
    """(file name pattern, base) for a safetensors rule applied to the single file or to a shard."""
    return (SAFE, "single") if target == "single" else ("{shard}", "sharded")


def rule_st_length() -> Iterator[Case]:
    """The 8-byte header length, rewritten."""
    lengths = {"minus1": lambda n, s: n - 1, "plus1": lambda n, s: n + 1, "minus8": lambda n, s: n - 8,
               "plus8": lambda n, s: n + 8, "zero": lambda n, s: 0, "one": lambda n, s: 1,
               "2^32": lambda n, s: 2**32, "2^63": lambda n, s: 2**63, "2^64-1": lambda n, s: 2**64 - 1,
               "to-eof": lambda n, s: s - 8, "past-eof": lambda n, s: s - 7}
    for target in ("single", "shard"):
        fname, base = _in(target)
        for label, fn in lengths.items():
            def mutate(c, fn=fn, fname=fname):
                path = os.path.join(c["ckpt"], fname.format(**c))
                _, hb, data = st_read(path)
                st_write(path, hb, data, length=fn(len(hb), 8 + len(hb) + len(data)))
            yield Case("st_length", f"{label}@{target}", base, mutate, (fname,))


def _header_edits() -> dict[str, Callable[[dict, bytes], tuple]]:
    """Header mutations: fn(header, data) -> (header dict or bytes, data); most edit the first tensor in the data."""
    def entry(key, value):  # set one field of the first tensor
        def fn(h, d):
            h[by_offset(h)[0]][key] = value
            return h, d
        return fn

    def offsets(fn3):  # fn3(begin, end) -> new data_offsets of the first tensor
        def fn(h, d):
            t = h[by_offset(h)[0]]
            t["data_offsets"] = fn3(*t["data_offsets"])
            return h, d
        return fn

    def meta(value):
        def fn(h, d):
            h["__metadata__"] = value
            return h, d
        return fn

    def raw(fn4):  # fn4(header bytes) -> header bytes
        return lambda h, d: (fn4(_dump(h).encode()), d)

    edits = {f"dtype={v}": entry("dtype", v) for v in ("F16", "BF16", "F64", "I32", "U32", "I64", "BOOL", "X99",
                                                        "f32", 7, None)}
    edits |= {f"shape={_dump(v)}": entry("shape", v) for v in (
        "16x64", None, [], [-1], [1.5, 2], [_raw("1e999"), 1], [2**64, 0], [True, 1])}
    edits |= {
        "shape=strings": lambda h, d: _shape(h, d, str), "shape=floats": lambda h, d: _shape(h, d, float),
        "shape=negated": lambda h, d: _shape(h, d, lambda x: -x), "shape=flattened": lambda h, d: _shape(h, d, None),
        "shape=reversed": lambda h, d: _shape(h, d, "rev"),
        "offsets=strings": offsets(lambda b, e: [str(b), str(e)]),
        "offsets=floats": offsets(lambda b, e: [float(b), float(e)]),
        "offsets=1e999": offsets(lambda b, e: [b, _raw("1e999")]),
        "offsets=negative": offsets(lambda b, e: [b - e - 8, -8] if b == 0 else [-b, e - 2 * b]),
        "offsets=reversed": offsets(lambda b, e: [e, b]),
        "offsets=three": offsets(lambda b, e: [b, e, e]), "offsets=one": offsets(lambda b, e: [e]),
        "offsets=null": offsets(lambda b, e: None), "offsets=object": offsets(lambda b, e: {"begin": b, "end": e}),
        "offsets=shifted-half": offsets(lambda b, e: [b + (e - b) // 2, e + (e - b) // 2]),
        "offsets=aliased": _alias, "offsets=overlap": _overlap, "offsets=gap": _gap,
        "entry=number": lambda h, d: ({**h, by_offset(h)[0]: 5}, d),
        "entry=list": lambda h, d: ({**h, by_offset(h)[0]: []}, d),
        "entry=extra-field": entry("extra", 1),
        "entry=missing-dtype": lambda h, d: ({**h, by_offset(h)[0]: {"shape": [1], "data_offsets": [0, 4]}}, d),
        "header=[]": lambda h, d: ([], d), "header=null": lambda h, d: (None, d), "header=5": lambda h, d: (5, d),
        "header={}": lambda h, d: ({}, d), "header={}+no-data": lambda h, d: ({}, b""),
        "header=only-metadata": lambda h, d: ({"__metadata__": {"format": "pt"}}, d),
        "metadata=list": meta([]), "metadata=string": meta("pt"), "metadata=int-value": meta({"format": 5}),
        "metadata=null": meta(None), "metadata=nested": meta({"format": "pt", "x": {"y": 1}}),
        "raw=bom": raw(lambda b: b"\xef\xbb\xbf" + b),
        "raw=leading-newlines": raw(lambda b: b"\n\n" + b),
        "raw=trailing-spaces": raw(lambda b: b + b" " * 40),
        "raw=trailing-nuls": raw(lambda b: b + b"\x00" * 8),
        "raw=trailing-garbage": raw(lambda b: b + b"}x"),
        "raw=non-utf8-in-name": raw(lambda b: b.replace(b'weight"', b'weigh\xff"', 1)),
        "raw=deep-nesting": raw(lambda b: b[:-1] + b',"x":' + DEEP + b"}"),
        "raw=duplicate-key": _duplicate,
        "raw=unpadded": raw(lambda b: b),
        "data=extended-1": lambda h, d: (h, d + b"\x00"), "data=extended-4096": lambda h, d: (h, d + b"\x01" * 4096),
        "data=one-byte-short": lambda h, d: (h, d[:-1]),
    }
    return edits


def _shape(h, d, how):
    t = h[by_offset(h)[0]]
    dims = t["shape"]
    if how is None:
        t["shape"] = [math.prod(dims)]
    elif how == "rev":
        t["shape"] = dims[::-1] if len(dims) > 1 else dims + [1]
    else:
        t["shape"] = [how(x) for x in dims]
    return h, d


def _pair(h):
    """Two tensors of the same byte size (the first such pair in data order)."""
    names = by_offset(h)
    size = lambda k: h[k]["data_offsets"][1] - h[k]["data_offsets"][0]
    return next((a, b) for i, a in enumerate(names) for b in names[i + 1:] if size(a) == size(b))


def _alias(h, d):  # a second tensor points at the first one's bytes
    a, b = _pair(h)
    h[b]["data_offsets"] = list(h[a]["data_offsets"])
    return h, d


def _overlap(h, d):  # a tensor starts inside the one before it
    names = by_offset(h)
    b0, e0 = h[names[1]]["data_offsets"]
    half = (h[names[0]]["data_offsets"][1] - h[names[0]]["data_offsets"][0]) // 2
    h[names[1]]["data_offsets"] = [b0 - half, e0 - half]
    return h, d


def _gap(h, d):  # 8 filler bytes after the first tensor, later tensors shifted: consistent, but with a hole
    first_end = h[by_offset(h)[0]]["data_offsets"][1]
    for k in by_offset(h)[1:]:
        h[k]["data_offsets"] = [x + 8 for x in h[k]["data_offsets"]]
    return h, d[:first_end] + b"\xff" * 8 + d[first_end:]


def _duplicate(h, d):  # the first tensor's entry appears twice; the second copy aliases another tensor's bytes
    a, b = _pair(h)
    text = _dump(h)
    dup = _dump({a: {**h[a], "data_offsets": h[b]["data_offsets"]}})[1:-1]
    return (text[:-1] + "," + dup + "}").encode(), d


def rule_st_header() -> Iterator[Case]:
    """Edits of the parsed header (or its bytes), written back with a correct length."""
    shard_too = {"dtype=I32", "dtype=F16", "shape=negated", "shape=flattened", "offsets=strings", "offsets=1e999",
                 "offsets=negative", "header={}", "metadata=list", "raw=non-utf8-in-name", "raw=deep-nesting",
                 "data=extended-1", "data=one-byte-short"}
    for label, fn in _header_edits().items():
        for target in ("single", "shard") if label in shard_too else ("single",):
            fname, base = _in(target)

            def mutate(c, fn=fn, fname=fname):
                path = os.path.join(c["ckpt"], fname.format(**c))
                h, _, d = st_read(path)
                st_write(path, *fn(h, d))
            yield Case("st_header", f"{label}@{target}", base, mutate, (fname,))


def rule_st_flip() -> Iterator[Case]:
    """Single bytes of the header XOR-ed: structural characters, digits, letters, and seeded random positions."""
    def at(find, nth=0):  # position of the nth occurrence of `find` in the header bytes (offset 8 in the file)
        def pos(hb):
            i = -1
            for _ in range(nth + 1):
                i = hb.index(find, i + 1)
            return i
        return pos

    spots = {"open-brace": (lambda hb: 0, 0x01), "close-brace": (lambda hb: hb.rstrip().rindex(b"}"), 0x01),
             "quote": (at(b'"', 2), 0x01), "colon": (at(b":", 3), 0x01), "comma": (at(b",", 1), 0x01),
             "bracket": (at(b"["), 0x01), "dtype-letter": (lambda hb: hb.index(b'"F32"') + 1, 0x01),
             "shape-digit": (lambda hb: hb.index(b'"shape":[') + 9, 0x01),
             "offset-digit": (lambda hb: hb.index(b'"data_offsets":[') + 16, 0x01),
             "offset-end-digit": (lambda hb: hb.index(b"]", hb.index(b'"data_offsets":[')) - 1, 0x02),
             "name-letter": (lambda hb: hb.index(b'.weight"') - 2, 0x01),
             "metadata-name": (at(b"__metadata__"), 0x01)}
    rng = random.Random(13)
    for target in ("single", "shard"):
        fname, base = _in(target)
        items = list(spots.items()) if target == "single" else [(k, spots[k]) for k in
                                                                 ("open-brace", "offset-digit", "name-letter")]
        items += [(f"random{i}-x{m:02x}", (lambda hb, r=rng.random(): int(r * len(hb.rstrip())), m))
                  for i, m in enumerate((0x80, 0x80, 0x20, 0x20, 0x01, 0x40)[: 6 if target == "single" else 2])]
        for label, (pos, mask) in items:
            def mutate(c, pos=pos, mask=mask, fname=fname):
                path = os.path.join(c["ckpt"], fname.format(**c))
                raw = bytearray(Path(path).read_bytes())
                hb = bytes(raw[8:8 + int.from_bytes(raw[:8], "little")])
                raw[8 + pos(hb)] ^= mask
                Path(path).write_bytes(bytes(raw))
            yield Case("st_flip", f"{label}@{target}", base, mutate, (fname,))


def rule_st_truncate() -> Iterator[Case]:
    """The file cut short: inside the length field, the header, the data; the single file, the first and last shard."""
    points = {"0": lambda n, s: 0, "4": lambda n, s: 4, "8": lambda n, s: 8, "mid-header": lambda n, s: 8 + n // 2,
              "end-of-header": lambda n, s: 8 + n, "1-data-byte": lambda n, s: 9 + n,
              "mid-data": lambda n, s: (8 + n + s) // 2, "last-byte": lambda n, s: s - 1}
    for target in ("single", "shard", "last-shard"):
        fname, base = _in("single" if target == "single" else "shard")
        fname = "{last_shard}" if target == "last-shard" else fname
        for label, fn in points.items():
            if target != "single" and label in ("4", "1-data-byte"):
                continue
            def mutate(c, fn=fn, fname=fname):
                path = os.path.join(c["ckpt"], fname.format(**c))
                raw = Path(path).read_bytes()
                Path(path).write_bytes(raw[: fn(int.from_bytes(raw[:8], "little"), len(raw))])
            yield Case("st_truncate", f"{label}@{target}", base, mutate, (fname,))


def rule_index() -> Iterator[Case]:
    """model.safetensors.index.json damaged (the shards themselves intact unless said)."""
    def wm(fn):  # fn(weight_map, ctx) edits the weight map in place
        return lambda c: _json_file(os.path.join(c["ckpt"], INDEX), lambda ix: fn(ix["weight_map"], c))

    def top(fn):  # fn(index) edits the parsed index in place
        return lambda c: _json_file(os.path.join(c["ckpt"], INDEX), fn)

    def text(data: bytes):
        return lambda c: Path(c["ckpt"], INDEX).write_bytes(data)

    def point(shard_of):  # every tensor of the first shard points at shard_of(ctx)
        return wm(lambda m, c: m.update({k: shard_of(c) for k, v in m.items() if v == c["shard"]}))

    def alone(m):  # a tensor that is alone in its shard, and one that shares its shard
        count = Counter(m.values())
        return (next(k for k, v in sorted(m.items()) if count[v] == 1),
                next(k for k, v in sorted(m.items()) if count[v] > 1))

    cases = {
        "weight_map={}": wm(lambda m, c: m.clear()),
        "weight_map=[]": top(lambda ix: ix.update(weight_map=[])),
        "weight_map=null": top(lambda ix: ix.update(weight_map=None)),
        "weight_map=missing": top(lambda ix: ix.pop("weight_map")),
        "weight_map=string": top(lambda ix: ix.update(weight_map="x")),
        "drop-tensor-alone-in-shard": wm(lambda m, c: m.pop(alone(m)[0])),
        "drop-tensor-sharing-shard": wm(lambda m, c: m.pop(alone(m)[1])),
        "tensor-to-wrong-shard": wm(lambda m, c: m.update({alone(m)[0]: c["shard"] if m[alone(m)[0]] != c["shard"]
                                                                                      else c["last_shard"]})),
        "extra-tensor": wm(lambda m, c: m.update({"model.extra.weight": c["shard"]})),
        "value=5": wm(lambda m, c: m.update({alone(m)[0]: 5})),
        "value=null": wm(lambda m, c: m.update({alone(m)[0]: None})),
        "value=list": wm(lambda m, c: m.update({alone(m)[0]: [c["shard"]]})),
        "shard=nonexistent": point(lambda c: "model-00099-of-00099.safetensors"),
        "shard=../outside": point(lambda c: "../outside/model.safetensors"),
        "shard=absolute": point(lambda c: os.path.join(c["outside"], SAFE)),
        "shard=subfolder": point(lambda c: "sub/" + c["shard"]),
        "shard=empty": point(lambda c: ""), "shard=dot": point(lambda c: "."), "shard=dotdot": point(lambda c: ".."),
        "shard=nul": point(lambda c: c["shard"] + "\x00x"),
        "shard=long": point(lambda c: "m" * 300 + ".safetensors"),
        "shard=config.json": point(lambda c: CONFIG),
        "shard=itself": point(lambda c: INDEX),
        "missing-shard-file": lambda c: os.unlink(os.path.join(c["ckpt"], c["last_shard"])),
        "metadata=list": top(lambda ix: ix.update(metadata=[])),
        "top=[]": text(b"[]"), "top=null": text(b"null"), "top=string": text(b'"x"'), "top=5": text(b"5"),
        "garbage": text(b"this is not json {"), "empty": text(b""), "non-utf8": text(b'{"weight_map": {"\xff": 1}}'),
        "deep-nesting": text(b'{"weight_map": ' + DEEP + b"}"), "bom": lambda c: _bom(os.path.join(c["ckpt"], INDEX)),
        "truncated": lambda c: _cut(os.path.join(c["ckpt"], INDEX)),
    }
    for label, mutate in cases.items():
        names = (INDEX, "{last_shard}") if label == "missing-shard-file" else (INDEX,)
        yield Case("index", label, "sharded", mutate, names)


def _bom(path):
    Path(path).write_bytes(b"\xef\xbb\xbf" + Path(path).read_bytes())


def _cut(path):
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: len(raw) // 2])


SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings")


def rule_config() -> Iterator[Case]:
    """config.json damaged: every size key given bad values, type/identity keys of wrong types, the file itself."""
    def setk(key, value):
        return lambda c: _json_file(os.path.join(c["ckpt"], CONFIG), lambda cfg: cfg.update({key: value}))

    def text(data: bytes):
        return lambda c: Path(c["ckpt"], CONFIG).write_bytes(data)

    bad = {"str64": "64", "neg64": -64, "zero": 0, "1e9": 10**9, "null": None, "1.5": 1.5}
    for key in SIZE_KEYS:
        for label, value in bad.items():  # a size that disagrees with the weights may be blamed on either file
            yield Case("config", f"{key}={label}", "single", setk(key, value), (CONFIG, SAFE))
    values = {
        "model_type": ("bert", "gpt2", "t5", "nonexistent", "", 5, None, []),
        "hidden_act": ("nope", "", 5, None),
        "self": (1,), "__class__": (1,), "__dict__": ({},), "to_dict": (5,),
        "auto_map": ("x", 5, [], {"AutoModelForCausalLM": 5}, {"AutoModelForCausalLM": "../../evil.Evil"}),
        "id2label": ("x", [], 5, {"a": "b"}), "label2id": ("x", []),
        "pruned_heads": ("x", [], {"a": [1]}, {"0": "x"}),
        "architectures": ("x", 5, [5]),
        "dtype": ("float99", 5, [], "int8"),
        "rope_parameters": ("x", 5, {"rope_type": "nope"}, {"rope_type": "default", "rope_theta": "x"},
                            {"rope_type": "default", "rope_theta": -1.0}, {}),
        "rope_scaling": ("x",),
        "tie_word_embeddings": ("no", 5),
        "rms_norm_eps": (_raw("NaN"), -1.0, "x", None),
    }
    for key, vals in values.items():
        for value in vals:
            yield Case("config", f"{key}={_dump(value)}", "single", setk(key, value), (CONFIG,))
    files = {"missing-model_type": lambda c: _json_file(os.path.join(c["ckpt"], CONFIG), lambda d: d.pop("model_type")),
             "deleted": lambda c: os.unlink(os.path.join(c["ckpt"], CONFIG)),
             "top=[]": text(b"[]"), "top=null": text(b"null"), "top=string": text(b'"llama"'), "top=5": text(b"5"),
             "garbage": text(b"model_type: llama"), "empty": text(b""),
             "non-utf8": text(b'{"model_type": "llama", "name": "caf\xe9"}'),
             "deep-nesting": text(b'{"model_type": "llama", "x": ' + DEEP + b"}"),
             "bom": lambda c: _bom(os.path.join(c["ckpt"], CONFIG)),
             "truncated": lambda c: _cut(os.path.join(c["ckpt"], CONFIG))}
    for label, mutate in files.items():
        yield Case("config", f"file:{label}", "single", mutate, (CONFIG,))


def rule_generation_config() -> Iterator[Case]:
    def text(data: bytes):
        return lambda c: Path(c["ckpt"], GENCONFIG).write_bytes(data)

    cases = {"top=[]": b"[]", "top=null": b"null", "top=string": b'"x"', "top=5": b"5", "garbage": b"max_length=5",
             "empty": b"", "non-utf8": b'{"x": "\xff"}', "deep-nesting": b'{"x": ' + DEEP + b"}",
             "max_new_tokens=str": b'{"max_new_tokens": "x"}', "temperature=-1": b'{"temperature": -1}',
             "eos_token_id=str": b'{"eos_token_id": "x"}', "do_sample=str": b'{"do_sample": "yes"}',
             "num_beams=0": b'{"num_beams": 0}', "self": b'{"self": 1}', "__class__": b'{"__class__": 1}'}
    for label, data in cases.items():
        yield Case("generation_config", label, "single", text(data), (GENCONFIG,))


def _torch():
    import torch  # imported only by the mutations that need it: listing the cases needs no torch

    return torch


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious .bin carries."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def rule_bin() -> Iterator[Case]:
    """pytorch_model.bin replaced or damaged; the pickles that carry code would create outside/pwned if run."""
    def text(data: bytes):
        return lambda c: Path(c["ckpt"], BIN).write_bytes(data)

    def saved(make):  # torch.save of make(ctx, state_dict)
        def mutate(c):
            torch = _torch()
            path = os.path.join(c["ckpt"], BIN)
            torch.save(make(c, torch.load(path, weights_only=True)), path)
        return mutate

    def legacy(make):  # a plain (non-zip) pickle
        def mutate(c):
            import pickle
            Path(c["ckpt"], BIN).write_bytes(pickle.dumps(make(c), protocol=2))
        return mutate

    def flip(where):
        def mutate(c):
            raw = bytearray(Path(c["ckpt"], BIN).read_bytes())
            raw[where(len(raw))] ^= 0xFF
            Path(c["ckpt"], BIN).write_bytes(bytes(raw))
        return mutate

    pwn = lambda c: f"touch {os.path.join(c['outside'], 'pwned')}"
    unsafe = {
        "os.system-in-zip": saved(lambda c, sd: {**sd, "x": _Payload(os.system, pwn(c))}),
        "os.system-legacy": legacy(lambda c: _Payload(os.system, pwn(c))),
        "exec-in-zip": saved(lambda c, sd: {**sd, "x": _Payload(exec, f"import os; os.system({pwn(c)!r})")}),
        "subprocess-in-zip": saved(lambda c, sd: _Payload(subprocess.call, ["sh", "-c", pwn(c)])),
    }
    for label, mutate in unsafe.items():
        yield Case("bin", label, "bin", mutate, (BIN,), expect="UnsafeCheckpointError")
    rng = random.Random(7)
    cases = {
        "text": text(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n"),
        "random": text(bytes(rng.getrandbits(8) for _ in range(4096))), "empty": text(b""),
        "truncated-half": lambda c: _cut(os.path.join(c["ckpt"], BIN)),
        "truncated-100": lambda c: Path(c["ckpt"], BIN).write_bytes(Path(c["ckpt"], BIN).read_bytes()[:100]),
        "flip-zip-signature": flip(lambda n: 0), "flip-end-of-central-dir": flip(lambda n: n - 22),
        "value=str": saved(lambda c, sd: {**sd, "model.norm.weight": "x"}),
        "top=list": saved(lambda c, sd: list(sd.values())),
        "top=tensor": saved(lambda c, sd: sd["model.norm.weight"]),
        "shape-mismatch": saved(lambda c, sd: {**sd, "model.norm.weight": sd["model.norm.weight"][:8]}),
        "int-tensor": saved(lambda c, sd: {**sd, "model.norm.weight": sd["model.norm.weight"].view(_torch().int32)}),
        "nested-state_dict": saved(lambda c, sd: {"state_dict": sd, "epoch": 3}),
    }
    for label, mutate in cases.items():
        yield Case("bin", label, "bin", mutate, (BIN,))


STAGED = ".pretrained-staging-0123456789ab"  # a staging folder name as the writer makes them


def rule_manifest() -> Iterator[Case]:
    """A save manifest (.pretrained-save.json) left in the folder: paths that escape it, wrong types; then a load,
    and a save_pretrained into the folder."""
    def marker(make):  # make(ctx) -> manifest object (or bytes); staging folder .pretrained-staging-x exists
        def mutate(c):
            os.makedirs(os.path.join(c["ckpt"], STAGED), exist_ok=True)
            m = make(c)
            Path(c["ckpt"], MARKER).write_bytes(m if isinstance(m, bytes) else json.dumps(m).encode())
        return mutate

    def planted(c):  # content a "files" entry would move over victim.txt
        os.makedirs(os.path.join(c["ckpt"], "outside2"), exist_ok=True)
        Path(c["ckpt"], "outside2", "victim.txt").write_text("EVIL")
        return {"staging": STAGED, "files": ["../outside2/victim.txt"], "remove": []}

    m = lambda staging, files=(), remove=(): {"staging": staging, "files": list(files), "remove": list(remove)}
    cases = {
        "staging=../outside": marker(lambda c: m("../outside", [SAFE, CONFIG])),
        "staging=absolute": marker(lambda c: m(c["outside"], [SAFE, CONFIG])),
        "staging=..": marker(lambda c: m("..", [SAFE])),
        "staging=.": marker(lambda c: m(".", [SAFE])), "staging=empty": marker(lambda c: m("", [SAFE])),
        "staging=5": marker(lambda c: {"staging": 5, "files": [], "remove": []}),
        "remove=../outside2/victim.txt": marker(lambda c: m(STAGED, remove=["../outside2/victim.txt"])),
        "remove=absolute": marker(lambda c: m(STAGED, remove=[os.path.join(c["outside2"], "victim.txt")])),
        "remove=config.json": marker(lambda c: m(STAGED, remove=[CONFIG])),
        "files=../outside2/victim.txt": marker(planted),
        "files=absolute": marker(lambda c: m(STAGED, [os.path.join(c["outside2"], "victim.txt")])),
        "files=sub/name": marker(lambda c: m(STAGED, ["sub/" + SAFE])),
        "files=missing-staged": marker(lambda c: m(STAGED, ["model-00001-of-00002.safetensors"])),
        "garbage": marker(lambda c: b"{not json"), "top=[]": marker(lambda c: b"[]"),
        "non-utf8": marker(lambda c: b'{"staging": "\xff"}'),
    }
    for label, mutate in cases.items():
        names = (MARKER, CONFIG) if label == "remove=config.json" else (MARKER,)  # config.json: gone, as recorded
        for op in ("load", "save"):
            yield Case("manifest", label, "single", mutate, names, op=op)


RULES = {f.__name__.removeprefix("rule_"): f for f in (
    rule_control, rule_st_length, rule_st_header, rule_st_flip, rule_st_truncate, rule_index, rule_config,
    rule_generation_config, rule_bin, rule_manifest)}


def all_cases(rules: list[str] | None = None) -> list[Case]:
    unknown = set(rules or ()) - set(RULES)
    if unknown:
        raise ValueError(f"unknown rule(s) {sorted(unknown)}; known: {', '.join(RULES)}")
    cases = [case for name, rule in RULES.items() if not rules or name in rules for case in rule()]
    ids = Counter(c.id for c in cases)
    assert not [i for i, n in ids.items() if n > 1], [i for i, n in ids.items() if n > 1]
    return cases


# ---- bases, snapshots, one case --------------------------------------------------------------------------------------
def build(root: str) -> None:
    """The valid checkpoints every case starts from, the decoy, and the reference logits (run in a subprocess)."""
    import torch
    from pretrained import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    models = {}
    for seed, name in ((0, "ref"), (1, "decoy")):
        torch.manual_seed(seed)
        models[name] = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    ref = models["ref"]
    ref.save_pretrained(os.path.join(root, "base", "single"))
    ref.save_pretrained(os.path.join(root, "base", "sharded"), max_shard_size=SHARD_SIZE)
    ref.save_pretrained(os.path.join(root, "base", "bin"), safe_serialization=False)
    models["decoy"].save_pretrained(os.path.join(root, "base", "decoy"))
    with torch.no_grad():
        logits = ref(torch.tensor(INPUT_IDS)).logits
        assert not torch.equal(logits, models["decoy"](torch.tensor(INPUT_IDS)).logits)
    torch.save({"logits": logits, "state_dict": ref.state_dict()}, os.path.join(root, "reference.pt"))


def _context(root: str, case_dir: str) -> dict:
    shards = sorted(n for n in os.listdir(os.path.join(root, "base", "sharded")) if n.endswith(".safetensors"))
    return dict(ckpt=os.path.join(case_dir, "ckpt"), outside=os.path.join(case_dir, "outside"),
                outside2=os.path.join(case_dir, "outside2"), shard=shards[0], last_shard=shards[-1])


def _prepare(root: str, case: Case, case_dir: str) -> dict:
    ctx = _context(root, case_dir)
    shutil.copytree(os.path.join(root, "base", case.base), ctx["ckpt"])
    shutil.copytree(os.path.join(root, "base", "decoy"), ctx["outside"])
    Path(ctx["outside"], "sentinel.txt").write_text("outside")
    os.makedirs(ctx["outside2"])
    Path(ctx["outside2"], "victim.txt").write_text("victim")
    case.mutate(ctx)
    return ctx


def snapshot(top: str) -> dict[str, str]:
    """Relative path -> sha256 (files), "dir", or "link:<target>", for everything under `top`."""
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path)
            elif name in dirs:
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def _operate(case: Case, ctx: dict, ref: dict) -> dict:
    """In the forked child: the operation and what came of it."""
    import torch
    import pretrained.errors
    from pretrained import AutoModelForCausalLM

    try:
        if case.op == "save":
            ref["model"].save_pretrained(ctx["ckpt"])
        model = AutoModelForCausalLM.from_pretrained(ctx["ckpt"])
        with torch.no_grad():
            logits = model(torch.tensor(INPUT_IDS)).logits
    except BaseException as e:  # noqa: BLE001 - everything counts, SystemExit and RecursionError included
        return {"status": "raised", "type": f"{type(e).__module__}.{type(e).__qualname__}",
                "typed": isinstance(e, pretrained.errors.PretrainedError),
                "expected": isinstance(e, getattr(pretrained.errors, case.expect)), "message": str(e)[:4000]}
    equal = logits.shape == ref["logits"].shape and torch.equal(logits, ref["logits"])
    diff = None if logits.shape != ref["logits"].shape else float((logits - ref["logits"]).abs().max())
    info = getattr(model, "loading_info", None)
    return {"status": "ok", "equal": bool(equal), "max_diff": diff, "missing": list(getattr(info, "missing_keys", []))[:5],
            "unexpected": list(getattr(info, "unexpected_keys", []))[:5]}


def _fork_case(case: Case, ctx: dict, ref: dict, timeout: float, log: str) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            os.close(r)
            os.setpgid(0, 0)
            err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(err, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.chdir(os.path.dirname(ctx["ckpt"]))
            resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
            resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
            data = json.dumps(_operate(case, ctx, ref)).encode()
            while data:
                data = data[os.write(w, data):]
        except BaseException:  # the harness itself failed in the child (e.g. out of memory while reporting)
            traceback.print_exc()
            os._exit(70)
        os._exit(0)
    os.close(w)
    chunks, deadline, hung = [], time.monotonic() + timeout, False
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            hung = True
            break
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    try:  # the child (if hung) and anything it started; before waitpid, so that the group id is still ours
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _, status = os.waitpid(pid, 0)
    if hung:
        return {"status": "hang", "message": f"no report after {timeout:.0f} s"}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        tail = Path(log).read_text(errors="replace").strip().splitlines()[-3:]
        how = (f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
               else f"exit code {os.WEXITSTATUS(status)}")
        return {"status": "crash", "message": f"died ({how}) without a report; stderr: {' | '.join(tail)}"}


def classify(case: Case, result: dict) -> str:
    status = result["status"]
    if status in ("hang", "crash"):
        return status
    if status == "ok":
        return "correct" if result["equal"] else "wrong"
    if status == "raised":
        if not (result["typed"] and result["expected"]):
            return "untyped"
        return "typed_named" if any(n in result["message"] for n in result["names"]) else "unnamed"
    raise ValueError(f"{case.id}: cannot classify {result}")


def _diff(before: dict, after: dict) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


_base_snapshots: dict[str, dict] = {}


def run_case(root: str, index: int, case: Case, ref: dict, timeout: float, keep: bool = False) -> dict:
    case_dir = os.path.join(root, "cases", f"{index:04d}")
    try:
        ctx = _prepare(root, case, case_dir)
    except Exception as e:  # a bug in a rule, not in the library: reported loudly
        return {"id": case.id, "rule": case.rule, "outcome": "generator_error", "message": repr(e),
                "touched_outside": [], "touched_inside": [], "seconds": 0.0}
    before = snapshot(case_dir)
    base = _base_snapshots.setdefault(case.base, snapshot(os.path.join(root, "base", case.base)))
    if case.rule != "control" and {k[5:]: v for k, v in before.items() if k.startswith("ckpt" + os.sep)} == base:
        return {"id": case.id, "rule": case.rule, "outcome": "generator_error", "message": "the rule changed nothing",
                "touched_outside": [], "touched_inside": [], "seconds": 0.0}
    start = time.monotonic()
    result = _fork_case(case, ctx, ref, timeout, os.path.join(root, "logs", f"{index:04d}.err"))
    result["seconds"] = round(time.monotonic() - start, 3)
    changed = _diff(before, snapshot(case_dir))
    inside = [p for p in changed if p == "ckpt" or p.startswith("ckpt" + os.sep)]
    result.update(id=case.id, rule=case.rule, touched_outside=[p for p in changed if p not in inside],
                  touched_inside=inside if case.op == "load" else [], names=[n.format(**ctx) for n in case.names])
    result["outcome"] = classify(case, result)
    if not keep:
        shutil.rmtree(case_dir, ignore_errors=True)
    return result


def passed(result: dict) -> bool:
    return result["outcome"] in PASSING and not result["touched_outside"] and not result["touched_inside"]


def _worker() -> None:
    """Entry point of a worker subprocess: job on stdin, one `@@ {json}` line per case on stdout."""
    job = json.load(sys.stdin)
    import torch
    from pretrained import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    saved = torch.load(os.path.join(job["root"], "reference.pt"), weights_only=True)
    model = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    model.load_state_dict(saved["state_dict"])
    ref = {"model": model, "logits": saved["logits"]}
    try:  # warm up: every import and lazy module a load touches, before the first fork
        with torch.no_grad():
            AutoModelForCausalLM.from_pretrained(os.path.join(job["root"], "base", "single"))(torch.tensor(INPUT_IDS))
    except Exception:
        pass
    cases = {c.id: c for c in all_cases()}
    for index, case_id in job["cases"]:
        result = run_case(job["root"], index, cases[case_id], ref, job["timeout"], job.get("keep", False))
        print("@@ " + json.dumps(result), flush=True)


def run(rules: list[str] | None = None, jobs: int = 2, timeout: float = 20.0, root: str | None = None,
        keep: bool = False, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the cases (of `rules`, or all) in `jobs` worker processes; one result dict per case, in case order."""
    cases = all_cases(rules)
    own_root = root is None
    root = root or tempfile.mkdtemp(prefix="pretrained-corruption-")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": os.path.join(root, "hf"), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        for sub in ("cases", "logs"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        subprocess.run([sys.executable, __file__, "--build", root], env=env, check=True)
        results: dict[str, dict] = {}
        lock = threading.Lock()

        def work(share: list[tuple[int, str]]) -> None:
            proc = subprocess.Popen([sys.executable, __file__, "--worker"], env=env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            proc.stdin.write(json.dumps({"root": root, "cases": share, "timeout": timeout, "keep": keep}))
            proc.stdin.close()
            for line in proc.stdout:
                if line.startswith("@@ "):
                    result = json.loads(line[3:])
                    with lock:
                        results[result["id"]] = result
                        if progress:
                            progress(result)
            proc.wait()

        numbered = [(i, c.id) for i, c in enumerate(cases)]
        threads = [threading.Thread(target=work, args=(numbered[k::jobs],)) for k in range(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [results.get(c.id) or {"id": c.id, "rule": c.rule, "outcome": "crash", "seconds": 0.0,
                                      "message": "its worker process died", "touched_outside": [],
                                      "touched_inside": []} for c in cases]
    finally:
        if own_root and not keep:
            shutil.rmtree(root, ignore_errors=True)


# ---- reporting -------------------------------------------------------------------------------------------------------
def tally(results: list[dict]) -> str:
    """Counts per outcome, per rule and in total, as a text table."""
    extra = ("generator_error",) if any(r["outcome"] == "generator_error" for r in results) else ()
    cols = (*OUTCOMES, *extra, "touched_outside", "touched_inside", "pass")
    rows = {}
    for r in results:
        row = rows.setdefault(r["rule"], Counter())
        row[r["outcome"]] += 1
        row["touched_outside"] += bool(r["touched_outside"])
        row["touched_inside"] += bool(r["touched_inside"])
        row["pass"] += passed(r)
        row["cases"] += 1
    rows["TOTAL"] = sum(rows.values(), Counter())
    head = ["rule", "cases", *cols]
    width = [max(len(h), 18 if i == 0 else 5) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, width)))]
    for rule, row in rows.items():
        cells = [rule, row["cases"], *(row[c] for c in cols)]
        lines.append("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(cells, width))))
    lines.insert(-1, "-" * len(lines[0]))
    return "\n".join(lines)


def describe(result: dict) -> str:
    """One line for a non-passing case: id, outcome, flags, exception type and first message line (or the diff)."""
    flags = "".join(f" +{k}={result[k]}" for k in ("touched_outside", "touched_inside") if result.get(k))
    if result.get("status") == "raised":
        lines = result["message"].strip().splitlines()
        what = f"{result['type']}: {lines[0] if lines else ''}"
    elif result.get("status") == "ok":
        what = f"loaded; logits max|diff| {result['max_diff']}" if not result["equal"] else "loaded"
        if result["missing"] or result["unexpected"]:
            what += f"; missing {result['missing']} unexpected {result['unexpected']}"
    else:
        what = result.get("message", "")
    return f"{result['id']}: {result['outcome']}{flags} -- {what[:300]}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker()
    elif sys.argv[1:2] == ["--build"]:
        build(sys.argv[2])
    else:
        sys.exit("usage: corruption.py --worker | --build ROOT (run bench/corruption_tally.py for the tally)")
