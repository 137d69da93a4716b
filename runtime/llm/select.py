"""Which provider serves which model name, and opening it (SDKs imported only when used)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import attrs

from runtime.config import BotSettings, ConfigError
from runtime.llm.base import Provider
from runtime.llm.fallback import FallbackProvider
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


@attrs.frozen
class ProviderKind:
    """How one kind of provider is configured and opened: a row of `PROVIDERS`."""

    key: Callable[[BotSettings], str | None]
    """Its API key in the configuration (None: it needs none)."""
    default_model: str | None
    """The model chosen when only its key is configured (None: never by default)."""
    open: Callable[[ModelChoice, BotSettings], Provider]


def _open_offline(choice: ModelChoice, config: BotSettings) -> Provider:
    return OfflineModel()


def _open_anthropic(choice: ModelChoice, config: BotSettings) -> Provider:
    from runtime.llm.anthropic import AnthropicProvider  # the SDK only when it is used

    return _sdk(
        AnthropicProvider, choice, config, config.anthropic_api_key, config.anthropic_base_url
    )


def _open_openai(choice: ModelChoice, config: BotSettings) -> Provider:
    from runtime.llm.openai import OpenAIProvider  # the SDK only when it is used

    return _sdk(OpenAIProvider, choice, config, config.openai_api_key, config.openai_base_url)


def _sdk(
    provider: Callable[..., Provider],
    choice: ModelChoice,
    config: BotSettings,
    key: str | None,
    base_url: str | None,
) -> Provider:
    assert key is not None
    return provider(
        choice.model,
        api_key=key,
        base_url=base_url,
        timeout=config.model_timeout_seconds,
        max_retries=config.model_max_retries,
        max_concurrency=config.model_concurrency,
    )


PROVIDERS: dict[ProviderName, ProviderKind] = {
    "anthropic": ProviderKind(
        lambda config: config.anthropic_api_key, SEED_DEFAULT_MODEL, _open_anthropic
    ),
    "openai": ProviderKind(
        lambda config: config.openai_api_key, OPENAI_DEFAULT_MODEL, _open_openai
    ),
    "offline": ProviderKind(lambda config: None, None, _open_offline),
}
"""Every provider by name, in the order a default model is chosen by the keys present."""


def choose_models(config: BotSettings) -> list[ModelChoice]:
    """The primary model, then the fallbacks, each checked to have its key."""
    if config.default_model:
        primary = parse_model(config.default_model)
    else:
        primary = next(
            (
                ModelChoice(name, kind.default_model)
                for name, kind in PROVIDERS.items()
                if kind.default_model is not None and kind.key(config)
            ),
            ModelChoice("offline", "offline"),
        )
    choices = [primary] + [
        parse_model(name) for name in config.fallback_models.split(",") if name.strip()
    ]
    for choice in choices:
        if choice.provider != "offline" and not PROVIDERS[choice.provider].key(config):
            variable = f"{choice.provider.upper()}_API_KEY"
            raise ConfigError(f"model {choice} needs {variable}; set it, or DEFAULT_MODEL=offline")
    return choices


def open_provider(choice: ModelChoice, config: BotSettings) -> Provider:
    """The provider for `choice`; its SDK is imported here, only when it is used."""
    return PROVIDERS[choice.provider].open(choice, config)


def open_model(config: BotSettings) -> Provider:
    """The configured model, behind its fallbacks when there are some."""
    providers = [open_provider(choice, config) for choice in choose_models(config)]
    return providers[0] if len(providers) == 1 else FallbackProvider(providers)
