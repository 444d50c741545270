"""The one-time warning for a library whose calls cannot be bounded in process (plugin/deadlines.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..native_builds import build_library

# The inner runs are in process: this run's plugin hears their sessions too,
# and would warn of them in the outer test.
pytestmark = pytest.mark.filterwarnings("ignore::pytest_bitnet.plugin.BitnetUnboundedCallsWarning")


@pytest.fixture(scope="module")
def hookless(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # like BitNet.cpp's own libbitnet.so: no bitnet_host_attach
    return build_library(tmp_path_factory.mktemp("no_host_hook"), host_hook=False)


@pytest.fixture
def tests_using(pytester: pytest.Pytester, hookless: Path, tiny_model: Path) -> pytest.Pytester:
    pytester.makeconftest(
        f"""
        import pytest
        import pytest_bitnet as bn

        HOOKLESS = {str(hookless)!r}
        MODEL = {str(tiny_model)!r}

        @pytest.fixture
        def unbounded():
            with bn.BitnetSession.create(MODEL, backend="dlopen", library_path=HOOKLESS) as s:
                yield s
        """
    )
    return pytester


def test_warns_once_per_library_naming_it_the_test_and_the_remedy(tests_using: pytest.Pytester, hookless: Path) -> None:
    tests_using.makepyfile(
        test_a="""
        import pytest_bitnet as bn
        from conftest import HOOKLESS, MODEL

        def test_first(unbounded):
            assert unbounded.backend_info["deadlines"].startswith("not honoured")

        def test_second(unbounded):
            pass

        def test_direct():
            bn.BitnetSession.create(MODEL, backend="dlopen", library_path=HOOKLESS).close()

        def test_reference():
            bn.BitnetSession.create(MODEL, backend="reference").close()
        """
    )
    result = tests_using.runpytest("-W", "always::pytest_bitnet.plugin.BitnetUnboundedCallsWarning")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert out.count("BitnetUnboundedCallsWarning") == 1, out
    result.stdout.fnmatch_lines([
        "test_a.py::test_first",
        f"*BitnetUnboundedCallsWarning: calls into dlopen:{hookless} cannot be bounded in process "
        f"({hookless} does not export bitnet_host_attach*); a hang there hangs the run: "
        "--bitnet-isolation=process (env BITNET_ISOLATION=process) bounds them. "
        "First session created in test_a.py::test_first",
    ])


def test_no_warning_when_every_library_honours_them(pytester: pytest.Pytester, tiny_model: Path) -> None:
    pytester.makepyfile(
        f"""
        import pytest_bitnet as bn

        def test_it():
            for backend in ("reference", "dlopen"):  # dlopen: the bundled library, attached
                bn.BitnetSession.create({str(tiny_model)!r}, backend=backend).close()
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "BitnetUnboundedCallsWarning" not in result.stdout.str()


def test_as_an_error_it_fails_the_creating_test_and_leaks_nothing(tests_using: pytest.Pytester) -> None:
    # raised after the test's call, not inside create(): the session was
    # closed by its fixture, so the leak check (strict) finds nothing
    tests_using.makepyfile(
        test_b="""
        def test_first(unbounded):
            pass

        def test_after(unbounded):
            pass
        """
    )
    result = tests_using.runpytest("-W", "error::pytest_bitnet.plugin.BitnetUnboundedCallsWarning",
                                   "--bitnet-leak-check=strict")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "E *BitnetUnboundedCallsWarning: calls into dlopen:* First session created in test_b.py::test_first",
        "FAILED test_b.py::test_first - *BitnetUnboundedCallsWarni*",
    ])
    assert "native objects leaked" not in result.stdout.str()


def test_a_session_made_outside_any_test_is_named_so(tests_using: pytest.Pytester) -> None:
    tests_using.makepyfile(
        test_c="""
        import pytest_bitnet as bn
        from conftest import HOOKLESS, MODEL

        bn.BitnetSession.create(MODEL, backend="dlopen", library_path=HOOKLESS).close()  # at collection

        def test_it():
            pass
        """
    )
    result = tests_using.runpytest("-W", "always::pytest_bitnet.plugin.BitnetUnboundedCallsWarning")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_c.py::test_it", "*test_c.py:4: BitnetUnboundedCallsWarning: *First session created outside any test"])
