"""Logging set-up: plain lines by default, JSON with LOG_FORMAT=json; secrets never printed.

Turn transitions carry `session`, `turn`, `state` and `duration_ms` as structured fields.
`Redactor` is the one place secrets are taken out of text: log records here, tool results
and stored text in the session.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import TypeVar

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


REDACTED = "[redacted]"

T = TypeVar("T")


class Redactor:
    """Replaces every configured secret (API keys, tokens, webhook secrets) in a text.

    Each secret is also looked for as JSON escapes it, so one read back through a tool's JSON
    answer is caught too. Values shorter than 4 characters are not secrets worth the name and
    would blank out ordinary words.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms = set()
        for secret in secrets:
            if secret and len(secret) >= 4:
                forms |= {
                    secret,
                    json.dumps(secret)[1:-1],
                    json.dumps(secret, ensure_ascii=False)[1:-1],
                }
        self._secrets = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def value(self, value: T) -> T:
        """Every string inside a JSON-like value (tool arguments) redacted."""
        if isinstance(value, str):
            return self(value)  # type: ignore[return-value]
        if isinstance(value, Mapping):
            return {key: self.value(item) for key, item in value.items()}  # type: ignore[return-value]
        if isinstance(value, list):
            return [self.value(item) for item in value]  # type: ignore[return-value]
        return value


class RedactSecrets(logging.Filter):
    """Replaces the configured secrets wherever they appear in a record."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self._redact = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._redact:
            record.msg, record.args = self._redact(record.getMessage()), None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self._redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, *, pid: bool = False) -> None:
        super().__init__()
        self._pid = pid

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._pid:
            entry["pid"] = record.process
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    level: str, format: str, secrets: Iterable[str | None], *, pid: bool = False
) -> None:
    """Log to stderr. `pid`: each line says its process (`serve --workers` shares one stderr
    among the supervisor and its workers)."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter(pid=pid))
    else:
        where = " [%(process)d]" if pid else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s{where} %(name)s: %(message)s")
        )
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("httpx2", "httpcore2", "hpack", "hypercorn.error", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
