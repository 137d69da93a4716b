"""The fleet of examples/fleet: the compose file's topology, the test balancer that plays its
nginx, and the topology run with plain processes (PostgreSQL, 3 `botcorebot serve` on one
workspace, the balancer in front), one replica killed -9 under load."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx2
import psycopg
import trio
from ruamel.yaml import YAML

from runtime.config import Config
from runtime.testing import (
    FakeLLM,
    free_port,
    open_balancer,
    open_local,
    wait_until,
)
from runtime.testing.local import Receive, Scope, Send, answer_lifespan, read_body, send_json
from runtime.testing.postgres import drop_schema, new_schema
from runtime.testing.process import bot_process

FLEET = Path(__file__).parents[2] / "examples" / "fleet"
JSON = dict[str, Any]


# -- the compose file ------------------------------------------------------------------------


def compose() -> JSON:
    loaded: JSON = YAML(typ="safe").load((FLEET / "compose.yaml").read_text())
    return loaded


def replicas(services: JSON) -> dict[str, JSON]:
    """The services that run the bot: the botcorebot image with its own entry point."""
    return {
        name: service
        for name, service in services.items()
        if str(service.get("image", "")).startswith("botcorebot") and "entrypoint" not in service
    }


def upstream_servers() -> list[str]:
    conf = (FLEET / "nginx.conf").read_text()
    (block,) = re.findall(r"upstream botcore \{(.*?)\}", conf, re.S)
    return re.findall(r"^\s*server\s+(\S+)", block, re.M)


def test_the_fleet_is_one_postgres_three_replicas_on_its_url_and_a_balancer_over_them() -> None:
    services = compose()["services"]
    postgres = [s for s in services.values() if str(s.get("image", "")).startswith("postgres:")]
    assert len(postgres) == 1
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres[0]["volumes"])
    bots = replicas(services)
    assert sorted(bots) == ["bot1", "bot2", "bot3"]
    for name in ("DATABASE_URL", "BOTCORE_API_TOKEN", "PGPASSWORD"):
        assert len({bot["environment"][name] for bot in bots.values()}) == 1, name
    url = next(iter(bots.values()))["environment"]["DATABASE_URL"]
    assert url.startswith("postgresql://") and urlsplit(url).hostname == "postgres"
    for bot in bots.values():
        assert bot["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "bot:/bot" in bot["volumes"]  # one workspace: see compose.yaml
        assert "ports" not in bot  # reached through the balancer only
    # The balancer's upstreams are exactly the replicas, each on the port it serves.
    assert sorted(upstream_servers()) == sorted(f"{name}:3000" for name in bots)
    (lb,) = [s for s in services.values() if str(s.get("image", "")).startswith("nginx:")]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert set(lb["depends_on"]) == set(bots)
    assert all(port.startswith("127.0.0.1:") for port in lb["ports"])


def test_the_replicas_environment_names_real_settings_and_loads(tmp_path: Path) -> None:
    """A misspelt name would be ignored without a word (the environment holds much else)."""
    known = {field.name.upper() for field in attrs.fields(Config)}
    environment = next(iter(replicas(compose()["services"]).values()))["environment"]
    resolved = {}
    for name, value in environment.items():
        assert name in known or name.startswith("PG"), name  # PG*: libpq's own
        default = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value))
        required = re.fullmatch(r"\$\{\w+:\?.*\}", str(value))
        resolved[name] = default.group(1) if default else "x" if required else str(value)
    config = Config.load(resolved, workspace=tmp_path)
    assert config.database_url == environment["DATABASE_URL"] and config.lease_seconds == 4


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in compose()["services"].items():
        if service.get("restart") != "no":
            assert service["healthcheck"]["test"][0] == "CMD", name


def test_no_secret_is_written_in_the_compose_file() -> None:
    secret = re.compile(r"KEY|TOKEN|SECRET|PASSWORD")
    for name, service in compose()["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if secret.search(variable):
                assert re.fullmatch(r"\$\{\w+(:?[-?].*)?\}", str(value)), (name, variable)
        url = (service.get("environment") or {}).get("DATABASE_URL")
        assert url is None or urlsplit(url).password is None  # libpq's PGPASSWORD has it
    assert ".env" in (FLEET / ".gitignore").read_text().split()
    for line in (FLEET / ".env.example").read_text().splitlines():
        if not line.startswith("#") and secret.search(line.partition("=")[0]):
            assert line.endswith("="), line


def test_nginx_sends_a_failed_request_to_the_next_replica_and_keyless_posts_only_once() -> None:
    conf = (FLEET / "nginx.conf").read_text()
    retries = re.findall(r"^\s*proxy_next_upstream\s+([^;]+);", conf, re.M)
    assert "error timeout http_502 http_503 non_idempotent" in retries
    assert "error timeout http_502 http_503" in retries  # the keyless /_once/ location
    assert re.search(r"map \$http_idempotency_key \$retry_path", conf)


# -- the test balancer -----------------------------------------------------------------------


class Upstream:
    """An upstream that answers every request with its name (and keeps what it was sent)."""

    def __init__(self, name: str, *, status: int = 200) -> None:
        self.name, self.status = name, status
        self.seen: list[JSON] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"path": scope["path"], "body": body, "headers": headers})
        await send_json(send, self.status, {"upstream": self.name})


@asynccontextmanager
async def closing_upstream() -> AsyncIterator[str]:
    """An upstream that reads a request and closes the connection without answering: a
    replica killed with the request in flight."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(5):
                await stream.receive_some(65536)

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


async def test_the_balancer_takes_turns_and_passes_over_an_upstream_that_is_down() -> None:
    a, b = Upstream("a"), Upstream("b")
    async with open_local(a) as url_a, open_local(b) as url_b:
        down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        async with (
            open_balancer([url_a, down, url_b]) as balancer,
            httpx2.AsyncClient(timeout=10) as client,
        ):
            answers = [
                (await client.post(f"{balancer.url}/api/message?n={n}", json={"n": n})).json()
                for n in range(6)
            ]
            stats = balancer.statistics()
    assert [answer["upstream"] for answer in answers] == ["a", "b", "b", "a", "b", "b"]
    assert stats.answered_by == (2, 0, 4) and stats.next_upstream == 2 and stats.failed == 0
    # The request reaches the upstream as sent, with the client's address appended.
    assert json.loads(a.seen[0]["body"]) == {"n": 0}
    assert a.seen[0]["headers"]["x-forwarded-for"] == "127.0.0.1"


async def test_a_503_goes_to_the_next_upstream_and_the_last_ones_answer_is_passed_on() -> None:
    busy, ok = Upstream("busy", status=503), Upstream("ok")
    async with open_local(busy) as url_busy, open_local(ok) as url_ok:
        async with (
            open_balancer([url_busy, url_ok]) as balancer,
            httpx2.AsyncClient(timeout=10) as client,
        ):
            moved = await client.get(f"{balancer.url}/readyz")
        async with (
            open_balancer([url_busy, url_busy]) as balancer,
            httpx2.AsyncClient(timeout=10) as client,
        ):
            passed = await client.get(f"{balancer.url}/readyz")
    assert moved.status_code == 200 and moved.json()["upstream"] == "ok"
    assert passed.status_code == 503 and passed.json()["upstream"] == "busy"


async def test_a_post_cut_off_by_its_upstream_is_sent_on_only_with_an_idempotency_key() -> None:
    ok = Upstream("ok")
    async with closing_upstream() as dying, open_local(ok) as url_ok:

        async def post(headers: dict[str, str]) -> tuple[httpx2.Response, int]:
            async with (
                open_balancer([dying, url_ok]) as balancer,
                httpx2.AsyncClient(timeout=10) as client,
            ):
                response = await client.post(
                    f"{balancer.url}/api/message", json={}, headers=headers
                )
                return response, balancer.statistics().failed

        keyed, keyed_failed = await post({"Idempotency-Key": "k1"})
        keyless, keyless_failed = await post({})
    assert keyed.status_code == 200 and keyed.json()["upstream"] == "ok" and keyed_failed == 0
    assert [seen["headers"]["idempotency-key"] for seen in ok.seen] == ["k1"]
    # The dying upstream may have stored it: without a key, sending it on could answer twice.
    assert keyless.status_code == 502 and keyless_failed == 1 and len(ok.seen) == 1


# -- the topology with plain processes -------------------------------------------------------

SESSIONS = 18
AFTER_KILL = 3
"""Messages each session has answered after the kill before it stops."""
MAX_MESSAGES = 40
TOKEN = "fleet-token"
ATTEMPTS = 10


def query(url: str, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(sql, params).fetchall()


async def leases(url: str) -> dict[str, tuple[str, int]]:
    """Each HTTP session's lease: (owner, epoch)."""
    rows = await trio.to_thread.run_sync(
        query,
        url,
        "SELECT session_key, owner, epoch FROM session_leases WHERE session_key LIKE 'http:%%'",
    )
    return {str(key): (str(owner), int(epoch)) for key, owner, epoch in rows}


async def wait_ready(client: httpx2.AsyncClient, base: str) -> None:
    with trio.fail_after(30):
        while (await client.get(f"{base}/readyz")).status_code != 200:  # noqa: ASYNC110 - a server has no event to wait on
            await trio.sleep(0.05)


async def test_kill_9_of_one_replica_behind_the_balancer_loses_and_repeats_nothing(
    workspace: Path, postgres_server: str
) -> None:
    url = new_schema(postgres_server)
    fake = FakeLLM(delay=0.1)
    sent: dict[str, list[str]] = defaultdict(list)
    """Per session, the texts it sent, in order."""
    answers: dict[str, list[JSON]] = defaultdict(list)
    """Per key, every answer the client got (a retried key may be answered more than once)."""
    after_kill: dict[str, int] = defaultdict(int)
    client_retries = 0
    killed = trio.Event()
    try:
        async with AsyncExitStack() as stack:
            model = await stack.enter_async_context(open_local(fake))
            env = {
                "DEFAULT_MODEL": "claude-x",
                "ANTHROPIC_API_KEY": "k",
                "ANTHROPIC_BASE_URL": model,
                "DATABASE_URL": url,
                "LEASE_SECONDS": "2",
                "BOTCORE_API_TOKEN": TOKEN,
            }
            # As compose.yaml: three replicas on one workspace and one database.
            bots = [
                await stack.enter_async_context(bot_process(workspace, env, ready_within=60))
                for _ in range(3)
            ]
            balancer = await stack.enter_async_context(open_balancer([b.url for b in bots]))
            client = await stack.enter_async_context(
                httpx2.AsyncClient(
                    base_url=balancer.url,
                    timeout=60,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
            )

            async def send(session: str) -> None:
                nonlocal client_retries
                number = len(sent[session])
                text, key = f"{session} m{number}", f"{session}-{number}"
                sent[session].append(text)
                late = killed.is_set()
                for _ in range(ATTEMPTS):
                    try:
                        response = await client.post(
                            "/api/message",
                            json={"message": text, "session_id": session},
                            headers={"Idempotency-Key": key},
                        )
                    except httpx2.TransportError:
                        client_retries += 1  # cut off mid-answer: the same key again
                        continue
                    if response.status_code in (429, 502, 503):
                        client_retries += 1
                        await trio.sleep(float(response.headers.get("Retry-After", "0.2")))
                        continue
                    assert response.status_code == 200, (key, response.text)
                    answers[key].append(response.json())
                    after_kill[session] += late
                    return
                raise AssertionError(f"{key} was not answered in {ATTEMPTS} attempts")

            for bot in bots:  # taking messages, not only alive: no 503 moves the turns below
                await wait_ready(client, bot.url)
            # One message per session, one after another: the balancer's turns give session
            # n to replica n % 3, which takes its lease (it accepted the message first).
            names = [f"s{n}" for n in range(SESSIONS)]
            for name in names:
                await send(name)
            owners = await leases(url)
            replica_owner = [owners[f"http:s{n}"][0] for n in range(3)]
            assert len(set(replica_owner)) == 3
            assert all(owners[f"http:s{n}"][0] == replica_owner[n % 3] for n in range(SESSIONS))

            async def keep_sending(session: str) -> None:
                while len(sent[session]) < MAX_MESSAGES and after_kill[session] < AFTER_KILL:
                    await send(session)

            async with trio.open_nursery() as load:
                for name in names:
                    load.start_soon(keep_sending, name)
                await wait_until(lambda: sum(map(len, answers.values())) >= 3 * SESSIONS, within=60)
                at_kill = await leases(url)
                bots[0].kill()  # mid-load: its sessions have turns under way or queued
                killed.set()
                assert await bots[0].wait() == -9
            final = await leases(url)
            stats = balancer.statistics()
        # Every replica has stopped: what the database holds now is final.
        rows = await trio.to_thread.run_sync(
            query, url, "SELECT session_id, message_id, state, reply FROM inbox ORDER BY id"
        )
        history = await trio.to_thread.run_sync(
            query,
            url,
            "SELECT session_key, content, turn_id FROM history WHERE role = 'user' ORDER BY id",
        )
    finally:
        drop_schema(url)

    keys = {f"{s}-{n}": text for s, texts in sent.items() for n, text in enumerate(texts)}
    # Every message answered, with its own answer; a key answered twice to the client (a
    # retry) got the same turn both times.
    assert set(answers) == set(keys)
    for key, got in answers.items():
        assert {a["message"] for a in got} == {f"ok: {keys[key]}"}, key
        assert len({a["metadata"]["turn_id"] for a in got}) == 1, key
    # Stored once: one inbox row per key, replied; one turn per message in the history, in
    # the order each session sent them.
    assert sorted(str(row[1]) for row in rows) == sorted(keys)
    assert {row[2] for row in rows} == {"replied"}
    turns: dict[str, set[str]] = defaultdict(set)
    for _, content, turn in history:
        turns[str(content)].add(str(turn))
    assert len(history) == len(keys)
    assert all(len(ids) == 1 for ids in turns.values())
    for session, texts in sent.items():
        assert [c for key, c, _ in history if key == f"http:{session}"] == texts
    # The killed replica's sessions: answered after the kill, their leases taken by others.
    victim = replica_owner[0]
    orphans = [key for key, (owner, _) in at_kill.items() if owner == victim]
    assert orphans, "the killed replica held no session: the kill proved nothing"
    for key in orphans:
        session = key.removeprefix("http:")
        assert after_kill[session] >= AFTER_KILL, session
        owner, epoch = final[key]
        assert owner in replica_owner[1:] and epoch > at_kill[key][1], key
    # The balancer met the dead replica and sent its requests on.
    assert stats.next_upstream >= 1 and stats.failed == 0
    assert not (workspace / "engram.db").exists()  # the data is all in PostgreSQL
    print(
        f"{len(keys)} messages, {len(orphans)} sessions taken over, balancer moved"
        f" {stats.next_upstream} request(s) on, the client retried {client_retries}"
    )
