"""The leak check: per object, and the native counters for the rest.

Every session Python makes has an identity in the bridge's registry
(:mod:`pytest_bitnet.bridge.counters`): its creation stack, and how it
ended.  A test owns the sessions created between its setup and the end of
its teardown, minus those of session-, module- or class-scoped fixtures.
At teardown each one it owns must be closed: one still open, or one freed
by its finalizer (dropped without close()), is a leak of that test, named
with the stack that created it.  Each object is judged once, by the test
that made it; when it is freed later (a finalizer in another test) that
frees the later test of nothing.

The live counters stay the ground truth for what Python did not make (a
per-call function, an error path, a raw C ABI handle): what they hold above
the test's baseline, after crediting higher-scoped fixtures, adding back
what earlier tests' sessions freed meanwhile and taking off what this
test's own leaked sessions hold, is a leak "inside the native bridge".
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Final, Iterator

import pytest

from pytest_bitnet.bridge import counters as registry
from pytest_bitnet.bridge.counters import COUNTERS, MONOTONIC_COUNTERS

from .state import RUN, RunState, TestState

__all__ = ["Leak", "check", "counters", "crediting", "default_counters", "fixture_torn_down", "start"]

# How a leaked session ended, in a leak report.
_STATE_TEXT: Final = {
    "open": "still open",
    "finalized": "not closed: freed by its finalizer after the test dropped it",
    "pending": "not closed, and its finalizer could not free it (still counted, waiting in "
    "pytest_bitnet.bridge.session.pending_cleanups())",
}


@dataclass
class Leak:
    """What one test leaked: its sessions not closed, and counters above baseline."""

    nodeid: str
    counters: dict[str, int]  # counter -> excess over baseline
    objects: list[tuple[str, str]]  # (the session and how it ended, Python stack where it was created)
    native: dict[str, int] = field(default_factory=dict)  # bridge counters' excess no session of the test explains
    sources: dict[str, int] = field(default_factory=dict)  # excess of counter sources' counters (an interposed libllama's) no recorded object explains
    custom: dict[str, int] = field(default_factory=dict)  # excess of counters from pytest_bitnet_counters hooks
    foreign: int = 0  # how many of objects are not sessions (made through an interposed library)

    def headline(self) -> str:
        parts = [f"{k} +{v}" for k, v in self.counters.items()]
        n = len(self.objects) - self.foreign
        if n:  # open ones too: a session freed meanwhile holds nothing a counter shows
            parts.append(f"{n} session{'s' if n > 1 else ''} not closed")
        if self.foreign:
            parts.append(f"{self.foreign} interposed object{'s' if self.foreign > 1 else ''} not freed")
        return f"bitnet: native objects leaked by {self.nodeid}: " + ", ".join(parts)

    def text(self) -> str:
        lines = [self.headline() + " (after teardown and gc.collect(); close sessions" + (", free or close the objects"
                 if self.foreign else "") + ", or mark the test bitnet_allow_leaks)"]
        for what, stack in self.objects:
            lines += [f"  {what}, created at (most recent call last):", stack.rstrip()]
        if self.native:
            held = ", ".join(f"{k} +{v}" for k, v in self.native.items())
            lines.append(f"  {held} held by no BitnetSession this test created: the leak is inside the native bridge "
                         "(a per-call function, an error path, or a handle taken through the C ABI did not free what it allocated)")
        if self.sources:
            held = ", ".join(f"{k} +{v}" for k, v in self.sources.items())
            lines.append(f"  {held}: objects made through an interposed native library (fault_inject.interpose) during "
                         "the test and not freed after its teardown (free them, or close what owns them)")
        if self.custom:
            held = ", ".join(f"{k} +{v}" for k, v in self.custom.items())
            lines.append(f"  {held}: counters of pytest_bitnet_counters (not the bridge's): what they count outlived the test")
        return "\n".join(lines)


# Frames of pytest's own machinery; a creation stack starts after the last.
_NOISE: Final = (os.sep + "_pytest" + os.sep, os.sep + "pluggy" + os.sep)
#: The bridge's own live counters (of the built-in ones: the others are
#: sources registered with the bridge, e.g. an interposed libllama's)
_BRIDGE: Final = tuple(c for c in COUNTERS if c not in MONOTONIC_COUNTERS)
_ZERO: Final = dict.fromkeys(_BRIDGE, 0)


def _format_stack(stack: traceback.StackSummary) -> str:
    frames = list(stack)
    last = max((i for i, f in enumerate(frames) if any(n in f.filename for n in _NOISE)), default=-1)
    return "".join(traceback.StackSummary.from_list(frames[last + 1 :]).format())


def default_counters() -> dict[str, int]:
    """The built-in counters, always checked: every live counter, the bridge's
    and those of the sources registered with it (an interposed library's)."""
    # Until something loads the bridge nothing native can be alive: a
    # suite that never touches it never loads it for the leak check (an
    # interposed library loads it when it attaches).
    if "pytest_bitnet.bridge._native" not in sys.modules:
        return dict(_ZERO)
    from pytest_bitnet.bridge.counters import live_counters

    return {k: v for k, v in live_counters().items() if k not in MONOTONIC_COUNTERS}


def counters(run: RunState) -> dict[str, int]:
    """The built-in counters and every pytest_bitnet_counters implementation's."""
    c = default_counters()
    builtin = tuple(c)
    for extra in run.config.hook.pytest_bitnet_counters():
        for k, v in (extra or {}).items():
            if k in c:
                what = "the name of a built-in counter" if k in builtin else "returned by another implementation too"
                raise pytest.UsageError(
                    f"pytest_bitnet_counters returned {k!r}, {what}: the built-in counters "
                    f"({', '.join(builtin)}) are always checked, and each implementation's are added to them; "
                    "give yours a name of their own"
                )
            c[k] = int(v)
    return c


def configure(run: RunState) -> None:
    if run.settings.leak_check != "off":
        # Identities and creation stacks, from before any session exists.
        run.previous_tracking = registry.track_creation(True)


def unconfigure(run: RunState) -> None:
    if run.settings.leak_check != "off":
        registry.track_creation(run.previous_tracking)


def start(run: RunState, st: TestState) -> None:
    if st.leak_mode != "off":
        try:
            baseline = counters(run)
        except pytest.UsageError as exc:
            pytest.fail(str(exc), pytrace=False)
        st.mark = registry.watch()
        st.baseline = baseline


def check(run: RunState, item: pytest.Item, st: TestState) -> None:
    """After teardown: sets st.leak when the test leaked."""
    if st.baseline is None:
        return
    reg = registry
    try:
        if reg.quiet_since(st.mark) and not any(v > 0 for v in _excess(st, counters(run)).values()):
            return  # the common case: no session made or freed, no counter above baseline
        leak = _find(run, item, st, reg, collected=False)
        if leak is not None:
            gc.collect()  # only when something looks leaked: a full collection per test is too slow
            leak = _find(run, item, st, reg, collected=True)
    finally:
        reg.unwatch(st.mark)
    if leak is None or item.ihook.pytest_bitnet_leak_found(item=item, leak=leak) is False:
        return
    st.leak = leak


def _excluded(st: TestState, number: int) -> bool:
    return any(lo < number < hi for lo, hi in st.excluded)


def _find(run: RunState, item: pytest.Item, st: TestState, reg: Any, collected: bool) -> Leak | None:
    now = counters(run)
    own = [r for r in reg.tracked(st.mark) if not _excluded(st, r.serial)]
    if not collected and any(r.state == reg.OPEN for r in own):
        return Leak(item.nodeid, {}, [])  # look again after gc.collect(): it may be in a cycle
    excess = _excess(st, now)
    # Sessions of earlier tests (or of no test) freed during this one lowered
    # the totals: add back what they held, or they hide this test's leaks.
    # Ends inside a fixture's window are in st.adjust already.
    for e in reg.ends(st.mark):
        if (e.serial < st.mark or _excluded(st, e.serial)) and not _excluded(st, e.number):
            for k, v in e.delta.items():
                if k in excess:
                    excess[k] -= v
    leaked = [r for r in own if r.state != reg.CLOSED]
    # only the bridge's counters can be inside the bridge; the others are the
    # hooks' or a registered source's (in the built-in set, not the bridge's)
    builtin = set(default_counters())
    custom = {k: v for k, v in excess.items() if k not in builtin and v > 0}
    sources = {k: v for k, v in excess.items() if k in builtin and k not in _BRIDGE and v > 0}
    native = {k: v for k, v in excess.items() if k in _BRIDGE}
    for r in leaked:
        if r.state in (reg.OPEN, reg.PENDING):  # still counted: what it holds is explained
            for k, v in r.footprint.items():
                for held in (native, sources):
                    if k in held:
                        held[k] -= v
    excess = {k: v for k, v in excess.items() if v > 0}
    native = {k: v for k, v in native.items() if v > 0}
    sources = {k: v for k, v in sources.items() if v > 0}
    if not leaked and not excess:
        return None
    objects = [(f"{r.what} {_STATE_TEXT[r.state]}" if r.state == reg.OPEN else f"{r.what}: {_STATE_TEXT[r.state]}",
                _format_stack(r.stack)) for r in leaked]
    # an object a source recorded (a llama model) holds only that source's counters
    foreign = sum(1 for r in leaked if r.footprint and not any(k in _BRIDGE for k in r.footprint))
    return Leak(item.nodeid, excess, objects, native=native, sources=sources, custom=custom, foreign=foreign)


def _excess(st: TestState, now: dict[str, int]) -> dict[str, int]:
    base, adj = st.baseline or {}, st.adjust
    return {k: now[k] - base.get(k, 0) - adj.get(k, 0) for k in now}


# ---- higher-scoped fixtures ----------------------------------------------------------------


@contextlib.contextmanager
def crediting(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Iterator[None]:
    """Around a session/module/class fixture's setup: its delta is not the test's."""
    run = request.config.stash[RUN]
    st = run.current
    if st is None or st.baseline is None:
        yield
        return
    reg = registry
    before, begin = counters(run), reg.mark()
    try:
        yield
    finally:
        after = counters(run)
        for k in after:
            st.adjust[k] = st.adjust.get(k, 0) + after[k] - before.get(k, 0)
        # what it created, and what ended in its setup, is the fixture's
        st.excluded.append((begin, reg.mark()))
        # Runs before the fixture's own teardown (finalizers run last-in first-out).
        fixturedef.addfinalizer(lambda: run.fixture_snapshots.__setitem__(id(fixturedef), (counters(run), reg.mark())))


def fixture_torn_down(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
    """After a session/module/class fixture's teardown: what it freed is not the test's either."""
    run = request.config.stash.get(RUN, None)
    if run is None:
        return
    snap = run.fixture_snapshots.pop(id(fixturedef), None)
    st = run.current
    if snap is None or st is None or st.baseline is None:
        return
    before, begin = snap
    after = counters(run)
    for k in after:
        st.adjust[k] = st.adjust.get(k, 0) + after[k] - before.get(k, 0)
    st.excluded.append((begin, registry.mark()))  # what ended in its teardown is in st.adjust
