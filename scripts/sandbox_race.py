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
import threading
from contextlib import suppress
from pathlib import Path

import trio

from runtime.botcore import Bot, BotCoreError


def swap(folder: Path, outside: Path, stop: threading.Event) -> None:
    aside, link = folder.with_name("aside"), folder.with_name("link")
    while not stop.is_set():
        os.rename(folder, aside)
        try:
            os.symlink(outside, link)
            os.rename(link, folder)
            os.unlink(folder)
        except OSError:
            with suppress(FileNotFoundError):
                os.unlink(link)
        for _ in range(1000):
            try:
                if folder.is_symlink():
                    os.unlink(folder)
                elif folder.exists():
                    shutil.rmtree(folder)
                os.rename(aside, folder)
                break
            except OSError:
                continue


async def main(seconds: float) -> None:
    base = Path(tempfile.mkdtemp())
    workspace, outside = base / "bot", base / "outside"
    (workspace / "notes").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET")
    (workspace / "notes" / "secret.txt").write_text("inside")
    counts = {"reads": 0, "escapes": 0, "writes": 0, "refused": 0}
    stop = threading.Event()
    swapper = threading.Thread(target=swap, args=(workspace / "notes", outside, stop))
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

            swapper.start()
            async with trio.open_nursery() as nursery:
                for worker in range(4):
                    nursery.start_soon(hammer, worker, trio.current_time() + seconds)
    finally:
        stop.set()
        if swapper.is_alive():
            swapper.join()
        written_outside = len(os.listdir(outside)) - 1
        shutil.rmtree(base)
    print(f"{seconds:g} s: {counts}, files written outside: {written_outside}")


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
