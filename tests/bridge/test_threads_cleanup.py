"""Thread safety, cancellation and cleanup validation, made deterministic
with fault points (a delay holds a call open; a failing free)."""

from __future__ import annotations

import gc
import logging
import re
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors


def test_e50_second_thread_gets_thread_safety_error(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        toks = s.tokenize("one call at a time")
        expected = s.evaluate(toks)
        s.reset()
        result: dict[str, object] = {}

        def slow() -> None:
            result["logits"] = s.evaluate(toks)

        with fi.inject("eval.step=1*delay(300)") as armed:
            t = threading.Thread(target=slow)
            t.start()
            assert armed.wait_hit("eval.step", while_alive=t)  # the first call is inside its delayed layer
            with pytest.raises(errors.ThreadSafetyError, match="in use by another thread"):
                s.tokenize("intruder")
            t.join()
        np.testing.assert_array_equal(result["logits"], expected)  # not corrupted
        assert s.n_past() == len(toks)


def test_cancel_from_another_thread(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        caught: list[BaseException] = []

        def hang() -> None:
            try:
                s.evaluate([1, 2, 3], timeout=30)
            except errors.OperationTimeout as exc:
                caught.append(exc)

        with fi.inject("eval.step=1*hang") as armed:
            t = threading.Thread(target=hang)
            t0 = time.monotonic()
            t.start()
            # cancel() stops the call in flight: wait until it is inside the hang
            assert armed.wait_hit("eval.step", while_alive=t)
            s.cancel()
            t.join(5)
            elapsed = time.monotonic() - t0
        assert not t.is_alive() and elapsed < 2
        assert caught and "cancelled" in str(caught[0])
        assert s.n_past() == 0
        assert s.evaluate([1, 2, 3]).shape[0] == 3  # usable afterwards


def test_e13_slow_load_past_timeout_leaks_nothing(tiny_model: Path) -> None:
    before = bn.live_counters()
    with fi.inject("load.step=delay(100)"):
        t0 = time.monotonic()
        with pytest.raises(errors.OperationTimeout, match="create timed out") as exc:
            bn.BitnetSession.create(tiny_model, timeout=0.2)
        assert time.monotonic() - t0 < 0.2 + 0.3
    assert exc.value.duration == 0.2
    after = bn.live_counters()
    for key in ("contexts", "models", "bytes", "allocations"):
        assert after[key] == before[key], key


def test_e45_tokenize_hang_times_out(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        threads = threading.active_count()
        with fi.inject("tokenize.step=hang"):
            t0 = time.monotonic()
            with pytest.raises(errors.OperationTimeout, match="tokenize timed out"):
                s.tokenize("hang here", timeout=0.2)
            assert time.monotonic() - t0 < 0.2 + 0.1
        assert threading.active_count() == threads  # no thread left running
        assert len(s.tokenize("fine now")) > 1


def test_e31_close_failure_keeps_session_for_retry(tiny_model: Path) -> None:
    s = bn.BitnetSession.create(tiny_model)
    contexts = bn.live_counters()["contexts"]
    with fi.inject("free_context=1*fail"):
        with pytest.raises(errors.CleanupFailed, match="free_context"):
            s.close()
    assert not s.closed and bn.live_counters()["contexts"] == contexts  # still alive, still counted
    assert len(s.tokenize("still usable")) > 1
    s.close()  # the retry frees it
    assert s.closed and bn.live_counters()["contexts"] == contexts - 1


@pytest.mark.bitnet_allow_leaks  # drops a session on purpose: the finalizer is what is tested
def test_e31_finalizer_only_warns(tiny_model: Path) -> None:
    s = bn.BitnetSession.create(tiny_model)
    contexts = bn.live_counters()["contexts"]
    with pytest.warns(ResourceWarning, match="not closed"):
        del s
        gc.collect()
    assert bn.live_counters()["contexts"] == contexts - 1


def test_e51_sessions_in_parallel_threads(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        toks = s.tokenize("parallel sessions agree")
        expected = s.evaluate(toks)
    before = bn.live_counters()
    out: list[np.ndarray] = []
    errs: list[BaseException] = []

    def work() -> None:
        try:
            with bn.BitnetSession.create(tiny_model) as mine:
                for _ in range(5):
                    mine.reset()
                    out.append(mine.evaluate(toks))
        except BaseException as exc:  # pragma: no cover - reported below
            errs.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errs and len(out) == 20
    for r in out:
        np.testing.assert_array_equal(r, expected)
    after = bn.live_counters()
    assert {k: after[k] for k in ("contexts", "bytes")} == {k: before[k] for k in ("contexts", "bytes")}


# ---- a failed close never loses the session (issue 13, item 7) -----------------------------


def test_a_failed_close_under_oom_can_still_be_retried(tiny_model: Path) -> None:
    # 7a: a free that failed used to re-register the handle, and an OOM there
    # lost the context for good (every later close() InvalidHandle).
    before = bn.live_counters()
    s = bn.BitnetSession.create(tiny_model)
    with pytest.warns(fi.NeverHitWarning, match="never hit: 'alloc'"):
        with fi.inject("free_context=1*fail;alloc=1*oom"):
            with pytest.raises(errors.CleanupFailed):
                s.close()
    assert not s.closed and len(s.tokenize("still usable")) > 1
    s.close()
    after = bn.live_counters()
    assert {k: after[k] for k in ("contexts", "bytes")} == {k: before[k] for k in ("contexts", "bytes")}


def test_cleanup_failed_carries_the_session_for_a_retry(tiny_model: Path) -> None:
    before = bn.live_counters()["contexts"]
    with fi.inject("free_context=1*fail"):
        with pytest.raises(errors.CleanupFailed) as caught:
            with bn.BitnetSession.create(tiny_model):  # no name bound: only the error holds it
                pass
    session = caught.value.session
    assert isinstance(session, bn.BitnetSession) and not session.closed
    session.close()
    assert bn.live_counters()["contexts"] == before


@pytest.mark.bitnet_allow_leaks  # drops a session on purpose: the finalizer is what is tested
def test_a_finalizer_whose_free_fails_keeps_the_context_for_a_retry(tiny_model: Path) -> None:
    # 7b: close() fails inside `with`, the object is dropped, its finalizer's
    # free fails too: the context must stay retrievable and be retried.
    from pytest_bitnet.bridge import session as session_module

    before = bn.live_counters()
    with fi.inject("free_context=2*fail"):
        with pytest.raises(errors.CleanupFailed) as caught:
            with bn.BitnetSession.create(tiny_model):
                pass
        with pytest.warns(ResourceWarning) as warned:
            del caught  # the traceback held the session
            gc.collect()
        assert any("not closed" in str(w.message) for w in warned)
        assert any("pending_cleanups()" in str(w.message) for w in warned)
    pending = session_module.pending_cleanups()
    assert len(pending) == 1 and pending[0].model_path == str(tiny_model) and pending[0].attempts == 1
    assert "free_context" in pending[0].error
    assert bn.live_counters()["contexts"] == before["contexts"] + 1  # alive and counted
    # the next create retries it; nothing else is needed
    bn.BitnetSession.create(tiny_model).close()
    assert session_module.pending_cleanups() == ()
    after = bn.live_counters()
    assert {k: after[k] for k in ("contexts", "bytes")} == {k: before[k] for k in ("contexts", "bytes")}


@pytest.mark.bitnet_allow_leaks  # drops a session on purpose: the finalizer is what is tested
def test_retry_pending_keeps_what_still_fails(tiny_model: Path) -> None:
    from pytest_bitnet.bridge import session as session_module

    before = bn.live_counters()["contexts"]
    with fi.inject("free_context=3*fail"):
        s = bn.BitnetSession.create(tiny_model)
        with pytest.warns(ResourceWarning):
            del s
            gc.collect()
        assert session_module.retry_pending() == 1  # the 2nd failure
        (p,) = session_module.pending_cleanups()
        assert p.attempts == 2
    assert session_module.retry_pending() == 0 and session_module.pending_cleanups() == ()
    assert bn.live_counters()["contexts"] == before


# ---- the finalizer frees before it warns (issue 20, item 3) --------------------------------


@pytest.mark.bitnet_allow_leaks  # drops a session on purpose: the finalizer is what is tested
def test_a_finalizer_frees_even_when_resource_warnings_are_errors(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # -W error::ResourceWarning turns the finalizer's warning into an
    # exception raised inside the finalizer; it used to come before the free,
    # which then never ran (contexts stayed 1 for ever).
    raised: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: raised.append(u.exc_value))
    contexts = bn.live_counters()["contexts"]
    s = bn.BitnetSession.create(tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del s
        gc.collect()
    assert bn.live_counters()["contexts"] == contexts
    assert len(raised) == 1 and isinstance(raised[0], ResourceWarning) and "freed by its finalizer" in str(raised[0])


@pytest.mark.bitnet_allow_leaks  # drops a session on purpose: the finalizer is what is tested
def test_a_finalizer_whose_free_fails_says_so(tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    # It used to log "freed by its finalizer" while the context stayed counted.
    from pytest_bitnet.bridge import session as session_module

    contexts = bn.live_counters()["contexts"]
    with fi.inject("free_context=1*fail"):
        s = bn.BitnetSession.create(tiny_model)
        with caplog.at_level(logging.WARNING, logger="pytest_bitnet"), pytest.warns(ResourceWarning) as warned:
            del s
            gc.collect()
    logged = [r.getMessage() for r in caplog.records if r.name == "pytest_bitnet"]
    assert not any(re.search(r"(?<!could not be )freed by its finalizer", m) for m in logged), logged
    assert any("could not be freed by its finalizer" in m and "counted" in m for m in logged), logged
    (w,) = [w for w in warned if "not closed" in str(w.message)]
    assert "failed" in str(w.message) and "freed by its finalizer" not in str(w.message)
    assert bn.live_counters()["contexts"] == contexts + 1
    assert session_module.retry_pending() == 0
    assert bn.live_counters()["contexts"] == contexts
