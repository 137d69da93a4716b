"""`/api/v1/memory/*`: BotCoreBot's memory API over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from runtime.testing import local_config, serve_bot


async def test_store_recall_stats_and_consolidate(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace, botcore_api_token="tok")) as bot:
        auth = {"Authorization": "Bearer tok"}
        api = f"{bot.url}/api/v1/memory"
        assert (await client.get(f"{api}/stats")).status_code == 401
        stored = await client.post(
            f"{api}/store",
            json={
                "content": "the boat is moored at pier 7",
                "type": "factual",
                "importance": 0.8,
                "metadata": {"source": "test"},
            },
            headers=auth,
        )
        assert stored.status_code == 200 and stored.json()["success"] is True
        await client.post(
            f"{api}/store", json={"content": "boats are fun", "type": "opinion"}, headers=auth
        )
        recalled = await client.post(
            f"{api}/recall",
            json={"query": "where is the boat", "limit": 5, "types": ["factual"]},
            headers=auth,
        )
        body = recalled.json()
        assert recalled.status_code == 200 and body["took_ms"] >= 0
        (result,) = body["results"]
        assert result["id"] == stored.json()["id"] and result["content"].endswith("pier 7")
        assert 0 < result["confidence"] <= 1 and 0 < result["strength"] <= 1
        assert result["metadata"] == {"source": "test"}
        stats = (await client.get(f"{api}/stats", headers=auth)).json()
        assert stats["total_memories"] == 2 and stats["by_type"] == {"factual": 1, "opinion": 1}
        assert stats["oldest_memory"] <= stats["newest_memory"] and stats["avg_importance"] == 0.65
        consolidated = (await client.post(f"{api}/consolidate", json={}, headers=auth)).json()
        assert consolidated["consolidated"] is True
        assert consolidated["stats"] == {
            "memories_before": 2,
            "memories_after": 2,
            "merged": 0,
            "forgotten": 0,
        }


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("recall", {"limit": 5}, "'query'"),
        ("recall", {"query": "x", "limit": "5"}, "'limit'"),
        ("recall", {"query": "x", "limit": 0}, "'limit'"),
        ("recall", {"query": "x", "types": ["gossip"]}, "gossip"),
        ("recall", {"query": "x", "colour": "red"}, "colour"),
        ("store", {"content": "x", "importance": 2}, "importance"),
        ("store", {"content": "x", "importance": "high"}, "'importance'"),
        ("store", {"content": "x", "type": "gossip"}, "gossip"),
        ("store", {"content": "   "}, "content"),
        ("store", {"content": 42}, "'content'"),
    ],
)
async def test_invalid_fields_are_400_naming_them(
    workspace: Path, client: httpx2.AsyncClient, path: str, body: dict[str, object], named: str
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        response = await client.post(f"{bot.url}/api/v1/memory/{path}", json=body)
        stats = (await client.get(f"{bot.url}/api/v1/memory/stats")).json()
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]["message"]
    assert stats["total_memories"] == 0
