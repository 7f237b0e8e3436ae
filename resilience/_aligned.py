"""Where a whole-second delta reset's window ends, if windows are aligned to the wall clock.

A delta reset in whole seconds rounded up (``RateLimit-Reset: 1``, ``RateLimit: r=0;t=1``, as the
drafts define it) places the end of the window only to within a second: read as ``now +
reset`` it is up to a second late, and the lateness of the first answer carries into every
window the count predicts after it. Fixed-window limiters are commonly a counter keyed by
the window's number, ``floor(unix_time / W)`` (the "Rate limiter 1" pattern of the Redis
``INCR`` documentation keys its counter by ``CURRENT_UNIX_TIME()``), so their windows end on
multiples of ``W`` in wall-clock time: of the one second the answer leaves open, the moment
that is such a multiple is the boundary, if that hypothesis holds.

The rule, in two parts:

- **Per answer** (:meth:`Alignment.judge`, pure): the boundary an answer's reset allows lies in
  ``(wall + reset - 1, wall + reset]`` (ceil rounding, measured on the server's clock but as a
  span, so clock skew does not enter it). The candidate is the latest multiple of the window
  (of 1 s when no window is announced: every whole-second window ends on a whole second)
  within that span widened by ``skew`` on each side; the latest, so a server clock up to
  ``skew`` off never makes the candidate early. No such multiple (a window of 2 s or more that
  is not aligned), or a ``Date`` header that shows the server's clock off by more than
  ``date_slack``, contradicts the hypothesis. Resets given as a Unix time or with a fraction
  are exact already; a window that is not a whole number of seconds is not judged.
- **Per origin** (``QuotaCount`` in ``_pacing.py``, and the fleet's Lua rendered from the same
  constants): a spent count is held until the candidate plus ``skew`` instead of the reset
  the answers named; then **one probe** goes, and the rest wait (polling every
  ``probe_poll`` s, at most until the named reset) for its answer. An answer that shows the
  quota refilled confirms the boundary; a 429 or a count that did not refill drops the
  hypothesis for the origin for good, and the count falls back to the named reset. On a
  server whose windows are not aligned this costs one early probe per origin, ever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["ALIGNED", "Alignment"]


@dataclass(frozen=True, slots=True)
class Alignment:
    """The wall-clock alignment rule's constants and its per-answer judgement."""

    skew: float = 0.02
    """Seconds by which the server's clock may differ from ours: the candidate allows for it,
    and the hold ends this long after the aligned boundary (loopback and NTP-synced hosts are
    within a few milliseconds)."""
    date_slack: float = 1.0
    """A ``Date`` (one-second resolution) off our clock by more than this, beyond its own
    second, shows the server's clock is skewed: the hypothesis is dropped. It covers the
    answer's transit and our processing; finer skew is the probe's to find."""
    probe_poll: float = 0.005
    """While the probe (or another counted send of a spent count) is out, the senders behind it
    look again this often at first (seconds)."""
    poll_growth: float = 0.25
    """... and then every ``poll_growth`` of the time they have waited so far, so that a long
    wait (a generation of seconds) costs a few dozen looks, not one every ``probe_poll``."""
    poll_max: float = 1.0
    """... but at least once a second."""

    def __post_init__(self) -> None:
        for name in ("skew", "date_slack", "probe_poll", "poll_max"):
            value = getattr(self, name)
            if not (isinstance(value, float | int) and 0 <= value <= 2):
                raise ValueError(f"{name} must be a number of seconds in [0, 2], got {value!r}")
        growth = self.poll_growth
        if not (isinstance(growth, float | int) and 0 <= growth <= 1):
            raise ValueError(f"poll_growth must be a share in [0, 1], got {growth!r}")

    def poll(self, waited: float) -> float:
        """Seconds until the next look, ``waited`` s into a wait for answers."""
        return min(max(self.probe_poll, waited * self.poll_growth), self.poll_max)

    def judge(
        self, wall: float, reset: int, window: float | None, date: float | None
    ) -> tuple[float | None, bool]:
        """An answer read at wall-clock time ``wall`` named a ``reset`` of whole seconds, of an
        announced ``window`` (None: not announced) with the server's ``Date`` (Unix seconds,
        None: absent). Returns (seconds from ``wall`` to the aligned boundary, or None; True
        when the answer contradicts the alignment)."""
        unit = 1.0 if window is None else window
        if unit < 1 or unit != math.floor(unit):
            return None, False  # whole seconds cannot place it: not judged
        slack = self.date_slack
        if date is not None and (date - wall > slack or wall - date - 1 > slack):
            return None, True
        latest = wall + reset + self.skew
        boundary = math.floor(latest / unit) * unit
        if boundary <= wall + reset - 1 - self.skew:
            return None, True  # no multiple of the window where the reset says it ends
        return max(0.0, boundary - wall), False  # a reset of 0: the boundary is now


ALIGNED: Final = Alignment()
