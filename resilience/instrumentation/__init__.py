"""Hooks into every attempt: the protocol, and OpenTelemetry and Prometheus backends.

::

    from resilience import ResilienceMiddleware
    from resilience.instrumentation import OpenTelemetryHook, PrometheusHook

    mw = ResilienceMiddleware(hooks=[OpenTelemetryHook(), PrometheusHook()])

``OpenTelemetryHook`` needs the ``otel`` extra, ``PrometheusHook`` the ``prometheus`` extra;
each is imported only when first used, so the other extra need not be installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._attempt import AttemptRecord, Outcome
from ._hooks import AttemptStart, Hook, WaitKind, WaitRecord

if TYPE_CHECKING:
    from ._otel import OpenTelemetryHook
    from ._prometheus import PrometheusHook

__all__ = [
    "AttemptRecord",
    "AttemptStart",
    "Hook",
    "OpenTelemetryHook",
    "Outcome",
    "PrometheusHook",
    "WaitKind",
    "WaitRecord",
]

_LAZY = {"OpenTelemetryHook": "._otel", "PrometheusHook": "._prometheus"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
