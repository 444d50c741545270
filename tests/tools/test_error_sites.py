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


PROBED = r'''
#define _GNU_SOURCE /* after the force-included probe: must still take effect */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#define BITNET_OK 0
#define BITNET_E_OOM -5
static int bn_error(int code, const char *fmt, ...) { (void)fmt; return code; }
static void *g(int x)
{
    if (x == 1)
        return NULL;
    return &errno;
}
static int f(int x)
{
    errno = ERANGE;
    if (x == 2)
        return bn_error(BITNET_E_OOM,
                        "errno is %d", errno);
    return BITNET_OK;
}
int main(int argc, char **argv)
{
    int x = argc > 1 ? argv[1][0] - '0' : 0;
    for (int i = 0; i < 3; i++) /* a site logs once per process */
        (void)(!g(x) || f(x));
    errno = ERANGE;
    (void)f(2);
    printf("%s\n", errno == ERANGE ? "errno kept" : strerror(errno));
    return 0;
}
'''


def test_instrumented_sites_log_the_test_that_reached_them_and_keep_their_lines(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "native" / "p.c"
    src.parent.mkdir()
    src.write_text(PROBED)
    sites = es.native_sites(tmp_path)
    assert {s.kind for s in sites} == {"null", "error"}
    assert es.instrument(tmp_path, sites) == 2
    rewritten = src.read_text()
    assert rewritten.count("\n") == PROBED.count("\n")  # gcov's line numbers still hold
    assert 'return (BN_SITE("native/p.c:12"), NULL);' in rewritten
    exe = tmp_path / "p"
    subprocess.run([cc, "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-include", str(ROOT / "tools" / "site_probe.h"),
                    str(src), "-o", str(exe)], check=True)
    log = tmp_path / "sites.log"
    env = {"BITNET_SITE_LOG": str(log), "PYTEST_CURRENT_TEST": "tests/x.py::test_one (call)"}
    assert subprocess.run([exe, "1"], env=env, capture_output=True, text=True, check=True).stdout == "errno kept\n"
    env["PYTEST_CURRENT_TEST"] = "tests/x.py::test_two (call)"
    subprocess.run([exe, "0"], env=env, check=True)
    lines = log.read_text().splitlines()
    # run 1: the NULL site once (of 3 passes) and the bn_error site once; run 2: the bn_error site
    assert sorted(line.split("\t", 1)[1] for line in lines) == sorted([
        "native/p.c:12\ttests/x.py::test_one (call)",
        "native/p.c:19\ttests/x.py::test_one (call)",
        "native/p.c:19\ttests/x.py::test_two (call)",
    ])
    by = es.read_site_log(log)
    assert by == {"native/p.c:12": "tests/x.py::test_one", "native/p.c:19": "tests/x.py::test_one"}
    # the log alone marks a site reached (a build whose counts are gone)
    es.mark_native(sites, {}, by)
    assert all(s.reached and s.extra["by"] == "tests/x.py::test_one" for s in sites)
    subprocess.run([exe], env={}, check=True)  # no log asked for: nothing written, no crash


def test_reports_list_every_site_with_who_reached_it(tree: Path) -> None:
    sites = es.native_sites(tree) + es.python_sites(tree)
    for s in sites:
        s.reached = s.kind == "code"
        if s.reached:
            s.extra["by"] = "tests/t.py::test_code"
    es.write_reports(sites, tree, tree / "out")
    rows = json.loads((tree / "out" / "error-sites.json").read_text())
    assert len(rows) == len(sites)
    states = {r["site"]: (r["state"], r["by"]) for r in rows}
    assert states[f"native/common/x.c:{_line(NATIVE, 'if (!p)')}"] == ("reached", "tests/t.py::test_code")
    assert states[f"native/common/x.c:{_line(NATIVE, 'if (NEVER')}"][0] == "REACHED-NEVER"  # a wrong marker stands out
    assert states[f"native/common/x.c:{_line(NATIVE, 'void *g')}"][0] == "unreached"
    text = (tree / "out" / "error-sites.txt").read_text()
    assert "x is clamped by the caller" in text and "tests/t.py::test_code" in text
    page = (tree / "out" / "error-sites.html").read_text()
    assert "native/common/x.c" in page and "pytest_bitnet/m.py" in page and "#fbb" in page
