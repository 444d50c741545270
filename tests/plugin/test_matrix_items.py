"""The matrix's pytest items (``-p pytest_bitnet.matrix --bitnet-matrix ...``) in a project's session."""

from __future__ import annotations

import pytest

PROJECT_TESTS = """
def test_a():
    pass

def test_b():
    pass
"""

MATRIX = ("-p", "pytest_bitnet.matrix", "--bitnet-matrix", "reference,stub", "--bitnet-matrix-ids", "E01,E09")


def test_cells_are_collected_and_counted_beside_the_projects_tests(pytester: pytest.Pytester) -> None:
    # issue 20.12: the cells replaced the collected items, so pytest said
    # "2 tests collected" and listed 4 cells, and the project's tests vanished
    pytester.makepyfile(test_project=PROJECT_TESTS)
    result = pytester.runpytest_subprocess(*MATRIX, "--co", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "test_project.py::test_a",
            "test_project.py::test_b",
            "bitnet-matrix::E01[reference]",
            "bitnet-matrix::E01[stub]",
            "bitnet-matrix::E09[reference]",
            "bitnet-matrix::E09[stub]",
            "6 tests collected*",
        ]
    )


def test_cells_run_beside_the_projects_tests_and_select_like_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_project=PROJECT_TESTS)
    result = pytester.runpytest_subprocess(*MATRIX, "-q")
    result.assert_outcomes(passed=6)
    result = pytester.runpytest_subprocess(*MATRIX, "-q", "-k", "E09 and stub")
    result.assert_outcomes(passed=1, deselected=5)


def test_a_run_wide_fault_spec_is_refused_with_the_matrix(pytester: pytest.Pytester) -> None:
    # Every cell arms its own faults: a run-wide spec would fire inside them
    # and turn them red (seen as E06 failing on tokenize.fill=fail).
    pytester.makepyfile(test_project=PROJECT_TESTS)
    result = pytester.runpytest_subprocess(*MATRIX, "--bitnet-inject=tokenize.fill=fail")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--bitnet-matrix runs cells that arm their own faults, and the run-wide fault spec 'tokenize.fill=fail' "
         "from --bitnet-inject would fire in them too*python -m fault_inject matrix -n N*"]
    )
    # without the bitnet plugin there is no run-wide spec to refuse
    result = pytester.runpytest_subprocess(*MATRIX, "-p", "no:bitnet", "-q")
    result.assert_outcomes(passed=6)
