"""Odd files and a hostile neighbour for sandbox tests."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def fifo(path: Path, *, release_after: float = 20.0) -> Iterator[Path]:
    """A FIFO at `path` for the `with` block. After `release_after` seconds, anyone still
    blocked opening it for reading is let go (a writer opens and closes it at once), so a
    test of code that blocks on a FIFO fails instead of hanging the test run."""
    os.mkfifo(path)
    done = threading.Event()

    def release() -> None:
        if done.wait(release_after):
            return
        while not done.wait(0.05):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:  # ENXIO: nobody is reading right now
                if exc.errno not in (errno.ENXIO, errno.ENOENT):
                    raise

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        done.set()
        thread.join(5)


@contextmanager
def swapping(folder: Path, outside: Path) -> Iterator[None]:
    """A thread that keeps swapping `folder` for a symlink to `outside` and back."""
    stop = threading.Event()
    aside, link = folder.with_name("aside"), folder.with_name("link")

    def swap() -> None:
        while not stop.is_set():
            os.rename(folder, aside)
            try:
                os.symlink(outside, link)
                os.rename(link, folder)
                os.unlink(folder)
            except OSError:  # the bot made the folder again in between: fine, put it back
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

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
