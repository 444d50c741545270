"""Options, ini keys, environment and their precedence, bad values, -p no:bitnet."""

from __future__ import annotations

import pytest

SHOW_ARMED = """
import os
def test_show(bitnet_inject):
    armed = bitnet_inject.armed
    print("ARMED", [(str(a.spec), a.seed) for a in armed])
    from pytest_bitnet.bridge import settings
    print("DEFAULTS", settings.current())
"""


def test_options_and_ini_keys_are_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "native BitNet bridge:*",
            "*--bitnet-inject=SPEC*",
            "*--bitnet-seed=N*",
            "*--bitnet-leak-check=MODE*",
            "*--bitnet-timeout=SECONDS*",
            "*--bitnet-backend=NAME*",
            "*--bitnet-diagnostics*",
        ]
    )
    for key in ("bitnet_inject", "bitnet_seed", "bitnet_leak_check", "bitnet_timeout", "bitnet_backend", "bitnet_diagnostics"):
        result.stdout.fnmatch_lines([f"  {key} (*"])


def test_disabled_with_p_no_bitnet(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest_bitnet as bn
        KEEP = []
        def test_leaks(tmp_path):
            path = bn.models.cached_tiny_model(tmp_path, arch="bitnet", seed=0)
            KEEP.append(bn.BitnetSession.create(path))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:bitnet")
    result.assert_outcomes(passed=1)
    assert "bitnet: backend" not in result.stdout.str()
    result = pytester.runpytest_subprocess("-p", "no:bitnet", "--bitnet-leak-check=warn")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --bitnet-leak-check=warn*"])


def _armed(result: pytest.RunResult) -> str:
    return next(line for line in result.outlines if "ARMED" in line)


def test_inject_precedence_ini_env_cli_marker(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import fault_inject as fi

    def seed(run_seed: int) -> int:  # each test draws from its own seed
        return fi.derive_seed(run_seed, "test_inject_precedence_ini_env_cli_marker.py::test_show")

    pytester.makeini("[pytest]\nbitnet_inject = tokenize.query=fail\nbitnet_seed = 3\n")
    pytester.makepyfile(SHOW_ARMED)
    assert f"('tokenize.query=fail', {seed(3)})" in _armed(pytester.runpytest("-s"))
    monkeypatch.setenv("BITNET_INJECT", "tokenize.fill=fail")
    monkeypatch.setenv("BITNET_INJECT_SEED", "4")
    assert f"('tokenize.fill=fail', {seed(4)})" in _armed(pytester.runpytest("-s"))
    assert f"('eval.query=fail', {seed(5)})" in _armed(pytester.runpytest("-s", "--bitnet-inject=eval.query=fail", "--bitnet-seed=5"))
    pytester.makepyfile(
        "import pytest\n"
        + SHOW_ARMED.replace("def test_show", "@pytest.mark.bitnet_inject('eval.fill=fail', seed=9)\ndef test_show")
    )
    # the marker's own seed; the run-wide spec stays armed for the points the marker does not name
    shown = _armed(pytester.runpytest("-s", "--bitnet-inject=eval.query=fail", "--bitnet-seed=5"))
    assert f"[('eval.query=fail', {seed(5)}), ('eval.fill=fail', 9)]" in shown


def test_seed_is_random_and_printed_when_not_given(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW_ARMED)
    result = pytester.runpytest("-s", "--bitnet-inject=tokenize.fill=fail")
    header = next(line for line in result.outlines if line.startswith("bitnet: inject="))
    seed = header.split("seed=")[1].split(" ")[0]
    import fault_inject as fi

    derived = fi.derive_seed(int(seed), "test_seed_is_random_and_printed_when_not_given.py::test_show")
    assert f"('tokenize.fill=fail', {derived})" in _armed(result)
    assert f"--bitnet-seed={seed}" in header


@pytest.mark.parametrize(
    ("args", "ini", "env", "message"),
    [
        (["--bitnet-inject=tokenize.fill=explode"], "", {}, "*invalid fault spec from --bitnet-inject*"),
        (["--bitnet-inject=no.such.point=fail"], "", {}, "*invalid fault spec from --bitnet-inject*no.such.point*"),
        ([], "bitnet_inject = alloc=", {}, "*invalid fault spec from ini key bitnet_inject*"),
        ([], "", {"BITNET_INJECT": "alloc=%%"}, "*invalid fault spec from BITNET_INJECT*"),
        (["--bitnet-seed=abc"], "", {}, "*invalid seed 'abc' from --bitnet-seed: expected a whole number*"),
        ([], "bitnet_seed = -1", {}, "*invalid seed '-1' from ini key bitnet_seed*"),
        ([], "", {"BITNET_INJECT_SEED": "x"}, "*invalid seed 'x' from BITNET_INJECT_SEED*"),
        (["--bitnet-leak-check=sometimes"], "", {}, "*invalid leak check 'sometimes' from --bitnet-leak-check: expected strict | warn | off*"),
        ([], "bitnet_leak_check = loud", {}, "*invalid leak check 'loud' from ini key bitnet_leak_check*"),
        (["--bitnet-timeout=-2"], "", {}, "*invalid timeout '-2' from --bitnet-timeout: expected seconds >= 0*"),
        ([], "bitnet_timeout = soon", {}, "*invalid timeout 'soon' from ini key bitnet_timeout*"),
        (["--bitnet-backend=cuda"], "", {}, "*invalid backend 'cuda' from --bitnet-backend: expected reference | dlopen | llama | stub*"),
        ([], "bitnet_backend = gpu", {}, "*invalid backend 'gpu' from ini key bitnet_backend*"),
        ([], "", {"BITNET_BACKEND": "gpu"}, "*invalid backend 'gpu' from BITNET_BACKEND*"),
        # a bool ini key is read as text so that its validator can name it (issue 20.14)
        ([], "bitnet_diagnostics = maybe", {}, "*invalid value 'maybe' from ini key bitnet_diagnostics in *: expected one of 1, true, yes, on or 0, false, no, off"),
    ],
)
def test_bad_values_are_usage_errors_naming_their_source(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str], ini: str, env: dict[str, str], message: str
) -> None:
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_leak_check_precedence_ini_then_cli(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbitnet_leak_check = warn\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["bitnet: *leak-check=warn (ini key bitnet_leak_check*"])
    result = pytester.runpytest("--bitnet-leak-check=off")
    result.stdout.fnmatch_lines(["bitnet: *leak-check=off (--bitnet-leak-check)*"])


def test_timeout_option_ini_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbitnet_timeout = 7\n")
    pytester.makepyfile(
        """
        import os, pytest
        from pytest_bitnet.bridge.settings import default_timeout
        def test_run_wide():
            print("RUN", default_timeout())
        @pytest.mark.bitnet_timeout(0.25)
        def test_marker():
            print("MARK", default_timeout())
        def test_restored():
            print("AFTER", default_timeout())
        """
    )
    out = pytester.runpytest("-s").stdout.str()
    assert "RUN 7.0" in out and "MARK 0.25" in out and "AFTER 7.0" in out
    out = pytester.runpytest("-s", "--bitnet-timeout=none").stdout.str()
    assert "RUN inf" in out and "MARK 0.25" in out


def test_timeout_interrupts_a_native_hang(pytester: pytest.Pytester) -> None:
    # A native hang is not interruptible by signals (pytest-timeout's weak
    # spot); the bridge checks the deadline the plugin sets.
    pytester.makepyfile(
        """
        import time, pytest, pytest_bitnet as bn
        @pytest.mark.bitnet_timeout(0.2)
        @pytest.mark.bitnet_inject("eval.step=hang")
        def test_hang(bitnet_session):
            t = time.monotonic()
            with pytest.raises(bn.errors.OperationTimeout):
                bitnet_session.evaluate([1, 2, 3])
            assert time.monotonic() - t < 5
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_backend_option_and_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, pytest, pytest_bitnet as bn
        from pytest_bitnet.bridge import settings
        def test_stub(bitnet_model):
            assert settings.current().backend == "stub"
            assert "BITNET_BACKEND" not in os.environ  # the plugin passes values on, it writes no variable
            with pytest.raises(bn.errors.CppNotAvailable):
                bn.BitnetSession.create(bitnet_model)
        """
    )
    pytester.runpytest("--bitnet-backend=stub").assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nbitnet_backend = stub\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["bitnet: backend=stub (ini key bitnet_backend*"])


def test_diagnostics_option_and_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    pytester.runpytest("--bitnet-diagnostics").stdout.fnmatch_lines(["bitnet diagnostics:*"])
    assert "bitnet diagnostics:" not in pytester.runpytest().stdout.str()
    pytester.makeini("[pytest]\nbitnet_diagnostics = true\n")
    pytester.runpytest().stdout.fnmatch_lines(["bitnet diagnostics:*"])
