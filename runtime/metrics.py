"""Counters and histograms for `GET /metrics`, in the Prometheus text format (0.0.4)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence

Labels = tuple[tuple[str, str], ...]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _with(constant: Labels, labels: Labels) -> Labels:
    return (*constant, *labels)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
    )
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def header(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"

    def samples(self, constant: Labels = ()) -> Iterable[str]:
        for labels, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(_with(constant, labels))} {value:g}"


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.name, self.help, self._bounds = name, help, buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def header(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"

    def samples(self, constant: Labels = ()) -> Iterable[str]:
        running = 0
        for bound, count in zip(self._bounds, self._counts, strict=False):
            running += count
            yield f"{self.name}_bucket{_labels(_with(constant, (('le', f'{bound:g}'),)))} {running}"
        running += self._counts[-1]
        yield f"{self.name}_bucket{_labels(_with(constant, (('le', '+Inf'),)))} {running}"
        yield f"{self.name}_sum{_labels(constant)} {self._sum:g}"
        yield f"{self.name}_count{_labels(constant)} {running}"


class Gauge:
    """A value read at scrape time."""

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self._read = name, help, read

    def header(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"

    def samples(self, constant: Labels = ()) -> Iterable[str]:
        yield f"{self.name}{_labels(constant)} {self._read():g}"


class Metrics:
    """The runtime's measurements. Updated on the trio thread only, so no locks."""

    def __init__(self) -> None:
        self.turns = Counter(
            "botcore_turns_total", "Turns finished, by outcome (ok or the error kind)."
        )
        self.restarts = Counter(
            "botcore_actor_restarts_total", "Session actors restarted after a crash."
        )
        self.dead_letters = Counter(
            "botcore_dead_letters_total",
            "Messages set aside after crashing their session repeatedly.",
        )
        self.refused = Counter("botcore_messages_refused_total", "Messages refused, by reason.")
        self.tokens = Counter("botcore_model_tokens_total", "Model tokens, by kind.")
        self.model_retries = Counter(
            "botcore_model_retries_total", "Model call retries made by the SDKs."
        )
        self.model_latency = Histogram("botcore_model_call_seconds", "Duration of model calls.")
        self.turn_latency = Histogram(
            "botcore_turn_seconds", "Duration of turns, from start to reply."
        )
        self._gauges: list[Gauge] = []

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._gauges.append(Gauge(name, help, read))

    def render(self) -> str:
        return render_all([self])

    def parts(self) -> list[Counter | Histogram | Gauge]:
        return [
            self.turns,
            self.restarts,
            self.dead_letters,
            self.refused,
            self.tokens,
            self.model_retries,
            self.model_latency,
            self.turn_latency,
            *self._gauges,
        ]


def render_all(metrics: Sequence[Metrics], labels: Sequence[Labels] = ()) -> str:
    """Several runtimes' measurements in one exposition: each metric's HELP and TYPE once,
    then its samples from each, with that one's `labels` (`(("bot", "alice"),)`)."""
    constant = list(labels) or [()] * len(metrics)
    lines: list[str] = []
    for index, part in enumerate(metrics[0].parts() if metrics else []):
        lines += part.header()
        for each, extra in zip(metrics, constant, strict=True):
            lines += each.parts()[index].samples(extra)
    return "\n".join(lines) + "\n"
