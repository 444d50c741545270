"""E44-E52: timeouts, memory, threads and logging."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from fault_inject.catalog import CATALOG
from fault_inject.catalog.runtime import evaluating_in_another_thread
from pytest_bitnet.bridge import native_log
from pytest_bitnet.plugin.fixtures import Counters, Injector

# A timed-out call must return well within this of its deadline (generous:
# the point is that the deadline ends the call, not this machine's speed).
LATE = 2.0


def test_e44_eval_hang_times_out_and_leaves_the_session_intact(
    bitnet_model: Path, bitnet_inject: Injector, bitnet_counters: Counters
) -> None:
    entry = CATALOG["E44"]
    with bn.BitnetSession.create(bitnet_model) as s, bn.BitnetSession.create(bitnet_model) as fresh:
        tokens = s.tokenize("hang in the middle")
        threads = threading.active_count()
        start = time.monotonic()
        with bitnet_inject("eval.step=hang"), pytest.raises(entry.error_class) as exc:
            s.evaluate(tokens, timeout=0.2)
        assert time.monotonic() - start < 0.2 + LATE
        entry.check(exc.value)
        assert threading.active_count() == threads  # no thread left running
        assert s.n_past() == 0  # not corrupted: the position did not move...
        np.testing.assert_array_equal(s.evaluate(tokens), fresh.evaluate(tokens))  # ...and it computes as before
    assert bitnet_counters.delta() == {}


def test_e45_tokenize_hang_times_out(bitnet_model: Path, bitnet_inject: Injector, bitnet_counters: Counters) -> None:
    entry = CATALOG["E45"]
    with bn.BitnetSession.create(bitnet_model) as s, bn.BitnetSession.create(bitnet_model) as fresh:
        threads = threading.active_count()
        start = time.monotonic()
        with bitnet_inject("tokenize.step=hang"), pytest.raises(entry.error_class) as exc:
            s.tokenize("hang here", timeout=0.2)
        assert time.monotonic() - start < 0.2 + LATE
        entry.check(exc.value)
        assert threading.active_count() == threads
        np.testing.assert_array_equal(s.tokenize("fine now"), fresh.tokenize("fine now"))
    assert bitnet_counters.delta() == {}


def test_e46_ordinary_work_under_a_timeout_equals_untimed(bitnet_model: Path, bitnet_counters: Counters) -> None:
    prompt = "ordinary work under a deadline"
    with bn.BitnetSession.create(bitnet_model, timeout=30.0) as timed, \
            bn.BitnetSession.create(bitnet_model, timeout=float("inf")) as untimed:
        tokens = timed.tokenize(prompt)
        np.testing.assert_array_equal(tokens, untimed.tokenize(prompt))
        np.testing.assert_array_equal(timed.evaluate(tokens, timeout=5.0), untimed.evaluate(tokens))
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("alloc=oom")
def test_e47_out_of_memory_during_create(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E47"]
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model)
    entry.check(exc.value)  # "out of memory", and lower n_ctx
    assert bitnet_counters.delta() == {}


def test_e48_out_of_memory_during_eval_session_still_works(
    bitnet_model: Path, bitnet_inject: Injector, bitnet_counters: Counters
) -> None:
    entry = CATALOG["E48"]
    with bn.BitnetSession.create(bitnet_model) as s, bn.BitnetSession.create(bitnet_model) as fresh:
        tokens = s.tokenize("memory runs out")
        with bitnet_inject("alloc=oom"), pytest.raises(entry.error_class) as exc:
            s.evaluate(tokens)
        entry.check(exc.value)
        assert s.n_past() == 0
        np.testing.assert_array_equal(s.evaluate(tokens), fresh.evaluate(tokens))
    assert bitnet_counters.delta() == {}


def test_e49_fail_each_allocation_in_turn(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E49"]

    def lifecycle() -> None:
        with bn.BitnetSession.create(bitnet_model, n_ctx=64) as s:
            s.evaluate(s.tokenize("What is 2+2?"))

    # Fails allocation 1, then 2, ... until a run allocates without failing;
    # each run must raise OutOfMemory (or succeed) and leak nothing.
    report = fi.sweep("alloc", lifecycle, action="oom", expected=entry.error_class)
    assert report.ok, report.describe(failures_only=True)
    assert report.sites > 10, report.summary()
    assert bitnet_counters.delta() == {}


def test_e50_two_threads_on_one_session(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E50"]
    with bn.BitnetSession.create(bitnet_model) as s, bn.BitnetSession.create(bitnet_model) as fresh:
        tokens = s.tokenize("two threads, one session")
        want = fresh.evaluate(tokens)
        with evaluating_in_another_thread(s, tokens) as first:  # thread A is inside evaluate
            with pytest.raises(entry.error_class) as exc:
                s.tokenize("meanwhile")  # thread B is refused
        entry.check(exc.value)
        assert "error" not in first, first.get("error")  # A was not disturbed...
        np.testing.assert_array_equal(first["logits"], want)  # ...nor its result corrupted
    assert bitnet_counters.delta() == {}


def test_e51_threads_with_their_own_sessions(bitnet_model: Path, bitnet_counters: Counters) -> None:
    with bn.BitnetSession.create(bitnet_model) as s:
        tokens = s.tokenize("parallel sessions agree")
        want = s.evaluate(tokens)
    results: list[np.ndarray] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            with bn.BitnetSession.create(bitnet_model) as mine:
                for _ in range(5):
                    mine.reset()
                    results.append(mine.evaluate(tokens))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, name=f"E51-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(results) == 20, failures
    for logits in results:
        np.testing.assert_array_equal(logits, want)
    assert bitnet_counters.delta() == {}


LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[(ERROR|WARN|INFO|DEBUG|TRACE)\] \[[\w.-]+\] .+")


@pytest.fixture
def native_log_level() -> Iterator[None]:
    """Restores the native log level a test changes."""
    saved = native_log.native_level()
    yield
    native_log.set_native_level(saved)


def test_e52_native_errors_are_logged_in_the_documented_format(
    bitnet_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, native_log_level: None, bitnet_counters: Counters
) -> None:
    entry = CATALOG["E52"]
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet")
    missing = tmp_path / "absent.gguf"
    native_log.set_native_level("warn")
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(missing)
    entry.check(exc.value)
    native = [r for r in caplog.records if r.name == "pytest_bitnet.native"]
    assert [r for r in native if r.levelno == logging.ERROR and str(missing) in r.getMessage()], caplog.text
    assert all(LOG_LINE.match(r.getMessage()) for r in native), caplog.text

    # At native level "error", nothing below ERROR reaches Python.
    caplog.clear()
    native_log.set_native_level("error")
    with bn.BitnetSession.create(bitnet_model) as s:
        s.tokenize("quiet")
    assert not [r for r in caplog.records if r.name == "pytest_bitnet.native" and r.levelno < logging.ERROR]
    assert bitnet_counters.delta() == {}
