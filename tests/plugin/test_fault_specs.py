"""Fault specs in a run: per-test draws, cancelling a spec, composition of
scopes, hangs that must end, usage errors printed once."""

from __future__ import annotations

import shlex

import pytest

import fault_inject as fi

# Each test tokenizes 32 times under a 50% fill-pass failure and writes
# its fail/pass pattern (F/.) to a file named after the test.
DRAWS = """
import pytest, pytest_bitnet as bn
@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_draws(name, bitnet_session, tmp_path_factory):
    pattern = ""
    for _ in range(32):
        try:
            bitnet_session.tokenize("x")
            pattern += "."
        except bn.errors.InferenceError:
            pattern += "F"
    (tmp_path_factory.getbasetemp().parent / f"draws-{name}").write_text(pattern)
    assert name != "b", "b fails, so its report says how to rerun it"
"""


def _patterns(pytester: pytest.Pytester) -> dict[str, str]:
    return {p.name.split("-", 1)[1]: p.read_text() for p in pytester.path.parent.glob("**/draws-*")}


def test_each_test_draws_its_own_pattern_reproducible_from_the_run_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_draws=DRAWS)
    spec = "--bitnet-inject=tokenize.fill=50%fail"
    result = pytester.runpytest(spec, "--bitnet-seed=1234")
    result.assert_outcomes(passed=2, failed=1)
    full = _patterns(pytester)
    assert set(full) == {"a", "b", "c"} and all(len(p) == 32 for p in full.values())
    # The same spec and seed in every test used to draw the same pattern.
    assert len(set(full.values())) == 3, full
    # The failure report says what reruns that one test with the same draws ...
    result.stdout.fnmatch_lines(
        [
            "*- bitnet fault injection -*",
            f"fault spec 'tokenize.fill=50%fail' (--bitnet-inject), test seed {fi.derive_seed(1234, 'test_draws.py::test_draws[b]')} "
            "= derive_seed(run seed 1234, node id)",
            "reproduce this test with the same draws: pytest 'test_draws.py::test_draws[b]' --bitnet-seed=1234 "
            "--bitnet-inject=tokenize.fill=50%fail",
        ]
    )
    line = next(x for x in result.outlines if x.startswith("reproduce this test with the same draws: "))
    command = shlex.split(line.split(": ", 1)[1])
    assert command[0] == "pytest"
    # ... and it does: alone, the test draws what it drew in the full run
    for p in pytester.path.parent.glob("**/draws-*"):
        p.unlink()
    pytester.runpytest(*command[1:]).assert_outcomes(failed=1)
    assert _patterns(pytester) == {"b": full["b"]}
    # whatever runs before it: in another order, each test still draws the same
    pytester.runpytest(spec, "--bitnet-seed=1234", "-p", "no:randomly", "test_draws.py::test_draws[c]", "test_draws.py::test_draws[a]")
    again = _patterns(pytester)
    assert again["a"] == full["a"] and again["c"] == full["c"]


def test_a_marker_seed_is_used_as_given(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.bitnet_inject("tokenize.fill=50%fail", seed=77)
        def test_one(bitnet_inject):
            assert [a.seed for a in bitnet_inject.armed] == [77]
        """
    )
    pytester.runpytest("--bitnet-seed=5").assert_outcomes(passed=1)


SHOW = """
def test_show(bitnet_inject):
    print("ARMED", [str(a.spec) for a in bitnet_inject.armed])
"""


@pytest.mark.parametrize("value", ["none", "None", ""])
def test_bitnet_inject_none_cancels_the_ini_and_environment_spec(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    pytester.makeini("[pytest]\nbitnet_inject = tokenize.query=fail\n")
    pytester.makepyfile(SHOW)
    result = pytester.runpytest("-s", f"--bitnet-inject={value}")
    result.assert_outcomes(passed=1)
    assert "ARMED []" in result.stdout.str()
    result.stdout.fnmatch_lines(["bitnet: inject=none (--bitnet-inject), seed=*"])
    monkeypatch.setenv("BITNET_INJECT", "tokenize.fill=fail")
    result = pytester.runpytest("-s", f"--bitnet-inject={value}")
    result.assert_outcomes(passed=1)
    assert "ARMED []" in result.stdout.str()


def test_environment_none_cancels_the_ini_spec(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\nbitnet_inject = tokenize.query=fail\n")
    pytester.makepyfile(SHOW)
    monkeypatch.setenv("BITNET_INJECT", "none")
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    assert "ARMED []" in result.stdout.str()


# ---- composition: the narrower scope wins for the points it names ----------------------


def test_fixture_over_the_run_wide_spec(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, pytest_bitnet as bn
        def test_fixture(bitnet_session, bitnet_inject):
            with pytest.raises(bn.errors.InferenceError, match="FILL PHASE"):
                bitnet_session.tokenize("run-wide")
            with bitnet_inject("tokenize.fill=off") as mine:   # used to raise FaultStateError
                bitnet_session.tokenize("the fixture's")
                assert mine.hits("tokenize.fill") == 1
            with pytest.raises(bn.errors.InferenceError, match="FILL PHASE"):
                bitnet_session.tokenize("run-wide again")
            run_wide = bitnet_inject.armed[0]
            assert run_wide.hits("tokenize.fill") == 2 and run_wide.fired("tokenize.fill") == 2
            assert run_wide.hits("tokenize.query") == 3   # never taken over
        """
    )
    result = pytester.runpytest("--bitnet-inject=tokenize.fill=fail;tokenize.query=off")
    result.assert_outcomes(passed=1)


def test_marker_over_the_run_wide_spec_keeps_its_other_points(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, pytest_bitnet as bn
        @pytest.mark.bitnet_inject("tokenize.fill=off")
        def test_marker(bitnet_session, bitnet_inject):
            tokens = bitnet_session.tokenize("marker wins for tokenize.fill")
            with pytest.raises(bn.errors.InferenceError, match="QUERY PHASE"):
                bitnet_session.evaluate(tokens)    # the run-wide spec still has eval.query
            run_wide, marker = bitnet_inject.armed
            assert str(run_wide.spec) == "tokenize.fill=fail;eval.query=fail"
            assert marker.hits("tokenize.fill") == 1 and run_wide.hits("tokenize.fill") == 0
        """
    )
    pytester.runpytest("--bitnet-inject=tokenize.fill=fail;eval.query=fail").assert_outcomes(passed=1)


def test_stacked_markers_compose_the_narrowest_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, pytest_bitnet as bn
        pytestmark = pytest.mark.bitnet_inject("tokenize.query=off;eval.fill=fail")
        @pytest.mark.bitnet_inject("tokenize.fill=fail;eval.query=fail")   # outer decorator: wider
        @pytest.mark.bitnet_inject("tokenize.fill=off")                    # nearest the def: narrowest
        def test_stacked(bitnet_session, bitnet_inject):
            tokens = bitnet_session.tokenize("inner marker: fill off")
            with pytest.raises(bn.errors.InferenceError, match="QUERY PHASE"):
                bitnet_session.evaluate(tokens)    # the outer marker was dropped before
            assert [str(a.spec) for a in bitnet_inject.armed] == [
                "tokenize.query=off;eval.fill=fail", "tokenize.fill=fail;eval.query=fail", "tokenize.fill=off"]
            assert bitnet_inject.armed[0].hits("tokenize.query") == 1   # the module marker counts its own point
        class TestClass:
            pytestmark = pytest.mark.bitnet_inject("eval.fill=off")
            def test_class_over_module(self, bitnet_session):
                bitnet_session.evaluate(bitnet_session.tokenize("class marker wins for eval.fill"))
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_two_fixture_calls_the_later_wins_and_hands_back(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, pytest_bitnet as bn
        def test_twice(bitnet_session, bitnet_inject):
            first = bitnet_inject("tokenize.fill=fail")
            second = bitnet_inject("tokenize.fill=off")
            bitnet_session.tokenize("the later call wins")
            second.disarm()
            with pytest.raises(bn.errors.InferenceError, match="FILL PHASE"):
                bitnet_session.tokenize("the first gets it back")
            assert (first.hits("tokenize.fill"), second.hits("tokenize.fill")) == (1, 1)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# ---- hangs must end ----------------------------------------------------------------------

HANG = """
import pytest, pytest_bitnet as bn
def test_hang(bitnet_session):
    with pytest.raises(bn.errors.OperationTimeout):
        bitnet_session.evaluate([1, 2, 3])
"""


def test_run_wide_hang_without_deadline_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(HANG)
    result = pytester.runpytest_subprocess("--bitnet-inject=eval.step=hang", "--bitnet-timeout=none", timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*fault spec 'eval.step=hang' from --bitnet-inject injects a hang at eval.step, but native calls have no deadline "
         "(--bitnet-timeout), so the test would hang for ever; give them one: --bitnet-timeout=SECONDS*"]
    )
    # with a deadline it runs, and ends
    pytester.runpytest_subprocess("--bitnet-inject=eval.step=hang", "--bitnet-timeout=0.2", timeout=120).assert_outcomes(passed=1)


def test_marker_or_fixture_hang_without_deadline_errors_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import math, pytest, pytest_bitnet as bn
        @pytest.mark.bitnet_timeout(None)
        @pytest.mark.bitnet_inject("eval.step=hang")
        def test_marker_none(bitnet_session):
            bitnet_session.evaluate([1, 2, 3])
        @pytest.mark.bitnet_timeout(math.inf)
        def test_fixture_inf(bitnet_session, bitnet_inject):
            bitnet_inject("tokenize.step=hang")
            bitnet_session.tokenize("never reached")
        @pytest.mark.bitnet_timeout(0.2)
        @pytest.mark.bitnet_inject("eval.step=hang")
        def test_bounded(bitnet_session):
            with pytest.raises(bn.errors.OperationTimeout):
                bitnet_session.evaluate([1, 2, 3])
        """
    )
    # before: the first two hung for ever (the subprocess timeout ended them)
    result = pytester.runpytest_subprocess("--bitnet-timeout=none", timeout=120)
    result.assert_outcomes(passed=1, errors=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*fault spec 'eval.step=hang' from marker bitnet_inject on test_marker_or_fixture_hang_without_deadline_errors_the_test.py::"
         "test_marker_none injects a hang at eval.step, but native calls have no deadline (marker bitnet_timeout on *), so the test "
         "would hang for ever*"]
    )
    result.stdout.fnmatch_lines(["*fault spec 'tokenize.step=hang' from the bitnet_inject fixture injects a hang*"])


# ---- usage errors once ---------------------------------------------------------------------


def test_marker_usage_errors_are_printed_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.bitnet_inject("tokenize.fill=boom")
        def test_bad_spec(): pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "During handling of the above exception" not in out
    assert out.count("invalid fault spec from marker bitnet_inject on test_marker_usage_errors_are_printed_once.py::test_bad_spec") == 1, out
