"""The Redis keys of one namespace, all under one hash tag (one Redis Cluster slot).

Prefix ``resilience:{NS}:``; see ``scripts/*.lua`` for what each holds:

``ctl``      HASH  limit, epoch (cuts so far), slow (1 = slow start), growth
``permits``  ZSET  lease id -> lease deadline (ms); a permit is a lease
``order``    ZSET  lease id -> grant time (ms), to count the requests sent before a rejected one
``wake``     LIST  one token per freed permit, capped at the limit; waiters BLPOP it
``workers``  ZSET  worker id -> liveness deadline (ms)
``budget``   HASH  the retry budget's per-second deposit and withdrawal slots
``rate:O``   HASH  the rate gate and pacer of origin ``O``
``brk:O``    HASH  the circuit breaker of origin ``O``: state, probe token, window buckets
``brk-flight:O`` ZSET  its attempts in flight: ticket -> expiry (ms)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one namespace; build with :meth:`of`."""

    namespace: str
    prefix: str
    ctl: str
    permits: str
    order: str
    wake: str
    workers: str
    budget: str

    @classmethod
    def of(cls, namespace: str) -> Keys:
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("namespace must be a non-empty string")
        if "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace may not contain '{{' or '}}': {namespace!r}")
        p = f"resilience:{{{namespace}}}:"
        return cls(namespace, p, p + "ctl", p + "permits", p + "order", p + "wake",
                   p + "workers", p + "budget")  # fmt: skip

    def rate(self, origin: str) -> str:
        return f"{self.prefix}rate:{origin}"

    def breaker_keys(self, origin: str) -> list[str]:
        """KEYS of the breaker scripts: its state and window, its attempts in flight."""
        return [f"{self.prefix}brk:{origin}", f"{self.prefix}brk-flight:{origin}"]

    def limit_keys(self, origin: str) -> list[str]:
        """KEYS of the report and release scripts."""
        return [self.ctl, self.permits, self.order, self.wake, self.rate(origin)]

    def acquire_keys(self, origin: str) -> list[str]:
        return [self.ctl, self.permits, self.order, self.wake, self.workers, self.budget,
                self.rate(origin)]  # fmt: skip

    def renew_keys(self) -> list[str]:
        return [self.permits, self.order, self.wake, self.workers, self.ctl]
