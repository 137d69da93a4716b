"""Telegram: the Bot API over httpx2, long polling (`TelegramPoller`) or its webhook.

One session per chat (`telegram:<chat id>`). An update is handed to the runtime, which
stores it durably, before the poller's offset moves past it; after a crash Telegram sends
it again and the inbox knows it by its update id, so it is answered once.

In private chats the answer grows while the model streams it (`_Live`): a draft
(`sendMessageDraft`), or where Telegram refuses drafts a message edited as it grows, about
once a second per chat at most; it ends in the answer's one final message. Groups get the
final message only.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import math
import re
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import attrs
import cattrs
import httpx2
import trio
from cattrs.gen import make_dict_structure_fn, override
from quart import Response, request

from adapters._web import ApiError, json_response, read_body_json, refusals
from adapters.base import (
    Busy,
    Deliver,
    Inbound,
    Lead,
    Progress,
    Reply,
    Reset,
    Route,
    Sent,
    TextDelta,
    ToolProgress,
    Unavailable,
)

log = logging.getLogger("adapters.telegram")

MAX_MESSAGE = 4096
"""Telegram's limit for one message, in UTF-16 code units."""

HELP = (
    "Send me a message and I will answer.\n"
    "/reset forgets our conversation in this chat.\n"
    "/help shows this."
)


@attrs.frozen
class TelegramSettings:
    token: str = attrs.field(repr=False)
    api_base_url: str = "https://api.telegram.org"
    poll_timeout: int = 30
    """Seconds a `getUpdates` long poll waits for something to arrive."""
    allowed_updates: tuple[str, ...] = ("message", "edited_message")
    allowed_users: frozenset[str] = frozenset()
    """User ids and lower-case usernames (without @) allowed to talk to the bot; empty: all."""
    non_text: Literal["reply", "ignore"] = "reply"
    """What to do with an update that has no text (photo, sticker, edit): say so, or nothing."""
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    request_timeout: float = 15.0
    send_attempts: int = 5
    max_sends: int = 8
    """Chats being sent answers at once; each chat's answers go out one after another."""
    typing_every: float = 4.0
    typing_for: float = 180.0
    """Typing is shown, and a live answer grown, at most this long for one turn."""
    live_every: float = 1.0
    """Seconds between two updates of a growing answer in one chat (a draft or an edit);
    Telegram allows about one a second per chat."""
    webhook_secret: str | None = attrs.field(default=None, repr=False)
    """Webhook mode: Telegram POSTs updates to `/telegram/webhook` with this in the
    `X-Telegram-Bot-Api-Secret-Token` header (`setWebhook(secret_token=...)`); the channel
    does not poll."""

    @staticmethod
    def parse_users(spec: str) -> frozenset[str]:
        """`"123, @Alice bob"` → `{"123", "alice", "bob"}`."""
        return frozenset(
            item.lstrip("@").lower() for item in re.split(r"[\s,]+", spec) if item.strip("@ ")
        )


# -- the Bot API -------------------------------------------------------------------------


class TelegramError(Exception):
    """The Bot API said no (`status` is its `error_code`), or could not be reached (0)."""

    def __init__(self, status: int, description: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {description}" if status else description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


class TelegramUnauthorized(TelegramError):
    """The token was refused: nothing will work until it is fixed."""


class TelegramApi:
    """The Bot API methods, one httpx2 client. The token is part of every URL, so no URL or
    transport error text is ever logged or raised as it is."""

    def __init__(self, settings: TelegramSettings, client: httpx2.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._base = f"{settings.api_base_url.rstrip('/')}/bot{settings.token}"
        self.failing: str | None = None
        """Why the last call failed, until one succeeds (for readiness)."""

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        http_timeout: float | None = None,
    ) -> Any:
        """One call: its `result`, or `TelegramError`."""
        try:
            response = await self._client.post(
                f"{self._base}/{method}",
                json=dict(params or {}),
                timeout=http_timeout or self._settings.request_timeout,
            )
        except httpx2.HTTPError as exc:
            text = str(exc).replace(self._settings.token, "[redacted]")
            raise TelegramError(0, f"{type(exc).__name__}: {text}".rstrip(": ")) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise TelegramError(response.status_code, "the answer is not Bot API JSON")
        if body.get("ok") is True:
            return body.get("result")
        status = int(body.get("error_code") or response.status_code)
        description = str(body.get("description") or "")
        retry_after = (body.get("parameters") or {}).get("retry_after")
        kind = TelegramUnauthorized if status in (401, 404) else TelegramError
        raise kind(status, description, float(retry_after) if retry_after is not None else None)

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        attempts: int | None = None,
        http_timeout: float | None = None,
    ) -> Any:
        """`call`, waiting out 429 (`retry_after`) and backing off on 409, 5xx and network
        errors; up to `attempts` tries (forever when None). Other refusals raise at once."""
        backoff = self._settings.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self.call(method, params, http_timeout=http_timeout)
                self.failing = None
                return result
            except TelegramError as exc:
                if exc.status in (0, 401, 404, 409) or exc.status >= 500:
                    self.failing = f"{method} failed: {exc}"
                if isinstance(exc, TelegramUnauthorized):
                    raise
                retryable = exc.status in (0, 409, 429) or exc.status >= 500
                if not retryable or (attempts is not None and attempt >= attempts):
                    raise
                if exc.status == 429 and exc.retry_after is not None:
                    wait = exc.retry_after
                    log.warning("Telegram %s: rate limited, waiting %gs", method, wait)
                else:
                    wait = backoff
                    backoff = min(backoff * 2, self._settings.backoff_max)
                    if exc.status == 409:
                        log.warning(
                            "Telegram %s: conflict (%s): another poller runs with this token, "
                            "or a webhook is set (deleteWebhook removes it); retrying in %gs",
                            method,
                            exc.description,
                            wait,
                        )
                    else:
                        log.warning("Telegram %s failed (%s); retrying in %gs", method, exc, wait)
                await trio.sleep(wait)


# -- updates, as far as the bot reads them -------------------------------------------------


@attrs.frozen
class _User:
    id: int
    username: str | None = None


@attrs.frozen
class _Chat:
    id: int
    type: str


@attrs.frozen
class _Replied:
    message_id: int
    sender: _User | None = None


@attrs.frozen
class _Message:
    message_id: int
    chat: _Chat
    sender: _User | None = None
    text: str | None = None
    reply_to_message: _Replied | None = None


@attrs.frozen
class _Update:
    update_id: int
    message: _Message | None = None
    edited_message: _Message | None = None


_converter = cattrs.Converter()
for _cls in (_Message, _Replied):
    _converter.register_structure_hook(
        _cls,
        make_dict_structure_fn(_cls, _converter, sender=override(rename="from")),
    )


def split_message(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """Pieces of at most `limit` UTF-16 units, cut at a paragraph, else a line, else a word
    boundary, in order; nothing but the whitespace at the cuts is lost."""
    pieces = []
    rest = text.strip()
    while _units(rest) > limit:
        window = rest[:limit]
        while (excess := _units(window) - limit) > 0:
            window = window[: -max(1, excess // 2)]  # a character is one or two units
        cut = next(
            (at for sep in ("\n\n", "\n", " ") if (at := window.rfind(sep)) > limit // 4),
            len(window),
        )
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# -- the channel -------------------------------------------------------------------------


@attrs.frozen
class TelegramAddress:
    """Where the answer to a message goes, stored with it: its chat, replying to it."""

    chat_id: int
    reply_to: int | None = None


@attrs.frozen
class _Outgoing:
    chat_id: int
    text: str
    reply_to: int | None
    busy: bool = False
    """A note that the chat is busy: one at a time per chat, so a flood is not echoed."""
    live: _Live | None = attrs.field(default=None, eq=False)
    """The answer shown growing, which this final text replaces."""
    sent: Sent | None = attrs.field(default=None, eq=False)
    """Told whether the message got to Telegram."""


class _Live:
    """An answer growing in a private chat while the model streams it.

    `text` is what the model has said so far in its latest call (the answer is that call's
    text: what it said before calling tools gives way); `shown` what the chat sees (a draft,
    or the message `message_id` being edited when drafts are refused). `lock` is held during
    each update, so the final message never races one."""

    def __init__(self, chat_id: int, reply_to: int | None, draft_ids: Iterator[int]) -> None:
        self.chat_id = chat_id
        self.reply_to = reply_to
        self._draft_ids = draft_ids
        self.draft_id = next(draft_ids)
        self.text = ""
        self._tools_ran = False
        self.shown = ""
        self.message_id: int | None = None
        self.finished = False
        self.changed = trio.Event()
        self.lock = trio.Lock()

    def take(self, event: Progress) -> None:
        if isinstance(event, ToolProgress):
            self._tools_ran = True  # the model is called again with the results
            return
        if isinstance(event, TextDelta):
            if self._tools_ran:
                self.text, self._tools_ran = "", False
            self.text += event.text
        else:  # a fallback model starts its answer again: so does the draft
            kept = self.text.endswith(event.text)
            self.text = self.text.removesuffix(event.text) if kept else ""
            self.draft_id = next(self._draft_ids)
            self.shown = ""
        self.changed.set()

    def finish(self) -> None:
        self.finished = True
        self.changed.set()

    def preview(self) -> str:
        """The text to show now: the answer so far, up to one message's length."""
        text = self.text.strip()
        if _units(text) <= MAX_MESSAGE:
            return text
        return split_message(text)[0]


class TelegramChannel:
    """Turns updates into messages for the runtime and sends the answers back.

    `run` owns the sending side (answers, typing) and the intake (long polling, or in
    webhook mode learning who the bot is) until `close`; `handle` takes one update from
    the poller or the webhook and returns once the runtime has it durably.

    `reset(session key, done)` forgets a chat's conversation in order with its messages and
    calls `done(forgotten)` once it ran; it raises `Busy` or `Unavailable` as `deliver` does.
    """

    def __init__(
        self,
        api: TelegramApi,
        settings: TelegramSettings,
        deliver: Deliver,
        *,
        reset: Reset,
        lead: Lead | None = None,
    ) -> None:
        self.api = api
        self._lead = lead
        """Replicas on one database poll one token from one replica at a time (Telegram
        answers two pollers 409); None: this process polls."""
        self.settings = settings
        self._deliver = deliver
        self._reset = reset
        self.me: _User | None = None
        self._send, self._receive = trio.open_memory_channel[_Outgoing](math.inf)
        self._outbox: dict[int, deque[_Outgoing]] = {}
        """The answers waiting, per chat with a sender task."""
        self._senders = trio.CapacityLimiter(settings.max_sends)
        self._typing_calls = trio.CapacityLimiter(settings.max_sends)
        self._busy_noted: set[int] = set()
        """Chats with a busy note not sent yet."""
        self._typing: trio.Nursery | None = None
        """Where the courtesies run: typing, live answers."""
        self._intake = trio.CancelScope()
        self._unsent: Counter[int] = Counter()
        """Messages queued per chat and not sent yet: a live answer waits for them."""
        self._live_calls = trio.CapacityLimiter(settings.max_sends)
        self._next_live: dict[int, float] = {}
        """Per chat, the earliest time of its next live update (`live_every`, or a 429's wait)."""
        self._drafts = True
        """Telegram takes `sendMessageDraft`, until it refuses one (an older Bot API)."""
        self._draft_ids = itertools.count(1)

    name = "telegram"

    def routes(self) -> Sequence[Route]:
        if self.settings.webhook_secret is None:
            return ()
        return (Route("POST", "/telegram/webhook", self._webhook, public=True),)

    def problem(self) -> str | None:
        """Why the channel is not ready (its Bot API calls keep failing), or None."""
        return self.api.failing

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take updates (poll, or in webhook mode learn who the bot is) and send the answers,
        until `close`."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_sends)
            nursery.start_soon(self._run_intake)
            task_status.started()

    async def _run_intake(self) -> None:
        with self._intake:
            if self.settings.webhook_secret is not None:
                if await self.identify():
                    log.info("Telegram: webhook mode, updates arrive at POST /telegram/webhook")
                return
            if self._lead is None:
                await TelegramPoller(self).run()
            else:
                await self._lead(TelegramPoller(self).run)

    async def _run_sends(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send the answers: one task per chat that has some, at most `max_sends` of them
        (a chat that cannot be sent to holds up only its own answers and one slot)."""
        async with trio.open_nursery() as sends, trio.open_nursery() as typing:
            self._typing = typing
            task_status.started()
            async for outgoing in self._receive:
                waiting = self._outbox.get(outgoing.chat_id)
                if waiting is not None:
                    waiting.append(outgoing)  # its chat's task takes it in turn
                    continue
                await self._senders.acquire_on_behalf_of(outgoing.chat_id)
                self._outbox[outgoing.chat_id] = deque([outgoing])
                sends.start_soon(self._send_chat, outgoing.chat_id)
            self._typing = None
            typing.cancel_scope.cancel()

    def close(self) -> None:
        """Take no more updates nor answers; `run` returns once those under way are sent."""
        self._intake.cancel()
        self._send.close()

    async def identify(self) -> bool:
        """Learn the bot's own id and username (to notice mentions in groups); False, with
        the reason logged, when Telegram refuses the token."""
        try:
            me = await self.api.request("getMe")
        except TelegramUnauthorized as exc:
            _refused(exc)
            return False
        self.me = _converter.structure(me, _User)
        log.info("Telegram: connected as @%s", self.me.username)
        return True

    def recovered(self, session_id: str, address: Mapping[str, Any] | None) -> TelegramResponder:
        """The responder of a message accepted before a restart: it answers in its chat
        (live in a private one: Telegram gives private chats the user's id, groups a negative
        one)."""
        if address is None:  # stored by a version that kept no address: the chat is the session
            where = TelegramAddress(int(session_id))
        else:
            where = _converter.structure(address, TelegramAddress)
        return TelegramResponder(self, where.chat_id, where.reply_to, live=where.chat_id > 0)

    async def _webhook(self) -> Response:
        secret = self.settings.webhook_secret or ""
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            log.warning("Telegram webhook refused: wrong or missing secret token")
            raise ApiError(401, "unauthorized", "the secret token is missing or wrong")
        update = await read_body_json()
        if not isinstance(update, dict):
            raise ApiError(
                400, "invalid_request", "the body is not a Telegram update (JSON object)"
            )
        with refusals():
            await self.handle(update)
        return json_response({"ok": True}, 200)

    async def handle(self, raw: object) -> None:
        """One update. A chat whose session is busy (full mailbox, too fast) is told to send
        its message again. Raises `Unavailable` when the runtime takes no messages at all
        (it is not accepted: the caller tries again later)."""
        try:
            update = _converter.structure(raw, _Update)
        except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
            log.warning("Telegram: an update the bot cannot read was skipped (%s)", exc)
            return
        message = update.message or update.edited_message
        if message is None:
            return  # a kind of update the bot was not asked for
        private = message.chat.type == "private"
        if not private and not self._addressed(message):
            return
        chat, reply_to = message.chat.id, message.message_id
        if not self._allowed(message.sender):
            log.info("Telegram: refused user %s in chat %d", _who(message.sender), chat)
            self.submit(chat, "Sorry, this bot only talks to people it was set up for.", reply_to)
            return
        text = self._text_for_bot(message.text or "")
        if update.message is None or not text:
            if self.settings.non_text == "reply":
                reason = "edited messages" if update.message is None else "this kind of message"
                self.submit(
                    chat, f"Sorry, I can only read new text messages, not {reason}.", reply_to
                )
            return
        if text.startswith("/") and await self._command(text, chat, reply_to):
            return
        responder = TelegramResponder(self, chat, reply_to, live=private)
        try:
            accepted = await self._deliver(
                Inbound(
                    "telegram",
                    str(chat),
                    text,
                    responder,
                    message_id=str(update.update_id),
                    sender=_who(message.sender),
                    address=TelegramAddress(chat, reply_to),
                )
            )
        except Busy as exc:
            # Waiting here would hold up every other chat: this one is told instead.
            log.info("Telegram: chat %d is busy; asked to send again (%s)", chat, exc)
            self._note_busy(chat, exc.retry_after, reply_to)
            return
        if accepted.repeat:
            # Seen before a restart: its answer went (or will go) out through the first one.
            responder.mute()
        else:
            self._show_typing(chat, responder.answered)

    def _addressed(self, message: _Message) -> bool:
        """In groups the bot answers when mentioned, commanded, or replied to."""
        if self.me is None:
            return False
        replied = message.reply_to_message
        if replied is not None and replied.sender is not None and replied.sender.id == self.me.id:
            return True
        name = (self.me.username or "").lower()
        return bool(name) and f"@{name}" in (message.text or "").lower()

    def _allowed(self, user: _User | None) -> bool:
        allowed = self.settings.allowed_users
        if not allowed:
            return True
        if user is None:
            return False
        return str(user.id) in allowed or (user.username or "").lower() in allowed

    def _text_for_bot(self, text: str) -> str:
        """The text without the bot's @mention."""
        if self.me is not None and self.me.username:
            text = re.sub(rf"@{re.escape(self.me.username)}\b", "", text, flags=re.I)
        return text.strip()

    async def _command(self, text: str, chat: int, reply_to: int) -> bool:
        command = text.split(maxsplit=1)[0].lower()
        if command in ("/start", "/help"):
            self.submit(chat, ("Hello! " if command == "/start" else "") + HELP, reply_to)
            return True
        if command == "/reset":

            def done(forgotten: bool) -> None:
                self.submit(chat, _RESET[forgotten], reply_to)

            try:
                await self._reset(f"telegram:{chat}", done)
            except Busy as exc:
                self._note_busy(chat, exc.retry_after, reply_to)
            return True
        return False  # anything else is for the model

    def submit(
        self,
        chat_id: int,
        text: str,
        reply_to: int | None,
        *,
        live: _Live | None = None,
        sent: Sent | None = None,
    ) -> None:
        """Queue a message to a chat (sent in order, split, retried); never blocks. With
        `live`, the text is the final form of that answer shown growing; `sent` is told
        whether Telegram got it."""
        self._queue(_Outgoing(chat_id, text, reply_to, live=live, sent=sent))

    def _note_busy(self, chat_id: int, retry_after: float, reply_to: int) -> None:
        """Tell the chat it is busy, unless a note saying so is still on its way."""
        if chat_id not in self._busy_noted:
            self._busy_noted.add(chat_id)
            self._queue(_Outgoing(chat_id, _busy(retry_after), reply_to, busy=True))

    def _queue(self, outgoing: _Outgoing) -> None:
        try:
            self._send.send_nowait(outgoing)
        except trio.ClosedResourceError:
            log.error("Telegram: answer to chat %d dropped: shutting down", outgoing.chat_id)
            if outgoing.sent is not None:
                outgoing.sent(False)
        else:
            self._unsent[outgoing.chat_id] += 1

    def _show_typing(self, chat_id: int, answered: trio.Event) -> None:
        if self._typing is not None:
            self._typing.start_soon(self._keep_typing, chat_id, answered)

    async def _keep_typing(self, chat_id: int, answered: trio.Event) -> None:
        with trio.move_on_after(self.settings.typing_for):
            while not answered.is_set():
                # Only a courtesy: skipped while `max_sends` chats are being shown it.
                if self._typing_calls.available_tokens:
                    async with self._typing_calls:
                        with contextlib.suppress(TelegramError):
                            await self.api.call(
                                "sendChatAction", {"chat_id": chat_id, "action": "typing"}
                            )
                with trio.move_on_after(self.settings.typing_every):
                    await answered.wait()

    async def _send_chat(self, chat_id: int) -> None:
        """Send a chat's answers in the order they were given, then free its slot."""
        waiting = self._outbox[chat_id]
        try:
            while waiting:
                outgoing = waiting[0]
                if outgoing.busy:
                    self._busy_noted.discard(chat_id)  # later refusals get a note of their own
                delivered = await self._send_message(outgoing)
                if outgoing.sent is not None:
                    outgoing.sent(delivered)
                waiting.popleft()
                self._unsent[chat_id] -= 1
        finally:
            del self._outbox[chat_id]
            self._unsent.pop(chat_id, None)
            self._senders.release_on_behalf_of(chat_id)

    async def _send_message(self, outgoing: _Outgoing) -> bool:
        """Send one answer (in pieces when long); whether all of it got to Telegram."""
        pieces = split_message(outgoing.text)
        if outgoing.live is not None and await self._finish_live(outgoing.live, pieces[0]):
            pieces.pop(0)  # the message edited as the answer grew is its first piece now
            replied = True
        else:
            replied = False
        for piece in pieces:
            params: dict[str, Any] = {"chat_id": outgoing.chat_id, "text": piece}
            if not replied and outgoing.reply_to is not None:
                params["reply_parameters"] = {
                    "message_id": outgoing.reply_to,
                    "allow_sending_without_reply": True,
                }
            replied = True
            try:
                await self.api.request("sendMessage", params, attempts=self.settings.send_attempts)
            except TelegramError as exc:
                log.error("Telegram: answer to chat %d not sent: %s", outgoing.chat_id, exc)
                return False
        return True

    # -- live answers ----------------------------------------------------------------------

    def go_live(self, chat_id: int, reply_to: int | None) -> _Live | None:
        """An answer to show growing in a private chat, or None while the channel stops."""
        if self._typing is None:
            return None
        live = _Live(chat_id, reply_to, self._draft_ids)
        self._typing.start_soon(self._keep_live, live)
        return live

    async def _keep_live(self, live: _Live) -> None:
        """Show `live` growing: at most one update per `live_every` per chat, only once the
        chat's earlier answers are out, skipped while `max_sends` chats are being updated."""
        chat = live.chat_id
        with trio.move_on_after(self.settings.typing_for):
            while not live.finished:
                await live.changed.wait()
                await trio.sleep_until(self._next_live.get(chat, -math.inf))
                if live.finished:
                    break
                if self._unsent[chat] or not self._live_calls.available_tokens:
                    await trio.sleep(self.settings.live_every)
                    continue
                live.changed = trio.Event()  # text arriving during the update shows next time
                async with self._live_calls, live.lock:
                    if not live.finished:
                        await self._show_live(live)
        if self._next_live.get(chat, math.inf) <= trio.current_time():
            del self._next_live[chat]

    async def _show_live(self, live: _Live) -> None:
        text = live.preview()
        if text == live.shown or (not text and live.message_id is None):
            return
        chat = live.chat_id
        self._next_live[chat] = trio.current_time() + self.settings.live_every
        try:
            if self._drafts and await self._draft(live, text):
                return
            if live.message_id is None:
                params: dict[str, Any] = {"chat_id": chat, "text": text}
                if live.reply_to is not None:
                    params["reply_parameters"] = {
                        "message_id": live.reply_to,
                        "allow_sending_without_reply": True,
                    }
                sent = await self.api.call("sendMessage", params)
                live.message_id = int(sent["message_id"])
            else:
                await self._edit(chat, live.message_id, text or "…")
            live.shown = text
        except TelegramError as exc:
            if exc.status == 429:
                wait = max(exc.retry_after or 0.0, self.settings.live_every)
                self._next_live[chat] = trio.current_time() + wait
                log.warning("Telegram: live answer in chat %d rate limited for %gs", chat, wait)
            else:
                log.info("Telegram: live answer in chat %d not updated: %s", chat, exc)
        except (KeyError, TypeError, ValueError):
            log.warning("Telegram: sendMessage answered without a message id")

    async def _draft(self, live: _Live, text: str) -> bool:
        """Show `text` as the chat's draft; False when Telegram refuses drafts (Bot API
        before 9.3, or not for this bot), and the channel edits messages from then on."""
        params = {"chat_id": live.chat_id, "draft_id": live.draft_id, "text": text}
        try:
            await self.api.call("sendMessageDraft", params)
        except TelegramError as exc:
            if exc.status not in (400, 404):
                raise
            self._drafts = False
            log.info(
                "Telegram refused sendMessageDraft (%s): live answers are edited messages", exc
            )
            return False
        live.shown = text
        return True

    async def _edit(self, chat: int, message_id: int, text: str, *, attempts: int = 1) -> None:
        params = {"chat_id": chat, "message_id": message_id, "text": text}
        try:
            await self.api.request("editMessageText", params, attempts=attempts)
        except TelegramError as exc:
            if "not modified" not in exc.description:
                raise

    async def _finish_live(self, live: _Live, first: str) -> bool:
        """Stop showing `live`; True when its message was edited into `first`, the final
        message's first piece (False: send the final message as a new one; a draft
        disappears when it arrives)."""
        live.finish()
        async with live.lock:  # an update under way ends first
            pass
        if live.message_id is None:
            return False
        if live.shown == first:
            return True
        await trio.sleep_until(self._next_live.get(live.chat_id, -math.inf))
        try:
            await self._edit(
                live.chat_id, live.message_id, first, attempts=self.settings.send_attempts
            )
        except TelegramError as exc:
            log.warning(
                "Telegram: live answer in chat %d not finished (%s); sent anew", live.chat_id, exc
            )
            return False
        return True


class TelegramResponder:
    """Sends the answer of one message to its chat, as a reply to it; with `live` (a private
    chat) shows it growing while the model streams it."""

    def __init__(
        self, channel: TelegramChannel, chat_id: int, reply_to: int | None, *, live: bool = False
    ) -> None:
        self._channel = channel
        self._chat_id = chat_id
        self._reply_to = reply_to
        self._muted = False
        self._can_live = live
        self._live: _Live | None = None
        self.answered = trio.Event()

    def mute(self) -> None:
        self._muted = True
        self.answered.set()

    def reply(self, reply: Reply) -> None:
        self.reply_then(reply, lambda _: None)

    def reply_then(self, reply: Reply, sent: Sent) -> None:
        self.answered.set()
        live, self._live = self._live, None
        if live is not None:
            live.finish()
        if self._muted or reply.replayed:
            sent(True)  # nothing to send
            return
        text = reply.message or "Sorry, I could not produce an answer this time."
        self._channel.submit(self._chat_id, text, self._reply_to, live=live, sent=sent)

    def progress(self, event: Progress) -> None:
        if not self._can_live or self._muted or self.answered.is_set():
            return
        if self._live is None:
            if not isinstance(event, TextDelta):
                return
            self._live = self._channel.go_live(self._chat_id, self._reply_to)
            if self._live is None:
                self._can_live = False
                return
        self._live.take(event)


_RESET = {
    True: "Done: I have forgotten our conversation in this chat.",
    False: "Sorry, I could not forget our conversation just now (I am restarting); "
    "please send /reset again in a moment.",
}


def _busy(retry_after: float) -> str:
    wait = max(1, math.ceil(retry_after))
    unit = "second" if wait == 1 else "seconds"
    return (
        "Sorry, I am still busy with your earlier messages and could not take this one "
        f"(nor any you send before this note arrives). Please send it again in {wait} {unit}."
    )


def _refused(exc: TelegramUnauthorized) -> None:
    log.error(
        "Telegram refused TELEGRAM_BOT_TOKEN (%s): the Telegram channel is stopped, the rest "
        "of the bot keeps serving; check the token with @BotFather",
        exc,
    )


def _who(user: _User | None) -> str | None:
    if user is None:
        return None
    return f"@{user.username}" if user.username else str(user.id)


# -- long polling -------------------------------------------------------------------------


class TelegramPoller:
    """Long-polls `getUpdates` and hands each update to the channel, in order.

    The offset moves past an update only once the channel has it (the runtime stored it);
    a bad token stops the poller with one error line, the rest of the bot keeps serving.
    """

    def __init__(self, channel: TelegramChannel) -> None:
        self._channel = channel
        self._api = channel.api
        self._settings = channel.settings

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not await self._channel.identify():
            return
        try:
            await self._poll()
        except TelegramUnauthorized as exc:
            _refused(exc)

    async def _poll(self) -> None:
        offset: int | None = None
        params: dict[str, Any] = {
            "timeout": self._settings.poll_timeout,
            "allowed_updates": list(self._settings.allowed_updates),
        }
        while True:
            updates = await self._api.request(
                "getUpdates",
                params | ({"offset": offset} if offset is not None else {}),
                http_timeout=self._settings.poll_timeout + self._settings.request_timeout,
            )
            for update in updates if isinstance(updates, list) else []:
                await self._hand_over(update)
                if isinstance(update, dict) and isinstance(update.get("update_id"), int):
                    offset = update["update_id"] + 1

    async def _hand_over(self, update: object) -> None:
        while True:
            try:
                await self._channel.handle(update)
                return
            except Unavailable:
                await trio.sleep(1.0)
            except Exception:
                log.exception("Telegram: an update broke the channel and was skipped")
                return
