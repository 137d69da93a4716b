"""The runtime's promises, driven through `deliver` without a channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from actors import RestartPolicy
from adapters import Inbound, Reply, Unavailable
from adapters.base import WaitingResponder
from runtime.botcore import Bot
from runtime.inbox import Inbox
from runtime.llm.offline import OfflineModel
from runtime.testing import (
    CrashOn,
    FakeLLM,
    Slow,
    Text,
    local_config,
    open_runtime,
    serve_bot,
    wait_until,
)

QUICK = RestartPolicy(max_restarts=2, within=30, backoff_min=0.01, backoff_max=0.05)


async def ask(
    runtime: object, text: str, session: str = "s", message_id: str | None = None
) -> Reply:
    responder = WaitingResponder()
    await runtime.deliver(Inbound("test", session, text, responder, message_id))  # type: ignore[attr-defined]
    with trio.fail_after(10):
        return await responder.wait()


async def test_a_failing_tool_is_reported_to_the_model_and_the_session_goes_on(
    workspace: Path,
) -> None:
    async with open_runtime(local_config(workspace)) as runtime:
        failed = await ask(runtime, "read does/not/exist.txt")
        after = await ask(runtime, "remember the session still works")
    assert failed.error is None
    assert failed.message.startswith("The filesystem_read tool failed: no such file")
    assert failed.tools_used == 1
    assert after.message == "Got it, I'll remember that."


async def test_a_crashing_turn_is_retried_by_a_restarted_actor(workspace: Path) -> None:
    model = CrashOn(OfflineModel(), "flaky", times=1)
    async with open_runtime(local_config(workspace), model, policy=QUICK) as runtime:
        reply = await ask(runtime, "flaky hello")
    assert reply.error is None and "TestBot" in reply.message
    assert runtime.registry.statistics().restarts == 1


async def test_a_poison_message_is_dead_lettered_and_the_session_answers_the_next(
    workspace: Path,
) -> None:
    model = CrashOn(OfflineModel(), "poison")
    async with open_runtime(local_config(workspace), model, policy=QUICK) as runtime:
        poisoned = await ask(runtime, "poison pill", message_id="m1")
        healthy = await ask(runtime, "hello again")
        dead = await runtime.inbox.dead_letters()
        repeat = await ask(runtime, "poison pill", message_id="m1")
    assert model.crashes == 3  # the first attempt and two restarts
    assert poisoned.error is not None and poisoned.error.kind == "crashed"
    assert "set aside" in poisoned.message
    assert healthy.error is None
    assert [d.text for d in dead] == ["poison pill"]
    assert repeat.replayed and repeat.error is not None  # not tried a fourth time
    assert model.crashes == 3


async def test_a_message_that_crashes_its_actor_during_shutdown_is_still_dead_lettered(
    workspace: Path,
) -> None:
    model = CrashOn(OfflineModel(), "poison")
    async with open_runtime(local_config(workspace), model, policy=QUICK) as runtime:
        responder = WaitingResponder()
        await runtime.deliver(Inbound("test", "s", "poison pill", responder, "m1"))
        await wait_until(lambda: model.crashes >= 1)
        runtime.close()  # the restarts and the last crash happen during the grace period
        with trio.fail_after(10):
            reply = await responder.wait()
    # `open_runtime` returned: nothing escaped `Runtime.run`.
    assert reply.error is not None and reply.error.kind == "crashed"
    assert model.crashes == 3
    async with await Bot.open(workspace) as bot:
        dead = await Inbox(bot.db).dead_letters()
    assert [d.text for d in dead] == ["poison pill"]


async def test_a_slow_model_fails_the_turn_with_a_timeout_reply(
    workspace: Path, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(Slow(5, Text("too late")))
    config = local_config(
        workspace,
        default_model="anthropic:fake",
        anthropic_api_key="k",
        anthropic_base_url=url,
        turn_timeout_seconds=0.5,
    )
    from runtime.llm.select import open_model

    async with open_runtime(config, open_model(config)) as runtime:
        reply = await ask(runtime, "hello")
        history = await runtime.bot.history.recent("test:s")
    assert reply.error is not None and reply.error.kind == "timeout"
    assert "longer than 0.5s" in reply.message
    assert reply.states[-1] == "failed"
    assert history == []


async def test_unanswered_messages_are_handled_after_a_restart_exactly_once(
    workspace: Path,
) -> None:
    config = local_config(workspace)
    # A previous process accepted two messages and died before answering them.
    async with await Bot.open(workspace) as bot:
        inbox = Inbox(bot.db)
        for n in (1, 2):
            await inbox.accept(
                Inbound("test", "s", f"remember fact {n}", WaitingResponder(), f"m{n}")
            )
    async with open_runtime(config) as runtime:
        # Per-session order: this is answered only after the two recovered messages.
        await ask(runtime, "hello")
        assert await runtime.inbox.unfinished() == []
        replay = await ask(runtime, "remember fact 1", message_id="m1")
        turns = await runtime.bot.history.turns("test:s")
        recent = await runtime.bot.history.recent("test:s")
    assert replay.replayed and replay.message == "Got it, I'll remember that."
    assert turns == 3
    assert [e.content for e in recent if e.role == "user"] == [
        "remember fact 1",
        "remember fact 2",
        "hello",
    ]


async def test_recovery_of_more_than_a_mailbox_holds_does_not_hold_up_the_start(
    workspace: Path, fake_llm: tuple[FakeLLM, str], client: httpx2.AsyncClient
) -> None:
    fake, url = fake_llm
    fake.script(Slow(60, Text("the first recovered answer, very late")))
    # A previous process accepted five messages of one session and died.
    async with await Bot.open(workspace) as bot:
        inbox = Inbox(bot.db)
        for n in range(5):
            await inbox.accept(Inbound("http", "s", f"message {n}", WaitingResponder(), f"m{n}"))
    config = local_config(
        workspace,
        default_model="anthropic:fake",
        anthropic_api_key="k",
        anthropic_base_url=url,
        mailbox_size=1,
        shutdown_grace_seconds=0.5,
    )
    with trio.fail_after(10):  # before: the start waited for room in the session's mailbox
        async with serve_bot(config) as bot:
            await wait_until(lambda: fake.requests)
            health = await client.get(f"{bot.url}/healthz")
            other = await client.post(
                f"{bot.url}/api/message", json={"message": "hello", "session_id": "t"}
            )
            # The recovered session keeps its order: a new message waits its turn.
            same = await client.post(
                f"{bot.url}/api/message", json={"message": "hello", "session_id": "s"}
            )
    assert health.status_code == 200
    assert other.status_code == 200 and other.json()["message"].startswith("ok: hello")
    assert same.status_code == 429 and "Retry-After" in same.headers
    async with await Bot.open(workspace) as bot:
        left = await Inbox(bot.db).unfinished()
    assert [e.text for e in left] == [f"message {n}" for n in range(5)]  # kept for next time


async def test_recovered_messages_beyond_the_mailbox_are_answered_in_order(
    workspace: Path,
) -> None:
    async with await Bot.open(workspace) as bot:
        inbox = Inbox(bot.db)
        for n in range(6):
            session = "s" if n % 3 else "t"
            await inbox.accept(Inbound("test", session, f"remember fact {n}", WaitingResponder()))
    async with open_runtime(local_config(workspace, mailbox_size=1)) as runtime:
        with trio.fail_after(10):
            while left := await runtime.inbox.unfinished():  # noqa: ASYNC110 - a database poll
                await trio.sleep(0.01)
        after = await ask(runtime, "hello")  # once caught up, the session takes new ones
        s = await runtime.bot.history.recent("test:s")
        t = await runtime.bot.history.recent("test:t")
    assert after.error is None and left == []
    assert [e.content for e in s if e.role == "user"] == [
        "remember fact 1",
        "remember fact 2",
        "remember fact 4",
        "remember fact 5",
        "hello",
    ]
    assert [e.content for e in t if e.role == "user"] == ["remember fact 0", "remember fact 3"]


async def test_closing_finishes_the_turn_in_flight_and_refuses_new_messages(
    workspace: Path, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(Slow(0.5, Text("finished in time")))
    config = local_config(
        workspace, default_model="anthropic:fake", anthropic_api_key="k", anthropic_base_url=url
    )
    from runtime.llm.select import open_model

    async with open_runtime(config, open_model(config)) as runtime:
        in_flight, queued = WaitingResponder(), WaitingResponder()
        await runtime.deliver(Inbound("test", "s", "first", in_flight))
        await runtime.deliver(Inbound("test", "s", "second", queued))
        await wait_until(lambda: fake.requests)
        runtime.close()
        with pytest.raises(Unavailable):
            await runtime.deliver(Inbound("test", "s", "third", WaitingResponder()))
        first, second = await in_flight.wait(), await queued.wait()
        left = await runtime.inbox.unfinished()
    assert first.message == "finished in time"
    assert second.error is not None and second.error.kind == "stopped"
    assert [e.text for e in left] == ["second"]  # kept for the next start


async def test_a_reset_runs_after_the_turn_before_it_or_says_it_did_not(
    workspace: Path, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(Slow(0.3, Text("one")), Slow(0.3, Text("two")), Slow(1, Text("three")))
    config = local_config(
        workspace, default_model="anthropic:fake", anthropic_api_key="k", anthropic_base_url=url
    )
    from runtime.llm.select import open_model

    async with open_runtime(config, open_model(config)) as runtime:
        resets: list[bool] = []
        await ask(runtime, "first")
        second = WaitingResponder()
        await runtime.deliver(Inbound("test", "s", "second", second))
        await runtime.reset("test:s", resets.append)  # behind "second", which is in flight
        await second.wait()
        await wait_until(lambda: resets)
        forgotten = await runtime.bot.history.turns("test:s")

        third = WaitingResponder()
        await runtime.deliver(Inbound("test", "s", "third", third))
        await wait_until(lambda: len(fake.requests) == 3)
        await runtime.reset("test:s", resets.append)
        runtime.close()  # the reset never gets its turn
        await third.wait()
    assert forgotten == 0  # "second" stored before the reset ran, and was forgotten with it
    assert resets == [True, False]


async def test_episodes_already_in_the_history_are_not_recalled_twice(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:

        async def say(text: str, session: str) -> dict[str, Any]:
            response = await client.post(
                f"{bot.url}/api/message", json={"message": text, "session_id": session}
            )
            body: dict[str, Any] = response.json()
            return body

        await say("remember my cat is called Miso", "a")
        same = await say("recall cat Miso", "a")
        other = await say("recall cat Miso", "b")
    # Session a has that exchange as history: only the fact is recalled. Session b does
    # not: the fact and the episodes of a's two exchanges (two different exchanges, even
    # if their words overlap: the second repeats "Miso" where the first said it once).
    assert same["metadata"]["memories_recalled"] == 1
    assert other["metadata"]["memories_recalled"] == 3


async def test_the_lifecycle_moves_forward_only_and_says_why_it_refuses(workspace: Path) -> None:
    from runtime.lifecycle import Lifecycle

    async with open_runtime(local_config(workspace)) as runtime:
        assert runtime.state is Lifecycle.ACCEPTING
        with pytest.raises(
            RuntimeError, match="a runtime that is accepting cannot become starting"
        ):
            await runtime.run()
    assert runtime.state is Lifecycle.CLOSED
    runtime.close()  # closing again does nothing
    with pytest.raises(Unavailable):
        await runtime.deliver(Inbound("http", "s", "hi", WaitingResponder()))
