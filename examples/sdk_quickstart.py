"""The BotCore SDK on its own: a bot's identity, memory, files and tasks, no server, no model.

    .venv/bin/python examples/sdk_quickstart.py [WORKSPACE]

Without WORKSPACE it works on a fresh copy of examples/demo-bot in a temporary folder, so the
repository is not changed. See docs/SDK.md.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import trio

from runtime.botcore import Bot, MemoryType


async def main(workspace: Path) -> None:
    async with await Bot.open(workspace) as bot:
        identity = await bot.identity.load()
        print(f"{identity.display_name} ({identity.creature})")

        # Memory: store, recall (each recall strengthens what it returns), stats.
        await bot.memory.store("Ada's cat is called Miso", importance=0.8)
        await bot.memory.store("Ada prefers tea to coffee", type=MemoryType.FACTUAL)
        for memory in await bot.memory.recall("what is the cat called", limit=3):
            print(f"recalled: {memory.content} (confidence {memory.confidence:.2f})")
        print(f"memories: {(await bot.memory.stats()).total_memories}")

        # Files: only inside the workspace; every write is recorded in the activity log.
        await bot.tools.fs.write("notes/shopping.md", "- tea\n- cat food\n")
        print(f"notes/: {await bot.tools.fs.list('notes')}")

        # Tasks: .gid/graph.yml, the GID tool's format.
        buy = await bot.tasks.create("Buy cat food")
        feed = await bot.tasks.create("Feed Miso", depends_on=[buy.id])
        ready = [node.id for node in (await bot.tasks.load()).ready()]
        print(f"ready now: {ready} ({feed.id} waits for {buy.id})")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        trio.run(main, Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "demo-bot"
            shutil.copytree(Path(__file__).parent / "demo-bot", copy)
            trio.run(main, copy)
