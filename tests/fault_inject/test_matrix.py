"""The error-path matrix: its command, its reports, and that it catches broken backends.

The broken backends are real libraries: tests/broken_backend.c wraps the
bundled reference library with one deliberate bug each.  The matrix must
turn red on exactly the rows that bug breaks, and stay green elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fault_inject.catalog import CATALOG, FAIL, PASS
from fault_inject.matrix import SelectionError, run_in_process, select
from pytest_bitnet.bridge.abi import bundled_library
from pytest_bitnet.bridge.llama import INSTALL_HINT, configured

from ..native_builds import build_broken_backend


def matrix(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fault_inject", "matrix", *args], capture_output=True, text=True, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("matrix-models")


# _IN_PROCESS: the matrix checks every entry's counters itself; E31 drops a session on
# purpose to exercise its finalizer, which the plugin counts as a leak of the
# test that runs the entries in-process.
@pytest.mark.bitnet_allow_leaks  # E31 drops a session on purpose (_IN_PROCESS)
def test_every_entry_passes_on_the_reference_backend_in_process(models: Path) -> None:
    m = run_in_process(list(CATALOG.values()), ["reference"], models=models)
    failed = {e: o.reason for (e, _), o in m.outcomes.items() if o.result == FAIL}
    assert not failed
    # without llama.cpp the fallback comparisons have no independent tier (below)
    assert m.counts("reference")[PASS] == (52 if configured().available else 48)


@pytest.mark.bitnet_allow_leaks  # E31 drops a session on purpose (_IN_PROCESS)
def test_every_entry_passes_through_dlopen(models: Path) -> None:
    m = run_in_process(list(CATALOG.values()), ["dlopen"], models=models)
    failed = {e: o.reason for (e, _), o in m.outcomes.items() if o.result == FAIL}
    assert not failed
    assert m.counts("dlopen")[PASS] == 52


def test_stub_column_says_cpp_not_available_where_a_backend_is_needed(models: Path) -> None:
    m = run_in_process(list(CATALOG.values()), ["stub"], models=models)
    assert m.ok, m.table()
    unavailable = [e.id for e in m.entries if m.cell(e.id, "stub").observed.startswith("CppNotAvailable")]
    # the entries about the loader pick dlopen themselves; the rest meet the stub first
    assert {"E09", "E20", "E44", "E49", "E51"} <= set(unavailable)
    assert "E06" not in unavailable and "E42" not in unavailable
    assert "CppNotAvailable" in m.table()


# ---- broken backends: red on exactly the right rows ------------------------------------

# Rows each bug must break, and why:
BROKEN_ROWS = {
    # the library's own tokenize fails only where the fault or the error is
    # inside the engine (the bridge's query/fill points fire before the
    # call); E41 counts model loads, and each scratch context loads one
    "LEAK_ON_TOKENIZE_ERROR": {"E24", "E30", "E41", "E45", "E49"},
    # wherever the library's error (not the bridge's) decides the class;
    # not E47: OOM at create strikes the bridge's own first allocation
    "GENERIC_CODE": {"E09", "E10", "E11", "E12", "E13", "E15", "E16", "E17", "E18", "E19", "E24", "E26", "E29",
                     "E32", "E44", "E45", "E48", "E49", "E52"},
    # only a C caller hands the library a buffer smaller than the query said
    "WRITE_PAST_BUFFER": {"E24"},
}  # fmt: skip


@pytest.mark.bitnet_allow_leaks  # the leaking variant keeps what it leaked (its bug); E31 drops a session on purpose (_IN_PROCESS)
@pytest.mark.parametrize("bug", sorted(BROKEN_ROWS))
def test_matrix_turns_red_on_exactly_the_rows_a_bug_breaks(bug: str, tmp_path: Path, models: Path) -> None:
    real = bundled_library()
    assert real is not None
    library = build_broken_backend(tmp_path, bug, real)
    m = run_in_process(list(CATALOG.values()), ["dlopen"], models=models, library=str(library))
    red = {e.id for e in m.entries if m.cell(e.id, "dlopen").result == FAIL}
    assert red == BROKEN_ROWS[bug], "\n".join(f"{i}: {m.cell(i, 'dlopen').reason}" for i in sorted(red ^ BROKEN_ROWS[bug]))


# ---- the command ------------------------------------------------------------------------


def test_command_writes_json_junit_and_markdown(tmp_path: Path) -> None:
    out = matrix("--backend", "reference", "--backend", "stub", "--only", "E20,E21", "--category", "buffers",
                 "--json", str(tmp_path / "m.json"), "--junit", str(tmp_path / "m.xml"), "--markdown", str(tmp_path / "m.md"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "E20  buffers" in out.stdout and "CppNotAvailable" in out.stdout
    assert "reference 2/2 passed; stub 2/2 passed" in out.stdout
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["ok"] and data["backends"] == ["reference", "stub"]
    assert [r["id"] for r in data["rows"]] == ["E20", "E21"]
    assert data["rows"][1]["inject"] == "tokenize.fill=fail" and data["rows"][1]["cells"]["reference"]["result"] == "pass"
    suites = ET.parse(tmp_path / "m.xml").getroot()
    assert [s.get("name") for s in suites] == ["matrix[reference]", "matrix[stub]"]
    assert all(s.get("failures") == "0" for s in suites)
    assert "| E21 | buffers |" in (tmp_path / "m.md").read_text()


def test_command_exit_status_and_failure_reasons(tmp_path: Path) -> None:
    real = bundled_library()
    assert real is not None
    library = build_broken_backend(tmp_path, "WRITE_PAST_BUFFER", real)
    out = matrix("--backend", "dlopen", "--library", str(library), "--only", "E23,E24", "--junit", str(tmp_path / "m.xml"))
    assert out.returncode == 1
    assert "E24 [dlopen] tokenize wrote into a buffer it reported too small" in out.stdout
    assert "dlopen 1/2 passed, 1 FAILED" in out.stdout
    failure = ET.parse(tmp_path / "m.xml").getroot().find(".//failure")
    assert failure is not None and "wrote into a buffer" in (failure.text or "")


def test_selection_errors_name_what_exists() -> None:
    with pytest.raises(SelectionError, match="no catalog entry 'E99'"):
        select(["E99"])
    with pytest.raises(SelectionError, match="did you mean buffers"):
        select(categories=["bufers"])
    assert [e.id for e in select(["e01, E02"])] == ["E01", "E02"]
    out = matrix("--backend", "gpu")
    assert out.returncode == 2 and "unknown backend 'gpu' (valid: reference, dlopen, llama, stub)" in out.stderr


@pytest.mark.bitnet_allow_leaks  # E31 drops a session on purpose (_IN_PROCESS)
def test_workers_give_the_same_cells_as_in_process(tmp_path: Path, models: Path) -> None:
    pytest.importorskip("xdist")
    ids = ["E01", "E20", "E31", "E44", "E50"]
    out = matrix("--backend", "reference,stub", "--only", ",".join(ids), "-n", "2", "--json", str(tmp_path / "m.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["workers"] == 2
    in_process = run_in_process([CATALOG[i] for i in ids], ["reference", "stub"], models=models)
    for row in data["rows"]:
        for backend, cell in row["cells"].items():
            assert cell["result"] == in_process.cell(row["id"], backend).result, (row["id"], backend, cell)


def test_a_cell_that_crashes_its_worker_is_a_red_row(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    real = bundled_library()
    assert real is not None
    library = build_broken_backend(tmp_path, "CRASH_IN_EVAL", real)  # aborts in every evaluation
    out = matrix("--backend", "dlopen", "--library", str(library), "--only", "E20,E46", "-n", "1", "--json", str(tmp_path / "m.json"))
    assert out.returncode == 1, out.stdout + out.stderr
    cells = {r["id"]: r["cells"]["dlopen"] for r in json.loads((tmp_path / "m.json").read_text())["rows"]}
    assert cells["E46"]["result"] == "fail" and cells["E46"]["reason"].startswith("crashed"), cells
    assert cells["E20"]["result"] == "pass"  # the run went on after the crash


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["in-process", "worker"])
def test_timeout_is_every_cells_default_deadline(workers: list[str], tmp_path: Path) -> None:
    # issue 20.21: --timeout is the default of every native call in each cell,
    # on workers too; an entry's own timeouts still win.  0 is a deadline
    # already past: E28's create (no timeout of its own) times out, E46
    # (timeouts of 30 s and inf) is untouched.
    out = tmp_path / "m.json"
    proc = matrix("--only", "E28,E46", "--timeout", "0", *workers, "--json", str(out))
    assert proc.returncode == 1, proc.stderr
    cells = {r["id"]: r["cells"]["reference"] for r in json.loads(out.read_text())["rows"]}
    assert cells["E28"]["result"] == FAIL and "unexpected OperationTimeout" in cells["E28"]["reason"]
    assert cells["E46"]["result"] == PASS
    assert matrix("--only", "E28", *workers).returncode == 0  # the default deadline is 30 s again


def test_timeout_is_checked_and_restored(models: Path) -> None:
    from pytest_bitnet.bridge import settings

    proc = matrix("--timeout", "-1")
    assert proc.returncode == 2 and "invalid timeout '-1' from --timeout" in proc.stderr
    before = settings.current()
    m = run_in_process([CATALOG["E28"]], ["reference"], models=models, timeout=0)
    assert m.cell("E28", "reference").result == FAIL
    assert settings.current() == before


# ---- a machine without llama.cpp (issue 20.13) ------------------------------------------

FALLBACK_COMPARISONS = {"E34", "E35", "E37", "E38"}


@pytest.fixture
def no_llama(tmp_path: Path) -> dict[str, str]:
    """An environment where llama.cpp cannot be found (what llama.py reads)."""
    empty = tmp_path / "no-llama"
    empty.mkdir()
    return {"LLAMA_CPP_LIB_PATH": str(empty)}


def test_a_column_that_cannot_run_is_one_line_and_n_a_cells(tmp_path: Path, no_llama: dict[str, str]) -> None:
    # It was 31 identical failures, and passes of entries that never reached llama.cpp.
    j, x, md = tmp_path / "m.json", tmp_path / "m.xml", tmp_path / "m.md"
    out = matrix("--backend", "reference,llama,stub", "--json", str(j), "--junit", str(x), "--markdown", str(md), env=no_llama)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    unavailable = [line for line in lines if line.startswith("llama: unavailable: ")]
    assert len(unavailable) == 1 and "LLAMA_CPP_LIB_PATH=" in unavailable[0] and INSTALL_HINT in unavailable[0]
    assert not [line for line in lines if line.lstrip().startswith("E") and " [llama] " in line], \
        "no per-cell reason for a column that cannot run"
    data = json.loads(j.read_text())
    assert {r["cells"]["llama"]["result"] for r in data["rows"]} == {"n/a"}
    assert data["unavailable"] == {"llama": unavailable[0].removeprefix("llama: unavailable: ")}
    assert "llama unavailable (52 n/a)" in out.stdout

    # no independent fallback tier: the reference engine is not compared with itself
    cells = {r["id"]: r["cells"]["reference"] for r in data["rows"]}
    for i in FALLBACK_COMPARISONS:
        assert cells[i]["result"] == "n/a" and "no independent fallback tier" in cells[i]["reason"], (i, cells[i])
    assert all(c["result"] == "pass" for i, c in cells.items() if i not in FALLBACK_COMPARISONS)
    assert "reference 48/48 passed, 4 n/a" in out.stdout

    # the stub column: the passes that only saw CppNotAvailable are counted apart
    only = sum(1 for e in CATALOG.values() if e.stub == "unavailable")
    assert data["summary"]["stub"]["only_cpp_not_available"] == only
    assert f"stub 52/52 passed ({only} of them only CppNotAvailable)" in out.stdout
    suites = {s.get("name"): s for s in ET.parse(x).getroot()}
    props = {p.get("name"): p.get("value") for p in suites["matrix[stub]"].iter("property")}
    assert props["passed_only_cpp_not_available"] == str(only)
    props = {p.get("name"): p.get("value") for p in suites["matrix[llama]"].iter("property")}
    assert "LLAMA_CPP_LIB_PATH=" in props["unavailable"]
    text = md.read_text()
    assert f"({only} of them only CppNotAvailable)" in text and "- llama: unavailable: " in text


def test_workers_say_the_same_without_llama(tmp_path: Path, no_llama: dict[str, str]) -> None:
    j = tmp_path / "m.json"
    out = matrix("--backend", "reference,llama", "--only", "E34,E38,E09", "-n", "1", "--json", str(j), env=no_llama)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {r["id"]: r["cells"] for r in json.loads(j.read_text())["rows"]}
    assert rows["E09"]["reference"]["result"] == "pass"
    assert rows["E34"]["reference"]["result"] == rows["E38"]["reference"]["result"] == "n/a"
    assert {c["llama"]["result"] for c in rows.values()} == {"n/a"}
    assert "llama unavailable (3 n/a)" in out.stdout


# ---- --isolation process (issue 15) ----------------------------------------------------


def test_isolation_makes_a_crashing_library_a_red_row_in_process(tmp_path: Path) -> None:
    # Without -n the cells run in the matrix's own process: a library that
    # aborts would end the run; isolated, it ends only its cell's worker.
    real = bundled_library()
    assert real is not None
    library = build_broken_backend(tmp_path, "CRASH_IN_EVAL", real)
    out = matrix("--backend", "dlopen", "--library", str(library), "--only", "E20,E46", "--isolation", "process",
                 "--json", str(tmp_path / "m.json"))
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["isolation"] == "process"
    cells = {r["id"]: r["cells"]["dlopen"] for r in report["rows"]}
    assert cells["E46"]["result"] == FAIL and "BackendCrashed" in cells["E46"]["reason"], cells
    assert "SIGABRT" in cells["E46"]["reason"]
    assert cells["E20"]["result"] == PASS
    assert "each session isolated in a worker process" in out.stdout


def test_isolation_bounds_a_library_that_ignores_deadlines(tmp_path: Path) -> None:
    real = bundled_library()
    assert real is not None
    library = build_broken_backend(tmp_path, "SLEEP_TOKENIZE", real)  # 60 s in every tokenize, deaf to deadlines
    out = matrix("--backend", "dlopen", "--library", str(library), "--only", "E21", "--isolation", "process",
                 "--timeout", "0.5", "--json", str(tmp_path / "m.json"))
    assert out.returncode == 1, out.stdout + out.stderr
    cell = json.loads((tmp_path / "m.json").read_text())["rows"][0]["cells"]["dlopen"]
    assert cell["result"] == FAIL and "got OperationTimeout" in cell["reason"] and "did not return within 0.5 s" in cell["reason"]
    assert cell["seconds"] < 30  # ended at the deadline, not after the library's 60 s


@pytest.mark.parametrize("entry", ["E19", "E24", "E41"])
def test_entries_that_need_the_library_in_process_are_na_under_isolation(entry: str, models: Path) -> None:
    m = run_in_process([CATALOG[entry]], ["reference"], models=models, isolation="process")
    o = m.cell(entry, "reference")
    assert o.result == "n/a" and o.reason.startswith("in process only: "), o


@pytest.mark.bitnet_allow_leaks  # E31 drops a session on purpose (_IN_PROCESS)
def test_isolated_cells_pass_as_in_process(models: Path) -> None:
    ids = ["E09", "E13", "E16", "E20", "E23", "E25", "E28", "E31", "E44", "E47", "E50"]
    m = run_in_process([CATALOG[i] for i in ids], ["reference"], models=models, isolation="process")
    failed = {e: o.reason for (e, _), o in m.outcomes.items() if o.result == FAIL}
    assert not failed
