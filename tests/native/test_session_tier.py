"""A library's own Socket 4 (issue 20, item 17; native/bridge/session_tier.c).

Before, a library's bitnet_cpp_session_* symbols were resolved and never
called, a library with Socket 4 and no Socket 1 was refused, and
diagnostics said "found -> library" for them.  Now: a library with Socket 1
is served through Sockets 1-3 (its Socket 4 "not used"), one with the whole
of Socket 4 and no Socket 1 through its session API.  The proof that the
library's own session API runs is its own session counter (a library's
counters are summed into bn.live_counters()).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge._native import bundled_library
from pytest_bitnet.bridge.diagnostics import diagnostics

from ..native_builds import build_broken_backend


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def session_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real library exporting Socket 4 and none of Sockets 1, 2, 3, 5 or the context helpers."""
    real = bundled_library()
    if real is None:
        pytest.skip("no bundled library")
    return build_broken_backend(tmp_path_factory.mktemp("session_only"), "SESSION_ONLY", real)


def _live() -> Callable[[], dict[str, int]]:
    return lambda: {k: v for k, v in bn.live_counters().items() if k in ("contexts", "sessions", "bytes")}


def test_a_library_with_socket4_and_no_socket1_is_served_through_it(session_only: Path, tiny_model: Path) -> None:
    live = _live()
    before = live()
    with bn.BitnetSession.create(tiny_model) as ref:
        want_toks = ref.tokenize("hello world")
        want = ref.evaluate(want_toks)
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=session_only) as s:
        assert live()["sessions"] == before["sessions"] + 1  # the library's own bitnet_cpp_session_create ran
        toks = s.tokenize("hello world")
        np.testing.assert_array_equal(toks, want_toks)
        np.testing.assert_array_equal(s.evaluate(toks), want)
        # served by the library itself, not by the fallback tier
        assert s.backend_info["tokenize"] == s.backend_info["evaluate"] == f"dlopen:{session_only}"
        assert s.n_vocab is None and s.n_ctx is None  # no bitnet_cpp_get_model_info to ask
        with pytest.raises(errors.Unsupported, match=r"seq_id 1: .* session API \(Socket 4, bitnet_cpp_session_eval\), which has one sequence"):
            s.evaluate(toks, seq_id=1)
        with pytest.raises(errors.Unsupported, match="does not export bitnet_cpp_get_n_past"):
            s.n_past()
        np.testing.assert_array_equal(s.tokenize("hello world"), want_toks)  # still usable
    assert live() == before


def test_diagnostics_say_which_socket_serves(session_only: Path) -> None:
    report = diagnostics(backend="dlopen", library_path=str(session_only))
    assert report["ok"], report
    sym = {s["name"]: s for s in report["symbols"]}
    assert sym["bitnet_cpp_init_context"]["status"] == "missing"
    assert sym["bitnet_cpp_init_context"]["served_by"] == "library (Socket 4: bitnet_cpp_session_create)"
    assert sym["bitnet_cpp_eval_with_context"]["served_by"].startswith("library (Socket 4: bitnet_cpp_session_eval")
    assert sym["bitnet_cpp_session_create"] == {"name": "bitnet_cpp_session_create", "required": False, "status": "found", "served_by": "library"}
    # a library with Socket 1: its Socket 4 is found and, truthfully, not called
    bundled = bundled_library()
    assert bundled is not None
    sym = {s["name"]: s for s in diagnostics(backend="dlopen", library_path=str(bundled))["symbols"]}
    for name in ("bitnet_cpp_session_create", "bitnet_cpp_session_free", "bitnet_cpp_session_tokenize", "bitnet_cpp_session_eval"):
        assert sym[name]["status"] == "found" and sym[name]["served_by"] == "not used (Socket 1 serves contexts)"


def test_socket1_removed_by_a_fault_falls_to_socket4(tiny_model: Path) -> None:
    live = _live()
    before = live()
    with fi.inject("dlsym.bitnet_cpp_init_context=missing"):
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            assert live()["sessions"] == before["sessions"] + 1
            toks = s.tokenize("hi")
            assert s.evaluate(toks).shape[0] == toks.size
    assert live() == before


def test_an_incomplete_socket4_does_not_stand_in_for_socket1(session_only: Path, tiny_model: Path) -> None:
    with fi.inject("dlsym.bitnet_cpp_session_eval=missing"):
        with pytest.raises(errors.SymbolNotFound, match=r"required symbol 'bitnet_cpp_init_context' not found .*nor the whole of Socket 4"):
            bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=session_only)


def test_out_of_memory_for_the_session_tier_fails_create_cleanly(tiny_model: Path) -> None:
    # every allocation of a create served through Socket 4, in turn, until
    # the one of the shim itself (the bridge's, not the library's) fails
    live = _live()
    before = live()
    seen = False
    for k in range(200):
        spec = f"dlsym.bitnet_cpp_init_context=missing;alloc={k}*off->1*oom->off" if k else "dlsym.bitnet_cpp_init_context=missing;alloc=1*oom->off"
        with fi.inject(spec) as armed:
            try:
                with bn.BitnetSession.create(tiny_model, backend="dlopen"):
                    pass
            except errors.OutOfMemory as exc:
                seen = seen or "out of memory for a session tier" in str(exc)
            else:
                assert armed.fired("alloc") == 0
                break
        assert live() == before
        if seen:
            break
    assert seen


@pytest.fixture(scope="module")
def null_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    real = bundled_library()
    if real is None:
        pytest.skip("no bundled library")
    return build_broken_backend(tmp_path_factory.mktemp("null_session"), "NULL_SESSION", real)


def test_a_session_create_that_succeeds_without_a_session_is_an_internal_error(null_session: Path, tiny_model: Path) -> None:
    live = _live()
    before = live()
    with pytest.raises(errors.InternalError, match=r"bitnet_cpp_session_create succeeded but returned no session; report it") as info:
        bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=null_session)
    assert f"dlopen:{null_session}" in str(info.value)
    assert live() == before
