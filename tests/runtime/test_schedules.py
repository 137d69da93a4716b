"""Scheduled messages and the heartbeat, on trio's virtual clock: a delay, a time, a cron
expression, list and cancel, a schedule due while the bot was down, a heartbeat that stays
silent when there is nothing to say."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from adapters import Inbound, KeyReserved, Reply
from adapters.base import WaitingResponder
from adapters.telegram import TelegramAddress
from runtime.botcore import Bot
from runtime.config import Config
from runtime.inbox import Inbox, InboxEntry
from runtime.lifecycle import Runtime
from runtime.llm import (
    ModelRequest,
    ModelResponse,
    OnText,
    StopReason,
    ToolCall,
    ToolResults,
    UserText,
)
from runtime.schedules import Cron, ScheduleError, Schedules
from runtime.testing import local_config

MONDAY_8AM = datetime(2026, 1, 5, 8, 0, tzinfo=UTC).timestamp()


class Model:
    """A model on the virtual clock: `SCHEDULE {json}` calls the schedule tool with those
    arguments; a heartbeat gets `heartbeat_answer`; anything else is echoed."""

    name = "scripted"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.heard: list[tuple[float, str]] = []
        self.heartbeat_answer = "HEARTBEAT_OK"

    async def complete(
        self, request: ModelRequest, *, on_text: OnText | None = None
    ) -> ModelResponse:
        last = request.messages[-1]
        if isinstance(last, ToolResults):
            return _text("; ".join(r.content for r in last.results))
        assert isinstance(last, UserText)
        self.heard.append((self.clock(), last.text))
        if last.text.startswith("SCHEDULE "):
            arguments = json.loads(last.text.removeprefix("SCHEDULE "))
            call = ToolCall(f"call-{len(self.heard)}", "schedule", arguments)
            return ModelResponse("", (call,), StopReason.TOOL_USE)
        if last.text.startswith("[heartbeat]"):
            return _text(self.heartbeat_answer)
        return _text(f"ok: {last.text}")

    async def reachable(self) -> str | None:
        return None

    async def aclose(self) -> None:
        pass


def _text(text: str) -> ModelResponse:
    return ModelResponse(text, (), StopReason.END_TURN)


class Channel:
    """The replies a channel's recovered responders get: fired schedules, heartbeats."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[str, Reply]](math.inf)
        self.addresses: list[dict[str, Any] | None] = []
        """The stored address of each message it was asked to answer after the fact."""

    def responder(self, entry: InboxEntry) -> WaitingResponder:
        channel = self
        self.addresses.append(entry.address)

        class Recorded(WaitingResponder):
            def reply(self, reply: Reply) -> None:
                channel.send.send_nowait((entry.session_id, reply))

        return Recorded()

    async def next(self, within: float) -> tuple[str, Reply]:
        with trio.fail_after(within):
            return await self.receive.receive()

    def empty(self) -> bool:
        return self.receive.statistics().current_buffer_used == 0


@pytest.fixture
async def clock(mock_clock: trio.testing.MockClock) -> Callable[[], float]:
    # Jumps only once nothing has run for a while of real time: the database's worker
    # threads are not "blocked" in trio's sense, and a jump while one writes would expire
    # the runtime's own deadlines.
    mock_clock.autojump_threshold = 0.02
    start = trio.current_time()
    return lambda: MONDAY_8AM + trio.current_time() - start


@asynccontextmanager
async def running(
    config: Config, model: Model, clock: Callable[[], float], channel: Channel
) -> AsyncIterator[Runtime]:
    async with await Bot.open(config.workspace, config.db_path) as bot:
        runtime = Runtime(config, bot, model, clock=clock)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: runtime.run(
                    responders={"test": channel.responder}, task_status=task_status
                )
            )
            yield runtime
            runtime.close()


async def say(runtime: Runtime, text: str, session: str = "s1") -> str:
    responder = WaitingResponder()
    await runtime.deliver(Inbound("test", session, text, responder))
    with trio.fail_after(60):
        return (await responder.wait()).message


def schedule(**arguments: Any) -> str:
    return "SCHEDULE " + json.dumps({"action": "create", **arguments})


async def fired_rows(runtime: Runtime) -> list[tuple[str, str]]:
    rows = await runtime.bot.db.run(
        lambda db: db.execute(
            "SELECT message_id, state FROM inbox WHERE message_id LIKE 'schedule:%' ORDER BY id"
        ).fetchall()
    )
    return [(str(m), str(s)) for m, s in rows]


async def test_a_message_scheduled_after_a_delay_is_answered_once_on_the_sessions_channel(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float]
) -> None:
    model, channel = Model(clock), Channel()
    async with running(local_config(workspace), model, clock, channel) as runtime:
        answer = await say(runtime, schedule(text="time to stretch", after_seconds=90))
        assert answer.startswith("scheduled #1 next 2026-01-05 08:01:30 UTC")
        session, reply = await channel.next(within=600)
        assert (session, reply.message) == ("s1", "ok: [scheduled] time to stretch")
        fired_at, text = model.heard[-1]
        assert text == "[scheduled] time to stretch"
        assert MONDAY_8AM + 90 <= fired_at < MONDAY_8AM + 95
        await trio.sleep(3600)
        assert channel.empty()
        assert await runtime.schedules.pending() == []
        assert [state for _, state in await fired_rows(runtime)] == ["replied"]


async def test_a_message_at_a_time_with_an_offset_fires_at_that_instant(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float]
) -> None:
    model, channel = Model(clock), Channel()
    async with running(local_config(workspace), model, clock, channel) as runtime:
        answer = await say(runtime, schedule(text="standup", at="2026-01-05T11:30:00+02:00"))
        assert "next 2026-01-05 09:30:00 UTC" in answer
        _, reply = await channel.next(within=3 * 3600)
        assert reply.message == "ok: [scheduled] standup"
        assert MONDAY_8AM + 5400 <= model.heard[-1][0] < MONDAY_8AM + 5405


async def test_a_cron_schedule_fires_at_each_time_it_names_and_stays(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float]
) -> None:
    model, channel = Model(clock), Channel()
    async with running(local_config(workspace), model, clock, channel) as runtime:
        answer = await say(runtime, schedule(text="plan the day", cron="0 9 * * mon,wed"))
        assert "next 2026-01-05 09:00:00 UTC (cron '0 9 * * mon,wed')" in answer
        times = []
        for _ in range(2):  # Monday, then Wednesday (not Tuesday)
            await channel.next(within=3 * 86400)
            times.append(model.heard[-1][0])
        days = [datetime.fromtimestamp(t, UTC) for t in times]
        assert [d.strftime("%a %H:%M") for d in days] == [
            "Mon 09:00", "Wed 09:00"
        ]  # fmt: skip
        (left,) = await runtime.schedules.pending()
        assert left.cron == "0 9 * * mon,wed"
        assert len(await fired_rows(runtime)) == 2


async def test_schedules_are_listed_and_cancelled_per_session(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float]
) -> None:
    model, channel = Model(clock), Channel()
    async with running(local_config(workspace), model, clock, channel) as runtime:
        await say(runtime, schedule(text="water the plants", after_seconds=600))
        await say(runtime, schedule(text="call mum", after_seconds=1200))
        await say(runtime, schedule(text="other session's", after_seconds=1800), session="s2")
        listed = await say(runtime, 'SCHEDULE {"action": "list"}')
        assert "water the plants" in listed and "call mum" in listed
        assert "other session's" not in listed
        refused = await say(runtime, 'SCHEDULE {"action": "cancel", "id": 3}')
        assert refused == "no schedule #3 here"  # s2's, not this session's
        cancelled = await say(runtime, 'SCHEDULE {"action": "cancel", "id": 1}')
        assert cancelled == "cancelled #1"
        replies = [await channel.next(within=3600) for _ in range(2)]
        assert [(s, r.message) for s, r in replies] == [
            ("s1", "ok: [scheduled] call mum"),
            ("s2", "ok: [scheduled] other session's"),
        ]
        await trio.sleep(3600)
        assert channel.empty()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"text": "x", "cron": "61 * * * *"}, "cron minute '61' is not in 0-59"),
        ({"text": "x", "cron": "0 0 31 2 *"}, "never fires"),
        ({"text": "x", "cron": "* * *"}, "needs 5 fields"),
        ({"text": "x", "at": "next tuesday"}, "not an ISO 8601 time"),
        ({"text": "x", "after_seconds": 5, "cron": "* * * * *"}, "exactly one of"),
        ({"text": "  ", "after_seconds": 5}, "empty"),
    ],
)
async def test_a_bad_schedule_is_refused_to_the_model_with_the_reason(
    workspace: Path,
    mock_clock: trio.testing.MockClock,
    clock: Callable[[], float],
    arguments: dict[str, Any],
    error: str,
) -> None:
    model, channel = Model(clock), Channel()
    async with running(local_config(workspace), model, clock, channel) as runtime:
        answer = await say(runtime, schedule(**arguments))
        assert answer.startswith("error: ") and error in answer, answer
        assert await runtime.schedules.pending() == []


async def test_a_schedule_due_while_the_bot_was_down_fires_once_at_start_then_never_again(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float]
) -> None:
    model, channel = Model(clock), Channel()
    config = local_config(workspace)
    async with running(config, model, clock, channel) as runtime:
        await say(runtime, schedule(text="missed while down", after_seconds=600))
        await say(runtime, schedule(text="hourly", cron="0 * * * *"))
        runtime.close()  # before either is due; the bot is down for a day
    await trio.sleep(86400)
    async with running(config, model, clock, channel):  # a start past their time
        replies = [await channel.next(within=30) for _ in range(2)]
    texts = sorted(reply.message for _, reply in replies)
    assert texts == ["ok: [scheduled] hourly", "ok: [scheduled] missed while down"]
    async with running(config, model, clock, channel) as runtime:
        await trio.sleep(60)
        assert channel.empty()  # the hourly one is not due again until the next hour
        assert [s.text for s in await runtime.schedules.pending()] == ["hourly"]
        assert len(await fired_rows(runtime)) == 2


@pytest.mark.parametrize("prefix", ["schedule", "heartbeat"])
async def test_a_client_cannot_take_the_key_of_a_firing_before_it_fires(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float], prefix: str
) -> None:
    model, channel = Model(clock), Channel()
    async with running(local_config(workspace), model, clock, channel) as runtime:
        await say(runtime, schedule(text="water the plants", after_seconds=60))
        (due,) = await runtime.schedules.pending()
        firing = f"schedule:{due.id}:{due.due_at!r}"
        key = firing if prefix == "schedule" else f"heartbeat:{int(due.due_at // 60)}"
        with pytest.raises(KeyReserved, match="the bot's own"):
            await runtime.deliver(Inbound("test", "s1", due.text, WaitingResponder(), key))
        _, reply = await channel.next(within=120)
        assert reply.message == "ok: [scheduled] water the plants"
        assert await fired_rows(runtime) == [(firing, "replied")]
        assert [text for _, text in model.heard].count("water the plants") == 0


@attrs.frozen
class ChatAddress:
    chat: int
    reply_to: int


async def test_a_schedule_set_answering_a_recovered_message_is_answered_at_its_address(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float]
) -> None:
    model, channel = Model(clock), Channel()
    config = local_config(workspace)
    # Accepted by a process that died before answering it: in the inbox, with its address.
    async with await Bot.open(config.workspace, config.db_path) as bot:
        text = schedule(text="call mum", after_seconds=60)
        asked = Inbound(
            "test", "chat-7", text, WaitingResponder(), "m-1", "ana", ChatAddress(7, 41)
        )
        await Inbox(bot.db).accept(asked)
    async with running(config, model, clock, channel) as runtime:
        session, set_reply = await channel.next(within=30)  # the recovered message, answered
        assert (session, set_reply.message[:12]) == ("chat-7", "scheduled #1")
        _, fired = await channel.next(within=120)
        assert fired.message == "ok: [scheduled] call mum"
        rows = await runtime.bot.db.run(
            lambda db: db.execute("SELECT address, sender FROM inbox ORDER BY id").fetchall()
        )
    assert channel.addresses == [{"chat": 7, "reply_to": 41}] * 2
    assert [json.loads(address) for address, _ in rows] == [{"chat": 7, "reply_to": 41}] * 2
    assert [sender for _, sender in rows] == ["ana", "ana"]


async def test_the_heartbeat_stays_silent_when_there_is_nothing_to_say(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float]
) -> None:
    (workspace / "HEARTBEAT.md").write_text("Remind the user of overdue tasks.\n")
    model, channel = Model(clock), Channel()
    config = local_config(workspace, heartbeat_minutes=30, heartbeat_session="test:me")
    async with running(config, model, clock, channel):
        await trio.sleep(2 * 3600 + 60)  # four heartbeats: 08:30, 09:00, 09:30, 10:00
        beats = [t for t, text in model.heard if text.startswith("[heartbeat]")]
        assert len(beats) == 4
        assert "Remind the user of overdue tasks." in model.heard[-1][1]
        assert channel.empty()
        model.heartbeat_answer = "Your tax return is overdue."
        session, reply = await channel.next(within=1800)
        assert (session, reply.message) == ("me", "Your tax return is overdue.")


async def test_without_heartbeat_instructions_the_model_is_not_asked(
    workspace: Path, mock_clock: trio.testing.MockClock, clock: Callable[[], float]
) -> None:
    model, channel = Model(clock), Channel()
    config = local_config(workspace, heartbeat_minutes=5, heartbeat_session="test:me")
    async with running(config, model, clock, channel):
        await trio.sleep(3600)
    assert model.heard == []
    assert channel.empty()


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", "2026-01-05 08:07", "2026-01-05 08:15"),
        ("0 9 * * mon-fri", "2026-01-09 09:00", "2026-01-12 09:00"),  # Friday → Monday
        ("30 18 1 * *", "2026-01-31 12:00", "2026-02-01 18:30"),
        ("0 0 29 feb *", "2026-01-01 00:00", "2028-02-29 00:00"),
        ("0 12 13 * fri", "2026-01-05 08:00", "2026-01-09 12:00"),  # 13th or a Friday
        ("5 4 * * 7", "2026-01-05 08:00", "2026-01-11 04:05"),  # 7 is Sunday
    ],
)
def test_cron_finds_the_next_time_after_a_given_one(
    expression: str, after: str, expected: str
) -> None:
    def epoch(text: str) -> float:
        return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()

    found = Cron.parse(expression).next_after(epoch(after))
    assert found == epoch(expected)


@pytest.mark.parametrize(
    "expression",
    ["* * * * * *", "60 * * * *", "* 24 * * *", "5-1 * * * *", "*/0 * * * *", "x * * * *"],
)
def test_cron_refuses_what_it_cannot_read(expression: str) -> None:
    with pytest.raises(ScheduleError):
        Cron.parse(expression)


# -- the store on both engines ----------------------------------------------------------------


async def test_the_schedule_store_fires_each_due_time_once_on_either_engine(
    workspace: Path, database: Path | str
) -> None:
    now = [MONDAY_8AM]
    async with await Bot.open(workspace, database) as bot:
        inbox, schedules = Inbox(bot.db), Schedules(bot.db, lambda: now[0])
        origin, _ = await inbox.accept(
            Inbound("test", "me", "remind me", WaitingResponder(), "m1", address=TelegramAddress(7))
        )
        once = await schedules.add(origin.id, "drink water", after=60)
        daily = await schedules.add(origin.id, "stand up", cron="0 9 * * *")
        gone = await schedules.add(origin.id, "never mind", after=30)
        assert await schedules.cancel(gone.id, "test", "me")
        assert [s.id for s in await schedules.pending("test", "me")] == [once.id, daily.id]
        assert await schedules.next_due() == MONDAY_8AM + 60
        assert await schedules.fire_due() == []  # nothing due yet
        now[0] = MONDAY_8AM + 3600 + 1  # past both
        fired = await schedules.fire_due()
        assert [e.text for e in fired] == ["[scheduled] drink water", "[scheduled] stand up"]
        assert origin.address is not None and all(e.address == origin.address for e in fired)
        assert await schedules.fire_due() == []  # never twice for one due time
        (left,) = await schedules.pending()
        assert left.id == daily.id and left.due_at == MONDAY_8AM + 86_400 + 3600
        assert [e.id for e in await inbox.unfinished()] == [origin.id, *(e.id for e in fired)]
