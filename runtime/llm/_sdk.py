"""What the Anthropic and OpenAI providers share: retry accounting and error translation.

Both SDKs retry 408/409/429/5xx (Anthropic's 529 included), connection errors and timeouts
with exponential backoff and jitter, honouring `retry-after`. We keep that one retry layer and
only watch it: the SDKs number each attempt in the `x-stainless-retry-count` header, which an
httpx2 event hook reads into the statistics of the call in progress (a context variable, so
concurrent calls on one client never mix their counts).

The same hook feeds the provider's adaptive limiter (`actors.AdaptiveLimiter`): a 429, 503 or
529 halves how many calls run at once and pauses for its `retry-after`; the rate-limit
headers of every answer (`anthropic-ratelimit-requests-*`, `x-ratelimit-*-requests`) set how
many more may start before the provider's window resets. No fixed cap below the configured
maximum (`MODEL_CONCURRENCY`).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import attrs
import httpx2
import trio

from actors import AdaptiveLimiter, Slot
from runtime.llm.base import (
    ModelRequest,
    ModelResponse,
    OnText,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    Retries,
)

log = logging.getLogger("runtime.llm")


@attrs.define
class CallStatistics:
    retries: int = 0
    waited: float = 0.0
    last_request: float | None = None
    last_response: float | None = None
    last_answer: str | None = None
    slot: Slot | None = None

    def summary(self) -> Retries:
        return Retries(self.retries, round(self.waited, 3))


_current: contextvars.ContextVar[CallStatistics | None] = contextvars.ContextVar(
    "botcore_model_call", default=None
)


@contextmanager
def counting_retries(slot: Slot | None = None) -> Iterator[CallStatistics]:
    statistics = CallStatistics(slot=slot)
    token = _current.set(statistics)
    try:
        yield statistics
    finally:
        _current.reset(token)


def event_hooks(provider: str, limiter: AdaptiveLimiter | None = None) -> dict[str, list[Any]]:
    async def on_request(request: httpx2.Request) -> None:
        attempt = int(request.headers.get("x-stainless-retry-count", "0") or 0)
        statistics = _current.get()
        if statistics is None:
            return
        now = time.monotonic()
        if attempt and attempt > statistics.retries:
            # The wait: since the failed answer, or since the failed attempt began when there
            # was no answer (a refused or dropped connection).
            since = statistics.last_response or statistics.last_request or now
            statistics.retries = attempt
            statistics.waited += now - since
            log.warning(
                "%s: retry %d of %s %s after %s, waited %.2fs",
                provider,
                attempt,
                request.method,
                request.url.path,
                statistics.last_answer or "no answer (connection failed)",
                now - since,
            )
        statistics.last_request, statistics.last_response = now, None
        statistics.last_answer = None

    async def on_response(response: httpx2.Response) -> None:
        wait = response.headers.get("retry-after")
        answer = f"{response.status_code}{f' (retry-after {wait}s)' if wait else ''}"
        statistics = _current.get()
        if statistics is not None:
            # Logged once: with the retry it causes, or by whoever handles the final error.
            statistics.last_response = time.monotonic()
            statistics.last_answer = answer
        elif response.status_code >= 400:
            log.warning("%s answered %s", provider, answer)
        if limiter is not None:
            heed_limits(limiter, response, statistics.slot if statistics else None)

    return {"request": [on_request], "response": [on_response]}


OVERLOADED = (429, 503, 529)
"""Rate limited, unavailable, overloaded (Anthropic's 529): answers that say "fewer calls"."""


def heed_limits(limiter: AdaptiveLimiter, response: httpx2.Response, slot: Slot | None) -> None:
    """Tell `limiter` what a provider's answer says about its load and rate limits."""
    headers = response.headers
    if response.status_code in OVERLOADED:
        limiter.overloaded(slot, retry_after=_seconds(headers.get("retry-after")))
        return
    now = time.time()
    for prefix, limit, remaining, reset in (
        ("anthropic-ratelimit-requests-", "limit", "remaining", "reset"),
        ("x-ratelimit-", "limit-requests", "remaining-requests", "reset-requests"),
    ):
        left, reset_in = (
            headers.get(prefix + remaining),
            _reset_in(headers.get(prefix + reset), now),
        )
        whole = headers.get(prefix + limit, "")
        if left is not None and left.isdigit() and reset_in is not None:
            per_window = int(whole) if whole.isdigit() else None
            limiter.budget(int(left), reset_in, slot, per_window=per_window)
    for remaining, reset in (
        ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ):
        reset_in = _reset_in(headers.get(reset), now)
        if headers.get(remaining) == "0" and reset_in is not None:
            limiter.pause(reset_in)


_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?"
)


def _reset_in(value: str | None, now: float) -> float | None:
    """Seconds until a reset given as OpenAI's duration ("6m0s", "20ms") or Anthropic's RFC
    3339 time; None if unreadable."""
    if not value:
        return None
    if "T" in value:
        try:
            return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now)
        except ValueError:
            return None
    match = _DURATION.fullmatch(value.strip())
    if match is None or not any(match.groups()):
        return None
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


# What a provider call may raise besides the SDK's own errors: transport failures while the
# stream is read (a dropped connection), and malformed data (ValueError covers bad JSON).
TRANSPORT_ERRORS = (httpx2.HTTPError, httpx2.StreamError, ValueError)


def translate(
    provider: str, exc: Exception, statistics: CallStatistics, *, key_variable: str, model: str
) -> ProviderError:
    """An SDK or transport error as one of ours, with a message a person can act on."""
    status = getattr(exc, "status_code", None)
    retries = statistics.summary()
    count = retries.count
    detail = _detail(exc)
    after = f" after {count} retr{'y' if count == 1 else 'ies'}" if count else ""
    if status == 401:
        return ProviderRejected(
            f"{provider} rejected the API key (401); check {key_variable}", retries=retries
        )
    if status == 403:
        return ProviderRejected(f"{provider} refused access (403): {detail}", retries=retries)
    if status == 404:
        return ProviderRejected(
            f"{provider} does not know model {model!r} (404): {detail}", retries=retries
        )
    if status in (400, 413, 422):
        return ProviderRejected(
            f"{provider} rejected the request ({status}): {detail}", retries=retries
        )
    if status == 429:
        return ProviderUnavailable(f"{provider} is rate limiting us (429){after}", retries=retries)
    if isinstance(status, int):
        return ProviderUnavailable(
            f"{provider} failed ({status}){after}: {detail}", retries=retries
        )
    name = type(exc).__name__
    if _cut_off(exc):
        return ProviderUnavailable(
            f"{provider} cut the stream off mid-answer{after}", retries=retries
        )
    if "Timeout" in name:
        return ProviderUnavailable(f"{provider} did not answer in time{after}", retries=retries)
    if "Connection" in name:
        return ProviderUnavailable(f"cannot reach {provider}{after}: {detail}", retries=retries)
    if isinstance(exc, httpx2.TransportError | httpx2.StreamError):
        return ProviderUnavailable(
            f"{provider} cut the stream off mid-answer: {detail}", retries=retries
        )
    return ProviderUnavailable(
        f"{provider} sent a response we could not read: {detail}", retries=retries
    )


def _cut_off(exc: BaseException | None) -> bool:
    """A connection that dropped after the answer began (the SDKs may wrap it)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, httpx2.RemoteProtocolError | httpx2.ReadError | httpx2.StreamError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _detail(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


class SdkClient(Protocol):
    @property
    def base_url(self) -> httpx2.URL: ...

    async def close(self) -> None: ...


C = TypeVar("C", bound=SdkClient)


class SdkProvider(Generic[C]):
    """A provider on an official SDK: one retry layer (the SDK's), counted; errors translated.

    Subclasses build the SDK client and implement `_stream` (one streamed call).
    """

    label: ClassVar[str]  # "Anthropic", as people call the provider
    prefix: ClassVar[str]  # "anthropic", as model names are prefixed
    key_variable: ClassVar[str]
    sdk_errors: ClassVar[tuple[type[Exception], ...]]

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 256,
    ) -> None:
        self.model = model
        self.limiter = AdaptiveLimiter(max_concurrency)
        """How many calls run at once: learnt from the provider's answers, up to the maximum."""
        self._client = self._connect(
            event_hooks(self.label, self.limiter),
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    def _connect(self, hooks: dict[str, list[Any]], **options: Any) -> C:
        """The SDK's async client, given `options` (key, URL, timeout, retries), on an httpx2
        client that carries `hooks`."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return f"{self.prefix}:{self.model}"

    async def complete(
        self, request: ModelRequest, *, on_text: OnText | None = None
    ) -> ModelResponse:
        caught: tuple[type[Exception], ...] = (*self.sdk_errors, *TRANSPORT_ERRORS)
        async with self.limiter.slot() as slot:
            with counting_retries(slot) as statistics:
                try:
                    response = await self._stream(request, on_text)
                except caught as exc:
                    raise translate(
                        self.label,
                        exc,
                        statistics,
                        key_variable=self.key_variable,
                        model=self.model,
                    ) from exc
                return attrs.evolve(response, retries=statistics.summary())

    async def _stream(self, request: ModelRequest, on_text: OnText | None) -> ModelResponse:
        raise NotImplementedError

    async def reachable(self) -> str | None:
        """Whether the API's host accepts a TCP connection (no request, nothing billed)."""
        url = self._client.base_url
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with trio.fail_after(2):
                stream = await trio.open_tcp_stream(url.host, port)
            await stream.aclose()
        except (OSError, trio.TooSlowError) as exc:
            return f"cannot reach {self.label} at {url.host}:{port}: {exc or 'timed out'}"
        return None

    async def aclose(self) -> None:
        await self._client.close()
