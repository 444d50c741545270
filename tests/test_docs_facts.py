"""The docs pages state facts the code and the tests decide: check them against those.

These facts were README's until the internals moved to docs/explanation/;
each check reads the page the fact now lives on.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text()


def _flat(text: str) -> str:
    """The text with line breaks and runs of blanks as one space (prose wraps anywhere)."""
    return re.sub(r"\s+", " ", text)


# ---- reliability: the broken libraries the matrix must catch ----------------------------------


def test_the_leaking_librarys_rows_are_the_ones_the_matrix_test_expects() -> None:
    from tests.fault_inject.test_matrix import BROKEN_ROWS

    said = re.search(r"leaked on the library's tokenize error path \(((?:E\d\d\s+)+E\d\d)", page("explanation/reliability.md"))
    assert said, "docs/explanation/reliability.md no longer describes the leaking library's rows"
    assert set(said.group(1).split()) == BROKEN_ROWS["LEAK_ON_TOKENIZE_ERROR"]


def test_the_generic_code_and_buffer_bugs_break_the_rows_the_page_counts() -> None:
    from tests.fault_inject.test_matrix import BROKEN_ROWS

    text = _flat(page("explanation/reliability.md"))
    said = re.search(r"`BITNET_E_INTERNAL` \(the (\d+) rows whose class comes from the library\)", text)
    assert said, "reliability.md no longer counts the rows the generic-code library breaks"
    assert int(said.group(1)) == len(BROKEN_ROWS["GENERIC_CODE"])
    assert "(E24 alone" in text and BROKEN_ROWS["WRITE_PAST_BUFFER"] == {"E24"}


# ---- architecture: the layers, as the contracts and the include check say --------------------


def test_the_import_contracts_are_the_ones_pyproject_declares() -> None:
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    text = _flat(page("explanation/architecture.md"))
    for contract in contracts:
        assert f"**{contract['name'].split(': ')[-1]}**" in text or f"**{contract['name'].split(':')[0]}**" in text, contract["name"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    assert " on ".join(f"`{name}`" for name in layers) in text
    forbidden = next(c for c in contracts if c["name"].startswith("fault_inject uses"))["forbidden_modules"]
    assert all(f"`.{m.rpartition('.')[2]}`" in text or f"`{m}`" in text for m in forbidden), forbidden


def test_the_native_include_table_is_test_layers_allowed() -> None:
    from tests.native.test_layers import ALLOWED

    rows = dict(re.findall(r"^\| `(\w+)` \| ((?:`\w+`(?:, )?)+)", page("explanation/architecture.md"), re.M))
    assert set(rows) == set(ALLOWED), "architecture.md's include table lists other layers than tests/native/test_layers.py"
    for layer, allowed in ALLOWED.items():
        assert set(re.findall(r"`(\w+)`", rows[layer])) == allowed, layer


def test_every_native_and_python_directory_is_in_the_layers_table() -> None:
    text = page("explanation/architecture.md")
    dirs = [f"native/{p.name}/" for p in (ROOT / "native").iterdir() if p.is_dir()]
    dirs += [f"pytest_bitnet/{p.name}/" for p in (ROOT / "pytest_bitnet").iterdir() if p.is_dir() and p.name != "__pycache__"]
    missing = [d for d in dirs if f"`{d}" not in text]  # the directory, or a file in it
    assert not missing, f"architecture.md's layer table lacks {missing}"


# ---- backends: the error mapping and the modes -------------------------------------------------


def test_the_error_table_is_bitnet_errors_def() -> None:
    from pytest_bitnet.bridge._build import read_def

    table = read_def(ROOT / "native" / "include" / "bitnet_errors.def", "BITNET_ERROR")
    rows = dict(re.findall(r"^\| (-\d+(?:, -\d+)*) \| `(\w+)`", page("explanation/backends.md"), re.M))
    said = {int(code): cls for codes, cls in rows.items() for code in codes.split(", ")}
    assert said == {code: cls for _name, code, cls, _msg in (e.args for e in table)}


def test_every_backend_has_its_row() -> None:
    from pytest_bitnet.bridge.validate import BACKENDS

    rows = re.findall(r"^\| `(\w+)` \| ", page("explanation/backends.md"), re.M)
    assert sorted(rows) == sorted(BACKENDS)


# ---- performance: every benchmark, and only those that exist -----------------------------------


def test_every_benchmark_is_on_the_performance_page_and_exists() -> None:
    text = page("explanation/performance.md")
    scripts = {p.name for p in (ROOT / "tests" / "benchmarks").glob("bench_*.py")}
    named = set(re.findall(r"\bbench_\w+\.py\b", text))
    assert scripts - named == set(), f"performance.md does not say how to run {sorted(scripts - named)}"
    assert named - scripts == set(), f"performance.md names benchmarks that do not exist: {sorted(named - scripts)}"


# ---- reliability: the commands it shows exist ---------------------------------------------------


@pytest.mark.parametrize("script", [".ci/sanitize", ".ci/coverage", ".ci/valgrind", "fuzz/run.sh", "tools/error_sites.py"])
def test_every_pass_command_exists(script: str) -> None:
    assert script in page("explanation/reliability.md")
    assert (ROOT / script).is_file()


def test_the_test_files_the_pages_name_exist() -> None:
    missing = []
    for name in ("architecture", "backends", "numerics", "performance", "reliability"):
        for path in set(re.findall(r"`((?:tests|tools|native|fuzz|pytest_bitnet|fault_inject)/[\w/.-]+\.(?:py|c|h|def|sh|md))`", page(f"explanation/{name}.md"))):
            if not (ROOT / path).is_file():
                missing.append(f"{name}.md: {path}")
    assert not missing, missing
