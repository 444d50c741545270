"""tools/error_sites.py: the rules that make native and Python error sites data, and the NEVER() marker.

Run on a small tree written here, so each rule is checked against the case it
exists for (and the cases it must leave out), independent of the project's
own sites, which change with every fix."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("error_sites", ROOT / "tools" / "error_sites.py")
es = sys.modules["error_sites"] = importlib.util.module_from_spec(_spec)  # its dataclass looks it up
_spec.loader.exec_module(es)

NATIVE = r'''
#include "bn_never.h"
/* bn_error() in a comment is not a site; nor is "return NULL;" in a string */
int bn_error(int code, const char *fmt, ...) { return code; }
static const char *msg = "return NULL;";
int f(int x, void *p)
{
    if (x < 0)
        return bn_error(BITNET_E_INVALID_ARG, "x=%d is negative: "
                        "pass a count", x);
    int rc =
        bn_error(BITNET_E_OOM, "two lines");
    if (!p) return BITNET_E_OOM;
    if (NEVER(x > 100, "x is clamped by the caller")) return BITNET_E_INTERNAL;
    return BITNET_OK;
}
void *g(void) { return NULL; }
int h(void) { return -1; }
'''

PYTHON = '''
class BitnetError(Exception): ...
class ModelLoadError(BitnetError): ...
class Deeper(ModelLoadError): ...
class Unrelated(Exception): ...

def _invalid(msg) -> "Deeper":
    return Deeper(msg)

def make(msg):
    return ModelLoadError(msg)

def f(x):
    if x == 1:
        raise ModelLoadError("a")
    if x == 2:
        raise Deeper("b")
    if x == 3:
        raise _invalid("c")
    if x == 4:
        raise make("d")
    if x == 5:
        raise Unrelated("not ours")
    if x == 6:
        raise ValueError("not ours")
    if x == 7:  # NEVER: x is checked by the caller
        raise ModelLoadError("e")
'''


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "native" / "common").mkdir(parents=True)
    (tmp_path / "native" / "common" / "x.c").write_text(NATIVE)
    (tmp_path / "pytest_bitnet").mkdir()
    (tmp_path / "pytest_bitnet" / "m.py").write_text(PYTHON)
    (tmp_path / "fault_inject").mkdir()
    return tmp_path


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.split("\n"), 1) if needle in line)


def test_native_rules(tree: Path) -> None:
    sites = {(s.line, s.kind): s for s in es.native_sites(tree)}
    assert sorted(sites) == sorted([
        (_line(NATIVE, "return bn_error(BITNET_E_INVALID_ARG"), "error"),  # one site for return + bn_error
        (_line(NATIVE, "int rc ="), "error"),  # a statement's first line, though the call is on the next
        (_line(NATIVE, "if (!p)"), "code"),
        (_line(NATIVE, "if (NEVER"), "code"),
        (_line(NATIVE, "void *g"), "null"),
        (_line(NATIVE, "int h"), "minus1"),
    ])
    call = sites[(_line(NATIVE, "return bn_error(BITNET_E_INVALID_ARG"), "error")]
    assert call.last == call.line + 1  # the whole call: gcov may count either line
    assert sites[(_line(NATIVE, "if (NEVER"), "code")].never == "x is clamped by the caller"
    assert [s.never for s in sites.values()].count(None) == 5


def test_python_rules(tree: Path) -> None:
    sites = {s.line: s for s in es.python_sites(tree)}
    want = {_line(PYTHON, f'("{c}")'): c for c in "abcde"}
    assert sorted(sites) == sorted(want)
    assert sites[_line(PYTHON, '_invalid("c")')].kind == "factory"  # by its annotation
    assert sites[_line(PYTHON, 'make("d")')].kind == "factory"  # by what it returns
    assert sites[_line(PYTHON, '("e")')].never == "x is checked by the caller"


def test_report_joins_coverage_data_and_ends_with_the_figure(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nat = tree / "native" / "common" / "x.c"
    counted = {_line(NATIVE, "if (!p)"): 1, _line(NATIVE, "void *g"): 3,
               _line(NATIVE, "return bn_error(BITNET_E_INVALID_ARG") + 1: 2,  # counted on the call's 2nd line
               _line(NATIVE, "int h"): 0}
    (tree / "native.json").write_text(json.dumps({"files": [{"file": str(nat), "lines": [
        {"line_number": n, "count": c} for n, c in counted.items()]}]}))
    py = tree / "pytest_bitnet" / "m.py"
    a, b = _line(PYTHON, '("a")'), _line(PYTHON, '("b")')
    (tree / "python.json").write_text(json.dumps({"files": {str(py): {"executed_lines": [a], "missing_lines": [b]}}}))
    assert es.main(["--root", str(tree), "--native", str(tree / "native.json"), "--python", str(tree / "python.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    # reached: the bn_error call, the code return, the NULL return, raise a; NEVER sites not counted
    # (native 3 of 5, python 1 of 4)
    assert out[-1] == "error sites reached: 4/9 (44%)"
    assert any("x is clamped by the caller" in line and "not reached" in line for line in out)
    assert any(line.strip().startswith("?") and "bn_error(BITNET_E_OOM" in line for line in out)  # no data: '?'


def test_gate_fails_below_the_bar(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert es.main(["--root", str(tree), "--gate", "1"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "error sites reached: 0/9 (0%)"
    assert es.main(["--root", str(tree)]) == 0  # off by default: measures only


NEVER_PROGRAM = r'''
#include <stdio.h>
#include "bn_never.h"
int main(int argc, char **argv)
{
    if (NEVER(argc > 1, "no arguments are passed")) return 3;
    if (!ALWAYS(argc >= 1, "argv[0] is always there")) return 4;
    puts("ok");
    return 0;
}
'''


@pytest.mark.parametrize("coverage_build", [False, True])
def test_never_asserts_in_the_coverage_build_and_is_the_plain_test_in_release(tmp_path: Path, coverage_build: bool) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "t.c").write_text(NEVER_PROGRAM)
    exe = tmp_path / "t"
    subprocess.run([cc, "-Wall", "-Werror", f"-I{ROOT / 'native' / 'common'}", *(["-DBN_COVERAGE"] if coverage_build else []),
                    str(tmp_path / "t.c"), "-o", str(exe)], check=True)
    assert subprocess.run([exe], capture_output=True, text=True).stdout == "ok\n"
    reached = subprocess.run([exe, "x"], capture_output=True, text=True)
    if coverage_build:
        assert reached.returncode < 0  # abort()
        assert "NEVER(argc > 1) was reached" in reached.stderr and "no arguments are passed" in reached.stderr
    else:
        assert reached.returncode == 3  # the defence stays in release
