"""`botcorebot chat` in a real terminal: a pseudo-terminal drives the process as a person would."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import trio

from runtime.testing import FakeLLM, Slow, Text, wait_until


class Terminal:
    """`python -m runtime ARGS` on its own pseudo-terminal (so Ctrl-C is the terminal's)."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the terminal is its controlling one
            os.execve(sys.executable, [sys.executable, "-m", "runtime", *args], dict(env))
        self.pid, self.fd = pid, fd
        self.output = ""
        self.status: int | None = None

    def expect(self, text: str, within: float = 30.0) -> str:
        """Read until `text` has appeared; everything read so far is returned."""
        deadline = time.monotonic() + within
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.output}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} never came; the terminal shows:\n{self.output}")
                self.output += chunk.decode(errors="replace")
        return self.output

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, within: float = 15.0) -> int:
        """The exit status; fails if the process is still running after `within` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            self._drain()
            time.sleep(0.05)
        raise AssertionError(f"chat is still running; the terminal shows:\n{self.output}")

    def _drain(self) -> None:
        while select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk.decode(errors="replace")

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@contextmanager
def terminal(args: list[str], env: Mapping[str, str]) -> Iterator[Terminal]:
    term = Terminal(args, env)
    try:
        yield term
    finally:
        term.close()


def _environ(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return keep | {"TERM": "xterm", **extra}


def test_ctrl_c_at_the_prompt_leaves_at_once(workspace: Path) -> None:
    with terminal(["chat", "--workspace", str(workspace)], _environ()) as term:
        term.expect("> ")
        term.type("\x03")  # Ctrl-C, as the terminal sends it: SIGINT to the chat process
        assert term.wait() == 0


async def test_chat_shows_thinking_streams_the_answer_and_keeps_logs_out(
    workspace: Path, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(Slow(1.0, Text("The kettle is blue, as you said.")))
    env = _environ(DEFAULT_MODEL="claude-x", ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=url)

    def converse() -> str:
        with terminal(["chat", "--workspace", str(workspace)], env) as term:
            term.expect("> ")
            term.type("what colour is the kettle?\r")
            term.expect("The kettle is blue, as you said.")
            term.expect("> ")
            term.type("\x04")  # Ctrl-D
            assert term.wait() == 0
            return term.output

    shown = await trio.to_thread.run_sync(converse)
    answer_at = shown.index("The kettle is blue")
    assert "thinking" in shown[:answer_at]
    assert "INFO" not in shown and "runtime.session" not in shown


async def test_a_message_left_unanswered_by_ctrl_c_is_shown_and_asked_about(
    workspace: Path, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(Slow(60.0, Text("too late")))
    env = _environ(DEFAULT_MODEL="claude-x", ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=url)
    args = ["chat", "--workspace", str(workspace)]

    def interrupt() -> Terminal:
        term = Terminal(args, env)
        term.expect("> ")
        term.type("book the table for friday\r")
        return term

    term = await trio.to_thread.run_sync(interrupt)
    try:
        await wait_until(lambda: fake.requests)
        term.type("\x03")
        assert await trio.to_thread.run_sync(term.wait) == 0
    finally:
        term.close()
    asked = len(fake.requests)

    def come_back(answer: str) -> str:
        with terminal(args, env) as again:
            again.expect("answer now? [Y/n]")
            again.type(answer)
            again.expect("> ")
            again.type("\x04")
            assert again.wait() == 0
            return again.output

    shown = await trio.to_thread.run_sync(come_back, "n\r")
    assert "1 message from your last chat had no answer yet" in shown
    assert "book the table for friday" in shown
    assert len(fake.requests) == asked  # declined: no model call, no tokens spent

    def later() -> str:
        with terminal(args, env) as third:
            third.expect("Ctrl-D or Ctrl-C to leave.")
            third.expect("> ")
            third.type("\x04")
            assert third.wait() == 0
            return third.output

    assert "no answer yet" not in await trio.to_thread.run_sync(later)
