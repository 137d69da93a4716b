"""A turn's progress (streamed text, tool calls) passed from the replica that runs it to the
replica whose client waits for it (an SSE stream), by PostgreSQL notifications.

The owner of a session does not know whether anyone waits elsewhere: it publishes the
progress of the messages it took up from the shared inbox (their client, if any, is on
another replica). Progress is gathered for `FLUSH_EVERY` seconds and sent as one
notification (several when long), one after the other, so they arrive in order. A lost
notification costs the waiting client some deltas, never the answer: that is read from the
inbox.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import attrs
import cattrs
import trio

from adapters import Progress, TextDelta, TextDiscarded, ToolProgress
from runtime.botcore import Connection, Database

log = logging.getLogger("runtime.relay")

NOTIFY_PROGRESS = "botcore_progress"
FLUSH_EVERY = 0.1
_PAYLOAD = 7000
"""Bytes of progress per notification (PostgreSQL allows 8000)."""
_PIECE = 1000
"""Characters of text per event: at most 6 bytes each in JSON (an escape), so one fits."""

_KINDS: dict[str, type[Any]] = {
    "delta": TextDelta,
    "discard": TextDiscarded,
    "tool": ToolProgress,
}
_NAMES = {kind: name for name, kind in _KINDS.items()}
_converter = cattrs.Converter()


def encode(entry_id: int, events: Sequence[Progress]) -> list[str]:
    """Notification payloads for the progress of message `entry_id`: deltas of text joined,
    each payload under `_PAYLOAD` characters."""
    merged: list[Progress] = []
    for event in events:
        if merged and isinstance(event, TextDelta) and isinstance(merged[-1], TextDelta):
            merged[-1] = TextDelta(merged[-1].text + event.text)
        else:
            merged.append(event)
    pieces: list[Progress] = []
    for event in merged:
        if isinstance(event, TextDelta | TextDiscarded) and len(event.text) > _PIECE:
            cut = [event.text[i : i + _PIECE] for i in range(0, len(event.text), _PIECE)]
            if isinstance(event, TextDelta):
                pieces += [TextDelta(text) for text in cut]
            else:  # withdrawn from the end: the last piece first
                pieces += [TextDiscarded(text) for text in reversed(cut)]
        else:
            pieces.append(event)
    payloads: list[str] = []
    batch: list[list[Any]] = []
    size = 0
    for event in pieces:
        item = [_NAMES[type(event)], _converter.unstructure(event)]
        length = len(json.dumps(item, ensure_ascii=False).encode())
        if batch and size + length > _PAYLOAD:
            payloads.append(json.dumps({"id": entry_id, "events": batch}, ensure_ascii=False))
            batch, size = [], 0
        batch.append(item)
        size += length
    if batch:
        payloads.append(json.dumps({"id": entry_id, "events": batch}, ensure_ascii=False))
    return payloads


def decode(payload: str) -> tuple[int, list[Progress]] | None:
    """The message id and progress of a notification; None if it is not one of ours."""
    try:
        data = json.loads(payload)
        events = [_converter.structure(body, _KINDS[name]) for name, body in data["events"]]
        return int(data["id"]), events
    except (ValueError, KeyError, TypeError, cattrs.BaseValidationError):
        return None


def _notify(payloads: list[str], db: Connection) -> None:
    for payload in payloads:
        db.execute("SELECT pg_notify(?, ?)", (NOTIFY_PROGRESS, payload))


@attrs.define(eq=False)
class _Pending:
    events: list[Progress] = attrs.field(factory=list)
    flushing: bool = False


class ProgressRelay:
    """Publishes the progress of the messages this replica runs for clients elsewhere."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: dict[int, _Pending] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep(math.inf)

    def publish(self, entry_id: int, event: Progress) -> None:
        """Queue one event of message `entry_id`; sent within `FLUSH_EVERY` seconds."""
        if self._nursery is None:
            return
        pending = self._pending.setdefault(entry_id, _Pending())
        pending.events.append(event)
        if not pending.flushing:
            pending.flushing = True
            self._nursery.start_soon(self._flush, entry_id, pending)

    async def _flush(self, entry_id: int, pending: _Pending) -> None:
        try:
            while pending.events:
                await trio.sleep(FLUSH_EVERY)
                events, pending.events = pending.events, []
                await self._db.run(functools.partial(_notify, encode(entry_id, events)))
        except Exception as exc:
            log.debug("progress of message %d not relayed: %s", entry_id, exc)
        finally:
            pending.flushing = False
            if not pending.events:
                self._pending.pop(entry_id, None)
