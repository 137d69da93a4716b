"""Configuration: the seed's environment variables, optionally a `botcore.toml`; env wins."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs

from adapters.ratelimit import trusted_proxies
from adapters.webhook import WebhookSource, secret_problem
from runtime.botcore._db import describe, is_postgres_url

CONFIG_FILE = "botcore.toml"


class ConfigError(Exception):
    """The configuration cannot work; the message says what to fix, in one line."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name.upper()} must be positive, got {value}")


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(
            f"{attribute.name.upper()} must be one of {', '.join(LOG_LEVELS)}, got {value!r}"
        )


def _secret_token(value: str | None) -> None:
    """Telegram's rule for `secret_token`; the value itself stays out of the message."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value):
        raise ValueError(
            "TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -"
        )


# Not slotted: `Config` joins the two (slotted bases would conflict in its layout).
@attrs.frozen(slots=False)
class ProcessSettings:
    """What the process has once, whatever bots it hosts: the HTTP server, its token and
    limits, logging, the shutdown."""

    http_host: str = "127.0.0.1"
    http_port: int = attrs.field(
        default=3000,
        validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(65535)),
    )
    http_keep_alive_seconds: float = attrs.field(default=5.0, validator=_positive)
    """An idle HTTP connection (no new request for this long) is closed by the server."""
    allowed_hosts: str = ""
    """Comma-separated `Host` names the HTTP API answers; empty: loopback names when bound
    to loopback, anything otherwise. `*` allows any (behind a proxy that checks it)."""
    trusted_proxies: str = attrs.field(
        default="", validator=lambda _, __, value: trusted_proxies(value)
    )
    """Comma-separated addresses/CIDRs of reverse proxies whose X-Forwarded-For/Forwarded
    names the client (for the per-client rate limit); empty: none is trusted."""
    botcore_api_token: str | None = attrs.field(default=None, repr=False)
    log_level: str = attrs.field(default="info", validator=_log_level)
    log_format: str = attrs.field(
        default="plain", validator=attrs.validators.in_(("plain", "json"))
    )
    client_rate_per_minute: float = attrs.field(default=600.0, validator=attrs.validators.ge(0))
    max_body_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    shutdown_grace_seconds: float = attrs.field(default=10.0, validator=_positive)

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (self.botcore_api_token,)


@attrs.frozen
class McpServerSettings:
    """An `[mcp.NAME]` table of botcore.toml: an MCP server whose tools the bot gets, named
    `NAME__tool`. Either `command` (with `args`, `env`, `cwd`: started over stdio) or `url`
    (with `headers`: streamable HTTP). `${VAR}` in `env` and `headers` values is read from the
    environment, to keep secrets out of the file; those values are redacted like any secret."""

    command: str | None = None
    args: list[str] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict, repr=False)
    """The server's environment: these variables only, beside PATH, HOME and the like."""
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict, repr=False)
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    """The values read from the environment (filled in at load, not set in the file)."""


@attrs.frozen(slots=False)
class BotSettings:
    """What each bot has of its own: workspace and database, model and keys, Telegram,
    webhooks, limits of its turns and sessions."""

    workspace: Path = Path(".")
    engram_db_path: Path | None = None
    database_url: str | None = attrs.field(
        default=None, repr=False, validator=lambda _, __, value: _database_url(value)
    )
    """`DATABASE_URL`: a `postgresql://` URL puts the bot's data on PostgreSQL, which several
    replicas can share; unset, the bot's data is the SQLite file `db_path`."""
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
    session_rate_per_minute: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
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
    max_tool_calls: int = attrs.field(default=32, validator=_positive)
    """Tool calls run per model answer; the rest get an error result."""
    tool_concurrency: int = attrs.field(default=4, validator=_positive)
    """Tool calls of one model answer that run at the same time."""
    tool_threads: int = attrs.field(default=8, validator=_positive)
    """Worker threads the file and task tools may hold at once (their own pool)."""
    schedule_tool: bool = True
    """Whether the model gets the `schedule` tool (`false` keeps its 185 tokens out of
    every prompt; schedules set before still fire)."""
    heartbeat_minutes: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    """How often the heartbeat asks the model to follow HEARTBEAT.md; 0 is off."""
    heartbeat_session: str = attrs.field(
        default="http:heartbeat",
        validator=attrs.validators.matches_re(r"[a-z_]+:.+"),
    )
    """Where the heartbeat speaks, `channel:session` (`telegram:<chat id>`); on `http` its
    answers stay in the inbox and the session's history."""
    outbox_grace_seconds: float = attrs.field(default=30.0, validator=attrs.validators.ge(0.5))
    """How long a Telegram answer or webhook callback may take to be confirmed sent before it
    is sent again (its process died, or the channel gave up): at least once, never lost."""
    lease_seconds: float = attrs.field(default=4.0, validator=attrs.validators.ge(1.0))
    """On PostgreSQL, how long a replica's hold on a session lasts unless renewed: how soon
    another replica takes over the sessions of one that died."""
    identity_writable: bool = False
    """Whether tools may change IDENTITY.md, SOUL.md and USER.md (each change is kept)."""
    webhooks: dict[str, WebhookSource] = attrs.field(factory=dict)
    """The `[webhooks.NAME]` tables of botcore.toml, each a `WebhookSource` named by its
    table; `secret_env` in a table names the environment variable holding its secret."""
    mcp: dict[str, McpServerSettings] = attrs.field(factory=dict)

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (
            self.anthropic_api_key,
            self.openai_api_key,
            self.telegram_bot_token,
            self.telegram_webhook_secret,
            *(hook.secret for hook in self.webhooks.values()),
            *(secret for server in self.mcp.values() for secret in server.secrets),
            self.database_url and urlsplit(self.database_url).password,
        )

    @property
    def db_path(self) -> Path:
        return self.engram_db_path or self.workspace / "engram.db"

    @property
    def database(self) -> Path | str:
        """What `Bot.open` opens: the PostgreSQL URL when there is one, else the SQLite file."""
        return self.database_url or self.db_path

    @property
    def database_name(self) -> str:
        """The database for people (logs, banners): no password."""
        if self.database_url:
            return describe(self.database_url)
        return str(self.db_path.resolve())


@attrs.frozen(slots=False)
class Config(BotSettings, ProcessSettings):
    """One workspace's configuration as botcore.toml and the environment give it: the
    process's settings and its bot's, in one flat namespace (`HTTP_PORT`, `DEFAULT_MODEL`).
    A host of several bots (`runtime.host.HostConfig`) takes the process's part once."""

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (*self.bot.secrets, *self.process.secrets)

    @property
    def process(self) -> ProcessSettings:
        return _part(self, ProcessSettings)

    @property
    def bot(self) -> BotSettings:
        return _part(self, BotSettings)

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        workspace: Path | None = None,
        overrides: Mapping[str, object] | None = None,
    ) -> Config:
        """Read `botcore.toml` from the workspace (if any), then the environment over it,
        then `overrides` (a host file's `[bots.NAME]` table: that bot's own) over both."""
        environ = os.environ if environ is None else environ
        root = workspace or Path(environ.get("BOTCORE_WORKSPACE") or ".")
        names = {field.name for field in attrs.fields(cls)}
        values: dict[str, object] = {}
        file = root / CONFIG_FILE
        source = _Source(file)
        if file.is_file():
            try:
                source.text = file.read_text(encoding="utf-8")
                values.update(tomllib.loads(source.text))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{file}: {exc}") from exc
            source.names = set(values)
            unknown = sorted(set(values) - names)
            if unknown:
                raise ConfigError(
                    "; ".join(f"{source.where(name)}: unknown setting" for name in unknown)
                )
        for name in names - {"webhooks", "mcp"}:
            raw = environ.get(name.upper())
            if raw is not None and raw.strip() != "":
                values[name] = raw.strip()
                source.names.discard(name)
        unknown = sorted(set(overrides or {}) - names)
        if unknown:
            raise ConfigError(f"unknown bot setting(s): {', '.join(unknown)}")
        values.update(overrides or {})
        values["workspace"] = str(root)
        secret_from = _webhook_tables(values, environ)
        try:
            config = _converter.structure(values, cls)
        except cattrs.ClassValidationError as exc:
            problems = _explain(exc, source.where)
            raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
        except ValueError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None
        for name, hook in config.webhooks.items():
            # Checked now: a secret that cannot sign would make every delivery a 401.
            where = secret_from.get(name, "secret")
            if not hook.secret:
                raise ConfigError(f"webhook source {name!r} has no secret: set {where}")
            problem = secret_problem(hook.scheme, hook.secret)
            if problem is not None:
                raise ConfigError(f"webhook source {name!r}: {problem}; check its {where}")
        return attrs.evolve(config, mcp=_mcp_servers(config.mcp, environ))


def _database_url(value: str | None) -> None:
    if value is not None and not is_postgres_url(value):
        raise ValueError(
            "DATABASE_URL must be a postgresql:// URL (SQLite needs none: ENGRAM_DB_PATH"
            " names its file)"
        )


_MCP_NAME = re.compile(r"[A-Za-z0-9-]+(_[A-Za-z0-9-]+)*")


def _mcp_servers(
    servers: dict[str, McpServerSettings], environ: Mapping[str, str]
) -> dict[str, McpServerSettings]:
    """Each server checked (one transport, a name fit for tool names) with `${VAR}` read
    from the environment."""
    resolved = {}
    for name, server in servers.items():
        where = f"MCP server {name!r}"
        if not _MCP_NAME.fullmatch(name) or len(name) > 30:
            raise ConfigError(
                f"{where}: the name must be 1-30 letters, digits, '-' or single '_' "
                "(its tools are named NAME__tool)"
            )
        if (server.command is None) == (server.url is None):
            raise ConfigError(f"{where}: set either command (stdio) or url (streamable HTTP)")
        if server.url is not None and not re.match(r"https?://", server.url):
            raise ConfigError(f"{where}: url must start with http:// or https://")
        secrets: list[str] = []
        resolved[name] = attrs.evolve(
            server,
            env={
                key: _expand(value, environ, secrets, f"{where}: {key}")
                for key, value in server.env.items()
            },
            headers={
                key: _expand(value, environ, secrets, f"{where}: {key}")
                for key, value in server.headers.items()
            },
            secrets=tuple(secrets),
        )
    return resolved


def _webhook_tables(values: dict[str, object], environ: Mapping[str, str]) -> dict[str, str]:
    """Each `[webhooks.NAME]` table made a `WebhookSource`'s fields in place: named by its
    table, its secret read from `secret_env` where given. Returns where each secret came
    from (`$VARIABLE`), for the messages."""
    tables = values.get("webhooks")
    if not isinstance(tables, dict):
        return {}
    secret_from = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            continue
        table = dict(table)
        variable = table.pop("secret_env", None)
        if variable is not None:
            table["secret"] = environ.get(str(variable), "")
            secret_from[name] = f"${variable}"
        table.setdefault("secret", "")
        tables[name] = {**table, "name": name}
    return secret_from


def _expand(value: str, environ: Mapping[str, str], secrets: list[str], where: str) -> str:
    """`value` with each `${VAR}` read from the environment (and noted in `secrets`)."""

    def variable(match: re.Match[str]) -> str:
        found = environ.get(match[1])
        if not found:
            raise ConfigError(f"{where} needs ${match[1]}, which is not set")
        secrets.append(found)
        return found

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", variable, value)


@attrs.define
class _Source:
    """Where each setting came from: `botcore.toml` (with its line) or the environment."""

    file: Path
    text: str = ""
    names: set[str] = attrs.field(factory=set)

    def where(self, path: str) -> str:
        """`HTTP_PORT` for the environment, `…/botcore.toml line 3: http_port` for the file."""
        top = path.partition("[")[0].partition(".")[0]
        if top not in self.names:
            return path.upper()
        line = self._line(path)
        return f"{self.file}{f' line {line}' if line else ''}: {path}"

    def _line(self, path: str) -> int | None:
        """tomllib gives no positions for values: find the key's line in the text."""
        table = re.match(r"(\w+)\['([^']*)'\]\.(\w+)", path)  # webhooks['x'].scheme
        lines = self.text.splitlines()
        start, key = 0, path
        if table:
            header = re.compile(rf"^\s*\[\s*{table[1]}\.\"?{re.escape(table[2])}\"?\s*\]")
            start = next((n for n, text in enumerate(lines) if header.match(text)), 0)
            key = table[3]
        pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for number in range(start, len(lines)):
            if pattern.match(lines[number]):
                return number + 1
            if table and number > start and lines[number].lstrip().startswith("["):
                break
        return start + 1 if table else None


def _explain(exc: cattrs.ClassValidationError, where: Callable[[str], str]) -> list[str]:
    """One phrase per bad setting, named where it was set (see `_Source.where`)."""
    lines = []
    for sub in exc.exceptions:
        if getattr(sub, "__notes__", None):  # a structuring error: cattrs knows the path
            for message in cattrs.transform_error(cattrs.ClassValidationError("", [sub], Config)):
                head, _, path = message.rpartition(" @ $.")
                lines.append(f"{where(path)}: {head}" if path else message)
        else:  # a validator's ValueError: "'http_port' must be <= 65535: 70000"
            text = str(sub.args[0]) if sub.args else str(sub)  # attrs adds more args after it
            name = re.search(r"'(\w+)'|\b([A-Z][A-Z0-9_]*_[A-Z0-9_]*[A-Z0-9])\b", text)
            if name is None:
                lines.append(text)
            else:
                found = (name[1] or name[2]).lower()
                lines.append(text[: name.start()] + where(found) + text[name.end() :])
    return lines


def load_process(
    values: Mapping[str, object], environ: Mapping[str, str], where: Path
) -> ProcessSettings:
    """The process's settings from a host file's top level, the environment over them."""
    names = {field.name for field in attrs.fields(ProcessSettings)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown process setting(s): {', '.join(unknown)}")
    merged = dict(values)
    for name in names:
        raw = environ.get(name.upper())
        if raw is not None and raw.strip() != "":
            merged[name] = raw.strip()
    try:
        return _converter.structure(merged, ProcessSettings)
    except cattrs.ClassValidationError as exc:
        problems = _explain(exc, lambda path: f"{where}: {path}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


P = TypeVar("P", bound=ProcessSettings | BotSettings)


def _part(config: Config, part: type[P]) -> P:
    return part(**{field.name: getattr(config, field.name) for field in attrs.fields(part)})


_converter = cattrs.Converter()
_converter.register_structure_hook(Path, lambda value, _: Path(str(value)).expanduser())
_converter.register_structure_hook(
    int,
    lambda value, _: (
        value if isinstance(value, int) and not isinstance(value, bool) else int(str(value))
    ),
)
_converter.register_structure_hook(float, lambda value, _: float(str(value)))


def _bool(value: object, _: object) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


_converter.register_structure_hook(bool, _bool)
