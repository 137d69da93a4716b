"""Anthropic and OpenAI providers: the real SDKs over HTTP against the fake servers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx2
import pytest
import trio

from runtime.config import Config
from runtime.testing import (
    CutStream,
    Fail,
    FakeLLM,
    RecordedRequest,
    Text,
    ToolUse,
    free_port,
    local_config,
    serve_bot,
    serve_local,
)

PROVIDERS = ["anthropic", "openai"]


@attrs.frozen
class Setup:
    provider: str
    fake: FakeLLM
    config: Config

    def requests(self) -> list[RecordedRequest]:
        return self.fake.requests_for(self.provider)


@pytest.fixture(params=PROVIDERS)
async def setup(
    request: pytest.FixtureRequest, workspace: Path, fake_llm: tuple[FakeLLM, str]
) -> AsyncIterator[Setup]:
    fake, url = fake_llm
    provider = request.param
    settings: dict[str, Any] = {"model_max_retries": 2, "max_tool_rounds": 3}
    if provider == "anthropic":
        settings |= {
            "default_model": "claude-test",
            "anthropic_api_key": "sk-ant-dummy",
            "anthropic_base_url": url,
        }
    else:
        settings |= {
            "default_model": "gpt-test",
            "openai_api_key": "sk-dummy",
            "openai_base_url": f"{url}/v1",
        }
    yield Setup(provider, fake, local_config(workspace, **settings))


async def say(
    client: httpx2.AsyncClient, url: str, text: str, session: str = "s"
) -> httpx2.Response:
    return await client.post(f"{url}/api/message", json={"message": text, "session_id": session})


def tool_exchange(
    setup: Setup, request: RecordedRequest
) -> tuple[list[str], list[tuple[str, str, bool]]]:
    """The tool-call ids of the last assistant message and the (id, content, is_error) results
    that follow it, read from a request in the provider's own wire format."""
    messages = request.body["messages"]
    if setup.provider == "anthropic":
        calls = [b["id"] for b in messages[-2]["content"] if b["type"] == "tool_use"]
        results = [(b["tool_use_id"], b["content"], b["is_error"]) for b in messages[-1]["content"]]
        return calls, results
    assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    calls = [c["id"] for c in messages[assistant]["tool_calls"]]
    results = [
        (m["tool_call_id"], m["content"], m["content"].startswith("ERROR:"))
        for m in messages[assistant + 1 :]
    ]
    return calls, results


async def test_a_tool_call_then_an_answer_reaches_the_user_with_the_result_id_matched(
    setup: Setup, client: httpx2.AsyncClient
) -> None:
    setup.fake.script(
        ToolUse(("memory_store", {"content": "my cat is called Miso"})), Text("Noted: Miso.")
    )
    async with serve_bot(setup.config) as bot:
        response = await say(client, bot.url, "remember my cat is called Miso")
        recalled = await say(client, bot.url, "what about my cat", session="other")
    body = response.json()
    assert response.status_code == 200 and body["message"] == "Noted: Miso."
    assert body["metadata"]["tools_used"] == 1
    assert body["metadata"]["model"] == setup.config.default_model
    assert body["metadata"]["usage"]["input_tokens"] > 0
    first, second = setup.requests()[:2]
    calls, results = tool_exchange(setup, second)
    assert len(calls) == 1 and [r[0] for r in results] == calls
    assert '"stored": true' in results[0][1] and results[0][2] is False
    # The tool really ran: the memory is there for another session.
    assert recalled.json()["metadata"]["memories_recalled"] >= 1
    assert {
        t["name"] if setup.provider == "anthropic" else t["function"]["name"]
        for t in first.body["tools"]
    } >= {"memory_store", "filesystem_read"}


async def test_streaming_deltas_arrive_before_done(
    setup: Setup, client: httpx2.AsyncClient
) -> None:
    setup.fake.script(
        ToolUse(("memory_store", {"content": "Miso"})), Text("I will remember Miso for you.")
    )
    kinds: list[str] = []
    done: dict[str, Any] = {}
    async with (
        serve_bot(setup.config) as bot,
        client.stream(
            "POST", f"{bot.url}/api/message", json={"message": "remember Miso", "stream": True}
        ) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
            elif line.startswith("data: ") and kinds[-1] == "done":
                done = json.loads(line[6:])
    assert kinds[0] == "tool" and kinds[-1] == "done"
    assert kinds.count("delta") >= 5 and kinds.index("delta") < kinds.index("done")
    assert done["message"] == "I will remember Miso for you."
    assert done["metadata"]["tools_used"] == 1


async def test_two_tool_calls_in_one_response_both_run_and_answer_in_order(
    setup: Setup, client: httpx2.AsyncClient
) -> None:
    setup.fake.script(
        ToolUse(
            ("filesystem_write", {"path": "a.txt", "content": "A"}),
            ("filesystem_read", {"path": "a.txt"}),
        ),
        Text("Wrote and read it."),
    )
    async with serve_bot(setup.config) as bot:
        response = await say(client, bot.url, "write then read")
    assert response.json()["metadata"]["tools_used"] == 2
    calls, results = tool_exchange(setup, setup.requests()[1])
    assert [r[0] for r in results] == calls and len(calls) == 2
    assert results[1][1] == "A"
    assert (setup.config.workspace / "a.txt").read_text() == "A"


async def test_a_failing_tool_goes_back_flagged_as_an_error(
    setup: Setup, client: httpx2.AsyncClient
) -> None:
    setup.fake.script(
        ToolUse(("filesystem_read", {"path": "../etc/passwd"})), Text("I may not read that.")
    )
    async with serve_bot(setup.config) as bot:
        response = await say(client, bot.url, "read the passwords")
    assert response.status_code == 200 and response.json()["message"] == "I may not read that."
    _, results = tool_exchange(setup, setup.requests()[1])
    assert results[0][2] is True and "'..' is not allowed" in results[0][1]


@pytest.mark.parametrize("status", [429, 529])
async def test_rate_limits_and_overload_are_retried_and_counted(
    setup: Setup, client: httpx2.AsyncClient, status: int
) -> None:
    setup.fake.script(Fail(status, "slow down", retry_after=0.2), Text("fine now"))
    async with serve_bot(setup.config) as bot:
        response = await say(client, bot.url, "hi")
    assert response.status_code == 200 and response.json()["message"] == "fine now"
    usage = response.json()["metadata"]["usage"]
    assert usage["retries"] == 1
    assert 150 <= usage["retry_wait_ms"] < 2000  # retry-after 0.2 s was honoured
    assert len(setup.requests()) == 2


async def test_server_errors_until_retries_run_out_give_a_clear_error_and_the_session_lives(
    setup: Setup, client: httpx2.AsyncClient
) -> None:
    setup.fake.script(*[Fail(500, "kaput", retry_after=0.01)] * 3, Text("back again"))
    async with serve_bot(setup.config) as bot:
        failed = await say(client, bot.url, "hi")
        after = await say(client, bot.url, "hi again")
    assert failed.status_code == 502
    error = failed.json()["error"]
    assert error["type"] == "provider" and "(500) after 2 retries" in error["message"]
    assert failed.json()["metadata"]["usage"]["retries"] == 2
    assert after.status_code == 200 and after.json()["message"] == "back again"


async def test_a_bad_key_is_said_plainly_and_not_retried(
    setup: Setup, client: httpx2.AsyncClient
) -> None:
    setup.fake.script(Fail(401, "invalid x-api-key"))
    async with serve_bot(setup.config) as bot:
        response = await say(client, bot.url, "hi")
    assert response.status_code == 502
    variable = "ANTHROPIC_API_KEY" if setup.provider == "anthropic" else "OPENAI_API_KEY"
    assert f"rejected the API key (401); check {variable}" in response.json()["error"]["message"]
    assert "dummy" not in response.text
    assert len(setup.requests()) == 1


async def test_a_stream_cut_in_the_middle_is_a_clear_error(
    setup: Setup, client: httpx2.AsyncClient
) -> None:
    setup.fake.script(CutStream(after=3))
    async with serve_bot(setup.config) as bot:
        response = await say(client, bot.url, "hi")
        after = await say(client, bot.url, "and now?")
    assert response.status_code == 502
    assert "cut the stream off mid-answer" in response.json()["error"]["message"]
    assert after.status_code == 200


async def test_the_tool_round_limit_stops_a_model_that_never_answers(
    setup: Setup, client: httpx2.AsyncClient
) -> None:
    setup.fake.script(*[ToolUse(("filesystem_list", {}))] * 5)
    async with serve_bot(setup.config) as bot:
        response = await say(client, bot.url, "loop forever")
    assert response.status_code == 422
    assert "still calling tools after 3 rounds" in response.json()["error"]["message"]
    assert len(setup.requests()) == 4  # the first call and three rounds of results


async def test_fallback_to_the_second_model_when_the_first_stays_down(
    workspace: Path, client: httpx2.AsyncClient, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(*[Fail(503, "down", retry_after=0.01)] * 2, Text("from the fallback"))
    config = local_config(
        workspace,
        default_model="claude-primary",
        fallback_models="openai:gpt-backup",
        anthropic_api_key="a",
        anthropic_base_url=url,
        openai_api_key="o",
        openai_base_url=f"{url}/v1",
        model_max_retries=1,
    )
    async with serve_bot(config) as bot:
        response = await say(client, bot.url, "hi")
    body = response.json()
    assert response.status_code == 200 and body["message"] == "from the fallback"
    assert body["metadata"]["model"] == "gpt-backup"
    assert body["metadata"]["usage"]["retries"] == 1
    assert [r.protocol for r in fake.requests] == ["anthropic", "anthropic", "openai"]


async def test_the_stable_prompt_is_marked_for_anthropic_prompt_caching(
    workspace: Path, client: httpx2.AsyncClient, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    config = local_config(
        workspace, default_model="claude-x", anthropic_api_key="k", anthropic_base_url=url
    )
    async with serve_bot(config) as bot:
        response = await say(client, bot.url, "hi")
    system = fake.requests[0].body["system"]
    assert system[0]["cache_control"] == {"type": "ephemeral"} and "TestBot" in system[0]["text"]
    assert "cache_control" not in system[1] and "What you remember" in system[1]["text"]
    assert response.json()["metadata"]["usage"]["cache_read_tokens"] > 0


def nothing_listens(workspace: Path, **settings: Any) -> tuple[Config, int]:
    """A bot whose Anthropic endpoint is a free port of 127.0.0.1: down until a test serves it."""
    port = free_port()
    config = local_config(
        workspace,
        default_model="claude-x",
        anthropic_api_key="k",
        anthropic_base_url=f"http://127.0.0.1:{port}",
        **settings,
    )
    return config, port


async def test_a_provider_that_goes_down_gives_clear_errors_and_recovers_when_back(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    config, port = nothing_listens(workspace, model_max_retries=1)
    async with serve_bot(config) as bot:
        down = await say(client, bot.url, "anyone there?")
        fake = FakeLLM()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_local, fake, "127.0.0.1", port)
            back = await say(client, bot.url, "and now?")
            nursery.cancel_scope.cancel()
    assert down.status_code == 502
    assert "cannot reach Anthropic after 1 retry" in down.json()["error"]["message"]
    assert back.status_code == 200 and back.json()["message"] == "ok: and now?"


async def test_readiness_says_when_the_model_cannot_be_reached(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    config, port = nothing_listens(workspace)
    async with serve_bot(config) as bot:
        down = await client.get(f"{bot.url}/readyz")
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_local, FakeLLM(), "127.0.0.1", port)
            up = await client.get(f"{bot.url}/readyz")
            nursery.cancel_scope.cancel()
    assert down.status_code == 503
    assert f"cannot reach Anthropic at 127.0.0.1:{port}" in down.json()["reason"]
    assert up.status_code == 200 and up.json()["model"] == "anthropic:claude-x"


async def test_the_openai_request_is_sent_as_built_with_the_key_and_streaming_usage(
    workspace: Path, fake_llm: tuple[FakeLLM, str], client: httpx2.AsyncClient
) -> None:
    """The body skips the SDK's request transform: it must still be the wire form."""
    fake, url = fake_llm
    config = local_config(
        workspace, default_model="gpt-test", openai_api_key="sk-dummy", openai_base_url=f"{url}/v1"
    )
    async with serve_bot(config) as bot:
        response = await say(client, bot.url, "hello")
    assert response.json()["message"] == "ok: hello"
    (request,) = fake.requests_for("openai")
    assert request.headers["authorization"] == "Bearer sk-dummy"
    assert request.body["stream"] is True and request.body["stream_options"] == {
        "include_usage": True
    }
    assert request.body["messages"][0]["role"] == "system"
    assert request.body["messages"][-1] == {"role": "user", "content": "hello"}
    assert all(tool["type"] == "function" for tool in request.body["tools"])
