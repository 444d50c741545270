"""README states facts the code and the tests decide: check them against those."""

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
    # issue 20.14: `python -m pytest_bitnet demo` existed and README never said so
    missing = [c for c in _subcommands(module) if not re.search(rf"python3? -m {module} {c}\b", README)]
    assert not missing, f"README never shows `python -m {module}` {missing}"


def test_the_leaking_librarys_rows_are_the_ones_the_matrix_test_expects() -> None:
    from tests.fault_inject.test_matrix import BROKEN_ROWS

    said = re.search(r"leaked on the library's tokenize error path \(((?:E\d\d\s+)+E\d\d)", README)
    assert said, "README no longer describes the leaking library's rows"
    assert set(said.group(1).split()) == BROKEN_ROWS["LEAK_ON_TOKENIZE_ERROR"]
