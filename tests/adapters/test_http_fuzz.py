"""Property-based fuzzing of every endpoint that takes a body (and of the headers the edge
reads): over 5,000 malformed requests, no 5xx, the server still answers afterwards, and the inbox holds only accepted messages.

The bot runs in its own thread (its own trio loop) for the whole run, so Hypothesis drives
one long-lived server with a plain blocking client instead of starting one per example.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.testing import FakeTelegram, make_workspace, open_local, serve_bot
from tests.adapters._edge import (
    CONSOLIDATE,
    MESSAGE,
    RECALL,
    STORE,
    TELEGRAM,
    WEBHOOK,
    edge_config,
    headers_for,
    inbox,
)

EXAMPLES = {MESSAGE: 1300, RECALL: 900, STORE: 900, CONSOLIDATE: 200, WEBHOOK: 900, TELEGRAM: 900}
"""Requests per endpoint: 5,100 in all (consolidation is slow and reads no body)."""

# Text as an attacker writes it: any code point, and often a lone surrogate in it.
_characters = st.characters(codec=None, exclude_categories=())
_surrogates = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
    min_size=1,
    max_size=2,
)
_any_text = st.one_of(
    st.text(_characters, max_size=40),
    st.tuples(
        st.text(_characters, max_size=10), _surrogates, st.text(_characters, max_size=10)
    ).map("".join),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    _any_text,
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
    max_leaves=12,
)
_clean_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
"""Valid text of any kind (quotes, operators, control characters): it reaches the core."""
_session_ids = st.one_of(_any_text, st.from_regex(r"[\w.:@-]{1,130}\n?", fullmatch=True))


def _object(
    fields: dict[str, st.SearchStrategy[Any]],
    required: dict[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[bytes]:
    """Objects with the endpoint's own fields, each missing or of any value."""
    return st.fixed_dictionaries(required or {}, optional=fields).map(
        lambda value: json.dumps(value).encode()  # ensure_ascii: surrogates become \\udxxx
    )


_nested = st.integers(60, 100_000).map(lambda depth: b"[" * depth + b"]" * depth)
_huge_int = st.integers(4301, 8000).map(lambda digits: b'{"message": ' + b"9" * digits + b"}")
_raw = st.one_of(
    st.binary(max_size=64),  # invalid UTF-8, truncated JSON, nothing at all
    st.sampled_from([b"NaN", b"[Infinity]", b'{"a": 1e999}', b'"\\ud800"', b"\xef\xbb\xbf{}"]),
    _nested,
    _huge_int,
)

BODIES: dict[str, st.SearchStrategy[bytes]] = {
    MESSAGE: st.one_of(
        _raw,
        _object(
            {
                "message": st.one_of(_any_text, _json_values),
                "session_id": _session_ids,
                "message_id": st.one_of(_any_text, _json_values),
                "stream": _json_values,
            }
        ),
        _object({"session_id": _session_ids}, {"message": _clean_text}),
    ),
    RECALL: st.one_of(
        _raw,
        _object({"query": _json_values, "limit": _json_values, "types": _json_values}),
        _object({"limit": st.integers(1, 100)}, {"query": _clean_text}),
    ),
    STORE: st.one_of(
        _raw,
        _object(
            {
                "content": _json_values,
                "type": st.one_of(st.sampled_from(["factual", "episodic"]), _json_values),
                "importance": _json_values,
                "metadata": _json_values,
            }
        ),
        _object({"metadata": st.dictionaries(_clean_text, _json_values)}, {"content": _clean_text}),
    ),
    CONSOLIDATE: _raw,
    WEBHOOK: st.one_of(
        _raw,
        _object({"message": _json_values, "user": _json_values}),
        _object({"user": _json_values}, {"message": _clean_text}),
    ),
    TELEGRAM: st.one_of(
        _raw,
        _object(
            {
                "update_id": _json_values,
                "message": _object(
                    {
                        "message_id": _json_values,
                        "chat": _json_values,
                        "text": _json_values,
                        "from": _json_values,
                    }
                ).map(json.loads),
            }
        ),
    ),
}


@contextmanager
def _bot_in_a_thread(workspace: Path) -> Iterator[str]:
    """Serve the bot (and a fake Telegram) from another thread; yields the bot's URL and
    shuts it down as SIGTERM would on the way out."""
    started: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.Event]] = queue.Queue()
    failure: list[BaseException] = []

    async def serve() -> None:
        fake, stop = FakeTelegram(), trio.Event()
        async with (
            open_local(fake) as telegram_url,
            serve_bot(edge_config(workspace, fake, telegram_url)) as bot,
        ):
            started.put((bot.url, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="fuzzed-bot")
    thread.start()
    try:
        url, token, stop = started.get(timeout=60)
    except queue.Empty:
        thread.join(60)
        raise failure[0] if failure else TimeoutError("the bot did not start in 60 s") from None
    try:
        yield url
    finally:
        with contextlib.suppress(trio.RunFinishedError):  # it already stopped: failure says why
            trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(60)
        if failure:
            raise failure[0]


def test_malformed_requests_are_never_a_5xx(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "bot")
    sent: dict[str, int] = {}
    accepted_texts: set[str] = set()
    with _bot_in_a_thread(workspace) as url, httpx2.Client(timeout=30) as http:
        for endpoint, examples in EXAMPLES.items():
            sent[endpoint] = _fuzz(http, url + endpoint, endpoint, examples, accepted_texts)
        sent["headers"] = _fuzz_headers(http, url + MESSAGE, accepted_texts)
        normal = http.post(
            url + MESSAGE, json={"message": "still there?"}, headers=headers_for(MESSAGE, b"")
        )
    assert normal.status_code == 200 and normal.json()["message"]
    assert sum(sent.values()) >= 5000, sent
    rows = inbox(workspace)
    assert all(state == "replied" for _, _, state in rows), rows  # nothing left half-done
    assert {text for _, text, _ in rows} <= accepted_texts | {"still there?"}


_header_text = st.from_regex(r"([!-~]([ -~]{0,58}[!-~])?)?", fullmatch=True)
"""What a client can put in a header: printable ASCII, no whitespace around it."""
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        name: st.one_of(_header_text, st.sampled_from(samples))
        for name, samples in {
            "Host": ["[::1", "localhost:x", ":", "[]:1", "a" * 300, "a..b", "-.example"],
            "Origin": ["null", "http://[::1", "http://localhost:99999", "://"],
            "Content-Type": ["application/json; charset=latin-1", "application/json;;", "*/*"],
            "Idempotency-Key": ["", "k" * 256],
            "X-Forwarded-For": ["", ",,,", "unknown, 300.1.1.1", "::1, 127.0.0.1"],
            "Forwarded": ['for="[::1', "for=;by=", 'for="_hidden", for=unknown'],
        }.items()
    },
)
HEADER_EXAMPLES = 500


def _fuzz_headers(http: httpx2.Client, url: str, accepted_texts: set[str]) -> int:
    """Valid messages under generated headers (the Host, Origin and proxy checks)."""
    sent = 0

    @settings(
        max_examples=HEADER_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(extra=_HEADERS, text=_clean_text)
    def request(extra: dict[str, str], text: str) -> None:
        nonlocal sent
        body = json.dumps({"message": text}).encode()
        headers = headers_for(MESSAGE, body) | extra
        answer = http.post(url, content=body, headers=headers)
        sent += 1
        assert answer.status_code < 500, (headers, answer.text)
        if answer.status_code < 300:
            accepted_texts.add(text)

    request()
    return sent


def _fuzz(
    http: httpx2.Client, url: str, endpoint: str, examples: int, accepted_texts: set[str]
) -> int:
    """Send `examples` generated bodies to one endpoint; how many were sent."""
    sent = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=BODIES[endpoint])
    def request(body: bytes) -> None:
        nonlocal sent
        answer = http.post(url, content=body, headers=headers_for(endpoint, body))
        sent += 1
        assert answer.status_code < 500, (endpoint, body[:200], answer.text)
        assert answer.headers["content-type"] in ("application/json", "text/event-stream")
        if answer.status_code < 300 and endpoint in (MESSAGE, WEBHOOK, TELEGRAM):
            accepted_texts.update(_texts(body))

    request()
    return sent


def _texts(body: bytes) -> set[str]:
    """Every string in an accepted body (the message text is one of them)."""
    found: set[str] = set()
    pending = [json.loads(body)]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            found |= {value, value.strip()}
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return found
