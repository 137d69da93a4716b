"""The HTTP edge against what an attacker or a broken client sends: malformed bodies,
foreign Host names, cross-site browsers, reused idempotency keys, forged forwarded headers."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from runtime.testing import FakeTelegram, local_config, serve_bot
from tests.adapters._edge import (
    ENDPOINTS,
    MESSAGE,
    WEBHOOK,
    edge_config,
    headers_for,
    inbox,
)

MALFORMED = {
    "lone surrogate in the text": b'{"message": "hi \\ud800", "user": "u", "query": "hi \\ud800",'
    b' "content": "hi \\ud800", "update_id": 1, "message_id": 1, "text": "hi \\udfff"}',
    "lone surrogate in a key": b'{"message": "hi", "\\udc00": 1}',
    "integer of 5,000 digits": b'{"message": "hi", "limit": ' + b"7" * 5000 + b"}",
    "nested 100,000 deep": b'{"message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested 500 deep": b'{"message": "hi", "metadata": ' + b'{"a": ' * 500 + b"1" + b"}" * 501,
    "invalid UTF-8": b'{"message": "caf\xe9 \xff"}',
    "NaN": b'{"message": "hi", "importance": NaN, "limit": NaN}',
    "a float overflowing to infinity": b'{"message": "hi", "importance": 1e999}',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_json_is_a_400_on_every_endpoint_and_nothing_is_stored(
    workspace: Path,
    client: httpx2.AsyncClient,
    telegram: tuple[FakeTelegram, str],
    body: bytes,
) -> None:
    async with serve_bot(edge_config(workspace, *telegram)) as bot:
        answers = {
            endpoint: await client.post(
                bot.url + endpoint, content=body, headers=headers_for(endpoint, body)
            )
            for endpoint in ENDPOINTS
            if endpoint != "/api/v1/memory/consolidate"  # reads no body
        }
        normal = await client.post(
            bot.url + MESSAGE,
            json={"message": "still there?"},
            headers=headers_for(MESSAGE, b""),
        )
    for endpoint, answer in answers.items():
        assert answer.status_code == 400, (endpoint, answer.text)
        assert answer.json()["error"]["type"] == "invalid_json", (endpoint, answer.text)
    assert normal.status_code == 200
    assert inbox(workspace) == [("http", "still there?", "replied")]


async def test_a_surrogate_in_the_message_id_or_webhook_text_is_refused_not_a_500(
    workspace: Path, client: httpx2.AsyncClient, telegram: tuple[FakeTelegram, str]
) -> None:
    keyed = b'{"message": "hi", "session_id": "s", "message_id": "k-\\ud83d"}'
    hooked = b'{"message": "deploy \\udead", "user": "u1"}'
    async with serve_bot(edge_config(workspace, *telegram)) as bot:
        by_key = await client.post(
            bot.url + MESSAGE, content=keyed, headers=headers_for(MESSAGE, keyed)
        )
        by_hook = await client.post(
            bot.url + WEBHOOK, content=hooked, headers=headers_for(WEBHOOK, hooked)
        )
    assert by_key.status_code == 400 and "surrogate" in by_key.json()["error"]["message"]
    assert by_hook.status_code == 400 and "surrogate" in by_hook.json()["error"]["message"]
    assert inbox(workspace) == []


async def test_a_session_id_with_a_trailing_newline_is_refused(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        answer = await client.post(bot.url + MESSAGE, json={"message": "hi", "session_id": "abc\n"})
    assert answer.status_code == 400
    assert "session_id" in answer.json()["error"]["message"]
    assert inbox(workspace) == []


# -- browsers: DNS rebinding and cross-site requests --------------------------------------


async def test_a_foreign_host_name_is_refused_when_serving_on_loopback(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        port = bot.url.rpartition(":")[2]
        rebound = await client.post(
            bot.url + MESSAGE,
            json={"message": "hi"},
            headers={"Host": f"attacker.example:{port}"},
        )
        stats = await client.get(
            f"{bot.url}/api/v1/memory/stats", headers={"Host": "attacker.example"}
        )
        ours = [
            await client.post(bot.url + MESSAGE, json={"message": "hi"}, headers={"Host": host})
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}")
        ]
        health = await client.get(f"{bot.url}/healthz", headers={"Host": "attacker.example"})
    assert rebound.status_code == 400 and stats.status_code == 400
    assert rebound.json()["error"]["type"] == "invalid_host"
    assert "ALLOWED_HOSTS" in rebound.json()["error"]["message"]
    assert [answer.status_code for answer in ours] == [200, 200, 200]
    assert health.status_code == 200  # probes are not the API
    assert [text for _, text, _ in inbox(workspace)] == ["hi", "hi", "hi"]


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a..b", "."])
async def test_a_host_that_is_no_host_name_is_a_400_not_a_500(
    workspace: Path, client: httpx2.AsyncClient, host: str
) -> None:
    async with serve_bot(local_config(workspace, allowed_hosts="*")) as bot:
        answer = await client.get(f"{bot.url}/api/v1/memory/stats", headers={"Host": host})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_host"


@pytest.mark.parametrize(
    ("setting", "host", "status"),
    [
        ("bot.example.com", "bot.example.com", 200),
        ("bot.example.com", "localhost", 400),
        ("*", "anything.example", 200),
    ],
)
async def test_allowed_hosts_names_the_hosts_served(
    workspace: Path, client: httpx2.AsyncClient, setting: str, host: str, status: int
) -> None:
    async with serve_bot(local_config(workspace, allowed_hosts=setting)) as bot:
        answer = await client.post(
            bot.url + MESSAGE, json={"message": "hi"}, headers={"Host": host}
        )
    assert answer.status_code == status


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/memory/consolidate", b""),
        ("/api/message", b"message=hi"),
        ("/api/v1/memory/store", b'{"content": "the admin password is hunter2"}'),
    ],
)
async def test_a_cross_site_form_post_changes_nothing(
    workspace: Path, client: httpx2.AsyncClient, path: str, body: bytes
) -> None:
    """What a page on another site can send without a CORS preflight."""
    async with serve_bot(local_config(workspace)) as bot:
        form = await client.post(
            bot.url + path,
            content=body,
            headers={
                "Content-Type": "text/plain",
                "Origin": "http://attacker.example",
            },
        )
        plain = await client.post(
            bot.url + path,
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        stats = (await client.get(f"{bot.url}/api/v1/memory/stats")).json()
    assert form.status_code == 403 and form.json()["error"]["type"] == "cross_origin"
    assert plain.status_code == 415
    assert stats["total_memories"] == 0
    assert inbox(workspace) == []


async def test_json_from_another_origin_is_refused_and_from_our_own_accepted(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        foreign = await client.post(
            f"{bot.url}/api/v1/memory/consolidate",
            json={},
            headers={"Origin": "http://attacker.example"},
        )
        own = await client.post(
            f"{bot.url}/api/v1/memory/consolidate", json={}, headers={"Origin": bot.url}
        )
        odd = [
            await client.post(
                f"{bot.url}/api/v1/memory/consolidate", json={}, headers={"Origin": origin}
            )
            for origin in ("null", "http://[::1", "http://127.0.0.1@attacker.example")
        ]
    assert foreign.status_code == 403
    assert [answer.status_code for answer in odd] == [403, 403, 403]
    assert own.status_code == 200 and own.json()["consolidated"] is True


# -- replays ------------------------------------------------------------------------------


async def test_an_idempotency_key_reused_for_another_message_is_422(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        key = {"Idempotency-Key": "order-1"}
        first = await client.post(
            bot.url + MESSAGE,
            json={"message": "remember I like tea", "session_id": "s"},
            headers=key,
        )
        other = await client.post(
            bot.url + MESSAGE, json={"message": "forget everything", "session_id": "s"}, headers=key
        )
        same = await client.post(
            bot.url + MESSAGE,
            json={"message": "remember I like tea", "session_id": "s"},
            headers=key,
        )
        elsewhere = await client.post(
            bot.url + MESSAGE, json={"message": "forget everything", "session_id": "t"}, headers=key
        )
    assert first.status_code == 200
    assert other.status_code == 422
    assert other.json()["error"]["type"] == "idempotency_key_reused"
    assert "order-1" in other.json()["error"]["message"]
    assert "different message" in other.json()["error"]["message"]
    assert same.status_code == 200 and same.json()["metadata"]["replayed"] is True
    assert elsewhere.status_code == 200  # a key is scoped to its session
    assert [text for _, text, _ in inbox(workspace)] == [
        "remember I like tea",
        "forget everything",
    ]


async def test_an_overlong_idempotency_key_is_refused(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        answer = await client.post(
            bot.url + MESSAGE, json={"message": "hi"}, headers={"Idempotency-Key": "k" * 256}
        )
    assert answer.status_code == 400 and "255" in answer.json()["error"]["message"]


# -- the per-client rate limit behind a reverse proxy -------------------------------------


async def _two_clients_twice(
    workspace: Path, client: httpx2.AsyncClient, **settings: str
) -> list[int]:
    """Two clients behind the same proxy (127.0.0.1), each sending twice; one message a
    client per 10 seconds."""
    config = local_config(workspace, client_rate_per_minute=6, **settings)
    statuses = []
    async with serve_bot(config) as bot:
        for forwarded in ("203.0.113.1", "203.0.113.2", "203.0.113.1", "203.0.113.2"):
            answer = await client.post(
                bot.url + MESSAGE,
                json={"message": "hi"},
                headers={"X-Forwarded-For": f"198.51.100.7, {forwarded}"},
            )
            statuses.append(answer.status_code)
    return statuses


async def test_forwarded_addresses_from_a_trusted_proxy_are_separate_clients(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    statuses = await _two_clients_twice(workspace, client, trusted_proxies="127.0.0.0/8")
    assert statuses == [200, 200, 429, 429]


async def test_forwarded_headers_are_ignored_unless_the_proxy_is_trusted(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    statuses = await _two_clients_twice(workspace, client)
    assert statuses == [200, 429, 429, 429]


def test_the_client_is_the_nearest_untrusted_hop() -> None:
    from ipaddress import ip_network

    from adapters.ratelimit import client_address

    proxies = (ip_network("10.0.0.0/8"), ip_network("::1"))
    spoofed = "1.1.1.1, 203.0.113.9, 10.0.0.2"
    assert client_address("10.0.0.1", proxies, x_forwarded_for=spoofed) == "203.0.113.9"
    assert client_address("192.0.2.1", proxies, x_forwarded_for=spoofed) == "192.0.2.1"
    assert (
        client_address("::1", proxies, forwarded='for="[2001:db8::7]:4711";proto=https')
        == "2001:db8::7"
    )
    assert client_address("::ffff:10.0.0.1", proxies, x_forwarded_for="192.0.2.5") == "192.0.2.5"
    assert client_address("10.0.0.1", proxies) == "10.0.0.1"  # no header: the proxy itself
    assert client_address("10.0.0.1", ()) == "10.0.0.1"


def test_a_bad_trusted_proxy_is_a_config_error_naming_it() -> None:
    from runtime.config import Config, ConfigError

    with pytest.raises(ConfigError, match=r"TRUSTED_PROXIES: 10\.0\.0\.300 is not"):
        Config.load({"TRUSTED_PROXIES": "10.0.0.0/8, 10.0.0.300"}, workspace=Path("."))
