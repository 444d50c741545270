"""The Python API of the core: sessions, per-call functions, counters."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge._native import lib
from pytest_bitnet.bridge.counters import LEAK_COUNTERS


def test_session_tokenize_and_evaluate(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, n_ctx=512) as s:
        toks = s.tokenize("What is 2+2?")
        assert toks.dtype == np.int32 and toks.ndim == 1
        assert toks[0] == 1  # BOS of the generated vocabulary
        assert len(toks) > 3
        logits = s.evaluate(toks)
        assert logits.dtype == np.float32
        assert logits.shape == (len(toks), s.n_vocab)
        assert np.isfinite(logits).all()
        assert s.n_past() == len(toks)
        assert s.backend_info == {"create": "reference", "deadlines": "honoured", "isolation": "none", "tokenize": "reference",
                                  "evaluate": "reference"}
    assert s.closed


def test_per_call_matches_session(tiny_model: Path) -> None:
    toks = bn.tokenize(tiny_model, "What is 2+2?")
    with bn.BitnetSession.create(tiny_model, n_ctx=512) as s:
        np.testing.assert_array_equal(toks, s.tokenize("What is 2+2?"))
        session_logits = s.evaluate(toks)
    per_call = bn.evaluate(tiny_model, toks)
    np.testing.assert_array_equal(per_call, session_logits)


def test_incremental_evaluation_equals_one_shot(tiny_model: Path) -> None:
    # The KV cache must make token-by-token evaluation equal to one batch.
    with bn.BitnetSession.create(tiny_model, n_ctx=64) as s:
        toks = s.tokenize("The quick brown fox jumps")
        whole = s.evaluate(toks)
        s.reset()
        assert s.n_past() == 0
        rows = [s.evaluate(toks[i : i + 1])[0] for i in range(len(toks))]
    np.testing.assert_allclose(np.stack(rows), whole, atol=1e-4, rtol=0)


def test_sequences_are_independent(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, n_ctx=64) as s:
        a = s.tokenize("hello world")
        b = s.tokenize("the cat")
        la = s.evaluate(a, seq_id=0)
        s.evaluate(b, seq_id=1)
        assert s.n_past(0) == len(a) and s.n_past(1) == len(b)
        s.reset(0)
        np.testing.assert_array_equal(s.evaluate(a, seq_id=0), la)
        assert s.n_past(1) == len(b)


def test_closed_session_raises(tiny_model: Path) -> None:
    s = bn.BitnetSession.create(tiny_model)
    s.close()
    s.close()  # idempotent
    with pytest.raises(errors.InferenceError, match="closed"):
        s.tokenize("x")
    with pytest.raises(errors.InferenceError, match="closed"):
        s.evaluate([1, 2])


def test_counters_return_to_baseline(tiny_model: Path) -> None:
    before = bn.live_counters()
    s = bn.BitnetSession.create(tiny_model)
    during = bn.live_counters()
    assert during["contexts"] == before["contexts"] + 1
    assert during["models"] == before["models"] + 1
    assert during["bytes"] > before["bytes"] + tiny_model.stat().st_size // 2  # weights are held
    assert during["model_loads"] == before["model_loads"] + 1
    s.close()
    after = bn.live_counters()
    for key in LEAK_COUNTERS:
        assert after[key] == before[key], key


@pytest.mark.bitnet_allow_leaks  # drops a session on purpose: the finalizer is what is tested
def test_unclosed_session_is_freed_with_resource_warning(tiny_model: Path) -> None:
    before = bn.live_counters()["contexts"]
    s = bn.BitnetSession.create(tiny_model)
    with pytest.warns(ResourceWarning, match="not closed"):
        del s
        import gc

        gc.collect()
    assert bn.live_counters()["contexts"] == before


def test_capabilities_are_real() -> None:
    caps = bn.capabilities()
    flags = open("/proc/cpuinfo").read().split() if Path("/proc/cpuinfo").exists() else []
    if flags:
        assert caps.has_avx2 == ("avx2" in flags and "fma" in flags and "f16c" in flags)
        assert caps.has_avx512 == ("avx512f" in flags)
    assert not caps.has_cuda and not caps.has_metal and not caps.has_hip
    assert set(caps.as_dict()) == {"has_avx2", "has_avx512", "has_neon", "has_cuda", "has_metal", "has_hip"}


def test_separate_sessions_in_threads_agree(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        toks = s.tokenize("threads agree")
        expected = s.evaluate(toks)
    results: list[np.ndarray] = []

    def work() -> None:
        with bn.BitnetSession.create(tiny_model) as mine:
            results.append(mine.evaluate(toks))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for r in results:
        np.testing.assert_array_equal(r, expected)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"n_ctx": -1}, "n_ctx=-1 is out of range"),
        ({"n_ctx": "512"}, "n_ctx must be an int"),
        ({"n_gpu_layers": -2}, "n_gpu_layers=-2 is out of range"),
    ],
)
def test_create_rejects_bad_arguments(tiny_model: Path, kwargs: dict, fragment: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=fragment):
        bn.BitnetSession.create(tiny_model, **kwargs)


def test_gpu_layers_without_gpu_support(tiny_model: Path) -> None:
    with pytest.raises(errors.Unsupported, match="has_cuda=0"):
        bn.BitnetSession.create(tiny_model, n_gpu_layers=4)


def test_missing_model(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(errors.ModelLoadError, match="nope.gguf") as exc:
        bn.BitnetSession.create(missing)
    assert exc.value.context.native_code == -2
    with pytest.raises(errors.ModelLoadError):
        bn.BitnetSession.create(tmp_path)  # a directory


@pytest.mark.parametrize(
    "prompt, exc, fragment",
    [
        ("a\0b", errors.InvalidArgument, "NUL byte at byte offset 1"),
        ("bad \udc80 surrogate", errors.InvalidArgument, "surrogate"),
        (42, errors.InvalidArgument, "prompt must be str or bytes"),
    ],
)
def test_tokenize_rejects_bad_prompts(tiny_model: Path, prompt: object, exc: type, fragment: str) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        with pytest.raises(exc, match=fragment):
            s.tokenize(prompt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tokens, exc, fragment",
    [
        ([], errors.InferenceError, "empty token list"),
        ([1, -5], errors.InferenceError, "invalid token id -5 at position 1"),
        ([1, 10**6], errors.InferenceError, "invalid token id 1000000 at position 1"),
        ([1, 2**40], errors.InferenceError, "does not fit in int32"),
        (np.array([1.0, 2.0]), errors.InvalidArgument, "integer dtype"),
        (np.array([[1, 2]]), errors.InvalidArgument, "1-D"),
        ("12", errors.InvalidArgument, "1-D sequence"),
    ],
)
def test_evaluate_rejects_bad_tokens(tiny_model: Path, tokens: object, exc: type, fragment: str) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        with pytest.raises(exc, match=fragment):
            s.evaluate(tokens)  # type: ignore[arg-type]
        assert s.n_past() == 0  # nothing was consumed


def test_evaluate_accepts_any_integer_layout(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        base = s.evaluate(np.array([1, 5, 9], dtype=np.int32))
        s.reset()
        strided = np.array([1, 0, 5, 0, 9, 0], dtype=np.int64)[::2]  # non-contiguous int64
        np.testing.assert_array_equal(s.evaluate(strided), base)


def test_context_overflow_one_call_and_accumulated(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, n_ctx=8) as s:
        with pytest.raises(errors.ContextOverflow, match="n_ctx=8"):
            s.evaluate(list(range(1, 10)))
        s.evaluate([1, 2, 3, 4, 5])
        with pytest.raises(errors.ContextOverflow, match="5 tokens already") as exc:
            s.evaluate([6, 7, 8, 9])
        assert exc.value.context.phase == "QUERY PHASE"
        assert s.n_past() == 5  # unchanged by the failed call
        s.evaluate([6, 7, 8])  # exactly fills the context
        assert s.n_past() == 8


# ---- a session closed while a call starts (issue 13, item 2) -------------------------------
#
# glibc hands a freed block to the next allocation of its size, so a new
# session usually gets the memory of the one just closed.  A call that took
# the old session's handle before the close must fail as "closed", never run
# on the new session.  Each scenario repeats a few times: before handles were
# generation-checked the reuse happened 19 times in 20, so one repetition
# could pass by luck.

REPEAT = 5


class _Box:
    """The session the scenario works on, and the one it re-creates."""

    def __init__(self, model: Path) -> None:
        self.model = model
        self.first = bn.BitnetSession.create(model, n_ctx=64)
        self.second: bn.BitnetSession | None = None

    def close_and_recreate(self) -> None:
        self.first.close()
        if self.second is not None:  # a scenario that re-creates twice must not drop the first re-creation
            self.second.close()
        self.second = bn.BitnetSession.create(self.model, n_ctx=64)

    def close_all(self) -> None:
        for s in (self.first, self.second):
            if s is not None:
                s.close()


def test_prompt_whose_encode_closes_the_session_fails_as_closed(tiny_model: Path) -> None:
    for _ in range(REPEAT):
        box = _Box(tiny_model)

        class Hostile(str):
            def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
                box.close_and_recreate()
                return str.encode(self, *args, **kwargs)  # type: ignore[arg-type]

        try:
            with pytest.raises(errors.InferenceError, match="closed"):
                box.first.tokenize(Hostile("hello"))
            assert box.second is not None and box.second.n_past() == 0
        finally:
            box.close_all()


def test_tokens_whose_array_closes_the_session_fail_as_closed(tiny_model: Path) -> None:
    for _ in range(REPEAT):
        box = _Box(tiny_model)

        class Hostile:
            def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
                box.close_and_recreate()
                return np.array([1, 5, 7], dtype=np.int32)

        try:
            with pytest.raises(errors.InferenceError, match="closed"):
                box.first.evaluate(Hostile())
            assert box.second is not None and box.second.n_past() == 0  # its KV cache untouched
        finally:
            box.close_all()


def test_seq_id_whose_index_closes_the_session_fails_as_closed(tiny_model: Path) -> None:
    # int_arg reads a numbers.Integral through int(): user code too.
    for _ in range(REPEAT):
        box = _Box(tiny_model)
        box.first.evaluate([1, 5, 7], seq_id=0)

        class Hostile(int):
            def __int__(self) -> int:
                box.close_and_recreate()
                return 0

        try:
            with pytest.raises(errors.InferenceError, match="closed"):
                box.first.reset(Hostile(0))
            with pytest.raises(errors.InferenceError, match="closed"):
                box.first.n_past(Hostile(0))
            assert box.second is not None
            box.second.evaluate([1, 5], seq_id=0)
            box.first = box.second  # the next Hostile closes this one: nothing it did may reach a third
            box.second = None
            with pytest.raises(errors.InferenceError, match="closed"):
                box.first.evaluate([1], seq_id=Hostile(0))
            assert box.second is not None and box.second.n_past() == 0
        finally:
            box.close_all()


def test_another_thread_closing_between_check_and_call_fails_as_closed(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The window after the liveness check: the call holds the handle, another
    # thread closes the session and creates one that takes its memory, then
    # the call reaches native code.  The session module enters the call's
    # deadline right there; a wrapper around it opens the window on purpose.
    from pytest_bitnet.bridge import session as session_module

    real_deadline = session_module.deadline
    for op in ("tokenize", "evaluate", "detokenize"):
        for _ in range(REPEAT):
            box = _Box(tiny_model)
            fired: list[bool] = []

            def racing_deadline(seconds: float):  # type: ignore[no-untyped-def]
                if not fired:
                    fired.append(True)
                    t = threading.Thread(target=box.close_and_recreate)
                    t.start()
                    t.join()
                return real_deadline(seconds)

            monkeypatch.setattr(session_module, "deadline", racing_deadline)
            try:
                with pytest.raises(errors.InvalidHandle, match="closed by another thread while the call was starting") as exc:
                    if op == "tokenize":
                        box.first.tokenize("hello")
                    elif op == "evaluate":
                        box.first.evaluate([1, 5, 7])
                    else:
                        box.first.detokenize([1, 5, 7])
                assert exc.value.context.operation == op and exc.value.context.phase == "QUERY PHASE"
                assert "do not close a session other threads are calling" in str(exc.value)
                assert fired and box.second is not None and box.second.n_past() == 0
            finally:
                monkeypatch.setattr(session_module, "deadline", real_deadline)
                box.close_all()


def test_another_thread_closing_before_capabilities_are_read_fails_as_closed(tiny_model: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # capabilities has no deadline to hook: the window is between the
    # liveness check and the native read, opened by a wrapper around the
    # read that lets another thread close (and re-create) the session first
    from pytest_bitnet.bridge import session as session_module

    real_read = session_module.context_capabilities
    for _ in range(REPEAT):
        box = _Box(tiny_model)
        want = box.first.capabilities
        fired: list[bool] = []

        def racing_read(ctx, *args):  # type: ignore[no-untyped-def]
            if not fired:
                fired.append(True)
                t = threading.Thread(target=box.close_and_recreate)
                t.start()
                t.join()
            return real_read(ctx, *args)

        monkeypatch.setattr(session_module, "context_capabilities", racing_read)
        try:
            with pytest.raises(errors.InvalidHandle, match="capabilities on a closed session: .* closed by another thread") as exc:
                box.first.capabilities
            assert exc.value.context.operation == "capabilities"
            assert exc.value.context.native_code == int(lib.BITNET_E_INVALID_HANDLE)
            assert fired and box.second is not None and box.second.capabilities == want  # the new one is untouched
        finally:
            monkeypatch.setattr(session_module, "context_capabilities", real_read)
            box.close_all()


@pytest.mark.parametrize("gpu", ["yes", 1, None])
def test_evaluate_gpu_must_be_a_bool(tiny_model: Path, gpu: object) -> None:
    # 1 and "yes" are not True: Socket 5 is a different library call, asked for explicitly
    with bn.BitnetSession.create(tiny_model) as s:
        with pytest.raises(errors.InvalidArgument, match=f"evaluate: gpu must be True or False, got {gpu!r}"):
            s.evaluate([1, 2], gpu=gpu)  # type: ignore[arg-type]
        assert s.n_past() == 0


@pytest.mark.parametrize(
    "operation, spec, call",
    [
        ("tokenize", "tokenize.fill=fail", lambda s: s.tokenize("hello")),
        ("evaluate", "eval.fill=fail", lambda s: s.evaluate([1, 2])),
        ("evaluate", None, lambda s: s.evaluate([1, 2], seq_id=10**6)),  # refused before the two passes
        ("n_past", None, lambda s: s.n_past(10**6)),
        ("reset", None, lambda s: s.reset(10**6)),
    ],
)
def test_session_call_errors_name_the_model(tiny_model: Path, operation: str, spec: str | None, call) -> None:
    # issue 20.21: which model failed belongs in every session call's context,
    # as it is in create's (several sessions, several models in one test)
    import fault_inject as fi

    with bn.BitnetSession.create(tiny_model) as s:
        with fi.inject(spec) if spec else contextlib.nullcontext():
            with pytest.raises(errors.BitnetError) as exc:
                call(s)
    assert exc.value.context.operation == operation
    assert exc.value.context.parameters["model_path"] == str(tiny_model)
    assert f"model_path={str(tiny_model)!r}" in str(exc.value)
