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
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=overreporting) as s:
        with pytest.raises(errors.InferenceError) as exc:
            s.tokenize("hello world")
        assert "tokenize (FILL PHASE) failed: the fill pass reported" in str(exc.value)
        assert "(more than the buffer holds)" in str(exc.value) and f"served by dlopen:{overreporting}" in str(exc.value)
        toks = np.array([1, 5, 7], dtype=np.int32)
        with pytest.raises(errors.InferenceError) as exc:
            s.evaluate(toks)
        assert f"the fill pass reported 4 x {s.n_vocab} logits (more than the buffer holds) where the query pass reported 3 x {s.n_vocab}" in str(exc.value)
        assert f"served by dlopen:{overreporting}" in str(exc.value)


def test_the_bridge_refuses_a_per_call_fill_that_reports_more_than_its_buffer(overreporting: Path, tiny_model: Path) -> None:
    # natively, for C callers too: more than the capacity is never a result
    with pytest.raises(errors.InternalError, match=rf"dlopen:{overreporting} reported 4 x \d+ logits from a fill pass whose buffer holds \d+"):
        bn.evaluate(tiny_model, np.array([1, 5, 7], dtype=np.int32), backend="dlopen", library_path=overreporting)
    with pytest.raises(errors.InternalError, match=r"reported \d+ tokens from a fill pass whose buffer holds \d+: the library misreports"):
        bn.tokenize(tiny_model, "hello world", backend="dlopen", library_path=overreporting)
