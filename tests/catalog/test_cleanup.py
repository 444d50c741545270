"""E27-E31: after a failure nothing leaks, and what survives still works."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from fault_inject.catalog import CATALOG
from pytest_bitnet.plugin.fixtures import Counters, Injector


def test_e27_every_failure_point_of_create_leaks_nothing(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E27"]

    def create_and_close() -> None:
        with bn.BitnetSession.create(bitnet_model, n_ctx=64):
            pass

    # Fail hit 1 of the point, then hit 2, ... until a run fires nothing;
    # every run must raise a BitnetError (or succeed) and leak nothing.
    for point, action in (("init_context", "fail"), ("load.step", "fail"), ("alloc", "oom")):
        report = fi.sweep(point, create_and_close, action=action, expected=entry.error_class)
        assert report.ok, report.describe(failures_only=True)
        assert report.sites > 0, f"{point} was never hit during create"
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("tokenize.fill=1*fail")
def test_e28_session_works_after_a_tokenize_failure(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E28"]
    with bn.BitnetSession.create(bitnet_model) as s, bn.BitnetSession.create(bitnet_model) as fresh:
        with pytest.raises(entry.error_class) as exc:
            s.tokenize("hello world")  # the one injected failure
        entry.check(exc.value)
        np.testing.assert_array_equal(s.tokenize("hello world"), fresh.tokenize("hello world"))
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("eval.step=1*fail")
def test_e29_session_works_after_an_eval_failure(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E29"]
    tokens = [1, 5, 7, 9]
    with bn.BitnetSession.create(bitnet_model) as s, bn.BitnetSession.create(bitnet_model) as fresh:
        with pytest.raises(entry.error_class) as exc:
            s.evaluate(tokens)  # fails in its first layer
        entry.check(exc.value)
        assert s.n_past() == 0  # position unchanged
        np.testing.assert_array_equal(s.evaluate(tokens), fresh.evaluate(tokens))
        assert s.n_past() == len(tokens)
    assert bitnet_counters.delta() == {}


# One spec per error path a session's lifecycle can take.
CYCLE = (
    "init_context=fail", "load.step=2*off->1*fail", "tokenize.query=fail", "tokenize.fill=fail",
    "tokenize.step=fail", "eval.query=fail", "eval.fill=fail", "eval.step=1*off->1*fail",
    "eval.logits=nan", "eval.fill=grow(2)", "alloc=20*off->1*oom", "free_context=1*fail",
)  # fmt: skip


def test_e30_hundred_iterations_cycling_error_paths(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E30"]
    failures = 0
    for i in range(100):
        spec = CYCLE[i % len(CYCLE)]
        s = None
        with fi.inject(spec):
            try:
                s = bn.BitnetSession.create(bitnet_model, n_ctx=64)
                s.evaluate(s.tokenize("cycle"))
                s.close()
            except entry.error_class:
                failures += 1
        if s is not None and not s.closed:
            s.close()  # free_context failed once: the retry frees it
        assert bitnet_counters.delta() == {}, f"iteration {i} ({spec}) leaked"
    assert failures >= 90, f"only {failures} of 100 iterations failed: the specs did not fire"


@pytest.mark.bitnet_allow_leaks  # drops a session on purpose: the finalizer is part of E31
def test_e31_failed_close_keeps_the_session_for_a_retry(bitnet_model: Path, bitnet_inject: Injector, bitnet_counters: Counters) -> None:
    entry = CATALOG["E31"]
    s = bn.BitnetSession.create(bitnet_model)
    alive = bn.live_counters()["contexts"]
    with bitnet_inject("free_context=1*fail"), pytest.raises(entry.error_class) as exc:
        s.close()
    entry.check(exc.value)
    assert not s.closed and bn.live_counters()["contexts"] == alive  # still open, still counted
    assert len(s.tokenize("still usable")) > 1
    s.close()  # the retry frees it
    assert s.closed and bitnet_counters.delta() == {}

    # A session never closed: its finalizer frees it, and only warns.
    dropped = bn.BitnetSession.create(bitnet_model)
    with pytest.warns(ResourceWarning, match="not closed"):
        del dropped
        gc.collect()
    assert bitnet_counters.delta() == {}

