"""README states facts the code and the tests decide: check them against those.

README is the landing page; the facts of the internals moved into the docs
pages with their text, and their checks into tests/test_docs_facts.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _subcommands(module: str) -> list[str]:
    """The subcommands of `python -m module`, as its own --help lists them."""
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"\{([\w,-]+)\}", out)
    assert found, out
    return found.group(1).split(",")


@pytest.mark.parametrize("module", ["pytest_bitnet", "fault_inject"])
def test_every_subcommand_is_documented(module: str) -> None:
    # a subcommand once existed that README never mentioned: its Commands list shows every one
    missing = [c for c in _subcommands(module) if not re.search(rf"python3? -m {module} {c}\b", README)]
    assert not missing, f"README never shows `python -m {module}` {missing}"


def test_every_link_is_to_a_file_of_the_repository() -> None:
    # relative links, so that they work on GitHub: each must name a file that exists
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert links, "README links into the docs"
    missing = [link for link in links if "://" not in link and not (ROOT / link).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_readme_links_every_docs_page() -> None:
    pages = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
    assert pages, "docs/ holds the site"
    unlinked = [p for p in pages if f"]({p})" not in README]
    assert not unlinked, f"README does not link {unlinked}"


def test_readme_is_a_landing_page() -> None:
    assert len(README.encode()) < 10_000, "README is the landing page: internals belong on the docs pages"
    assert "bash .ci/docs OUTDIR" in README


def test_the_headline_count_is_the_catalogs() -> None:
    from fault_inject.catalog import CATALOG

    assert f"{len(CATALOG)} catalogued error paths" in README
    assert f"run the {len(CATALOG)} error paths" in README
