"""Tokens per message and tool choice with 59 tools (built-in, 49 MCP, tool_search).

    .venv/bin/python scripts/bench_tools.py [--budget 2000]

Each of the 43 labelled messages (tests/data/tool_choice/labelled.json) goes, in its own
session, to a bot on the scripted ChoosingModel (runtime/testing/tool_choice.py), three
ways: with the catalogue and tool_search, the model searching with the labelled words;
the same, searching with the user's message itself; and without tool_search (every
definition sent, the last ones dropped when the budget is full, as before).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import trio

from runtime.testing import local_config, make_workspace
from runtime.testing.tool_choice import ToolChoiceScore, many_tools, score_tool_choice


def _row(label: str, score: ToolChoiceScore) -> str:
    found = score.offered + score.searched
    return (
        f"| {label} | {score.tools} | {statistics.median(score.tokens):.0f} | "
        f"{max(score.tokens)} | {found}/{score.turns} ({score.found:.0%}) | "
        f"{score.offered} | {score.searched} |"
    )


async def main(budget: int) -> None:
    rows = []
    for label, search, with_message in (
        ("catalogue + tool_search (labelled words)", True, False),
        ("catalogue + tool_search (the message)", True, True),
        ("every definition (no catalogue)", False, False),
    ):
        with tempfile.TemporaryDirectory() as folder:
            config = local_config(make_workspace(Path(folder) / "bot"), prompt_token_budget=budget)
            score = await score_tool_choice(
                config, many_tools(search=search), search_with_message=with_message
            )
        rows.append(_row(label, score))
    print(f"budget {budget} tokens per prompt (the user's message excluded)\n")
    print("| | tools | median tokens | max tokens | tool found | in the prompt | by search |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2000)
    trio.run(main, parser.parse_args().budget)
