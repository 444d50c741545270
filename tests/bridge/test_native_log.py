"""Native log lines: the format, the native level filter, delivery into logging."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator

import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import native_log

LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[(ERROR|WARN|INFO|DEBUG|TRACE)\] \[([\w.-]+)\] (.+)$")


@pytest.fixture
def native_level() -> Iterator[None]:
    saved = native_log.native_level()
    yield
    native_log.set_native_level(saved)


def forced_fallback_session(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        with bn.BitnetSession.create(model, backend="dlopen") as s:
            s.tokenize("x")


def test_e52_lines_reach_logging_in_the_documented_format(
    tiny_model: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, native_level: None
) -> None:
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet.native")
    native_log.set_native_level("info")
    forced_fallback_session(tiny_model, monkeypatch)
    records = [r for r in caplog.records if r.name == "pytest_bitnet.native"]
    assert records
    for r in records:
        m = LINE.match(r.getMessage())
        assert m, r.getMessage()
        assert r.bitnet_component == m.group(2)  # type: ignore[attr-defined]
        assert r.levelno == {"ERROR": 40, "WARN": 30, "INFO": 20, "DEBUG": 10}[m.group(1)]
    assert any(r.levelno == logging.WARNING and "[fallback]" in r.getMessage() for r in records)


def test_native_level_filters_before_python(
    tiny_model: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, native_level: None
) -> None:
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet.native")
    native_log.set_native_level("error")
    forced_fallback_session(tiny_model, monkeypatch)
    assert not [r for r in caplog.records if r.name == "pytest_bitnet.native"]
    with pytest.raises(ValueError, match="unknown native log level 'loud'"):
        native_log.set_native_level("loud")


def test_environment_sets_the_native_level() -> None:
    code = "from pytest_bitnet.bridge import native_log; print(native_log.native_level())"
    for value, expected in (("debug", "debug"), ("ERROR", "error"), ("nonsense", "warn")):
        env = {**os.environ, "BITNET_CPP_LOG_LEVEL": value}  # keeps LD_PRELOAD under the sanitizer pass
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.stdout.strip() == expected, (value, out.stderr)


# ---- issue 20 item 20: tags, a bad level, who shows native warnings -------------------------


def _error_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    out = []
    for r in caplog.records:
        m = re.match(LINE.pattern, r.getMessage(), re.S)  # a message may span lines
        if r.name == "pytest_bitnet.native" and m and m.group(1) == "ERROR":
            out.append((m.group(2), m.group(3)))
    return out


def test_error_lines_name_the_operation_that_failed(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, native_level: None
) -> None:
    # Every error used to be tagged [bridge], the layer that logged it.
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet.native")
    native_log.set_native_level("warn")
    with pytest.raises(errors.ModelLoadError):
        bn.BitnetSession.create(tmp_path / "absent.gguf")
    with bn.BitnetSession.create(tiny_model, n_ctx=8) as s:
        with pytest.raises(errors.InferenceError):
            s.evaluate([1, 99999])
        with pytest.raises(errors.InferenceError):
            s.detokenize([99999])
    with pytest.raises(errors.LibraryNotFound):
        bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=tmp_path / "nope.so")
    with pytest.raises(errors.InferenceError):
        bn.evaluate(tiny_model, [99999])
    tags = [tag for tag, _ in _error_lines(caplog)]
    assert tags == ["create", "evaluate", "detokenize", "loader", "evaluate"], _error_lines(caplog)


def test_an_invalid_level_is_reported_naming_the_valid_ones() -> None:
    # Was ignored silently (the level quietly stayed warn).  Python: a warning
    # (the user must fix their configuration); the level is warn.
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from pytest_bitnet.bridge import native_log, session\n"
            "print(native_log.native_level())")
    env = {**os.environ, "BITNET_CPP_LOG_LEVEL": "verbose"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "warn"
    assert "LogLevelWarning: BITNET_CPP_LOG_LEVEL='verbose' is not a log level" in out.stderr
    assert "error, warn, info, debug, trace" in out.stderr
    assert out.stderr.count("BITNET_CPP_LOG_LEVEL='verbose'") == 1  # once, not also as a log line
    good = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "BITNET_CPP_LOG_LEVEL": "info"})
    assert "BITNET_CPP_LOG_LEVEL" not in good.stderr


def test_an_invalid_level_reaches_a_c_host_at_first_use(tmp_path: Path) -> None:
    # No binding to take the report: the first line the bridge logs carries it.
    code = ("import ctypes, sys\n"
            "from pytest_bitnet.bridge import _native\n"  # loads the bridge without the session's sink
            "lib = _native.lib\n"
            "print(lib.bitnet_bridge_get_log_level())\n"
            "ctx = _native.ffi.new('bitnet_context_t **')\n"
            "lib.bitnet_cpp_init_context(ctx, b'/nonexistent.gguf', 8, 0, _native.ffi.NULL, 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "BITNET_CPP_LOG_LEVEL": "chatty"})
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert LINE.match(lines[0]) and "[WARN] [log] BITNET_CPP_LOG_LEVEL='chatty' is not a log level" in lines[0], lines
    assert any("[ERROR] [create]" in line for line in lines[1:]), lines


def _script(tmp_path: Path) -> Path:
    # a script whose session needs the fallback tier: one native WARN line
    model = bn.models.cached_tiny_model(tmp_path)
    script = tmp_path / "app.py"
    script.write_text(
        "import os, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "os.environ['BITNET_FORCE_LLAMA_FALLBACK'] = '1'\n"
        "import pytest_bitnet as bn\n"
        f"with bn.BitnetSession.create({str(model)!r}, backend='dlopen') as s:\n"
        "    s.tokenize('x')\n"
        "if len(sys.argv) > 1:\n"
        "    import logging; logging.basicConfig()\n"
        f"    with bn.BitnetSession.create({str(model)!r}, backend='dlopen') as s:\n"
        "        s.tokenize('x')\n"
    )
    return script


def test_a_plain_script_sees_native_warnings_once_it_configures_logging(tmp_path: Path) -> None:
    script = _script(tmp_path)
    quiet = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "[WARN] [fallback]" not in quiet.stderr  # a library adds only a NullHandler
    configured = subprocess.run([sys.executable, str(script), "configure"], capture_output=True, text=True)
    assert "[WARN] [fallback]" in configured.stderr, configured.stderr


def test_the_command_line_tools_show_native_warnings(tmp_path: Path) -> None:
    script = _script(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ran = subprocess.run([sys.executable, "-m", "fault_inject", "run", "--spec", "eval_gpu=off", str(script)],
                         capture_output=True, text=True, env=env)
    assert "[WARN] [fallback]" in ran.stderr, ran.stderr
    demo = subprocess.run([sys.executable, "-m", "pytest_bitnet", "demo"], capture_output=True, text=True,
                          env={**env, "BITNET_FORCE_LLAMA_FALLBACK": "1"})
    assert demo.returncode == 0, demo.stderr
    assert "[WARN] [fallback]" in demo.stderr, demo.stderr
