"""Which provider serves which model name, and opening it (SDKs imported only when used)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import attrs

from runtime.config import Config, ConfigError
from runtime.llm.base import Provider
from runtime.llm.offline import OfflineModel

ProviderName = Literal["offline", "anthropic", "openai"]

SEED_DEFAULT_MODEL = "claude-3-5-sonnet-20241022"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
_OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "text-", "davinci", "babbage")


@attrs.frozen
class ModelChoice:
    provider: ProviderName
    model: str

    def __str__(self) -> str:
        return self.model if self.provider == "offline" else f"{self.provider}:{self.model}"


def parse_model(name: str) -> ModelChoice:
    """`anthropic:NAME` / `openai:NAME` / `offline`, or a bare name recognised by its prefix."""
    name = name.strip()
    prefix, sep, rest = name.partition(":")
    if sep and prefix in ("anthropic", "openai") and rest:
        return ModelChoice(prefix, rest)  # type: ignore[arg-type]
    if name == "offline":
        return ModelChoice("offline", "offline")
    if name.startswith("claude"):
        return ModelChoice("anthropic", name)
    if name.startswith(_OPENAI_PREFIXES):
        return ModelChoice("openai", name)
    raise ConfigError(
        f"unknown model {name!r}: use a claude-* or gpt-*/o1/o3/o4 name, "
        "'anthropic:NAME' / 'openai:NAME' for any other, or 'offline'"
    )


def choose_models(config: Config) -> list[ModelChoice]:
    """The primary model, then the fallbacks, each checked to have its key."""
    if config.default_model:
        primary = parse_model(config.default_model)
    elif config.anthropic_api_key:
        primary = ModelChoice("anthropic", SEED_DEFAULT_MODEL)
    elif config.openai_api_key:
        primary = ModelChoice("openai", OPENAI_DEFAULT_MODEL)
    else:
        primary = ModelChoice("offline", "offline")
    choices = [primary] + [
        parse_model(name) for name in config.fallback_models.split(",") if name.strip()
    ]
    for choice in choices:
        if choice.provider != "offline" and not _key(choice, config):
            variable = f"{choice.provider.upper()}_API_KEY"
            raise ConfigError(f"model {choice} needs {variable}; set it, or DEFAULT_MODEL=offline")
    return choices


def _key(choice: ModelChoice, config: Config) -> str | None:
    return config.anthropic_api_key if choice.provider == "anthropic" else config.openai_api_key


def open_provider(choice: ModelChoice, config: Config) -> Provider:
    """The provider for `choice`; its SDK is imported here, only when it is used."""
    if choice.provider == "offline":
        return OfflineModel()
    sdk_provider: Callable[..., Provider]
    if choice.provider == "anthropic":
        from runtime.llm.anthropic import AnthropicProvider

        sdk_provider = AnthropicProvider
    else:
        from runtime.llm.openai import OpenAIProvider

        sdk_provider = OpenAIProvider
    base_url = (
        config.anthropic_base_url if choice.provider == "anthropic" else config.openai_base_url
    )
    key = _key(choice, config)
    assert key is not None
    return sdk_provider(
        choice.model,
        api_key=key,
        base_url=base_url,
        timeout=config.model_timeout_seconds,
        max_retries=config.model_max_retries,
        max_concurrency=config.model_concurrency,
    )
