from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx2
import pytest

from runtime.logs import JsonFormatter, RedactSecrets
from runtime.testing import bot_process, local_config, serve_bot


async def test_metrics_count_turns_tokens_and_sessions(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace, botcore_api_token="tok")) as bot:
        auth = {"Authorization": "Bearer tok"}
        for text in ("hi", "remember metrics matter"):
            await client.post(
                f"{bot.url}/api/message", json={"message": text, "session_id": "m"}, headers=auth
            )
        unauthorized = await client.get(f"{bot.url}/metrics")
        scraped = await client.get(f"{bot.url}/metrics", headers=auth)
    assert unauthorized.status_code == 401
    assert scraped.headers["content-type"].startswith("text/plain")
    lines = scraped.text.splitlines()
    assert 'botcore_turns_total{outcome="ok"} 2' in lines
    assert "botcore_sessions_live 1" in lines
    assert "botcore_model_call_seconds_count 3" in lines  # 1 + 2 calls (tool round)
    assert any(line.startswith('botcore_model_tokens_total{kind="input"} ') for line in lines)


async def test_unauthenticated_clients_are_rate_limited(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace, client_rate_per_minute=6)) as bot:
        statuses = [
            (await client.post(f"{bot.url}/api/message", json={"message": "hi"})).status_code
            for _ in range(3)
        ]
        limited = await client.post(f"{bot.url}/api/message", json={"message": "hi"})
    assert statuses == [200, 429, 429]  # a burst of one at 6 a minute
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


async def test_a_session_rate_limit_refuses_with_retry_after(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    config = local_config(workspace, session_rate_per_minute=1, client_rate_per_minute=0)
    async with serve_bot(config) as bot:
        first = await client.post(
            f"{bot.url}/api/message", json={"message": "hi", "session_id": "s"}
        )
        second = await client.post(
            f"{bot.url}/api/message", json={"message": "hi", "session_id": "s"}
        )
        other = await client.post(
            f"{bot.url}/api/message", json={"message": "hi", "session_id": "t"}
        )
    assert first.status_code == 200 and other.status_code == 200
    assert second.status_code == 429 and "too fast" in second.json()["error"]["message"]


def test_secrets_are_redacted_from_messages_and_tracebacks() -> None:
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "calling with key %s", ("sk-ant-SECRET",), None
    )
    try:
        raise RuntimeError("bad key sk-ant-SECRET")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactSecrets(["sk-ant-SECRET", None, ""]).filter(record)
    rendered = JsonFormatter().format(record)
    assert "sk-ant-SECRET" not in rendered
    entry = json.loads(rendered)
    assert entry["message"] == "calling with key [redacted]"
    assert "bad key [redacted]" in entry["exception"]


@pytest.mark.parametrize("secret_name", ["ANTHROPIC_API_KEY"])
async def test_json_logs_carry_session_and_turn_and_never_the_key(
    workspace: Path, secret_name: str
) -> None:
    env = {"LOG_FORMAT": "json", "DEFAULT_MODEL": "offline", secret_name: "sk-ant-do-not-print"}
    async with bot_process(workspace, env) as bot, httpx2.AsyncClient() as client:
        await client.post(f"{bot.url}/api/message", json={"message": "hi", "session_id": "j"})
        bot.terminate()
        assert await bot.wait() == 0
    entries = [json.loads(line) for line in bot.log.splitlines() if line.startswith("{")]
    turn = next(e for e in entries if e.get("outcome") == "ok")
    assert turn["session"] == "http:j" and turn["turn"] and turn["duration_ms"] >= 0
    assert "sk-ant-do-not-print" not in bot.log
