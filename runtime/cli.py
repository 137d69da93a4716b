"""`botcorebot`: serve a bot, chat with it in the terminal, or scaffold a new workspace."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

from adapters import ChannelError, Inbound, Progress, Reply, TextDelta
from runtime.app import Runtime, model_summary, open_model, serve
from runtime.botcore import Bot, BotCoreError
from runtime.config import Config, ConfigError
from runtime.llm import ProviderError
from runtime.logs import configure_logging
from runtime.scaffold import scaffold

log = logging.getLogger("runtime")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="botcorebot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the bot with its HTTP API")
    serve_cmd.add_argument("--workspace", type=Path, help="the bot's folder (BOTCORE_WORKSPACE)")
    serve_cmd.add_argument("--port", type=int, help="HTTP port (HTTP_PORT, default 3000)")
    chat_cmd = commands.add_parser("chat", help="talk to the bot in the terminal")
    chat_cmd.add_argument("--workspace", type=Path, help="the bot's folder (BOTCORE_WORKSPACE)")
    chat_cmd.add_argument("--session", default="terminal", help="session id (default: terminal)")
    init_cmd = commands.add_parser("init", help="create a new bot workspace")
    init_cmd.add_argument("directory", type=Path)
    dead_cmd = commands.add_parser("deadletters", help="list messages set aside after crashes")
    dead_cmd.add_argument("--workspace", type=Path)
    dead_cmd.add_argument(
        "--retry", type=int, metavar="ID", help="handle this one again at next start"
    )
    memory_cmd = commands.add_parser("memory", help="search, add, export, import the bot's memory")
    memory_cmd.add_argument("--workspace", type=Path)
    memory = memory_cmd.add_subparsers(dest="action", required=True)
    search = memory.add_parser("search", help="recall the best matches for a query")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--type", action="append", dest="types", help="only this type (repeatable)")
    add = memory.add_parser("add", help="store a memory")
    add.add_argument("text")
    add.add_argument("--type", default="factual")
    add.add_argument("--importance", type=float, default=0.5)
    export = memory.add_parser("export", help="every memory as JSON Lines, to stdout or a file")
    export.add_argument("file", nargs="?", type=Path)
    load = memory.add_parser("import", help="add memories from JSON Lines (a file or - for stdin)")
    load.add_argument("file")
    memory.add_parser("stats", help="how many memories of each type, how old")
    memory.add_parser("consolidate", help="fold old episodes into summaries, forget faded memories")
    tasks_cmd = commands.add_parser("tasks", help="print the task graph (.gid/graph.yml)")
    tasks_cmd.add_argument("--workspace", type=Path)
    tasks_cmd.add_argument("--ready", action="store_true", help="only tasks that can start now")
    identity_cmd = commands.add_parser(
        "identity", help="show or undo the changes tools made to IDENTITY.md, SOUL.md, USER.md"
    )
    identity_cmd.add_argument("--workspace", type=Path)
    identity = identity_cmd.add_subparsers(dest="action", required=True)
    identity.add_parser("history", help="the changes, newest first, with the text each replaced")
    identity.add_parser("restore", help="put back a file's text from before a change").add_argument(
        "change", type=int, metavar="ID"
    )
    args = parser.parse_args(argv)

    if args.command == "init":
        try:
            created = scaffold(args.directory)
        except FileExistsError as exc:
            print(f"botcorebot: {exc}", file=sys.stderr)
            return 1
        print(f"created a bot in {args.directory}: " + ", ".join(created))
        print(f"start it with: botcorebot serve --workspace {args.directory}")
        return 0

    try:
        environ = dict(os.environ)
        if getattr(args, "port", None) is not None:
            environ["HTTP_PORT"] = str(args.port)
        config = Config.load(environ, workspace=args.workspace)
        configure_logging(config.log_level, config.log_format, config.secrets)
        if args.command == "serve":
            trio.run(_serve, config)
        elif args.command == "chat":
            trio.run(_chat, config, args.session)
        elif args.command == "deadletters":
            trio.run(_deadletters, config, args.retry)
        elif args.command == "tasks":
            trio.run(_tasks, config, args.ready)
        elif args.command == "memory":
            return trio.run(_memory, config, args)
        elif args.command == "identity":
            trio.run(_identity, config, args.action, getattr(args, "change", None))
    except BaseException as exc:
        leaves = list(_leaves(exc))
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return 0
        for leaf in leaves:
            problem = _explain(leaf)
            if problem is not None:
                print(f"botcorebot: {problem}", file=sys.stderr)
                return 2
        raise
    return 0


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The errors inside (nested) exception groups, as trio's nurseries raise them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _explain(exc: BaseException) -> str | None:
    """One line for a start-up error a person can fix, or None for a bug (traceback)."""
    if isinstance(exc, ConfigError | BotCoreError | ProviderError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return "the HTTP port is already in use; set HTTP_PORT (or --port) to a free one"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {exc.filename or exc}"
    return None


async def _serve(config: Config) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s", signal.Signals(signum).name)
                    shutdown.set()
                    return

        nursery.start_soon(watch_signals)
        await serve(config, shutdown)
        nursery.cancel_scope.cancel()


class _TerminalResponder:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.streamed = False

    def reply(self, reply: Reply) -> None:
        if not self.streamed or reply.error is not None:
            print(reply.message, flush=True)
        else:
            print(flush=True)
        self.done.set()

    def progress(self, event: Progress) -> None:
        if isinstance(event, TextDelta):
            self.streamed = True
            print(event.text, end="", flush=True)


async def _chat(config: Config, session: str) -> None:
    """A terminal conversation through the same session machinery as the HTTP channel."""
    async with await Bot.open(config.workspace, config.db_path) as bot:
        provider = open_model(config)
        try:
            runtime = Runtime(config, bot, provider)
            identity = await bot.identity.load()
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime.run)
                print(f"{identity.display_name} on {provider.name}. Ctrl-D to leave.")
                stdin = trio.wrap_file(sys.stdin)
                while True:
                    print("> ", end="", flush=True)
                    line = await stdin.readline()
                    if not line:
                        break
                    if not line.strip():
                        continue
                    responder = _TerminalResponder()
                    try:
                        await runtime.deliver(Inbound("cli", session, line.strip(), responder))
                    except ChannelError as exc:
                        print(f"error: {exc}")
                        continue
                    await responder.done.wait()
                runtime.close()
        finally:
            await provider.aclose()


async def _deadletters(config: Config, retry: int | None) -> None:
    from runtime.inbox import Inbox

    async with await Bot.open(config.workspace, config.db_path) as bot:
        inbox = Inbox(bot.db)
        if retry is not None:
            if await inbox.retry(retry):
                print(f"message {retry} will be handled again at the next start")
            else:
                print(f"no dead letter {retry}")
            return
        entries = await inbox.dead_letters()
        if not entries:
            print("no dead letters")
        for entry in entries:
            reason = entry.reply.error.message if entry.reply and entry.reply.error else ""
            print(f"{entry.id}\t{entry.session_key}\t{entry.text[:60]!r}\t{reason}")


async def _tasks(config: Config, ready: bool) -> None:
    from runtime.botcore import TaskGraph

    graph = await TaskGraph(config.workspace.resolve()).load()
    if graph.name:
        print(f"{graph.name}" + (f": {graph.description}" if graph.description else ""))
    ready_ids = {n.id for n in graph.ready()}
    shown = [n for n in graph.nodes if n.id in ready_ids] if ready else list(graph.nodes)
    if not shown:
        print("no tasks are ready" if ready else "no tasks yet (.gid/graph.yml)")
    for node in shown:
        mark = "x" if node.done else ">" if node.id in ready_ids else " "
        after = f"  ← {', '.join(node.depends_on)}" if node.depends_on else ""
        print(f"[{mark}] {node.id:<24} {node.title}  ({node.type}, {node.status}){after}")
        for checked, text in node.checklist:
            print(f"      [{'x' if checked else ' '}] {text}")
    for cycle in graph.cycles:
        print(f"warning: a cycle in depends_on: {' → '.join(cycle)}", file=sys.stderr)


async def _memory(config: Config, args: argparse.Namespace) -> int:
    from runtime.memory_api import MemoryApi, memory_from_json

    async with await Bot.open(config.workspace, config.db_path) as bot:
        if args.action == "consolidate":
            provider = open_model(config)
            try:
                summarize = model_summary(provider, trio.CapacityLimiter(1))
                result = await MemoryApi(bot, summarize).consolidate()
            finally:
                await provider.aclose()
            stats = result["stats"]
            print(
                f"{stats['memories_before']} → {stats['memories_after']} memories: "
                f"{stats['merged']} episodes summarized, {stats['forgotten']} forgotten"
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
            print(json.dumps(await api.stats(), indent=2))
        elif args.action == "export":
            lines = list(await api.export())
            text = "".join(line + "\n" for line in lines)
            if args.file is None:
                sys.stdout.write(text)
            else:
                await trio.Path(args.file).write_text(text, encoding="utf-8")
                print(f"exported {len(lines)} memories to {args.file}", file=sys.stderr)
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
                f"imported {added} memories ({reinforced} reinforced existing ones, {bad} skipped)"
            )
            return 1 if bad else 0
    return 0


async def _identity(config: Config, action: str, change_id: int | None) -> None:
    """`identity history` lists the tools' changes with the text each replaced; `identity
    restore ID` puts that text back (itself recorded, so it can be undone too)."""
    async with await Bot.open(config.workspace, config.db_path) as bot:
        if action == "restore":
            assert change_id is not None
            change = await bot.tools.fs.restore_identity(change_id)
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
