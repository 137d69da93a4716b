"""The examples the docs point to work as they are."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from runtime.config import Config
from runtime.llm.select import choose_models

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_the_example_botcore_toml_loads_with_telegram_and_a_webhook(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "botcore.toml", tmp_path / "botcore.toml")
    environ = {
        "ANTHROPIC_API_KEY": "sk-ant-example",
        "OPENAI_API_KEY": "sk-example",
        "TELEGRAM_BOT_TOKEN": "123456:example",
        "TELEGRAM_WEBHOOK_SECRET": "a-secret_token",
        "GITHUB_WEBHOOK_SECRET": "a-webhook-secret",
    }
    config = Config.load(environ, workspace=tmp_path)
    assert config.telegram_allowed_users == "@ada, 123456789"
    assert config.telegram_webhook_secret == "a-secret_token"
    assert config.webhooks["github"].scheme == "github"
    assert config.webhooks["github"].secret == "a-webhook-secret"
    assert [str(choice) for choice in choose_models(config)] == [
        "anthropic:claude-3-5-sonnet-20241022",
        "openai:gpt-4o-mini",
    ]


def test_the_sdk_example_runs_on_a_copy_of_the_demo_bot(tmp_path: Path) -> None:
    before = sorted(p.name for p in (EXAMPLES / "demo-bot").rglob("*"))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "sdk_quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "recalled: Ada's cat is called Miso" in result.stdout
    assert "buy-cat-food" in result.stdout and "feed-miso waits for buy-cat-food" in result.stdout
    assert sorted(p.name for p in (EXAMPLES / "demo-bot").rglob("*")) == before
