"""Token counts: exact where they must be, estimated (without tiktoken's ranks) elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import tiktoken

from runtime.testing import local_config, open_runtime
from runtime.testing.recall_set import RECALL_SET
from runtime.tokens import ENCODING, TokenCounter, estimate
from runtime.tools import ToolRegistry, builtin_tools


def corpus() -> list[str]:
    data = json.loads(RECALL_SET.read_text(encoding="utf-8"))
    texts = [m["content"] for m in data["memories"]] + [q["question"] for q in data["questions"]]
    texts += [
        json.dumps(spec.parameters) + spec.description
        for spec in ToolRegistry(builtin_tools()).specs()
    ]
    return [
        *texts,
        "A minha irmã Ana mora em Lisboa e adora pastéis de nata.",
        "今日はとても良い天気ですね。散歩に行きましょう。",
        "Привет! Как дела? Завтра встречаемся в парке.",
    ]


def test_the_estimate_stays_close_to_cl100k_base() -> None:
    encoding = tiktoken.get_encoding(ENCODING)
    texts = corpus()
    exact = [len(encoding.encode(text)) for text in texts]
    ratios = sorted(estimate(text) / count for text, count in zip(texts, exact, strict=True))
    assert 0.95 <= sum(map(estimate, texts)) / sum(exact) <= 1.12
    assert ratios[len(ratios) // 20] >= 0.8 and ratios[-len(ratios) // 20] <= 1.3


def test_an_estimating_counter_truncates_within_its_count() -> None:
    counter = TokenCounter(exact=False)
    for text in [*corpus(), "x" * 500, "今日は" * 50]:
        cut = counter.truncate(text, 5)
        assert text.startswith(cut) and counter.count(cut) <= 5
    assert counter.truncate("short", 5) == "short"


async def test_a_bot_off_openai_never_loads_the_ranks(workspace: Path) -> None:
    async with open_runtime(local_config(workspace)) as runtime:
        counter = runtime.services.tokens
        assert not counter.exact
        counter.count("hello there")
        assert counter._encoding is None  # the 47 MiB of ranks stay unloaded
