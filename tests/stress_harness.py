"""The stress harness behind tests/bridge/test_stress.py: N threads, each looping
create / tokenize / evaluate / close with its own random faults armed.

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
from typing import Callable

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
