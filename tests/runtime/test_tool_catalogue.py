"""Many tools within the token budget: a compact catalogue, `tool_search`, relevant tools."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from runtime.botcore import Bot, Identity
from runtime.llm import ModelRequest, ToolCall, ToolResult, UserText
from runtime.prompt import build_request
from runtime.scaffold import scaffold
from runtime.session import Phase, ToolsFinished, Turn, TurnLimits, step
from runtime.testing import FakeLLM, local_config, serve_bot
from runtime.testing.tool_choice import many_tools, score_tool_choice
from runtime.tokens import TokenCounter
from runtime.tools import ToolContext, ToolExecutor, ToolRegistry, builtin_tools
from runtime.tools.catalogue import SEARCH, loaded, rank, search_tool

IDENTITY = Identity(name="TestBot", identity="- **Name:** TestBot")


def _request(registry: ToolRegistry, text: str, budget: int = 2000) -> ModelRequest:
    request, tokens = build_request(
        IDENTITY, [], [], text, registry.specs(), budget=budget, counter=TokenCounter()
    )
    assert tokens.total <= budget
    return request


async def test_with_fifty_tools_each_prompt_stays_within_budget_and_the_tool_is_found(
    workspace: Path,
) -> None:
    registry = many_tools()
    assert len(registry) >= 50
    score = await score_tool_choice(local_config(workspace), registry)
    assert max(score.tokens) <= score.budget
    assert score.found >= 0.95, score.misses
    assert score.searched > 0  # some were found only through tool_search


async def test_without_the_catalogue_fifty_tools_crowd_the_budget_and_tools_go_missing(
    workspace: Path,
) -> None:
    score = await score_tool_choice(local_config(workspace), many_tools(search=False))
    assert score.found < 0.5  # what the catalogue fixes: the last tools never reach the model


def test_a_bot_with_only_the_builtin_tools_gets_all_of_them_and_no_search() -> None:
    registry = ToolRegistry(builtin_tools())
    registry.add(search_tool(registry))
    request = _request(registry, "hello")
    assert [t.name for t in request.tools] == [t.name for t in builtin_tools()]
    assert "More tools" not in request.system


def test_with_many_tools_the_relevant_ones_go_in_full_and_the_rest_by_name() -> None:
    request = _request(many_tools(), "Will it rain in Lyon this weekend?")
    names = [t.name for t in request.tools]
    assert names[0] == SEARCH and "weather__get_forecast" in names
    assert "github__merge_pull_request" not in names
    assert "- github__: list_issues, create_issue" in request.system


def test_ranking_prefers_the_tools_whose_words_the_message_uses() -> None:
    specs = many_tools().specs()
    assert rank(specs, "remember that I like tea")[0].name == "memory_store"
    assert rank(specs, "git commit please")[0].name == "git__git_commit"
    assert rank(specs, "zzz qqq") == []


async def test_tool_search_loads_definitions_the_next_answer_can_call(workspace: Path) -> None:
    registry = many_tools()
    call = ToolCall("1", SEARCH, {"query": "send email"})
    async with await Bot.open(workspace) as bot:
        result = await ToolExecutor(registry).run(call, ToolContext(bot, "s"))
    assert result.content.startswith("Loaded, callable now:\n- mail__send_email: ")
    specs = loaded(registry, [call], [result])
    assert specs[0].name == "mail__send_email"
    failed = ToolResult("1", SEARCH, "invalid arguments", True)
    assert loaded(registry, [call], [failed]) == ()

    request = ModelRequest("system", "", (UserText("email Bob"),), tools=(specs[1],))
    turn = Turn("t", "s", "email Bob", phase=Phase.DISPATCHING_TOOLS, request=request)
    after, _ = step(turn, ToolsFinished((result,), specs), TurnLimits())
    assert after.request is not None
    names = [t.name for t in after.request.tools]
    assert names[0] == specs[1].name and len(names) == len(set(names)) == len(specs)
    assert "mail__send_email" in names


@pytest.mark.parametrize("budget", [600, 1000, 2000])
def test_the_catalogue_never_pushes_the_prompt_over_the_budget(budget: int) -> None:
    _request(many_tools(), "Schedule a meeting with Ana on Friday", budget=budget)


@pytest.mark.parametrize("schedule_tool", [True, False])
async def test_a_new_bot_gets_every_builtin_tool_in_full_and_schedule_unless_turned_off(
    tmp_path: Path, fake_llm: tuple[FakeLLM, str], client: httpx2.AsyncClient, schedule_tool: bool
) -> None:
    workspace = tmp_path / "ada"
    scaffold(workspace)  # what `botcorebot init` writes: an identity of usual size
    fake, url = fake_llm
    config = local_config(
        workspace,
        default_model="claude-x",
        anthropic_api_key="k",
        anthropic_base_url=url,
        schedule_tool=schedule_tool,
    )
    async with serve_bot(config) as bot:
        response = await client.post(f"{bot.url}/api/message", json={"message": "hello"})
    assert response.status_code == 200, response.text
    (request,) = fake.requests
    sent = [t["name"] for t in request.body["tools"]]
    expected = [t.name for t in builtin_tools()] + (["schedule"] if schedule_tool else [])
    assert sent == expected  # in full, with no tool_search and no catalogue
    assert "More tools" not in json.dumps(request.body["system"])
    assert response.json()["metadata"]["prompt_tokens"]["total"] <= 2000


async def test_rules_left_out_of_a_definition_are_still_enforced(workspace: Path) -> None:
    registry = ToolRegistry(builtin_tools())
    (spec,) = [s for s in registry.specs() if s.name == "memory_store"]
    assert "minLength" not in json.dumps(spec.parameters)
    assert "additionalProperties" not in json.dumps(spec.parameters)
    executor = ToolExecutor(registry)
    async with await Bot.open(workspace) as bot:
        context = ToolContext(bot, "s")
        empty = await executor.run(ToolCall("1", "memory_store", {"content": ""}), context)
        extra = await executor.run(
            ToolCall("2", "memory_store", {"content": "tea", "colour": "green"}), context
        )
        assert await bot.memory.recall("tea") == []
    assert empty.is_error and "$.content must not be empty" in empty.content
    assert extra.is_error and "unexpected field $.colour" in extra.content
