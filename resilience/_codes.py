"""The generation API's error-code table: what each code means for a client."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Final

from ._validate import boolean, integer, show

__all__ = ["CodeTable", "ErrorSpec", "Handling", "MAX_CODE_LENGTH", "STATUS_FALLBACK"]

MAX_CODE_LENGTH: Final = 100  # envelope codes are cut to this before the lookup (_classify)
_CODE: Final = re.compile(rf"[^\s]{{1,{MAX_CODE_LENGTH}}}")


class Handling(str, enum.Enum):
    """How the middleware reacts to an outcome.

    The two 429s and the 425 are not failures: they are the server pacing the client, and each
    has its own mechanism (adaptive limiter, rate gate, polling). Only ``TRANSIENT`` failures
    spend ``max_attempts`` and the retry budget.
    """

    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    NOT_READY = "not_ready"
    CONCURRENCY_LIMIT = "concurrency_limit"
    RATE_LIMIT = "rate_limit"

    @property
    def retryable(self) -> bool:
        return self not in (Handling.OK, Handling.PERMANENT)


# Statuses retried when a response carries no envelope or an unknown code.
STATUS_FALLBACK: Final[Mapping[int, Handling]] = {
    408: Handling.TRANSIENT,
    425: Handling.NOT_READY,
    429: Handling.RATE_LIMIT,
    500: Handling.TRANSIENT,
    502: Handling.TRANSIENT,
    503: Handling.TRANSIENT,
    504: Handling.TRANSIENT,
}

_SPECIAL: Final[Mapping[str, Handling]] = {
    "GENERATION_NOT_READY": Handling.NOT_READY,
    "GENERATION_CONCURRENCY_EXCEEDED": Handling.CONCURRENCY_LIMIT,
    "RATE_LIMITED": Handling.RATE_LIMIT,
}


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One row of the code table.

    ``handling`` defaults from ``retryable`` (``TRANSIENT`` or ``PERMANENT``); set it to make a
    code a throttle or a poll.
    """

    code: str
    status: int
    retryable: bool
    message: str = ""
    domain: str = "common"
    handling: Handling | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.code, str):
            raise TypeError(f"ErrorSpec.code must be a str, got {show(self.code)}")
        if not _CODE.fullmatch(self.code):
            raise ValueError(
                f"ErrorSpec.code must be 1 to {MAX_CODE_LENGTH} characters without spaces "
                f"(longer envelope codes are cut before lookup), got {show(self.code)}"
            )
        integer("ErrorSpec.status", self.status)
        if not 100 <= self.status <= 599:
            raise ValueError(f"ErrorSpec.status must be an HTTP status, got {self.status!r}")
        boolean("ErrorSpec.retryable", self.retryable)
        for name in ("message", "domain"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"ErrorSpec.{name} must be a str, got {show(getattr(self, name))}")
        if self.handling is not None and not isinstance(self.handling, Handling):
            raise TypeError(
                f"ErrorSpec.handling must be a Handling or None, got {show(self.handling)} "
                "(e.g. Handling.TRANSIENT)"
            )
        expected = self.handling
        if expected is None:
            expected = _SPECIAL.get(self.code) if self.retryable else None
            expected = expected or (Handling.TRANSIENT if self.retryable else Handling.PERMANENT)
            object.__setattr__(self, "handling", expected)
        elif expected.retryable != self.retryable:
            raise ValueError(
                f"{self.code}: handling {expected.value!r} contradicts retryable={self.retryable}"
            )

    @property
    def how(self) -> Handling:
        """The handling, never None after construction."""
        assert self.handling is not None
        return self.handling


class CodeTable(Mapping[str, ErrorSpec]):
    """An immutable mapping of error code to :class:`ErrorSpec`.

    ``CodeTable.default()`` is the generation API's published table (40 codes). Build your own
    from specs, or derive one with :meth:`with_overrides`.
    """

    __slots__ = ("_specs",)

    def __init__(self, specs: Iterable[ErrorSpec]) -> None:
        table: dict[str, ErrorSpec] = {}
        for spec in specs:
            if not isinstance(spec, ErrorSpec):
                raise TypeError(f"CodeTable takes ErrorSpec items, got {type(spec).__name__}")
            table[spec.code] = spec
        self._specs: Mapping[str, ErrorSpec] = table

    @classmethod
    def default(cls) -> CodeTable:
        """The published table shipped as package data."""
        return _DEFAULT

    @classmethod
    def from_json(cls, text: str | bytes) -> CodeTable:
        """Load a table in the ``codes.json`` format: a list of objects with
        ``code``, ``status``, ``retryable`` and optional ``message``/``domain``."""
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError("a code table is a JSON list of objects")
        specs = []
        for row in rows:
            if not isinstance(row, dict):
                raise ValueError(f"a code table row must be an object, got {show(row)}")
            try:
                specs.append(
                    ErrorSpec(
                        code=row["code"],
                        status=row["status"],
                        retryable=row["retryable"],
                        message=row.get("message", ""),
                        domain=row.get("domain", "common"),
                    )
                )
            except KeyError as exc:
                raise ValueError(f"code table row {show(row)} lacks {exc.args[0]!r}") from None
            except (TypeError, ValueError) as exc:  # JSON gives no types: wrong ones are values
                raise ValueError(f"code table row {show(row)}: {exc}") from None
        return cls(specs)

    def with_overrides(self, *specs: ErrorSpec, **retryable: bool) -> CodeTable:
        """A copy with whole rows replaced or added, and/or single codes' ``retryable`` flipped.

        ``table.with_overrides(GENERATION_CAPACITY_EXCEEDED=True)`` retries that code.
        """
        merged = dict(self._specs)
        for spec in specs:
            if not isinstance(spec, ErrorSpec):
                raise TypeError(
                    f"with_overrides takes ErrorSpec rows and code=bool flags, got {show(spec)}"
                )
            merged[spec.code] = spec
        for code, flag in retryable.items():
            boolean(code, flag)
            base = merged.get(code)
            if base is None:
                raise KeyError(f"unknown code {code!r}; pass an ErrorSpec to add one")
            merged[code] = replace(base, retryable=flag, handling=None)
        return CodeTable(merged.values())

    def __getitem__(self, code: str) -> ErrorSpec:
        return self._specs[code]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"CodeTable({len(self)} codes)"


_DEFAULT: Final = CodeTable.from_json(
    resources.files("resilience").joinpath("codes.json").read_bytes()
)
