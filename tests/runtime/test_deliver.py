"""`Runtime.deliver` when its caller goes away: what was accepted is still answered; the
outbox of answers a channel sends itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from adapters import Inbound, KeyReused, Reply
from adapters.base import WaitingResponder
from runtime.botcore import Bot
from runtime.inbox import Inbox, InboxEntry
from runtime.testing import local_config, open_runtime


def _message(text: str, responder: WaitingResponder) -> Inbound:
    return Inbound("http", "s", text, responder, message_id="key-1")


async def test_a_caller_cancelled_mid_accept_leaves_a_message_a_retry_is_answered(
    workspace: Path,
    storage: dict[str, Any],
) -> None:
    async with open_runtime(local_config(workspace, **storage)) as runtime:
        with trio.CancelScope() as caller:
            caller.cancel()  # the client disconnects while the inbox write is under way
            await runtime.deliver(_message("remember the code is 4711", WaitingResponder()))
        retry = WaitingResponder()
        with trio.fail_after(10):
            accepted = await runtime.deliver(_message("remember the code is 4711", retry))
            reply = await retry.wait()
        unfinished = await runtime.inbox.unfinished()
    assert accepted.repeat
    assert reply.error is None and reply.message == "Got it, I'll remember that."
    assert unfinished == []


async def test_a_key_reused_for_another_text_is_refused_by_the_inbox(workspace: Path, storage: dict[str, Any]) -> None:
    async with open_runtime(local_config(workspace, **storage)) as runtime:
        first = WaitingResponder()
        await runtime.deliver(_message("hello", first))
        await first.wait()
        with pytest.raises(KeyReused, match=r"'key-1'.*different message"):
            await runtime.deliver(_message("goodbye", WaitingResponder()))


async def test_an_unconfirmed_answer_is_taken_from_the_outbox_once_until_confirmed(
    workspace: Path, database: Path | str
) -> None:
    async with await Bot.open(workspace, database) as one, await Bot.open(
        workspace, database
    ) as other:
        first, second = Inbox(one.db, outbox_grace=0.5), Inbox(other.db, outbox_grace=0.5)
        entry, _ = await first.accept(_message("remember the code is 4711", WaitingResponder()))
        reply = Reply("Got it, I'll remember that.", "s", "t1")
        await first.complete(entry.id, "http:s", [("user", entry.text)], {}, reply, outbox=True)
        assert await second.due_answers() == []  # its sender has the grace time
        await trio.sleep(0.6)
        async with trio.open_nursery() as nursery:  # two replicas look at once
            taken: list[list[tuple[InboxEntry, int]]] = []

            async def look(inbox: Inbox) -> None:
                taken.append(await inbox.due_answers())

            nursery.start_soon(look, first)
            nursery.start_soon(look, second)
        assert sorted(len(t) for t in taken) == [0, 1]  # one of them sends it again
        (again, attempts), = [pair for t in taken for pair in t]
        assert again.id == entry.id and again.reply == reply and attempts == 0
        await second.sent(entry.id, True)
        await trio.sleep(0.6)
        assert await first.due_answers() == []  # confirmed: never again
