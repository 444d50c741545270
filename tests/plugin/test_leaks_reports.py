"""Leak assertion, reports (header, sections, summary, JUnit) and the plugin's hooks."""

from __future__ import annotations

import pytest

LEAKY = """
import pytest, pytest_bitnet as bn
KEEP = []

def open_and_forget(path):
    KEEP.append(bn.BitnetSession.create(path))

def test_leaks(bitnet_model):
    open_and_forget(bitnet_model)

def test_clean(bitnet_session):
    bitnet_session.tokenize("fine")
"""


def test_leak_fails_the_run_and_names_where_created(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "bitnet: native objects leaked by test_leaky.py::test_leaks: contexts +1*",
            "*<BitnetSession * created at (most recent call last):",
            '  File "*test_leaky.py", line 8, in test_leaks',
            '  File "*test_leaky.py", line 5, in open_and_forget',
            "*= bitnet =*",
            "native leaks in 1 test(s):",
        ]
    )
    # creation stacks start at the test, not in pytest's machinery
    assert "_pytest" not in result.stdout.str().split("ERROR at teardown of test_leaks")[1].split("= bitnet =")[0]


def test_warn_mode_reports_without_failing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("--bitnet-leak-check=warn")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["native leaks in 1 test(s) (warn mode: not failing):", "*leaked by test_leaky.py::test_leaks*"])


def test_off_mode_and_allow_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("--bitnet-leak-check=off")
    assert result.ret == pytest.ExitCode.OK
    assert "leaked" not in result.stdout.str()
    pytester.makepyfile(test_leaky=LEAKY.replace("def test_leaks", "@pytest.mark.bitnet_allow_leaks\ndef test_leaks"))
    assert pytester.runpytest_subprocess().ret == pytest.ExitCode.OK


def test_higher_scoped_fixtures_are_not_leaks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, pytest_bitnet as bn
        KEEP = []
        @pytest.fixture(scope="session")
        def shared(bitnet_model):
            with bn.BitnetSession.create(bitnet_model) as s:
                yield s
        @pytest.fixture(scope="module")
        def per_module(bitnet_model):
            with bn.BitnetSession.create(bitnet_model) as s:
                yield s
        def test_a(shared, per_module):
            shared.tokenize("a"); per_module.tokenize("a")
        def test_b(shared, per_module, bitnet_model):
            # per_module is closed in this test's teardown: that must not hide this leak
            KEEP.append(bn.BitnetSession.create(bitnet_model))
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*leaked by test_higher_scoped_fixtures_are_not_leaks.py::test_b: contexts +1*"])
    assert "::test_a" not in result.stdout.str().split("short test summary")[1]


def test_header_summary_and_junit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, pytest_bitnet as bn
        def test_fill(bitnet_session):
            with pytest.raises(bn.errors.InferenceError):
                bitnet_session.tokenize("x")
        def test_no_tokenize():
            pass
        """
    )
    result = pytester.runpytest("--bitnet-inject=tokenize.fill=fail", "--bitnet-seed=11", "--junitxml=out.xml")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "bitnet: backend=reference*leak-check=strict*",
            "bitnet: inject='tokenize.fill=fail' (--bitnet-inject), seed=11 (--bitnet-seed); reproduce with --bitnet-inject='tokenize.fill=fail' --bitnet-seed=11 "
            "(one test: pytest NODEID with the same flags; each test draws from its own seed, fault_inject.derive_seed(seed, NODEID))",
            "*= bitnet =*",
            "fault spec 'tokenize.fill=fail' (seed 11) armed in 2 test(s):",
            "  tokenize.fill: 1 hits, 1 fired",
            "  armed but never hit: tokenize.fill (in *::test_no_tokenize)",
        ]
    )
    xml = (pytester.path / "out.xml").read_text()
    import fault_inject as fi

    seed = fi.derive_seed(11, "test_header_summary_and_junit.py::test_fill")
    assert f'<property name="bitnet_inject" value="tokenize.fill=fail (seed {seed}, derived from run seed 11 and the node id)" />' in xml
    assert '<property name="bitnet_hits" value="{&quot;tokenize.fill&quot;: 1}" />' in xml
    assert '<property name="bitnet_never_hit" value="tokenize.fill" />' in xml


def test_summary_of_a_pattern_counts_the_points_no_test_reached(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_tok(bitnet_session):\n    bitnet_session.tokenize('x')\n")
    result = pytester.runpytest("--bitnet-inject=*=off", "--bitnet-seed=3")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["fault spec '[*]=off' (seed 3) armed in 1 test(s):", "  tokenize.fill: 1 hits, 0 fired",
                                 "  * more point(s) armed, not hit"])
    assert "eval.fill: 0 hits" not in result.stdout.str()


def test_hooks_fault_fired_and_leak_found(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        FIRED = []
        def pytest_bitnet_fault_fired(item, event):
            FIRED.append((item.name, event.point, event.action, event.hit))
            print("FIRED", item.name, event.point, event.action, event.hit)
        def pytest_bitnet_leak_found(item, leak):
            print("LEAK", item.name, ",".join(sorted(leak.counters)), len(leak.objects))
            if item.name == "test_known":
                return False
        """
    )
    pytester.makepyfile(
        """
        import pytest, pytest_bitnet as bn
        KEEP = []
        @pytest.mark.bitnet_inject("eval.fill=fail")
        def test_fires(bitnet_session):
            with pytest.raises(bn.errors.InferenceError):
                bitnet_session.evaluate([1])
        def test_known(bitnet_model):
            KEEP.append(bn.BitnetSession.create(bitnet_model))
        """
    )
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*FIRED test_fires eval.fill fail 1*", "*LEAK test_known allocations,bytes,contexts,models 1*"])


def test_junit_carries_the_creation_stacks_and_the_firings(pytester: pytest.Pytester) -> None:
    # Issue 20, item 11: the error text pointed at a report section that
    # junitxml does not write, and the firing counts were missing.
    pytester.makepyfile(test_leaky=LEAKY)
    pytester.makepyfile(
        test_fires="""
        import pytest, pytest_bitnet as bn
        @pytest.mark.bitnet_inject("tokenize.fill=fail")
        def test_fill(bitnet_session):
            with pytest.raises(bn.errors.InferenceError):
                bitnet_session.tokenize("x")
        """
    )
    result = pytester.runpytest_subprocess("--junitxml=out.xml")
    result.assert_outcomes(passed=3, errors=1)
    import xml.etree.ElementTree as ET

    root = ET.parse(pytester.path / "out.xml").getroot()
    (error,) = root.iter("error")
    assert "leaked by test_leaky.py::test_leaks" in error.get("message", "")
    assert "section" not in error.get("message", "") and "section" not in (error.text or "")
    assert 'test_leaky.py", line 8, in test_leaks' in (error.text or "")
    assert 'test_leaky.py", line 5, in open_and_forget' in (error.text or "")
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["bitnet_hits"] == '{"tokenize.fill": 1}'
    assert props["bitnet_fired"] == '{"tokenize.fill": 1}'
    # the terminal shows the stacks once, in the error
    assert result.stdout.str().count("in open_and_forget") == 2  # the error, and the bitnet summary


def test_junit_in_warn_mode_carries_the_leak_as_a_property(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("--junitxml=out.xml", "--bitnet-leak-check=warn")
    result.assert_outcomes(passed=2)
    import xml.etree.ElementTree as ET

    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "out.xml").getroot().iter("property")}
    assert 'line 5, in open_and_forget' in props["bitnet_leak"]
    assert props["bitnet_leaked"].startswith('{"allocations": ')


# ---- per object: sessions not closed, and totals that hide leaks (issue 20, items 2-4) -----

DROPPED = """
import pytest_bitnet as bn

def make(path):
    return bn.BitnetSession.create(path)

def test_drops(bitnet_model):
    s = make(bitnet_model)
    s.tokenize("dropped, never closed")

def test_clean(bitnet_session):
    bitnet_session.tokenize("fine")
"""


def test_a_session_freed_by_its_finalizer_is_a_leak_of_the_test_that_dropped_it(pytester: pytest.Pytester) -> None:
    # Item 2: the finalizer freed it, the counters were back, the test passed.
    pytester.makepyfile(test_dropped=DROPPED)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_drops*",
            "bitnet: native objects leaked by test_dropped.py::test_drops: 1 session not closed*",
            "  <BitnetSession *: not closed: freed by its finalizer after the test dropped it, created at (most recent call last):",
            '  File "*test_dropped.py", line 7, in test_drops',
            '  File "*test_dropped.py", line 4, in make',
        ]
    )
    out = result.stdout.str()
    assert "inside the native bridge" not in out and "leaked by test_dropped.py::test_clean" not in out
    # warn mode lists it without failing
    result = pytester.runpytest_subprocess("--bitnet-leak-check=warn")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["native leaks in 1 test(s) (warn mode: not failing):", "*leaked by test_dropped.py::test_drops: 1 session not closed*",
         "*not closed: freed by its finalizer*"]
    )


def test_resource_warnings_as_errors_still_free_the_session(pytester: pytest.Pytester) -> None:
    # Item 3: the warning raised inside the finalizer before the free, the
    # context stayed alive, and the plugin blamed the native bridge.
    pytester.makepyfile(test_dropped=DROPPED)
    result = pytester.runpytest_subprocess("-W", "error::ResourceWarning")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["bitnet: native objects leaked by test_dropped.py::test_drops: 1 session not closed*",
                                 "*not closed: freed by its finalizer*"])
    out = result.stdout.str()
    assert "inside the native bridge" not in out and "contexts +1" not in out


MASKED = """
import pytest, pytest_bitnet as bn
from pytest_bitnet.bridge import abi
KEEP = []

def test_fails_holding_a_session(bitnet_model):
    s = bn.BitnetSession.create(bitnet_model)
    assert s.n_vocab == -1  # fails: the traceback keeps s alive until the next test's call

def test_leaks_a_session(bitnet_model):
    KEEP.append(bn.BitnetSession.create(bitnet_model))
"""


def test_a_leak_is_not_hidden_by_an_earlier_tests_session_freed_meanwhile(pytester: pytest.Pytester) -> None:
    # Item 4: the failed test's session (held by sys.last_traceback) is freed
    # during the next test; its -1 cancelled the next test's +1.
    pytester.makepyfile(test_masked=MASKED)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1, passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_fails_holding_a_session*",
            "bitnet: native objects leaked by test_masked.py::test_fails_holding_a_session: contexts +1*",
            "*ERROR at teardown of test_leaks_a_session*",
            "bitnet: native objects leaked by test_masked.py::test_leaks_a_session: contexts +1*",
            "  <BitnetSession * still open, created at (most recent call last):",
            '  File "*test_masked.py", line 10, in test_leaks_a_session',
        ]
    )
    assert "inside the native bridge" not in result.stdout.str()


def test_a_native_leak_is_not_hidden_by_an_earlier_tests_session_freed_meanwhile(pytester: pytest.Pytester) -> None:
    # The counters stay the ground truth for what Python did not make (here a
    # context taken through the C ABI), corrected for the earlier session.
    pytester.makepyfile(
        test_masked=MASKED.replace(
            "    KEEP.append(bn.BitnetSession.create(bitnet_model))",
            "    out = abi.ffi.new('bitnet_context_t **')\n"
            "    assert abi.lib.bitnet_cpp_init_context(out, str(bitnet_model).encode(), 64, 0, abi.ffi.NULL, 0) == 0\n"
            "    KEEP.append(out)",
        )
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1, passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "bitnet: native objects leaked by test_masked.py::test_leaks_a_session: contexts +1*",
            "  contexts +1*held by no BitnetSession this test created: the leak is inside the native bridge*",
        ]
    )


def test_custom_counters_are_checked_besides_the_built_in_ones(pytester: pytest.Pytester) -> None:
    # Item 5: a pytest_bitnet_counters implementation replaced the built-in
    # counters (a session leak passed) and its own leak was blamed on the
    # native bridge.
    pytester.makeconftest(
        """
        import handles
        def pytest_bitnet_counters():
            return {"wrapper_handles": len(handles.OPEN)}
        """
    )
    pytester.makepyfile(handles="OPEN = []")
    pytester.makepyfile(
        test_custom="""
        import handles, pytest_bitnet as bn
        KEEP = []
        def test_leaks_a_handle():
            handles.OPEN.append(object())
        def test_leaks_a_session(bitnet_model):
            KEEP.append(bn.BitnetSession.create(bitnet_model))
        def test_clean(bitnet_session):
            bitnet_session.tokenize("fine")
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "bitnet: native objects leaked by test_custom.py::test_leaks_a_handle: wrapper_handles +1 *",
            "  wrapper_handles +1: counters of pytest_bitnet_counters (not the bridge's)*",
        ]
    )
    result.stdout.fnmatch_lines(["bitnet: native objects leaked by test_custom.py::test_leaks_a_session: contexts +1*"])
    assert "inside the native bridge" not in result.stdout.str()


def test_custom_counters_may_not_take_a_built_in_name(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("def pytest_bitnet_counters():\n    return {'contexts': 0}\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*pytest_bitnet_counters returned 'contexts', the name of a built-in counter*"])
