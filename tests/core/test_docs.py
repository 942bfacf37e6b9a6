"""The API reference (docs/reference/*.md) has an entry for every public name: a new name in an ``__all__``
without one fails here, before anyone builds the site."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"
PAGES = {
    "zmqkit": "zmqkit.md",
    "zmqkit.patterns": "patterns.md",
    "zmqkit.cache": "cache.md",
    "zmqkit.asyncio": "asyncio.md",
    "zmqkit.testing": "testing.md",
}


def _entries(page: str) -> set[str]:
    """The objects a page renders: its mkdocstrings ``::: dotted.name`` lines."""
    text = (REFERENCE / page).read_text(encoding="utf-8")
    return set(re.findall(r"^::: *([\w.]+) *$", text, flags=re.MULTILINE))


@pytest.mark.parametrize("package", sorted(PAGES))
def test_every_public_name_has_a_reference_entry(package: str) -> None:
    names = importlib.import_module(package).__all__
    entries = _entries(PAGES[package])
    missing = [name for name in names if f"{package}.{name}" not in entries]
    assert not missing, f"docs/reference/{PAGES[package]} has no '::: {package}.NAME' entry for {missing}"


@pytest.mark.parametrize("package", sorted(PAGES))
def test_reference_pages_document_only_public_names(package: str) -> None:
    # An entry for a name that left __all__ would still build (griffe finds the module attribute), silently.
    public = {f"{package}.{name}" for name in importlib.import_module(package).__all__}
    stale = sorted(_entries(PAGES[package]) - public)
    assert not stale, f"docs/reference/{PAGES[package]} documents names not in {package}.__all__: {stale}"
