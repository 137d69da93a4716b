"""The model-call limit adapts to the provider: the real SDKs against a rate-limited fake."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest
import trio

from runtime.llm._sdk import _reset_in
from runtime.testing import FakeLLM, RateLimit, local_config, open_local, serve_bot


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_a_burst_over_the_rate_limit_is_paced_by_its_headers_not_refused(
    provider: str, workspace: Path, client: httpx2.AsyncClient
) -> None:
    fake = FakeLLM(rate_limit=RateLimit(requests=10, per=1.0))
    async with open_local(fake) as url:
        if provider == "anthropic":
            settings = {
                "default_model": "claude-t",
                "anthropic_api_key": "k",
                "anthropic_base_url": url,
            }
        else:
            settings = {
                "default_model": "gpt-t",
                "openai_api_key": "k",
                "openai_base_url": f"{url}/v1",
            }
        config = local_config(workspace, model_max_retries=6, **settings)
        answers: list[httpx2.Response] = []
        async with serve_bot(config) as bot:

            async def say(n: int) -> None:
                answers.append(
                    await client.post(
                        f"{bot.url}/api/message", json={"message": f"hi {n}", "session_id": f"s{n}"}
                    )
                )

            async with trio.open_nursery() as nursery:
                for n in range(40):
                    nursery.start_soon(say, n)
    assert sorted(a.json()["message"] for a in answers) == sorted(f"ok: hi {n}" for n in range(40))
    # 40 calls at once against 10 a second: a fixed cap of 16 has 6 refused at once and the
    # SDK's retries keep hitting the limit; told what is left, the limiter waits instead.
    assert fake.refused <= 4, fake.refused  # 42 with a fixed cap of 16 and no feedback


async def test_overloaded_answers_shrink_the_limit_and_successes_grow_it_back(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    from runtime.llm.anthropic import AnthropicProvider
    from runtime.llm.base import ModelRequest, UserText
    from runtime.testing import Fail, Text

    fake = FakeLLM()
    fake.script(Fail(529, "overloaded", retry_after=0), Text("fine"))
    async with open_local(fake) as url:
        provider = AnthropicProvider("claude-t", api_key="k", base_url=url, max_concurrency=64)
        before = provider.limiter.statistics().limit
        request = ModelRequest(system="", context="", messages=(UserText("hi"),), max_tokens=10)
        response = await provider.complete(request)
        await provider.aclose()
    assert response.text == "fine" and response.retries.count == 1
    assert provider.limiter.statistics().overloads == 1
    assert provider.limiter.statistics().limit < before


def test_reset_times_are_read_in_both_providers_formats() -> None:
    now = time.time()
    assert _reset_in("6m0s", now) == 360.0
    assert _reset_in("20ms", now) == pytest.approx(0.02)
    assert _reset_in("1h2m3.5s", now) == 3723.5
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 30))
    assert 28 <= (_reset_in(stamp, now) or 0) <= 31
    assert _reset_in("soon", now) is None and _reset_in(None, now) is None
