"""The OpenAI-compatible chat API, driven by the official `openai` client as any caller would."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from runtime.host import HostConfig
from runtime.testing import Fail, FakeLLM, Text, local_config, make_workspace, serve_bot

TOKEN = "the-api-token"


@asynccontextmanager
async def chat_api(config: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with serve_bot(config) as bot:
        client = openai.AsyncOpenAI(base_url=f"{bot.url}/v1", api_key=TOKEN, max_retries=0)
        try:
            yield client
        finally:
            await client.close()


def hello(text: str = "hello") -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_a_plain_answer_comes_as_a_chat_completion(workspace: Path) -> None:
    async with chat_api(local_config(workspace, botcore_api_token=TOKEN)) as client:
        models = await client.models.list()
        completion = await client.chat.completions.create(model="bot", messages=hello())
    assert [model.id for model in models.data] == ["bot"]
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert "I'm TestBot" in (choice.message.content or "")
    assert completion.model == "bot" and completion.usage is not None
    assert completion.usage.total_tokens > 0


async def test_a_streamed_answer_arrives_in_chunks_that_add_up_to_the_answer(
    workspace: Path,
) -> None:
    async with chat_api(local_config(workspace, botcore_api_token=TOKEN)) as client:
        stream = await client.chat.completions.create(model="bot", messages=hello(), stream=True)
        chunks = [chunk async for chunk in stream]
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks]
    assert len([piece for piece in pieces if piece]) > 3  # streamed, not one lump
    db = sqlite3.connect(workspace / "engram.db")
    try:
        (stored,) = db.execute("SELECT reply FROM inbox WHERE channel = 'openai'").fetchone()
    finally:
        db.close()
    assert "".join(pieces) == json.loads(stored)["message"]  # the answer, whole
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}


async def test_the_sse_stream_ends_with_done(workspace: Path, client: httpx2.AsyncClient) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        response = await client.post(
            f"{bot.url}/v1/chat/completions",
            json={"model": "bot", "messages": hello(), "stream": True},
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"] == (
        "assistant"
    )


async def test_the_session_named_by_user_keeps_its_history_across_calls(
    workspace: Path, fake_llm: tuple[FakeLLM, str]
) -> None:
    model, url = fake_llm
    model.script(Text("noted"), Text("it is 4711"), Text("I do not know"))
    config = local_config(
        workspace, default_model="claude-x", anthropic_api_key="k", anthropic_base_url=url
    )
    async with chat_api(config) as client:
        await client.chat.completions.create(
            model="bot", messages=hello("my locker code is 4711"), user="ann"
        )
        # A client resending the whole conversation: only the last user message is new.
        again = [
            *hello("my locker code is 4711"),
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": "what is my locker code?"},
        ]
        answer = await client.chat.completions.create(model="bot", messages=again, user="ann")
        other = await client.chat.completions.create(
            model="bot", messages=hello("what is my locker code?"), user="bob"
        )
    assert answer.choices[0].message.content == "it is 4711"
    ann, bob = model.requests[1].body["messages"], model.requests[2].body["messages"]
    assert [m["role"] for m in ann] == ["user", "assistant", "user"]  # the bot's own history
    assert "4711" in json.dumps(ann[0]) and len(bob) == 1
    assert other.model_extra is not None and other.model_extra["botcore"]["session_id"] == "bob"


async def test_tool_use_is_visible_in_the_answer(workspace: Path) -> None:
    async with chat_api(local_config(workspace)) as client:
        stored = await client.chat.completions.create(
            model="bot", messages=hello("remember that the sky is green")
        )
        recalled = await client.chat.completions.create(
            model="bot", messages=hello("what do you remember about the sky?")
        )
    assert stored.choices[0].message.content == "Got it, I'll remember that."
    assert "the sky is green" in (recalled.choices[0].message.content or "")
    assert recalled.model_extra is not None and recalled.model_extra["botcore"]["tools_used"] == 1


async def test_errors_come_in_openais_shape(workspace: Path, fake_llm: tuple[FakeLLM, str]) -> None:
    model, url = fake_llm
    model.script(Fail(500, "the model is down"))
    config = local_config(
        workspace,
        botcore_api_token=TOKEN,
        default_model="claude-x",
        anthropic_api_key="k",
        anthropic_base_url=url,
        model_max_retries=0,
    )
    async with chat_api(config) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="gpt-4o", messages=hello())
        with pytest.raises(openai.BadRequestError) as empty:
            await client.chat.completions.create(model="bot", messages=[])
        with pytest.raises(openai.BadRequestError) as not_user:
            await client.chat.completions.create(
                model="bot", messages=[{"role": "assistant", "content": "hi"}]
            )
        with pytest.raises(openai.InternalServerError) as broken:
            await client.chat.completions.create(model="bot", messages=hello())
        wrong = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="bot", messages=hello())
        await wrong.close()
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    assert unknown.value.type == "invalid_request_error"
    assert "'bot'" in unknown.value.message  # names the bots there are
    assert empty.value.param == "messages" and not_user.value.param == "messages"
    assert broken.value.status_code == 502 and broken.value.type == "server_error"
    assert broken.value.code == "provider"


async def test_the_model_names_the_bot_on_a_host_of_several(tmp_path: Path) -> None:
    alice = local_config(make_workspace(tmp_path / "alice", "- **Name:** Alice\n"))
    bob = local_config(make_workspace(tmp_path / "bob", "- **Name:** Bob\n"))
    host = HostConfig(alice.process, {"alice": alice.bot, "bob": bob.bot})
    async with chat_api(host) as client:
        models = await client.models.list()
        to_bob = await client.chat.completions.create(model="bob", messages=hello())
    assert sorted(model.id for model in models.data) == ["alice", "bob"]
    assert "I'm Bob" in (to_bob.choices[0].message.content or "")
