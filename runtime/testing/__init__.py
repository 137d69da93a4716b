"""Fake servers that speak real wire protocols on 127.0.0.1, for testing bots offline."""

from typing import TYPE_CHECKING, Any

from runtime.testing.balancer import Balancer, BalancerStatistics, open_balancer
from runtime.testing.bot import (
    CrashOn,
    RunningBot,
    local_config,
    make_workspace,
    open_runtime,
    serve_bot,
)
from runtime.testing.fake_telegram import FakeTelegram
from runtime.testing.files import fifo, swapping
from runtime.testing.local import open_local, serve_local
from runtime.testing.process import BotProcess, bot_process, free_port
from runtime.testing.receiver import Received, Receiver
from runtime.testing.waiting import wait_until

if TYPE_CHECKING:
    from runtime.testing.fake_llm import (
        CutStream,
        Fail,
        FakeLLM,
        Malformed,
        RateLimit,
        RecordedRequest,
        Slow,
        Text,
        ToolUse,
    )

_FAKE_LLM = {
    "CutStream",
    "Fail",
    "FakeLLM",
    "Malformed",
    "RateLimit",
    "RecordedRequest",
    "Slow",
    "Text",
    "ToolUse",
}


def __getattr__(name: str) -> Any:
    # Imported on first use, so `python -m runtime.testing.fake_llm` does not find its own
    # module already imported by this package (runpy warns about that).
    if name in _FAKE_LLM:
        from runtime.testing import fake_llm

        return getattr(fake_llm, name)
    raise AttributeError(f"module 'runtime.testing' has no attribute {name!r}")


__all__ = [
    "Balancer",
    "BalancerStatistics",
    "BotProcess",
    "CrashOn",
    "CutStream",
    "Fail",
    "FakeLLM",
    "FakeTelegram",
    "Malformed",
    "RateLimit",
    "Received",
    "Receiver",
    "RecordedRequest",
    "RunningBot",
    "Slow",
    "Text",
    "ToolUse",
    "bot_process",
    "fifo",
    "free_port",
    "local_config",
    "make_workspace",
    "open_balancer",
    "open_local",
    "open_runtime",
    "serve_bot",
    "serve_local",
    "swapping",
    "wait_until",
]
