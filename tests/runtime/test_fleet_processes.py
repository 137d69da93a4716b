"""Replicas as real `botcorebot serve` processes on one PostgreSQL, behind a load balancer
played by the test: kill -9 under load, and a replica paused past its lease.

What "answered twice" means here, precisely: a message (one `Idempotency-Key`) is answered
twice if its inbox row or the history holds two turns for it (two user rows, two turn ids,
a stored reply whose turn is not the one in the history), or if the client is handed two
different answers for it (another turn id or text) on any of its attempts. A model call made
again because the replica running the turn died (or lost the session's lease) before storing
it is not an answer: nothing of it was stored or sent. Such re-runs are counted and reported,
and allowed only for messages whose replica or session owner was killed while they waited.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx2
import psycopg
import trio

from runtime.testing import BotProcess, FakeLLM, Slow, Text, bot_process, open_local, wait_until
from runtime.testing.postgres import drop_schema, new_schema

LEASE_SECONDS = 2.0
TAKEOVER_BOUND = 5.0
"""The issue's bound: a killed replica's sessions are answered elsewhere within 5 s."""
SESSIONS = int(os.environ.get("FLEET_SESSIONS", 120))
KILLS = 10
MIN_MESSAGES, MAX_MESSAGES = 3, 60
"""Each session sends at least MIN messages, and goes on until the last kill is over."""
THINK = float(os.environ.get("FLEET_THINK", 15.0))
"""A session waits up to this long (at random) between an answer and its next message:
load, not overload (past what the replicas can take, every wait grows, takeovers too)."""
MODEL_DELAY = 0.2
ATTEMPTS = 20
"""How often the load balancer sends one message before the test gives up on it."""

_OWNER = re.compile(r"holding session leases as owner (\w+)")

JSON = dict[str, Any]


def _rows(url: str, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(query, params).fetchall()


async def rows(url: str, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(_rows, url, query, params)


def replica_env(model: str, url: str) -> dict[str, str]:
    """A replica's settings: the fake model, the shared database, short leases, no client
    rate limit (the test is every client)."""
    return {
        "DEFAULT_MODEL": "claude-x",
        "ANTHROPIC_API_KEY": "k",
        "ANTHROPIC_BASE_URL": model,
        "DATABASE_URL": url,
        "LEASE_SECONDS": str(LEASE_SECONDS),
        "CLIENT_RATE_PER_MINUTE": "0",
    }


def last_user_text(body: JSON) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(c.get("text", "") for c in content if c.get("type") == "text")
    return ""


@attrs.define(eq=False)
class Replica:
    """One slot of the load balancer's pool: the process that serves it now, if any."""

    name: str
    workspace: Path
    process: BotProcess | None = None
    owner: str = ""
    """Its lease owner id, from its log (a new one after each restart)."""
    live: bool = False
    ready: trio.Event = attrs.field(factory=trio.Event)
    logs: list[str] = attrs.field(factory=list)
    """The logs of its processes so far, the last one included once it ended."""

    @property
    def url(self) -> str:
        assert self.process is not None
        return self.process.url


@asynccontextmanager
async def replica_process(replica: Replica, env: dict[str, str]) -> AsyncIterator[BotProcess]:
    """Start `replica`'s process; mark it live once it answers and its lease owner is known."""
    async with bot_process(replica.workspace, env, ready_within=60) as process:
        try:
            await wait_until(lambda: _OWNER.search(process.log) is not None, within=20)
            found = _OWNER.search(process.log)
            assert found is not None
            replica.process, replica.owner = process, found.group(1)
            replica.live = True
            replica.ready.set()
            yield process
        finally:
            replica.live = False
            replica.logs.append(process.log)


@attrs.define
class Attempt:
    key: str
    replica: str
    sent: float


@attrs.define
class Balancer:
    """Sends each request to a live replica at random; a request that fails with a transport
    error (its replica died) goes to another one with the same Idempotency-Key."""

    replicas: list[Replica]
    client: httpx2.AsyncClient
    rng: random.Random
    in_flight: dict[str, Attempt] = attrs.field(factory=dict)
    """Per session, the attempt under way."""
    answers: dict[str, list[JSON]] = attrs.field(factory=lambda: defaultdict(list))
    """Every answer the clients got, per key (a retried key can be answered more than once)."""
    interrupted: set[str] = attrs.field(factory=set)
    """Keys whose replica or session owner was killed while they waited."""
    transport_errors: int = 0
    latencies: list[float] = attrs.field(factory=list)
    tried: dict[str, list[str]] = attrs.field(factory=lambda: defaultdict(list))
    """Per key, what each attempt met (for the failure messages)."""
    """Seconds from first send to answer, of the messages no kill interrupted."""
    watchers: dict[str, list[Callable[[float], None]]] = attrs.field(factory=dict)
    """Per key, what to call with the time of its answer (the takeover measurements)."""

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.live]

    async def send(self, session: str, text: str, key: str) -> JSON:
        first_sent = trio.current_time()
        for _ in range(ATTEMPTS):
            choices = self.live()
            if not choices:
                await trio.sleep(0.05)
                continue
            replica = self.rng.choice(choices)
            self.in_flight[session] = Attempt(key, replica.name, trio.current_time())
            try:
                response = await self.client.post(
                    f"{replica.url}/api/message",
                    json={"message": text, "session_id": session},
                    headers={"Idempotency-Key": key},
                )
            except httpx2.TransportError as exc:
                self.tried[key].append(f"{replica.name}: {exc!r}")
                self.transport_errors += 1
                self.interrupted.add(key)
                continue
            self.tried[key].append(f"{replica.name}: {response.status_code}")
            if response.status_code in (429, 503):
                await trio.sleep(float(response.headers.get("Retry-After", "0.5")))
                continue
            assert response.status_code == 200, (key, response.status_code, response.text)
            del self.in_flight[session]
            body: JSON = response.json()
            self.answers[key].append(body)
            now = trio.current_time()
            for watch in self.watchers.pop(key, []):
                watch(now)
            if key not in self.interrupted:
                self.latencies.append(now - first_sent)
            return body
        raise AssertionError(f"{key} was not answered in {ATTEMPTS} attempts")


async def test_kill_9_one_of_3_replicas_10_times_under_load_loses_and_repeats_nothing(
    tmp_path: Path, workspace: Path, postgres_server: str
) -> None:
    seed = int(os.environ.get("FLEET_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    url = new_schema(postgres_server)
    fake = FakeLLM(delay=MODEL_DELAY)
    replicas = []
    for n in range(3):
        copy = tmp_path / f"replica-{n}"
        shutil.copytree(workspace, copy)
        replicas.append(Replica(f"r{n}", copy))
    sent: dict[str, list[str]] = defaultdict(list)
    keys: dict[str, str] = {}
    """Each message's text, by its key."""
    takeovers: list[list[float]] = []
    last_kill_done = trio.Event()
    started = time.monotonic()
    try:
        async with open_local(fake) as model, httpx2.AsyncClient(timeout=60) as client:
            env = replica_env(model, url)
            balancer = Balancer(replicas, client, rng)

            async def keep_running(replica: Replica) -> None:
                # Started again after each kill; the last start lasts until the run ends.
                for _ in range(KILLS + 1):
                    async with replica_process(replica, env) as process:
                        await process.process.wait()
                    if last_kill_done.is_set():
                        return

            async def session(s: int) -> None:
                name = f"s{s}"
                # Sessions come and go at their own pace, not all in the same millisecond.
                await trio.sleep(rng.uniform(0, THINK / 2))
                for m in range(MAX_MESSAGES):
                    if m >= MIN_MESSAGES and last_kill_done.is_set():
                        return
                    text, key = f"{name} m{m}", f"{name}-m{m}"
                    keys[key] = text
                    sent[name].append(text)
                    await balancer.send(name, text, key)
                    await trio.sleep(rng.uniform(0, THINK))

            async def kill(k: int) -> None:
                victim = rng.choice(replicas)
                assert victim.process is not None and len(balancer.live()) == 3
                victim.live = False
                victim.ready = trio.Event()
                killed_at = trio.current_time()
                waiting = dict(balancer.in_flight)
                answered: dict[str, float] = {}
                for attempt in waiting.values():

                    def record(at: float, key: str = attempt.key) -> None:
                        answered[key] = at - killed_at

                    balancer.watchers.setdefault(attempt.key, []).append(record)
                victim.process.kill()
                held = {
                    str(key).removeprefix("http:")
                    for (key,) in await rows(
                        url,
                        "SELECT session_key FROM session_leases WHERE owner = %s"
                        " AND expires_at > extract(epoch from clock_timestamp())",
                        (victim.owner,),
                    )
                }
                # The sessions waiting on the killed replica: their request was on it, or
                # it held their lease.
                affected = {
                    attempt.key
                    for session, attempt in waiting.items()
                    if attempt.replica == victim.name or session in held
                }
                balancer.interrupted |= affected
                with trio.fail_after(60):
                    await victim.ready.wait()  # restarted
                with trio.move_on_after(30):  # what is not answered by then counts as never
                    await wait_until(lambda: affected <= answered.keys(), within=math.inf)
                times = [answered.get(key, math.inf) for key in affected]
                for key in sorted(affected - answered.keys()):
                    print(f"  {key} not answered 30 s after the restart: {balancer.tried[key]}")
                takeovers.append(times)
                print(
                    f"kill {k + 1}: {victim.name}, {len(affected)} session(s) waiting on it"
                    f" ({len(held)} leased), first answers after"
                    f" {max(times, default=0):.2f}s at most"
                )

            async with trio.open_nursery() as nursery:
                for replica in replicas:
                    nursery.start_soon(keep_running, replica)
                with trio.fail_after(90):
                    for replica in replicas:
                        await replica.ready.wait()
                load_started = time.monotonic()
                async with trio.open_nursery() as load:
                    for s in range(SESSIONS):
                        load.start_soon(session, s)
                    await trio.sleep(THINK / 2)  # every session has started
                    for k in range(KILLS):
                        await trio.sleep(rng.uniform(0.5, 2.5))  # a random moment
                        await kill(k)
                    last_kill_done.set()
                load_seconds = time.monotonic() - load_started
                for replica in replicas:
                    assert replica.process is not None
                    replica.process.terminate()
    finally:
        for replica in replicas:
            if replica.process is not None and replica.process.process.returncode is None:
                replica.process.kill()
            logs = Path(os.environ.get("FLEET_LOGS", tmp_path))
            os.makedirs(logs, exist_ok=True)
            (logs / f"{replica.name}.log").write_text("\n----\n".join(replica.logs))
        print(f"replica logs: {logs}/r*.log")

    count = sum(len(texts) for texts in sent.values())
    calls = Counter(last_user_text(r.body) for r in fake.requests_for("anthropic"))
    reruns = {text: n for text, n in calls.items() if n > 1}
    by_text = {text: key for key, text in keys.items()}
    # Not asserted: a replica starved of CPU past its lease's margin loses the lease, and
    # another replica runs the turn again (fenced, so it is still answered once).
    unexplained = [text for text in reruns if by_text[text] not in balancer.interrupted]
    measured = [t for times in takeovers for t in times]
    latency = sorted(balancer.latencies) or [0.0]
    print(
        f"\nfleet: 3 replicas, {SESSIONS} sessions, {count} messages in {load_seconds:.1f}s"
        f" ({count / load_seconds:.0f}/s), {KILLS} kill -9s, seed {seed},"
        f" {time.monotonic() - started:.0f}s in all"
        f"\n  answer latency without a kill: median {statistics.median(latency):.2f}s,"
        f" 95th percentile {latency[int(len(latency) * 0.95)]:.2f}s"
        f"\n  transport errors retried: {balancer.transport_errors},"
        f" messages interrupted by a kill: {len(balancer.interrupted)},"
        f" turns re-run: {sum(n - 1 for n in reruns.values())}"
        f" ({len(unexplained)} of messages no kill interrupted: a lease lost by a slow replica)"
        f"\n  takeover (kill -> first answer of each session waiting on it, {len(measured)}"
        f" sessions): median {statistics.median(measured or [0]):.2f}s,"
        f" max {max(measured, default=0):.2f}s"
        f"\n  per kill, max: {', '.join(f'{max(t, default=0):.2f}' for t in takeovers)}"
    )
    # 0 lost: every message sent has one inbox row, answered, and the client got its answer.
    inbox = {
        str(key): (str(state), str(reply))
        for key, state, reply in await rows(url, "SELECT message_id, state, reply FROM inbox")
    }
    assert len(inbox) == count == len(keys)
    assert set(balancer.answers) == set(keys)
    # 0 answered twice: one turn stored per message, and every answer a client got for a key
    # is that turn's.
    stored_turn: dict[str, str] = {}
    for key, (state, reply) in inbox.items():
        assert state == "replied", (key, state)
        stored = json.loads(reply)
        assert stored["message"] == f"ok: {keys[key]}"
        stored_turn[key] = stored["turn_id"]
        for answer in balancer.answers[key]:
            assert answer["message"] == stored["message"], key
            assert answer["metadata"]["turn_id"] == stored["turn_id"], key
    history = await rows(url, "SELECT session_key, turn_id, role, content FROM history ORDER BY id")
    user_rows = Counter(content for _, _, role, content in history if role == "user")
    assert all(n == 1 for n in user_rows.values()), [t for t, n in user_rows.items() if n > 1]
    turn_of = {content: turn for _, turn, role, content in history if role == "user"}
    for key, text in keys.items():
        assert turn_of[text] == stored_turn[key], key
    # Order kept: each session's history lists its messages in the order they were sent.
    for name, texts in sent.items():
        stored_texts = [
            content
            for session_key, _, role, content in history
            if role == "user" and session_key == f"http:{name}"
        ]
        assert stored_texts == texts, name
    # The killed replica's sessions were answered elsewhere within the bound.
    assert len(takeovers) == KILLS and measured
    assert max(measured) <= TAKEOVER_BOUND
    drop_schema(url)


async def test_a_replica_paused_past_its_lease_has_its_late_write_refused(
    tmp_path: Path, workspace: Path, postgres_server: str
) -> None:
    url = new_schema(postgres_server)
    fake = FakeLLM()
    paused_ws, other_ws = tmp_path / "paused", tmp_path / "other"
    shutil.copytree(workspace, paused_ws)
    shutil.copytree(workspace, other_ws)
    async with open_local(fake) as model, httpx2.AsyncClient(timeout=60) as client:
        env = replica_env(model, url)

        async def ask(base: str, text: str, key: str) -> JSON:
            response = await client.post(
                f"{base}/api/message",
                json={"message": text, "session_id": "s"},
                headers={"Idempotency-Key": key},
            )
            assert response.status_code == 200, response.text
            body: JSON = response.json()
            return body

        async with bot_process(paused_ws, env) as paused, bot_process(other_ws, env) as other:
            await ask(paused.url, "hello", "k0")  # the session's lease is `paused`'s now
            # The paused replica's model answer comes while it is stopped: it would store a
            # turn of its own if it could when it wakes up.
            fake.script(Slow(1.0, Text("the paused replica's late answer")))
            first: list[JSON] = []
            answered = trio.Event()

            async def on_paused() -> None:
                first.append(await ask(paused.url, "what now", "k1"))
                answered.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(on_paused)
                await wait_until(lambda: len(fake.requests) == 2, within=10)
                paused.process.send_signal(signal.SIGSTOP)
                stopped_at = trio.current_time()
                try:
                    # The load balancer gives up on the paused replica and retries the key
                    # on the other one, which takes the session once the lease lapses.
                    retried = await ask(other.url, "what now", "k1")
                    taken_after = trio.current_time() - stopped_at
                    await trio.sleep(max(0.0, LEASE_SECONDS * 2 - taken_after))
                finally:
                    paused.process.send_signal(signal.SIGCONT)
                with trio.fail_after(15):
                    await answered.wait()
            # After it woke up, the paused replica still serves the session (through the
            # replica that holds it now).
            after = await ask(paused.url, "and then", "k2")
            assert paused.process.returncode is None
            paused_log = paused.log
    assert retried["message"] == "ok: what now"
    # The client never got two different answers: the paused replica passes on the other's.
    assert first[0]["message"] == retried["message"]
    assert first[0]["metadata"]["turn_id"] == retried["metadata"]["turn_id"]
    assert after["message"] == "ok: and then"
    assert [last_user_text(r.body) for r in fake.requests] == [
        "hello",
        "what now",  # the paused replica's call, whose answer it never stored
        "what now",
        "and then",
    ]
    history = await rows(
        url, "SELECT turn_id, role, content FROM history WHERE session_key = 'http:s' ORDER BY id"
    )
    assert [(role, content) for _, role, content in history] == [
        ("user", "hello"),
        ("assistant", "ok: hello"),
        ("user", "what now"),
        ("assistant", "ok: what now"),
        ("user", "and then"),
        ("assistant", "ok: and then"),
    ]
    assert history[2][0] == retried["metadata"]["turn_id"]
    (reply,) = await rows(
        url, "SELECT reply FROM inbox WHERE session_id = 's' AND message_id = 'k1'"
    )
    assert json.loads(reply[0])["turn_id"] == retried["metadata"]["turn_id"]
    assert "late answer" not in reply[0]
    refused = "no longer this replica's" in paused_log
    print(
        f"\npaused replica: the other answered {taken_after:.2f}s after the SIGSTOP;"
        f" on SIGCONT its turn was {'refused at the write' if refused else 'stopped by its lease'}"
    )
    drop_schema(url)
