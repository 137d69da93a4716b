"""kill -9 in the middle of a load, restart, retry every key: one answer and one turn each;
kill -9 around a schedule's firing: it fires and is answered exactly once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx2
import trio

from runtime.testing import FakeLLM, Slow, Text, ToolUse, bot_process, open_local, wait_until

SESSIONS, MESSAGES = 6, 5


def key(session: int, message: int) -> str:
    return f"k-{session}-{message}"


async def test_kill_9_mid_load_then_retry_every_key_answers_each_exactly_once(
    workspace: Path,
) -> None:
    fake = FakeLLM(delay=0.05)
    async with open_local(fake) as url:
        env = {"DEFAULT_MODEL": "claude-x", "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": url}
        before: dict[str, dict[str, object]] = {}

        async def send(client: httpx2.AsyncClient, base: str, s: int, m: int) -> httpx2.Response:
            return await client.post(
                f"{base}/api/message",
                json={"message": f"s{s} m{m}", "session_id": f"s{s}"},
                headers={"Idempotency-Key": key(s, m)},
            )

        async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:

            async def session(s: int) -> None:
                for m in range(MESSAGES):
                    try:
                        response = await send(client, bot.url, s, m)
                    except httpx2.TransportError:
                        return  # the runtime died under us
                    before[key(s, m)] = response.json()

            async with trio.open_nursery() as nursery:
                for s in range(SESSIONS):
                    nursery.start_soon(session, s)
                await wait_until(lambda: len(before) >= 8)
                bot.kill()
            assert await bot.wait() == -9

        answered_before = dict(before)
        assert 8 <= len(answered_before) < SESSIONS * MESSAGES

        after: dict[str, dict[str, object]] = {}
        async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
            for s in range(SESSIONS):
                for m in range(MESSAGES):
                    response = await send(client, bot.url, s, m)
                    assert response.status_code == 200, response.text
                    after[key(s, m)] = response.json()
            bot.terminate()
            assert await bot.wait() == 0

    for k, reply in answered_before.items():
        assert after[k]["message"] == reply["message"]
        assert after[k]["metadata"]["turn_id"] == reply["metadata"]["turn_id"]  # type: ignore[index]
        assert after[k]["metadata"]["replayed"] is True  # type: ignore[index]
    for s in range(SESSIONS):
        for m in range(MESSAGES):
            assert after[key(s, m)]["message"] == f"ok: s{s} m{m}"

    db = sqlite3.connect(workspace / "engram.db")
    inbox = db.execute(
        "SELECT message_id, state, count(*) FROM inbox GROUP BY message_id"
    ).fetchall()
    assert len(inbox) == SESSIONS * MESSAGES
    assert all(state == "replied" and count == 1 for _, state, count in inbox)
    turns = db.execute(
        "SELECT content, count(DISTINCT turn_id) FROM history WHERE role = 'user' GROUP BY content"
    ).fetchall()
    assert len(turns) == SESSIONS * MESSAGES
    assert all(count == 1 for _, count in turns), turns
    # Each session's history is in the order its messages were sent.
    for s in range(SESSIONS):
        stored = [
            row[0]
            for row in db.execute(
                "SELECT content FROM history WHERE session_key = ? AND role = 'user' ORDER BY id",
                (f"http:s{s}",),
            )
        ]
        assert stored == [f"s{s} m{m}" for m in range(MESSAGES)]
    db.close()
    await trio.lowlevel.checkpoint()


SCHEDULED = "[scheduled] stretch"


def scheduled_asks(fake: FakeLLM) -> int:
    """Model requests whose newest message is the fired schedule: turns it started."""
    count = 0
    for request in fake.requests:
        last = request.body["messages"][-1]
        content = last["content"]
        texts = [content] if isinstance(content, str) else [c.get("text") for c in content]
        count += last["role"] == "user" and SCHEDULED in texts
    return count


def schedule_state(workspace: Path) -> tuple[list[tuple[float]], list[tuple[str, str]]]:
    """(the schedules left, the fired schedules' inbox rows as (message id, state))."""
    db = sqlite3.connect(workspace / "engram.db")
    try:
        left = db.execute("SELECT due_at FROM schedules").fetchall()
        fired = db.execute(
            "SELECT message_id, state FROM inbox WHERE message_id LIKE 'schedule:%'"
        ).fetchall()
        return left, fired
    finally:
        db.close()


async def answered_schedules(client: httpx2.AsyncClient, base: str) -> list[dict[str, object]]:
    """The fired schedules' answers an HTTP client polls from session `s`, once one is there."""
    with trio.fail_after(30):
        while True:
            page = (await client.get(f"{base}/api/sessions/s/messages")).json()
            fired = [m for m in page["messages"] if m["source"] == "schedule"]
            if fired:
                return fired
            await trio.sleep(0.05)


async def test_a_schedule_set_then_kill_9_and_a_restart_past_its_time_fires_exactly_once(
    workspace: Path,
) -> None:
    fake = FakeLLM()
    create = {"action": "create", "text": "stretch", "after_seconds": 6}
    fake.script(ToolUse(("schedule", create)), Text("I'll remind you."))
    async with open_local(fake) as url:
        env = {"DEFAULT_MODEL": "claude-x", "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": url}
        async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
            asked = await client.post(
                f"{bot.url}/api/message", json={"message": "remind me", "session_id": "s"}
            )
            bot.kill()
            assert await bot.wait() == -9
        assert asked.json()["message"] == "I'll remind you."
        (due,), fired = schedule_state(workspace)
        assert fired == [], "the schedule fired before the kill; the test proves nothing"
        await trio.sleep_until(trio.current_time() + max(0.0, due[0] - time.time()) + 0.5)

        async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
            (answer,) = await answered_schedules(client, bot.url)
            await trio.sleep(1)  # room for a second firing, were there one
            page = (await client.get(f"{bot.url}/api/sessions/s/messages")).json()
            bot.terminate()
            assert await bot.wait() == 0

    assert answer["text"] == SCHEDULED
    assert answer["reply"]["message"] == f"ok: {SCHEDULED}"  # type: ignore[index]
    assert [m["source"] for m in page["messages"]] == ["client", "schedule"]
    left, fired = schedule_state(workspace)
    assert left == [] and [state for _, state in fired] == ["replied"]
    assert scheduled_asks(fake) == 1


async def test_kill_9_while_a_fired_schedule_is_answered_answers_it_once_after_restart(
    workspace: Path,
) -> None:
    fake = FakeLLM()
    create = {"action": "create", "text": "stretch", "after_seconds": 0}
    # The fired turn's model call hangs, so the process dies with the inbox row written
    # and the schedule gone, but no answer.
    fake.script(ToolUse(("schedule", create)), Text("I'll remind you."), Slow(60, Text("late")))
    async with open_local(fake) as url:
        env = {"DEFAULT_MODEL": "claude-x", "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": url}
        async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
            await client.post(
                f"{bot.url}/api/message", json={"message": "remind me", "session_id": "s"}
            )
            await wait_until(lambda: scheduled_asks(fake) == 1, within=30)
            bot.kill()
            assert await bot.wait() == -9
        left, fired = schedule_state(workspace)
        assert left == [] and [state for _, state in fired] in (["received"], ["processing"])

        async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
            (answer,) = await answered_schedules(client, bot.url)
            bot.terminate()
            assert await bot.wait() == 0
        async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
            other = await client.post(
                f"{bot.url}/api/message", json={"message": "hello", "session_id": "t"}
            )
            assert other.json()["message"] == "ok: hello"
            page = (await client.get(f"{bot.url}/api/sessions/s/messages")).json()
            bot.terminate()
            assert await bot.wait() == 0

    assert answer["reply"]["message"] == f"ok: {SCHEDULED}"  # type: ignore[index]
    assert [m["source"] for m in page["messages"]] == ["client", "schedule"]
    left, fired = schedule_state(workspace)
    assert left == [] and [state for _, state in fired] == ["replied"]
    # Asked twice (the turn the kill cut off, the one after the restart), answered once.
    assert scheduled_asks(fake) == 2
    db = sqlite3.connect(workspace / "engram.db")
    turns = db.execute("SELECT count(*) FROM history WHERE content = ?", (SCHEDULED,)).fetchone()
    db.close()
    assert turns == (1,)
