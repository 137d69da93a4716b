from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from runtime.testing import FakeLLM, FakeTelegram, make_workspace, open_local, postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The PostgreSQL server of this run: the one `scripts/test` started
    (`BOTCORE_TEST_POSTGRES`), or a throwaway cluster of its own. Never skipped: a test that
    needs PostgreSQL fails without one."""
    url = os.environ.get("BOTCORE_TEST_POSTGRES")
    if url:
        yield url
        return
    with postgres.cluster() as started:
        yield started


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """The bot's database on each engine: a SQLite file, or a fresh schema on the run's
    PostgreSQL server (dropped afterwards)."""
    if request.param == "sqlite":
        yield tmp_path / "engram.db"
        return
    url = postgres.new_schema(request.getfixturevalue("postgres_server"))
    yield url
    postgres.drop_schema(url)


@pytest.fixture
def storage(database: Path | str) -> dict[str, Any]:
    """`database` as the settings of `local_config(workspace, **storage)`."""
    if isinstance(database, str):
        return {"database_url": database}
    return {"engram_db_path": database}


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
