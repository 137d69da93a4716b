"""Request bodies as JSON: the one decoder every endpoint uses.

What passes here can be stored and echoed anywhere in the bot: UTF-8 text without lone
surrogates (SQLite and every encoder refuse those), finite numbers, integers Python will
convert, nesting shallow enough for recursive code. Anything else is `InvalidJson`, which the
channel answers as a 400 naming the problem, instead of a 500 or a half-written row deeper in.
"""

from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 64
"""Objects and arrays inside each other; real payloads (Telegram updates, GitHub events)
stay well under it."""

_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidJson(ValueError):
    """The body is not JSON the bot can take; the message says why, for the client."""


def decode_json(body: bytes) -> object:
    """The body's JSON value, or `InvalidJson`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidJson(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer past Python's digit limit, NaN, Infinity
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    _check(value)
    return value


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _check(value: object) -> None:
    """Depth, strings and numbers, without recursion (the value may be ~1,000 deep)."""
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidJson("the body has a number too large for a float")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidJson(f"the body is nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, inner in item.items():
                    _check_text(key)
                    pending.append((inner, depth + 1))
            else:
                pending.extend((inner, depth + 1) for inner in item)


def _check_text(text: str) -> None:
    if not text.isascii() and (found := _SURROGATE.search(text)):
        raise InvalidJson(
            f"the body has a lone surrogate (\\u{ord(found[0]):04x}) in a string;"
            " send text as valid UTF-8"
        )
