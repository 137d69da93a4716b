"""A fake Telegram Bot API on 127.0.0.1: `getMe`, long-poll `getUpdates`, `sendMessage`,
`sendMessageDraft`, `editMessageText`, `sendChatAction`, injected errors, and a record of what
the bot sent.

It behaves like the real one where a bot can tell: updates stay until a `getUpdates` with a
higher `offset` confirms them, a wrong token is 401, a message over 4096 UTF-16 units is 400,
drafts are for private chats only, an edit to the same text is 400 "message is not modified",
an unknown method (`sendMessageDraft` before Bot API 9.3: `drafts = False`) is 404, errors
carry `error_code`, `description` and `parameters.retry_after`.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
from collections import deque
from typing import Any

import attrs
import trio

from runtime.testing.local import Receive, Scope, Send, answer_lifespan, read_body, send_json

JSON = dict[str, Any]
MAX_TEXT = 4096


@attrs.frozen
class Sent:
    """A `sendMessage` the fake accepted."""

    chat_id: int
    text: str
    reply_to: int | None
    message_id: int


@attrs.frozen
class Draft:
    """A `sendMessageDraft` the fake accepted: what the chat saw growing."""

    chat_id: int
    draft_id: int
    text: str


@attrs.frozen
class Edit:
    """An `editMessageText` the fake accepted."""

    chat_id: int
    message_id: int
    text: str


@attrs.frozen
class Call:
    """Any method call, accepted or not, with when it arrived (`trio.current_time()`, so a
    test on the virtual clock sees virtual times)."""

    method: str
    params: JSON
    at: float
    status: int


@attrs.frozen
class _Failure:
    status: int
    description: str
    retry_after: int | None


class FakeTelegram:
    """An ASGI app speaking the Bot API under `/bot<token>/<method>`; serve it with
    `open_local` and point `TELEGRAM_API_BASE_URL` at it."""

    def __init__(self, token: str = "123456:TEST-token", *, username: str = "test_bot") -> None:
        self.token = token
        self.me: JSON = {"id": 999, "is_bot": True, "first_name": "Test", "username": username}
        self.sent: list[Sent] = []
        """The messages as they are now (an edit replaces its message's text)."""
        self.drafts: list[Draft] = []
        self.edits: list[Edit] = []
        self.drafts_supported = True
        """False: `sendMessageDraft` is unknown (404), as before Bot API 9.3."""
        self.actions: list[tuple[int, str]] = []
        self.calls: list[Call] = []
        self._updates: list[JSON] = []
        self._arrived = trio.Event()
        self._update_ids = itertools.count(1000)
        self._message_ids = itertools.count(1)
        self._failures: dict[str, deque[_Failure]] = {}
        self.send_delay = 0.0
        """Seconds each sending call takes (a slow or distant API)."""
        self._long_poll: trio.CancelScope | None = None
        self.conflicts = 0
        """getUpdates calls ended by another one (two pollers on one token)."""
        self._under_way: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        """The most calls of each method the bot had under way at once."""

    # -- what users do ------------------------------------------------------------------

    def text(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        username: str = "alice",
        chat_type: str = "private",
        reply_to_bot: bool = False,
    ) -> JSON:
        """A user sends `text` in a chat (private unless told); returns the update."""
        message = self._message(chat_id, user_id or chat_id, username, chat_type)
        message["text"] = text
        if reply_to_bot:
            message["reply_to_message"] = {
                "message_id": next(self._message_ids),
                "date": int(time.time()),
                "chat": message["chat"],
                "from": self.me,
                "text": "an earlier answer",
            }
        return self.update(message=message)

    def photo(self, chat_id: int, *, user_id: int | None = None) -> JSON:
        message = self._message(chat_id, user_id or chat_id, "alice", "private")
        message["photo"] = [{"file_id": "p1", "file_unique_id": "u1", "width": 90, "height": 90}]
        return self.update(message=message)

    def update(self, **fields: Any) -> JSON:
        """Queue a raw update (`message=...`, `edited_message=...`, anything)."""
        update = {"update_id": next(self._update_ids), **fields}
        self._updates.append(update)
        self._arrived.set()
        self._arrived = trio.Event()
        return update

    def _message(self, chat_id: int, user_id: int, username: str, chat_type: str) -> JSON:
        chat: JSON = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["username"] = username
        else:
            chat["title"] = "A group"
        return {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": {"id": user_id, "is_bot": False, "first_name": "A", "username": username},
        }

    # -- fault injection and inspection -------------------------------------------------

    def fail(
        self,
        method: str,
        status: int,
        description: str = "",
        *,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """The next `times` calls of `method` answer `status` instead."""
        failure = _Failure(status, description or f"injected {status}", retry_after)
        self._failures.setdefault(method, deque()).extend([failure] * times)

    def heal(self, method: str) -> None:
        """Forget the failures still queued for `method`."""
        self._failures.pop(method, None)

    def calls_of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def sent_to(self, chat_id: int) -> list[Sent]:
        return [sent for sent in self.sent if sent.chat_id == chat_id]

    @property
    def pending(self) -> list[JSON]:
        """Updates not yet confirmed by an offset."""
        return list(self._updates)

    # -- the API -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = await read_body(receive)
        token, _, method = scope["path"].removeprefix("/bot").partition("/")
        params: JSON = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode()))
        if body:
            try:
                params |= json.loads(body)
            except json.JSONDecodeError:
                await send_json(send, 400, _error(400, "Bad Request: body is not JSON"))
                return
        status, result = await self._answer(token, method, params)
        self.calls.append(Call(method, params, trio.current_time(), status))
        await send_json(send, status, result)

    async def _answer(self, token: str, method: str, params: JSON) -> tuple[int, JSON]:
        if token != self.token:
            return 401, _error(401, "Unauthorized")
        queued = self._failures.get(method)
        if queued:
            failure = queued.popleft()
            return failure.status, _error(failure.status, failure.description, failure.retry_after)
        if method == "getMe":
            return 200, {"ok": True, "result": self.me}
        if method == "getUpdates":
            # As Telegram: a second poller's getUpdates ends the one waiting with 409.
            if self._long_poll is not None:
                self._long_poll.cancel()
            self._long_poll = scope = trio.CancelScope()
            with scope:
                updates = await self._get_updates(params)
            if self._long_poll is scope:
                self._long_poll = None
            if scope.cancelled_caught:
                self.conflicts += 1
                return 409, _error(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only"
                    " one bot instance is running",
                )
            return 200, {"ok": True, "result": updates}
        if method in _SENDING:
            self._under_way[method] = self._under_way.get(method, 0) + 1
            self.peak[method] = max(self.peak.get(method, 0), self._under_way[method])
            try:
                await trio.sleep(self.send_delay)
            finally:
                self._under_way[method] -= 1
        if method == "sendMessage":
            return self._send_message(params)
        if method == "sendMessageDraft" and self.drafts_supported:
            return self._send_draft(params)
        if method == "editMessageText":
            return self._edit(params)
        if method == "sendChatAction":
            self.actions.append((int(params["chat_id"]), str(params["action"])))
            return 200, {"ok": True, "result": True}
        return 404, _error(404, "Not Found")

    async def _get_updates(self, params: JSON) -> list[JSON]:
        offset = params.get("offset")
        if offset is not None:
            self._updates = [u for u in self._updates if u["update_id"] >= int(offset)]
        allowed = params.get("allowed_updates")
        if isinstance(allowed, str):
            allowed = json.loads(allowed)

        def visible() -> list[JSON]:
            return [u for u in self._updates if not allowed or any(k in u for k in allowed)]

        with trio.move_on_after(float(params.get("timeout") or 0)):
            while not visible():
                await self._arrived.wait()
        return visible()[: int(params.get("limit") or 100)]

    def _send_draft(self, params: JSON) -> tuple[int, JSON]:
        chat_id, draft_id = int(params["chat_id"]), int(params.get("draft_id") or 0)
        text = str(params.get("text") or "")
        if chat_id <= 0:
            return 400, _error(400, "Bad Request: drafts can be sent only to private chats")
        if not draft_id:
            return 400, _error(400, "Bad Request: draft_id must be non-zero")
        if _units(text) > MAX_TEXT:
            return 400, _error(400, "Bad Request: message is too long")
        self.drafts.append(Draft(chat_id, draft_id, text))
        return 200, {"ok": True, "result": True}

    def _edit(self, params: JSON) -> tuple[int, JSON]:
        chat_id, message_id = int(params["chat_id"]), int(params.get("message_id") or 0)
        text = str(params.get("text") or "")
        if problem := _bad_text(text):
            return 400, _error(400, problem)
        at = next(
            (
                i
                for i, s in enumerate(self.sent)
                if (s.chat_id, s.message_id) == (chat_id, message_id)
            ),
            None,
        )
        if at is None:
            return 400, _error(400, "Bad Request: message to edit not found")
        if self.sent[at].text == text:
            return 400, _error(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        self.sent[at] = attrs.evolve(self.sent[at], text=text)
        self.edits.append(Edit(chat_id, message_id, text))
        return 200, {"ok": True, "result": self._message_json(self.sent[at])}

    def drafts_to(self, chat_id: int) -> list[Draft]:
        return [draft for draft in self.drafts if draft.chat_id == chat_id]

    def _send_message(self, params: JSON) -> tuple[int, JSON]:
        text = str(params.get("text") or "")
        if problem := _bad_text(text):
            return 400, _error(400, problem)
        reply = params.get("reply_parameters") or {}
        sent = Sent(int(params["chat_id"]), text, reply.get("message_id"), next(self._message_ids))
        self.sent.append(sent)
        return 200, {"ok": True, "result": self._message_json(sent)}

    def _message_json(self, sent: Sent) -> JSON:
        return {
            "message_id": sent.message_id,
            "date": int(time.time()),
            "chat": {"id": sent.chat_id, "type": "private" if sent.chat_id > 0 else "group"},
            "from": self.me,
            "text": sent.text,
        }


_SENDING = ("sendMessage", "sendMessageDraft", "editMessageText", "sendChatAction")


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _bad_text(text: str) -> str | None:
    if not text.strip():
        return "Bad Request: message text is empty"
    if _units(text) > MAX_TEXT:
        return "Bad Request: message is too long"
    return None


def _error(status: int, description: str, retry_after: int | None = None) -> JSON:
    error: JSON = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        error["parameters"] = {"retry_after": retry_after}
    return error
