"""`botcorebot`: serve a bot, chat with it in the terminal, scaffold, check and back up a workspace.

Options go before or after their command (`botcorebot memory search "q" --workspace DIR`).
Adding a command: a sub-parser made with `_command(...)`, its options, and
`set_defaults(run=...)` naming a function of the parsed arguments that returns the exit status.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

import trio

from adapters import (
    ChannelError,
    Inbound,
    Progress,
    Reply,
    TextDelta,
    TextDiscarded,
    ToolProgress,
)
from runtime import workers
from runtime.botcore import Bot, BotCoreError, WorkspaceError
from runtime.config import CONFIG_FILE, Config, ConfigError
from runtime.host import HostConfig, load_host, serve
from runtime.inbox import Inbox, InboxEntry
from runtime.lifecycle import Runtime, model_summary
from runtime.llm import ProviderError
from runtime.llm.select import open_model
from runtime.logs import configure_logging
from runtime.scaffold import FILES, scaffold

log = logging.getLogger("runtime")

USAGE_ERROR = 2
"""Exit status of a mistake a person can fix (argparse uses the same)."""


class CliError(Exception):
    """A mistake on the command line or in the workspace; the message says what to do."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, so its usage is the one shown
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status: int = args.run(args)
        return status
    except BaseException as exc:
        leaves = list(_leaves(exc))
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return 0
        for leaf in leaves:
            problem = _explain(leaf, args)
            if problem is not None:
                print(f"botcorebot: {problem}", file=sys.stderr)
                return USAGE_ERROR
        raise


def _version() -> str:
    try:
        return metadata.version("botcorebot")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="botcorebot", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _workspace_option(parser, argparse.SUPPRESS)
    parser.set_defaults(workspace=None, parser=parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cmd = _command(
        commands, "serve", "run the bot: HTTP API, Telegram, webhooks", workspace=False
    )
    serve_cmd.add_argument(
        "--workspace",
        "-w",
        type=Path,
        action="append",
        dest="workspaces",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="a bot's folder (BOTCORE_WORKSPACE); repeat it to serve several bots",
    )
    serve_cmd.add_argument(
        "--config",
        type=Path,
        dest="host_file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="a host file: process settings and a [bots.NAME] table per bot",
    )
    serve_cmd.add_argument(
        "--port", type=int, default=argparse.SUPPRESS, help="HTTP port (HTTP_PORT, default 3000)"
    )
    serve_cmd.add_argument(
        "--workers",
        type=_count,
        default=1,
        metavar="N",
        help="N processes sharing the port (SO_REUSEPORT), supervised; needs PostgreSQL"
        " (DATABASE_URL) when N > 1",
    )
    # How the supervisor of --workers starts each worker: its end of a socket pair.
    serve_cmd.add_argument("--supervisor-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve_cmd.set_defaults(run=_run_serve)

    chat_cmd = _command(commands, "chat", "talk to the bot in the terminal")
    chat_cmd.add_argument("--session", default="terminal", help="session id (default: terminal)")
    chat_cmd.add_argument(
        "-m", "--message", help="send this one message, print the answer and exit"
    )
    chat_cmd.set_defaults(run=_run_chat)

    init_cmd = _command(commands, "init", "create a new bot workspace", workspace=False)
    init_cmd.add_argument("directory", type=Path)
    init_cmd.set_defaults(run=_run_init)

    doctor_cmd = _command(
        commands, "doctor", "check the workspace, model keys, channels and port; say what is wrong"
    )
    doctor_cmd.set_defaults(run=_run_doctor)

    backup_cmd = _command(
        commands, "backup", "copy engram.db consistently, also while the bot is running"
    )
    backup_cmd.add_argument("file", type=Path, help="the copy to write (must not exist)")
    backup_cmd.set_defaults(run=_run_backup)

    dead_cmd = _command(commands, "deadletters", "list messages set aside after crashes")
    dead_cmd.add_argument(
        "--retry", type=int, metavar="ID", help="handle this one again at next start"
    )
    dead_cmd.set_defaults(run=_with_config(_deadletters))

    schedules_cmd = _command(commands, "schedules", "list the messages the bot scheduled")
    schedules_cmd.add_argument("--cancel", type=int, metavar="ID", help="delete this schedule")
    schedules_cmd.set_defaults(run=_with_config(_schedules))

    memory_cmd = _command(commands, "memory", "search, add, export, import the bot's memory")
    memory = memory_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    search = _command(memory, "search", "recall the best matches for a query")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--type", action="append", dest="types", help="only this type (repeatable)")
    add = _command(memory, "add", "store a memory")
    add.add_argument("text")
    add.add_argument("--type", default="factual")
    add.add_argument("--importance", type=float, default=0.5)
    export = _command(memory, "export", "every memory as JSON Lines, to stdout or a file")
    export.add_argument("file", nargs="?", type=Path)
    load = _command(memory, "import", "add memories from JSON Lines (a file or - for stdin)")
    load.add_argument("file")
    stats = _command(memory, "stats", "how many memories of each type, how old")
    stats.add_argument("--json", action="store_true", help="the HTTP API's JSON")
    _command(memory, "consolidate", "fold old episodes into summaries, forget faded memories")
    memory_cmd.set_defaults(run=_with_config(_memory))

    tasks_cmd = _command(commands, "tasks", "print the task graph (.gid/graph.yml)")
    tasks_cmd.add_argument("--ready", action="store_true", help="only tasks that can start now")
    tasks_cmd.set_defaults(run=_with_config(_tasks))

    identity_cmd = _command(
        commands, "identity", "show or undo the changes tools made to IDENTITY.md, SOUL.md, USER.md"
    )
    identity = identity_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    _command(identity, "history", "the changes, newest first, with the text each replaced")
    restore = _command(identity, "restore", "put back a file's text from before a change")
    restore.add_argument("change", type=int, metavar="ID")
    identity_cmd.set_defaults(run=_with_config(_identity))
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    *,
    workspace: bool = True,
) -> argparse.ArgumentParser:
    """A sub-parser that also takes the shared options (left unset when not given there, so
    one given before the command is kept)."""
    parser = commands.add_parser(name, help=help, description=help)
    if workspace:
        _workspace_option(parser, argparse.SUPPRESS)
    parser.set_defaults(parser=parser)
    return parser


def _workspace_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--workspace",
        "-w",
        type=Path,
        default=default,
        metavar="DIR",
        help="the bot's folder (BOTCORE_WORKSPACE)",
    )


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The errors inside (nested) exception groups, as trio's nurseries raise them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _explain(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for an error a person can fix, or None for a bug (traceback)."""
    if isinstance(exc, CliError | ConfigError | BotCoreError | ProviderError):
        return str(exc)
    if not isinstance(exc, OSError):
        return None
    if exc.errno == errno.EADDRINUSE:
        config = getattr(args, "config", None)
        where = f"port {config.http_port} on {config.http_host}" if config else "the HTTP port"
        return f"{where} is already in use; set HTTP_PORT (or --port) to a free one"
    name = exc.filename or exc
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {name}"
    if exc.errno == errno.ENOENT:
        return f"{name} does not exist"
    if exc.errno == errno.ENOTDIR:
        return f"{name}: a part of this path is a file, not a folder"
    if exc.errno == errno.EISDIR:
        return f"{name} is a folder; give a file"
    if exc.errno == errno.EEXIST:
        return f"{name} already exists"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device for {name}"
    return None


def _load_config(args: argparse.Namespace) -> Config:
    """The configuration for a command; refuses to invent a workspace in a random folder."""
    environ = dict(os.environ)
    if getattr(args, "port", None) is not None:
        environ["HTTP_PORT"] = str(args.port)
    workspace: Path | None = args.workspace
    if workspace is None and not environ.get("BOTCORE_WORKSPACE", "").strip():
        here = Path(".")
        if not any((here / name).exists() for name in (*FILES, "engram.db")):
            raise CliError(
                f"no workspace given and {Path.cwd()} is not one (no IDENTITY.md, "
                f"{CONFIG_FILE} or engram.db): pass --workspace DIR or set BOTCORE_WORKSPACE; "
                "'botcorebot init DIR' creates a new one"
            )
    config = Config.load(environ, workspace=workspace)
    args.config = config
    return config


def _with_config(
    command: Callable[[Config, argparse.Namespace], Awaitable[int | None]],
) -> Callable[[argparse.Namespace], int]:
    """A workspace command: its configuration, warnings-only logging, then `command` in trio."""

    def run(args: argparse.Namespace) -> int:
        config = _load_config(args)
        configure_logging(_quiet(config.log_level), config.log_format, config.secrets)
        status = trio.run(command, config, args)
        return status or 0

    return run


def _quiet(level: str) -> str:
    """Output of a command is for the person: only warnings and errors go beside it."""
    return level if logging.getLevelName(level.upper()) > logging.WARNING else "warning"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _identity_warning(config: Config) -> str | None:
    if (config.workspace / "IDENTITY.md").exists():
        return None
    return (
        f"{config.workspace.resolve()} has no IDENTITY.md, so the bot has no name "
        f"('botcorebot init {config.workspace}' writes one)"
    )


# -- init ---------------------------------------------------------------------------------


def _run_init(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    if directory.exists() and not directory.is_dir():
        raise CliError(f"{directory} is a file; give a folder for the new bot")
    try:
        created = scaffold(directory)
    except FileExistsError as exc:
        print(f"botcorebot: {exc}", file=sys.stderr)
        return 1
    print(f"created a bot in {directory}: " + ", ".join(created))
    print(f"start it with: {_executable()} serve --workspace {directory}")
    if _executable() != "botcorebot":
        activate = Path(sys.executable).parent / "activate"
        if activate.exists():
            print(f"(or 'source {_shown(activate)}' once, then just 'botcorebot')")
    return 0


def _executable() -> str:
    """How to run botcorebot from this shell: the bare name only when PATH finds this one."""
    here = Path(sys.executable).parent / "botcorebot"
    found = shutil.which("botcorebot")
    if found and here.exists() and Path(found).resolve() == here.resolve():
        return "botcorebot"
    if here.exists():
        return _shown(here)
    return f"{_shown(Path(sys.executable))} -m runtime"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- serve --------------------------------------------------------------------------------


def _run_serve(args: argparse.Namespace) -> int:
    workspaces: list[Path] = getattr(args, "workspaces", [])
    file: Path | None = getattr(args, "host_file", None)
    if file is None and len(workspaces) <= 1:
        if workspaces:
            args.workspace = workspaces[0]
        config: Config | HostConfig = _load_config(args)
    else:
        environ = dict(os.environ)
        if getattr(args, "port", None) is not None:
            environ["HTTP_PORT"] = str(args.port)
        config = load_host(environ, workspaces=workspaces, file=file)
        args.config = config.process
    host = config if isinstance(config, HostConfig) else HostConfig.single(config)
    process = host.process
    problem = workers.refusal(
        args.workers,
        [name for name, bot in host.bots.items() if not bot.database_url],
        process.http_port,
    )
    if problem is not None:
        raise CliError(problem)
    if args.workers > 1:
        workers.check_port(process.http_host, process.http_port)  # EADDRINUSE: said as usual
    several = args.workers > 1 or args.supervisor_fd is not None
    configure_logging(process.log_level, process.log_format, config.secrets, pid=several)
    if args.workers == 1:
        trio.run(_serve, config, args.supervisor_fd)
        return 0
    policy = workers.WorkerPolicy(args.workers, stop_within=2 * process.shutdown_grace_seconds + 10)
    failed = trio.run(workers.supervise, _worker_command(args), policy)
    if failed is not None:
        print(f"botcorebot: {failed}", file=sys.stderr)
        return 1
    log.info("stopped %d workers", args.workers)
    return 0


def _worker_command(args: argparse.Namespace) -> list[str]:
    """The `serve` command line of one worker: this one's bots and port, one process."""
    command = [sys.executable, "-m", "runtime", "serve"]
    workspaces: list[Path] = getattr(args, "workspaces", [])
    file: Path | None = getattr(args, "host_file", None)
    if file is not None:
        command += ["--config", str(file.absolute())]
    named = workspaces if file is not None or len(workspaces) > 1 else [args.workspace]
    for workspace in named:
        if workspace is not None:
            command += ["--workspace", str(Path(workspace).absolute())]
    if getattr(args, "port", None) is not None:
        command += ["--port", str(args.port)]
    return command


async def _serve(config: Config | HostConfig, supervisor_fd: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT. As a worker of `serve --workers` (`supervisor_fd`):
    the HTTP socket shares the port, and the supervisor hears `ready` and is watched."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s", signal.Signals(signum).name)
                    shutdown.set()
                    return

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            reuse_port = supervisor_fd is not None
            await serve(config, shutdown, reuse_port=reuse_port, task_status=task_status)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        await nursery.start(run)
        if supervisor_fd is not None:
            supervisor = socket.socket(fileno=supervisor_fd)
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(supervisor))
            nursery.start_soon(workers.report_to_supervisor, stream, shutdown)
    log.info("stopped")


# -- chat ---------------------------------------------------------------------------------


class _TerminalResponder:
    """Prints one answer as it streams in; `thinking` shows until the first text arrives."""

    def __init__(self, prefix: str = "") -> None:
        self.done = trio.Event()
        self.started = trio.Event()
        self.reply_: Reply | None = None
        self._prefix = prefix
        self._streamed = False
        self._tty = sys.stdout.isatty()

    def reply(self, reply: Reply) -> None:
        self._begin()
        if reply.error is not None:
            print(("\n" if self._streamed else "") + f"error: {reply.message}", flush=True)
        elif self._streamed:
            print(flush=True)
        else:
            print(reply.message, flush=True)
        self.reply_ = reply
        self.done.set()

    def progress(self, event: Progress) -> None:
        if isinstance(event, TextDelta):
            self._begin()
            self._streamed = True
            print(event.text, end="", flush=True)
        elif isinstance(event, TextDiscarded) and self._streamed:
            # Printed text cannot be taken back: say that what follows starts again.
            print("\n(that answer broke off; another model answers from the start)", flush=True)
        elif (
            isinstance(event, ToolProgress)
            and event.phase == "start"
            and self._tty
            and not self.started.is_set()  # the line still shows "thinking"
        ):
            print(f"\r\033[K(using {event.name}) ", end="", flush=True)

    def _begin(self) -> None:
        if not self.started.is_set():
            self.started.set()
            if self._tty:
                print("\r\033[K", end="")
            print(self._prefix, end="", flush=True)

    async def show_thinking(self) -> None:
        """A 'thinking…' line while the model has said nothing yet (terminals only)."""
        if not self._tty:
            return
        dots = 0
        while not self.started.is_set():
            print(f"\r\033[Kthinking{'.' * (dots % 4)}", end="", flush=True)
            dots += 1
            with trio.move_on_after(0.4):
                await self.started.wait()


def _run_chat(args: argparse.Namespace) -> int:
    config = _load_config(args)
    configure_logging(_quiet(config.log_level), config.log_format, config.secrets)
    status: int = trio.run(_chat, config, args.session, args.message)
    return status


async def _read_line(prompt: str) -> str:
    """One line from stdin; Ctrl-C interrupts it at once (the reading thread is left behind)."""
    print(prompt, end="", flush=True)
    return await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)


async def _chat(config: Config, session: str, message: str | None) -> int:
    """A terminal conversation through the same session machinery as the HTTP channel."""
    interactive = message is None
    async with await Bot.open(config.workspace, config.database) as bot:
        left = [
            entry
            for entry in await Inbox(bot.db).unfinished()
            if entry.channel == "cli" and entry.session_id == session
        ]
        if left and interactive:
            left = await _ask_about_unanswered(bot, left)
        provider = open_model(config)
        try:
            runtime = Runtime(config, bot, provider)
            identity = await bot.identity.load()
            warning = _identity_warning(config)
            if warning and interactive:
                print(f"note: {warning}")
            recovered: list[_TerminalResponder] = []

            def answer_earlier(entry: InboxEntry) -> _TerminalResponder:
                shown = f"(your earlier message: {entry.text[:200]!r})\n"
                responder = _TerminalResponder(prefix=shown)
                recovered.append(responder)
                return responder

            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(runtime.run, responders={"cli": answer_earlier})
                )
                if interactive:
                    print(f"{identity.display_name} on {provider.name}. Ctrl-D or Ctrl-C to leave.")
                for responder in recovered:
                    await responder.done.wait()
                if message is not None:
                    reply = await _turn(runtime, session, message)
                    status = 1 if reply is None or reply.error is not None else 0
                else:
                    status = await _converse(runtime, session)
                runtime.close()
        finally:
            await provider.aclose()
    return status


async def _ask_about_unanswered(bot: Bot, entries: list[InboxEntry]) -> list[InboxEntry]:
    """Messages left unanswered when the last chat ended: answer them now, or drop them."""
    print(f"{_plural(len(entries), 'message')} from your last chat had no answer yet:")
    for entry in entries:
        print(f"  > {entry.text[:200]}")
    answer = (await _read_line("answer now? [Y/n] ")).strip().lower()
    if answer in ("n", "no"):
        inbox = Inbox(bot.db)
        for entry in entries:
            await inbox.withdraw(entry.id)
        return []
    return entries


async def _converse(runtime: Runtime, session: str) -> int:
    while True:
        line = await _read_line("> ")
        if not line:
            print()
            return 0
        if line.strip():
            await _turn(runtime, session, line.strip())


async def _turn(runtime: Runtime, session: str, text: str) -> Reply | None:
    responder = _TerminalResponder()
    try:
        await runtime.deliver(Inbound("cli", session, text, responder))
    except ChannelError as exc:
        print(f"error: {exc}")
        return None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder.show_thinking)
        await responder.done.wait()
    return responder.reply_


# -- doctor -------------------------------------------------------------------------------


class _Report:
    def __init__(self) -> None:
        self.failures = 0
        self.warnings = 0

    def ok(self, text: str) -> None:
        print(f"ok    {text}")

    def warn(self, text: str) -> None:
        self.warnings += 1
        print(f"warn  {text}")

    def fail(self, text: str) -> None:
        self.failures += 1
        print(f"FAIL  {text}")


def _run_doctor(args: argparse.Namespace) -> int:
    report = _Report()
    try:
        config = _load_config(args)
    except (CliError, ConfigError) as exc:
        report.fail(f"configuration: {exc}")
        return 1
    configure_logging("critical", config.log_format, config.secrets)
    report.ok(f"configuration ({config.workspace / CONFIG_FILE} and the environment)")
    trio.run(_doctor, config, report)
    if report.failures:
        print(f"{_plural(report.failures, 'problem')} to fix")
        return 1
    print("all good" + (f" ({_plural(report.warnings, 'warning')})" if report.warnings else ""))
    return 0


async def _doctor(config: Config, report: _Report) -> None:
    from runtime.llm.select import choose_models

    workspace = config.workspace.resolve()
    if not workspace.is_dir():
        report.fail(f"workspace {workspace} is not a folder ('botcorebot init {workspace}')")
        return
    missing = [
        name for name in ("IDENTITY.md", "SOUL.md", "USER.md") if not (workspace / name).exists()
    ]
    if missing:
        report.warn(f"workspace {workspace} has no {', '.join(missing)}")
    else:
        report.ok(f"workspace {workspace}")
    try:
        async with await Bot.open(config.workspace, config.database) as bot:
            memories = (await bot.memory.stats()).total_memories
            inbox = Inbox(bot.db)
            waiting, dead = len(await inbox.unfinished()), len(await inbox.dead_letters())
            check = None
            if bot.db.dialect == "sqlite":
                check = await bot.db.run(lambda db: db.execute("PRAGMA quick_check").fetchone())
    except WorkspaceError as exc:  # "cannot open the database …: why"
        report.fail(str(exc))
    except Exception as exc:  # whatever the engine says is the finding
        report.fail(f"database {config.database_name}: {exc}")
    else:
        line = f"database {config.database_name}: {_plural(memories, 'memory', 'memories')}"
        if check and check[0] != "ok":
            report.fail(f"{line}, damaged: {check[0]}")
        elif dead:
            report.warn(f"{line}, {_plural(dead, 'dead letter')} ('botcorebot deadletters')")
        else:
            report.ok(line + (f", {waiting} waiting for an answer" if waiting else ""))
    try:
        choices = choose_models(config)
    except ConfigError as exc:
        report.fail(f"model: {exc}")
        choices = []
    for choice in choices:
        if choice.provider == "offline":
            report.ok("model: the embedded offline model (no key needed)")
            continue
        problem = await _check_key(config, choice.provider)
        if problem:
            report.fail(f"model {choice}: {problem}")
        else:
            report.ok(f"model {choice}: {choice.provider.upper()}_API_KEY accepted")
    if config.telegram_bot_token:
        problem, who = await _check_telegram(config)
        mode = "webhook" if config.telegram_webhook_secret else "polling"
        if problem:
            report.fail(f"Telegram: {problem}")
        else:
            report.ok(f"Telegram: the token belongs to @{who} ({mode})")
    for name in config.webhooks:
        report.ok(f"webhook source {name!r}: POST /webhooks/{name}, secret set")
    problem = _port_problem(config.http_host, config.http_port)
    if problem and await _serving(config.http_host, config.http_port):
        report.warn(f"HTTP port {config.http_port}: a bot is running there (its /healthz answers)")
    elif problem:
        report.fail(problem)
    else:
        report.ok(f"HTTP port {config.http_port} on {config.http_host} is free")
    if config.http_host not in ("127.0.0.1", "localhost", "::1") and not config.botcore_api_token:
        report.warn(
            f"HTTP_HOST={config.http_host} without BOTCORE_API_TOKEN: anyone who can reach "
            "the port can use the bot"
        )


async def _check_key(config: Config, provider: str) -> str | None:
    """A cheap authenticated call (listing one model) that costs no tokens."""
    import httpx2

    if provider == "anthropic":
        base = config.anthropic_base_url or "https://api.anthropic.com"
        headers = {"x-api-key": config.anthropic_api_key or "", "anthropic-version": "2023-06-01"}
        variable = "ANTHROPIC_API_KEY"
    else:
        base = config.openai_base_url or "https://api.openai.com/v1"
        headers = {"Authorization": f"Bearer {config.openai_api_key or ''}"}
        variable = "OPENAI_API_KEY"
    url = base.rstrip("/") + ("/v1/models" if provider == "anthropic" else "/models")
    try:
        async with httpx2.AsyncClient(timeout=10) as client:
            response = await client.get(url, params={"limit": 1}, headers=headers)
    except httpx2.HTTPError as exc:
        return f"cannot reach {base}: {type(exc).__name__} {exc}".strip()
    if response.status_code in (401, 403):
        return f"{variable} was refused ({response.status_code}); check the key"
    if response.status_code >= 400:
        return f"{url} answered {response.status_code}"
    return None


async def _check_telegram(config: Config) -> tuple[str | None, str]:
    import httpx2

    from adapters.telegram import TelegramApi, TelegramError, TelegramSettings

    settings = TelegramSettings(
        token=config.telegram_bot_token or "", api_base_url=config.telegram_api_base_url
    )
    try:
        async with httpx2.AsyncClient(timeout=10) as client:
            with trio.fail_after(15):
                me = await TelegramApi(settings, client).call("getMe")
    except TelegramError as exc:
        if exc.status == 401:
            return "Telegram refused TELEGRAM_BOT_TOKEN (401); check it with @BotFather", ""
        return f"getMe failed: {exc}", ""
    except (httpx2.HTTPError, trio.TooSlowError) as exc:
        return f"cannot reach {config.telegram_api_base_url}: {type(exc).__name__}", ""
    return None, str(me.get("username", "?")) if isinstance(me, dict) else "?"


async def _serving(host: str, port: int) -> bool:
    """Whether a botcorebot already answers on the port (doctor run beside a running bot)."""
    import httpx2

    local = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    try:
        async with httpx2.AsyncClient(timeout=3) as client:
            answer = await client.get(f"http://{local}:{port}/healthz")
        return answer.status_code == 200 and answer.json() == {"status": "ok"}
    except (httpx2.HTTPError, ValueError):
        return False


def _port_problem(host: str, port: int) -> str | None:
    if port == 0:
        return None
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"HTTP port {port} on {host} is in use (is the bot already running?)"
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


# -- backup -------------------------------------------------------------------------------


def _run_backup(args: argparse.Namespace) -> int:
    config = _load_config(args)
    target: Path = args.file
    source = config.db_path
    if config.database_url:
        raise CliError(
            "the bot's data is on PostgreSQL: back it up with pg_dump (docs/DEPLOY.md);"
            " 'botcorebot backup' copies a SQLite database"
        )
    if not source.is_file():
        raise CliError(f"there is no database at {source} to back up")
    if target.exists():
        raise CliError(f"{target} exists; give a new file name (nothing was changed)")
    if not target.parent.is_dir():
        raise CliError(f"{target.parent} is not a folder")
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    try:
        _backup(source, partial)
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    size = target.stat().st_size
    print(
        f"backed up {source} to {target} ({size / 1024:.0f} KiB in "
        f"{time.monotonic() - started:.1f}s)"
    )
    return 0


def _backup(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy while other connections keep writing."""
    with sqlite3.connect(source, timeout=30) as live, sqlite3.connect(target) as copy:
        live.backup(copy, pages=1024)
        check = copy.execute("PRAGMA quick_check").fetchone()
    if not check or check[0] != "ok":
        raise CliError(f"the copy does not pass SQLite's check ({check}); try again")


# -- deadletters, tasks, memory -----------------------------------------------------------


async def _deadletters(config: Config, args: argparse.Namespace) -> None:
    async with await Bot.open(config.workspace, config.database) as bot:
        inbox = Inbox(bot.db)
        if args.retry is not None:
            if await inbox.retry(args.retry):
                print(f"message {args.retry} will be handled again at the next start")
            else:
                print(f"no dead letter {args.retry}")
            return
        entries = await inbox.dead_letters()
        if not entries:
            print("no dead letters")
        for entry in entries:
            reason = entry.reply.error.message if entry.reply and entry.reply.error else ""
            print(f"{entry.id}\t{entry.session_key}\t{entry.text[:60]!r}\t{reason}")


async def _schedules(config: Config, args: argparse.Namespace) -> None:
    from runtime.schedules import Schedules

    async with await Bot.open(config.workspace, config.database) as bot:
        schedules = Schedules(bot.db, time.time)
        if args.cancel is not None:
            done = await schedules.cancel(args.cancel)
            print(f"schedule {args.cancel} cancelled" if done else f"no schedule {args.cancel}")
            return
        found = await schedules.pending()
        if not found:
            print("no schedules")
        for schedule in found:
            print(f"{schedule.session_key}\t{schedule.describe()}")
        if config.heartbeat_minutes:
            print(
                f"heartbeat every {config.heartbeat_minutes:g} min into {config.heartbeat_session}"
            )


async def _tasks(config: Config, args: argparse.Namespace) -> None:
    from runtime.botcore import TaskGraph

    graph = await TaskGraph(config.workspace.resolve()).load()
    if graph.name:
        print(f"{graph.name}" + (f": {graph.description}" if graph.description else ""))
    ready_ids = {n.id for n in graph.ready()}
    shown = [n for n in graph.nodes if n.id in ready_ids] if args.ready else list(graph.nodes)
    if not shown:
        print("no tasks are ready" if args.ready else "no tasks yet (.gid/graph.yml)")
    for node in shown:
        mark = "x" if node.done else ">" if node.id in ready_ids else " "
        after = f"  ← {', '.join(node.depends_on)}" if node.depends_on else ""
        print(f"[{mark}] {node.id:<24} {node.title}  ({node.type}, {node.status}){after}")
        for checked, text in node.checklist:
            print(f"      [{'x' if checked else ' '}] {text}")
    for cycle in graph.cycles:
        print(f"warning: a cycle in depends_on: {' → '.join(cycle)}", file=sys.stderr)


def _memories(count: int) -> str:
    return _plural(count, "memory", "memories")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    days = (time.time() - timestamp) / 86400
    age = "today" if days < 1 else f"{_plural(int(days), 'day')} ago"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp)) + f" ({age})"


async def _memory(config: Config, args: argparse.Namespace) -> int:
    from runtime.memory_api import MemoryApi, memory_from_json

    if args.action == "import" and args.file != "-" and not await trio.Path(args.file).is_file():
        raise CliError(f"{args.file} is not a file; give a JSON Lines file, or - for stdin")
    if (
        args.action == "export"
        and args.file is not None
        and not await trio.Path(args.file).parent.is_dir()
    ):
        raise CliError(f"cannot write {args.file}: {args.file.parent} is not a folder")
    async with await Bot.open(config.workspace, config.database) as bot:
        if args.action == "consolidate":
            provider = open_model(config)
            try:
                summarize = model_summary(provider, trio.CapacityLimiter(1))
                result = await MemoryApi(bot, summarize).consolidate()
            finally:
                await provider.aclose()
            stats = result["stats"]
            print(
                f"{stats['memories_before']} → {_memories(stats['memories_after'])}: "
                f"{_plural(stats['merged'], 'episode')} summarized, {stats['forgotten']} forgotten"
            )
            return 0
        api = MemoryApi(bot)
        if args.action == "search":
            results = await api.recall(args.query, args.limit, args.types)
            if not results:
                print("nothing recalled")
            for m in results:
                print(
                    f"{m['id']:>6}  {m['type']:<10}  confidence {m['confidence']:.2f}"
                    f"  strength {m['strength']:.2f}  {m['content']}"
                )
        elif args.action == "add":
            memory_id = await api.store(args.text, args.type, args.importance, {"source": "cli"})
            print(f"stored memory {memory_id}")
        elif args.action == "stats":
            stats = await api.stats()
            if args.json:
                print(json.dumps(stats, indent=2))
                return 0
            by_type = ", ".join(f"{n} {kind}" for kind, n in sorted(stats["by_type"].items()))
            print(f"{_memories(stats['total_memories'])}" + (f" ({by_type})" if by_type else ""))
            print(f"oldest:  {_when(stats['oldest_memory'])}")
            print(f"newest:  {_when(stats['newest_memory'])}")
            print(f"average importance: {stats['avg_importance']:.2f}")
        elif args.action == "export":
            lines = list(await api.export())
            text = "".join(line + "\n" for line in lines)
            if args.file is None:
                sys.stdout.write(text)
            else:
                await trio.Path(args.file).write_text(text, encoding="utf-8")
                print(f"exported {_memories(len(lines))} to {args.file}", file=sys.stderr)
        elif args.action == "import":
            source = (
                sys.stdin.read()
                if args.file == "-"
                else await trio.Path(args.file).read_text(encoding="utf-8")
            )
            memories, bad = [], 0
            for number, line in enumerate(source.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    memories.append(memory_from_json(json.loads(line)))
                except (ValueError, json.JSONDecodeError) as exc:
                    bad += 1
                    print(f"line {number}: skipped: {exc}", file=sys.stderr)
            added, reinforced = await bot.memory.load(memories)
            print(
                f"imported {_memories(added)} ({reinforced} reinforced existing ones, "
                f"{bad} skipped)"
            )
            return 1 if bad else 0
    return 0


async def _identity(config: Config, args: argparse.Namespace) -> None:
    """`identity history` lists the tools' changes with the text each replaced; `identity
    restore ID` puts that text back (itself recorded, so it can be undone too)."""
    async with await Bot.open(config.workspace, config.database) as bot:
        if args.action == "restore":
            change = await bot.tools.fs.restore_identity(args.change)
            state = "did not exist" if change.before is None else "was"
            print(f"restored {change.file} as it {state} before change {change.id}")
            return
        changes = await bot.tools.fs.identity_history.changes()
        if not changes:
            print("no changes to identity files")
        for change in changes:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(change.at))
            print(f"{change.id}\t{when}\t{change.file}\t{change.op}")
            if change.before is None:
                print("    before: (the file did not exist)")
            else:
                print("    before:")
                for line in change.before.splitlines() or [""]:
                    print(f"    | {line}")


if __name__ == "__main__":
    sys.exit(main())
