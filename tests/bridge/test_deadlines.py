"""Whether a session's library honours deadlines in process (pytest_bitnet.bridge.deadlines).

The native loader decides it when it attaches a library (bitnet_host_attach);
backend_info["deadlines"], diagnostics and the listeners show its answer.
The libraries are real: the embedded engine, the bundled standalone library
(attached), the llama.cpp adapter (attached), a build without
bitnet_host_attach (like BitNet.cpp's own), and a build against another
host table ABI (it refuses the bridge's).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import deadlines
from pytest_bitnet.bridge.abi import bundled_library
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
from pytest_bitnet.bridge.llama import configured

from ..native_builds import build_library

# These tests make unbounded sessions on purpose: the plugin's one-time
# warning of them (tests/plugin/test_deadlines.py) is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest_bitnet.plugin.BitnetUnboundedCallsWarning")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def hookless(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(tmp_path_factory.mktemp("no_host_hook"), host_hook=False)


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(tmp_path_factory.mktemp("host_abi2"), defines=["BITNET_HOST_ABI=2"])


@pytest.fixture
def heard() -> Iterator[list[tuple[str, str]]]:
    got: list[tuple[str, str]] = []
    stop = deadlines.on_unbounded(lambda library, reason: got.append((library, reason)))
    yield got
    stop()


def _live() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


def test_the_embedded_engine_honours_them(tiny_model: Path, heard: list[tuple[str, str]]) -> None:
    with bn.BitnetSession.create(tiny_model, backend="reference") as s:
        assert s.backend_info["deadlines"] == deadlines.HONOURED == "honoured"
    assert bn.diagnostics(backend="reference")["deadlines"] == "honoured"
    assert heard == []


@pytest.mark.skipif(bundled_library() is None, reason="the standalone library is not built")
def test_a_library_that_took_the_host_table_honours_them(tiny_model: Path, heard: list[tuple[str, str]]) -> None:
    with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
        assert "_libbitnet" in s.backend_info["create"]
        assert s.backend_info["deadlines"] == "honoured"
        with pytest.raises(errors.OperationTimeout):  # and it does: its own step points see the deadline
            s.tokenize("word " * 5000, timeout=0)
    assert bn.diagnostics(backend="dlopen")["deadlines"] == "honoured"
    assert heard == []


@pytest.mark.skipif(not configured().available, reason="llama.cpp backend unavailable")
def test_the_llama_adapter_honours_them(tiny_model: Path, heard: list[tuple[str, str]]) -> None:
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        assert s.backend_info["deadlines"] == "honoured"
    assert bn.diagnostics(backend="llama")["deadlines"] == "honoured"
    assert heard == []


def test_a_library_without_the_hook_does_not(tiny_model: Path, hookless: Path, heard: list[tuple[str, str]]) -> None:
    base = _live()
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=hookless) as s:
        said = s.backend_info["deadlines"]
        assert said.startswith("not honoured in process: "), said
        assert f"{hookless} does not export bitnet_host_attach" in said
        assert "deadline and cancellation never reach inside its calls" in said
        # the fact is true: a call the embedded engine stops at once runs to its end here
        assert len(s.tokenize("word " * 5000, timeout=0)) > 5000
        assert heard == [(s.backend_info["create"], said[len(deadlines.NOT_HONOURED):])]
    assert _live() == base
    report = bn.diagnostics(backend="dlopen", library_path=str(hookless))
    assert report["deadlines"] == said


def test_diagnostics_text_shows_it(hookless: Path) -> None:
    from pytest_bitnet.bridge.diagnostics import diagnostics, format_text

    text = format_text(diagnostics(backend="dlopen", library_path=str(hookless)))
    assert f"deadlines       not honoured in process: {hookless} does not export bitnet_host_attach" in text
    assert "deadlines       honoured" in format_text(diagnostics(backend="reference"))
    # nothing loaded: nothing to say but that
    missing = format_text(diagnostics(backend="dlopen", library_path="/nonexistent/libbitnet.so"))
    assert "deadlines       unknown (no library loaded)" in missing


def test_a_library_that_refuses_the_host_table_does_not(tiny_model: Path, refusing: Path,
                                                        heard: list[tuple[str, str]]) -> None:
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=refusing) as s:
        said = s.backend_info["deadlines"]
        assert said.startswith(f"not honoured in process: {refusing} refused the host table"), said
        assert "BITNET_E_ABI_MISMATCH" in said and "host table ABI 1" in said  # the library's own reason
        assert len(s.tokenize("word " * 5000, timeout=0)) > 5000
    assert [lib for lib, _ in heard] == [s.backend_info["create"]]


def test_every_create_is_told_and_unsubscribing_stops_it(tiny_model: Path, hookless: Path) -> None:
    got: list[str] = []
    stop = deadlines.on_unbounded(lambda library, reason: got.append(library))
    try:
        for _ in range(2):  # once per library is the listener's business (the plugin's warning)
            bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=hookless).close()
    finally:
        stop()
    bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=hookless).close()
    assert len(got) == 2


def test_a_failing_listener_is_logged_and_create_still_returns(tiny_model: Path, hookless: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    def broken(library: str, reason: str) -> None:
        raise RuntimeError("listener bug")

    base = _live()
    stop = deadlines.on_unbounded(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="pytest_bitnet"):
            with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=hookless) as s:
                assert s.backend_info["deadlines"].startswith("not honoured")
    finally:
        stop()
    assert any("deadlines listener" in r.getMessage() and r.exc_info for r in caplog.records)
    assert _live() == base


def test_a_stale_handle_has_no_answer(tiny_model: Path) -> None:
    s = bn.BitnetSession.create(tiny_model)
    handle = s.handle
    assert deadlines.of_context(handle) == ""
    s.close()
    assert deadlines.of_context(handle) is None
