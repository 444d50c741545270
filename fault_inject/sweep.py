"""Sweeps: fail the 1st, 2nd, 3rd ... hit of a point in turn.

SQLite's fault-simulation loop (fail allocation N, for N = 1, 2, ... until
a run injects nothing), with two additions: every iteration checks that the
outcome is success or a clean error *and* that the live native counters are
back to their baseline, and ``fork=True`` runs each iteration in a child
process so a crash (or a hang, with ``timeout``) becomes that iteration's
result instead of the end of the run.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import pickle
import select
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Final, Mapping, Sequence

from pytest_bitnet.bridge.counters import LEAK_COUNTERS, delta, live_counters
from pytest_bitnet.bridge.errors import BitnetError

from . import spec as _spec
from .arming import arm
from .registry import lookup, require_compiled

__all__ = ["Iteration", "SweepFailed", "SweepReport", "sweep"]

OK: Final = "ok"  # the body returned
ERROR: Final = "error"  # it raised one of the expected (clean) errors
UNEXPECTED: Final = "unexpected"  # it raised something else
CRASH: Final = "crash"  # fork: the child died of a signal or exited abnormally
TIMEOUT: Final = "timeout"  # fork: the child outlived `timeout` and was killed


@dataclass(frozen=True)
class Iteration:
    """One run of the body with hit ``n`` failing."""

    n: int  # the hit that was to fail (1-based)
    spec: str  # what was armed
    fired: bool  # the fault fired (a crash or timeout counts as fired)
    hits: int | None  # hits of the point in this run (None: the child died)
    outcome: str  # ok, error, unexpected, crash, timeout
    error: str | None = None  # exception class, or signal name
    message: str | None = None  # its message (first line kept whole)
    leaked: Mapping[str, int] = field(default_factory=dict)  # counter -> amount above baseline
    where: str | None = None  # innermost Python frame at the firing
    seconds: float = 0.0
    stderr: str | None = None  # fork: the end of what a crashed / killed child wrote

    @property
    def passed(self) -> bool:
        """Success or a clean error, and nothing leaked."""
        return self.outcome in (OK, ERROR) and not self.leaked

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        leak = f" LEAKED {dict(self.leaked)}" if self.leaked else ""
        what = f"{self.error}: {self.message}" if self.error else "returned"
        fired = "fired" if self.fired else "no fault"
        return f"{status} #{self.n:<4} {fired:8} {self.outcome:10} {what}{leak}"


class SweepFailed(AssertionError):
    """raise_if_failed(): a sweep found a crash, a leak, an unexpected error, or did not finish."""

    def __init__(self, report: SweepReport) -> None:
        super().__init__(report.describe(failures_only=True))
        self.report = report


@dataclass(frozen=True)
class SweepReport:
    """Every iteration of a sweep, and whether it reached a run with no fault."""

    point: str
    action: str
    iterations: tuple[Iteration, ...]
    complete: bool  # the last run fired nothing (every hit was tried)
    forked: bool

    @property
    def failures(self) -> tuple[Iteration, ...]:
        return tuple(it for it in self.iterations if not it.passed)

    @property
    def ok(self) -> bool:
        """Complete, and every iteration passed."""
        return self.complete and not self.failures

    @property
    def sites(self) -> int:
        """How many hits were failed (iterations whose fault fired)."""
        return sum(1 for it in self.iterations if it.fired)

    def summary(self) -> str:
        state = "all clean" if self.ok else f"{len(self.failures)} failed" + ("" if self.complete else ", INCOMPLETE")
        mode = ", forked" if self.forked else ""
        return f"sweep of {self.point!r} with {self.action!r}{mode}: {self.sites} hits failed in turn, {len(self.iterations)} runs, {state}"

    def describe(self, failures_only: bool = False) -> str:
        rows = self.failures if failures_only else self.iterations
        text = "\n".join([self.summary()] + ["  " + it.line() for it in rows])
        if not self.complete:
            text += "\n  the sweep stopped before a run that fired nothing: raise max_iterations"
        return text

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise SweepFailed(self)

    def __str__(self) -> str:
        return self.describe()


def _term(point: str, action: str) -> str:
    # Validate `action` as a bare term of the grammar (no P% / N*).
    try:
        parsed = _spec.parse(f"{point}={action}", source="sweep(action=...)")
    except _spec.FaultSpecError as exc:
        raise ValueError(f"sweep action {action!r} is not a valid term: {exc.reason}") from None
    (entry,) = parsed.entries
    if len(entry.terms) != 1 or entry.terms[0].count is not None or entry.terms[0].percent is not None:
        raise ValueError(f"sweep action {action!r}: give one action such as 'fail', 'oom' or 'crash', without N* or P%")
    if entry.terms[0].action == "off":
        raise ValueError("sweep action 'off' injects nothing: use fail, oom, crash, ...")
    return str(entry.terms[0])


def _spec_for(point: str, term: str, n: int, persist: bool) -> str:
    if persist:  # SQLite's "repeat" mode: this hit and all later ones fail
        return f"{point}={n - 1}*off->{term}" if n > 1 else f"{point}={term}"
    return f"{point}={n - 1}*off->1*{term}" if n > 1 else f"{point}=1*{term}"


def _counters(collect: bool = True) -> dict[str, int]:
    if collect:
        gc.collect()
    c = live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


def _settled(before: Mapping[str, int]) -> dict[str, int]:
    """The counters after an iteration; collects garbage only if they moved.

    A full gc.collect() costs tens of ms in a process holding many objects
    (pytest), and a sweep runs hundreds of iterations: the collection is
    needed only when something is still alive, e.g. a session held by a
    traceback's frames.
    """
    now = _counters(collect=False)
    return now if now == before else _counters()


def _run_one(
    point: str, spec: str, n: int, body: Callable[[], object], expected: tuple[type[BaseException], ...], seed: int, thread: bool
) -> Iteration:
    before = _counters(collect=n == 1)  # later iterations start where the last one settled
    t0 = time.perf_counter()
    outcome, error, message = OK, None, None
    armed = arm(spec, seed=seed, thread=thread, source="sweep")
    try:
        body()
    except (KeyboardInterrupt, SystemExit):
        raise
    except expected as exc:
        outcome, error, message = ERROR, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""
    except BaseException as exc:  # a clean error is one of `expected`: anything else fails the iteration
        outcome, error, message = UNEXPECTED, type(exc).__name__, str(exc)
    finally:
        report = armed.disarm()
    seconds = time.perf_counter() - t0
    after = _settled(before)
    leaked = delta(before, after)
    pr = report.points[point]
    stack = pr.python_stack
    return Iteration(
        n=n,
        spec=spec,
        fired=pr.fired > 0,
        hits=pr.hits,
        outcome=outcome,
        error=error,
        message=message,
        leaked=leaked,
        where=stack[-1].strip().splitlines()[0] if stack else None,
        seconds=seconds,
    )


def _run_forked(
    point: str,
    spec: str,
    n: int,
    body: Callable[[], object],
    expected: tuple[type[BaseException], ...],
    seed: int,
    thread: bool,
    timeout: float | None,
) -> Iteration:
    r, w = os.pipe()
    err = tempfile.TemporaryFile()  # the child's stderr: kept for crashes
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: run, report through the pipe, never return into the caller
        code = 0
        try:
            os.close(r)
            os.dup2(err.fileno(), 2)
            if faulthandler.is_enabled():  # its dump of a crash belongs with the rest
                faulthandler.enable(err)
            try:
                result: object = _run_one(point, spec, n, body, expected, seed, thread)
            except BaseException as exc:  # noqa: BLE001 - reported as the iteration's result
                result = Iteration(n, spec, True, None, UNEXPECTED, type(exc).__name__, str(exc))
            data = pickle.dumps(result)
            view = memoryview(data)
            while view:
                view = view[os.write(w, view) :]
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([r], [], [], wait)
            if not ready:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - t0
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    err.close()
    tail = (text if len(text) <= 8000 else text[:2000] + "\n[...]\n" + text[-5000:]) or None
    # the native engine says which point crashed the process
    native = next((ln for ln in text.splitlines() if ln.startswith("bitnet: injected fault")), None)
    if timed_out:
        why = f"the child ran longer than {timeout} s and was killed"
        return Iteration(n, spec, True, None, TIMEOUT, "timeout", why, seconds=seconds, stderr=tail)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = native or f"the child died of signal {sig}"
        return Iteration(n, spec, True, None, CRASH, signal.Signals(sig).name, why, seconds=seconds, stderr=tail)
    data = b"".join(chunks)
    if os.WEXITSTATUS(status) != 0 or not data:
        why = "the child exited without a result"
        return Iteration(n, spec, True, None, CRASH, f"exit {os.WEXITSTATUS(status)}", why, seconds=seconds, stderr=tail)
    if text:
        os.write(2, text.encode())  # a child that finished: pass its output on
    result = pickle.loads(data)
    assert isinstance(result, Iteration)
    return result


def sweep(
    point: str,
    body: Callable[[], object],
    *,
    action: str = "fail",
    persist: bool = False,
    fork: bool = False,
    timeout: float | None = None,
    max_iterations: int = 10_000,
    expected: type[BaseException] | Sequence[type[BaseException]] = BitnetError,
    thread: bool = False,
    seed: int = 0,
    stop_on_failure: bool = False,
) -> SweepReport:
    """Runs body once per hit of point, failing hit 1, then 2, ... until a run fires nothing.

    action: the term performed at the chosen hit ("fail", "oom",
    "fail(-4)", "crash", "delay(5)", ...).  persist: fail the chosen hit
    and every later one (SQLite's repeat mode) instead of that hit only.
    fork: run each iteration in a child process (POSIX), so a crash is that
    iteration's result; timeout (seconds, fork only) kills a child that
    runs too long.  expected: what counts as a clean error.  thread: count
    only hits from the calling thread.  seed: for any probability in the
    action (none by default).  stop_on_failure: stop at the first failed
    iteration.

    Every iteration checks the outcome (success, or one of ``expected``)
    and that the live counters (contexts, sessions, models, bytes,
    allocations) are back to their baseline.  Returns the per-iteration
    report; ``report.raise_if_failed()`` turns it into an assertion.
    """
    require_compiled()
    info = lookup(point)  # exact names only: hit numbers of a pattern are per point
    term = _term(info.name, action)
    if not isinstance(max_iterations, int) or max_iterations < 1:
        raise ValueError(f"max_iterations must be a positive int, got {max_iterations!r}")
    if timeout is not None and not fork:
        raise ValueError("timeout needs fork=True: an in-process iteration cannot be killed")
    if fork and not hasattr(os, "fork"):
        raise ValueError("fork=True needs os.fork (POSIX)")
    exp = (expected,) if isinstance(expected, type) else tuple(expected)
    iterations: list[Iteration] = []
    complete = False
    for n in range(1, max_iterations + 1):
        spec = _spec_for(info.name, term, n, persist)
        if fork:
            it = _run_forked(info.name, spec, n, body, exp, seed, thread, timeout)
        else:
            it = _run_one(info.name, spec, n, body, exp, seed, thread)
        iterations.append(it)
        if not it.fired:
            complete = True
            break
        if stop_on_failure and not it.passed:
            break
    return SweepReport(info.name, term, tuple(iterations), complete, fork)
