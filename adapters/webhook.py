"""Signed webhooks: the channel of `POST /webhooks/<source>` on the HTTP server.

Signatures are checked before anything else, with constant-time comparison:

* Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` where
  the signature is HMAC-SHA256 of `"{id}.{timestamp}.{body}"` keyed by the secret
  (`whsec_<base64>`); several space-separated signatures are allowed (key rotation); the
  timestamp must be within 5 minutes.
* GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, id `X-GitHub-Delivery`.

A delivery is processed once per source (`ReplayGuard`): a delivery id seen before, whatever
session its body names, is acknowledged (200) and not processed again; so is a GitHub body seen
before under another `X-GitHub-Delivery` (the id is not signed, the body is).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs
import cattrs
import httpx2
import trio
from quart import Response, request

from adapters._json import InvalidJson, decode_json
from adapters._web import ApiError, json_response, refusals, reply_status
from adapters.base import (
    Accepted,
    Deliver,
    Inbound,
    Progress,
    Reply,
    Responder,
    Route,
    Sent,
    Unattended,
    WaitingResponder,
    reply_body,
)

log = logging.getLogger("adapters.webhook")

TOLERANCE_SECONDS = 300

Scheme = Literal["standard", "github"]


class SignatureError(Exception):
    """The request is not signed by the source's secret; the message says why (for logs)."""


@attrs.frozen
class WebhookSource:
    """A configured sender: how it signs, where its text is, where the reply goes."""

    name: str
    secret: str = attrs.field(repr=False)
    scheme: Scheme = "standard"
    text: str = "message"
    """Where the message text is in the JSON body: a dotted path or a JSON pointer."""
    session: str | None = None
    """Where a session id is in the body (same syntax); without it, one session per source."""
    callback: str | None = None
    """Post the reply there (signed the same way) and answer 202 at once."""


def _standard_key(secret: str) -> bytes:
    encoded = secret.removeprefix("whsec_")
    try:
        # Padding is optional, as in the reference libraries.
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the source's secret is not whsec_<base64>") from None


def secret_problem(scheme: Scheme, secret: str) -> str | None:
    """Why `secret` cannot sign for `scheme`, or None; the secret itself is never quoted."""
    if not secret:
        return "the secret is empty"
    if scheme == "standard":
        try:
            key = _standard_key(secret)
        except SignatureError as exc:
            return str(exc)
        if not key:
            return "the secret is whsec_ with nothing after it"
    return None


def sign_standard(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for a Standard Webhooks message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_github(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` header value for a GitHub delivery."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(source: WebhookSource, headers: Mapping[str, str], body: bytes, now: float) -> str:
    """Check the signature; the delivery id to deduplicate on, or `SignatureError`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if source.scheme == "github":
        given = lowered.get("x-hub-signature-256", "")
        if not given:
            raise SignatureError("missing X-Hub-Signature-256")
        if not hmac.compare_digest(given.encode(), sign_github(source.secret, body).encode()):
            raise SignatureError("X-Hub-Signature-256 does not match the body")
        delivery = lowered.get("x-github-delivery")
        if not delivery:
            raise SignatureError("missing X-GitHub-Delivery")
        return delivery
    message_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not (message_id and stamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 5 minutes away from now")
    expected = sign_standard(source.secret, message_id, timestamp, body).encode()
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return message_id
    raise SignatureError("webhook-signature does not match")


def extract(body: object, path: str) -> object:
    """The value at a dotted path (`a.b.0`) or a JSON pointer (`/a/b/0`), or KeyError."""
    parts = (
        [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
        if path.startswith("/")
        else path.split(".")
    )
    value = body
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(path)
    return value


def parse(source: WebhookSource, body: bytes) -> tuple[str, str]:
    """(text, session id) from a verified body; ValueError says what is missing."""
    data = decode_json(body)
    try:
        text = extract(data, source.text)
    except KeyError:
        raise ValueError(f"no message text at {source.text!r} in the body") from None
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the value at {source.text!r} must be a non-empty string")
    session = source.name
    if source.session is not None:
        try:
            session = f"{source.name}:{extract(data, source.session)}"
        except KeyError:
            raise ValueError(f"no session id at {source.session!r} in the body") from None
    return text, session


class SeenDeliveries(Protocol):
    """The deliveries each source has sent lately, kept by the host (durably, for a window)."""

    async def seen(self, source: str, keys: Sequence[str]) -> bool:
        """Whether the source sent any of `keys` before."""
        ...

    async def record(self, source: str, keys: Sequence[str]) -> None: ...


def replay_keys(source: WebhookSource, delivery: str, body: bytes) -> tuple[str, ...]:
    """What makes a delivery the same one again: its id, and for GitHub, whose signature
    covers the body but not the delivery id, a digest of the body."""
    keys = [f"id:{delivery}"]
    if source.scheme == "github":
        keys.append("sha256:" + hashlib.sha256(body).hexdigest())
    return tuple(keys)


class ReplayGuard:
    """Hands each delivery of a source to the runtime once.

    A delivery is remembered once the runtime has accepted it (not before: one refused as
    busy must be taken when the sender tries again); one in progress counts as seen, so two
    copies arriving together are not both processed.
    """

    def __init__(self, seen: SeenDeliveries) -> None:
        self._seen = seen
        self._pending: set[tuple[str, str]] = set()

    async def deliver(
        self, source: WebhookSource, delivery: str, body: bytes, inbound: Inbound, deliver: Deliver
    ) -> Accepted | None:
        """`deliver(inbound)`, or None when this delivery was processed before."""
        claims = {(source.name, key) for key in replay_keys(source, delivery, body)}
        if claims & self._pending:
            log.info("webhook %s: delivery %s arrived twice at once", source.name, delivery)
            return None
        self._pending |= claims
        try:
            keys = [key for _, key in claims]
            if await self._seen.seen(source.name, keys):
                log.info(
                    "webhook %s: delivery %s seen before, not processed", source.name, delivery
                )
                return None
            accepted = await deliver(inbound)
            try:
                await self._seen.record(source.name, keys)
            except Exception:
                # Accepted all the same; a replay is then caught only by its id and session.
                log.exception("webhook %s: delivery %s not remembered", source.name, delivery)
            return accepted
        finally:
            self._pending -= claims


@attrs.frozen
class _Callback:
    source: WebhookSource
    delivery: str
    body: bytes
    sent: Sent | None = attrs.field(default=None, eq=False)


class CallbackSender:
    """Posts replies to the sources' callback URLs, signed like the webhook, from its own
    task: up to `attempts` tries with exponential backoff and jitter on errors and 5xx;
    at most `concurrency` posts (with their retries) at once, the others wait their turn."""

    def __init__(
        self,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 10.0,
        concurrency: int = 8,
    ) -> None:
        self._attempts, self._backoff, self._timeout = attempts, backoff, timeout
        self._send, self._receive = trio.open_memory_channel[_Callback](math.inf)
        self._posting = trio.CapacityLimiter(concurrency)

    def submit(
        self,
        source: WebhookSource,
        delivery: str,
        body: Mapping[str, Any],
        sent: Sent | None = None,
    ) -> None:
        """Queue a post (its `webhook-id` is `reply-<delivery>`, the same at every attempt
        and resend, so the receiver can drop a repeat); `sent` is told whether it got there."""
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            self._send.send_nowait(_Callback(source, delivery, data, sent))
        except trio.ClosedResourceError:
            log.error("callback of %s for %s dropped: shutting down", source.name, delivery)
            if sent is not None:
                sent(False)

    def close(self) -> None:
        """Take no more callbacks; `run` returns once the posts under way are done."""
        self._send.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with (
            httpx2.AsyncClient(timeout=self._timeout) as client,
            trio.open_nursery() as posts,
        ):
            task_status.started()
            async for callback in self._receive:
                slot = object()
                await self._posting.acquire_on_behalf_of(slot)
                posts.start_soon(self._post, client, callback, slot)

    async def _post(self, client: httpx2.AsyncClient, callback: _Callback, slot: object) -> None:
        try:
            delivered = await self._post_with_retries(client, callback)
        finally:
            self._posting.release_on_behalf_of(slot)
        if callback.sent is not None:
            callback.sent(delivered)

    async def _post_with_retries(self, client: httpx2.AsyncClient, callback: _Callback) -> bool:
        """Post until the receiver answers below 500; whether it took the post (a 4xx is
        its answer: posting again would get the same)."""
        source = callback.source
        assert source.callback is not None
        for attempt in range(self._attempts):
            headers = {"Content-Type": "application/json"}
            if source.scheme == "github":
                headers["X-Hub-Signature-256"] = sign_github(source.secret, callback.body)
            else:
                stamp = int(time.time())
                headers |= {
                    "webhook-id": f"reply-{callback.delivery}",
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": sign_standard(
                        source.secret, f"reply-{callback.delivery}", stamp, callback.body
                    ),
                }
            try:
                response = await client.post(
                    source.callback, content=callback.body, headers=headers
                )
                if response.status_code < 500:
                    if response.status_code >= 400:
                        log.warning("callback of %s refused: %d", source.name, response.status_code)
                    return True
                problem = f"HTTP {response.status_code}"
            except httpx2.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            wait = self._backoff * 2**attempt * (1 + random.random() * 0.2)
            log.warning("callback of %s failed (%s); retry in %.1fs", source.name, problem, wait)
            await trio.sleep(wait)
        log.error("callback of %s gave up after %d attempts", source.name, self._attempts)
        return False


class CallbackResponder:
    """The reply of a webhook with a callback URL goes there instead of the response."""

    def __init__(self, sender: CallbackSender, source: WebhookSource, delivery: str) -> None:
        self._sender, self._source, self._delivery = sender, source, delivery

    def reply(self, reply: Reply) -> None:
        self._sender.submit(self._source, self._delivery, reply_body(reply))

    def reply_then(self, reply: Reply, sent: Sent) -> None:
        self._sender.submit(self._source, self._delivery, reply_body(reply), sent)

    def progress(self, event: Progress) -> None:
        pass


@attrs.frozen
class WebhookAddress:
    """Where the reply to a delivery goes, stored with it: its source's callback."""

    source: str
    delivery: str


class WebhookChannel:
    """`POST /webhooks/<name>` for the configured sources of one bot."""

    name = "webhook"

    def __init__(
        self,
        deliver: Deliver,
        sources: Mapping[str, WebhookSource],
        replays: ReplayGuard | None,
        *,
        reply_timeout: float = 150.0,
        callbacks: CallbackSender | None = None,
    ) -> None:
        self._deliver = deliver
        self.sources = dict(sources)
        self._replays = replays
        self._reply_timeout = reply_timeout
        self._callbacks = callbacks or CallbackSender()

    def routes(self) -> Sequence[Route]:
        return (Route("POST", "/webhooks/<name>", self._webhook, public=True),)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._callbacks.run(task_status=task_status)

    def close(self) -> None:
        self._callbacks.close()

    def problem(self) -> str | None:
        return None

    def recovered(self, session_id: str, address: Mapping[str, Any] | None) -> Responder:
        if address is not None:
            where = cattrs.structure(address, WebhookAddress)
            source = self.sources.get(where.source)
            if source is not None and source.callback is not None:
                return CallbackResponder(self._callbacks, source, where.delivery)
        return Unattended(f"{self.name}:{session_id}")

    async def _webhook(self, name: str) -> Response:
        source = self.sources.get(name)
        if source is None:
            raise ApiError(404, "not_found", f"no webhook source {name!r} is configured")
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        try:
            delivery = verify(source, dict(request.headers), body, time.time())
        except SignatureError as exc:
            log.warning("webhook %s refused: %s", name, exc)
            raise ApiError(
                401, "invalid_signature", "the webhook signature is missing, wrong or stale"
            ) from None
        try:
            text, session = parse(source, body)
        except InvalidJson as exc:
            raise ApiError(400, "invalid_json", str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        responder: WaitingResponder | CallbackResponder
        if source.callback is not None:
            responder = CallbackResponder(self._callbacks, source, delivery)
        else:
            responder = WaitingResponder()
        inbound = Inbound(
            self.name,
            session,
            text,
            responder,
            message_id=delivery,
            sender=name,
            address=WebhookAddress(name, delivery),
        )
        with refusals():
            if self._replays is None:
                accepted: Accepted | None = await self._deliver(inbound)
            else:
                accepted = await self._replays.deliver(
                    source, delivery, body, inbound, self._deliver
                )
        if accepted is None or accepted.repeat:
            return json_response({"status": "duplicate", "id": delivery}, 200)
        if isinstance(responder, CallbackResponder):
            return json_response({"status": "accepted", "id": delivery}, 202)
        with trio.move_on_after(self._reply_timeout):
            reply = await responder.wait()
            return json_response(reply_body(reply), reply_status(reply))
        raise ApiError(504, "timeout", f"no reply within {self._reply_timeout:g}s")
