"""The fault engine: registry, triggers, actions, scoping, counters, API, bad input.

Everything runs against the real bridge and reference backend: an armed
point changes what a real call does, and the leak check of conftest.py
runs after every test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from fault_inject import arming
from pytest_bitnet import errors
from pytest_bitnet.bridge.abi import ffi, lib
from pytest_bitnet.bridge.counters import LEAK_COUNTERS

from ..native_builds import LOADER_SYMBOLS

ROOT = Path(__file__).resolve().parents[2]

SOCKET_SYMBOLS = LOADER_SYMBOLS  # one list: tests/native_builds.py


@pytest.fixture(autouse=True)
def _nothing_stays_armed() -> Iterator[None]:
    assert not fi.armed(), "a previous test left points armed"
    yield
    fi.disarm_all()


def counters() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


# ---- the registry ------------------------------------------------------------------------


def test_compiled_in() -> None:
    assert fi.compiled_in()


def test_registry_has_every_expected_point() -> None:
    names = {p.name for p in fi.points()}
    expected = {
        "dlopen",
        "init_context",
        "load.step",
        "free_context",
        "tokenize.query",
        "tokenize.fill",
        "tokenize.step",
        "eval.query",
        "eval.fill",
        "eval.step",
        "eval.logits",
        "alloc",
        "eval_gpu",
        "session.create",
        "session.free",
        "session.tokenize",
        "session.eval",
    } | {f"dlsym.{s}" for s in SOCKET_SYMBOLS}
    assert expected <= names, expected - names
    assert len(names) == len(fi.points()), "a point is registered twice"


def test_every_point_is_described_with_a_default_code() -> None:
    codes = set(fi.error_codes().values())
    for p in fi.points():
        assert len(p.description) > 20, p
        assert p.default_code in codes, p
        assert p.default_error.startswith("BITNET_E_")
        assert {"off", "fail", "crash"} <= p.actions, p
    by = {p.name: p for p in fi.points()}
    assert by["alloc"].default_error == "BITNET_E_OOM"
    assert by["free_context"].default_error == "BITNET_E_CLEANUP"
    assert by["dlsym.bitnet_cpp_init_context"].default_error == "BITNET_E_SYMBOL_MISSING"
    assert "nan" in by["eval.logits"].actions and "nan" not in by["eval.step"].actions
    assert "missing" in by["dlsym.bitnet_cpp_eval_gpu"].actions
    assert "grow" in by["eval.fill"].actions


def test_native_index_lookup_agrees() -> None:
    for p in fi.points():
        assert lib.bitnet_fault_point_index(p.name.encode()) == p.index
    assert lib.bitnet_fault_point_index(b"no.such.point") == -1


# ---- actions at real call sites ----------------------------------------------------------------


def test_oom_from_the_third_allocation_fails_create_cleanly(tiny_model: Path) -> None:
    base = counters()
    with fi.inject("alloc=2*off->oom") as armed:
        with pytest.raises(errors.OutOfMemory) as info:
            bn.BitnetSession.create(tiny_model)
    assert counters() == base
    msg = str(info.value)
    assert "injected fault at 'alloc' (oom, hit 3)" in msg
    assert "could not allocate" in msg  # names the size and what it was for
    report = armed.disarm()
    assert report.points["alloc"].hits == 3 and report.points["alloc"].fired == 1
    assert report.never_hit == ()


def test_chain_fails_exactly_one_hit(tiny_model: Path) -> None:
    # eval.step is reached once per layer (the tiny model has 2)
    with bn.BitnetSession.create(tiny_model) as s:
        toks = s.tokenize("hello world")
        with fi.inject("eval.step=1*off->1*fail->off") as armed:
            with pytest.raises(errors.InferenceError, match=r"injected fault at 'eval.step' \(fail\(-4\), hit 2\)"):
                s.evaluate(toks)
            assert s.n_past() == 0  # a failed eval leaves the sequence alone
            logits = s.evaluate(toks)  # hits 3 and 4: off
        assert armed.hits("eval.step") == 4 and armed.fired("eval.step") == 1
        assert np.isfinite(logits).all() and s.n_past() == len(toks)


def test_fail_with_explicit_code_and_code_name(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        with fi.inject("tokenize.step=fail(-10)"):
            with pytest.raises(errors.InternalError, match=r"'tokenize.step' \(fail\(-10\), hit 1\)"):
                s.tokenize("hello")
        with fi.inject("tokenize.step=fail(unsupported)"):
            with pytest.raises(errors.Unsupported):
                s.tokenize("hello")
        assert len(s.tokenize("hello")) > 1  # disarmed: works again


def test_default_code_of_the_point(tiny_model: Path) -> None:
    with fi.inject("load.step=fail"):
        with pytest.raises(errors.ModelLoadError, match=r"load aborted while reading .*injected fault at 'load.step' \(fail\(-3\), hit 1\)"):
            bn.BitnetSession.create(tiny_model)


def test_oom_action_at_a_non_alloc_point(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s, fi.inject("eval.step=oom"):
        with pytest.raises(errors.OutOfMemory, match="out of memory simulated"):
            s.evaluate([1, 2, 3])


@pytest.mark.parametrize("backend", ["reference", "dlopen"])  # dlopen: the point fires inside the library
def test_nan_logits_are_reported_by_the_finiteness_check(tiny_model: Path, backend: str) -> None:
    with bn.BitnetSession.create(tiny_model, backend=backend) as s:
        toks = s.tokenize("What is 2+2?")
        with fi.inject("eval.logits=nan"):
            with pytest.raises(errors.InferenceError) as info:
                s.evaluate(toks)
        msg = str(info.value)
        assert "injected fault at 'eval.logits' (nan, hit 1)" in msg
        assert "non-finite logit (NaN)" in msg and f"position {len(toks) - 1}" in msg
        assert s.n_past() == 0
        assert np.isfinite(s.evaluate(toks)).all()


def test_delay_slows_each_hit_and_then_succeeds(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        toks = s.tokenize("hi")
        with fi.inject("eval.step=delay(40)") as armed:
            t0 = time.perf_counter()
            s.evaluate(toks)
            took = time.perf_counter() - t0
        assert armed.hits("eval.step") == 2 and armed.fired("eval.step") == 2
        assert took >= 0.075


def test_delay_is_cut_by_the_callers_deadline(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s, fi.inject("eval.step=delay(5000)"):
        t0 = time.perf_counter()
        with pytest.raises(errors.OperationTimeout, match=r"injected fault at 'eval.step' \(delay\(5000\), hit 1\)"):
            s.evaluate([1, 2], timeout=0.15)
        assert time.perf_counter() - t0 < 0.15 + 0.5


def test_hang_wakes_at_the_deadline_without_leaking_a_thread(tiny_model: Path) -> None:
    threads = threading.active_count()
    with bn.BitnetSession.create(tiny_model) as s:
        toks = s.tokenize("hello")
        with fi.inject("eval.step=hang"):
            t0 = time.perf_counter()
            with pytest.raises(errors.OperationTimeout) as info:
                s.evaluate(toks, timeout=0.2)
            took = time.perf_counter() - t0
        assert 0.2 <= took < 0.2 + 0.1 + 0.2  # deadline + 0.1 s, with CI slack
        assert "injected fault at 'eval.step' (hang, hit 1)" in str(info.value)
        assert s.n_past() == 0
        assert s.evaluate(toks).shape[0] == len(toks)  # not corrupted
    assert threading.active_count() == threads


@pytest.mark.parametrize("backend", ["reference", "dlopen"])  # dlopen: a hang inside the library
def test_hang_wakes_on_cancel(tiny_model: Path, backend: str) -> None:
    with bn.BitnetSession.create(tiny_model, timeout=math.inf, backend=backend) as s, fi.inject("tokenize.step=hang"):
        timer = threading.Timer(0.1, s.cancel)
        timer.start()
        t0 = time.perf_counter()
        with pytest.raises(errors.OperationTimeout, match="cancel"):
            s.tokenize("hello there")
        timer.join()
        assert time.perf_counter() - t0 < 2.0


def test_hang_without_deadline_or_cancel_is_refused(tiny_model: Path) -> None:
    # per-call functions have no cancel flag: with no deadline a hang could
    # never end, so it fails at once instead (documented)
    with fi.inject("load.step=hang"):
        with pytest.raises(errors.BitnetError, match="refusing to hang"):
            lib.bitnet_bridge_set_call_timeout(0)  # no deadline on this thread
            lib_tokenize(tiny_model)


def lib_tokenize(path: Path) -> None:
    n = ffi.new("int32_t *")
    err = ffi.new("char[]", 512)
    rc = lib.crossval_bitnet_tokenize(str(path).encode(), b"hi", 1, 0, ffi.NULL, 0, n, err, 512)
    if rc:
        raise errors.error_for_code(rc)(ffi.string(err).decode(), None)


def test_crash_aborts_the_process(tiny_model: Path) -> None:
    code = f"import fault_inject as fi, pytest_bitnet as bn\nfi.arm('eval.step=crash')\ns = bn.BitnetSession.create({str(tiny_model)!r})\ns.evaluate([1])\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode < 0 or proc.returncode == 134, proc
    assert "injected fault at 'eval.step' (crash, hit 1)" in proc.stderr


# ---- probability and seeds ----------------------------------------------------------------------


PROB_SCRIPT = """
import pytest_bitnet as bn, fault_inject as fi
from pytest_bitnet import errors
out = []
with bn.BitnetSession.create({path!r}) as s:
    with fi.inject("tokenize.step=30%fail", seed={seed}) as a:
        for i in range(60):
            try:
                s.tokenize("hello world " + str(i))
                out.append(".")
            except errors.InferenceError:
                out.append("x")
print("".join(out), a.hits("tokenize.step"), a.fired("tokenize.step"))
"""


def run_prob(path: Path, seed: int) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", PROB_SCRIPT.format(path=str(path), seed=seed)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_probability_is_reproducible_from_the_seed(tiny_model: Path) -> None:
    a, b, c = run_prob(tiny_model, 1234), run_prob(tiny_model, 1234), run_prob(tiny_model, 99)
    assert a == b  # same seed, another process: same faults
    assert a != c  # another seed: other faults
    pattern, n_hits, n_fired = a.split()
    assert 0 < pattern.count("x") < len(pattern)
    assert 0.15 < int(n_fired) / int(n_hits) < 0.45  # ~30%
    # and in this process, with the seed from the environment variable
    out = []
    os.environ["BITNET_INJECT_SEED"] = "1234"
    try:
        with bn.BitnetSession.create(tiny_model) as s, fi.inject("tokenize.step=30%fail") as armed:
            assert armed.seed == 1234
            for i in range(60):
                try:
                    s.tokenize("hello world " + str(i))
                    out.append(".")
                except errors.InferenceError:
                    out.append("x")
    finally:
        del os.environ["BITNET_INJECT_SEED"]
    assert "".join(out) == pattern


def test_probability_and_count_compose(tiny_model: Path) -> None:
    # at most 3 firings, each hit with chance 50%
    with bn.BitnetSession.create(tiny_model) as s, fi.inject("tokenize.step=50%3*fail", seed=5) as armed:
        failures = 0
        for i in range(40):
            try:
                s.tokenize(f"text {i}")
            except errors.InferenceError:
                failures += 1
        assert failures == 3 == armed.fired("tokenize.step")


def test_summary_lists_the_points_hit_and_counts_the_rest_of_a_pattern(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as session:
        armed = fi.arm("*=off", seed=1)
        session.tokenize("hello")
        report = armed.disarm()
    text = report.summary()
    assert text.startswith("*=off (seed 1): ") and "tokenize.fill: 1 hits, 0 fired" in text
    idle = sum(1 for r in report.points.values() if not r.hits)
    assert idle > 20 and text.endswith(f"; {idle} more armed, not hit")
    assert "eval.fill" not in text  # a point nothing reached is counted, not listed


def test_random_seed_is_recorded() -> None:
    armed = fi.arm("eval_gpu=25%fail")
    assert isinstance(armed.seed, int)
    assert str(armed.seed) in armed.disarm().summary()


# ---- thread scope ---------------------------------------------------------------------------------


def tokenize_in_thread(path: Path, result: dict[str, Any], key: str, gate: threading.Event | None = None) -> threading.Thread:
    def run() -> None:
        if gate:
            gate.wait(5)
        try:
            with bn.BitnetSession.create(path) as s:
                result[key] = s.tokenize("hello from " + key)
        except BaseException as exc:  # recorded for the assertion
            result[key] = exc

    t = threading.Thread(target=run, name=key)
    t.start()
    return t


def test_thread_scope_fires_only_on_the_arming_thread(tiny_model: Path) -> None:
    result: dict[str, Any] = {}
    with fi.inject("tokenize.step=fail", thread=True) as armed:
        tokenize_in_thread(tiny_model, result, "other").join()
        with bn.BitnetSession.create(tiny_model) as s, pytest.raises(errors.InferenceError, match="injected fault"):
            s.tokenize("hello from main")
    assert isinstance(result["other"], np.ndarray)
    report = armed.disarm()
    assert report.thread_scoped and report.points["tokenize.step"].hits == 1  # the other thread's hits do not count


def test_thread_scope_armed_from_another_thread(tiny_model: Path) -> None:
    result: dict[str, Any] = {}
    ready, done = threading.Event(), threading.Event()

    def armer() -> None:
        with fi.inject("tokenize.step=fail", thread=True):
            ready.set()
            tokenize_in_thread(tiny_model, result, "child").join()  # another thread: unaffected
            try:
                with bn.BitnetSession.create(tiny_model) as s:
                    result["armer"] = s.tokenize("x")
            except errors.InferenceError as exc:
                result["armer"] = exc
            done.wait(5)

    t = threading.Thread(target=armer)
    t.start()
    ready.wait(5)
    with bn.BitnetSession.create(tiny_model) as s:
        main_tokens = s.tokenize("main thread")
    done.set()
    t.join()
    assert isinstance(main_tokens, np.ndarray)
    assert isinstance(result["child"], np.ndarray)
    assert isinstance(result["armer"], errors.InferenceError)


def test_unscoped_fires_on_every_thread(tiny_model: Path) -> None:
    result: dict[str, Any] = {}
    with fi.inject("tokenize.step=fail") as armed:
        threads = [tokenize_in_thread(tiny_model, result, f"t{i}") for i in range(2)]
        for t in threads:
            t.join()
    assert all(isinstance(result[f"t{i}"], errors.InferenceError) for i in range(2))
    assert armed.fired("tokenize.step") == 2


def test_arming_while_other_threads_run_calls(tiny_model: Path) -> None:
    stop = threading.Event()
    outcomes: dict[str, int] = {"ok": 0, "injected": 0}
    bad: list[BaseException] = []

    def worker(s: bn.BitnetSession) -> None:
        while not stop.is_set():
            try:
                s.evaluate(s.tokenize("some words to tokenize"))
                s.reset()
                outcomes["ok"] += 1
            except (errors.InferenceError, errors.OutOfMemory) as exc:
                if "injected fault" not in str(exc) and "out of memory" not in str(exc):
                    bad.append(exc)
                outcomes["injected"] += 1
            except BaseException as exc:
                bad.append(exc)

    sessions = [bn.BitnetSession.create(tiny_model) for _ in range(2)]  # one per thread
    threads = [threading.Thread(target=worker, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 1.5
        specs = ["tokenize.step=50%fail", "alloc=10%oom", "eval.step=1*off->fail", "eval_gpu=fail", "*=off"]
        i = 0
        while time.monotonic() < deadline:
            armed = fi.arm(specs[i % len(specs)], seed=i)
            time.sleep(0.002)
            armed.disarm()
            i += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s in sessions:
            s.close()
    assert not bad, bad
    assert outcomes["ok"] > 0


# ---- observability ------------------------------------------------------------------------------


def test_hits_and_fired_survive_disarm_and_reset_on_rearm(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        with fi.inject("eval.step=off"):
            s.evaluate([1, 2])
        assert fi.hits("eval.step") == 2 and fi.fired("eval.step") == 0  # off counts, never fires
        with fi.inject("eval.step=1*off"):
            assert fi.hits("eval.step") == 0
            s.evaluate([3])
        assert fi.hits("eval.step") == 2


def test_unarmed_points_count_nothing(tiny_model: Path) -> None:
    # counters of a point are those of its last arm: an unarmed point's do not move
    before = (fi.hits("tokenize.step"), fi.hits("eval.step"))
    armed = fi.arm("eval_gpu=off")  # something armed: the slow path is taken
    with bn.BitnetSession.create(tiny_model) as s:
        s.evaluate(s.tokenize("x"))
        assert (fi.hits("tokenize.step"), fi.hits("eval.step")) == before
    armed.disarm()


def test_first_firing_keeps_python_stack_and_native_backtrace(tiny_model: Path) -> None:
    def evaluate_here(s: bn.BitnetSession) -> None:
        s.evaluate([1, 2, 3])

    with bn.BitnetSession.create(tiny_model) as s:
        with fi.inject("eval.step=fail") as armed, pytest.raises(errors.InferenceError):
            evaluate_here(s)
        report = armed.disarm()
    pr = report.points["eval.step"]
    assert pr.first_fired_hit == 1
    assert pr.python_stack is not None
    stack = "".join(pr.python_stack)
    assert "evaluate_here" in stack and "in evaluate" in stack
    if sys.platform.startswith("linux"):
        assert pr.native_backtrace and "bitnet_cpp_eval_with_context" in pr.native_backtrace


def test_on_fire_listeners(tiny_model: Path) -> None:
    events: list[fi.FireEvent] = []

    def boom(ev: fi.FireEvent) -> None:
        raise RuntimeError("a broken listener must not break the call")

    unsub = fi.on_fire(events.append)
    unsub_boom = fi.on_fire(boom)
    try:
        with bn.BitnetSession.create(tiny_model) as s, fi.inject("eval.step=1*off->fail(-4)"):
            with pytest.raises(errors.InferenceError):
                s.evaluate([1])
            with pytest.raises(errors.InferenceError):
                s.evaluate([1])
    finally:
        unsub()
        unsub_boom()
    assert [(e.point, e.hit, e.action, e.code, e.first, e.term) for e in events] == [
        ("eval.step", 2, "fail", -4, True, 1),
        ("eval.step", 3, "fail", -4, False, 1),
    ]
    assert events[0].python_stack and not events[1].python_stack
    assert events[0].thread == threading.current_thread().name
    assert events[0].spec == "eval.step=1*off->fail(-4)"
    with bn.BitnetSession.create(tiny_model) as s, fi.inject("eval.step=fail"):
        with pytest.raises(errors.InferenceError):
            s.evaluate([1])
    assert len(events) == 2  # unsubscribed


def test_listener_allocations_do_not_reenter_the_alloc_point(tiny_model: Path) -> None:
    # The listener runs inside bn_malloc's firing and allocates a lot
    # itself; the thread-local guard lets those allocations through.
    inner: list[Any] = []

    def listener(ev: fi.FireEvent) -> None:
        if ev.first:
            inner.append(bn.tokenize(tiny_model, "hello world"))

    unsub = fi.on_fire(listener)
    try:
        # fire inside the tokenizer: backend work runs outside every bridge
        # lock, so the listener may call the bridge (see on_fire's contract)
        with bn.BitnetSession.create(tiny_model) as s:
            with fi.inject("alloc=oom") as armed, pytest.raises(errors.OutOfMemory, match=r"injected fault at 'alloc' \(oom, hit \d+\)"):
                s.tokenize("hello world")
    finally:
        unsub()
    assert len(inner) == 1 and isinstance(inner[0], np.ndarray)
    # the listener's own allocations were neither failed nor counted
    assert armed.fired("alloc") == armed.hits("alloc") <= 2


def test_armed_but_never_hit_is_reported(tiny_model: Path) -> None:
    with pytest.warns(fi.NeverHitWarning, match="armed but never hit: 'eval_gpu'") as record:
        with fi.inject("eval_gpu=fail;tokenize.step=off") as armed, bn.BitnetSession.create(tiny_model) as s:
            s.tokenize("hi")
    assert record[0].filename == __file__  # points at the with statement
    assert armed.disarm().never_hit == ("eval_gpu",)
    with pytest.raises(fi.NeverHit, match="never hit: 'session\\.\\*'"):
        with fi.inject("session.*=fail", strict=True):
            pass
    # an exception from the block wins over the never-hit report
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KeyError), fi.inject("eval_gpu=fail", strict=True):
            raise KeyError("body failed")


def test_wildcard_arms_each_point_with_its_own_chain(tiny_model: Path) -> None:
    with fi.inject("eval.*=1*off") as armed:  # eval.step, eval.logits, ...
        with bn.BitnetSession.create(tiny_model) as s:
            s.evaluate([1])
    assert set(armed.points) >= {"eval.step", "eval.logits", "eval.query", "eval.fill"}
    report = armed.disarm()
    assert report.points["eval.step"].hits == 2 and report.points["eval.logits"].hits == 1
    assert "eval.*" not in report.never_hit


# ---- API misuse: clear errors, never a crash --------------------------------------------------------


def test_unknown_point_is_rejected_with_close_names() -> None:
    with pytest.raises(fi.FaultSpecError, match="unknown fault point 'eval.stp'.*'eval.step'"):
        fi.arm("eval.stp=fail")
    with pytest.raises(fi.UnknownPoint, match="closest: 'alloc'"):
        fi.hits("aloc")
    assert not fi.armed()


def test_arming_twice_is_refused_and_leaves_the_first_arm_alone() -> None:
    first = fi.arm("eval.step=fail")
    with pytest.raises(fi.FaultStateError, match="'eval.step' is already armed by 'eval.step=fail'"):
        fi.arm("alloc=off;eval.step=oom")
    assert fi.armed() == (first,)
    assert lib.bitnet_fault_stats  # the refused spec armed nothing, not even alloc
    st = ffi.new("bitnet_fault_stats_t *")
    lib.bitnet_fault_stats(lib.bitnet_fault_point_index(b"alloc"), st)
    assert st.armed == 0
    first.disarm()


def test_disarm_semantics() -> None:
    with pytest.raises(fi.FaultStateError, match="cannot disarm 'eval.step': it is not armed"):
        fi.disarm("eval.step")
    with pytest.raises(fi.UnknownPoint):
        fi.disarm("no.such")
    with pytest.raises(TypeError, match="an Armed handle or a point name"):
        fi.disarm(42)  # type: ignore[arg-type]
    armed = fi.arm("session.*=fail;eval.step=off")
    part = fi.disarm("session.eval")
    assert set(part.points) == {"session.eval"}
    assert set(a for a in armed.points if armed.active) and "session.eval" not in arming._STATE.owners
    r1 = armed.disarm()
    assert armed.disarm() is r1  # idempotent
    assert set(r1.points) == {"session.create", "session.free", "session.tokenize", "session.eval", "eval.step"}
    assert fi.disarm_all() == []  # nothing armed: no error


def test_disarm_all_also_disarms_native_arms() -> None:
    terms = ffi.new("bitnet_fault_term_t[1]")
    terms[0].probability = 1.0
    assert lib.bitnet_fault_arm(b"eval_gpu", terms, 1, 0, 0, ffi.NULL, ffi.NULL, 0) == 0
    with pytest.raises(fi.FaultStateError, match="already armed"):
        fi.arm("eval_gpu=fail")  # armed from C: the native refusal surfaces
    fi.disarm_all()
    st = ffi.new("bitnet_fault_stats_t *")
    lib.bitnet_fault_stats(lib.bitnet_fault_point_index(b"eval_gpu"), st)
    assert st.armed == 0


def native_arm(pattern: bytes, terms: list[tuple[float, int, int, int]], flags: int = 0) -> tuple[int, str]:
    arr = ffi.new("bitnet_fault_term_t[]", max(1, len(terms)))
    for i, (p, n, a, g) in enumerate(terms):
        arr[i].probability, arr[i].count, arr[i].action, arr[i].arg = p, n, a, g
    err = ffi.new("char[]", 1024)
    rc = lib.bitnet_fault_arm(pattern, arr, len(terms), 1, flags, ffi.NULL, err, 1024)
    if rc == 0:
        lib.bitnet_fault_disarm_all()
    return rc, ffi.string(err).decode()


FAIL, DELAY, GROW, OOM = lib.BITNET_FAULT_FAIL, lib.BITNET_FAULT_DELAY, lib.BITNET_FAULT_GROW, lib.BITNET_FAULT_OOM


@pytest.mark.parametrize(
    ("pattern", "terms", "flags", "fragment"),
    [
        (b"", [(1.0, 0, FAIL, 0)], 0, "pattern is empty"),
        (b"x" * 200, [(1.0, 0, FAIL, 0)], 0, "the limit is 127"),
        (b"eval.step", [], 0, "a chain has 1..16 terms"),
        (b"eval.step", [(1.0, 0, FAIL, 0)] * 17, 0, "a chain has 1..16 terms"),
        (b"eval.step", [(0.0, 0, FAIL, 0)], 0, "probability 0 is out of range"),
        (b"eval.step", [(1.5, 0, FAIL, 0)], 0, "probability 1.5 is out of range"),
        (b"eval.step", [(math.nan, 0, FAIL, 0)], 0, "probability nan is out of range"),
        (b"eval.step", [(1.0, 2**40, FAIL, 0)], 0, "count 1099511627776 is too large"),
        (b"eval.step", [(1.0, 0, 99, 0)], 0, "unknown action 99"),
        (b"eval.step", [(1.0, 0, -1, 0)], 0, "unknown action -1"),
        (b"eval.step", [(1.0, 0, FAIL, 3)], 0, "fail(3): not an error code"),
        (b"eval.step", [(1.0, 0, FAIL, -999)], 0, "fail(-999): not an error code"),
        (b"eval.step", [(1.0, 0, DELAY, -1)], 0, "delay(-1)"),
        (b"eval.step", [(1.0, 0, DELAY, 10**12)], 0, "delay(1000000000000)"),
        (b"eval.fill", [(1.0, 0, GROW, -2)], 0, "grow(-2)"),
        (b"eval.step", [(1.0, 0, OOM, 7)], 0, "'oom' takes no argument"),
        (b"eval.step", [(1.0, 0, FAIL, 0)], 0x10, "unknown flags 0x10"),
        # the closest names are Python's to suggest (fault_inject.spec); the native message says how to list them
        (b"eval.stp", [(1.0, 0, FAIL, 0)], 0, "unknown fault point 'eval.stp': no registered point matches it (bitnet_fault_point_info"),
        (b"sesion.*", [(1.0, 0, FAIL, 0)], 0, "unknown fault point 'sesion.*': no registered point matches it"),
        (b"eval.step", [(1.0, 0, lib.BITNET_FAULT_NAN, 0)], 0, "'eval.step' does not support 'nan'; it supports: off, fail"),
    ],
)
def test_native_arm_refuses_bad_input(pattern: bytes, terms: list[tuple[float, int, int, int]], flags: int, fragment: str) -> None:
    rc, msg = native_arm(pattern, terms, flags)
    assert rc == lib.BITNET_E_INVALID_ARG
    assert fragment in msg, msg


def test_native_null_arguments_are_errors_not_crashes() -> None:
    assert lib.bitnet_fault_arm(ffi.NULL, ffi.NULL, 1, 0, 0, ffi.NULL, ffi.NULL, 0) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_fault_arm(b"alloc", ffi.NULL, 1, 0, 0, ffi.NULL, ffi.NULL, 0) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_fault_disarm(ffi.NULL, ffi.NULL, ffi.NULL, 0) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_fault_disarm(b"alloc", ffi.NULL, ffi.NULL, 0) == lib.BITNET_E_INVALID_ARG  # not armed
    assert lib.bitnet_fault_stats(0, ffi.NULL) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_fault_stats(10**6, ffi.new("bitnet_fault_stats_t *")) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_fault_point_info(-1, ffi.new("bitnet_fault_point_t *")) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_fault_backtrace(-1, ffi.NULL, 0) == 0
    assert lib.bitnet_fault_point_index(ffi.NULL) == -1


def test_bad_seed_values() -> None:
    for seed in (-1, 2**64, 1.5, "abc"):
        with pytest.raises(ValueError, match="invalid seed"):
            fi.arm("eval_gpu=fail", seed=seed)  # type: ignore[arg-type]
    assert not fi.armed()


def test_on_fire_needs_a_callable() -> None:
    with pytest.raises(TypeError):
        fi.on_fire(42)  # type: ignore[arg-type]


# ---- BITNET_INJECT and the command line ----------------------------------------------------------------


def run_py(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


def test_bitnet_inject_is_honoured_outside_pytest(tiny_model: Path) -> None:
    code = (
        "import fault_inject, pytest_bitnet as bn\n"
        f"s = bn.BitnetSession.create({str(tiny_model)!r})\n"
        "try:\n    s.tokenize('hello')\nexcept bn.errors.InferenceError as e:\n    print('FAILED', e)\n"
        "s.close()\n"
    )
    proc = run_py(code, BITNET_INJECT="tokenize.step=fail;eval_gpu=fail")
    assert proc.returncode == 0, proc.stderr
    assert "FAILED" in proc.stdout and "injected fault at 'tokenize.step'" in proc.stdout
    assert "BITNET_INJECT: fault spec 'tokenize.step=fail;eval_gpu=fail'" in proc.stderr
    assert "armed but never hit: 'eval_gpu'" in proc.stderr


def test_bad_bitnet_inject_names_the_variable() -> None:
    proc = run_py("import fault_inject", BITNET_INJECT="alloc=oom->off")
    assert proc.returncode != 0
    assert "invalid fault spec from BITNET_INJECT at column 12" in proc.stderr


def test_cli_run_points_check(tiny_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(
        "import sys, pytest_bitnet as bn\n"
        f"with bn.BitnetSession.create({str(tiny_model)!r}) as s:\n"
        "    try:\n        s.evaluate([1, 2])\n    except bn.errors.InferenceError:\n        sys.exit(7)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "fault_inject", "run", "--spec", "eval.step=1*off->1*fail", str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 7, proc.stderr
    assert "eval.step: 2 hits, 1 fired" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fault_inject", "points"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "eval.logits" in proc.stdout and "compiled in" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "fault_inject", "check", "eval.stpe=fail"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "'eval.step'" in proc.stderr


def test_cli_run_timeout_is_the_programs_default_deadline(tiny_model: Path, tmp_path: Path) -> None:
    # issue 20.21: --timeout bounds every call of the program that names no
    # timeout of its own (settings.configure), here a hang the spec injects
    script = tmp_path / "prog.py"
    script.write_text(
        "import sys, pytest_bitnet as bn\n"
        "from pytest_bitnet.bridge import settings\n"
        "print('DEFAULT', settings.default_timeout())\n"
        f"with bn.BitnetSession.create({str(tiny_model)!r}) as s:\n"
        "    try:\n        s.evaluate([1, 2])\n    except bn.errors.OperationTimeout as exc:\n"
        "        print('TIMEOUT', exc.context.parameters['timeout'])\n        sys.exit(7)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "fault_inject", "run", "--spec", "eval.step=hang"]
    proc = subprocess.run([*run, "--timeout", "0.2", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert "DEFAULT 0.2" in proc.stdout and "TIMEOUT 0.2" in proc.stdout
    proc = subprocess.run([*run, "--timeout", "soon", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "invalid timeout 'soon' from --timeout: expected seconds >= 0" in proc.stderr


# ---- compile-out ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_out_build_says_so(tmp_path: Path, tiny_model: Path) -> None:
    # Build the bridge with BITNET_FAULTS=0 in a scratch copy and use it there.
    import shutil

    for part in ("native", "pytest_bitnet", "fault_inject"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("*.so", "__pycache__", "_bridge.c", "*.o"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {**os.environ, "BITNET_FAULTS": "0"}
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert build.returncode == 0, build.stderr[-2000:]
    code = (
        "import fault_inject as fi, pytest_bitnet as bn, pytest_bitnet.bridge._bridge as b\n"
        f"assert b.__file__.startswith({str(tmp_path)!r}), b.__file__\n"
        "assert not fi.compiled_in()\n"
        "assert any(p.name == 'alloc' for p in fi.points())\n"
        "try:\n    fi.arm('alloc=oom')\nexcept fi.InjectionNotCompiled as e:\n    print('REFUSED', e)\n"
        "print('DISARM_ALL', fi.disarm_all())\n"
        f"s = bn.BitnetSession.create({str(tiny_model)!r}); s.evaluate(s.tokenize('hi')); s.close(); print('WORKS')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED fault injection is not compiled in" in proc.stdout and "BITNET_FAULTS=0" in proc.stdout
    assert "DISARM_ALL []" in proc.stdout and "WORKS" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-c", "import fault_inject"], cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path), "BITNET_INJECT": "alloc=oom"}, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "BITNET_INJECT='alloc=oom' is set, but fault injection is not compiled in" in proc.stderr


# ---- composition: arm(spec, over=wider) ---------------------------------------------------------


def test_arm_over_takes_the_points_it_names_and_gives_them_back(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        wide = fi.arm("tokenize.fill=fail;tokenize.query=off")
        with pytest.raises(fi.FaultStateError, match=r"already armed by 'tokenize.fill=fail;tokenize.query=off'.*over=handle"):
            fi.arm("tokenize.fill=off")
        narrow = fi.arm("tokenize.fill=off", over=wide)
        assert arming.owner_of("tokenize.fill") is narrow and arming.owner_of("tokenize.query") is wide
        s.tokenize("the narrow spec holds tokenize.fill")
        assert (narrow.hits("tokenize.fill"), wide.hits("tokenize.fill"), wide.hits("tokenize.query")) == (1, 0, 1)
        assert wide.active and fi.armed() == (wide, narrow)
        r_narrow = narrow.disarm()
        assert arming.owner_of("tokenize.fill") is wide  # handed back
        with pytest.raises(errors.InferenceError, match="FILL PHASE"):
            s.tokenize("the wide spec has it again")
        assert wide.hits() == {"tokenize.fill": 1, "tokenize.query": 2}
        r_wide = wide.disarm()
        assert r_narrow.hits == {"tokenize.fill": 1} and r_narrow.never_hit == ()
        assert r_wide.hits == {"tokenize.fill": 1, "tokenize.query": 2} and r_wide.fired == {"tokenize.fill": 1, "tokenize.query": 0}
        assert r_wide.points["tokenize.fill"].first_fired_hit == 1
        assert r_wide.overridden == ("tokenize.fill",) and r_wide.never_hit == ()
        s.tokenize("nothing armed")
        assert not fi.armed()


def test_arm_over_counts_hit_numbers_over_every_stretch(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        wide = fi.arm("tokenize.fill=off")
        s.tokenize("hit 1 of the wide spec")
        with fi.inject("tokenize.fill=off", over=wide):
            s.tokenize("the narrow spec's")
        with pytest.raises(errors.InferenceError):
            with fi.inject("tokenize.fill=fail", over=wide):
                s.tokenize("fails")
        s.tokenize("hit 2 of the wide spec")
        assert wide.hits("tokenize.fill") == 2 and wide.disarm().points["tokenize.fill"].first_fired_hit == 0


def test_a_spec_taken_over_for_its_whole_life_is_not_reported_never_hit() -> None:
    wide = fi.arm("eval_gpu=fail")
    fi.arm("eval_gpu=off", over=wide).disarm()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fi.NeverHitWarning)
        report = wide.disarm()
    assert report.never_hit == () and report.overridden == ("eval_gpu",)


def test_three_deep_released_out_of_order(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        a = fi.arm("tokenize.fill=fail(inference)")
        b = fi.arm("tokenize.fill=oom", over=a)
        c = fi.arm("tokenize.fill=off", over=[a, b])
        b.disarm()  # the middle one leaves; c still holds the point
        s.tokenize("c holds it")
        assert arming.owner_of("tokenize.fill") is c and not b.active
        c.disarm()  # back to a, not to b
        with pytest.raises(errors.InferenceError):
            s.tokenize("a again")
        assert (a.hits("tokenize.fill"), b.hits("tokenize.fill"), c.hits("tokenize.fill")) == (1, 0, 1)
        a.disarm()


def test_a_refused_arm_over_takes_nothing(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        wide = fi.arm("tokenize.fill=fail")
        other = fi.arm("eval.query=fail")
        with pytest.raises(fi.FaultStateError, match="'eval.query' is already armed by 'eval.query=fail'"):
            fi.arm("tokenize.fill=off;eval.query=off", over=wide)  # eval.query is not wide's to give
        assert arming.owner_of("tokenize.fill") is wide
        with pytest.raises(errors.InferenceError, match="FILL PHASE"):
            s.tokenize("still the wide spec")
        with pytest.raises(TypeError, match="over= takes Armed handles"):
            fi.arm("tokenize.fill=off", over=["tokenize.fill"])  # type: ignore[list-item]
        other.disarm()
        wide.disarm()


def test_disarm_by_name_and_disarm_all_clear_every_holder() -> None:
    wide = fi.arm("eval_gpu=fail;tokenize.query=off")
    fi.arm("eval_gpu=off", over=wide)
    fi.disarm("eval_gpu")
    assert "eval_gpu" not in arming._STATE.owners and wide.active  # tokenize.query stays
    narrow = fi.arm("tokenize.query=fail", over=wide)
    reports = fi.disarm_all()
    assert {r.spec for r in reports} == {"eval_gpu=fail;tokenize.query=off", "tokenize.query=fail"}
    assert not fi.armed() and not wide.active and not narrow.active
    st = ffi.new("bitnet_fault_stats_t *")
    lib.bitnet_fault_stats(lib.bitnet_fault_point_index(b"tokenize.query"), st)
    assert st.armed == 0  # nothing was handed back to stay armed


def test_derive_seed_depends_on_seed_and_key_only() -> None:
    a = fi.derive_seed(1234, "tests/test_x.py::test_a")
    assert a == fi.derive_seed(1234, "tests/test_x.py::test_a") and 0 <= a < 2**64
    assert len({a, fi.derive_seed(1234, "tests/test_x.py::test_b"), fi.derive_seed(1235, "tests/test_x.py::test_a")}) == 3
    # fixed: a rerun in another process or release must draw the same
    assert fi.derive_seed(0, "") == int.from_bytes(__import__("hashlib").blake2b(b"0\0", digest_size=8).digest(), "big")
    with pytest.raises(ValueError, match="invalid seed"):
        fi.derive_seed(-1, "x")


def test_an_arm_over_refused_natively_rolls_back_and_hands_back(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        wide = fi.arm("tokenize.fill=fail")
        terms = ffi.new("bitnet_fault_term_t[1]")
        terms[0].probability = 1.0
        assert lib.bitnet_fault_arm(b"eval_gpu", terms, 1, 0, 0, ffi.NULL, ffi.NULL, 0) == 0  # behind Python's back
        with pytest.raises(fi.FaultStateError, match="cannot arm 'tokenize.fill=off;eval_gpu=off'"):
            fi.arm("tokenize.fill=off;eval_gpu=off", over=wide)  # tokenize.fill was taken, then eval_gpu refused
        assert arming.owner_of("tokenize.fill") is wide
        with pytest.raises(errors.InferenceError, match="FILL PHASE"):
            s.tokenize("handed back")
        assert wide.disarm().overridden == ()  # nothing was overridden in the end
        fi.disarm_all()
