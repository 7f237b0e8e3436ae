"""The fleet store's package: its Lua scripts ship in the wheel and load as package data."""

from __future__ import annotations

import inspect
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from resilience.redis import RedisStore
from resilience.redis._scripts import library, source

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_every_lua_script(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("resilience-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".lua")}
    scripts = resources.files("resilience.redis") / "scripts"
    expected = {f"resilience/redis/scripts/{e.name}" for e in scripts.iterdir() if e.is_file()}
    expected |= {f"resilience/redis/scripts/lib/{e.name}" for e in (scripts / "lib").iterdir()}
    assert shipped == {name for name in expected if name.endswith(".lua")}
    assert len(shipped) >= 9


def test_each_script_is_the_library_then_its_own_file() -> None:
    lib = library()
    for name in ("acquire", "report", "release", "renew", "budget"):
        own = (resources.files("resilience.redis") / "scripts" / f"{name}.lua").read_text()
        assert source(name) == lib + own


def test_from_url_is_the_constructor_with_one_signature() -> None:
    init = inspect.signature(RedisStore.__init__)
    assert list(inspect.signature(RedisStore.from_url).parameters) == list(init.parameters)[1:]
    store = RedisStore.from_url("redis://127.0.0.1:1/0", namespace="n", max_concurrency=3)
    assert store.concurrency_limit == 3


def test_another_features_script_is_a_new_file_registered_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The breaker and quota helpers add scripts/<name>.lua; named() registers it on first use
    (here a stand-in for such a file) and keeps it."""
    from redis.asyncio import Redis

    from resilience.redis import _scripts

    scripts = _scripts.Scripts.register(Redis.from_url("redis://127.0.0.1:1/0"))
    assert scripts.named("acquire") is scripts.acquire
    monkeypatch.setattr(_scripts, "source", lambda name: f"return '{name}'")
    breaker = scripts.named("breaker")
    assert breaker.script == "return 'breaker'"
    assert scripts.named("breaker") is breaker
