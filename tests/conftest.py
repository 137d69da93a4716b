from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from runtime.testing import FakeLLM, FakeTelegram, make_workspace, open_local


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path / "bot")


@pytest.fixture
async def fake_llm() -> AsyncIterator[tuple[FakeLLM, str]]:
    fake = FakeLLM()
    async with open_local(fake) as url:
        yield fake, url


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as http:
        yield http


@pytest.fixture
async def telegram() -> AsyncIterator[tuple[FakeTelegram, str]]:
    fake = FakeTelegram()
    async with open_local(fake) as url:
        yield fake, url
