"""The two passes of a buffer-filling call (pytest_bitnet.bridge._calls).

Whatever the native side returns, the helpers hand back only an array whose
shape the fill pass reported and the query pass announced: a count that is
negative, or that differs between the passes (a file replaced between them,
a library that misreports), is an InferenceError naming the operation, the
phase, both values and the library that served the call.  The native calls
are stood in for by functions that report what a misbehaving library would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge._calls import eval_two_pass, tokenize_two_pass
from pytest_bitnet.bridge._native import bundled_library, ffi

from ..native_builds import build_broken_backend

LIBRARY = "dlopen:/opt/lib/libbitnet.so"


def eval_call(query: tuple[int, int], fill: tuple[int, int]) -> Callable[..., int]:
    """An eval socket whose query reports `query` and whose fill writes and reports `fill`."""

    def call(buf: Any, cap: int, rows: Any, cols: Any, err: Any) -> int:
        r, c = query if buf == ffi.NULL else fill
        if buf != ffi.NULL:
            n = min(max(r, 0) * max(c, 0), cap)
            ffi.buffer(buf, n * 4)[:] = np.arange(n, dtype=np.float32).tobytes()
        rows[0], cols[0] = r, c
        return 0

    return call


def tok_call(query: int, fill: int) -> Callable[..., int]:
    def call(buf: Any, cap: int, n: Any, err: Any) -> int:
        n[0] = query if buf == ffi.NULL else fill
        return 0

    return call


def test_eval_returns_what_the_fill_filled() -> None:
    out = eval_two_pass(eval_call((3, 4), (3, 4)), "evaluate", {}, served_by=lambda: LIBRARY)
    np.testing.assert_array_equal(out, np.arange(12, dtype=np.float32).reshape(3, 4))


@pytest.mark.parametrize("fill", [(3, 300), (2, 512), (3, 600), (4, 512), (-1, 512), (3, -5)])
def test_eval_fill_shape_other_than_the_query_is_an_error(fill: tuple[int, int]) -> None:
    # before: (3, 300) came back as the 3 x 512 array of the query, its
    # tail never written
    with pytest.raises(errors.InferenceError) as exc:
        eval_two_pass(eval_call((3, 512), fill), "evaluate (per-call)", {"n_tokens": 3}, served_by=lambda: LIBRARY)
    e, msg = exc.value, str(exc.value)
    assert type(e) is errors.InferenceError and e.context.phase == "FILL PHASE"
    assert e.context.operation == "evaluate (per-call)" and msg.startswith("evaluate (per-call) (FILL PHASE) failed")
    assert f"the fill pass reported {fill[0]} x {fill[1]} logits" in msg and "the query pass reported 3 x 512" in msg
    assert f"served by {LIBRARY}" in msg and "discarded" in msg and "call again" in msg
    assert e.context.parameters["query_shape"] == (3, 512) and e.context.parameters["fill_shape"] == fill
    assert e.context.parameters["served_by"] == LIBRARY and e.context.parameters["n_tokens"] == 3
    assert ("more than the buffer holds" in msg) == (min(fill) >= 0 and fill[0] * fill[1] > 3 * 512)


@pytest.mark.parametrize("query", [(-1, 512), (3, -1)])
def test_eval_negative_query_is_an_error_not_a_numpy_one(query: tuple[int, int]) -> None:
    # before: numpy's ValueError("negative dimensions are not allowed")
    with pytest.raises(errors.InferenceError, match=r"evaluate \(QUERY PHASE\) failed: the query pass reported") as exc:
        eval_two_pass(eval_call(query, query), "evaluate", {}, served_by=lambda: LIBRARY)
    assert exc.value.context.phase == "QUERY PHASE"


def test_eval_query_beyond_the_int32_capacity_is_out_of_memory_before_any_allocation() -> None:
    # 70000 x 70000 floats (18 GiB) cannot be passed as the C API's int32
    # capacity: refused at the query, before numpy is asked for the array
    # and before the fill pass runs
    fills: list[int] = []

    def call(buf: Any, cap: int, rows: Any, cols: Any, err: Any) -> int:
        if buf != ffi.NULL:
            fills.append(cap)
        rows[0], cols[0] = 70000, 70000
        return 0

    with pytest.raises(errors.OutOfMemory) as exc:
        eval_two_pass(call, "evaluate", {"n_tokens": 70000}, served_by=lambda: LIBRARY)
    e = exc.value
    assert type(e) is errors.OutOfMemory and e.context.phase == "QUERY PHASE" and e.context.operation == "evaluate"
    assert "70000 x 70000 logits exceed the C API's int32 capacity" in str(e) and "evaluate fewer tokens per call" in str(e)
    assert e.context.parameters == {"n_tokens": 70000}
    assert fills == []


def test_tokenize_returns_what_the_fill_filled() -> None:
    def call(buf: Any, cap: int, n: Any, err: Any) -> int:
        if buf != ffi.NULL:
            ffi.buffer(buf, 3 * 4)[:] = np.array([1, 2, 3], dtype=np.int32).tobytes()
        n[0] = 3
        return 0

    np.testing.assert_array_equal(tokenize_two_pass(call, "tokenize", {}), [1, 2, 3])


@pytest.mark.parametrize("fill", [2, 4, -1])
def test_tokenize_fill_count_other_than_the_query_is_an_error(fill: int) -> None:
    # before: 2 returned a 2-token slice of a 3-token array, 4 and -1 the
    # whole buffer (or its slice), without a word
    with pytest.raises(errors.InferenceError) as exc:
        tokenize_two_pass(tok_call(3, fill), "tokenize", {"prompt_bytes": 5}, served_by=lambda: LIBRARY)
    msg = str(exc.value)
    assert exc.value.context.phase == "FILL PHASE" and msg.startswith("tokenize (FILL PHASE) failed")
    assert f"the fill pass reported {fill} tokens" in msg and "the query pass reported 3" in msg and LIBRARY in msg
    assert ("more than the buffer holds" in msg) == (fill > 3)


def test_tokenize_negative_query_and_an_unnamed_library() -> None:
    with pytest.raises(errors.InferenceError, match=r"QUERY PHASE\) failed: the query pass reported -2 tokens \(served by an unidentified library\)"):
        tokenize_two_pass(tok_call(-2, -2), "tokenize", {})


# ---- a real library that misreports ----------------------------------------------------


@pytest.fixture(scope="module")
def overreporting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A libbitnet.so whose every fill pass reports one row / token more than it wrote."""
    real = bundled_library()
    if real is None:
        pytest.skip("no bundled library")
    return build_broken_backend(tmp_path_factory.mktemp("overreport"), "OVERREPORT_FILL", real)


def test_a_session_on_a_library_that_overreports_raises_naming_it(overreporting: Path, tiny_model: Path) -> None:
    # natively, before Python sees the count: more than the buffer is never a result
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=overreporting) as s:
        with pytest.raises(errors.InferenceError) as exc:
            s.tokenize("hello world")
        assert "tokenize (FILL PHASE) failed: " in str(exc.value)
        assert f"dlopen:{overreporting} misreports its output: bitnet_cpp_tokenize_with_context (fill pass)" in str(exc.value)
        assert "reported 10 tokens, more than the buffer of 9 it was given" in str(exc.value)
        toks = np.array([1, 5, 7], dtype=np.int32)
        with pytest.raises(errors.InferenceError) as exc:
            s.evaluate(toks)
        assert "bitnet_cpp_eval_with_context (fill pass)" in str(exc.value)
        assert f"reported 4 x {s.n_vocab} logits for 3 tokens (expected 3 x {s.n_vocab}" in str(exc.value)
        with pytest.raises(errors.InferenceError) as exc:
            s.detokenize(toks)
        assert "bitnet_cpp_detokenize_with_context (fill pass) reported" in str(exc.value)
        assert "bytes, more than the buffer of" in str(exc.value)


def test_the_bridge_refuses_a_per_call_fill_that_reports_more_than_its_buffer(overreporting: Path, tiny_model: Path) -> None:
    # natively, for C callers too: more than the capacity is never a result
    with pytest.raises(errors.InferenceError, match=rf"dlopen:{overreporting} misreports its output: crossval_bitnet_eval_with_tokens \(fill pass\) reported 4 x \d+ logits for 3 tokens"):
        bn.evaluate(tiny_model, np.array([1, 5, 7], dtype=np.int32), backend="dlopen", library_path=overreporting)
    with pytest.raises(errors.InferenceError, match=r"crossval_bitnet_tokenize \(fill pass\) reported \d+ tokens, more than the buffer of \d+"):
        bn.tokenize(tiny_model, "hello world", backend="dlopen", library_path=overreporting)


# ---- real libraries that misreport in other ways (issue 20, item 15) -------------------------


def _broken(tmp_path_factory: pytest.TempPathFactory, bug: str) -> Path:
    real = bundled_library()
    if real is None:
        pytest.skip("no bundled library")
    return build_broken_backend(tmp_path_factory.mktemp(bug.lower()), bug, real)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    built: dict[str, Path] = {}

    def get(bug: str) -> Path:
        if bug not in built:
            built[bug] = _broken(tmp_path_factory, bug)
        return built[bug]

    return get


def _baseline() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in ("contexts", "sessions")}


def test_a_negative_query_is_an_inference_error_naming_library_socket_and_phase(broken: Callable[[str], Path], tiny_model: Path) -> None:
    lib = broken("NEGATIVE_QUERY")
    before = _baseline()
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=lib) as s:
        with pytest.raises(errors.InferenceError) as exc:
            s.tokenize("hello")
        text = str(exc.value)
        assert "tokenize (QUERY PHASE) failed" in text and f"dlopen:{lib}" in text
        assert "bitnet_cpp_tokenize_with_context (query pass) reported -5 tokens for a prompt of 5 bytes (expected 0..20)" in text
        with pytest.raises(errors.InferenceError) as exc:
            s.evaluate(np.array([1, 2], dtype=np.int32))
        text = str(exc.value)
        assert "evaluate (QUERY PHASE) failed" in text
        assert f"bitnet_cpp_eval_with_context (query pass) reported -5 x {s.n_vocab} logits for 2 tokens (expected 2 x {s.n_vocab}" in text
        with pytest.raises(errors.InferenceError, match=r"bitnet_cpp_detokenize_with_context \(query pass\) reported -5 bytes \(expected >= 0\)"):
            s.detokenize([1, 2])
    with pytest.raises(errors.InferenceError, match=r"crossval_bitnet_tokenize \(query pass\) reported -5 tokens"):
        bn.tokenize(tiny_model, "hello", backend="dlopen", library_path=lib)
    with pytest.raises(errors.InferenceError, match=r"crossval_bitnet_eval_with_tokens \(query pass\) reported -5 x \d+ logits for 2 tokens"):
        bn.evaluate(tiny_model, np.array([1, 2], dtype=np.int32), backend="dlopen", library_path=lib)
    assert _baseline() == before


def test_absurd_sizes_are_refused_before_anything_is_allocated(broken: Callable[[str], Path], tiny_model: Path) -> None:
    lib = broken("ABSURD_SIZES")
    before = _baseline()
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=lib) as s:
        with pytest.raises(errors.InferenceError, match=r"\(query pass\) reported 1000000 tokens for a prompt of 5 bytes \(expected 0\.\.20\)"):
            s.tokenize("hello")
        with pytest.raises(errors.InferenceError, match=rf"\(query pass\) reported 1000000 x {s.n_vocab} logits for 3 tokens \(expected 3 x {s.n_vocab}"):
            s.evaluate(np.array([1, 2, 3], dtype=np.int32))
        assert s.n_past() == 0  # refused at the query: the fill never ran
    with pytest.raises(errors.InferenceError, match=r"crossval_bitnet_eval_with_tokens \(query pass\) reported 1000000 x"):
        bn.evaluate(tiny_model, np.array([1, 2, 3], dtype=np.int32), backend="dlopen", library_path=lib)
    assert _baseline() == before


def test_a_fill_shape_other_than_the_query_is_refused(broken: Callable[[str], Path], tiny_model: Path) -> None:
    lib = broken("FILL_SHAPE")
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=lib) as s:
        # one column fewer: within the buffer, so only the shape says it is wrong (natively)
        with pytest.raises(errors.InferenceError) as exc:
            s.evaluate(np.array([1, 2], dtype=np.int32))
        assert f"bitnet_cpp_eval_with_context (fill pass) reported 2 x {s.n_vocab - 1} logits for 2 tokens (expected 2 x {s.n_vocab}" in str(exc.value)
        assert "evaluate (FILL PHASE)" in str(exc.value)
        # one token fewer: plausible on its own; the Python side compares it with the query
        with pytest.raises(errors.InferenceError) as exc:
            s.tokenize("hello world")
        text = str(exc.value)
        assert "tokenize (FILL PHASE) failed: the fill pass reported" in text and "where the query pass reported" in text
        assert f"served by dlopen:{lib}, socket bitnet_cpp_tokenize_with_context" in text
    with pytest.raises(errors.InferenceError) as exc:
        bn.tokenize(tiny_model, "hello world", backend="dlopen", library_path=lib)
    assert "where the query pass reported" in str(exc.value)
    assert f"served by dlopen:{lib}, socket crossval_bitnet_tokenize" in str(exc.value)


def test_model_info_and_n_past_are_checked(broken: Callable[[str], Path], tiny_model: Path) -> None:
    before = _baseline()
    lib = broken("BAD_MODEL_INFO")
    with pytest.raises(errors.InferenceError) as exc:
        bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=lib)
    assert f"dlopen:{lib} misreports its model: bitnet_cpp_get_model_info reported n_vocab=-1 and n_ctx=512 (expected both >= 1)" in str(exc.value)
    assert _baseline() == before  # the refused context was freed
    lib = broken("BAD_N_PAST")
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=lib) as s:
        with pytest.raises(errors.InferenceError, match=rf"dlopen:{lib} misreports its state: bitnet_cpp_get_n_past reported n_past=-3 for seq_id 0 \(expected 0\.\.512"):
            s.n_past()
    assert _baseline() == before


def test_capabilities_are_checked(broken: Callable[[str], Path], tiny_model: Path) -> None:
    lib = broken("BAD_CAPS")
    with pytest.raises(errors.InferenceError, match=rf"dlopen:{lib} misreports its capabilities: bitnet_cpp_get_capabilities reported has_cuda=7 \(expected 0 or 1\)"):
        bn.capabilities(backend="dlopen", library_path=lib)
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=lib) as s:
        with pytest.raises(errors.InferenceError, match="has_cuda=7"):
            s.capabilities
