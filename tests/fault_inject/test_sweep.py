"""Sweeps (fault_inject.sweep): fail each hit of a point in turn, check every run."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors


@pytest.fixture(autouse=True)
def _nothing_stays_armed() -> Iterator[None]:
    yield
    assert not fi.armed(), "a sweep left points armed"


def lifecycle(path: Path, **create: object) -> Callable[[], None]:
    """create -> tokenize -> evaluate -> close, the unit every sweep below runs."""

    def body() -> None:
        with bn.BitnetSession.create(path, n_ctx=64, **create) as s:  # type: ignore[arg-type]
            s.evaluate(s.tokenize("What is 2+2?"))

    return body


def test_alloc_sweep_finds_every_allocation_and_never_leaks(tiny_model: Path) -> None:
    # E49: fail each allocation of a whole session lifecycle in turn.
    report = fi.sweep("alloc", lifecycle(tiny_model), action="oom")
    assert report.ok, report.describe(failures_only=True)
    assert report.complete and not report.forked
    *failed, last = report.iterations
    # every allocation site was failed once; the last run fired nothing
    assert last.outcome == "ok" and not last.fired and last.hits == len(failed) == report.sites
    assert len(failed) > 30
    for n, it in enumerate(failed, 1):
        assert it.n == n and it.fired and it.hits is not None and it.hits >= n
        assert it.outcome == "error" and it.error == "OutOfMemory", it.line()
        assert not it.leaked
    # the failures are spread over create, tokenize and the allocations' purposes are named
    whats = {m.group(1) for it in failed if it.message and (m := re.search(r"bytes for ([\w ]+?) \(injected", it.message))}
    assert {"context handle", "GGUF key", "vocabulary"} <= whats, whats
    assert any("tokenize" in (it.message or "") for it in failed)
    assert all(it.where for it in failed)  # the Python frame that was running at the firing


def test_alloc_sweep_in_forked_children_matches(tiny_model: Path) -> None:
    inproc = fi.sweep("alloc", lifecycle(tiny_model), action="oom", max_iterations=12)
    forked = fi.sweep("alloc", lifecycle(tiny_model), action="oom", fork=True, max_iterations=12)
    assert forked.forked
    assert [(i.n, i.fired, i.outcome, i.error, i.hits) for i in forked.iterations] == [
        (i.n, i.fired, i.outcome, i.error, i.hits) for i in inproc.iterations
    ]
    assert not inproc.complete and "INCOMPLETE" in inproc.summary()  # stopped at max_iterations
    with pytest.raises(fi.SweepFailed, match="raise max_iterations"):
        inproc.raise_if_failed()


def test_crash_in_a_forked_child_is_that_iterations_result(tiny_model: Path) -> None:
    report = fi.sweep("eval.step", lifecycle(tiny_model), action="crash", fork=True)
    assert report.complete
    outcomes = [(it.n, it.outcome, it.error) for it in report.iterations]
    # the tiny model has 2 layers: hits 1 and 2 crash, the 3rd run reaches no 3rd hit
    assert outcomes == [(1, "crash", "SIGABRT"), (2, "crash", "SIGABRT"), (3, "ok", None)]
    assert not report.ok and len(report.failures) == 2
    with pytest.raises(fi.SweepFailed) as info:
        report.raise_if_failed()
    assert "FAIL #1" in str(info.value) and "SIGABRT" in str(info.value)
    # the child's stderr is kept, and the crash names the point that fired
    first = report.iterations[0]
    assert first.message == "bitnet: injected fault at 'eval.step' (crash, hit 1): aborting the process, as the fault-injection spec asks"
    assert first.stderr and "Fatal Python error: Aborted" in first.stderr


def test_hang_with_no_deadline_is_killed_by_the_child_timeout(tiny_model: Path) -> None:
    # No deadline (timeout=inf) and nobody cancels: the hang would last
    # forever; the forked sweep kills the child and reports it.
    report = fi.sweep("eval.step", lifecycle(tiny_model, timeout=math.inf), action="hang", fork=True, timeout=1.0)
    assert [(it.outcome, it.error) for it in report.iterations] == [("timeout", "timeout"), ("timeout", "timeout"), ("ok", None)]


def test_forked_sweep_over_a_session_made_in_the_parent(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each child inherits the parent's session but not its pool's worker
    # threads: the evaluation must run on the child's one thread, not wait
    # for workers that are not there (which made every iteration a timeout).
    monkeypatch.setenv("BITNET_NUM_THREADS", "2")
    tokens = [1, 17, 300, 45, 2, 99, 511, 260]  # above the pool's parallel threshold
    with bn.BitnetSession.create(tiny_model, n_ctx=64, timeout=2.0) as s:
        expected = s.evaluate(tokens)
        s.reset()

        def body() -> None:
            np.testing.assert_array_equal(s.evaluate(tokens), expected)

        report = fi.sweep("eval.step", body, fork=True, timeout=30.0, stop_on_failure=True)
    assert report.ok, report.describe()
    assert [(it.outcome, it.error) for it in report.iterations] == [("error", "InferenceError")] * 2 + [("ok", None)]


def test_hang_under_a_deadline_is_a_clean_timeout(tiny_model: Path) -> None:
    report = fi.sweep("eval.step", lifecycle(tiny_model, timeout=0.2), action="hang")
    assert report.ok, report.describe()
    assert [it.error for it in report.iterations] == ["OperationTimeout", "OperationTimeout", None]


def test_a_leak_is_reported_per_iteration(tiny_model: Path) -> None:
    kept: list[bn.BitnetSession] = []

    def leaky() -> None:
        s = bn.BitnetSession.create(tiny_model, n_ctx=64)
        kept.append(s)  # never closed: the sweep must see it
        s.evaluate([1, 2, 3])

    try:
        report = fi.sweep("eval.step", leaky)
    finally:
        for s in kept:
            s.close()
    assert report.complete and not report.ok
    assert all(it.leaked.get("contexts") == 1 and it.leaked.get("bytes", 0) > 0 for it in report.iterations)
    assert "LEAKED" in report.describe()


def test_an_unexpected_exception_fails_the_iteration(tiny_model: Path) -> None:
    def body() -> None:
        with bn.BitnetSession.create(tiny_model, n_ctx=64) as s:
            try:
                s.evaluate([1])
            except errors.InferenceError as exc:
                raise ValueError("wrapped badly") from exc

    report = fi.sweep("eval.step", body)
    assert [it.outcome for it in report.iterations] == ["unexpected", "unexpected", "ok"]
    assert report.iterations[0].error == "ValueError"
    # ... unless the caller says which errors are clean
    assert fi.sweep("eval.step", body, expected=(ValueError, errors.BitnetError)).ok


def test_persist_fails_the_chosen_hit_and_every_later_one(tiny_model: Path) -> None:
    seen: list[int] = []

    def body() -> None:
        with bn.BitnetSession.create(tiny_model, n_ctx=64) as s:
            for _ in range(2):
                try:
                    s.evaluate([1])
                except errors.InferenceError:
                    seen.append(s.n_past())
                    s.reset()

    report = fi.sweep("eval.step", body, persist=True)
    assert report.ok
    assert [it.fired for it in report.iterations] == [True] * 4 + [False]
    # hit 1 persistent: both evaluations fail; hit 3: only the second
    assert len(seen) == 2 + 2 + 1 + 1


def test_stop_on_failure(tiny_model: Path) -> None:
    report = fi.sweep("eval.step", lifecycle(tiny_model), action="crash", fork=True, stop_on_failure=True)
    assert len(report.iterations) == 1 and not report.complete


def test_fail_with_a_code_in_a_sweep(tiny_model: Path) -> None:
    report = fi.sweep("tokenize.step", lifecycle(tiny_model), action="fail(internal)")
    assert report.action == "fail(internal)"
    assert {it.error for it in report.iterations if it.fired} == {"InternalError"}
    assert report.ok


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"point": "session.*"}, fi.UnknownPoint, "unknown fault point 'session.\\*'"),
        ({"point": "eval.stp"}, fi.UnknownPoint, "closest: 'eval.step'"),
        ({"action": "2*fail"}, ValueError, "without N\\* or P%"),
        ({"action": "50%fail"}, ValueError, "without N\\* or P%"),
        ({"action": "fial"}, ValueError, "not a valid term: unknown action 'fial'"),
        ({"action": "off"}, ValueError, "injects nothing"),
        ({"action": "nan"}, fi.FaultSpecError, "does not support 'nan'"),
        ({"timeout": 1.0}, ValueError, "timeout needs fork=True"),
        ({"max_iterations": 0}, ValueError, "max_iterations must be a positive int"),
    ],
)
def test_bad_sweep_arguments(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    args: dict[str, object] = {"point": "eval.step", "body": lambda: None, **kwargs}
    with pytest.raises(exc, match=match):
        fi.sweep(**args)  # type: ignore[arg-type]
