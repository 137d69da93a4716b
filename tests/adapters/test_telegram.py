"""The Telegram channel against the fake Bot API: polling, answers, errors, restarts."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from adapters.base import Accepted, Inbound, Reply, TextDelta, TextDiscarded
from adapters.telegram import (
    TelegramApi,
    TelegramChannel,
    TelegramError,
    TelegramResponder,
    TelegramSettings,
    split_message,
)
from runtime.botcore import Bot
from runtime.config import Config
from runtime.testing import (
    FakeLLM,
    FakeTelegram,
    Slow,
    Text,
    ToolUse,
    bot_process,
    free_port,
    local_config,
    open_runtime,
    serve_bot,
    wait_until,
)

Telegram = tuple[FakeTelegram, str]


def bot_config(workspace: Path, telegram: Telegram, **settings: Any) -> Config:
    fake, url = telegram
    return local_config(
        workspace,
        telegram_bot_token=fake.token,
        telegram_api_base_url=url,
        telegram_poll_timeout=1,
        **settings,
    )


# -- splitting ---------------------------------------------------------------------------


def test_split_prefers_paragraphs_then_lines_and_keeps_order() -> None:
    paragraphs = [f"{i} " + "word " * 300 for i in range(5)]  # ~1,500 characters each
    text = "\n\n".join(p.strip() for p in paragraphs)
    pieces = split_message(text)
    assert [piece.split()[0] for piece in pieces] == ["0", "2", "4"]  # whole paragraphs
    assert all(len(piece) <= 4096 for piece in pieces)
    lines = "\n".join("line " * 30 for _ in range(200))  # no paragraphs: cut at a line end
    assert all(piece.endswith("line") for piece in split_message(lines))
    assert " ".join(" ".join(pieces).split()) == " ".join(text.split())


def test_split_without_any_boundary_cuts_hard_and_counts_utf16() -> None:
    assert [len(p) for p in split_message("x" * 9000)] == [4096, 4096, 808]
    emoji = "😀" * 3000  # two UTF-16 units each: 6,000 units
    pieces = split_message(emoji)
    assert [len(p.encode("utf-16-le")) // 2 for p in pieces] == [4096, 1904]
    assert "".join(pieces) == emoji
    assert split_message("short") == ["short"]


# -- a served bot ------------------------------------------------------------------------


async def test_text_is_answered_in_its_chat_as_a_reply_with_typing(
    workspace: Path, telegram: Telegram
) -> None:
    fake, _ = telegram
    async with serve_bot(bot_config(workspace, telegram)):
        first = fake.text(42, "hello there")
        second = fake.text(77, "hi from another chat", username="bob")
        await wait_until(lambda: fake.sent_to(42) and fake.sent_to(77))
        (answer,) = fake.sent_to(42)
        assert answer.reply_to == first["message"]["message_id"]
        assert "TestBot" in answer.text
        assert fake.sent_to(77)[0].reply_to == second["message"]["message_id"]
        assert (42, "typing") in fake.actions
        # The offset moved past both updates: Telegram forgets them.
        await wait_until(lambda: not fake.pending)
        getme, *polls = [call.method for call in fake.calls]
        assert getme == "getMe" and "getUpdates" in polls


async def test_a_5000_character_answer_arrives_as_two_messages_in_order(
    workspace: Path, telegram: Telegram, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, _ = telegram
    model, url = fake_llm
    answer = "\n\n".join(f"Paragraph {i}. " + "lorem ipsum " * 80 for i in range(5))
    assert 4096 < len(answer) < 8192
    model.script(Text(answer))
    config = bot_config(
        workspace, telegram, default_model="claude-x", anthropic_api_key="k", anthropic_base_url=url
    )
    async with serve_bot(config):
        message = fake.text(5, "tell me a long story")
        await wait_until(lambda: len(fake.sent_to(5)) >= 2)
    first, second = fake.sent_to(5)
    assert first.reply_to == message["message"]["message_id"] and second.reply_to is None
    assert first.text.startswith("Paragraph 0.") and "Paragraph 4." in second.text
    assert " ".join((first.text + " " + second.text).split()) == " ".join(answer.split())


async def test_429_on_get_updates_is_waited_out(workspace: Path, telegram: Telegram) -> None:
    fake, _ = telegram
    fake.fail("getUpdates", 429, "Too Many Requests: retry after 1", retry_after=1)
    async with serve_bot(bot_config(workspace, telegram)):
        fake.text(1, "hello")
        await wait_until(lambda: fake.sent_to(1))
    limited, after = fake.calls_of("getUpdates")[:2]
    assert limited.status == 429 and after.status == 200
    assert after.at - limited.at >= 1.0


@pytest.mark.parametrize(
    ("status", "description", "logged"),
    [
        (409, "Conflict: terminated by other getUpdates request", "another poller runs"),
        (502, "Bad Gateway", "retrying in"),
    ],
)
async def test_409_and_5xx_back_off_instead_of_looping(
    workspace: Path,
    telegram: Telegram,
    caplog: pytest.LogCaptureFixture,
    status: int,
    description: str,
    logged: str,
) -> None:
    fake, url = telegram
    fake.fail("getUpdates", status, description, times=3)
    settings = TelegramSettings(fake.token, url, poll_timeout=1, backoff_initial=0.2)
    async with (
        open_runtime(local_config(workspace)) as runtime,
        httpx2.AsyncClient() as client,
        trio.open_nursery() as nursery,
    ):
        channel = TelegramChannel(
            TelegramApi(settings, client),
            settings,
            runtime.deliver,
            reset=runtime.reset,
        )
        await nursery.start(channel.run)  # it polls
        fake.text(3, "hello")
        await wait_until(lambda: fake.sent_to(3))
        nursery.cancel_scope.cancel()
    polls = fake.calls_of("getUpdates")
    assert [call.status for call in polls[:4]] == [status, status, status, 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(polls[:4])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8  # doubling, not a hot loop
    assert logged in caplog.text


async def test_answers_are_sent_a_few_chats_at_a_time_each_chat_in_order(
    workspace: Path, telegram: Telegram
) -> None:
    fake, url = telegram
    fake.send_delay = 0.05
    settings = TelegramSettings(fake.token, url, max_sends=3)
    async with (
        open_runtime(local_config(workspace)) as runtime,
        httpx2.AsyncClient() as client,
        trio.open_nursery() as nursery,
    ):
        channel = TelegramChannel(
            TelegramApi(settings, client), settings, runtime.deliver, reset=runtime.reset
        )
        await nursery.start(channel.run)
        for n in range(5):
            for chat in range(1, 9):
                channel.submit(chat, f"answer {n} to chat {chat}", None)
        await wait_until(lambda: len(fake.sent) == 40, within=20)
        channel.close()
    assert fake.peak["sendMessage"] == 3  # not one task per answer: 40 at once before
    for chat in range(1, 9):
        assert [m.text for m in fake.sent_to(chat)] == [
            f"answer {n} to chat {chat}" for n in range(5)
        ]


async def test_typing_is_shown_a_few_chats_at_a_time(
    workspace: Path, telegram: Telegram, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, _ = telegram
    fake.send_delay = 0.2
    model, url = fake_llm
    model.script(*[Slow(1, Text("done"))] * 12)
    config = bot_config(
        workspace, telegram, default_model="claude-x", anthropic_api_key="k", anthropic_base_url=url
    )
    async with serve_bot(config):
        for chat in range(1, 13):
            fake.text(chat, "take your time")
        await wait_until(lambda: all(fake.sent_to(chat) for chat in range(1, 13)), within=30)
    assert fake.actions  # typing was shown
    assert fake.peak["sendChatAction"] <= 8  # one call per turn in flight before: 12


async def test_a_refused_token_stops_telegram_but_the_bot_keeps_serving(
    workspace: Path,
    telegram: Telegram,
    client: httpx2.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, url = telegram
    config = local_config(
        workspace,
        telegram_bot_token="123:wrong",
        telegram_api_base_url=url,
        telegram_poll_timeout=1,
    )
    with caplog.at_level(logging.ERROR):
        async with serve_bot(config) as bot:
            await wait_until(lambda: "refused TELEGRAM_BOT_TOKEN" in caplog.text)
            response = await client.post(f"{bot.url}/api/message", json={"message": "still here?"})
            assert response.status_code == 200
    assert [call.method for call in fake.calls] == ["getMe"]
    assert "123:wrong" not in caplog.text


async def test_send_failures_are_retried_and_the_answer_goes_out_once(
    workspace: Path, telegram: Telegram
) -> None:
    fake, _ = telegram
    fake.fail("sendMessage", 502, "Bad Gateway")
    fake.fail("sendMessage", 429, "Too Many Requests", retry_after=0)
    async with serve_bot(bot_config(workspace, telegram)):
        fake.text(8, "hello")
        await wait_until(lambda: fake.sent_to(8))
        await trio.sleep(0.3)
    assert len(fake.sent_to(8)) == 1
    assert [c.status for c in fake.calls_of("sendMessage")] == [502, 429, 200]


async def test_groups_answer_only_when_mentioned_or_replied_to(
    workspace: Path, telegram: Telegram
) -> None:
    fake, _ = telegram
    async with serve_bot(bot_config(workspace, telegram)):
        fake.text(-100, "people chatting among themselves", chat_type="group")
        mentioned = fake.text(-100, "@test_bot hello", chat_type="group")
        replied = fake.text(-100, "and you?", chat_type="group", reply_to_bot=True)
        await wait_until(lambda: len(fake.sent_to(-100)) >= 2)
        await wait_until(lambda: not fake.pending)
    replies = [sent.reply_to for sent in fake.sent_to(-100)]
    assert replies == [mentioned["message"]["message_id"], replied["message"]["message_id"]]


async def test_only_allowed_users_reach_the_model(
    workspace: Path, telegram: Telegram, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, _ = telegram
    model, url = fake_llm
    config = bot_config(
        workspace,
        telegram,
        telegram_allowed_users="@Bob, 4242",
        default_model="claude-x",
        anthropic_api_key="k",
        anthropic_base_url=url,
    )
    async with serve_bot(config):
        fake.text(10, "let me in", username="mallory")
        fake.text(11, "hello", username="bob")
        fake.text(12, "hello", user_id=4242, username="carol")
        await wait_until(lambda: fake.sent_to(10) and fake.sent_to(11) and fake.sent_to(12))
    assert "only talks to people" in fake.sent_to(10)[0].text
    assert fake.sent_to(11)[0].text == "ok: hello"
    assert len(model.requests) == 2


async def test_updates_without_text_get_a_polite_answer_or_none(
    workspace: Path, telegram: Telegram
) -> None:
    fake, _ = telegram
    async with serve_bot(bot_config(workspace, telegram)):
        fake.photo(20)
        fake.update(message={"chat": "not a chat"})  # unreadable: skipped
        fake.update(edited_message={**fake.text(21, "x")["message"], "text": "edited"})
        await wait_until(lambda: fake.sent_to(20) and len(fake.sent_to(21)) == 2)
    assert "only read new text messages" in fake.sent_to(20)[0].text
    assert any("edited messages" in sent.text for sent in fake.sent_to(21))

    fake.sent.clear()
    async with serve_bot(bot_config(workspace, telegram, telegram_non_text="ignore")):
        fake.photo(20)
        fake.text(20, "and now text")
        await wait_until(lambda: fake.sent_to(20))
        await wait_until(lambda: not fake.pending)
    assert len(fake.sent_to(20)) == 1 and "TestBot" in fake.sent_to(20)[0].text


async def test_a_busy_chat_is_told_to_send_again_and_the_other_chats_go_on(
    workspace: Path, telegram: Telegram
) -> None:
    fake, _ = telegram
    # One message a minute per chat: chat 7's second message is refused for a minute.
    async with serve_bot(bot_config(workspace, telegram, session_rate_per_minute=1)):
        fake.text(7, "hello")
        await wait_until(lambda: fake.sent_to(7))
        refused = fake.text(7, "hello again")
        fake.text(7, "and again")  # a flood is not echoed: one note covers both
        fake.text(8, "hi from another chat")
        await wait_until(lambda: fake.sent_to(8) and len(fake.sent_to(7)) == 2, within=20)
        await wait_until(lambda: not fake.pending)  # nothing is left for Telegram to resend
        await trio.sleep(0.2)
    assert len(fake.sent_to(7)) == 2
    busy = fake.sent_to(7)[1]
    assert busy.reply_to == refused["message"]["message_id"]
    assert "busy" in busy.text and "send it again" in busy.text
    assert "TestBot" in fake.sent_to(8)[0].text
    async with await Bot.open(workspace) as opened:
        assert await opened.history.turns("telegram:7") == 1


async def test_start_help_and_reset(workspace: Path, telegram: Telegram) -> None:
    fake, _ = telegram
    async with serve_bot(bot_config(workspace, telegram)):
        fake.text(30, "/start")
        await wait_until(lambda: fake.sent_to(30))
        assert "/reset" in fake.sent_to(30)[0].text
        fake.text(30, "remember that the sky is green")
        await wait_until(lambda: len(fake.sent_to(30)) == 2)
        fake.text(30, "/reset")
        await wait_until(lambda: len(fake.sent_to(30)) == 3)
        assert "forgotten" in fake.sent_to(30)[2].text
    async with await Bot.open(workspace) as opened:
        assert await opened.history.turns("telegram:30") == 0
        kept = [(m.type.value, m.content) for m in await opened.memory.export()]
    # The episode of the exchange is forgotten too; the fact it was told to remember stays.
    assert kept == [("factual", "the sky is green")]


async def test_reset_waits_for_the_turn_in_flight_and_nothing_of_it_is_recalled_after(
    workspace: Path, telegram: Telegram, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, _ = telegram
    model, url = fake_llm
    model.script(Slow(1, Text("noted, your locker code is 4711")), Text("I know nothing yet"))
    config = bot_config(
        workspace, telegram, default_model="claude-x", anthropic_api_key="k", anthropic_base_url=url
    )
    async with serve_bot(config):
        fake.text(31, "my locker code is 4711")
        await wait_until(lambda: model.requests)  # the turn is in flight
        fake.text(31, "/reset")
        await wait_until(lambda: len(fake.sent_to(31)) == 2)
        fake.text(31, "what is my locker code?")
        await wait_until(lambda: len(fake.sent_to(31)) == 3)
    answer, done, _ = fake.sent_to(31)
    assert answer.text == "noted, your locker code is 4711"
    assert "forgotten" in done.text  # after the turn it followed, not before
    last = model.requests[-1].body
    assert "4711" not in json.dumps(last)  # neither as history nor as a recalled episode
    async with await Bot.open(workspace) as opened:
        assert await opened.history.turns("telegram:31") == 1  # only the question after


async def test_webhook_mode_checks_the_secret_token(
    workspace: Path, telegram: Telegram, client: httpx2.AsyncClient
) -> None:
    fake, _ = telegram
    config = bot_config(workspace, telegram, telegram_webhook_secret="s3cret-token")
    update = {
        "update_id": 1,
        "message": {
            "message_id": 9,
            "date": 0,
            "chat": {"id": 50, "type": "private"},
            "from": {"id": 50, "is_bot": False, "first_name": "A"},
            "text": "hello by webhook",
        },
    }
    async with serve_bot(config) as bot:
        hook = f"{bot.url}/telegram/webhook"
        assert (await client.post(hook, json=update)).status_code == 401
        wrong = {"X-Telegram-Bot-Api-Secret-Token": "nope"}
        assert (await client.post(hook, json=update, headers=wrong)).status_code == 401
        right = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"}
        assert (await client.post(hook, content=b"[1,2]", headers=right)).status_code == 400
        response = await client.post(hook, json=update, headers=right)
        assert response.status_code == 200
        again = await client.post(hook, json=update, headers=right)  # Telegram retrying
        assert again.status_code == 200
        await wait_until(lambda: fake.sent_to(50))
        await trio.sleep(0.2)
    assert len(fake.sent_to(50)) == 1 and fake.sent_to(50)[0].reply_to == 9
    assert not fake.calls_of("getUpdates")


# -- a real process, killed ----------------------------------------------------------------


async def test_killed_after_accepting_an_update_answers_it_exactly_once_after_restart(
    workspace: Path, telegram: Telegram, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, tg_url = telegram
    model, llm_url = fake_llm
    model.script(Slow(60, Text("too late")))
    env = {
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE_URL": tg_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "DEFAULT_MODEL": "claude-x",
        "ANTHROPIC_API_KEY": "k",
        "ANTHROPIC_BASE_URL": llm_url,
    }
    async with bot_process(workspace, env) as bot:
        update = fake.text(60, "are you there?")
        await wait_until(lambda: model.requests)  # accepted, the turn is under way
        bot.kill()
        assert await bot.wait() == -9
    assert not fake.sent_to(60)
    assert not fake.pending  # durably accepted, so the poller confirmed it: only the inbox has it

    async with bot_process(workspace, env):
        await wait_until(lambda: fake.sent_to(60), within=20)
        await trio.sleep(0.5)
    (answer,) = fake.sent_to(60)
    assert answer.text == "ok: are you there?"
    assert answer.reply_to == update["message"]["message_id"]
    assert len(model.requests) == 2  # the killed turn, then one after the restart


async def test_killed_after_storing_an_answer_but_before_telegram_got_it_sends_it_after_restart(
    workspace: Path, telegram: Telegram
) -> None:
    fake, tg_url = telegram
    env = {
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE_URL": tg_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "OUTBOX_GRACE_SECONDS": "1",
    }
    fake.fail("sendMessage", 502, times=1000)  # Telegram is down for sending
    async with bot_process(workspace, env) as bot:
        fake.text(61, "remember the code is 4711")
        await wait_until(lambda: fake.calls_of("sendMessage"), within=20)  # stored, trying to send
        bot.kill()
        assert await bot.wait() == -9
    fake.heal("sendMessage")
    assert not fake.sent_to(61)
    async with bot_process(workspace, env) as bot:
        await wait_until(lambda: fake.sent_to(61), within=20)
        await trio.sleep(2.5)  # past more grace times: it is not sent a second time
    (answer,) = fake.sent_to(61)
    assert answer.text == "Got it, I'll remember that."
    assert "sending again the answer" in bot.log


async def test_an_unreachable_api_is_retried_with_backoff_and_no_token_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "4242:very-secret-token"
    settings = TelegramSettings(
        token, f"http://127.0.0.1:{free_port()}", poll_timeout=1, backoff_initial=0.05
    )
    async with httpx2.AsyncClient() as client:
        api = TelegramApi(settings, client)
        with pytest.raises(TelegramError) as failed:
            await api.request("getMe", attempts=3)
    assert failed.value.status == 0 and "Connect" in str(failed.value)
    assert caplog.text.count("retrying in") == 2
    assert token not in caplog.text and token not in str(failed.value)


async def test_an_update_is_kept_by_its_update_id_with_a_typed_reply_address(
    workspace: Path, telegram: Telegram
) -> None:
    fake, _ = telegram
    async with serve_bot(bot_config(workspace, telegram)):
        update = fake.text(61, "hello there")
        await wait_until(lambda: fake.sent_to(61))
    db = sqlite3.connect(workspace / "engram.db")
    try:
        ((message_id, address),) = db.execute("SELECT message_id, address FROM inbox").fetchall()
    finally:
        db.close()
    assert message_id == str(update["update_id"])  # the key only: nothing packed to parse back
    assert json.loads(address) == {"chat_id": 61, "reply_to": update["message"]["message_id"]}


# -- live answers ----------------------------------------------------------------------------


async def _no_messages(inbound: Inbound) -> Accepted:
    raise AssertionError("these tests hand the channel answers, not messages")


async def _no_reset(session_key: str, done: Any) -> None:
    raise AssertionError("these tests hand the channel answers, not commands")


@asynccontextmanager
async def live_channel(telegram: Telegram) -> AsyncIterator[TelegramChannel]:
    """The channel sending answers to the fake (webhook mode: it does not poll)."""
    fake, url = telegram
    settings = TelegramSettings(fake.token, url, webhook_secret="s", backoff_initial=0.5)
    async with httpx2.AsyncClient() as client, trio.open_nursery() as nursery:
        channel = TelegramChannel(
            TelegramApi(settings, client), settings, _no_messages, reset=_no_reset
        )
        await nursery.start(channel.run)
        yield channel
        channel.close()


def answer_to(channel: TelegramChannel, chat: int, reply_to: int = 9) -> TelegramResponder:
    return channel.recovered(str(chat), {"chat_id": chat, "reply_to": reply_to})


async def stream(responder: TelegramResponder, text: str, *, every: float = 0.1) -> None:
    """The model streaming `text` word by word, a word every `every` seconds."""
    for word in text.split(" "):
        responder.progress(TextDelta(word + " "))
        await trio.sleep(every)


def reply(text: str) -> Reply:
    return Reply(text, "5", "turn-1")


def gaps(calls: list[Any]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(calls)]


async def test_a_streamed_answer_grows_as_a_draft_and_ends_in_one_final_message(
    telegram: Telegram, autojump_clock: trio.abc.Clock
) -> None:
    fake, _ = telegram
    answer = " ".join(f"word{i}" for i in range(60))  # six seconds of streaming
    async with live_channel(telegram) as channel:
        responder = answer_to(channel, 5)
        await stream(responder, answer)
        responder.reply(reply(answer))
        await wait_until(lambda: fake.sent_to(5))
        await trio.sleep(3)
    drafts = fake.drafts_to(5)
    assert len(drafts) >= 4  # the chat saw it grow
    assert all(
        b.text.startswith(a.text) and len(b.text) > len(a.text)
        for a, b in itertools.pairwise(drafts)
    )
    assert all(answer.startswith(d.text) for d in drafts) and len({d.draft_id for d in drafts}) == 1
    (final,) = fake.sent_to(5)  # one message, replying to the question
    assert final.text == answer and final.reply_to == 9
    assert not fake.edits
    draft_calls = fake.calls_of("sendMessageDraft")
    assert all(gap >= 1.0 for gap in gaps(draft_calls))  # at most one a second in the chat
    assert len(draft_calls) <= 7


async def test_without_drafts_the_answer_is_one_message_edited_at_most_once_a_second(
    telegram: Telegram, autojump_clock: trio.abc.Clock
) -> None:
    fake, _ = telegram
    fake.drafts_supported = False  # a Bot API before 9.3: the method is not found
    answer = " ".join(f"word{i}" for i in range(60))
    async with live_channel(telegram) as channel:
        first, other = answer_to(channel, 5), answer_to(channel, 6, reply_to=11)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, first, answer)
            nursery.start_soon(stream, other, answer)
        first.reply(reply(answer))
        other.reply(reply(answer))
        await wait_until(lambda: fake.edits and fake.edits[-1].text == answer)
        await wait_until(lambda: len([e for e in fake.edits if e.text == answer]) == 2)
    refused = fake.calls_of("sendMessageDraft")  # asked at most once per chat, not per word
    assert len(refused) <= 2 and {c.status for c in refused} == {404}
    for chat, question in ((5, 9), (6, 11)):
        (message,) = fake.sent_to(chat)  # grown by edits, then edited into the final text
        assert message.text == answer and message.reply_to == question
        edits = [c for c in fake.calls_of("editMessageText") if c.params["chat_id"] == chat]
        assert len(edits) >= 3
        assert all(gap >= 1.0 for gap in gaps(edits))
    assert not fake.drafts


async def test_a_fallback_model_restarting_its_answer_resets_the_draft(
    telegram: Telegram, autojump_clock: trio.abc.Clock
) -> None:
    fake, _ = telegram
    async with live_channel(telegram) as channel:
        responder = answer_to(channel, 5)
        await stream(responder, "Let me see.", every=0.5)
        await trio.sleep(1.5)
        await stream(responder, "The answer is 4", every=0.5)
        await trio.sleep(1.5)
        responder.progress(TextDiscarded("The answer is 4 "))  # that model failed
        await stream(responder, "It is 5, says the other model", every=0.5)
        responder.reply(reply("Let me see. It is 5, says the other model"))
        await wait_until(lambda: fake.sent_to(5))
    drafts = fake.drafts_to(5)
    wrong = [d for d in drafts if "answer is 4" in d.text]
    assert wrong, "the withdrawn text was shown before it was withdrawn"
    after = drafts[drafts.index(wrong[-1]) + 1 :]
    assert after and all("answer is 4" not in d.text for d in after)
    assert after[0].draft_id != wrong[-1].draft_id  # a new draft, not an animated edit
    assert after[-1].text.startswith("Let me see. It is 5")
    assert [m.text for m in fake.sent_to(5)] == ["Let me see. It is 5, says the other model"]


@pytest.mark.parametrize("drafts", [True, False], ids=["drafts", "edits"])
async def test_a_long_streamed_answer_ends_as_split_final_messages(
    telegram: Telegram, autojump_clock: trio.abc.Clock, drafts: bool
) -> None:
    fake, _ = telegram
    fake.drafts_supported = drafts
    answer = "\n\n".join(f"Paragraph {i}. " + "😀 lorem ipsum " * 120 for i in range(4))
    assert len(answer.encode("utf-16-le")) // 2 > 4096 * 1.5
    async with live_channel(telegram) as channel:
        responder = answer_to(channel, 5)
        await stream(responder, answer, every=0.01)
        responder.reply(reply(answer))
        await wait_until(lambda: len(fake.sent_to(5)) == 2 and fake.sent_to(5)[0].text != "")
        await trio.sleep(3)
    assert [m.text for m in fake.sent_to(5)] == split_message(answer)
    assert fake.sent_to(5)[0].reply_to == 9 and fake.sent_to(5)[1].reply_to is None
    assert all(c.status == 200 for c in fake.calls if c.method != "sendMessageDraft")


async def test_a_429_on_an_edit_is_waited_out_not_stormed(
    telegram: Telegram, autojump_clock: trio.abc.Clock
) -> None:
    fake, _ = telegram
    fake.drafts_supported = False
    fake.fail("editMessageText", 429, "Too Many Requests: retry after 5", retry_after=5)
    answer = " ".join(f"word{i}" for i in range(100))  # ten seconds of streaming
    async with live_channel(telegram) as channel:
        responder = answer_to(channel, 5)
        await stream(responder, answer)
        responder.reply(reply(answer))
        await wait_until(lambda: fake.sent_to(5) and fake.sent_to(5)[0].text == answer)
    edits = fake.calls_of("editMessageText")
    limited = next(i for i, call in enumerate(edits) if call.status == 429)
    assert edits[limited + 1].at - edits[limited].at >= 5.0  # waited, not retried at once
    assert [c.status for c in edits].count(429) == 1
    assert len(edits) <= 8  # about one a second outside the five seconds it waited
    assert len(fake.sent_to(5)) == 1


async def test_groups_keep_one_message_per_answer_and_see_no_draft(
    telegram: Telegram, autojump_clock: trio.abc.Clock
) -> None:
    fake, _ = telegram
    async with live_channel(telegram) as channel:
        responder = answer_to(channel, -100)
        await stream(responder, "a group answer, streamed all the same")
        responder.reply(reply("a group answer, streamed all the same"))
        await wait_until(lambda: fake.sent_to(-100))
        await trio.sleep(2)
    assert [m.text for m in fake.sent_to(-100)] == ["a group answer, streamed all the same"]
    assert not fake.calls_of("sendMessageDraft") and not fake.calls_of("editMessageText")


async def test_a_bot_streaming_its_answer_shows_a_draft_before_the_final_message(
    workspace: Path, telegram: Telegram, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, _ = telegram
    model, url = fake_llm
    model.script(
        ToolUse(("no_such_tool", {}), text="Let me look that up."), Slow(2, Text("Found it."))
    )
    config = bot_config(
        workspace, telegram, default_model="claude-x", anthropic_api_key="k", anthropic_base_url=url
    )
    async with serve_bot(config):
        fake.text(70, "where is it?")
        await wait_until(lambda: fake.sent_to(70))
        await trio.sleep(0.3)
    drafts = [d.text for d in fake.drafts_to(70)]
    # The first call's text while the tool ran, then the answer, which is the last call's.
    assert "Let me look that up." in drafts and not any("up.Found" in text for text in drafts)
    assert [m.text for m in fake.sent_to(70)] == ["Found it."]
    (group_answer,) = [c for c in fake.calls_of("sendMessage") if c.params["chat_id"] == 70]
    assert fake.calls.index(group_answer) > fake.calls.index(fake.calls_of("sendMessageDraft")[0])


async def test_a_live_answer_waits_for_the_chats_earlier_answers(
    telegram: Telegram, autojump_clock: trio.abc.Clock
) -> None:
    fake, _ = telegram
    fake.drafts_supported = False
    fake.fail("sendMessage", 502, "Bad Gateway")  # the earlier answer is retried
    answer = " ".join(f"word{i}" for i in range(30))
    async with live_channel(telegram) as channel:
        channel.submit(5, "the earlier answer", 3)
        responder = answer_to(channel, 5)
        await stream(responder, answer)
        responder.reply(reply(answer))
        await wait_until(lambda: answer in [m.text for m in fake.sent_to(5)])
    assert [m.text for m in fake.sent_to(5)] == ["the earlier answer", answer]  # in order
    assert [m.reply_to for m in fake.sent_to(5)] == [3, 9]
