"""`Runtime.deliver` when its caller goes away: what was accepted is still answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from adapters import Inbound, KeyReused
from adapters.base import WaitingResponder
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
