"""llama.cpp as a backend (issue 7): the real libllama of llama-cpp-python,
behind the adapter the package builds; no mocks.

Skipped, with the install command, when llama-cpp-python is absent.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import native_log
from pytest_bitnet.bridge.llama import configured

LLAMA = configured()
from pytest_bitnet.testing.crossval import DEFAULT_PROMPTS, TOLERANCE

pytestmark = pytest.mark.skipif(not LLAMA.available, reason=f"llama.cpp backend unavailable: {LLAMA.reason}")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK", "BITNET_LLAMA_KV"):
        monkeypatch.delenv(var, raising=False)


def reference(model: Path, text: str = "What is 2+2?") -> tuple[np.ndarray, np.ndarray]:
    with bn.BitnetSession.create(model, backend="reference") as s:
        toks = s.tokenize(text)
        return toks, s.evaluate(toks)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter importing this worktree's package."""
    root = Path(__file__).resolve().parents[2]
    full_env = {**os.environ, "PYTHONPATH": str(root), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, cwd=root, timeout=120)


# ---- sessions ----------------------------------------------------------------


def test_session_logits_match_reference(tiny_model: Path) -> None:
    toks, expected = reference(tiny_model)
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        assert s.backend_info["create"] == f"llama.cpp:{LLAMA.libllama}"
        assert (s.n_vocab, s.n_ctx) == (512, 512)
        np.testing.assert_array_equal(s.tokenize("What is 2+2?"), toks)
        got = s.evaluate(toks)
        assert max_diff(got, expected) <= TOLERANCE
        assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
        assert s.n_past() == toks.size


def test_backend_from_environment(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_BACKEND", "llama")
    with bn.BitnetSession.create(tiny_model) as s:
        assert s.backend_info["create"].startswith("llama.cpp:")


def test_tokens_identical_over_the_corpus(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, backend="reference") as ref, bn.BitnetSession.create(tiny_model, backend="llama") as ll:
        for text in DEFAULT_PROMPTS:
            for add_bos in (True, False):
                for special in (True, False):
                    ours = ref.tokenize(text, add_bos=add_bos, parse_special=special)
                    theirs = ll.tokenize(text, add_bos=add_bos, parse_special=special)
                    assert ours.tolist() == theirs.tolist(), (text, add_bos, special)


def test_incremental_evaluation_and_sequences(tiny_model: Path) -> None:
    toks, expected = reference(tiny_model, "one two three four five")
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        head = s.evaluate(toks[:3], seq_id=2)
        tail = s.evaluate(toks[3:], seq_id=2)  # continues seq 2's KV cache
        assert max_diff(np.vstack([head, tail]), expected) <= TOLERANCE
        other = s.evaluate(toks, seq_id=5)  # a sequence of its own, from empty
        assert max_diff(other, expected) <= TOLERANCE
        assert (s.n_past(0), s.n_past(2), s.n_past(5)) == (0, toks.size, toks.size)
        s.reset(2)
        assert (s.n_past(2), s.n_past(5)) == (0, toks.size)
        assert max_diff(s.evaluate(toks, seq_id=2), expected) <= TOLERANCE  # as good as new
        s.reset()
        assert s.n_past(2) == s.n_past(5) == 0
        with pytest.raises(errors.InvalidArgument, match="seq_id 8 is out of range"):
            s.evaluate(toks, seq_id=8)


def test_each_sequence_has_n_ctx_positions(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, n_ctx=8, backend="llama") as s:
        for seq in range(8):  # all eight full at once: every one has its own cache
            s.evaluate(np.arange(1, 9), seq_id=seq)
        with pytest.raises(errors.ContextOverflow, match="exceeds n_ctx=8") as exc:
            s.evaluate([1], seq_id=3)
        assert exc.value.context.phase == "QUERY PHASE"
        assert s.n_past(3) == 8


def test_errors_are_the_socket_errors(tiny_model: Path, tmp_path: Path) -> None:
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        with pytest.raises(errors.InferenceError, match="invalid token id 512 at position 1"):
            s.evaluate([1, 512])
        with pytest.raises(errors.InferenceError, match="empty token list"):
            s.evaluate([])
    with pytest.raises(errors.ModelLoadError, match="model file not found"):
        bn.BitnetSession.create(tmp_path / "absent.gguf", backend="llama")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    # the strict reader reads every file before llama.cpp does (native/check): its words
    with pytest.raises(errors.ModelLoadError, match=r"unsupported GGUF version 0 at offset 4 \(supported: 2, 3\)"):
        bn.BitnetSession.create(junk, backend="llama")
    with pytest.raises(errors.Unsupported, match="n_gpu_layers=1"):
        bn.BitnetSession.create(tiny_model, backend="llama", n_gpu_layers=1)


# ---- per-call functions ------------------------------------------------------


def test_per_call_functions(tiny_model: Path) -> None:
    toks, expected = reference(tiny_model)
    np.testing.assert_array_equal(bn.tokenize(tiny_model, "What is 2+2?", backend="llama"), toks)
    assert max_diff(bn.evaluate(tiny_model, toks, backend="llama"), expected) <= TOLERANCE
    with pytest.raises(errors.ContextOverflow):
        bn.evaluate(tiny_model, toks, n_ctx=4, backend="llama")


# ---- the fallback tier -------------------------------------------------------


def test_forced_fallback_is_served_by_llama(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    toks, expected = reference(tiny_model)
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    caplog.set_level(logging.WARNING, logger="pytest_bitnet.native")
    with pytest.warns(errors.OptionalSymbolMissing, match="served by fallback:llama.cpp"):
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            got = s.tokenize("What is 2+2?")
            logits = s.evaluate(got)
            served = (s.backend_info["tokenize"], s.backend_info["evaluate"])
    assert served == (f"fallback:llama.cpp:{LLAMA.libllama} (BITNET_FORCE_LLAMA_FALLBACK=1)",) * 2
    np.testing.assert_array_equal(got, toks)
    assert max_diff(logits, expected) <= TOLERANCE
    assert any("fallback tier (llama.cpp)" in r.getMessage() for r in caplog.records)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        assert max_diff(bn.evaluate(tiny_model, toks, backend="dlopen"), expected) <= TOLERANCE
    assert any("per-call function forced to fallback; served by the fallback tier (llama.cpp)" in r.getMessage() for r in caplog.records)


def test_fallback_order_can_be_pinned(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        monkeypatch.setenv("BITNET_FALLBACK", "reference")
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            s.tokenize("x")
            assert s.backend_info["tokenize"] == "fallback:reference (BITNET_FORCE_LLAMA_FALLBACK=1)"
        monkeypatch.setenv("BITNET_FALLBACK", "llama")
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            s.tokenize("x")
            assert s.backend_info["tokenize"].startswith("fallback:llama.cpp:")
        # llama.cpp never falls back to itself: auto picks the reference
        monkeypatch.setenv("BITNET_FALLBACK", "auto")
        with bn.BitnetSession.create(tiny_model, backend="llama") as s:
            s.tokenize("x")
            assert s.backend_info["tokenize"] == "fallback:reference (BITNET_FORCE_LLAMA_FALLBACK=1)"
    report = bn.diagnostics(backend="dlopen")
    assert report["fallback"] == "llama.cpp"


def test_llama_is_not_its_own_fallback_when_a_fault_narrowed_one_load(tiny_model: Path) -> None:
    # The backend's load lacks tokenize; the fallback tier would be the
    # same library (whole: the fault is about the session's library only).
    # It is still llama.cpp itself: the fallback is the reference engine.
    with pytest.warns(errors.OptionalSymbolMissing), fi.inject("dlsym.bitnet_cpp_tokenize_with_context=missing"):
        with bn.BitnetSession.create(tiny_model, backend="llama") as s:
            s.tokenize("x")
            assert s.backend_info["tokenize"] == "fallback:reference (bitnet_cpp_tokenize_with_context missing)"
            assert s.backend_info["create"].startswith("llama.cpp:")


@pytest.mark.parametrize("symbol, call", [("bitnet_cpp_tokenize_with_context", "tokenize"),
                                          ("bitnet_cpp_eval_with_context", "evaluate")])
def test_a_dlsym_fault_removes_the_symbol_from_the_sessions_library_only(tiny_model: Path, symbol: str, call: str) -> None:
    # Issue 20 item 23: an unbounded dlsym.<symbol>=missing also removed the
    # socket from the llama.cpp adapter the fallback tier loads through the
    # same loader, so create failed with CppNotAvailable instead of falling
    # back.  The point is about the library the session asked for.
    toks, logits = reference(tiny_model, "scoped to one library")
    with pytest.warns(errors.OptionalSymbolMissing), fi.inject(f"dlsym.{symbol}=missing") as armed:
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            got_toks = s.tokenize("scoped to one library")
            got_logits = s.evaluate(got_toks)
            assert s.backend_info[call].startswith("fallback:llama.cpp:"), s.backend_info
            assert s.backend_info[call].endswith(f"({symbol} missing)")
        # reached once: by the session's library, not by the adapter's load
        assert armed.hits(f"dlsym.{symbol}") == 1
    np.testing.assert_array_equal(got_toks, toks)
    assert max_diff(got_logits, logits) <= TOLERANCE


def test_fallback_session_keeps_the_model_loaded(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            loads = bn.live_counters()["model_loads"]
            toks = s.tokenize("ten calls")
            for _ in range(10):
                s.reset()
                s.evaluate(toks)
            assert bn.live_counters()["model_loads"] == loads


# ---- deadlines, faults, logging ----------------------------------------------


def test_timeout_through_the_abort_callback(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        toks = s.tokenize("deadline")
        s.evaluate(toks[:2])
        with pytest.raises(errors.OperationTimeout, match="llama_decode: evaluate timed out") as exc:
            s.evaluate(toks[2:], timeout=0)  # expires at llama.cpp's first graph node
        assert exc.value.context.phase == "FILL PHASE"
        assert s.n_past() == 2  # the aborted batch left nothing in the cache
        whole = s.evaluate(toks[2:])
    _, expected = reference(tiny_model, "deadline")
    assert max_diff(whole, expected[2:]) <= TOLERANCE


def test_timeout_during_load(tiny_model: Path) -> None:
    before = bn.live_counters()
    with pytest.raises(errors.OperationTimeout, match="create timed out"):
        bn.BitnetSession.create(tiny_model, backend="llama", timeout=0)
    after = bn.live_counters()
    assert {k: after[k] for k in ("contexts", "models", "bytes", "allocations")} == {
        k: before[k] for k in ("contexts", "models", "bytes", "allocations")
    }


@pytest.mark.parametrize(
    "spec, call, cls, phase",
    [
        ("tokenize.fill=fail", "tokenize", errors.InferenceError, "FILL PHASE"),
        ("tokenize.query=fail", "tokenize", errors.InferenceError, "QUERY PHASE"),
        ("eval.fill=oom", "evaluate", errors.OutOfMemory, "FILL PHASE"),
        ("eval.fill=grow(3)", "evaluate", errors.InferenceError, "FILL PHASE"),
    ],
)
def test_fault_points_at_the_boundary(tiny_model: Path, spec: str, call: str, cls: type, phase: str) -> None:
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        toks = s.tokenize("fault")
        with fi.inject(spec):
            with pytest.raises(cls) as exc:
                s.tokenize("fault") if call == "tokenize" else s.evaluate(toks)
        assert exc.value.context.phase == phase
        assert phase in str(exc.value)
        assert s.n_past() == 0  # nothing reached llama.cpp's cache
        assert s.evaluate(toks).shape == (toks.size, 512)


def test_faults_on_create_and_free(tiny_model: Path) -> None:
    with fi.inject("init_context=fail"):
        with pytest.raises(errors.BitnetError):
            bn.BitnetSession.create(tiny_model, backend="llama")
    s = bn.BitnetSession.create(tiny_model, backend="llama")
    with fi.inject("free_context=fail"):
        with pytest.raises(errors.CleanupFailed):
            s.close()
    s.close()  # the retry frees it; the plugin checks the counters


def test_llama_log_lines_reach_python_logging(tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet.native")
    previous = native_log.native_level()
    native_log.set_native_level("info")
    try:
        with bn.BitnetSession.create(tiny_model, backend="llama"):
            pass
    finally:
        native_log.set_native_level(previous)
    lines = [r for r in caplog.records if getattr(r, "bitnet_component", None) == "llama.cpp"]
    assert lines, "no line from llama.cpp reached logging"
    assert any("[INFO] [llama.cpp]" in r.getMessage() and "llama_model_loader" in r.getMessage() for r in lines)
    assert all(not r.getMessage().endswith("\n") for r in lines)  # whole lines, no fragments


def test_counters_count_llama_objects(tiny_model: Path) -> None:
    before = bn.live_counters()
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        during = bn.live_counters()
        s.evaluate([1, 2, 3])
    after = bn.live_counters()
    assert during["models"] - before["models"] == 1
    assert during["contexts"] - before["contexts"] == 2  # the bridge's handle and the adapter's context
    assert during["allocations"] - before["allocations"] >= 3  # model, llama context, the adapter's own block
    assert {k: after[k] for k in ("contexts", "models", "bytes", "allocations")} == {
        k: before[k] for k in ("contexts", "models", "bytes", "allocations")
    }


# ---- configuration errors (fresh interpreters) ---------------------------------


def test_empty_llama_cpp_lib_path_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    proc = run_python(
        f"""
        import pytest_bitnet as bn
        try:
            bn.BitnetSession.create({str(tiny_model)!r}, backend="llama")
        except bn.errors.LibraryNotFound as exc:
            print("LibraryNotFound:", exc)
        """,
        LLAMA_CPP_LIB_PATH=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"LLAMA_CPP_LIB_PATH={tmp_path} holds no libllama.so" in proc.stdout


def test_not_installed_says_how_to_install(tiny_model: Path) -> None:
    proc = run_python(
        f"""
        import sys
        class HideLlama:  # as if llama-cpp-python were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "llama_cpp":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, HideLlama())
        import pytest_bitnet as bn
        with bn.BitnetSession.create({str(tiny_model)!r}) as s:  # the reference still works
            s.evaluate(s.tokenize("x"))
        for call in (lambda: bn.BitnetSession.create({str(tiny_model)!r}, backend="llama"),
                     lambda: bn.tokenize({str(tiny_model)!r}, "x", backend="llama")):
            try:
                call()
            except bn.errors.LibraryNotFound as exc:
                print("LibraryNotFound:", exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("llama-cpp-python is not installed: pip install 'pytest-bitnet[llama]'") == 2, proc.stdout


def test_adapter_is_cached_and_rebuilt_into_an_override_dir(tmp_path: Path, tiny_model: Path) -> None:
    code = f"""
        from pytest_bitnet.bridge.llama import configured
        import pytest_bitnet as bn
        LLAMA = configured()
        with bn.BitnetSession.create({str(tiny_model)!r}, backend="llama") as s:
            print(LLAMA.adapter, s.evaluate([1]).shape)
        """
    first = run_python(code, BITNET_LLAMA_ADAPTER_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    built = list(tmp_path.glob("llama-adapter-*.so"))
    assert len(built) == 1 and str(built[0]) in first.stdout and "(1, 512)" in first.stdout
    mtime = built[0].stat().st_mtime_ns
    second = run_python(code, BITNET_LLAMA_ADAPTER_DIR=str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
