"""--bitnet-interpose: the option, its ini key and environment variable, enabling
before conftest.py files, the usage errors, the header, xdist, leaving no trace.

The plugin's glue is tested against a stand-in for fault_inject.interpose
(STUB below, loaded with ``-p`` so it is in sys.modules before the plugin's
early hook looks for it): what the plugin must do -- when it enables, what
it refuses, what it reports -- does not depend on building a real
interposer.  The tests at the end run the real one on llama-cpp-python.
"""

from __future__ import annotations

import importlib.util

import pytest

# A stand-in for fault_inject.interpose with the contract's names.  It notes
# whether llama_cpp was imported when enable() ran, so a test can tell the
# plugin enabled before the conftest.py files.
STUB = """
import dataclasses, os, sys, types
from pathlib import Path

KINDS = ("llama",)

class InterposeError(Exception):
    pass

@dataclasses.dataclass
class Interposed:
    kind: str
    directory: Path
    library: Path
    real_library: Path

_active = None

def enable(kind="llama"):
    global _active
    if os.environ.get("STUB_REFUSE"):
        raise InterposeError("llama-cpp-python is not installed: pip install 'pytest-bitnet[llama]'")
    if _active is None:
        directory = Path(os.environ["STUB_DIR"])
        real = os.environ.get("STUB_REAL", "/real/libllama.so")
        if os.environ.get("STUB_WORKER_REAL") and os.environ.get("PYTEST_XDIST_WORKER"):
            real = os.environ["STUB_WORKER_REAL"]
        os.environ["LLAMA_CPP_LIB_PATH"] = str(directory)
        _active = Interposed(kind, directory, directory / "libllama.so", Path(real))
        # a file, not stderr: pytest captures output from before the conftests on
        with open(os.environ["STUB_LOG"], "a") as log:
            log.write(f"enabled llama_cpp_imported={'llama_cpp' in sys.modules}\\n")
    return _active

def active():
    return _active

def set_timeout(seconds):
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(f"timeout {seconds}\\n")

module = types.ModuleType("fault_inject.interpose")
module.__dict__.update(KINDS=KINDS, InterposeError=InterposeError, Interposed=Interposed, enable=enable, active=active,
                       set_timeout=set_timeout)
sys.modules["fault_inject.interpose"] = module
"""

# A stand-in for llama-cpp-python: records the LLAMA_CPP_LIB_PATH it "loaded" from.
FAKE_LLAMA_CPP = {
    "llama_cpp/__init__.py": "from .llama_cpp import LOADED_FROM\n",
    "llama_cpp/llama_cpp.py": (
        "import os\n"
        "LOADED_FROM = os.environ.get('LLAMA_CPP_LIB_PATH')\n"
        "class _Lib:\n"
        "    _name = os.path.join(LOADED_FROM or '/site-packages/llama_cpp/lib', 'libllama.so')\n"
        "_lib = _Lib()\n"
    ),
}

CHECK_LOADED = """
import os
import llama_cpp

def test_loaded_from_the_copy():
    assert llama_cpp.LOADED_FROM == os.environ["STUB_DIR"]
"""


@pytest.fixture
def stub(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(stubinterpose=STUB)
    for name, text in FAKE_LLAMA_CPP.items():
        path = pytester.path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    copy = pytester.mkdir("copy")
    monkeypatch.setenv("STUB_DIR", str(copy))
    monkeypatch.setenv("STUB_LOG", str(pytester.path / "enabled.log"))
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    monkeypatch.delenv("BITNET_INTERPOSE", raising=False)
    return pytester


def _log(pytester: pytest.Pytester) -> list[str]:
    """What the stub noted (enable(), set_timeout()), then forgets it."""
    log = pytester.path / "enabled.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def _enabled(pytester: pytest.Pytester) -> list[str]:
    """What the stub's enable() noted, one line per process that enabled."""
    return [line for line in _log(pytester) if line.startswith("enabled")]


def test_option_and_ini_key_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--bitnet-interpose=KIND*", "  bitnet_interpose (*"])


def test_enabled_before_the_conftest_imports_llama_cpp(stub: pytest.Pytester) -> None:
    # the rootdir's conftest.py imports llama_cpp: it must load the copy
    stub.makeconftest("import llama_cpp\n")
    stub.makepyfile(CHECK_LOADED)
    result = stub.runpytest_subprocess("-p", "stubinterpose", "--bitnet-interpose=llama")
    result.assert_outcomes(passed=1)
    assert _enabled(stub) == ["enabled llama_cpp_imported=False"]
    copy = stub.path / "copy"
    result.stdout.fnmatch_lines(
        [f"bitnet: interpose=llama (--bitnet-interpose): the real /real/libllama.so is interposed by {copy / 'libllama.so'} "
         f"(LLAMA_CPP_LIB_PATH={copy}); points llama_*"]
    )


def test_env_and_ini_key_and_none(stub: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    stub.makepyfile(CHECK_LOADED)
    monkeypatch.setenv("BITNET_INTERPOSE", "llama")
    result = stub.runpytest_subprocess("-p", "stubinterpose")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["bitnet: interpose=llama (BITNET_INTERPOSE): *"])
    assert _enabled(stub) == ["enabled llama_cpp_imported=False"]
    # the command line's none cancels the environment's llama: nothing enabled
    result = stub.runpytest_subprocess("-p", "stubinterpose", "--bitnet-interpose=none")
    result.assert_outcomes(failed=1)
    assert _enabled(stub) == []
    assert "interpose=" not in result.stdout.str()
    monkeypatch.delenv("BITNET_INTERPOSE")
    stub.makeini("[pytest]\nbitnet_interpose = llama\n")
    result = stub.runpytest_subprocess("-p", "stubinterpose")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["bitnet: interpose=llama (ini key bitnet_interpose in *tox.ini): *"])


@pytest.mark.parametrize("where", ["cli", "env", "ini"])
def test_bad_kind_is_a_usage_error_naming_its_source(stub: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    stub.makepyfile("def test_x(): pass")
    args = ["-p", "stubinterpose"]
    if where == "cli":
        args.append("--bitnet-interpose=ctypes")
        source = "--bitnet-interpose"
    elif where == "env":
        monkeypatch.setenv("BITNET_INTERPOSE", "ctypes")
        source = "BITNET_INTERPOSE"
    else:
        stub.makeini("[pytest]\nbitnet_interpose = ctypes\n")
        source = "ini key bitnet_interpose in *tox.ini"
    result = stub.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*bitnet: invalid interpose kind 'ctypes' from {source}: expected llama, or none*"])
    assert _enabled(stub) == []


def test_llama_cpp_imported_by_an_earlier_plugin_is_a_usage_error(stub: pytest.Pytester) -> None:
    # a -p plugin runs before any hook: too early for the plugin to interpose
    stub.makepyfile(earlyplugin="import llama_cpp\n", test_x="def test_x(): pass")
    result = stub.runpytest_subprocess("-p", "stubinterpose", "-p", "earlyplugin", "--bitnet-interpose=llama")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*bitnet: --bitnet-interpose=llama (from --bitnet-interpose) cannot interpose: llama_cpp was imported before "
            "the bitnet plugin could point it at the interposing libllama (it loaded /site-packages/llama_cpp/lib/libllama.so);*"
            "Fix: do not import llama_cpp in a plugin loaded with -p or PYTEST_PLUGINS*conftest.py files or tests*"
        ]
    )
    assert _enabled(stub) == []


def test_enable_refusing_is_a_usage_error(stub: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    stub.makepyfile("def test_x(): pass")
    monkeypatch.setenv("STUB_REFUSE", "1")
    result = stub.runpytest_subprocess("-p", "stubinterpose", "--bitnet-interpose=llama")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*bitnet: --bitnet-interpose=llama (from --bitnet-interpose): llama-cpp-python is not installed: pip install*"]
    )
    assert "Traceback" not in result.stderr.str()


def test_interposed_calls_get_the_bridge_calls_deadline(stub: pytest.Pytester) -> None:
    # delay/hang in an interposed function wait for the interposer's own
    # deadline: it was never set, so --bitnet-timeout and the
    # bitnet_timeout marker did not reach interposed calls
    stub.makepyfile(
        """
        import pytest
        def test_run_default():
            pass
        @pytest.mark.bitnet_timeout(0.5)
        def test_marked():
            pass
        @pytest.mark.bitnet_timeout(None)
        def test_none():
            pass
        """
    )
    result = stub.runpytest_subprocess("-p", "stubinterpose", "--bitnet-interpose=llama", "--bitnet-timeout=2")
    result.assert_outcomes(passed=3)
    # the run's, each marker's and back, the run's end restoring the bridge's default (30 s)
    assert _log(stub) == ["enabled llama_cpp_imported=False", "timeout 2.0", "timeout 0.5", "timeout 2.0", "timeout None",
                          "timeout 2.0", "timeout 30.0"]


def test_help_works_whatever_the_interposition_would_say(stub: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_REFUSE", "1")
    result = stub.runpytest_subprocess("-p", "stubinterpose", "--bitnet-interpose=llama", "--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*--bitnet-interpose=KIND*"])


def test_xdist_workers_enable_before_their_conftests(stub: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    stub.makeconftest("import llama_cpp\n")
    stub.makepyfile(CHECK_LOADED + "\ndef test_again():\n    test_loaded_from_the_copy()\n")
    result = stub.runpytest_subprocess("-p", "stubinterpose", "--bitnet-interpose=llama", "-n", "2")
    result.assert_outcomes(passed=2)
    # the controller and both workers, each before its conftest
    assert _enabled(stub) == ["enabled llama_cpp_imported=False"] * 3


def test_xdist_worker_interposing_another_library_stops(stub: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    stub.makepyfile("def test_x(): pass")
    monkeypatch.setenv("STUB_WORKER_REAL", "/elsewhere/libllama.so")
    # set by xdist in its workers before they configure: the stub's sign that it runs on one
    # (not inherited from an outer -n run, or the inner controller would take itself for one)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    result = stub.runpytest_subprocess("-p", "stubinterpose", "--bitnet-interpose=llama", "-n", "1")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["*this xdist worker would interpose on /elsewhere/libllama.so but the controller interposes on /real/libllama.so*"]
    )


NO_TRACE = """
import sys

def test_no_trace():
    assert "fault_inject.interpose" not in sys.modules
    assert not [m for m in sys.modules if m == "llama_cpp" or m.startswith("llama_cpp.")]
"""


@pytest.mark.parametrize(
    ("args", "env"),
    [([], None), (["--bitnet-interpose=none"], "llama"), (["-p", "no:bitnet"], None), (["-p", "no:bitnet"], "llama")],
    ids=["off", "none", "no-plugin", "no-plugin-env"],
)
def test_nothing_loaded_without_the_option(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                           env: str | None) -> None:
    if env is None:
        monkeypatch.delenv("BITNET_INTERPOSE", raising=False)
    else:
        monkeypatch.setenv("BITNET_INTERPOSE", env)
    pytester.makepyfile(NO_TRACE)
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)


# ---- the real interposer on llama-cpp-python ---------------------------------------------------

def _has(module: str) -> bool:
    # a module, not a namespace package (fault_inject/interpose/ held build.py before its __init__.py); not imported
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin is not None


real = pytest.mark.skipif(
    not (_has("fault_inject.interpose") and _has("llama_cpp")),
    reason="needs fault_inject.interpose (issue 14, ireg/ilib) and llama-cpp-python (the llama extra)",
)


# A counter source as fault_inject.interpose registers one (the bridge's
# counters.add_source; before it existed, the same through live_counters).
SOURCE_CONFTEST = """
import llamaobjs
import pytest_bitnet.bridge._native  # loaded, as an attaching interposer loads it
from pytest_bitnet.bridge import counters

def _read():
    return {"llama_models": len(llamaobjs.OPEN)}

if hasattr(counters, "add_source"):
    counters.add_source(("llama_models",), _read)
else:
    _bridge = counters.live_counters
    counters.live_counters = lambda: {**_bridge(), **_read()}
"""


def test_leak_check_covers_the_counters_of_a_source(pytester: pytest.Pytester) -> None:
    # the leak check read only the bridge's own counters: a llama object
    # made through the interposer and never freed passed
    pytester.makeconftest(SOURCE_CONFTEST)
    pytester.makepyfile(llamaobjs="OPEN = []")
    pytester.makepyfile(
        test_source="""
        import llamaobjs
        def test_parks_a_model():
            llamaobjs.OPEN.append(object())
        def test_frees_its_model():
            llamaobjs.OPEN.append(object())
            llamaobjs.OPEN.pop()
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "bitnet: native objects leaked by test_source.py::test_parks_a_model: llama_models +1 *",
            "  llama_models +1: objects made through an interposed native library (fault_inject.interpose) during the test*",
        ]
    )
    assert "inside the native bridge" not in result.stdout.str()
    assert "pytest_bitnet_counters" not in result.stdout.str()

REAL_APP = """
import os
import llama_cpp
import pytest

KEEP = []

def _llama(path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)

def test_loads_the_copy():
    assert os.path.dirname(llama_cpp.llama_cpp._lib._name) == os.environ["LLAMA_CPP_LIB_PATH"]

@pytest.mark.bitnet_inject("llama_decode=fail")
def test_decode_fails(bitnet_model):
    llm = _llama(bitnet_model)
    try:
        with pytest.raises(RuntimeError, match="llama_decode returned"):
            llm("hello", max_tokens=2)
    finally:
        llm.close()

def test_context_init_fails(bitnet_inject, bitnet_model):
    bitnet_inject("llama_init_from_model=fail")
    with pytest.raises(ValueError, match="Failed to create llama_context"):
        _llama(bitnet_model)

def test_parks_a_llama(bitnet_model):
    KEEP.append(_llama(bitnet_model))
"""


def _check_real_app(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_parks_a_llama*",
            "bitnet: native objects leaked by test_app.py::test_parks_a_llama: *llama_models +1*interposed object*not freed*",
            "*llama model at 0x* still open, created at (most recent call last):",
            "*test_app.py*, line *, in test_parks_a_llama",
            "    KEEP.append(_llama(bitnet_model))",
        ]
    )
    result.stdout.fnmatch_lines(["fault spec 'llama_decode=fail' (seed *) armed in 1 test(s):", "  llama_decode: * hits, * fired"])


@real
def test_real_interposer_on_llama_cpp_python(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    monkeypatch.delenv("BITNET_INTERPOSE_USER_LIB_PATH", raising=False)
    pytester.makeconftest("import llama_cpp  # before any test: loads the copy the plugin put in place\n")
    pytester.makepyfile(test_app=REAL_APP)
    result = pytester.runpytest_subprocess("--bitnet-interpose=llama")
    result.stdout.fnmatch_lines(["bitnet: interpose=llama (--bitnet-interpose): the real */libllama.so is interposed by */libllama.so *"])
    _check_real_app(result)
    # under xdist: each worker enables before its conftest imports llama_cpp
    _check_real_app(pytester.runpytest_subprocess("--bitnet-interpose=llama", "-n", "2"))


@real
def test_real_unknown_llama_point_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--bitnet-interpose=llama", "--bitnet-inject=llama_decod=fail")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*llama_decod*llama_decode*"])
    # without interposition the llama points do not exist
    result = pytester.runpytest_subprocess("--bitnet-inject=llama_decode=fail")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_llama_point_without_interposition_says_how_to_get_it(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_bitnet.plugin.settings import INTERPOSED_POINTS_HINT

    monkeypatch.delenv("BITNET_INTERPOSE", raising=False)
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.bitnet_inject("llama_decode=fail")
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--bitnet-inject=llama_tokenize=fail")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown fault point 'llama_tokenize'*", "    llama_tokenize=fail", INTERPOSED_POINTS_HINT])
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)  # the marker's spec is refused at setup
    result.stdout.fnmatch_lines(["*unknown fault point 'llama_decode'*", f"*{INTERPOSED_POINTS_HINT}"])


def test_reproduce_commands_keep_the_interposition(stub: pytest.Pytester) -> None:
    # a rerun without --bitnet-interpose cannot arm llama_* points: the
    # failure's, the crash's and the header's reproduce commands left it out
    stub.makepyfile(
        """
        import os, pytest
        @pytest.mark.bitnet_inject("tokenize.fill=fail")
        def test_fails():
            assert False
        @pytest.mark.bitnet_inject("tokenize.fill=fail")
        def test_crashes():
            os.abort()
        """
    )
    result = stub.runpytest_subprocess("-p", "stubinterpose", "--bitnet-interpose=llama", "--bitnet-inject=eval.fill=fail",
                                       "--bitnet-seed=7", "-n", "1")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["bitnet: inject='eval.fill=fail' (--bitnet-inject), seed=7 (--bitnet-seed); "
                                 "reproduce with --bitnet-inject='eval.fill=fail' --bitnet-seed=7 --bitnet-interpose=llama *"])
    result.stdout.fnmatch_lines(["reproduce this test with the same draws: pytest test_reproduce_commands_keep_the_interposition.py::test_fails "
                                 "--bitnet-seed=7 --bitnet-inject=eval.fill=fail --bitnet-interpose=llama"])
    result.stdout.fnmatch_lines(["bitnet: reproduce: pytest '*::test_crashes' --bitnet-inject='eval.fill=fail' --bitnet-seed=7 "
                                 "--bitnet-interpose=llama"])
