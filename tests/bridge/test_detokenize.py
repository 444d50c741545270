"""BitnetSession.detokenize through the bridge (issue 20 item 19): its two
passes and their fault points, the fallback tier for a library without the
socket, the llama.cpp backend, clean errors (counters back to baseline)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.llama import configured

TEXT = "detokenize me, please"


def _counts() -> tuple[int, int, int]:
    c = bn.live_counters()
    return c["contexts"], c["bytes"], c["allocations"]


@pytest.mark.parametrize("spec, phase", [("detokenize.query=fail", "QUERY PHASE"), ("detokenize.fill=fail", "FILL PHASE")])
def test_a_failed_pass_names_its_phase_and_the_session_still_works(tiny_model: Path, spec: str, phase: str) -> None:
    with bn.BitnetSession.create(tiny_model, n_ctx=16) as s:
        ids = s.tokenize(TEXT, add_bos=False)
        want = s.detokenize(ids)
        before = _counts()
        with fi.inject(spec) as armed:
            with pytest.raises(errors.InferenceError) as ei:
                s.detokenize(ids)
        assert phase in str(ei.value) and ei.value.context.operation == "detokenize"
        assert armed.fired(spec.split("=")[0]) == 1
        assert _counts() == before
        assert s.detokenize(ids) == want == TEXT


def test_grow_reports_both_sizes_and_writes_nothing(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, n_ctx=16) as s:
        ids = s.tokenize(TEXT, add_bos=False)
        n = len(s.detokenize_bytes(ids))
        with fi.inject("detokenize.fill=grow(5)"):
            with pytest.raises(errors.InferenceError) as ei:
                s.detokenize(ids)
        msg = str(ei.value)
        assert f"needs {n + 5} bytes but the query pass said {n}" in msg and "nothing was written" in msg
        assert "FILL PHASE" in msg
        assert s.detokenize(ids) == TEXT


def test_a_library_without_the_socket_is_served_by_the_fallback_tier(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITNET_FALLBACK", raising=False)
    with bn.BitnetSession.create(tiny_model, n_ctx=16) as ref:
        ids = ref.tokenize(TEXT)
        want = ref.detokenize(ids, remove_special=True)
    with fi.inject("dlsym.bitnet_cpp_detokenize_with_context=missing"):
        with bn.BitnetSession.create(tiny_model, n_ctx=16, backend="dlopen") as s:
            assert s.tokenize(TEXT).tolist() == ids.tolist()  # tokenize stays native
            assert s.backend_info["tokenize"].startswith("dlopen:")
            with pytest.warns(errors.OptionalSymbolMissing, match="detokenize served by fallback:"):
                got = s.detokenize(ids, remove_special=True)
            assert got == want
            assert s.backend_info["detokenize"].endswith("(bitnet_cpp_detokenize_with_context missing)")


def test_without_a_fallback_tier_detokenize_fails_and_the_rest_works(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the newest socket: an older library stays usable for everything else
    monkeypatch.setenv("BITNET_FALLBACK", "none")
    with fi.inject("dlsym.bitnet_cpp_detokenize_with_context=missing"):
        with bn.BitnetSession.create(tiny_model, n_ctx=16, backend="dlopen") as s:
            ids = s.tokenize(TEXT)
            assert s.evaluate(ids[:2]).shape[0] == 2
            before = _counts()
            with pytest.raises(errors.CppNotAvailable) as ei:
                s.detokenize(ids)
            msg = str(ei.value)
            assert "no tier can serve detokenize" in msg and "bitnet_cpp_detokenize_with_context missing" in msg
            assert "BITNET_FALLBACK" in msg
            assert _counts() == before


def test_the_dlopen_library_serves_it_natively(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, n_ctx=16, backend="dlopen") as s:
        assert s.detokenize(s.tokenize(TEXT, add_bos=False)) == TEXT
        assert s.backend_info["detokenize"].startswith("dlopen:")


def test_the_stub_backend_refuses_cleanly(tiny_model: Path) -> None:
    with pytest.raises(errors.CppNotAvailable):
        bn.detokenize(tiny_model, [5, 6], backend="stub")


def test_diagnostics_lists_the_symbol(tiny_model: Path) -> None:
    report = bn.diagnostics(backend="dlopen")
    sym = [s for s in report["symbols"] if s["name"] == "bitnet_cpp_detokenize_with_context"]
    assert sym and not sym[0]["required"] and sym[0]["status"] == "found"


LLAMA = configured()


@pytest.mark.skipif(not LLAMA.available, reason=f"llama.cpp backend unavailable: {LLAMA.reason}")
def test_llama_backend_equals_the_reference(tiny_model: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with bn.BitnetSession.create(tiny_model, n_ctx=16) as ref, \
                bn.BitnetSession.create(tiny_model, n_ctx=16, backend="llama") as s:
            for text in (TEXT, "🤖 bytes", "<|user|>hi"):
                ids = ref.tokenize(text, parse_special=True)
                for flags in ((False, False), (True, False), (False, True), (True, True)):
                    assert s.detokenize_bytes(ids, *flags) == ref.detokenize_bytes(ids, *flags), (text, flags)
            assert s.backend_info["detokenize"].startswith("llama.cpp:")
            with pytest.raises(errors.InferenceError, match="invalid token id 512 at position 1"):
                s.detokenize([5, 512])
            assert bn.detokenize(tiny_model, ids, backend="llama") == ref.detokenize(ids)
