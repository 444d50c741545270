"""The stress harness behind tests/bridge/test_stress.py: N threads, each looping
create / tokenize / evaluate / close with its own random faults armed; and
the race mode (run_churn): close/create churn against concurrent calls on one
session object, and calls whose argument conversion closes it.

Kept apart from the tests so the always-on run, the full 8 x 1000 run and
the soak run share one loop, and so a failing seed can be replayed from a
plain script (``run_stress(model, seed=..., threads=..., iterations=...)``).

Why specs are dealt, not drawn with replacement: the fault engine keeps one
chain per point, so a point can be armed by one thread at a time even with
``thread=True``.  Each thread therefore gets its own slice of a shuffled
list of probabilistic specs whose points are disjoint; the shuffle and every
probability draw come from the printed seed, so a run can be reproduced.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.counters import LEAK_COUNTERS

# Probabilistic specs, each on points no other entry uses (see above).
# Rates are tuned per point for how often it is hit per iteration, so most
# iterations still complete and every later step gets exercised: `alloc` is
# hit ~85 times per iteration, `load.step` 4, the others about once.
SPECS: tuple[str, ...] = (
    "alloc=0.1%oom",
    "load.step=2%fail",
    "init_context=8%fail",
    "free_context=15%fail",  # close() raises CleanupFailed; the loop retries it
    "tokenize.query=8%fail",
    "tokenize.fill=5%fail->5%grow(2)",
    "tokenize.step=2%fail",
    "eval.query=8%fail",
    "eval.fill=5%fail->5%grow(1)",
    "eval.step=5%fail->3%delay(1)",
    "eval.logits=8%nan",
)

# Prompts: the short ones (10-22 tokens with the tiny vocabulary) fit the
# default n_ctx of 32; the long one (87 tokens) overflows it, so
# ContextOverflow is part of the mix.
PROMPTS: tuple[str, ...] = (
    "hi there",
    "ok",
    "What is 2+2?",
    "ünïcödé ✓ text",
    "a somewhat longer prompt that needs more positions than a sixteen token context holds",
)

# Keys of bn.live_counters() that must return to their baseline.

CLOSE_RETRIES = 200  # free_context fails at 15%: 200 straight failures is never luck


@dataclasses.dataclass
class ThreadResult:
    name: str
    spec: str
    backend: str
    arm_seed: int
    iterations: int = 0
    completed: int = 0  # iterations where every call succeeded
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    fired: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)  # not BitnetError, or unclosable


@dataclasses.dataclass
class StressReport:
    seed: int
    threads: list[ThreadResult]
    elapsed: float
    stuck: list[str]  # names of threads still running at the deadline, with stacks
    baseline: dict[str, int]
    after: dict[str, int]

    @property
    def iterations(self) -> int:
        return sum(t.iterations for t in self.threads)

    @property
    def errors(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for t in self.threads:
            total.update(t.errors)
        return total

    @property
    def fired(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for t in self.threads:
            total.update(t.fired)
        return total

    @property
    def failures(self) -> list[str]:
        return [f"{t.name} [{t.spec}, {t.backend}, arm seed {t.arm_seed}]: {f}" for t in self.threads for f in t.failures]

    @property
    def leaked(self) -> dict[str, tuple[int, int]]:
        return {k: (self.baseline[k], self.after[k]) for k in LEAK_COUNTERS if self.after[k] != self.baseline[k]}

    def summary(self) -> str:
        rate = self.iterations / self.elapsed if self.elapsed > 0 else 0.0
        lines = [
            f"stress seed={self.seed}: {len(self.threads)} threads, {self.iterations} iterations "
            f"in {self.elapsed:.1f} s = {rate:.0f} iterations/s; "
            f"{sum(t.completed for t in self.threads)} completed without error",
            f"  faults fired: {sum(self.fired.values())} {dict(sorted(self.fired.items()))}",
            f"  errors by class: {sum(self.errors.values())} {dict(self.errors.most_common())}",
        ]
        lines += [f"  {t.name}: {t.backend:9} spec {t.spec!r} arm seed {t.arm_seed}: {t.iterations} it, fired {sum(t.fired.values())}" for t in self.threads]
        return "\n".join(lines)


def deal_specs(seed: int, n_threads: int) -> list[str]:
    """Per-thread specs: a seeded shuffle of SPECS dealt round-robin.

    Threads beyond len(SPECS) get an empty spec (no faults): the points are
    all taken.
    """
    order = list(SPECS)
    random.Random(seed).shuffle(order)
    hands: list[list[str]] = [[] for _ in range(n_threads)]
    for i, spec in enumerate(order):
        hands[i % n_threads].append(spec)
    return [";".join(h) for h in hands]


def _close(session: bn.BitnetSession, result: ThreadResult) -> None:
    """close() until it succeeds: an injected CleanupFailed keeps the
    context alive for exactly this retry."""
    for _ in range(CLOSE_RETRIES):
        try:
            session.close()
            return
        except errors.BitnetError as exc:
            result.errors[f"close:{type(exc).__name__}"] += 1
    result.failures.append(f"session still open after {CLOSE_RETRIES} close() attempts")


def _iteration(model: Path, n_ctx: int, prompt: str, result: ThreadResult) -> None:
    try:
        session = bn.BitnetSession.create(model, n_ctx=n_ctx, backend=result.backend)
    except errors.BitnetError as exc:
        result.errors[type(exc).__name__] += 1
        return
    try:
        session.evaluate(session.tokenize(prompt))
        result.completed += 1
    except errors.BitnetError as exc:
        result.errors[type(exc).__name__] += 1
    finally:
        _close(session, result)


def _worker(model: Path, n_ctx: int, seed: int, keep_going: Callable[[int], bool], result: ThreadResult) -> None:
    rng = random.Random(result.arm_seed)
    armed = fi.arm(result.spec, seed=result.arm_seed, thread=True) if result.spec else None
    try:
        while keep_going(result.iterations):
            try:
                _iteration(model, n_ctx, rng.choice(PROMPTS), result)
            except BaseException as exc:  # anything but BitnetError is a finding
                result.failures.append("".join(traceback.format_exception_only(type(exc), exc)).strip())
                if len(result.failures) >= 5:
                    result.failures.append("stopping this thread after 5 failures")
                    return
            result.iterations += 1
    finally:
        if armed is not None:
            result.fired = {p: n for p, n in armed.disarm().fired.items() if n}


def _stacks(threads: list[threading.Thread]) -> list[str]:
    frames = sys._current_frames()
    out = []
    for t in threads:
        if t.is_alive():
            frame = frames.get(t.ident) if t.ident is not None else None
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
            out.append(f"{t.name} is stuck:\n{stack}")
    return out


def run_stress(
    model: Path,
    *,
    seed: int,
    threads: int = 8,
    iterations: int | None = 1000,
    seconds: float | None = None,
    n_ctx: int = 32,
    backends: tuple[str, ...] = ("reference", "dlopen"),
    join_timeout: float = 300.0,
) -> StressReport:
    """Runs the loop on `threads` threads: `iterations` each, or for `seconds`.

    Threads alternate over `backends`.  Threads still alive after the run's
    deadline (its length plus join_timeout) are reported as stuck, with
    their Python stacks; they are daemons, so a deadlock fails the test
    instead of hanging the process.
    """
    specs = deal_specs(seed, threads)
    results = [
        ThreadResult(name=f"stress-{i}", spec=specs[i], backend=backends[i % len(backends)], arm_seed=seed * 1000 + i)
        for i in range(threads)
    ]
    t0 = time.monotonic()
    if seconds is not None:
        stop_at = t0 + seconds

        def keep_going(done: int) -> bool:
            return time.monotonic() < stop_at
    else:
        assert iterations is not None

        def keep_going(done: int) -> bool:
            return done < iterations

    baseline = bn.live_counters()
    workers = [
        threading.Thread(target=_worker, args=(model, n_ctx, seed, keep_going, r), name=r.name, daemon=True) for r in results
    ]
    for w in workers:
        w.start()
    deadline = t0 + (seconds or 0) + join_timeout
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - t0
    stuck = _stacks(workers)
    return StressReport(seed, results, elapsed, stuck, baseline, bn.live_counters())


# ---- race stress: close/create churn against calls on one session object ------------------
#
# What found issue 13's use-after-free and stale-handle calls: callers share
# one BitnetSession object (box.current) while a churner closes it and puts a
# new one in its place, and some calls carry arguments whose conversion runs
# user code that does the same (a str subclass's encode(), an object's
# __array__).  Every outcome must be a success on the caller's own session or
# a clean error; and nothing may ever run on another session, which each
# caller checks through a sequence only it uses: its n_past there must be
# exactly what its own successful calls added.

CHURN_OPS: tuple[str, ...] = (
    "tokenize", "tokenize", "tokenize_hostile", "evaluate", "evaluate", "evaluate_hostile",
    "n_past", "reset", "cancel",
)


@dataclasses.dataclass
class ChurnReport:
    seed: int
    elapsed: float
    outcomes: collections.Counter[str]  # "op: result class"
    sessions_made: int
    failures: list[str]
    stuck: list[str]
    baseline: dict[str, int]
    after: dict[str, int]

    @property
    def leaked(self) -> dict[str, tuple[int, int]]:
        return {k: (self.baseline[k], self.after[k]) for k in LEAK_COUNTERS if self.after[k] != self.baseline[k]}

    def summary(self) -> str:
        calls = sum(self.outcomes.values())
        rate = calls / self.elapsed if self.elapsed > 0 else 0.0
        return (
            f"churn seed={self.seed}: {calls} calls in {self.elapsed:.1f} s = {rate:.0f} calls/s, "
            f"{self.sessions_made} sessions made\n  outcomes: {dict(sorted(self.outcomes.items()))}"
        )


class _Churn:
    """The shared session, the sessions ever made, and the one way to replace it."""

    def __init__(self, model: Path, n_ctx: int) -> None:
        self.model, self.n_ctx = model, n_ctx
        self.lock = threading.Lock()  # one replacement at a time: none is orphaned
        self.current = bn.BitnetSession.create(model, n_ctx=n_ctx)
        self.made = [self.current]

    def replace(self) -> str:
        """Closes the current session and makes a new one: the result, for the tally."""
        with self.lock:
            old = self.current
            try:
                old.close()
            except errors.CleanupFailed:  # a call is in flight on it (ThreadSafetyError cause): later
                return "close:CleanupFailed"
            try:
                new = bn.BitnetSession.create(self.model, n_ctx=self.n_ctx)
            except errors.BitnetError as exc:
                return f"create:{type(exc).__name__}"
            self.made.append(new)
            self.current = new
            return "replaced"


def _churn_caller(churn: _Churn, index: int, rng: random.Random, stop_at: float, report: ChurnReport) -> None:
    seq = index + 1  # this caller's own sequence: nobody else evaluates there
    expected: dict[int, int] = {}  # id(session) -> n_past of seq there, by this caller's own successes
    tokens = [1, 5, 7]

    class HostilePrompt(str):
        def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
            report.outcomes[f"hostile encode: {churn.replace()}"] += 1
            return str.encode(self, *args, **kwargs)  # type: ignore[arg-type]

    class HostileTokens:
        def __array__(self, dtype: object = None, copy: object = None) -> Any:
            report.outcomes[f"hostile __array__: {churn.replace()}"] += 1
            return np.array(tokens, dtype=np.int32)

    def check(s: bn.BitnetSession, where: str) -> None:
        try:
            n = s.n_past(seq)
        except errors.BitnetError:
            return  # closed or busy meanwhile: nothing to compare
        if n != expected.get(id(s), 0):
            report.failures.append(
                f"caller {index}: after {where}, n_past of sequence {seq} is {n} but this caller's own calls "
                f"added {expected.get(id(s), 0)}: a call ran on a session other than its own")

    while time.monotonic() < stop_at and len(report.failures) < 5:
        op = rng.choice(CHURN_OPS)
        s = churn.current
        try:
            if op.startswith("tokenize"):
                s.tokenize(HostilePrompt("hello there") if op.endswith("hostile") else "hello there")
            elif op.startswith("evaluate"):
                if expected.get(id(s), 0) + len(tokens) > churn.n_ctx:
                    s.reset(seq)
                    expected[id(s)] = 0
                s.evaluate(HostileTokens() if op.endswith("hostile") else tokens, seq_id=seq)
                expected[id(s)] = expected.get(id(s), 0) + len(tokens)
                check(s, op)
            elif op == "n_past":
                check(s, op)
            elif op == "reset":
                s.reset(seq)
                expected[id(s)] = 0
            else:
                s.cancel()
            report.outcomes[f"{op}: ok"] += 1
        except errors.BitnetError as exc:
            report.outcomes[f"{op}: {type(exc).__name__}"] += 1
            if isinstance(exc, errors.InvalidHandle) and "closed" not in str(exc):
                report.failures.append(f"caller {index}: {op} raised InvalidHandle not saying 'closed': {exc}")
        except BaseException as exc:  # anything but BitnetError is a finding
            report.failures.append(f"caller {index}: {op}: " + "".join(traceback.format_exception_only(type(exc), exc)).strip())


def _churner(churn: _Churn, rng: random.Random, stop_at: float, report: ChurnReport) -> None:
    while time.monotonic() < stop_at and len(report.failures) < 5:
        try:
            if rng.random() < 0.5:
                report.outcomes[f"churn: {churn.replace()}"] += 1
            else:  # a call of its own on the shared object between replacements
                churn.current.tokenize("churn")
                report.outcomes["churn tokenize: ok"] += 1
        except errors.BitnetError as exc:
            report.outcomes[f"churn tokenize: {type(exc).__name__}"] += 1
        except BaseException as exc:
            report.failures.append("churner: " + "".join(traceback.format_exception_only(type(exc), exc)).strip())


def run_churn(model: Path, *, seed: int, seconds: float = 3.0, callers: int = 3, n_ctx: int = 64,
              join_timeout: float = 120.0) -> ChurnReport:
    """Callers and a churner on one BitnetSession object for `seconds`.

    Each thread draws its operations from its own random.Random(seed, index),
    so a seed replays the same operation sequences (the interleaving is the
    scheduler's).  Every session ever made is closed at the end; the live
    counters must be back at their baseline.
    """
    baseline = bn.live_counters()
    report = ChurnReport(seed, 0.0, collections.Counter(), 0, [], [], baseline, baseline)
    churn = _Churn(model, n_ctx)
    t0 = time.monotonic()
    stop_at = t0 + seconds
    threads = [threading.Thread(target=_churn_caller, args=(churn, i, random.Random(seed * 1000 + i), stop_at, report),
                                name=f"churn-caller-{i}", daemon=True) for i in range(callers)]
    threads.append(threading.Thread(target=_churner, args=(churn, random.Random(seed * 1000 + callers), stop_at, report),
                                    name="churner", daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, stop_at + join_timeout - time.monotonic()))
    report.elapsed = time.monotonic() - t0
    report.stuck = _stacks(threads)
    if not report.stuck:
        for s in churn.made:
            for _ in range(CLOSE_RETRIES):
                try:
                    s.close()
                    break
                except errors.BitnetError:
                    continue
            else:
                report.failures.append(f"a session still open after {CLOSE_RETRIES} close() attempts")
    report.sessions_made = len(churn.made)
    report.after = bn.live_counters()
    return report
