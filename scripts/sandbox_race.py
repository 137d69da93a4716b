"""Race the file tools against a folder swapped for a symlink, as issue 10 did.

    .venv/bin/python scripts/sandbox_race.py [seconds]

Four tasks read `notes/secret.txt` and write new files in `notes/` while a thread keeps
swapping `notes` for a symlink to a folder outside the workspace. Prints how many reads
returned the outside secret and how many files landed outside (both must be 0).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import trio

from runtime.botcore import Bot, BotCoreError
from runtime.testing import swapping


async def main(seconds: float) -> None:
    base = Path(tempfile.mkdtemp())
    workspace, outside = base / "bot", base / "outside"
    (workspace / "notes").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET")
    (workspace / "notes" / "secret.txt").write_text("inside")
    counts = {"reads": 0, "escapes": 0, "writes": 0, "refused": 0}
    try:
        async with await Bot.open(workspace) as bot:
            fs = bot.tools.fs

            async def hammer(worker: int, deadline: float) -> None:
                while trio.current_time() < deadline:
                    try:
                        text = await fs.read("notes/secret.txt")
                        counts["reads" if text == "inside" else "escapes"] += 1
                    except (BotCoreError, OSError):
                        counts["refused"] += 1
                    try:
                        await fs.write(f"notes/w{worker}-{counts['writes']}.txt", "x")
                        counts["writes"] += 1
                    except (BotCoreError, OSError):
                        counts["refused"] += 1

            with swapping(workspace / "notes", outside):
                async with trio.open_nursery() as nursery:
                    for worker in range(4):
                        nursery.start_soon(hammer, worker, trio.current_time() + seconds)
    finally:
        written_outside = len(os.listdir(outside)) - 1
        shutil.rmtree(base)
    print(f"{seconds:g} s: {counts}, files written outside: {written_outside}")


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
