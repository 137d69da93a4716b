#!/usr/bin/env python3
"""Benchmark the runtime as a user runs it: the fake model server and `botcorebot serve` as
separate processes on 127.0.0.1, driven over HTTP with httpx2. Every loop is bounded.

    .venv/bin/python scripts/bench.py load --sessions 100 --messages 20 --delay-ms 0
    .venv/bin/python scripts/bench.py load --sessions 1000 --messages 3 --delay-ms 200
    .venv/bin/python scripts/bench.py sustained --sessions 100 --messages 150
    .venv/bin/python scripts/bench.py coldstart
    .venv/bin/python scripts/bench.py idle --sessions 10000
    .venv/bin/python scripts/bench.py memory --sizes 10000 100000 1000000
    .venv/bin/python scripts/bench.py tokens
    .venv/bin/python scripts/bench.py workers --workers 1 2
    .venv/bin/python scripts/bench.py engines
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx2
import trio

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo-bot"
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def wait_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {within}s")


@contextmanager
def fake_model(delay_ms: float) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.testing.fake_llm",
            "--port",
            str(port),
            "--delay-ms",
            str(delay_ms),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def runtime(
    model_url: str | None,
    provider: str = "anthropic",
    prefill: int = 0,
    *,
    serve_args: Sequence[str] = (),
    **env: str,
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`botcorebot serve [serve_args]` on a copy of the demo bot, which remembers `prefill`
    earlier exchanges; yields (process, url, workspace)."""
    workspace = Path(tempfile.mkdtemp(prefix="botcore-bench-")) / "bot"
    shutil.copytree(DEMO, workspace)
    if prefill:
        _fill_episodes(workspace / "engram.db", prefill)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    environ |= {
        "BOTCORE_WORKSPACE": str(workspace),
        "HTTP_PORT": str(port),
        "BOTCORE_API_TOKEN": TOKEN,
        "LOG_LEVEL": "warning",
        "MAILBOX_SIZE": "1024",
        "MODEL_CONCURRENCY": "2048",
    }
    if model_url and provider == "openai":
        environ |= {
            "DEFAULT_MODEL": "gpt-bench",
            "OPENAI_API_KEY": "dummy",
            "OPENAI_BASE_URL": f"{model_url}/v1",
        }
    elif model_url:
        environ |= {
            "DEFAULT_MODEL": "claude-bench",
            "ANTHROPIC_API_KEY": "dummy",
            "ANTHROPIC_BASE_URL": model_url,
        }
    environ |= env
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", *serve_args], cwd=ROOT, env=environ
    )
    try:
        wait_port(port)
        yield process, f"http://127.0.0.1:{port}", workspace
    finally:
        process.terminate()
        process.wait(60)
        shutil.rmtree(workspace.parent, ignore_errors=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def drive(
    url: str,
    sessions: int,
    messages: int,
    latencies: list[float],
    errors: list[str],
    prefix: str = "bench",
    think: float = 0.0,
    expect_echo: bool = True,
) -> None:
    """`sessions` concurrent sessions, each sending `messages` messages one after another,
    pausing `think` seconds (jittered) between its messages, as people do."""
    limits = httpx2.Limits(max_connections=sessions, max_keepalive_connections=sessions)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx2.AsyncClient(limits=limits, timeout=120, headers=headers) as client:

        async def session(n: int) -> None:
            if think:
                await trio.sleep(random.uniform(0, think))  # do not all start at once
            for m in range(messages):
                if think and m:
                    await trio.sleep(random.uniform(0.5 * think, 1.5 * think))
                text = f"s{n} m{m}"
                started = time.perf_counter()
                try:
                    response = await client.post(
                        f"{url}/api/message", json={"message": text, "session_id": f"{prefix}-{n}"}
                    )
                except httpx2.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:100]}")
                elif "error" in response.json() or (
                    expect_echo and response.json()["message"] != f"ok: {text}"
                ):
                    errors.append(f"wrong answer for {text!r}: {response.json()['message'][:60]!r}")

        async with trio.open_nursery() as nursery:
            for n in range(sessions):
                nursery.start_soon(session, n)


def order_violations(workspace: Path, texts: list[list[str]]) -> int:
    """Sessions whose stored history is not in the order their messages were sent (a message
    that failed is an error, counted apart; the ones stored must still be in order)."""
    db = sqlite3.connect(workspace / "engram.db")
    bad = 0
    for n, sent in enumerate(texts):
        stored = [
            row[0]
            for row in db.execute(
                "SELECT content FROM history WHERE session_key = ? AND role = 'user' ORDER BY id",
                (f"http:bench-{n}",),
            )
        ]
        bad += stored != [text for text in sent if text in stored]
    db.close()
    return bad


def load(args: argparse.Namespace) -> None:
    runs = [_load_once(args) for _ in range(args.repeat)]
    total = args.sessions * args.messages
    med = lambda key: statistics.median(run[key] for run in runs)  # noqa: E731
    ms = lambda key: f"{med(key) * 1000:.1f} ms"  # noqa: E731
    rows = [
        ("sessions x messages", f"{args.sessions} x {args.messages} = {total}"),
        (
            "model",
            "offline (embedded)" if args.model == "offline" else f"{args.model} SDK -> fake server",
        ),
        ("fake model delay", "-" if args.model == "offline" else f"{args.delay_ms:g} ms"),
        ("think time between a session's messages", f"{args.think_ms:g} ms"),
        ("runs (median of each figure)", str(args.repeat)),
        (
            "messages/s",
            f"{med('rate'):.0f} (runs: {', '.join(format(run['rate'], '.0f') for run in runs)})",
        ),
        ("latency p50 / p95 / p99", f"{ms('p50')} / {ms('p95')} / {ms('p99')}"),
        ("overhead p50 / p95 / p99", f"{ms('o50')} / {ms('o95')} / {ms('o99')}"),
        ("errors (all runs)", str(sum(int(run["errors"]) for run in runs))),
        ("order violations (all runs)", str(sum(int(run["violations"]) for run in runs))),
        ("runtime peak RSS", f"{med('peak') / 1024:.0f} MiB"),
    ]
    table(
        f"load: {args.sessions} sessions x {args.messages} messages, model delay {args.delay_ms:g} ms",
        rows,
    )


def _load_once(args: argparse.Namespace) -> dict[str, float]:
    offline = args.model == "offline"
    with (
        fake_model(args.delay_ms) as model_url,
        runtime(None if offline else model_url, args.model) as (process, url, workspace),
    ):
        # Warm up: imports, first connections, SQLite pages.
        trio.run(drive, url, 4, 2, [], [], "warmup", 0.0, not offline)
        latencies: list[float] = []
        errors: list[str] = []
        started = time.perf_counter()
        trio.run(
            drive,
            url,
            args.sessions,
            args.messages,
            latencies,
            errors,
            "bench",
            args.think_ms / 1000,
            not offline,
        )
        elapsed = time.perf_counter() - started
        peak = rss_kib(process.pid, "VmHWM")
        sent = [[f"s{n} m{m}" for m in range(args.messages)] for n in range(args.sessions)]
        violations = order_violations(workspace, sent)
    for error in errors[:3]:
        print("  error:", error, file=sys.stderr)
    delay = args.delay_ms / 1000
    overhead = [max(0.0, latency - delay) for latency in latencies]
    return {
        "rate": args.sessions * args.messages / elapsed,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "o50": percentile(overhead, 50),
        "o95": percentile(overhead, 95),
        "o99": percentile(overhead, 99),
        "errors": len(errors),
        "violations": violations,
        "peak": peak,
    }


def sustained(args: argparse.Namespace) -> None:
    """A long run of varied messages: does throughput hold while memory and history grow?

    Throughput and the runtime's CPU per message are reported per tenth of the run (tenths
    of the messages answered), so the first and the last tenth compare within one run."""
    runs = [_sustained_once(args) for _ in range(args.repeat)]
    for n, tenths in enumerate(runs, start=1):
        table(
            f"sustained run {n}/{len(runs)}: {args.sessions} sessions x {args.messages} messages,"
            f" {args.model}, model delay {args.delay_ms:g} ms, {args.prefill:,} episodes to start",
            [
                (
                    f"tenth {t + 1}",
                    f"{rate:6.1f} msg/s  {cpu:5.2f} ms CPU/msg  p99 {p99 * 1000:5.0f} ms",
                )
                for t, (rate, cpu, p99) in enumerate(tenths)
            ],
        )
    ratios = [tenths[-1][0] / tenths[0][0] for tenths in runs]
    cpu = [tenths[-1][1] / tenths[0][1] for tenths in runs]
    overall = [statistics.mean(tenth[1] for tenth in tenths) for tenths in runs]
    table(
        "sustained: last tenth against the first (median of runs)",
        [
            (
                "CPU per message, whole run",
                f"{statistics.median(overall):.2f} ms (runs: {', '.join(f'{c:.2f}' for c in overall)})",
            ),
            (
                "throughput, last / first",
                f"{statistics.median(ratios):.0%} (runs: {', '.join(f'{r:.0%}' for r in ratios)})",
            ),
            (
                "CPU per message, last / first",
                f"{statistics.median(cpu):.0%} (runs: {', '.join(f'{r:.0%}' for r in cpu)})",
            ),
        ],
    )


def _sustained_once(args: argparse.Namespace) -> list[tuple[float, float, float]]:
    offline = args.model == "offline"
    total = args.sessions * args.messages
    rng = random.Random(7)
    texts = [[_utterance(rng) for _ in range(args.messages)] for _ in range(args.sessions)]
    early = [[_utterance(rng) for _ in range(args.warmup)] for _ in range(args.sessions)]
    with (
        fake_model(args.delay_ms) as model_url,
        runtime(None if offline else model_url, args.model, args.prefill) as (
            process,
            url,
            workspace,
        ),
    ):
        trio.run(drive, url, 4, 2, [], [], "warmup", 0.0, not offline)
        # Each session's history first fills the prompt's window (40 entries), so the tenths
        # compare turns of one size and what changes is only how much the bot remembers.
        trio.run(_drive_texts, url, early, lambda _: None, [], not offline)
        marks: list[tuple[float, float]] = [(time.perf_counter(), cpu_seconds(process.pid))]
        latencies: list[tuple[int, float]] = []
        errors: list[str] = []

        def answered(latency: float) -> None:
            latencies.append((len(marks) - 1, latency))
            if len(latencies) % (total // 10) == 0 and len(marks) <= 10:
                marks.append((time.perf_counter(), cpu_seconds(process.pid)))

        trio.run(_drive_texts, url, texts, answered, errors, not offline)
        violations = order_violations(workspace, [a + b for a, b in zip(early, texts, strict=True)])
        counts = _metrics(url, "botcore_db_calls", "botcore_db_commits")
    if counts:
        answered = total + 8 + args.sessions * args.warmup
        calls, commits = (counts[name] / answered for name in sorted(counts))
        print(f"  database per message: {calls:.2f} calls, {commits:.2f} commits", flush=True)
    for error in errors[:3]:
        print("  error:", error, file=sys.stderr)
    if errors or violations:
        print(f"  {len(errors)} errors, {violations} order violations", file=sys.stderr)
    tenths = []
    per_tenth = total // 10
    for t in range(len(marks) - 1):
        (t0, c0), (t1, c1) = marks[t], marks[t + 1]
        tenth = [latency for mark, latency in latencies if mark == t]
        tenths.append((per_tenth / (t1 - t0), (c1 - c0) / per_tenth * 1000, percentile(tenth, 99)))
    return tenths


def _metrics(url: str, *names: str) -> dict[str, float]:
    """Those of `names` that the runtime's /metrics reports."""
    text = httpx2.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[name] = float(value)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive_texts(
    url: str,
    texts: list[list[str]],
    answered: Callable[[float], None],
    errors: list[str],
    expect_echo: bool,
) -> None:
    """One session per list of texts, each sending its texts one after another."""
    limits = httpx2.Limits(max_connections=len(texts), max_keepalive_connections=len(texts))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx2.AsyncClient(limits=limits, timeout=120, headers=headers) as client:

        async def session(n: int) -> None:
            for text in texts[n]:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        f"{url}/api/message", json={"message": text, "session_id": f"bench-{n}"}
                    )
                except httpx2.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                answered(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:100]}")
                elif "error" in response.json() or (
                    expect_echo and response.json()["message"] != f"ok: {text}"
                ):
                    errors.append(f"wrong answer for {text!r}: {response.json()['message'][:60]!r}")

        async with trio.open_nursery() as nursery:
            for n in range(len(texts)):
                nursery.start_soon(session, n)


_NAMES = [
    "Ana",
    "Theo",
    "Sam",
    "Leo",
    "Mia",
    "Noah",
    "Zoe",
    "Ravi",
    "Ines",
    "Tomás",
    "Yuki",
    "Omar",
    "Lena",
    "Jonas",
    "Priya",
    "Carlos",
]
_PLACES = ["Lisbon", "Porto", "the office", "the gym", "the park", "Berlin", "the market", "school"]
_TOPICS = [
    "the garden",
    "the budget",
    "our holiday",
    "the new job",
    "the car repair",
    "dinner plans",
    "the kids' school",
    "the dentist",
    "my back pain",
    "the football match",
    "a book I am reading",
    "the wedding",
    "taxes",
    "the leaking roof",
    "a birthday present",
    "the piano lessons",
    "the weather",
    "the move",
    "the dog",
]
_DAYS = [
    "today",
    "tomorrow",
    "on Monday",
    "on Friday",
    "next week",
    "this weekend",
    "in March",
    "tonight",
]
_TEMPLATES = [
    "hello there, how are you {day}?",
    "I met {name} at {place} and we talked about {topic}.",
    "can you remind me about {topic} {day}?",
    "what did {name} say about {topic}?",
    "{name} is coming to {place} {day}, can you note that?",
    "I am worried about {topic}, any thoughts?",
    "thanks! by the way, {name} loved {topic}.",
    "remember that {name} prefers {word} to {word2}.",
    "we should plan {topic} with {name} {day}.",
    "do you know where I left the notes on {topic}? maybe at {place}",
    "ok",
    "good morning!",
    "tell me again what we decided about {topic}",
    "{name} said the {word} at {place} was closed {day}, so {topic} moves to later.",
]


def _utterance(rng: random.Random) -> str:
    """A chat message from templates and vocabularies: common words, names, and a long tail
    of rare ones (Zipf-distributed pseudo-words)."""
    return rng.choice(_TEMPLATES).format(
        name=rng.choice(_NAMES),
        place=rng.choice(_PLACES),
        topic=rng.choice(_TOPICS),
        day=rng.choice(_DAYS),
        word=rng.choices(_VOCABULARY, weights=_WEIGHTS)[0],
        word2=rng.choices(_VOCABULARY, weights=_WEIGHTS)[0],
    )


def coldstart(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"offline": [], "anthropic (fake)": []}
    with fake_model(0) as model_url:
        for _ in range(args.runs):
            for name, url in (("offline", None), ("anthropic (fake)", model_url)):
                results[name].append(_first_200(url))
    table(
        f"cold start: process start to the first 200 on /api/message (median of {args.runs})",
        [
            (
                name,
                f"{statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})",
            )
            for name, times in results.items()
        ],
    )


def _first_200(model_url: str | None) -> float:
    workspace = Path(tempfile.mkdtemp(prefix="botcore-cold-")) / "bot"
    shutil.copytree(DEMO, workspace)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    environ |= {"BOTCORE_WORKSPACE": str(workspace), "HTTP_PORT": str(port), "LOG_LEVEL": "warning"}
    if model_url:
        environ |= {
            "DEFAULT_MODEL": "claude-bench",
            "ANTHROPIC_API_KEY": "dummy",
            "ANTHROPIC_BASE_URL": model_url,
        }
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "runtime", "serve"], cwd=ROOT, env=environ)
    try:
        with httpx2.Client(timeout=5) as client:
            while time.perf_counter() - started < 30:
                try:
                    if (
                        client.post(
                            f"http://127.0.0.1:{port}/api/message", json={"message": "hi"}
                        ).status_code
                        == 200
                    ):
                        return time.perf_counter() - started
                except httpx2.TransportError:
                    time.sleep(0.005)
        raise RuntimeError("no 200 within 30 s")
    finally:
        process.terminate()
        process.wait(60)
        shutil.rmtree(workspace.parent, ignore_errors=True)


def idle(args: argparse.Namespace) -> None:
    # Long enough that no session passivates while the others are still being created.
    idle_seconds = args.idle_seconds
    with runtime(None, SESSION_IDLE_SECONDS=str(idle_seconds)) as (process, url, _):
        trio.run(drive, url, 4, 1, [], [], "warmup")
        time.sleep(1)
        baseline = rss_kib(process.pid)
        errors: list[str] = []
        started = time.perf_counter()
        trio.run(_one_each, url, args.sessions, errors)
        filled = time.perf_counter() - started
        live_sessions = _sessions_live(url)
        live = rss_kib(process.pid)
        deadline = time.monotonic() + idle_seconds + 60
        while _sessions_live(url) > 0 and time.monotonic() < deadline:
            time.sleep(1)
        passivated = _sessions_live(url)
        after = rss_kib(process.pid)
    per_session = (live - baseline) / max(1, live_sessions)
    table(
        f"idle sessions: {args.sessions} sessions wrote once each (offline model, idle timeout {idle_seconds} s)",
        [
            ("RSS after warm-up (idle runtime)", f"{baseline / 1024:.1f} MiB"),
            (
                f"RSS with {live_sessions} live sessions",
                f"{live / 1024:.1f} MiB ({per_session:.1f} KiB per live session)",
            ),
            (f"RSS after passivation ({passivated} live)", f"{after / 1024:.1f} MiB"),
            ("time to create them", f"{filled:.1f} s ({args.sessions / filled:.0f} sessions/s)"),
            ("errors", str(len(errors))),
        ],
    )


async def _one_each(url: str, sessions: int, errors: list[str]) -> None:
    limits = httpx2.Limits(max_connections=100)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx2.AsyncClient(limits=limits, timeout=60, headers=headers) as client:
        gate = trio.Semaphore(100)

        async def one(n: int) -> None:
            async with gate:
                response = await client.post(
                    f"{url}/api/message", json={"message": "hi", "session_id": f"idle-{n}"}
                )
                if response.status_code != 200:
                    errors.append(str(response.status_code))

        async with trio.open_nursery() as nursery:
            for n in range(sessions):
                nursery.start_soon(one, n)


def _sessions_live(url: str) -> int:
    text = httpx2.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    line = next(line for line in text.splitlines() if line.startswith("botcore_sessions_live "))
    return int(float(line.split()[1]))


def memory(args: argparse.Namespace) -> None:
    """Recall quality on the labelled set, then store and recall latency at each size, with
    the labelled memories hidden among synthetic ones (recall@5 is measured there too)."""
    trio.run(_memory, args)


async def _memory(args: argparse.Namespace) -> None:
    from runtime.botcore import Bot
    from runtime.testing.recall_set import RECALL_SET, score_recall

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        async with await Bot.open(folder) as bot:
            for k in (1, 5):
                score = await score_recall(bot, k=k)
                table(
                    f"labelled set alone: recall@{k}",
                    [
                        (f"recall@{k}", f"{score.recall_at_k:.3f} of {score.questions} questions"),
                        *(
                            (f"missed {i + 1}", f"{q!r} → {a}")
                            for i, (q, a) in enumerate(score.misses)
                        ),
                    ],
                )
    labelled = json.loads(RECALL_SET.read_text(encoding="utf-8"))
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
            started = time.perf_counter()
            _filled(Path(folder) / "engram.db", size - len(labelled["memories"]), args.fills)
            fill_s = time.perf_counter() - started
            async with await Bot.open(folder) as bot:
                score = await score_recall(bot, k=5)  # adds the labelled memories: size in all
                rng = random.Random(11)
                queries = [q["question"] for q in labelled["questions"]]
                queries += [" ".join(rng.choices(_VOCABULARY, k=3)) for _ in range(args.queries)]
                # Words from the head of the Zipf distribution: each is in 2-70% of the memories.
                common = [" ".join(rng.choices(_VOCABULARY[:50], k=3)) for _ in range(args.queries)]
                recall_ms, common_ms = [], []
                for timings, asked in ((recall_ms, queries), (common_ms, common)):
                    for query in asked:
                        t0 = time.perf_counter()
                        await bot.memory.recall(query, limit=5)
                        timings.append((time.perf_counter() - t0) * 1000)
                store_ms = []
                for i in range(args.stores):
                    text = _sentence(rng) + f" #{i}"
                    t0 = time.perf_counter()
                    await bot.memory.store(text, importance=0.4)
                    store_ms.append((time.perf_counter() - t0) * 1000)
                db_mib = (await trio.Path(folder, "engram.db").stat()).st_size / 2**20
            table(
                f"{size:,} memories",
                [
                    ("recall@5 (labelled, among them)", f"{score.recall_at_k:.3f}"),
                    (
                        "recall p50 / p99",
                        f"{percentile(recall_ms, 50):.2f} / {percentile(recall_ms, 99):.2f} ms ({len(recall_ms)} queries)",
                    ),
                    (
                        "recall p50 / p99, common words",
                        f"{percentile(common_ms, 50):.2f} / {percentile(common_ms, 99):.2f} ms ({len(common_ms)} queries)",
                    ),
                    (
                        "store p50 / p99",
                        f"{percentile(store_ms, 50):.2f} / {percentile(store_ms, 99):.2f} ms ({len(store_ms)} stores)",
                    ),
                    ("database", f"{db_mib:.0f} MiB, filled in {fill_s:.0f} s"),
                ],
            )


def recall_quality(args: argparse.Namespace) -> None:
    """Hit@1/5/10 and MRR per question type on the labelled facts and the conversations, on
    SQLite, or on PostgreSQL with `--database-url` (a fresh schema per set)."""
    trio.run(_recall_quality, args.database_url)


async def _recall_quality(server: str | None) -> None:
    from runtime.botcore import Bot
    from runtime.testing.postgres import drop_schema, new_schema
    from runtime.testing.recall_set import rank_conversations, rank_recall_set

    engine = "PostgreSQL" if server else "SQLite"
    for title, rank in (("labelled facts", rank_recall_set), ("conversations", rank_conversations)):
        with tempfile.TemporaryDirectory(prefix="bench-recall-") as folder:
            url = new_schema(server) if server else None
            try:
                async with await Bot.open(folder, url) as bot:
                    ranking = await rank(bot)
            finally:
                if url:
                    drop_schema(url)
        table(
            f"{title} ({engine}): Hit@1 / Hit@5 / Hit@10 / MRR",
            [
                (
                    f"{kind} ({r.questions})",
                    " / ".join(f"{r.hit_at[k]:.3f}" for k in (1, 5, 10)) + f" / {r.mrr:.3f}",
                )
                for kind, r in ranking.items()
            ],
        )


def _word(rng: random.Random) -> str:
    return "".join(
        rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4))
    )


_VOCABULARY = sorted({_word(random.Random(n)) for n in range(20_000)})
_WEIGHTS = [1 / (rank + 1) for rank in range(len(_VOCABULARY))]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(_VOCABULARY, weights=_WEIGHTS, k=rng.randint(8, 16)))


def _fill_episodes(path: Path, count: int) -> None:
    """`count` episodes of earlier chats (the runtime's own form), spread over a year."""
    from runtime.botcore._db import _connect

    connection = _connect(path)
    rng = random.Random(13)
    now = time.time()
    rows = []
    for _ in range(count):
        said = _utterance(rng)
        created = now - rng.random() * 365 * 86_400
        episode = f"User said: {said} | I answered: ok: {said}"
        rows.append((episode, "episodic", 0.3, "{}", created, created, 0))
    rows.sort(key=lambda row: row[4])
    with connection:
        connection.executemany(
            "INSERT INTO memories (content, type, importance, metadata, created_at,"
            " accessed_at, access_count) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    connection.close()


def _filled(path: Path, count: int, fills: Path | None) -> None:
    """`_fill`, or a copy of the same fill kept in `fills` by an earlier run (filling a
    million memories takes minutes)."""
    kept = fills / f"memories-{count}.db" if fills else None
    if kept is None or not kept.exists():
        _fill(path, count)
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, kept)
        return
    shutil.copy(kept, path)


def _fill(path: Path, count: int) -> None:
    """`count` synthetic memories (Zipf-distributed pseudo-words), written in bulk through
    the real schema and its FTS triggers; ages and uses spread over a year."""
    from runtime.botcore._db import _connect

    connection = _connect(path)
    rng = random.Random(5)
    now = time.time()
    kinds = ["factual", "episodic", "relational", "emotional", "procedural", "opinion"]
    with connection:
        for start in range(0, count, 50_000):
            rows = []
            for _ in range(min(50_000, count - start)):
                created = now - rng.random() * 365 * 86_400
                rows.append(
                    (
                        _sentence(rng),
                        rng.choice(kinds),
                        round(rng.random(), 2),
                        "{}",
                        created,
                        created + rng.random() * (now - created),
                        rng.randint(0, 5),
                    )
                )
            connection.executemany(
                "INSERT INTO memories (content, type, importance, metadata, created_at,"
                " accessed_at, access_count) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            print(f"  filled {start + len(rows):,} / {count:,}", file=sys.stderr, flush=True)
    connection.close()


def tokens(args: argparse.Namespace) -> None:
    """A scripted 50-turn conversation on the offline model: prompt tokens per message, and
    whether the answers about stored facts still find them."""
    trio.run(_tokens, args)


_FACTS = [
    ("my sister Ana lives in Lisbon", "sister", "Lisbon"),
    ("the alarm code is 7305", "alarm code", "7305"),
    ("Leo is allergic to peanuts", "Leo allergic", "peanuts"),
    ("the boat is moored at pier 7", "boat", "pier 7"),
    ("the dentist appointment is on 14 January", "dentist appointment", "14 January"),
    ("the wifi password is on the fridge", "wifi password", "fridge"),
    ("Tomás's birthday is on 21 March", "Tomás birthday", "21 March"),
    ("the car is a green Volvo", "car", "Volvo"),
    ("rent is paid on the 1st of the month", "rent paid", "1st"),
    ("the spare key is with Mrs. Duarte", "spare key", "Duarte"),
]


async def _tokens(args: argparse.Namespace) -> None:
    from adapters import Inbound, Reply
    from runtime.testing import local_config, make_workspace, open_runtime

    script: list[tuple[str, str | None]] = [(f"remember {fact}", None) for fact, _, _ in _FACTS]
    rng = random.Random(3)
    while len(script) < 40:
        script.append((f"let me tell you about my day: {_chatter(rng)}", None))
    script += [(f"what do you remember about {topic}?", expected) for _, topic, expected in _FACTS]
    assert len(script) == 50

    class Collect:
        def __init__(self) -> None:
            self.done = trio.Event()
            self.answer: Reply | None = None

        def reply(self, reply: Reply) -> None:
            self.answer = reply
            self.done.set()

        def progress(self, event: object) -> None:
            pass

    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as folder:
        workspace = make_workspace(Path(folder) / "bot", (DEMO / "IDENTITY.md").read_text())
        for name in ("SOUL.md", "USER.md"):
            if (DEMO / name).exists():
                shutil.copy(DEMO / name, workspace / name)
        config = local_config(workspace, prompt_token_budget=args.budget)
        totals, found, asked, rows = [], 0, 0, []
        async with open_runtime(config) as runtime:
            for n, (text, expected) in enumerate(script, start=1):
                collect = Collect()
                await runtime.deliver(Inbound("bench", "talk", text, collect))
                await collect.done.wait()
                reply = collect.answer
                assert isinstance(reply, Reply)
                spent = dict(reply.prompt_tokens)
                totals.append(spent["total"])
                if expected is not None:
                    asked += 1
                    found += expected in reply.message
                if n in (1, 10, 25, 40, 50):
                    rows.append((f"turn {n}", ", ".join(f"{k} {v}" for k, v in spent.items() if v)))
    table(
        f"50 turns on the offline model, PROMPT_TOKEN_BUDGET={args.budget}",
        [
            ("median prompt tokens", f"{statistics.median(totals):.0f}"),
            ("max prompt tokens", f"{max(totals)} (budget {args.budget})"),
            ("answers that found the fact", f"{found} / {asked}"),
            *rows,
        ],
    )


def _chatter(rng: random.Random) -> str:
    return " ".join(rng.choices(_VOCABULARY[:400], k=rng.randint(40, 90)))


# -- issue 14: worker processes, and the two storage engines -------------------------------


@contextmanager
def postgres_cluster() -> Iterator[tuple[str, Path]]:
    """A throwaway PostgreSQL server on a Unix socket (`runtime.testing.postgres`): its URL
    and folder; stopped and deleted afterwards."""
    from runtime.testing import postgres

    directory = Path(tempfile.mkdtemp(prefix="botcore-bench-pg-"))
    try:
        yield postgres.start(directory), directory
    finally:
        postgres.stop(directory)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants alive now (bounded by what /proc lists)."""
    found, todo = [], [pid]
    while todo and len(found) < 10_000:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo += [int(child) for child in task.read_text().split()]
    return found


def tree_cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds of a process and its live descendants; `reaped` adds what its children
    that already exited used (PostgreSQL's short-lived workers)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if reaped and member == pid:
            ticks += int(fields[13]) + int(fields[14])
        total += ticks / os.sysconf("SC_CLK_TCK")
    return total


def wait_listeners(port: int, count: int, within: float = 60.0) -> None:
    """Until `count` sockets listen on `port` (each worker of `serve --workers` has one)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        listening = 0
        for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table_path).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    listening += 1
        if listening >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"fewer than {count} sockets listen on port {port} after {within}s")


def order_violations_pg(url: str, texts: list[list[str]]) -> int:
    """`order_violations` for a bot whose history is on PostgreSQL."""
    import psycopg

    bad = 0
    with psycopg.connect(url) as db:
        for n, sent in enumerate(texts):
            stored = [
                row[0]
                for row in db.execute(
                    "SELECT content FROM history WHERE session_key = %s AND role = 'user'"
                    " ORDER BY id",
                    (f"http:bench-{n}",),
                )
            ]
            bad += stored != [text for text in sent if text in stored]
    return bad


def _measured(
    args: argparse.Namespace,
    url: str,
    runtime_pid: int,
    postgres_pid: int | None,
    think: float,
) -> dict[str, float]:
    """Warm up, then drive the load; the figures of the measured part."""
    offline = args.model == "offline"
    trio.run(drive, url, 4, 2, [], [], "warmup", 0.0, not offline)
    latencies: list[float] = []
    errors: list[str] = []
    cpu0 = tree_cpu(runtime_pid)
    db0 = tree_cpu(postgres_pid, reaped=True) if postgres_pid else 0.0
    load0 = time.process_time()
    started = time.perf_counter()
    trio.run(
        drive, url, args.sessions, args.messages, latencies, errors, "bench", think, not offline
    )
    elapsed = time.perf_counter() - started
    total = args.sessions * args.messages
    for error in errors[:3]:
        print("  error:", error, file=sys.stderr)
    return {
        "rate": total / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "cpu": (tree_cpu(runtime_pid) - cpu0) / total,
        "db": ((tree_cpu(postgres_pid, reaped=True) - db0) / total) if postgres_pid else 0.0,
        "load": (time.process_time() - load0) / total,
        "errors": len(errors),
        "elapsed": elapsed,
    }


def _postmaster(directory: Path) -> int:
    return int((directory / "data" / "postmaster.pid").read_text().split()[0])


def _sent(args: argparse.Namespace) -> list[list[str]]:
    return [[f"s{n} m{m}" for m in range(args.messages)] for n in range(args.sessions)]


def _fleet_run(
    args: argparse.Namespace,
    workers: int,
    database_url: str | None,
    postgres_pid: int | None,
    think: float,
) -> dict[str, float]:
    """One run: fresh fake model, fresh workspace (and schema), `serve --workers N`."""
    env = {"DATABASE_URL": database_url} if database_url else {}
    offline = args.model == "offline"
    with (
        fake_model(args.delay_ms) as model_url,
        runtime(
            None if offline else model_url,
            args.model,
            serve_args=["--workers", str(workers)],
            **env,
        ) as (process, url, workspace),
    ):
        wait_listeners(int(url.rsplit(":", 1)[1]), workers)
        figures = _measured(args, url, process.pid, postgres_pid, think)
        if database_url:
            figures["violations"] = order_violations_pg(database_url, _sent(args))
        else:
            figures["violations"] = order_violations(workspace, _sent(args))
    return figures


def _median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def workers(args: argparse.Namespace) -> None:
    """Throughput of `serve --workers N` for each N on one PostgreSQL, closed loop.

    Runs alternate between the worker counts (1, 2, 1, 2, ...) so that the machine's other
    load drifts over both alike; each run has a fresh schema, workspace and fake model."""
    from runtime.testing import postgres

    runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.workers}
    with postgres_cluster() as (server, directory):
        postmaster = _postmaster(directory)
        for run in range(args.repeat):
            for n in args.workers:
                schema = postgres.new_schema(server)
                figures = _fleet_run(args, n, schema, postmaster, 0.0)
                postgres.drop_schema(schema)
                runs[n].append(figures)
                print(
                    f"  run {run + 1}, {n} worker(s): {figures['rate']:.0f} msg/s,"
                    f" runtime {figures['cpu'] * 1000:.2f} ms CPU/msg",
                    flush=True,
                )
    medians = {n: _median_row(r) for n, r in runs.items()}
    base = medians[args.workers[0]]["rate"]
    rows = []
    for n, median in medians.items():
        rates = ", ".join(f"{run['rate']:.0f}" for run in runs[n])
        rows += [
            (f"{n} worker(s): messages/s", f"{median['rate']:.0f} (runs: {rates})"),
            (f"{n} worker(s): vs {args.workers[0]}", f"{median['rate'] / base:.2f}x"),
            (
                f"{n} worker(s): latency p50 / p99",
                f"{median['p50'] * 1000:.0f} / {median['p99'] * 1000:.0f} ms",
            ),
            (
                f"{n} worker(s): CPU ms/msg runtime / PostgreSQL / load+model",
                f"{median['cpu'] * 1000:.2f} / {median['db'] * 1000:.2f} /"
                f" {median['load'] * 1000:.2f} (load generator only)",
            ),
            (
                f"{n} worker(s): errors, order violations (all runs)",
                f"{sum(int(run['errors']) for run in runs[n])},"
                f" {sum(int(run['violations']) for run in runs[n])}",
            ),
        ]
    table(
        f"workers: {args.sessions} sessions x {args.messages} messages, {args.model},"
        f" model delay {args.delay_ms:g} ms, PostgreSQL, median of {args.repeat}",
        rows,
    )


def engines(args: argparse.Namespace) -> None:
    """Per-message cost of the two storage engines at one fixed, paced load (1 worker).

    The runtime's CPU per message is read from /proc over the measured messages; on
    PostgreSQL the server's own CPU (its backends, reaped workers) is counted apart."""
    from runtime.testing import postgres

    think = args.think_ms / 1000
    runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    with postgres_cluster() as (server, directory):
        postmaster = _postmaster(directory)
        for run in range(args.repeat):
            for engine in runs:
                schema = postgres.new_schema(server) if engine == "postgresql" else None
                figures = _fleet_run(args, 1, schema, postmaster if schema else None, think)
                if schema:
                    postgres.drop_schema(schema)
                runs[engine].append(figures)
                print(
                    f"  run {run + 1}, {engine}: {figures['rate']:.0f} msg/s,"
                    f" runtime {figures['cpu'] * 1000:.2f} ms CPU/msg,"
                    f" p99 {figures['p99'] * 1000:.0f} ms",
                    flush=True,
                )
    rows = []
    for engine, engine_runs in runs.items():
        median = _median_row(engine_runs)
        cpus = ", ".join(f"{run['cpu'] * 1000:.2f}" for run in engine_runs)
        rows += [
            (f"{engine}: messages/s (paced)", f"{median['rate']:.0f}"),
            (f"{engine}: runtime CPU ms/msg", f"{median['cpu'] * 1000:.2f} (runs: {cpus})"),
            (f"{engine}: database server CPU ms/msg", f"{median['db'] * 1000:.2f}"),
            (
                f"{engine}: latency p50 / p99",
                f"{median['p50'] * 1000:.1f} / {median['p99'] * 1000:.1f} ms",
            ),
            (
                f"{engine}: errors, order violations (all runs)",
                f"{sum(int(r['errors']) for r in engine_runs)},"
                f" {sum(int(r['violations']) for r in engine_runs)}",
            ),
        ]
    table(
        f"engines: {args.sessions} sessions x {args.messages} messages, {args.think_ms:g} ms"
        f" think time, {args.model}, model delay {args.delay_ms:g} ms, median of {args.repeat}",
        rows,
    )


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print("-" * len(title))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    load_cmd = commands.add_parser("load", help="N concurrent sessions x M messages over HTTP")
    load_cmd.add_argument("--sessions", type=int, default=100)
    load_cmd.add_argument("--messages", type=int, default=20)
    load_cmd.add_argument("--delay-ms", type=float, default=0.0)
    load_cmd.add_argument(
        "--model", choices=["anthropic", "openai", "offline"], default="anthropic"
    )
    load_cmd.add_argument("--repeat", type=int, default=3, help="runs; figures are medians")
    load_cmd.add_argument(
        "--think-ms", type=float, default=0.0, help="pause between a session's messages (0: none)"
    )
    sustained_cmd = commands.add_parser(
        "sustained", help="a long run of varied texts, reported per tenth"
    )
    sustained_cmd.add_argument("--sessions", type=int, default=100)
    sustained_cmd.add_argument("--messages", type=int, default=150)
    sustained_cmd.add_argument("--delay-ms", type=float, default=0.0)
    sustained_cmd.add_argument(
        "--model", choices=["anthropic", "openai", "offline"], default="anthropic"
    )
    sustained_cmd.add_argument("--repeat", type=int, default=1)
    sustained_cmd.add_argument(
        "--warmup", type=int, default=20, help="messages per session before the measured run"
    )
    sustained_cmd.add_argument(
        "--prefill", type=int, default=0, help="episodes of earlier chats the bot starts with"
    )
    cold_cmd = commands.add_parser("coldstart", help="process start to the first 200")
    cold_cmd.add_argument("--runs", type=int, default=5)
    idle_cmd = commands.add_parser(
        "idle", help="RSS with many idle sessions, and after passivation"
    )
    idle_cmd.add_argument("--sessions", type=int, default=10_000)
    idle_cmd.add_argument("--idle-seconds", type=int, default=120)
    memory_cmd = commands.add_parser("memory", help="recall@k, store/recall latency by size")
    memory_cmd.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    memory_cmd.add_argument("--queries", type=int, default=442, help="random queries per size")
    memory_cmd.add_argument("--stores", type=int, default=300)
    memory_cmd.add_argument(
        "--fills", type=Path, help="keep the synthetic fills here and reuse them in later runs"
    )
    quality_cmd = commands.add_parser(
        "recall-quality", help="Hit@1/5/10 and MRR on both labelled sets"
    )
    quality_cmd.add_argument(
        "--database-url", help="a PostgreSQL server to measure on instead of SQLite"
    )
    tokens_cmd = commands.add_parser("tokens", help="prompt tokens over a 50-turn conversation")
    tokens_cmd.add_argument("--budget", type=int, default=2000)
    workers_cmd = commands.add_parser(
        "workers", help="throughput of serve --workers 1 against 2 on PostgreSQL"
    )
    workers_cmd.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    workers_cmd.add_argument("--sessions", type=int, default=100)
    workers_cmd.add_argument("--messages", type=int, default=20)
    workers_cmd.add_argument("--delay-ms", type=float, default=0.0)
    workers_cmd.add_argument(
        "--model", choices=["anthropic", "openai", "offline"], default="anthropic"
    )
    workers_cmd.add_argument("--repeat", type=int, default=3, help="runs; figures are medians")
    engines_cmd = commands.add_parser(
        "engines", help="per-message cost of PostgreSQL against SQLite at a paced load"
    )
    engines_cmd.add_argument("--sessions", type=int, default=10)
    engines_cmd.add_argument("--messages", type=int, default=30)
    engines_cmd.add_argument("--think-ms", type=float, default=500.0)
    engines_cmd.add_argument("--delay-ms", type=float, default=0.0)
    engines_cmd.add_argument(
        "--model", choices=["anthropic", "openai", "offline"], default="anthropic"
    )
    engines_cmd.add_argument("--repeat", type=int, default=3, help="runs; figures are medians")
    args = parser.parse_args()
    commands_by_name = {
        "load": load,
        "sustained": sustained,
        "coldstart": coldstart,
        "idle": idle,
        "memory": memory,
        "recall-quality": recall_quality,
        "tokens": tokens,
        "workers": workers,
        "engines": engines,
    }
    commands_by_name[args.command](args)


if __name__ == "__main__":
    main()
