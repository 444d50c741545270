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
