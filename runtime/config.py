"""Configuration: the seed's environment variables, optionally a `botcore.toml`; env wins."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

CONFIG_FILE = "botcore.toml"


class ConfigError(Exception):
    """The configuration cannot work; the message says what to fix, in one line."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name.upper()} must be positive, got {value}")


def _secret_token(value: str | None) -> None:
    """Telegram's rule for `secret_token`; the value itself stays out of the message."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value):
        raise ValueError(
            "TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -"
        )


@attrs.frozen
class WebhookSettings:
    """A `[webhooks.NAME]` table of botcore.toml; see `adapters.webhook.WebhookSource`."""

    secret: str | None = attrs.field(default=None, repr=False)
    secret_env: str | None = None
    """The environment variable holding the secret, to keep it out of the file."""
    scheme: Literal["standard", "github"] = "standard"
    text: str = "message"
    session: str | None = None
    callback: str | None = None


@attrs.frozen
class Config:
    workspace: Path = Path(".")
    engram_db_path: Path | None = None
    default_model: str | None = None
    fallback_models: str = ""
    anthropic_api_key: str | None = attrs.field(default=None, repr=False)
    anthropic_base_url: str | None = None
    openai_api_key: str | None = attrs.field(default=None, repr=False)
    openai_base_url: str | None = None
    telegram_bot_token: str | None = attrs.field(default=None, repr=False)
    telegram_api_base_url: str = "https://api.telegram.org"
    telegram_poll_timeout: int = attrs.field(
        default=30, validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(50))
    )
    telegram_allowed_users: str = ""
    telegram_non_text: str = attrs.field(
        default="reply", validator=attrs.validators.in_(("reply", "ignore"))
    )
    telegram_webhook_secret: str | None = attrs.field(
        default=None,
        repr=False,
        validator=lambda _, __, value: _secret_token(value),
    )
    http_host: str = "127.0.0.1"
    http_port: int = attrs.field(
        default=3000,
        validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(65535)),
    )
    botcore_api_token: str | None = attrs.field(default=None, repr=False)
    log_level: str = "info"
    log_format: str = attrs.field(
        default="plain", validator=attrs.validators.in_(("plain", "json"))
    )
    client_rate_per_minute: float = attrs.field(default=600.0, validator=attrs.validators.ge(0))
    session_rate_per_minute: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    max_body_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    max_message_chars: int = attrs.field(default=32_000, validator=_positive)
    mailbox_size: int = attrs.field(default=64, validator=_positive)
    session_idle_seconds: float = attrs.field(default=300.0, validator=_positive)
    max_tool_rounds: int = attrs.field(default=8, validator=_positive)
    prompt_token_budget: int = attrs.field(default=2000, validator=attrs.validators.ge(200))
    consolidate_every_seconds: float = attrs.field(default=3600.0, validator=attrs.validators.ge(0))
    model_concurrency: int = attrs.field(default=256, validator=_positive)
    """The most calls to one provider at once; below it, the provider's answers set how many."""
    model_timeout_seconds: float = attrs.field(default=60.0, validator=_positive)
    model_max_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    turn_timeout_seconds: float = attrs.field(default=120.0, validator=_positive)
    tool_timeout_seconds: float = attrs.field(default=30.0, validator=_positive)
    shutdown_grace_seconds: float = attrs.field(default=10.0, validator=_positive)
    webhooks: dict[str, WebhookSettings] = attrs.field(factory=dict)

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (
            self.anthropic_api_key,
            self.openai_api_key,
            self.telegram_bot_token,
            self.telegram_webhook_secret,
            self.botcore_api_token,
            *(hook.secret for hook in self.webhooks.values()),
        )

    @property
    def db_path(self) -> Path:
        return self.engram_db_path or self.workspace / "engram.db"

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, *, workspace: Path | None = None
    ) -> Config:
        """Read `botcore.toml` from the workspace (if any), then the environment over it."""
        environ = os.environ if environ is None else environ
        root = workspace or Path(environ.get("BOTCORE_WORKSPACE") or ".")
        names = {field.name for field in attrs.fields(cls)}
        values: dict[str, object] = {}
        file = root / CONFIG_FILE
        if file.is_file():
            try:
                values.update(tomllib.loads(file.read_text(encoding="utf-8")))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{file}: {exc}") from exc
            unknown = sorted(set(values) - names)
            if unknown:
                raise ConfigError(f"{file}: unknown setting(s) {', '.join(unknown)}")
        for name in names - {"webhooks"}:
            raw = environ.get(name.upper())
            if raw is not None and raw.strip() != "":
                values[name] = raw.strip()
        values["workspace"] = str(root)
        try:
            config = _converter.structure(values, cls)
        except cattrs.ClassValidationError as exc:
            raise ConfigError("invalid configuration: " + "; ".join(_explain(exc))) from None
        except ValueError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None
        return attrs.evolve(config, webhooks=_webhook_secrets(config.webhooks, environ))


def _webhook_secrets(
    hooks: dict[str, WebhookSettings], environ: Mapping[str, str]
) -> dict[str, WebhookSettings]:
    """Each source with its secret in place (read from `secret_env` where given)."""
    resolved = {}
    for name, hook in hooks.items():
        secret = environ.get(hook.secret_env, "") if hook.secret_env else hook.secret
        if not secret:
            where = f"${hook.secret_env}" if hook.secret_env else "secret"
            raise ConfigError(f"webhook source {name!r} has no secret: set {where}")
        resolved[name] = attrs.evolve(hook, secret=secret)
    return resolved


def _explain(exc: cattrs.ClassValidationError) -> list[str]:
    """One phrase per bad setting, named as its environment variable."""
    lines = []
    for sub in exc.exceptions:
        if getattr(sub, "__notes__", None):  # a structuring error: cattrs knows the path
            for message in cattrs.transform_error(cattrs.ClassValidationError("", [sub], Config)):
                head, _, where = message.rpartition(" @ $.")
                lines.append(f"{where.upper()}: {head}" if where else message)
        else:  # a validator's ValueError: "'http_port' must be <= 65535: 70000"
            text = str(sub.args[0]) if sub.args else str(sub)  # attrs adds more args after it
            lines.append(re.sub(r"'(\w+)'", lambda m: m[1].upper(), text, count=1))
    return lines


_converter = cattrs.Converter()
_converter.register_structure_hook(Path, lambda value, _: Path(str(value)).expanduser())
_converter.register_structure_hook(
    int,
    lambda value, _: (
        value if isinstance(value, int) and not isinstance(value, bool) else int(str(value))
    ),
)
_converter.register_structure_hook(float, lambda value, _: float(str(value)))
