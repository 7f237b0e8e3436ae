"""The lowest-versions run installs exactly the declared floors: every runtime dependency of
pyproject.toml (core and the user-facing extras) is pinned at its floor in
tests/constraints-lowest.txt, which tests/lowest.sh installs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: mypy's own dependency, there in the test extra
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parents[1]
TOOL_EXTRAS = frozenset({"test", "docs", "bench"})  # how we test and build, not what users get
_FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)$")


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, micro), a pre-release suffix dropped: "0.48b0" is (0, 48, 0)."""
    match = re.match(r"[0-9]+(\.[0-9]+)*", version)
    assert match is not None, f"not a version: {version!r}"
    parts = [int(p) for p in match.group(0).split(".")]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement).lower()


def declared_floors() -> dict[str, tuple[int, ...]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra not in TOOL_EXTRAS:
            requirements += items
    floors = {}
    for requirement in requirements:
        match = _FLOOR.match(requirement)
        assert match is not None, f"{requirement!r}: a runtime dependency needs a plain floor"
        floors[_name(match.group(1))] = _release(match.group(2))
    return floors


def pinned() -> dict[str, tuple[int, ...]]:
    pins = {}
    for line in (ROOT / "tests" / "constraints-lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_name(name)] = _release(version)
    return pins


def test_every_runtime_dependency_is_pinned_at_its_floor() -> None:
    floors, pins = declared_floors(), pinned()
    assert {"aiohttp", "anyio", "backoff", "structlog", "redis", "rich"} <= floors.keys()
    wrong = {
        name: (floor, pins.get(name)) for name, floor in floors.items() if pins.get(name) != floor
    }
    assert not wrong, f"(floor, pin) differ: {wrong}"
