"""Signed webhooks: the schemes alone, then through a served bot."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
import trio

from adapters import Accepted, Busy, Inbound
from adapters.base import WaitingResponder
from adapters.webhook import (
    CallbackSender,
    ReplayGuard,
    SignatureError,
    WebhookSource,
    extract,
    sign_github,
    sign_standard,
    verify,
)
from runtime.botcore import Bot
from runtime.config import Config, ConfigError
from runtime.deliveries import Deliveries
from runtime.testing import (
    FakeLLM,
    Receiver,
    Slow,
    Text,
    local_config,
    open_local,
    serve_bot,
    wait_until,
)

SECRET = "whsec_" + base64.b64encode(b"a-shared-secret-of-some-length").decode()
STANDARD = WebhookSource("app", SECRET, "standard", "data.text", "data.user")
GITHUB = WebhookSource("gh", "gh-secret", "github", "/comment/body")
BODY = json.dumps({"data": {"text": "remember the deploy is on Friday", "user": "u1"}}).encode()


def standard_headers(
    body: bytes = BODY, *, secret: str = SECRET, ident: str = "msg_1", at: float | None = None
) -> dict[str, str]:
    stamp = int(time.time() if at is None else at)
    return {
        "webhook-id": ident,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign_standard(secret, ident, stamp, body),
        "content-type": "application/json",
    }


def test_a_correct_standard_signature_gives_the_delivery_id() -> None:
    assert verify(STANDARD, standard_headers(), BODY, time.time()) == "msg_1"
    # Key rotation: several signatures, any one may match.
    headers = standard_headers()
    headers["webhook-signature"] = "v1,bm90LWl0 " + headers["webhook-signature"]
    assert verify(STANDARD, headers, BODY, time.time()) == "msg_1"


OTHER = "whsec_" + base64.b64encode(b"another secret").decode()
Headers = Callable[[], dict[str, str]]


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        (standard_headers, BODY.replace(b"Friday", b"Monday"), "does not match"),
        (lambda: standard_headers(secret=OTHER), BODY, "does not match"),
        (lambda: standard_headers(at=time.time() - 301), BODY, "5 minutes"),
        (lambda: standard_headers(at=time.time() + 301), BODY, "5 minutes"),
        (lambda: {"webhook-id": "x"}, BODY, "missing"),
    ],
)
def test_a_bad_standard_signature_is_refused(headers: Headers, body: bytes, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify(STANDARD, headers(), body, time.time())


def test_github_signatures() -> None:
    body = b'{"comment": {"body": "hi"}}'
    good = {"X-Hub-Signature-256": sign_github("gh-secret", body), "X-GitHub-Delivery": "d-1"}
    assert verify(GITHUB, good, body, time.time()) == "d-1"
    with pytest.raises(SignatureError, match="does not match"):
        verify(
            GITHUB, {**good, "X-Hub-Signature-256": sign_github("wrong", body)}, body, time.time()
        )
    with pytest.raises(SignatureError, match="missing"):
        verify(GITHUB, {"X-GitHub-Delivery": "d-1"}, body, time.time())


def test_text_is_found_by_dotted_path_or_json_pointer() -> None:
    data = {"a": {"b/c": ["x", {"d": "found"}]}, "e": {"f": "dotted"}}
    assert extract(data, "/a/b~1c/1/d") == "found"
    assert extract(data, "e.f") == "dotted"
    with pytest.raises(KeyError):
        extract(data, "e.g")


def hooks(callback: str | None = None) -> dict[str, WebhookSource]:
    return {
        "app": WebhookSource(
            "app", SECRET, text="data.text", session="data.user", callback=callback
        ),
        "gh": WebhookSource("gh", "gh-secret", scheme="github", text="/comment/body"),
    }


def turns(workspace: Path) -> int:
    db = sqlite3.connect(workspace / "engram.db")
    try:
        return int(db.execute("SELECT count(DISTINCT turn_id) FROM history").fetchone()[0])
    finally:
        db.close()


async def test_a_signed_webhook_is_answered_and_a_replay_is_not_processed_again(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    config = local_config(workspace, webhooks=hooks(), botcore_api_token="api-token")
    async with serve_bot(config) as bot:
        url = f"{bot.url}/webhooks/app"
        first = await client.post(url, content=BODY, headers=standard_headers())
        replay = await client.post(url, content=BODY, headers=standard_headers())
    assert first.status_code == 200, first.text  # no bearer token: the signature is the auth
    assert first.json()["message"] == "Got it, I'll remember that."
    assert first.json()["session_id"] == "app:u1"
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate", "id": "msg_1"}
    assert turns(workspace) == 1


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (standard_headers, BODY.replace(b"Friday", b"Monday")),
        (lambda: standard_headers(secret=OTHER), BODY),
        (lambda: standard_headers(at=time.time() - 600), BODY),
        (lambda: {"content-type": "application/json"}, BODY),
    ],
    ids=["tampered body", "wrong secret", "stale timestamp", "no signature"],
)
async def test_a_bad_signature_is_401_and_nothing_is_processed(
    workspace: Path, client: httpx2.AsyncClient, headers: Headers, body: bytes
) -> None:
    async with serve_bot(local_config(workspace, webhooks=hooks())) as bot:
        response = await client.post(f"{bot.url}/webhooks/app", content=body, headers=headers())
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_signature"
    assert SECRET not in response.text
    assert not (workspace / "engram.db").exists() or turns(workspace) == 0


async def test_github_deliveries_and_unknown_sources(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    body = b'{"comment": {"body": "hello from github"}}'
    headers = {
        "X-Hub-Signature-256": sign_github("gh-secret", body),
        "X-GitHub-Delivery": "d-9",
        "Content-Type": "application/json",
    }
    async with serve_bot(local_config(workspace, webhooks=hooks())) as bot:
        answered = await client.post(f"{bot.url}/webhooks/gh", content=body, headers=headers)
        unknown = await client.post(f"{bot.url}/webhooks/nope", content=body, headers=headers)
        no_text = b'{"comment": {}}'
        bad = await client.post(
            f"{bot.url}/webhooks/gh",
            content=no_text,
            headers={
                **headers,
                "X-Hub-Signature-256": sign_github("gh-secret", no_text),
                "X-GitHub-Delivery": "d-10",
            },
        )
    assert answered.status_code == 200 and "TestBot" in answered.json()["message"]
    assert unknown.status_code == 404
    assert bad.status_code == 400 and "/comment/body" in bad.json()["error"]["message"]


async def test_the_reply_goes_to_the_callback_signed_with_retries(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    receiver = Receiver(failures=1)
    async with open_local(receiver) as callback:
        config = local_config(workspace, webhooks=hooks(callback=f"{callback}/replies"))
        async with serve_bot(config) as bot:
            response = await client.post(
                f"{bot.url}/webhooks/app", content=BODY, headers=standard_headers(ident="msg_7")
            )
            assert response.status_code == 202 and response.json()["id"] == "msg_7"
            await wait_until(lambda: len(receiver.received) == 2, within=15)
    failed, delivered = receiver.received
    assert failed.body == delivered.body  # the 503 was retried with the same reply
    assert delivered.path == "/replies"
    assert json.loads(delivered.body)["message"] == "Got it, I'll remember that."
    source = WebhookSource("app", SECRET)
    assert verify(source, delivered.headers, delivered.body, time.time()) == "reply-msg_7"


async def test_callbacks_are_posted_a_few_at_a_time(workspace: Path) -> None:
    receiver = Receiver(delay=0.05)
    async with open_local(receiver) as url, trio.open_nursery() as nursery:
        sender = CallbackSender(concurrency=2)
        await nursery.start(sender.run)
        source = WebhookSource("app", SECRET, callback=f"{url}/replies")
        for n in range(12):
            sender.submit(source, f"msg_{n}", {"message": f"reply {n}"})
        sender.close()
    assert len(receiver.received) == 12  # `run` returned once every post was done
    assert receiver.peak == 2  # not one task per reply: 12 at once before


def test_a_webhook_secret_can_come_from_the_environment(workspace: Path) -> None:
    (workspace / "botcore.toml").write_text(
        '[webhooks.gh]\nscheme = "github"\nsecret_env = "GH_HOOK_SECRET"\ntext = "comment.body"\n'
    )
    config = Config.load({"GH_HOOK_SECRET": "from-env"}, workspace=workspace)
    assert config.webhooks["gh"].secret == "from-env"
    assert "from-env" in config.secrets  # redacted from logs like the API keys
    with pytest.raises(ConfigError, match=r"'gh' has no secret: set \$GH_HOOK_SECRET"):
        Config.load({}, workspace=workspace)


def test_a_whsec_secret_without_base64_padding_is_accepted() -> None:
    padded = "whsec_" + base64.b64encode(b"a secret of 31 bytes, not 30 !!").decode()
    assert padded.endswith("=")
    unpadded = WebhookSource("app", padded.rstrip("="), "standard", "data.text")
    headers = standard_headers(secret=padded)
    assert verify(unpadded, headers, BODY, time.time()) == "msg_1"


@pytest.mark.parametrize(
    ("scheme", "secret"),
    [("standard", "whsec_not*base64!"), ("standard", "whsec_abcde")],
)
def test_a_secret_that_cannot_sign_stops_the_start_naming_the_source_not_the_secret(
    workspace: Path, scheme: str, secret: str
) -> None:
    (workspace / "botcore.toml").write_text(
        f'[webhooks.shop]\nscheme = "{scheme}"\nsecret_env = "SHOP_SECRET"\n'
    )
    with pytest.raises(ConfigError, match=r"webhook source 'shop': .*check its \$SHOP_SECRET") as e:
        Config.load({"SHOP_SECRET": secret}, workspace=workspace)
    assert secret.removeprefix("whsec_") not in str(e.value)


async def test_a_replayed_webhook_id_naming_another_user_is_not_processed_again(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    other = json.dumps({"data": {"text": "forget the deploy", "user": "u2"}}).encode()
    async with serve_bot(local_config(workspace, webhooks=hooks())) as bot:
        url = f"{bot.url}/webhooks/app"
        first = await client.post(url, content=BODY, headers=standard_headers())
        replay = await client.post(url, content=other, headers=standard_headers(other))
    assert first.status_code == 200 and first.json()["session_id"] == "app:u1"
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate", "id": "msg_1"}
    assert turns(workspace) == 1


def github_headers(body: bytes, delivery: str) -> dict[str, str]:
    return {
        "X-Hub-Signature-256": sign_github("gh-secret", body),
        "X-GitHub-Delivery": delivery,
        "Content-Type": "application/json",
    }


async def test_a_github_body_resent_under_a_new_delivery_id_is_not_processed_again_even_after_a_restart(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    body = b'{"comment": {"body": "deploy to production"}}'
    config = local_config(workspace, webhooks=hooks())
    async with serve_bot(config) as bot:
        first = await client.post(
            f"{bot.url}/webhooks/gh", content=body, headers=github_headers(body, "d-1")
        )
        replay = await client.post(
            f"{bot.url}/webhooks/gh", content=body, headers=github_headers(body, "d-2")
        )
    async with serve_bot(config) as bot:
        after_restart = await client.post(
            f"{bot.url}/webhooks/gh", content=body, headers=github_headers(body, "d-3")
        )
        different = b'{"comment": {"body": "deploy to staging"}}'
        fresh = await client.post(
            f"{bot.url}/webhooks/gh", content=different, headers=github_headers(different, "d-4")
        )
    assert first.status_code == 200 and "TestBot" in first.json()["message"]
    assert replay.json() == {"status": "duplicate", "id": "d-2"}
    assert after_restart.json() == {"status": "duplicate", "id": "d-3"}
    assert fresh.status_code == 200 and "message" in fresh.json()
    assert turns(workspace) == 2


async def test_a_delivery_refused_as_busy_is_taken_when_sent_again(workspace: Path) -> None:
    source = WebhookSource("app", SECRET, "standard", "data.text", "data.user")
    refusals = [Busy("full", 1.0)]
    delivered: list[Inbound] = []

    async def deliver(inbound: Inbound) -> Accepted:
        if refusals:
            raise refusals.pop()
        delivered.append(inbound)
        return Accepted(len(delivered))

    async with await Bot.open(workspace) as bot:
        guard = ReplayGuard(Deliveries(bot.db))
        inbound = Inbound("webhook", "app:u1", "hi", WaitingResponder(), message_id="msg_1")
        with pytest.raises(Busy):
            await guard.deliver(source, "msg_1", BODY, inbound, deliver)
        assert await guard.deliver(source, "msg_1", BODY, inbound, deliver) == Accepted(1)
        assert await guard.deliver(source, "msg_1", BODY, inbound, deliver) is None
        # Another source may use the same id.
        gh = WebhookSource("gh", "gh-secret", "github")
        assert await guard.deliver(gh, "msg_1", BODY, inbound, deliver) == Accepted(2)
    assert len(delivered) == 2


async def test_remembered_deliveries_expire_and_stay_bounded(workspace: Path) -> None:
    async with await Bot.open(workspace) as bot:
        expiring = Deliveries(bot.db, window=0.05)
        await expiring.record("app", ["id:old"])
        assert await expiring.seen("app", ["id:old", "id:other"])
        assert not await expiring.seen("gh", ["id:old"])
        await trio.sleep(0.1)
        assert not await expiring.seen("app", ["id:old"])

        bounded = Deliveries(bot.db, limit=10)
        for n in range(200):
            await bounded.record("app", [f"id:{n}"])
        rows = await bot.db.run(
            lambda db: db.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0]
        )
    assert rows <= 10 + 64


async def test_a_delivery_with_a_callback_taken_before_a_restart_is_answered_there_after_it(
    workspace: Path, client: httpx2.AsyncClient, fake_llm: tuple[FakeLLM, str]
) -> None:
    model, llm_url = fake_llm
    model.script(Slow(60, Text("too late")), Text("the deploy is on Friday, noted"))
    receiver = Receiver()
    async with open_local(receiver) as url:
        config = local_config(
            workspace,
            webhooks=hooks(callback=f"{url}/replies"),
            default_model="claude-x",
            anthropic_api_key="k",
            anthropic_base_url=llm_url,
            shutdown_grace_seconds=0.5,
        )
        async with serve_bot(config) as bot:
            response = await client.post(
                f"{bot.url}/webhooks/app", content=BODY, headers=standard_headers()
            )
            assert response.status_code == 202
            await wait_until(lambda: model.requests)  # the turn is under way; then a stop
        assert not receiver.received
        async with serve_bot(config):
            await wait_until(lambda: receiver.received, within=20)
    (posted,) = receiver.received
    assert posted.path == "/replies"
    assert json.loads(posted.body)["message"] == "the deploy is on Friday, noted"
    assert posted.headers["webhook-id"] == "reply-msg_1"  # the same delivery's reply
