"""--bitnet-isolation=process (ini bitnet_isolation, env BITNET_ISOLATION):
every session of the run in a worker process, so a hanging library ends at
the deadline and a crashing one is one failed test, not a lost run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_bitnet.bridge._native import bundled_library

from ..native_builds import build_broken_backend


@pytest.fixture(scope="module")
def libraries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    real = bundled_library()
    if real is None:
        pytest.skip("no bundled library")
    return {bug: build_broken_backend(tmp_path_factory.mktemp(bug.lower()), bug, real)
            for bug in ("SLEEP_TOKENIZE", "SLEEP_LOAD", "SEGV_EVAL", "ABORT_FREE", "STDERR_EXIT")}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_ISOLATION", "BITNET_INJECT", "BITNET_CPP_LIBDIR"):
        monkeypatch.delenv(var, raising=False)


def _suite(pytester: pytest.Pytester, model: Path, libraries: dict[str, Path]) -> None:
    pytester.makepyfile(
        f"""
        import pytest_bitnet as bn
        MODEL = {str(model)!r}

        def test_hangs():
            with bn.BitnetSession.create(MODEL, backend="dlopen", library_path={str(libraries["SLEEP_TOKENIZE"])!r}) as s:
                s.tokenize("hello")

        def test_crashes():
            with bn.BitnetSession.create(MODEL, backend="dlopen", library_path={str(libraries["SEGV_EVAL"])!r}) as s:
                s.evaluate(s.tokenize("hello"))

        def test_load_hangs():
            bn.BitnetSession.create(MODEL, backend="dlopen", library_path={str(libraries["SLEEP_LOAD"])!r})

        def test_free_aborts():
            with bn.BitnetSession.create(MODEL, backend="dlopen", library_path={str(libraries["ABORT_FREE"])!r}) as s:
                s.tokenize("hello")

        def test_exits():
            with bn.BitnetSession.create(MODEL, backend="dlopen", library_path={str(libraries["STDERR_EXIT"])!r}) as s:
                s.tokenize("hello")

        def test_works():
            with bn.BitnetSession.create(MODEL) as s:
                assert s.isolated
                assert s.backend_info["isolation"].startswith("process (pid ")
                assert len(s.evaluate(s.tokenize("hello"))) > 0
        """
    )


def test_hangs_and_crashes_are_failed_tests(pytester: pytest.Pytester, tiny_model: Path,
                                                 libraries: dict[str, Path]) -> None:
    _suite(pytester, tiny_model, libraries)
    result = pytester.runpytest_subprocess("--bitnet-isolation=process", "--bitnet-timeout=0.5", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=5)
    result.stdout.fnmatch_lines([
        "bitnet: backend=reference (default), leak-check=strict (default), timeout=0.5s (--bitnet-timeout), "
        "isolation=process (--bitnet-isolation)",
    ])
    result.stdout.fnmatch_lines(["*OperationTimeout*stopped at the deadline*"])
    result.stdout.fnmatch_lines(["*OperationTimeout: create failed: create timed out*"])
    result.stdout.fnmatch_lines(["*BackendCrashed: close crashed*SIGABRT*"])
    result.stdout.fnmatch_lines(["*BackendCrashed: tokenize (QUERY PHASE) crashed*exited with status 3*"])
    result.stdout.fnmatch_lines(["*BackendCrashed*SIGSEGV*" if "libasan" not in __import__("os").environ.get("LD_PRELOAD", "")
                                 else "*BackendCrashed*SIGABRT*"])
    assert "leaked" not in result.stdout.str()  # the failed sessions left nothing


def test_under_xdist_a_crash_does_not_lose_the_worker(pytester: pytest.Pytester, tiny_model: Path,
                                                      libraries: dict[str, Path]) -> None:
    pytest.importorskip("xdist")
    _suite(pytester, tiny_model, libraries)
    result = pytester.runpytest_subprocess("--bitnet-isolation=process", "--bitnet-timeout=0.5", "-n", "1",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=5)
    out = result.stdout.str()
    assert "node down" not in out and "replacing crashed worker" not in out


def test_ini_and_environment(pytester: pytest.Pytester, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        f"""
        import pytest_bitnet as bn
        def test_where():
            with bn.BitnetSession.create({str(tiny_model)!r}) as s:
                print("ISOLATED", s.isolated)
        """
    )
    pytester.makeini("[pytest]\nbitnet_isolation = process\n")
    pytester.runpytest_subprocess("-s").stdout.fnmatch_lines(["*isolation=process (ini key bitnet_isolation*", "*ISOLATED True*"])
    monkeypatch.setenv("BITNET_ISOLATION", "none")  # the environment beats the ini file
    pytester.runpytest_subprocess("-s").stdout.fnmatch_lines(["*ISOLATED False*"])
    # the command line beats both
    pytester.runpytest_subprocess("-s", "--bitnet-isolation=process").stdout.fnmatch_lines(["*ISOLATED True*"])


@pytest.mark.parametrize(("args", "ini", "message"), [
    (["--bitnet-isolation=thread"], "", "*invalid isolation 'thread' from --bitnet-isolation: expected none | process*"),
    ([], "bitnet_isolation = sandbox", "*invalid isolation 'sandbox' from ini key bitnet_isolation*"),
])
def test_bad_values_are_usage_errors(pytester: pytest.Pytester, args: list[str], ini: str, message: str) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_the_leak_check_names_a_leaked_isolated_session(pytester: pytest.Pytester, tiny_model: Path) -> None:
    pytester.makepyfile(
        f"""
        import pytest_bitnet as bn
        KEEP = []
        def test_leaks():
            KEEP.append(bn.BitnetSession.create({str(tiny_model)!r}))
        """
    )
    result = pytester.runpytest_subprocess("--bitnet-isolation=process")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*1 session not closed*", "*isolated> still open*", "*test_leaks*"])


def test_option_and_ini_key_are_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--bitnet-isolation=MODE*", "  bitnet_isolation (*"])
