"""Language model providers behind one protocol.

Errors::

    ProviderError
    ├── ProviderUnavailable  retries ran out on 429/5xx/529, timeouts, dropped connections
    └── ProviderRejected     400/401/403/404: a bad key, an unknown model, a bad request
"""

from runtime.llm.base import (
    AssistantTurn,
    Message,
    ModelRequest,
    ModelResponse,
    OnText,
    Provider,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    Retries,
    StopReason,
    ToolCall,
    ToolResult,
    ToolResults,
    ToolSpec,
    Usage,
    UserText,
)

__all__ = [
    "AssistantTurn",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "OnText",
    "Provider",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "Retries",
    "StopReason",
    "ToolCall",
    "ToolResult",
    "ToolResults",
    "ToolSpec",
    "Usage",
    "UserText",
]
