"""kill -9 in the middle of a load, restart, retry every key: one answer and one turn each."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx2
import trio

from runtime.testing import FakeLLM, bot_process, open_local, wait_until

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
