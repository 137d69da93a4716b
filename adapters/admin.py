"""The admin API: probes (`/healthz`, `/readyz`), Prometheus `/metrics`, and the bot's memory
(`/api/v1/memory/...`, BotCoreBot's memory API), as routes on the HTTP server shell."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from quart import Response

from adapters._web import ApiError, invalid, json_response, read_json, strict
from adapters.base import Health, Route


@attrs.frozen
class RecallRequest:
    query: str
    limit: int = 5
    types: list[str] | None = None


@attrs.frozen
class StoreRequest:
    content: str
    type: str = "factual"
    importance: float = 0.5
    metadata: dict[str, Any] = attrs.field(factory=dict)


class MemoryEndpoints(Protocol):
    """The bot's memory as the HTTP API offers it. Invalid input raises `ValueError` with a
    message for the client."""

    async def recall(
        self, query: str, limit: int, types: Sequence[str] | None
    ) -> list[dict[str, Any]]: ...

    async def store(
        self, content: str, type: str, importance: float, metadata: Mapping[str, Any]
    ) -> int: ...

    async def consolidate(self) -> dict[str, Any]: ...

    async def stats(self) -> dict[str, Any]: ...


def probe_routes(health: Health | None, metrics: Callable[[], str] | None) -> list[Route]:
    """The process's probes and metrics: public (no token) for orchestrators."""

    async def healthz() -> Response:
        return json_response({"status": "ok"}, 200)

    async def readyz() -> Response:
        if health is None:
            return json_response({"status": "ok"}, 200)
        status, body = await health()
        return json_response(body, status)

    async def prometheus() -> Response:
        if metrics is None:
            raise ApiError(404, "not_found", "metrics are not enabled")
        return Response(metrics(), status=200, content_type="text/plain; version=0.0.4")

    return [
        Route("GET", "/healthz", healthz, public=True),
        Route("GET", "/readyz", readyz, public=True),
        Route("GET", "/metrics", prometheus),
    ]


def memory_routes(memory: MemoryEndpoints) -> list[Route]:
    """One bot's memory API (mounted under the bot's prefix on a host of several)."""

    async def recall() -> Response:
        asked = await read_json(RecallRequest, strict)
        if not asked.query.strip():
            raise ApiError(400, "invalid_request", "'query' must not be empty")
        if not 1 <= asked.limit <= 100:
            raise ApiError(400, "invalid_request", "'limit' must be between 1 and 100")
        started = time.perf_counter()
        with invalid():
            results = await memory.recall(asked.query, asked.limit, asked.types)
        took = round((time.perf_counter() - started) * 1000, 2)
        return json_response({"results": results, "took_ms": took}, 200)

    async def store() -> Response:
        given = await read_json(StoreRequest, strict)
        with invalid():
            memory_id = await memory.store(
                given.content, given.type, given.importance, given.metadata
            )
        return json_response({"id": memory_id, "success": True}, 200)

    async def consolidate() -> Response:
        return json_response(await memory.consolidate(), 200)

    async def stats() -> Response:
        return json_response(await memory.stats(), 200)

    return [
        Route("POST", "/api/v1/memory/recall", recall),
        Route("POST", "/api/v1/memory/store", store),
        Route("POST", "/api/v1/memory/consolidate", consolidate),
        Route("GET", "/api/v1/memory/stats", stats),
    ]
