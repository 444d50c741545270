"""E27-E31: after a failure, nothing leaks and what survives still works."""

from __future__ import annotations

import gc
import warnings

import numpy as np

import pytest_bitnet as bn

from .. import arming
from ..sweep import sweep
from ._core import Scenario, engine_point, entry

# Points a create passes through, with the action each sweep performs there.
_CREATE_POINTS = (("init_context", "fail"), ("load.step", "fail"), ("alloc", "oom"))


@entry("E27", "cleanup", "every failure point of create → counters unchanged",
       expect="BitnetError")
def e27(s: Scenario) -> None:
    """sweep init_context, load.step and alloc over create + close: fail hit 1, 2, 3, ... in turn"""
    s.session().close()  # the backend serves creates at all (the stub raises here)

    def create_close() -> None:
        s.session(n_ctx=64).close()

    for point, action in _CREATE_POINTS:
        if not s.reaches(point):
            continue
        report = sweep(point, create_close, action=action)
        s.check(report.ok, report.describe(failures_only=True))
        s.check(report.sites > 0, f"{point}: no hit during create")


@entry("E28", "cleanup", "after a tokenize failure the session still works; nothing leaked",
       expect="InferenceError", inject="tokenize.fill=1*fail", fragments=("FILL PHASE",))
def e28(s: Scenario) -> None:
    """session.tokenize fails once (fill pass), then the same call succeeds"""
    sess = s.session()
    s.fails(sess.tokenize, "hello world")
    again = sess.tokenize("hello world")
    fresh = s.session().tokenize("hello world")
    s.check(list(again) == list(fresh), "the session tokenizes differently after the failure")


@entry("E29", "cleanup", "after an eval failure the session still works; position (n_past) unchanged",
       expect="InferenceError", inject="eval.step=1*fail", fragments=("evaluate", "eval.step"),
       not_for=engine_point("eval.step"))
def e29(s: Scenario) -> None:
    """session.evaluate fails in its first layer, then the same call succeeds"""
    sess = s.session()
    tokens = [1, 5, 7, 9]
    s.fails(sess.evaluate, tokens)
    s.check(sess.n_past() == 0, f"the failed evaluation moved n_past to {sess.n_past()}")
    again = sess.evaluate(tokens)
    fresh = s.session().evaluate(tokens)
    s.check(np.array_equal(again, fresh), "logits after the failure differ from a fresh session's")
    s.check(sess.n_past() == len(tokens), "n_past is wrong after the retry")


# Specs cycled by E30: one per error path a session's lifecycle can take.
_CYCLE = (
    "init_context=fail", "load.step=2*off->1*fail", "tokenize.query=fail", "tokenize.fill=fail",
    "tokenize.step=fail", "eval.query=fail", "eval.fill=fail", "eval.step=1*off->1*fail",
    "eval.logits=nan", "eval.fill=grow(2)", "alloc=20*off->1*oom", "free_context=1*fail",
)  # fmt: skip


@entry("E30", "cleanup", "100 iterations cycling error paths → counters back to baseline",
       expect="BitnetError")
def e30(s: Scenario) -> None:
    """100 × (arm one of 12 specs — those that reach the backend; create → tokenize → evaluate → close; disarm)"""
    s.session().close()
    baseline = bn.live_counters()
    cycle = [spec for spec in _CYCLE if s.reaches(spec.partition("=")[0])]
    for i in range(100):
        spec = cycle[i % len(cycle)]
        with arming.inject(spec, source=f"E30 iteration {i}"):
            sess = None
            try:
                sess = bn.BitnetSession.create(s.model, n_ctx=64, **s.backend_args())
                sess.evaluate(sess.tokenize("cycle"))
                sess.close()
            except bn.errors.BitnetError as exc:
                s.errors_seen.append(exc)
        if sess is not None and not sess.closed:
            sess.close()  # free_context failed once: the retry frees it
        now = bn.live_counters()
        leaked = {k: now[k] - baseline[k] for k in ("contexts", "sessions", "models", "bytes") if now[k] != baseline[k]}
        s.check(not leaked, f"iteration {i} ({spec}) leaked {leaked}")
    s.check(len(s.errors_seen) >= 90, f"only {len(s.errors_seen)} of 100 iterations failed: the specs did not fire")


@entry("E31", "cleanup", "`free_context=fail` → close() raises CleanupFailed, object still counted, retry frees it; finalizer only warns",
       expect="CleanupFailed", fragments=("close failed", "free_context"))
def e31(s: Scenario) -> None:
    """close() with free_context failing once; close() again; an unclosed session collected"""
    before = bn.live_counters()["contexts"]
    sess = s.session()
    alive = bn.live_counters()["contexts"]
    with s.inject("free_context=1*fail"):
        s.fails(sess.close)
    s.check(not sess.closed and bn.live_counters()["contexts"] == alive, "a failed close must keep the session alive and counted")
    s.check(len(sess.tokenize("still usable")) > 1, "the session does not work after a failed close")
    sess.close()
    s.check(sess.closed and bn.live_counters()["contexts"] == before, "the retry did not free the context")
    dropped = bn.BitnetSession.create(s.model, **s.backend_args())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del dropped
        gc.collect()
    s.check(any(issubclass(w.category, ResourceWarning) and "not closed" in str(w.message) for w in caught),
            "the finalizer of an unclosed session did not warn")
    s.check(bn.live_counters()["contexts"] == before, "the finalizer did not free the context")
