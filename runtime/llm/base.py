"""The provider protocol: normalized messages, tool specs and calls, usage, stop reasons."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs

from adapters import TextDiscarded

JSONObject = Mapping[str, object]


@attrs.frozen
class ToolSpec:
    """A tool the model may call, with the JSON schema of its arguments."""

    name: str
    description: str
    parameters: JSONObject


@attrs.frozen
class ToolCall:
    id: str
    name: str
    arguments: JSONObject = attrs.field(eq=False)


@attrs.frozen
class ToolResult:
    """What a tool call gave back; `is_error` results go to the model flagged as errors."""

    call_id: str
    name: str
    content: str
    is_error: bool = False


@attrs.frozen
class UserText:
    text: str


@attrs.frozen
class AssistantTurn:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()


@attrs.frozen
class ToolResults:
    results: tuple[ToolResult, ...]


Message = UserText | AssistantTurn | ToolResults


@attrs.frozen
class ModelRequest:
    """One call to a model.

    `system` is the stable part of the prompt (identity, soul, user) that providers may cache;
    `context` is what changes every turn (recalled memories).
    """

    system: str
    context: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int = 1024


class StopReason(enum.StrEnum):
    END_TURN = "end_turn"
    TOOL_USE = "tool_use"
    MAX_TOKENS = "max_tokens"
    OTHER = "other"


@attrs.frozen
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.frozen
class Retries:
    """The retries the SDK made for a call (or a turn): how many, and how long they waited."""

    count: int = 0
    waited: float = 0.0

    def __add__(self, other: Retries) -> Retries:
        return Retries(self.count + other.count, self.waited + other.waited)


@attrs.frozen
class ModelResponse:
    text: str
    tool_calls: tuple[ToolCall, ...]
    stop_reason: StopReason
    usage: Usage = Usage()
    model: str = ""
    retries: Retries = Retries()


OnText = Callable[[str | TextDiscarded], None]
"""Takes the answer's text as it streams, and `TextDiscarded` when text it was given is
withdrawn (a fallback after a model failed mid-answer starts over)."""


class Provider(Protocol):
    """A language model. `complete` streams text through `on_text` as it arrives, if given."""

    @property
    def name(self) -> str: ...

    async def complete(
        self, request: ModelRequest, *, on_text: OnText | None = None
    ) -> ModelResponse: ...

    async def reachable(self) -> str | None:
        """None if the model can be reached now, else why not (for readiness checks; free of
        charge: no model call is made)."""
        ...

    async def aclose(self) -> None: ...


class ProviderError(Exception):
    """Base of the errors a provider raises; the message is fit to show a person."""

    def __init__(self, message: str, *, retries: Retries = Retries()) -> None:
        super().__init__(message)
        self.retries = retries


class ProviderUnavailable(ProviderError):
    """The provider did not answer usefully, even after retries."""


class ProviderRejected(ProviderError):
    """The provider refused the request; retrying will not help."""
