"""Recall of conversation: a turn with its neighbours, who said it, and when."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters import Inbound
from adapters.base import WaitingResponder
from runtime.botcore import Bot, InvalidMemory, Memory, MemoryType
from runtime.memory_api import memory_from_json, memory_json
from runtime.prompt import memory_context
from runtime.testing import local_config, open_runtime

ROOT = Path(__file__).resolve().parents[2]
MARCH_2 = datetime(2026, 3, 2, 18, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0
DAY = 86_400.0


@pytest.fixture
async def bot(workspace: Path, database: Path | str):  # type: ignore[no-untyped-def]
    async with await Bot.open(workspace, database) as opened:
        yield opened


def turn(
    said: str, speaker: str, at: float, chat: str = "telegram:42", reply: str = "Ha!"
) -> Memory:
    return Memory(
        id=0,
        content=f"User said: {said} | I answered: {reply}",
        type=MemoryType.EPISODIC,
        importance=0.3,
        created_at=at,
        accessed_at=at,
        speaker=speaker,
        conversation=chat,
    )


async def recall(bot: Bot, query: str, now: float = MARCH_2 + 30 * DAY) -> list[str]:
    return [m.content for m in await bot.memory.recall(query, limit=5, now=now)]


async def test_the_answer_in_the_turn_after_the_question_is_recalled_first(bot: Bot) -> None:
    await bot.memory.load(
        [
            turn("Bob, how long have you been married now?", "Alice", MARCH_2),
            turn("9 years already!", "Bob", MARCH_2 + 60),
            turn("ok see you tomorrow", "Alice", MARCH_2 + 120),
            turn("Ken, are you married?", "Nora", MARCH_2, chat="telegram:7"),
            turn("Not yet, next summer.", "Ken", MARCH_2 + 60, chat="telegram:7"),
        ]
    )
    found = await recall(bot, "How long has Bob been married?")
    assert found[0] == "User said: 9 years already! | I answered: Ha!"
    # The question itself is still found, right after its answer.
    assert found[1].startswith("User said: Bob, how long")


async def test_turns_of_another_conversation_or_another_day_are_not_context(bot: Bot) -> None:
    await bot.memory.load(
        [
            turn("Bob, what's your dog called?", "Alice", MARCH_2),
            turn("haha no idea", "Nora", MARCH_2 + 60, chat="telegram:7"),
            turn("morning all", "Bob", MARCH_2 + DAY),
        ]
    )
    found = await recall(bot, "What is the name of Bob's dog?")
    assert found == ["User said: Bob, what's your dog called? | I answered: Ha!"]


async def test_a_question_naming_a_person_favours_what_that_person_said(bot: Bot) -> None:
    alice = "User said: I started learning the cello this month | I answered: Ha!"
    bob = "User said: me too! I started learning the banjo this month | I answered: Ha!"
    await bot.memory.load(
        [
            turn("I started learning the cello this month", "Alice", MARCH_2),
            turn("me too! I started learning the banjo this month", "Bob", MARCH_2 + 5 * HOUR),
        ]
    )
    assert (await recall(bot, "What did Bob start learning?"))[0] == bob
    assert (await recall(bot, "What did Alice start learning?"))[0] == alice
    # A name nobody spoke under is an ordinary word.
    assert await recall(bot, "What did Carol start learning?") == [alice, bob]


async def test_a_telegram_username_is_matched_by_its_words(bot: Bot) -> None:
    await bot.memory.load(
        [
            turn("we're moving to Porto in the autumn", "@maya_k", MARCH_2),
            turn("we're moving to Lima in the autumn", "@tom", MARCH_2 + 5 * HOUR),
        ]
    )
    assert "Porto" in (await recall(bot, "Where is Maya moving?"))[0]


async def test_what_was_said_on_a_named_day_is_recalled_without_its_words(bot: Bot) -> None:
    await bot.memory.load(
        [
            turn("got the job at Figment!!", "Alice", MARCH_2),
            turn("haha", "Alice", MARCH_2 + 60),
            turn("the boiler died again", "Alice", MARCH_2 + 3 * DAY),
            turn("my knee surgery is booked", "Bob", MARCH_2 + 3 * DAY + 60),
        ]
    )
    on_the_day = await recall(bot, "What did Alice say on 5 March?")
    assert on_the_day[0] == "User said: the boiler died again | I answered: Ha!"
    assert all("Figment" not in found for found in on_the_day)
    assert (await recall(bot, "What did Alice say on March 2nd?"))[0].startswith(
        "User said: got the job"
    )
    assert (await recall(bot, "what did Bob say yesterday?", now=MARCH_2 + 4 * DAY))[0] == (
        "User said: my knee surgery is booked | I answered: Ha!"
    )
    # A day that is no date is words like any other: nothing said matches them.
    assert await recall(bot, "What did Alice say on 31 February?") == []


async def test_an_episode_keeps_who_said_it_where_and_when(workspace: Path) -> None:
    async with open_runtime(local_config(workspace)) as runtime:
        responder = WaitingResponder()
        before = datetime.now(UTC).timestamp()
        await runtime.deliver(
            Inbound("telegram", "42", "my dog is called Pepper", responder, sender="@bob")
        )
        await responder.wait()
        (episode,) = [m for m in await runtime.bot.memory.export() if m.type is MemoryType.EPISODIC]
    assert episode.speaker == "@bob" and episode.conversation == "telegram:42"
    assert episode.created_at >= before


def test_the_prompt_shows_when_and_by_whom_an_episode_was_said() -> None:
    fact = Memory(1, "Bob's dog is called Pepper", MemoryType.FACTUAL, 0.5, MARCH_2)
    episode = turn("my dog is called Pepper", "@bob", MARCH_2)
    assert memory_context([fact, episode]).splitlines()[1:] == [
        "- [factual] Bob's dog is called Pepper",
        "- [episodic, Mon 02 Mar 2026 18:00 UTC, from @bob] "
        "User said: my dog is called Pepper | I answered: Ha!",
    ]


def test_the_conversation_set_is_what_its_script_makes() -> None:
    script = ROOT / "scripts" / "make_conversation_set.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


async def test_the_same_words_said_by_two_people_are_two_episodes(bot: Bot) -> None:
    added, reinforced = await bot.memory.load(
        [
            turn("the boiler died again", "Alice", MARCH_2),
            turn("the boiler died again", "Nora", MARCH_2 + DAY, chat="telegram:7"),
            turn("the boiler died again", "Alice", MARCH_2 + 2 * DAY),
        ]
    )
    assert (added, reinforced) == (2, 1)
    found = await bot.memory.recall("What did Nora say about the boiler?", now=MARCH_2 + 3 * DAY)
    assert found[0].speaker == "Nora" and found[0].created_at == MARCH_2 + DAY


async def test_export_and_import_keep_who_said_an_episode_and_where(bot: Bot) -> None:
    await bot.memory.load([turn("my dog is called Pepper", "@bob", MARCH_2)])
    (line,) = [memory_json(m) for m in await bot.memory.export()]
    assert (line["speaker"], line["conversation"]) == ("@bob", "telegram:42")
    again = memory_from_json(json.loads(json.dumps(line)))
    assert (again.speaker, again.conversation, again.created_at) == ("@bob", "telegram:42", MARCH_2)
    with pytest.raises(InvalidMemory, match="'speaker' and 'conversation' must be strings"):
        memory_from_json({**line, "speaker": 7})
