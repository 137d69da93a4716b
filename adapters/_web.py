"""What every channel's HTTP routes share: JSON errors, strict JSON bodies, refusals.

A private module of `adapters`: the server shell (`adapters.http`) and the channels that
mount routes on it use it, so no channel imports another.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, TypeVar

import cattrs
from quart import Response, request

from adapters._json import InvalidJson, decode_json
from adapters.base import Busy, KeyReserved, KeyReused, Reply, Unavailable

log = logging.getLogger("adapters.http")

T = TypeVar("T")

_ERROR_STATUS = {
    "provider": 502,
    "timeout": 504,
    "tool_rounds": 422,
    "crashed": 500,
    "stopped": 503,
    "internal": 500,
}


class ApiError(Exception):
    """An error the client gets as `{"error": {"type", "message"}}` with `status`."""

    def __init__(
        self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, dict(headers or {})


def reply_status(reply: Reply) -> int:
    return 200 if reply.error is None else _ERROR_STATUS.get(reply.error.kind, 500)


converter = cattrs.Converter()


def _exactly(kind: type) -> Callable[[object, type], object]:
    """cattrs' default turns 42 into "42" and "no" into True; JSON input must not."""

    def structure(value: object, _: type) -> object:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return structure


def _number(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


converter.register_structure_hook(str, _exactly(str))
converter.register_structure_hook(bool, _exactly(bool))
converter.register_structure_hook(int, _exactly(int))
converter.register_structure_hook(float, _number)
strict = converter.copy(forbid_extra_keys=True)
"""For JSON bodies: an unknown (mistyped) field is an error, named in the answer."""


@contextlib.contextmanager
def invalid() -> Iterator[None]:
    """A `ValueError` from the bot (an unknown memory type...) is the client's 400."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """The runtime's refusals (`Busy`, `Unavailable`, `KeyReused`, `KeyReserved`) as HTTP
    errors."""
    try:
        yield
    except Busy as exc:
        retry = str(max(1, round(exc.retry_after)))
        raise ApiError(429, "busy", str(exc), {"Retry-After": retry}) from exc
    except Unavailable as exc:
        raise ApiError(503, "unavailable", str(exc), {"Retry-After": "5"}) from exc
    except KeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc)) from exc
    except KeyReserved as exc:
        raise ApiError(400, "idempotency_key_reserved", str(exc)) from exc


async def read_json(model: type[T], using: cattrs.Converter = converter) -> T:
    """The JSON body as `model`, or a 4xx naming what is wrong (the content type is checked
    for every POST by the server shell)."""
    data = await read_body_json()
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    try:
        return using.structure(data, model)
    except cattrs.ClassValidationError as exc:
        # "required field missing @ $.message" → "'message': required field missing"
        problems = "; ".join(
            f"'{where}': {what}" if where else what
            for what, _, where in (m.partition(" @ $.") for m in cattrs.transform_error(exc))
        )
        raise ApiError(400, "invalid_request", problems) from None


async def read_body_json() -> object:
    raw = await request.get_data(as_text=False)
    assert isinstance(raw, bytes)
    try:
        return decode_json(raw)
    except InvalidJson as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None


def json_response(
    body: Mapping[str, Any], status: int, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json",
    )


def log_refused(status: int, kind: str, message: str) -> None:
    """One line per refused request, for operators (the client got the same message)."""
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "refused %s %s from %s: %d %s: %s",
        request.method,
        request.path,
        request.remote_addr,
        status,
        kind,
        message,
    )


def event_stream(events: AsyncIterator[bytes]) -> Response:
    stream = Response(
        events,
        status=200,
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # The events bound themselves by the reply timeout; Quart's RESPONSE_TIMEOUT (60 s)
    # would cut a longer turn off mid-stream, an incomplete body and no `done`.
    stream.timeout = None
    return stream
