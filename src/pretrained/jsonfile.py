"""Reading the JSON files of a checkpoint (config.json, the shard index, generation_config.json) in one place.

Framework-neutral. Whatever is wrong with a file — unreadable, not UTF-8, not JSON, nested absurdly deep, or a
JSON value other than an object at the top — comes back as one typed error that names the file and says what to
do, never as a raw `UnicodeDecodeError`, `JSONDecodeError` or `RecursionError`.
"""

from __future__ import annotations

import json
import os
from typing import Any

# No file we read nests more than a few levels; a deeper one is damaged or hostile, and deep values would later
# hit Python's recursion limit in copy.deepcopy or json.dumps, far from the file that caused it.
MAX_DEPTH = 64


def read_json_object(path: str | os.PathLike, error: type[Exception], what: str, fix: str) -> dict[str, Any]:
    """The JSON object in the file at `path`.

    `error` is the exception class raised for any problem (a `pretrained.errors` class), `what` names the file's
    role in messages ("Config file", "Index file") and `fix` is the sentence that says how to repair it. A
    missing file raises FileNotFoundError (callers decide what a missing file means).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{what} '{path}' cannot be read ({e.strerror or e}). {fix}") from e
    return parse_json_object(raw, str(path), error, what, fix)


def parse_json_object(raw: bytes | str, path: str, error: type[Exception], what: str, fix: str) -> dict[str, Any]:
    """`read_json_object` for bytes (or text) already read from `path`."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")  # a leading byte-order mark, as some editors write, is tolerated
        except UnicodeDecodeError as e:
            raise error(
                f"{what} '{path}' is not UTF-8 text (byte {e.start} is {raw[e.start:e.start + 1]!r}). {fix}"
            ) from None
    else:
        text = raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} '{path}' is not valid JSON ({e.msg}, line {e.lineno}, column {e.colno}). {fix}") from None
    except RecursionError:
        raise error(f"{what} '{path}' nests JSON values too deeply to be read. {fix}") from None
    except ValueError as e:  # e.g. an integer literal longer than Python converts
        raise error(f"{what} '{path}' holds a JSON value that cannot be read ({e}). {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{what} '{path}' must hold a JSON object ({{...}}), but holds {_kind(data)}. {fix}")
    if nesting_depth(data) > MAX_DEPTH:
        raise error(f"{what} '{path}' nests JSON values more than {MAX_DEPTH} levels deep. {fix}")
    return data


def nesting_depth(value: Any) -> int:
    """How many containers (objects, arrays) deep `value` goes; a scalar is 0. Iterative: no recursion limit."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)
