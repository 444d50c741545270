"""The counters registry: each session's identity, creation stack and end (issue 20, items 2-4)."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet.bridge import counters
from pytest_bitnet.bridge import session as session_module


@pytest.fixture
def mark() -> Iterator[int]:
    previous = counters.track_creation(True)  # on already under the plugin; on for -p no:bitnet too
    m = counters.watch()
    try:
        yield m
    finally:
        counters.unwatch(m)
        counters.track_creation(previous)


def _one(after: int) -> counters.Tracked:
    (rec,) = counters.tracked(after)
    return rec


def test_a_session_has_an_identity_a_stack_and_an_end(tiny_model: Path, mark: int) -> None:
    s = bn.BitnetSession.create(tiny_model)
    rec = _one(mark)
    assert rec.state == counters.OPEN and rec.serial > mark and rec.what == repr(s)
    assert rec.stack[-1].name == "test_a_session_has_an_identity_a_stack_and_an_end"
    assert rec.footprint["contexts"] == 1 and rec.footprint["bytes"] > 0
    s.close()
    assert _one(mark).state == counters.CLOSED
    (end,) = counters.ends(mark)
    assert end.serial == rec.serial and end.state == counters.CLOSED
    assert end.delta["contexts"] == -1 and end.delta["bytes"] == -rec.footprint["bytes"]


@pytest.mark.bitnet_allow_leaks  # drops sessions on purpose: the finalizer is what is tested
def test_the_finalizer_records_a_free_and_a_failed_free(tiny_model: Path, mark: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        s = bn.BitnetSession.create(tiny_model)
        del s
        gc.collect()
        assert _one(mark).state == counters.FINALIZED
        m2 = counters.mark()
        with fi.inject("free_context=1*fail"):
            s = bn.BitnetSession.create(tiny_model)
            del s
            gc.collect()
        assert _one(m2).state == counters.PENDING
        assert [e.state for e in counters.ends(m2)] == [counters.PENDING]
        assert session_module.retry_pending() == 0
        assert _one(m2).state == counters.FINALIZED
        assert [(e.state, e.delta["contexts"]) for e in counters.ends(m2)] == [(counters.PENDING, 0), (counters.FINALIZED, -1)]


def test_ended_sessions_are_forgotten_once_no_reader_watches(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A long run keeps only what is alive: nothing grows with closed sessions.
    # A registry of its own: the plugin's reader watches the real one.
    reg = counters._Registry()
    monkeypatch.setattr(counters, "_REGISTRY", reg)
    counters.track_creation(True)
    m = counters.watch()
    kept = bn.BitnetSession.create(tiny_model)
    for _ in range(20):
        bn.BitnetSession.create(tiny_model).close()
    assert len(counters.tracked(m)) == 21 and len(counters.ends(m)) == 20  # kept while watched
    counters.unwatch(m)
    assert list(reg.records) == [counters.tracked(0)[0].serial] and reg.ends == []  # the open one only
    m = counters.watch()
    kept.close()
    assert [r.state for r in counters.tracked(0)] == [counters.CLOSED]
    counters.unwatch(m)
    assert reg.records == {} and reg.ends == [] and not reg.watchers


@pytest.mark.bitnet_allow_leaks  # drops sessions on purpose, in threads: their finalizers are what is tested
def test_finalizers_in_other_threads_while_the_registry_is_read(tiny_model: Path, mark: int) -> None:
    # Finalizers run inside any allocation of any thread, also while a reader
    # holds the registry's lock: they only append, and nothing deadlocks or
    # is lost.  Bounded and repeated, not timed.
    n_threads, per_thread = 3, 4
    errs: list[BaseException] = []
    stop = threading.Event()

    def drop() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                for _ in range(per_thread):
                    s = bn.BitnetSession.create(tiny_model, n_ctx=32)
                    s.tokenize("dropped")
                    del s
        except BaseException as exc:  # pragma: no cover - reported below
            errs.append(exc)

    def read() -> None:
        while not stop.is_set():
            counters.tracked(mark)
            counters.ends(mark)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=drop) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    gc.collect()
    assert not errs
    recs = counters.tracked(mark)
    assert len(recs) == n_threads * per_thread and {r.state for r in recs} == {counters.FINALIZED}
    assert len({r.serial for r in recs}) == len(recs)
    # every end recorded once (each delta is the global counters' change across
    # that free, so concurrent frees may each see the others': not summed here)
    assert sorted(e.serial for e in counters.ends(mark)) == [r.serial for r in recs]


# ---- sources of counters beside the bridge's ----------------------------------------------


def test_a_counter_source_is_merged_and_leak_checked_while_added() -> None:
    from pytest_bitnet.bridge.counters import LEAK_COUNTERS as imported_early  # as leak checks import it

    value = {"test_widgets": 2}
    counters.add_source(["test_widgets"], lambda: value)
    try:
        assert counters.live_counters()["test_widgets"] == 2
        assert "test_widgets" in imported_early and imported_early[-1] == "test_widgets"  # a live view
        before = counters.live_counters()
        value["test_widgets"] = 3
        assert counters.delta(before, counters.live_counters()) == {"test_widgets": 1}
        with pytest.raises(ValueError, match=r"'test_widgets' taken already .*give each counter a name of its own"):
            counters.add_source(["test_widgets"], lambda: value)
        with pytest.raises(ValueError, match=r"'contexts' taken already"):
            counters.add_source(["contexts"], lambda: {"contexts": 0})
    finally:
        counters.remove_source(["test_widgets"])
    assert "test_widgets" not in counters.live_counters()
    assert tuple(imported_early) == tuple(c for c in counters.COUNTERS if c not in counters.MONOTONIC_COUNTERS)


def test_a_source_reading_other_names_is_an_error_naming_it() -> None:
    counters.add_source(["test_gadgets"], lambda: {"gadgets": 1})
    try:
        with pytest.raises(RuntimeError, match=r"counter source \('test_gadgets',\) read \['gadgets'\]"):
            counters.live_counters()
    finally:
        counters.remove_source(["test_gadgets"])


def test_an_object_recorded_by_identity_carries_its_stack_and_ends_closed() -> None:
    previous = counters.track_creation(True)
    try:
        mark = counters.watch()
        serial = counters.record_object("widget 1", {"test_widgets": 1}, skip=0)  # made here
        [rec] = counters.tracked(mark)
        assert (rec.serial, rec.what, rec.state, rec.footprint) == (serial, "widget 1", counters.OPEN, {"test_widgets": 1})
        assert rec.stack[-1].line.endswith("# made here")
        counters.end_object(serial, {"test_widgets": -1})
        assert counters.tracked(mark)[0].state == counters.CLOSED
        assert [(e.serial, e.delta) for e in counters.ends(mark)] == [(serial, {"test_widgets": -1})]
        counters.unwatch(mark)
    finally:
        counters.track_creation(previous)
