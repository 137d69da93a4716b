"""A bot with every HTTP endpoint switched on, and how to send a body to each of them."""

from __future__ import annotations

import base64
import itertools
import sqlite3
import time
from pathlib import Path
from typing import Any

from adapters.webhook import WebhookSource, sign_standard
from runtime.config import Config
from runtime.testing import FakeTelegram, local_config

API_TOKEN = "edge-api-token"
TELEGRAM_SECRET = "edge-telegram-secret"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"an-edge-webhook-secret").decode()

MESSAGE = "/api/message"
RECALL = "/api/v1/memory/recall"
STORE = "/api/v1/memory/store"
CONSOLIDATE = "/api/v1/memory/consolidate"
WEBHOOK = "/webhooks/app"
TELEGRAM = "/telegram/webhook"
ENDPOINTS = (MESSAGE, RECALL, STORE, CONSOLIDATE, WEBHOOK, TELEGRAM)
"""Every endpoint that takes a body."""

_deliveries = itertools.count()


def edge_config(
    workspace: Path, telegram: FakeTelegram, telegram_url: str, **settings: Any
) -> Config:
    """Token, a Standard Webhooks source (`message`, session at `user`) and Telegram in
    webhook mode: every endpoint answers."""
    return local_config(
        workspace,
        botcore_api_token=API_TOKEN,
        webhooks={"app": WebhookSource("app", WEBHOOK_SECRET, session="user")},
        telegram_bot_token=telegram.token,
        telegram_api_base_url=telegram_url,
        telegram_webhook_secret=TELEGRAM_SECRET,
        trusted_proxies="127.0.0.1",  # so forwarded headers are parsed
        **settings,
    )


def headers_for(endpoint: str, body: bytes) -> dict[str, str]:
    """What a legitimate sender adds: the token, a fresh signature, or Telegram's secret."""
    headers = {"Content-Type": "application/json"}
    if endpoint == WEBHOOK:
        delivery = f"edge-{next(_deliveries)}"
        stamp = int(time.time())
        headers |= {
            "webhook-id": delivery,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign_standard(WEBHOOK_SECRET, delivery, stamp, body),
        }
    elif endpoint == TELEGRAM:
        headers["X-Telegram-Bot-Api-Secret-Token"] = TELEGRAM_SECRET
    else:
        headers["Authorization"] = f"Bearer {API_TOKEN}"
    return headers


def inbox(workspace: Path) -> list[tuple[str, str, str]]:
    """(channel, text, state) of every inbox row."""
    db = sqlite3.connect(workspace / "engram.db")
    try:
        return [
            (str(c), str(t), str(s))
            for c, t, s in db.execute("SELECT channel, text, state FROM inbox ORDER BY id")
        ]
    finally:
        db.close()
