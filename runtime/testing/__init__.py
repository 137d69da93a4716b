"""Fake servers that speak real wire protocols on 127.0.0.1, for testing bots offline."""

from runtime.testing.bot import (
    CrashOn,
    RunningBot,
    copy_demo_bot,
    local_config,
    make_workspace,
    open_runtime,
    serve_bot,
)
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
from runtime.testing.process import BotProcess, bot_process, free_port
from runtime.testing.waiting import wait_until

__all__ = [
    "BotProcess",
    "CrashOn",
    "CutStream",
    "Fail",
    "FakeLLM",
    "Malformed",
    "RecordedRequest",
    "RunningBot",
    "Slow",
    "Text",
    "ToolUse",
    "bot_process",
    "copy_demo_bot",
    "free_port",
    "local_config",
    "make_workspace",
    "open_fake_llm",
    "open_runtime",
    "serve_bot",
    "serve_fake_llm",
    "wait_until",
]
