"""A fallback after a model failed mid-answer: the client is told to discard the partial text."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2

from runtime.testing import CutStream, FakeLLM, Text, local_config, serve_bot


async def test_a_fallback_after_a_cut_stream_withdraws_the_partial_text_over_sse(
    workspace: Path, client: httpx2.AsyncClient, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(CutStream("half an answer that never ends", after=4), Text("the whole answer"))
    config = local_config(
        workspace,
        default_model="claude-primary",
        fallback_models="openai:gpt-backup",
        anthropic_api_key="a",
        anthropic_base_url=url,
        openai_api_key="o",
        openai_base_url=f"{url}/v1",
        model_max_retries=0,
    )
    events: list[tuple[str, dict[str, object]]] = []
    async with (
        serve_bot(config) as bot,
        client.stream(
            "POST",
            f"{bot.url}/api/message",
            json={"message": "hi"},
            headers={"Accept": "text/event-stream"},
        ) as response,
    ):
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [kind for kind, _ in events]
    assert "discard" in kinds and kinds[-1] == "done"
    cut = kinds.index("discard")
    partial = "".join(str(data["text"]) for kind, data in events[:cut] if kind == "delta")
    assert partial and events[cut][1] == {"text": partial}
    # A client that drops the withdrawn text ends with exactly the answer.
    shown = ""
    for kind, data in events:
        if kind == "delta":
            shown += str(data["text"])
        elif kind == "discard":
            shown = shown.removesuffix(str(data["text"]))
    assert shown == "the whole answer" == events[-1][1]["message"]
