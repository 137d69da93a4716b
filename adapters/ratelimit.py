"""Rate limits: token buckets, and who the client is when a reverse proxy is in front."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

Networks = Sequence[IPv4Network | IPv6Network]


def trusted_proxies(setting: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """`TRUSTED_PROXIES` (comma-separated addresses or CIDRs); ValueError names a bad one."""
    networks = []
    for item in (part.strip() for part in setting.split(",")):
        if item:
            try:
                networks.append(ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"TRUSTED_PROXIES: {item} is not an address or CIDR") from None
    return tuple(networks)


class RateLimiter:
    """Token buckets per key: `per_minute` tokens a minute, bursts of up to `burst`.

    The least recently seen keys are forgotten past `max_keys`, so a flood of new clients
    cannot grow memory without bound (a forgotten key starts again with a full bucket).
    """

    def __init__(
        self,
        per_minute: float,
        *,
        burst: float | None = None,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self._rate = per_minute / 60.0
        self._burst = burst if burst is not None else max(1.0, per_minute / 6)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def acquire(self, key: Hashable) -> float:
        """Take a token for `key`: 0.0 if allowed, else the seconds until one is free."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


def client_address(
    peer: str | None,
    trusted: Networks,
    *,
    x_forwarded_for: str | None = None,
    forwarded: str | None = None,
) -> str | None:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    address in `X-Forwarded-For` (else `Forwarded: for=`) that is not a trusted proxy.

    Read right to left: each trusted proxy appends the address it saw, so what a client wrote
    itself (at the left) is never believed. With nothing trusted, the headers are ignored.
    """
    if not _trusted(peer, trusted):
        return peer
    client = peer
    for hop in reversed(_hops(x_forwarded_for, forwarded)):
        client = hop
        if not _trusted(hop, trusted):
            break
    return client


def _hops(x_forwarded_for: str | None, forwarded: str | None) -> list[str]:
    if x_forwarded_for is not None:
        return [hop.strip() for hop in x_forwarded_for.split(",") if hop.strip()]
    hops = []
    for element in (forwarded or "").split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for" and value:
                hops.append(_without_port(value.strip().strip('"')))
    return hops


def _without_port(node: str) -> str:
    """RFC 7239 node: `[2001:db8::1]:4711` → `2001:db8::1`, `192.0.2.1:80` → `192.0.2.1`."""
    if node.startswith("["):
        return node[1:].partition("]")[0]
    return node.partition(":")[0] if node.count(":") == 1 else node


def _trusted(address: str | None, trusted: Networks) -> bool:
    if address is None or not trusted:
        return False
    try:
        parsed: IPv4Address | IPv6Address = ip_address(address)
    except ValueError:
        return False
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return any(parsed in network for network in trusted)
