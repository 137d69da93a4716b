"""Fake servers that speak real wire protocols on 127.0.0.1, for testing bots offline."""

from runtime.testing.fake_llm import (
    CutStream,
    Fail,
    FakeLLM,
    Malformed,
    RecordedRequest,
    Slow,
    Text,
    ToolUse,
    open_fake_llm,
    serve_fake_llm,
)

__all__ = [
    "CutStream",
    "Fail",
    "FakeLLM",
    "Malformed",
    "RecordedRequest",
    "Slow",
    "Text",
    "ToolUse",
    "open_fake_llm",
    "serve_fake_llm",
]
