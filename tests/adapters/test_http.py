"""The HTTP channel against a real server on 127.0.0.1, driven by httpx2."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from runtime.testing import (
    FakeLLM,
    Slow,
    Text,
    ToolUse,
    local_config,
    open_local,
    serve_bot,
    wait_until,
)

SEED = {"message": "Hello!", "session_id": "test-123"}


async def test_the_seed_request_gets_the_seed_reply_shape(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        response = await client.post(f"{bot.url}/api/message", json=SEED)
    assert response.status_code == 200
    body = response.json()
    assert body["session_id"] == "test-123"
    assert "TestBot" in body["message"]
    metadata = body["metadata"]
    assert metadata["memories_recalled"] == 0 and metadata["tools_used"] == 0
    assert metadata["states"] == [
        "received",
        "recalling",
        "prompting",
        "calling_model",
        "storing",
        "replying",
    ]


async def test_without_session_id_a_new_session_is_started_and_named(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        first = (await client.post(f"{bot.url}/api/message", json={"message": "hi"})).json()
        second = (await client.post(f"{bot.url}/api/message", json={"message": "hi"})).json()
    assert first["session_id"] and second["session_id"]
    assert first["session_id"] != second["session_id"]


async def test_memories_cross_sessions_and_survive_a_restart(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    config = local_config(workspace)
    async with serve_bot(config) as bot:
        stored = await client.post(
            f"{bot.url}/api/message",
            json={"message": "remember my cat is called Miso", "session_id": "a"},
        )
        assert stored.status_code == 200 and stored.json()["metadata"]["tools_used"] == 1
        other = await client.post(
            f"{bot.url}/api/message",
            json={"message": "what do you remember about my cat", "session_id": "b"},
        )
        assert "Miso" in other.json()["message"]
    async with serve_bot(config) as bot:
        again = await client.post(
            f"{bot.url}/api/message", json={"message": "what do you remember about my cat"}
        )
    assert "Miso" in again.json()["message"]
    assert again.json()["metadata"]["memories_recalled"] >= 1  # the fact, and the episodes


@pytest.mark.parametrize(
    ("kwargs", "status", "kind", "words"),
    [
        (
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
            "not valid JSON",
        ),
        (
            {"json": {"session_id": "x"}},
            400,
            "invalid_request",
            "'message': required field missing",
        ),
        ({"json": {"message": "   "}}, 400, "invalid_request", "must not be empty"),
        ({"json": {"message": 42, "stream": "yes please"}}, 400, "invalid_request", "'stream'"),
        ({"json": ["message"]}, 400, "invalid_request", "JSON object"),
        (
            {"json": {"message": "hi", "session_id": "../../x"}},
            400,
            "invalid_request",
            "session_id",
        ),
        (
            {"content": b"message=hi", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
            "application/json",
        ),
        ({"json": {"message": "x" * 2000}}, 413, "message_too_long", "limit is 1000"),
        (
            {"json": {"message": "x" * 5000}},
            413,
            "request_entity_too_large",
            "larger than 4096 bytes",
        ),
    ],
)
async def test_bad_requests_get_an_error_a_person_can_act_on(
    workspace: Path,
    client: httpx2.AsyncClient,
    kwargs: dict[str, object],
    status: int,
    kind: str,
    words: str,
) -> None:
    config = local_config(workspace, max_body_bytes=4096, max_message_chars=1000)
    async with serve_bot(config) as bot:
        response = await client.post(f"{bot.url}/api/message", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == kind
    assert words in error["message"]


async def test_unknown_routes_and_methods_answer_json(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        missing = await client.get(f"{bot.url}/nope")
        wrong = await client.get(f"{bot.url}/api/message")
    assert missing.status_code == 404 and "error" in missing.json()
    assert wrong.status_code == 405 and "error" in wrong.json()


async def test_a_configured_token_is_required(workspace: Path, client: httpx2.AsyncClient) -> None:
    config = local_config(workspace, botcore_api_token="s3cret-token")
    async with serve_bot(config) as bot:
        url = f"{bot.url}/api/message"
        missing = await client.post(url, json=SEED)
        wrong = await client.post(url, json=SEED, headers={"Authorization": "Bearer nope"})
        right = await client.post(url, json=SEED, headers={"Authorization": "Bearer s3cret-token"})
        health = await client.get(f"{bot.url}/healthz")
    assert missing.status_code == 401 and wrong.status_code == 401
    assert "Bearer" in missing.json()["error"]["message"]
    assert "s3cret-token" not in missing.text + wrong.text
    assert right.status_code == 200
    assert health.status_code == 200


async def test_health_and_readiness(workspace: Path, client: httpx2.AsyncClient) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        alive = await client.get(f"{bot.url}/healthz")
        ready = await client.get(f"{bot.url}/readyz")
    assert alive.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["model"] == "offline"


async def test_a_full_mailbox_is_answered_429_with_retry_after(
    workspace: Path, client: httpx2.AsyncClient, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(Slow(1.0, Text("slow one")))
    config = local_config(
        workspace,
        default_model="anthropic:fake",
        anthropic_api_key="k",
        anthropic_base_url=url,
        mailbox_size=1,
    )
    async with serve_bot(config) as bot, trio.open_nursery() as nursery:
        endpoint = f"{bot.url}/api/message"
        answers: list[httpx2.Response] = []

        async def send(text: str) -> None:
            answers.append(await client.post(endpoint, json={"message": text, "session_id": "s"}))

        nursery.start_soon(send, "first")
        await wait_until(lambda: fake.requests)
        nursery.start_soon(send, "second")
        await trio.sleep(0.2)
        refused = await client.post(endpoint, json={"message": "third", "session_id": "s"})
        other = await client.post(endpoint, json={"message": "elsewhere", "session_id": "t"})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert "retry" in refused.json()["error"]["message"]
    assert other.json()["message"] == "ok: elsewhere"  # another session is not held up
    assert sorted(a.json()["message"] for a in answers) == ["ok: second", "slow one"]


async def test_a_repeated_idempotency_key_returns_the_stored_reply(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        url = f"{bot.url}/api/message"
        headers = {"Idempotency-Key": "k-1"}
        body = {"message": "remember the door code is 4711", "session_id": "s"}
        first = await client.post(url, json=body, headers=headers)
        second = await client.post(url, json=body, headers=headers)
        recall = await client.post(url, json={"message": "recall door code", "session_id": "s"})
    assert first.json()["message"] == second.json()["message"]
    assert first.json()["metadata"]["turn_id"] == second.json()["metadata"]["turn_id"]
    assert second.json()["metadata"]["replayed"] is True
    assert recall.json()["message"].count("- the door code is 4711") == 1  # stored once


async def test_a_key_in_the_bots_own_namespace_is_refused_and_nothing_is_kept(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        url = f"{bot.url}/api/message"
        body = {"message": "hi", "session_id": "s"}
        by_header = await client.post(
            url, json=body, headers={"Idempotency-Key": "schedule:1:1767600090.0"}
        )
        by_field = await client.post(url, json={**body, "message_id": "heartbeat:29459"})
        fine = await client.post(url, json=body, headers={"Idempotency-Key": "my-schedule:1"})
    for refused in (by_header, by_field):
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["type"] == "idempotency_key_reserved"
        assert "'schedule:' or 'heartbeat:'" in error["message"]
    assert fine.status_code == 200
    db = sqlite3.connect(workspace / "engram.db")
    assert db.execute("SELECT message_id FROM inbox").fetchall() == [("my-schedule:1",)]
    db.close()


async def test_streaming_sends_deltas_and_tool_events_before_done(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        await client.post(f"{bot.url}/api/message", json={"message": "remember Miso likes tuna"})
        events: list[tuple[str, str]] = []
        async with client.stream(
            "POST",
            f"{bot.url}/api/message",
            json={"message": "what do you remember about Miso"},
            headers={"Accept": "text/event-stream"},
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    events.append((line[7:], ""))
                elif line.startswith("data: "):
                    events[-1] = (events[-1][0], line[6:])
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["tool", "tool"]
    assert kinds[-1] == "done" and kinds.count("delta") > 3
    assert "Miso likes tuna" in events[-1][1]


async def test_a_key_repeated_while_in_progress_waits_for_the_same_answer(
    workspace: Path, client: httpx2.AsyncClient, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(Slow(0.5, Text("answered once")))
    config = local_config(
        workspace, default_model="claude-x", anthropic_api_key="k", anthropic_base_url=url
    )
    answers: list[httpx2.Response] = []
    async with serve_bot(config) as bot, trio.open_nursery() as nursery:

        async def send() -> None:
            answers.append(
                await client.post(
                    f"{bot.url}/api/message",
                    json={"message": "hi", "session_id": "s"},
                    headers={"Idempotency-Key": "same"},
                )
            )

        nursery.start_soon(send)
        await wait_until(lambda: fake.requests)
        nursery.start_soon(send)
    assert [a.json()["message"] for a in answers] == ["answered once", "answered once"]
    assert len({a.json()["metadata"]["turn_id"] for a in answers}) == 1
    assert len(fake.requests) == 1  # one turn, one model call


async def poll_until(
    client: httpx2.AsyncClient, url: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET `url` until its page satisfies `done`; fails after 30 s instead of hanging."""
    with trio.fail_after(30):
        while True:
            response = await client.get(url)
            assert response.status_code == 200, response.text
            page: dict[str, Any] = response.json()
            if done(page):
                return page
            await trio.sleep(0.05)


def _model(url: str, **settings: Any) -> dict[str, Any]:
    return {
        "default_model": "claude-x",
        "anthropic_api_key": "k",
        "anthropic_base_url": url,
        **settings,
    }


async def test_a_fired_schedule_is_read_by_polling_the_session(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    fake = FakeLLM()
    create = {"action": "create", "text": "stretch", "after_seconds": 0}
    fake.script(ToolUse(("schedule", create)), Text("I'll remind you."))
    async with (
        open_local(fake) as model,
        serve_bot(local_config(workspace, **_model(model))) as bot,
    ):
        asked = await client.post(
            f"{bot.url}/api/message", json={"message": "remind me", "session_id": "s"}
        )
        assert asked.json()["message"] == "I'll remind you."
        url = f"{bot.url}/api/sessions/s/messages"
        page = await poll_until(client, url, lambda p: len(p["messages"]) == 2)
        again = (await client.get(url, params={"after": page["next_after"]})).json()
        first = (await client.get(url, params={"limit": 1})).json()
        other = (await client.get(f"{bot.url}/api/sessions/other/messages")).json()
    mine, fired = page["messages"]
    assert (mine["source"], mine["text"], mine["reply"]["message"]) == (
        "client", "remind me", "I'll remind you."
    )  # fmt: skip
    assert (fired["source"], fired["text"]) == ("schedule", "[scheduled] stretch")
    assert fired["reply"]["message"] == "ok: [scheduled] stretch"
    assert fired["reply"]["session_id"] == "s" and fired["answered_at"] > 0
    assert page["session_id"] == "s" and page["waiting"] is False
    assert page["next_after"] == fired["id"] > mine["id"]
    assert again["messages"] == [] and again["next_after"] == fired["id"]
    assert [m["id"] for m in first["messages"]] == [mine["id"]]
    assert first["next_after"] == mine["id"]
    assert other["messages"] == [] and other["next_after"] == 0


async def test_a_poll_stops_before_a_message_still_being_answered(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    fake = FakeLLM()
    fake.script(Slow(1.0, Text("slow answer")))
    async with (
        open_local(fake) as model,
        serve_bot(local_config(workspace, **_model(model))) as bot,
    ):
        url = f"{bot.url}/api/sessions/s/messages"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    client.post,
                    f"{bot.url}/api/message",
                    json={"message": "take your time", "session_id": "s"},
                )
            )
            during = await poll_until(client, url, lambda p: p["waiting"])
        after = (await client.get(url)).json()
    assert during["messages"] == [] and during["next_after"] == 0
    assert [m["reply"]["message"] for m in after["messages"]] == ["slow answer"]
    assert after["waiting"] is False


async def test_a_heartbeat_with_nothing_to_say_is_skipped_by_the_poll(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    (workspace / "HEARTBEAT.md").write_text("Say hi if it is Monday.", encoding="utf-8")
    fake = FakeLLM()
    fake.script(Text("HEARTBEAT_OK"))  # the first heartbeat; the next ones are echoed
    async with open_local(fake) as model:
        config = local_config(workspace, **_model(model, heartbeat_minutes=0.01))
        async with serve_bot(config) as bot:
            url = f"{bot.url}/api/sessions/heartbeat/messages"
            page = await poll_until(client, url, lambda p: bool(p["messages"]))
    db = sqlite3.connect(workspace / "engram.db")
    silent = db.execute("SELECT min(id) FROM inbox WHERE message_id LIKE 'heartbeat:%'").fetchone()[
        0
    ]
    db.close()
    (said, *_) = page["messages"]
    assert said["source"] == "heartbeat" and said["id"] > silent
    assert said["reply"]["message"].startswith("ok: [heartbeat] Time to check in.")
    assert silent not in [m["id"] for m in page["messages"]]
    assert page["next_after"] >= said["id"]


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("?after=-1", "'after' must be a whole number, 0 or more"),
        ("?after=x", "'after' must be a whole number"),
        ("?limit=0", "'limit' must be a whole number, 1-200"),
        ("?limit=201", "'limit' must be a whole number, 1-200"),
        ("?since=3", "unknown query parameter 'since'"),
    ],
)
async def test_a_bad_poll_is_refused_naming_what_is_wrong(
    workspace: Path, client: httpx2.AsyncClient, query: str, problem: str
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        response = await client.get(f"{bot.url}/api/sessions/s/messages{query}")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"
    assert problem in response.json()["error"]["message"]


async def test_polling_a_session_takes_the_token_and_a_valid_session_id(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    config = local_config(workspace, botcore_api_token="s3cret-token")
    async with serve_bot(config) as bot:
        url = f"{bot.url}/api/sessions/s/messages"
        without = await client.get(url)
        wrong = await client.get(url, headers={"Authorization": "Bearer nope"})
        good = await client.get(url, headers={"Authorization": "Bearer s3cret-token"})
        bad_id = await client.get(
            f"{bot.url}/api/sessions/{'x' * 129}/messages",
            headers={"Authorization": "Bearer s3cret-token"},
        )
    assert without.status_code == wrong.status_code == 401
    assert good.status_code == 200 and good.json()["messages"] == []
    assert bad_id.status_code == 400 and "session id" in bad_id.json()["error"]["message"]
