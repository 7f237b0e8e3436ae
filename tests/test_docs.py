"""The documentation is tested like the code.

- Every ``python`` block of README.md and docs/ runs, in page order, against the emulator on
  127.0.0.1: a page's blocks share one namespace and one event loop, top-level ``await`` works,
  and ``API_URL`` holds the emulator's URL (the pages say so where they use it). A block that
  cannot run here is preceded by ``<!-- skip: next "why" -->`` (sybil's skip directive).
- Every ``console`` block runs too: each ``$ python -m ...`` command must exit 0 and print the
  lines shown under it (a line ``...`` stands for any number of lines).
- A fence in any other language is not run: ``sh`` (commands to type: installs, the suite
  itself), ``text`` or none (diagrams, output); a misspelt ``py`` would hide an example, so only
  these are allowed.
- Every test a page cites as proof of a guarantee exists.
- Every public name (each public module's ``__all__``) is in the API reference.
- The site builds strictly: every Sphinx warning (broken link, missing reference, bad
  docstring markup) fails the build.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import inspect
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import unittest
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

import resilience
from resilience import CodeTable
from resilience.testing import Emulator
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(
    [ROOT / "README.md", *(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)],
    key=lambda p: (p != ROOT / "README.md", p),
)
BLOCK_TIMEOUT = 30.0  # seconds one block may run; the pages' examples take well under one
HOW_TO_FIX = (
    "A python or console block in the docs must run as written: send requests to API_URL "
    "(the emulator's "
    'URL in the tests), or mark the block with <!-- skip: next "why it cannot run" -->.'
)


class _Page:
    """Runs one page's blocks in order on one event loop, the emulator serving on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __call__(self, example: Example) -> None:
        code = compile(
            example.parsed,
            str(example.path),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        with warnings.catch_warnings():
            # The pages must not teach a deprecated name of ours.
            warnings.filterwarnings("error", message="resilience", category=DeprecationWarning)
            result = eval(code, example.namespace)  # a coroutine when the block awaits
            if inspect.iscoroutine(result):
                self.loop.run_until_complete(asyncio.wait_for(result, BLOCK_TIMEOUT))


def _console(example: Example) -> None:
    """Run each ``$ command`` of a console block; compare what it printed with the block."""
    commands: list[tuple[str, list[str]]] = []
    for line in example.parsed.strip("\n").splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line.rstrip())
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="80", TERM="dumb")
    for command, shown in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["python", "-m"], f"only `python -m ...` commands run here: {command}"
        proc = subprocess.run(
            [sys.executable, *argv[1:]],
            capture_output=True,
            text=True,
            env=env,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, f"`{command}` exited {proc.returncode}: {proc.stderr}"
        printed = [line.rstrip() for line in proc.stdout.rstrip().splitlines()]
        if not _matches(_trimmed(shown), printed):
            raise AssertionError(f"`{command}` printed, unlike the page:\n{proc.stdout}")


def _trimmed(lines: list[str]) -> list[str]:
    while lines and not lines[-1]:
        lines = lines[:-1]
    return lines


def _matches(shown: list[str], printed: list[str]) -> bool:
    """Line by line, ``...`` matching any run of lines (doctest's ELLIPSIS, by lines)."""
    if not shown:
        return not printed
    if shown[0] == "...":
        return any(_matches(shown[1:], printed[i:]) for i in range(len(printed) + 1))
    return bool(printed) and printed[0] == shown[0] and _matches(shown[1:], printed[1:])


@contextlib.contextmanager
def page_runner(*, redis: bool = False) -> Iterator[tuple[Sybil, dict[str, object]]]:
    """A sybil for one page, and the names its blocks may use: ``API_URL`` (the emulator's)
    and, with ``redis``, ``REDIS_URL`` (a ``redis-server`` of its own on 127.0.0.1)."""
    loop = asyncio.new_event_loop()
    emulator = Emulator()
    with contextlib.ExitStack() as stack:
        loop.run_until_complete(emulator.__aenter__())
        stack.callback(loop.close)
        stack.callback(loop.run_until_complete, emulator.__aexit__(None, None, None))
        names: dict[str, object] = {"API_URL": str(emulator.url).rstrip("/")}
        if redis:
            names["REDIS_URL"] = stack.enter_context(RedisServer()).url
        run = _Page(loop)
        sybil = Sybil(
            parsers=[
                CodeBlockParser(language="python", evaluator=run),
                CodeBlockParser(language="console", evaluator=_console),
                SkipParser(),
            ]
        )
        yield sybil, names


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_python_block_of_the_page_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that write files (logs) write them here
    with page_runner(redis="REDIS_URL" in page.read_text(encoding="utf-8")) as (sybil, names):
        document = sybil.parse(page)
        document.namespace.update(names)
        for example in document:
            try:
                example.evaluate()
            except unittest.SkipTest:
                continue  # marked <!-- skip: next "why" --> on the page
            except Exception as exc:
                raise AssertionError(
                    f"{page_id(page)}, block at line {example.line}: {exc!r}\n{HOW_TO_FIX}"
                ) from exc


def test_the_pages_have_python_blocks_to_run() -> None:
    """The runner above finds the blocks (a wrong fence info string would hide them all)."""
    with page_runner() as (sybil, _):
        found = sum(1 for page in PAGES for _ in sybil.parse(page))
    assert found >= 10


_FENCE = re.compile(r"^ *(```+|~~~+)([^`\n]*)$", re.MULTILINE)
NOT_RUN = frozenset({"sh", "text", ""})


def test_every_block_is_run_or_in_a_language_that_is_not() -> None:
    wrong = []
    for page in PAGES:
        opened: str | None = None
        for fence, info in _FENCE.findall(page.read_text(encoding="utf-8")):
            if opened is not None:  # a closing fence (or one inside a longer fence)
                if fence.startswith(opened[0]) and len(fence) >= len(opened) and not info.strip():
                    opened = None
                continue
            opened = fence
            language = info.strip()
            if language in {"python", "console"} | NOT_RUN or language.startswith("{"):
                continue  # "{...}": a MyST directive (literalinclude, toctree, eval-rst)
            wrong.append(f"{page_id(page)}: ```{language}")
    assert not wrong, "blocks in a language neither run nor allowed:\n" + "\n".join(wrong)


def test_every_example_script_is_shown_on_the_examples_page() -> None:
    page = (DOCS / "examples.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    missing = [s for s in scripts if f"literalinclude}} ../examples/{s}" not in page]
    assert not missing, f"docs/examples.md does not include: {missing}"


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_of_the_readme_resolves() -> None:
    """The README is read on its own (a repository's front page): its links to the docs and
    files must exist. (The site's own links are checked by the strict build.)"""
    broken = []
    for target in _LINK.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # an absolute URL, or a heading of the README itself
        if not (ROOT / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"README.md links to missing files: {broken}"


_CITED_TEST = re.compile(r"`(test_[a-z0-9_]+\*?)`")


def _test_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names.update(
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        )
    return names


def test_every_test_the_docs_cite_exists() -> None:
    names = _test_names()
    missing = []
    for page in PAGES:
        for cited in _CITED_TEST.findall(page.read_text(encoding="utf-8")):
            stem = cited.rstrip("*")
            found = any(n.startswith(stem) for n in names) if cited.endswith("*") else stem in names
            if not found:
                missing.append(f"{page_id(page)}: {cited}")
    assert not missing, "cited tests that do not exist:\n" + "\n".join(missing)


# Not a Python API: the command line is documented by its options (docs/howto/command-line.md).
NOT_IN_THE_REFERENCE = frozenset({"resilience.cli", "resilience.__main__"})
_DIRECTIVE = re.compile(r"^\.\. (currentmodule|auto\w+):: ([\w.]+)", re.MULTILINE)


def _public_modules() -> list[str]:
    found = ["resilience"]
    for info in pkgutil.walk_packages(resilience.__path__, "resilience."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or info.name in NOT_IN_THE_REFERENCE:
            continue
        if any(info.name.startswith(f"{skip}.") for skip in NOT_IN_THE_REFERENCE):
            continue
        found.append(info.name)
    return found


def _documented_objects() -> list[object]:
    """What the reference pages' autodoc directives document, resolved to the objects."""
    objects = []
    for page in sorted((DOCS / "reference").glob("*.md")):
        module = "resilience"
        for kind, target in _DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            if kind == "currentmodule":
                module = target
                continue
            owner, _, name = f"{module}.{target}".rpartition(".")
            objects.append(getattr(importlib.import_module(owner), name))
    return objects


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = _documented_objects()
    missing = [
        f"{module}.{name}"
        for module in _public_modules()
        for name in importlib.import_module(module).__all__
        if not any(getattr(importlib.import_module(module), name) is obj for obj in documented)
    ]
    assert not missing, (
        "public names missing from the API reference: add an autodoc directive for each to the "
        "page of its topic in docs/reference/: " + ", ".join(missing)
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """``-W``: any warning fails; ``-n``: every cross-reference must resolve; ``-E``: fresh."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html"),
            *("-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "reference" / "api.html").is_file()
    codes_page = (tmp_path / "html" / "reference" / "codes.html").read_text(encoding="utf-8")
    missing = [code for code in CodeTable.default() if f">{code}<" not in codes_page]
    assert not missing, f"the error-code page lacks {missing}"
