from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(
    condition: Callable[[], object], *, within: float = 10.0, every: float = 0.01
) -> None:
    """Poll `condition` until it holds; `trio.TooSlowError` after `within` (virtual or real
    seconds), so a test that waits for something that never happens fails instead of hanging."""
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polling state that has no event of its own
            await trio.sleep(every)
