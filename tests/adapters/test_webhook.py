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

from adapters.webhook import (
    SignatureError,
    WebhookSource,
    extract,
    sign_github,
    sign_standard,
    verify,
)
from runtime.config import WebhookSettings
from runtime.testing import Receiver, local_config, open_local, serve_bot, wait_until

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


def hooks(callback: str | None = None) -> dict[str, WebhookSettings]:
    return {
        "app": WebhookSettings(
            secret=SECRET, text="data.text", session="data.user", callback=callback
        ),
        "gh": WebhookSettings(secret="gh-secret", scheme="github", text="/comment/body"),
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


def test_a_webhook_secret_can_come_from_the_environment(workspace: Path) -> None:
    from runtime.config import Config, ConfigError

    (workspace / "botcore.toml").write_text(
        '[webhooks.gh]\nscheme = "github"\nsecret_env = "GH_HOOK_SECRET"\ntext = "comment.body"\n'
    )
    config = Config.load({"GH_HOOK_SECRET": "from-env"}, workspace=workspace)
    assert config.webhooks["gh"].secret == "from-env"
    assert "from-env" in config.secrets  # redacted from logs like the API keys
    with pytest.raises(ConfigError, match=r"'gh' has no secret: set \$GH_HOOK_SECRET"):
        Config.load({}, workspace=workspace)
