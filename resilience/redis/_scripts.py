"""The Lua scripts: package data in ``scripts/``, with the rules' constants rendered in.

Every script reads the time from Redis (``TIME``), never from a client, and touches only the
keys it is given, all under the namespace's hash tag (see ``_keys.py``). A script's source is
the rendered constants, then every library in ``scripts/lib/`` in file-name order (a new
library is a new file: ``50_quota.lua`` runs after ``40_limit.lua``), then the script itself.

The constants come from the pure rules, never from the Lua files: ``PacingRule``
(``resilience/_pacing.py``) for the pacer, ``Alignment`` (``resilience/_aligned.py``) for the
quota count's wall-clock alignment, and ``REORDER`` below, which only a fleet needs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from redis.commands.core import AsyncScript

from .._aligned import ALIGNED, Alignment
from .._breaker import BUCKETS as BREAKER_BUCKETS
from .._pacing import MAX_PREDICTED_WINDOW, PACING, PacingRule

__all__ = ["REORDER", "Scripts", "constants", "source"]

REORDER: Final = 0.003
"""Seconds by which a permit granted after a rejected one may still have reached the server
first (sends race between processes): such a permit counts as sent before it in a cut."""


def constants(rule: PacingRule = PACING, aligned: Alignment = ALIGNED) -> dict[str, float]:
    """The values the scripts see as Lua globals-by-name (times in milliseconds)."""
    return {
        "BETA": rule.beta,
        "RECOVERY": rule.recovery,
        "MIN_RATE": rule.min_rate,
        "BURST_MS": rule.burst * 1000,
        "IDLE_RESET_MS": rule.idle_reset * 1000,
        "WINDOW_MS": rule.window * 1000,
        "RATE_SLOTS": rule.window_slots,
        "MIN_SPAN_MS": rule.minimum_span * 1000,
        "COSTLY_GATE_MS": rule.costly_gate * 1000,
        "PROBE_GATES": rule.probe_gates,
        "REORDER_MS": REORDER * 1000,
        "BREAKER_BUCKETS": BREAKER_BUCKETS,
        "MAX_PREDICTED_WINDOW_MS": MAX_PREDICTED_WINDOW * 1000,
        "ALIGN_SKEW_MS": aligned.skew * 1000,
        "PROBE_POLL_MS": aligned.probe_poll * 1000,
        "POLL_GROWTH": aligned.poll_growth,
        "POLL_MAX_MS": aligned.poll_max * 1000,
    }


def _render(values: dict[str, float]) -> str:
    return "".join(f"local {name} = {float(value)!r}\n" for name, value in values.items())


def _read(*parts: str) -> str:
    path = resources.files(__package__) / "scripts"
    for part in parts:
        path = path / part
    return path.read_text("utf-8")


@functools.cache
def library() -> str:
    """The constants and every library, in the order each script gets them."""
    lib = resources.files(__package__) / "scripts" / "lib"
    names = sorted(entry.name for entry in lib.iterdir() if entry.name.endswith(".lua"))
    return _render(constants()) + "".join(_read("lib", name) for name in names)


@functools.cache
def source(name: str) -> str:
    """The full source of ``scripts/<name>.lua`` as Redis runs it."""
    return library() + _read(f"{name}.lua")


_CORE: Final = (
    "acquire", "report", "release", "renew", "budget", "adopt", "breaker_admit", "breaker_record",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Scripts:
    """The store's scripts, registered on one client (EVALSHA, NOSCRIPT reloads).

    Another feature's script is a new file ``scripts/<name>.lua`` (and, if it needs shared Lua,
    a new ``scripts/lib/NN_name.lua``): ``named("<name>")`` registers it on first use, so adding
    one touches no file of the store's.
    """

    acquire: AsyncScript
    report: AsyncScript
    release: AsyncScript
    renew: AsyncScript
    budget: AsyncScript
    adopt: AsyncScript
    breaker_admit: AsyncScript
    breaker_record: AsyncScript
    client: Any = field(repr=False)
    extra: dict[str, AsyncScript] = field(default_factory=dict, repr=False)

    @classmethod
    def register(cls, client: Any) -> Scripts:
        register = client.register_script
        return cls(
            acquire=register(source("acquire")),
            report=register(source("report")),
            release=register(source("release")),
            renew=register(source("renew")),
            budget=register(source("budget")),
            adopt=register(source("adopt")),
            breaker_admit=register(source("breaker_admit")),
            breaker_record=register(source("breaker_record")),
            client=client,
        )

    def named(self, name: str) -> AsyncScript:
        """The script ``scripts/<name>.lua``."""
        if name in _CORE:
            script: AsyncScript = getattr(self, name)
            return script
        found = self.extra.get(name)
        if found is None:
            found = self.extra[name] = self.client.register_script(source(name))
        return found
