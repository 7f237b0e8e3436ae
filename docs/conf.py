"""Sphinx configuration: MyST Markdown pages, the API reference from the docstrings (autodoc).

Build strictly (every warning an error, every cross-reference checked), as the test suite does::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.ext.napoleon import Config
from sphinx.ext.napoleon.docstring import GoogleDocstring
from sphinx.util.docutils import SphinxDirective

import resilience

project = "resilience"
author = "resilience contributors"
copyright = "2026, resilience contributors"
release = resilience.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Markdown: `[text](#a-heading)` links to headings two levels deep; fenced ```{directive}``` only.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# The reference documents the public names (each package's ``__all__``), in source order, with
# the signature's types in the description so long signatures stay readable.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True}

# Every cross-reference must resolve (``-n``). Types from other libraries have no inventory here
# (no network at build time, so no intersphinx): those, and only those, are exempt.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(aiohttp|yarl|multidict|anyio|structlog|redis|backoff|asyncio)(\..*)?"),
    (r"py:.*", r"(opentelemetry|prometheus_client)(\..*)?"),
    (r"py:class", r"(TracerProvider|MeterProvider|CollectorRegistry)"),
    (r"py:.*", r"(collections|contextlib|typing|types|enum|pathlib|os|io|datetime)\..*"),
    (r"py:class", r"(URL|Path|PathLike|TextIO|IO|Iterable|Iterator|Mapping|Sequence|Callable)"),
    # Private types that public signatures mention but the package does not export (yet).
    (r"py:class", r"resilience\._pacing\.RatePacer"),
    # DeadlineExceeded's base on Python 3.10 (asyncio.TimeoutError is not the builtin there).
    (r"py:class", r"resilience\._errors\._TimeoutBase"),
]

html_theme = "furo"
html_title = f"resilience {release}"
html_show_sourcelink = False
html_copy_source = False


def _google_sections(
    app: Sphinx, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    """Read the ``Args:`` sections of functions and classes (Google style, napoleon's parser).

    Attribute docstrings stay prose: napoleon would read ``Seconds: ...`` there as a type.
    """
    if what in {"attribute", "data", "property"}:
        return
    parsed = GoogleDocstring(lines, _NAPOLEON, app, what, name, obj, options).lines()
    lines[:] = parsed


_NAPOLEON = Config(napoleon_google_docstring=True, napoleon_numpy_docstring=False)


class CodeTableDirective(SphinxDirective):
    """``{resilience-codes}``: the built-in code table as the package ships it (codes.json).

    The text is parsed as the page's own markup (Markdown on these MyST pages): a pipe table.
    """

    def run(self) -> list[nodes.Node]:
        lines = [
            "| code | status | domain | retryable | handling | message |",
            "|---|---|---|---|---|---|",
        ]
        for spec in sorted(resilience.CodeTable.default().values(), key=_by_status):
            cells = (
                f"`{spec.code}`",
                str(spec.status),
                spec.domain,
                "yes" if spec.retryable else "no",
                f"`{spec.how.value}`",
                (spec.message or "").replace("|", "\\|"),
            )
            lines.append("| " + " | ".join(cells) + " |")
        return self.parse_text_to_nodes("\n".join(lines))


def _by_status(spec: resilience.ErrorSpec) -> tuple[int, str]:
    return spec.status, spec.code


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-docstring", _google_sections)
    app.add_directive("resilience-codes", CodeTableDirective)
