"""Announced rate limits: read a response's rate-limit headers into one :class:`Quota`.

Servers announce their limit on every answer, before any 429. Three families are read:

- the IETF draft's current structured fields (draft-ietf-httpapi-ratelimit-headers-10):
  ``RateLimit-Policy: "default";q=100;w=60`` (quota ``q`` per window ``w`` seconds) and
  ``RateLimit: "default";r=50;t=30`` (``r`` remaining, ``t`` seconds to the reset);
- the draft's older fields (up to -06, Envoy, Kong): ``RateLimit-Limit``,
  ``RateLimit-Remaining``, ``RateLimit-Reset`` (delta seconds); ``RateLimit-Limit`` may carry
  its policy as ``100, 100;w=60``;
- ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset``, whose Reset is delta seconds at some
  APIs and a Unix timestamp at others (GitHub). They are told apart by magnitude: a value of
  at least :data:`UNIX_TIME_FROM` (10^9 s, September 2001) is a Unix time, anything smaller a
  delta (a delta may be at most :data:`MAX_RESET`, a day, so the two ranges never meet).

Every field is judged on its own: a garbage, signed, fractional (for counts), absurdly large
or contradictory value, or duplicated lines that disagree, drop that field and keep the rest.
Nothing here raises on a header's content. When several policies are announced the one with
the least remaining quota governs (it is the one that will stop the sends first).

A reset in whole delta seconds places the window's end only to within a second; the answer
also carries where the end falls if windows are aligned to the wall clock (``aligned``, the
rule in ``_aligned.py``), for the quota count to hold until that instead, once verified.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

from multidict import istr

from ._aligned import ALIGNED

__all__ = ["MAX_RESET", "QUOTA_HEADERS", "UNIX_TIME_FROM", "Quota", "parse_quota", "read_quota"]

UNIX_TIME_FROM: Final = 1e9
"""An ``X-RateLimit-Reset`` at or above this is a Unix timestamp, below it delta seconds."""

MAX_RESET: Final = 86_400.0
"""Resets further away than a day are read as garbage (the gate caps any hold anyway)."""

MAX_COUNT: Final = 10**9
"""Quotas and remaining counts above this are read as garbage."""

MAX_WINDOW: Final = 366 * 86_400.0
"""Policy windows longer than a year are read as garbage."""

CLOCK_SKEW: Final = 2.0
"""A Unix-time reset is read against our clock unless the server's ``Date`` differs from it by
more than this (``Date`` has a one-second resolution; our clock is finer when they agree)."""

QUOTA_HEADERS: Final = (
    "RateLimit",
    "RateLimit-Policy",
    "RateLimit-Remaining",
    "RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Limit",
)
"""A response with none of these carries no quota: the happy path checks only these."""
_QUOTA_KEYS: Final = tuple(istr(name) for name in QUOTA_HEADERS)  # folded once, not per answer

_INT: Final = re.compile(r"[0-9]{1,12}")
_DECIMAL: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")
# Structured-field lists (RFC 9651) as these headers use them: members split on commas and
# parameters on semicolons, both outside quoted strings.
_MEMBERS: Final = re.compile(r'(?:"[^"]*"|[^,"])+')
_PARTS: Final = re.compile(r'(?:"[^"]*"|[^;"])+')


@dataclass(frozen=True, slots=True)
class Quota:
    """What one answer announced about the origin's rate limit; None: not announced (or bad).

    ``reset`` is seconds from the answer to the moment ``remaining`` is restored. A reset in
    whole delta seconds is rounded up, so the restore is up to a second sooner: ``aligned`` is
    seconds to the one moment of that second that is a multiple of the window in wall-clock
    time (where windows keyed by ``floor(time / window)`` end), and ``unaligned`` says the
    answer contradicts such alignment (see ``_aligned.py``).
    """

    limit: int | None = None
    window: float | None = None
    remaining: int | None = None
    reset: float | None = None
    aligned: float | None = None
    unaligned: bool = False

    @property
    def rate(self) -> float | None:
        """The announced rate in requests per second (``limit / window``), if both are known."""
        if self.limit is None or self.window is None:
            return None
        return self.limit / self.window

    @property
    def empty(self) -> bool:
        return self.limit is None and self.remaining is None and self.reset is None


@dataclass(frozen=True, slots=True)
class _Policy:
    limit: int | None = None
    window: float | None = None
    remaining: int | None = None
    reset: float | None = None
    whole: int | None = None  # the reset, when given as whole delta seconds (rounded)


def _lines(headers: Mapping[str, str], name: str) -> list[str]:
    """Every line of ``name``: proxies and CDNs duplicate headers."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return [str(v) for v in getall(name, ())]
    value = headers.get(name)
    return [value] if value is not None else []


def _values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every comma-separated value of every line of ``name``."""
    return [part.strip() for line in _lines(headers, name) for part in line.split(",")]


def _one(values: list[str]) -> str | None:
    """The value when every copy agrees, else None (duplicates that disagree are dropped)."""
    if not values or any(v != values[0] for v in values):
        return None
    return values[0]


def _count(raw: str | None) -> int | None:
    if raw is None or not _INT.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= MAX_COUNT else None


def _seconds(raw: str | None, limit: float) -> float | None:
    if raw is None or not _DECIMAL.fullmatch(raw):
        return None
    value = float(raw)
    return value if value <= limit else None


def _date(headers: Mapping[str, str]) -> float | None:
    """The server's ``Date`` as a Unix time, or None (absent or garbage)."""
    raw = headers.get("Date")
    if raw is None:
        return None
    try:
        return parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _server_now(headers: Mapping[str, str], now: float) -> float:
    """The server's clock when it differs from ours by more than :data:`CLOCK_SKEW`."""
    server = _date(headers)
    return server if server is not None and abs(server - now) > CLOCK_SKEW else now


def _reset(raw: str | None, headers: Mapping[str, str], now: float | None) -> float | None:
    """Delta seconds, or a Unix time (>= UNIX_TIME_FROM) read against the server's clock."""
    if raw is None or not _DECIMAL.fullmatch(raw):
        return None
    value = float(raw)
    if value < UNIX_TIME_FROM:
        return value if value <= MAX_RESET else None
    wall = time.time() if now is None else now
    delta = max(0.0, value - _server_now(headers, wall))  # a past reset: restored already
    return delta if delta <= MAX_RESET else None


def _whole(raw: str | None) -> int | None:
    """A reset given as whole delta seconds (not a Unix time, no fraction), else None."""
    if raw is None or not _INT.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= MAX_RESET else None


def _consistent(policy: _Policy) -> _Policy:
    """Remaining above the limit is a contradiction: neither is trusted."""
    if (
        policy.limit is not None
        and policy.remaining is not None
        and policy.remaining > policy.limit
    ):
        return _Policy(window=policy.window, reset=policy.reset, whole=policy.whole)
    return policy


def _members(headers: Mapping[str, str], name: str) -> dict[str, dict[str, list[str]]]:
    """A structured list field as policy name -> parameter -> every value given for it.

    The older draft's bare-quota form (``100;w=60``) is an unnamed policy with ``q=100``.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for line in _lines(headers, name):
        for member in _MEMBERS.findall(line):
            parts = [part.strip() for part in _PARTS.findall(member)]
            if not parts:
                continue  # an empty member (";", "a,;"): nothing to read, never a crash
            item, *params = parts
            fields: dict[str, list[str]] = {}
            if _INT.fullmatch(item):
                fields["q"] = [item]
                item = ""
            for param in params:
                key, _, value = param.partition("=")
                fields.setdefault(key.strip(), []).append(value.strip())
            policy = out.setdefault(item.strip('"'), {})
            for key, values in fields.items():
                policy.setdefault(key, []).extend(values)
    return out


def _structured(headers: Mapping[str, str], now: float | None) -> list[_Policy]:
    """``RateLimit-Policy`` (q, w) joined with ``RateLimit`` (r, t) by policy name."""
    quotas = _members(headers, "RateLimit-Policy")
    states = _members(headers, "RateLimit")
    if len(quotas) == 1 and len(states) == 1 and quotas.keys() != states.keys():
        # One policy on each side under different names (one unnamed): the same policy.
        quotas = {next(iter(states)): next(iter(quotas.values()))}
    policies = []
    for key in dict.fromkeys([*states, *quotas]):
        quota, state = quotas.get(key, {}), states.get(key, {})
        reset = _one(state.get("t", []))
        policies.append(
            _consistent(
                _Policy(
                    limit=_count(_one(quota.get("q", []))) or None,
                    window=_seconds(_one(quota.get("w", [])), MAX_WINDOW) or None,
                    remaining=_count(_one(state.get("r", []))),
                    reset=_reset(reset, headers, now),
                    whole=_whole(reset),
                )
            )
        )
    return policies


def _limit(parts: list[str]) -> tuple[int | None, float | None]:
    """``100`` or the older draft's ``100, 100;w=60``: the bare quota, and the window of the
    policy item with that quota."""
    bare = _count(_one([p for p in parts if ";" not in p]))
    if bare is None:
        return None, None
    windows = []
    for part in parts:
        quota, *params = (x.strip() for x in part.split(";"))
        if params and quota == str(bare):
            windows += [v.strip() for k, _, v in (p.partition("=") for p in params) if k == "w"]
    return bare or None, _seconds(_one(windows), MAX_WINDOW) or None


def _fields(headers: Mapping[str, str], prefix: str, now: float | None) -> _Policy:
    """``<prefix>Limit`` / ``-Remaining`` / ``-Reset`` (the older draft, X-RateLimit)."""
    limit, window = _limit(_values(headers, prefix + "Limit"))
    remaining = _count(_one(_values(headers, prefix + "Remaining")))
    raw = _one(_values(headers, prefix + "Reset"))
    return _consistent(_Policy(limit, window, remaining, _reset(raw, headers, now), _whole(raw)))


def _governing(policies: list[_Policy]) -> _Policy | None:
    """The policy with the least remaining (ties: the later reset); else the slowest rate."""
    known = [p for p in policies if p.remaining is not None]
    if known:
        return min(known, key=lambda p: (p.remaining, -(p.reset or 0.0)))
    rated = [p for p in policies if p.limit is not None and p.window is not None]
    if rated:
        return min(rated, key=lambda p: (p.limit or 0) / (p.window or 1.0))
    return policies[0] if policies else None


def parse_quota(headers: Mapping[str, str], now: float | None = None) -> Quota | None:
    """The quota ``headers`` announce, or None when they announce none usable.

    ``now`` is the wall-clock time (``time.time()``) Unix-time resets are read against.
    """
    policies = _structured(headers, now)
    policies += [_fields(headers, prefix, now) for prefix in ("RateLimit-", "X-RateLimit-")]
    chosen = _governing([p for p in policies if p != _Policy()])
    if chosen is None:
        return None
    aligned, unaligned = None, False
    if chosen.whole is not None and chosen.reset is not None:
        wall = time.time() if now is None else now
        aligned, unaligned = ALIGNED.judge(wall, chosen.whole, chosen.window, _date(headers))
    quota = Quota(chosen.limit, chosen.window, chosen.remaining, chosen.reset, aligned, unaligned)
    return None if quota.empty else quota


def read_quota(headers: Mapping[str, str]) -> Quota | None:
    """:func:`parse_quota`, after a cheap check: most answers carry no rate-limit header, and
    then this costs a few dictionary lookups."""
    for name in _QUOTA_KEYS:
        if name in headers:
            return parse_quota(headers)
    return None
