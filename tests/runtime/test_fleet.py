"""Replicas on one PostgreSQL database: session leases, fencing, answers across replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from adapters import Inbound, Reply, TextDelta
from adapters.base import StreamingResponder, WaitingResponder
from runtime.config import Config
from runtime.leases import LeaseLost, SessionLeases
from runtime.llm.select import open_model
from runtime.testing import (
    FakeLLM,
    FakeTelegram,
    Slow,
    Text,
    bot_process,
    local_config,
    make_workspace,
    open_runtime,
    wait_until,
)
from runtime.testing.postgres import drop_schema, new_schema


@pytest.fixture
async def shared(workspace: Path, postgres_server: str) -> AsyncIterator[Config]:
    url = new_schema(postgres_server)
    yield local_config(workspace, database_url=url, lease_seconds=2.0)
    drop_schema(url)


async def ask(runtime: object, session: str, text: str, key: str) -> Reply:
    responder = WaitingResponder()
    await runtime.deliver(Inbound("http", session, text, responder, message_id=key))  # type: ignore[attr-defined]
    with trio.fail_after(15):
        return await responder.wait()


async def test_a_message_taken_by_one_replica_is_answered_by_the_session_owner(
    shared: Config,
) -> None:
    async with open_runtime(shared) as a, open_runtime(shared) as b:
        first = await ask(b, "s", "hello", "1")
        # `b` holds the session now: `a` accepts the next message, `b` answers it.
        second = await ask(a, "s", "remember the code is 4711", "2")
        assert a.registry.statistics().spawned == 0
        assert b.leases is not None and b.leases.held("http:s") is not None
        history = await b.bot.history.recent("http:s")
    assert first.error is None and second.message == "Got it, I'll remember that."
    assert [entry.content for entry in history if entry.role == "user"] == [
        "hello",
        "remember the code is 4711",
    ]


async def test_a_repeated_key_on_another_replica_joins_the_answer(shared: Config) -> None:
    async with open_runtime(shared) as a, open_runtime(shared) as b:
        reply = await ask(a, "s", "remember the code is 4711", "k")
        again = await ask(b, "s", "remember the code is 4711", "k")
    assert again.replayed and again.message == reply.message


async def test_a_lapsed_lease_is_taken_with_a_new_epoch_and_the_old_write_is_refused(
    shared: Config,
) -> None:
    async with open_runtime(shared) as a:
        first = SessionLeases(a.bot.db, owner="old", seconds=1.0)
        second = SessionLeases(a.bot.db, owner="new", seconds=1.0)
        held = await first.acquire("http:s")
        assert held is not None and await second.acquire("http:s") is None
        await trio.sleep(1.2)  # `first` was paused past its lease: nothing renewed it
        taken = await second.acquire("http:s")
        assert taken is not None and taken.epoch == held.epoch + 1
        entry, _ = await a.inbox.accept(Inbound("http", "s", "hi", WaitingResponder(), "m"))
        late = Reply(message="late", session_id="s", turn_id="t-old")
        with pytest.raises(LeaseLost):
            await a.inbox.complete(entry.id, "http:s", [("user", "hi")], {}, late, lease=held)
        assert await a.bot.history.recent("http:s") == []  # nothing of the old turn was kept
        await a.inbox.complete(
            entry.id, "http:s", [("user", "hi")], {}, Reply("on time", "s", "t-new"), lease=taken
        )
        (answered,) = await a.inbox.answers_to([entry.id])
    assert answered.reply is not None and answered.reply.message == "on time"


async def test_a_replica_that_stops_renewing_stops_its_turns_before_the_lease_lapses(
    shared: Config,
) -> None:
    async with open_runtime(shared) as a:
        leases = SessionLeases(a.bot.db, owner="paused", seconds=2.0, margin=0.5)
        lease = await leases.acquire("http:s")
        assert lease is not None
        started = trio.current_time()
        with lease.scope():
            await trio.sleep(10)  # a turn that would outlive the lease
        stopped = trio.current_time() - started
        assert stopped < 2.0  # before the lease can lapse on the database's clock


# -- Telegram: one poller per token across replicas -----------------------------------------


async def test_two_replicas_on_one_token_poll_from_one_and_the_other_takes_over_a_kill(
    tmp_path: Path, postgres_server: str, telegram: tuple[FakeTelegram, str]
) -> None:
    fake, tg_url = telegram
    url = new_schema(postgres_server)
    env = {
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE_URL": tg_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "DATABASE_URL": url,
        "LEASE_SECONDS": "2",
    }
    chats = iter(range(100, 200))
    asked: list[int] = []

    async def ask_in_new_chats(count: int) -> None:
        for _ in range(count):
            chat = next(chats)
            fake.text(chat, f"hello from {chat}")
            asked.append(chat)

    try:
        async with (
            bot_process(make_workspace(tmp_path / "a"), env) as a,
            bot_process(make_workspace(tmp_path / "b"), env) as b,
        ):
            await ask_in_new_chats(5)
            await wait_until(lambda: all(fake.sent_to(chat) for chat in asked), within=20)
            assert fake.conflicts == 0  # one of them polls, the other waits for its lease
            leader, other = (a, b) if "done by this replica now" in a.log else (b, a)
            assert "done by this replica now" not in other.log
            leader.kill()
            assert await leader.wait() == -9
            await ask_in_new_chats(5)  # sent while nobody polls: Telegram keeps them
            await wait_until(lambda: all(fake.sent_to(chat) for chat in asked), within=20)
            await trio.sleep(0.5)
            assert "done by this replica now" in other.log
    finally:
        drop_schema(url)
    # Every update answered exactly once, in its chat, whoever polled it.
    assert [len(fake.sent_to(chat)) for chat in asked] == [1] * 10
    # The killed poller's last long poll may still be open at the fake when the other's
    # first one arrives (a dead client's request, ended with 409 that nobody reads).
    assert fake.conflicts <= 1


async def test_a_stream_taken_by_a_replica_that_does_not_hold_the_session_gets_the_whole_answer(
    workspace: Path, postgres_server: str, fake_llm: tuple[FakeLLM, str]
) -> None:
    model, llm_url = fake_llm
    url = new_schema(postgres_server)
    config = local_config(
        workspace,
        database_url=url,
        default_model="claude-x",
        anthropic_api_key="k",
        anthropic_base_url=llm_url,
    )
    answer = "one two three four five six seven eight nine ten " * 20
    model.script(Text("hello"), Slow(0.5, Text(answer)))
    try:
        async with (
            open_runtime(config, open_model(config)) as a,
            open_runtime(config, open_model(config)) as b,
        ):
            await ask(b, "s", "hi", "1")  # `b` holds the session
            stream = StreamingResponder()
            await a.deliver(Inbound("http", "s", "count to ten", stream, message_id="2"))
            items = [item async for item in stream.items(15)]
    finally:
        drop_schema(url)
    *progress, reply = items
    assert isinstance(reply, Reply) and reply.message.strip() == answer.strip()
    assert progress and all(isinstance(item, TextDelta) for item in progress)
    deltas = [item.text for item in progress if isinstance(item, TextDelta)]
    assert "".join(deltas) == reply.message  # put together, the stream is the answer
