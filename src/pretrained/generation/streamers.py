"""Streamers: `generate(..., streamer=s)` calls `s.put(tokens)` with the prompt first, then with each step's new
tokens (one per row), and `s.end()` when it stops.

`TokenStreamer` hands token ids to a callback and/or a queue you can iterate from another thread;
`TextStreamer` decodes with a tokenizer (anything with `decode(list_of_ids)`, e.g. a `tokenizers.Tokenizer`) and
prints whole words as they are completed.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import torch

_STOP = object()


def _ids(value: Any) -> list[int]:
    """Tokens of a batch of one, as a flat list."""
    t = torch.as_tensor(value)
    if t.dim() > 1:
        if t.shape[0] != 1:
            raise ValueError(f"A streamer follows a single sequence; got a batch of {t.shape[0]}.")
        t = t[0]
    return [int(x) for x in t.reshape(-1).tolist()]


class _Stream:
    """What both streamers share: the first `put` is the prompt (dropped with `skip_prompt`); ids are collected."""

    skip_prompt: bool
    tokens: list[int]
    _prompt_seen: bool

    def _accept(self, value: Any) -> list[int] | None:
        """The new ids of `value`, appended to `tokens`; None for a skipped prompt."""
        ids = _ids(value)
        if not self._prompt_seen:
            self._prompt_seen = True
            if self.skip_prompt:
                return None
        self.tokens.extend(ids)
        return ids


class TokenStreamer(_Stream):
    """Token ids as they come: `callback(ids)` per step, and/or iterate the streamer (it blocks until the next
    tokens or the end; `timeout` seconds at most per wait, then `queue.Empty`)."""

    def __init__(self, callback: Callable[[list[int]], Any] | None = None, skip_prompt: bool = False,
                 timeout: float | None = None) -> None:
        self.callback, self.skip_prompt, self.timeout = callback, skip_prompt, timeout
        self.queue: queue.Queue = queue.Queue()
        self.tokens: list[int] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        ids = self._accept(value)
        if ids is None:
            return
        if self.callback is not None:
            self.callback(ids)
        self.queue.put(ids)

    def end(self) -> None:
        self.queue.put(_STOP)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            item = self.queue.get(timeout=self.timeout)
            if item is _STOP:
                return
            yield item


class TextStreamer(_Stream):
    """Decodes the stream with `tokenizer` and writes text to `file` (stdout) as words complete: up to the last
    space, or everything at a newline or at the end. `on_text(text, final)` replaces the printing if given."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, file: TextIO | None = None,
                 on_text: Callable[[str, bool], Any] | None = None, **decode_kwargs: Any) -> None:
        self.tokenizer, self.skip_prompt, self.decode_kwargs = tokenizer, skip_prompt, decode_kwargs
        self.file, self.on_text = file, on_text
        self.tokens: list[int] = []
        self.printed = 0  # characters of the decoded `tokens` already written
        self._prompt_seen = False

    def _decode(self) -> str:
        return self.tokenizer.decode(self.tokens, **self.decode_kwargs)

    def put(self, value: Any) -> None:
        if self._accept(value) is None:
            return
        text = self._decode()
        if text.endswith("\n"):
            chunk, self.tokens, self.printed = text[self.printed:], [], 0
        else:
            cut = text.rfind(" ") + 1
            chunk = text[self.printed:cut] if cut > self.printed else ""
            self.printed = max(self.printed, cut)
        self.emit(chunk, False)

    def end(self) -> None:
        chunk = self._decode()[self.printed:] if self.tokens else ""
        self.tokens, self.printed = [], 0
        self.emit(chunk, True)

    def emit(self, text: str, final: bool) -> None:
        if self.on_text is not None:
            self.on_text(text, final)
            return
        out = self.file or sys.stdout
        out.write(text + ("\n" if final else ""))
        out.flush()
