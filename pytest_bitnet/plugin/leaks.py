"""The leak check: native counters before a test and after its teardown.

Objects made by session-, module- or class-scoped fixtures belong to no
test: their deltas are credited to the baseline of the test that set them
up or tore them down.  A leak names each open session with the Python
stack that created it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Final, Iterator

import pytest

from pytest_bitnet.bridge.counters import LEAK_COUNTERS

from .state import RUN, RunState, TestState

__all__ = ["Leak", "check", "counters", "crediting", "default_counters", "fixture_torn_down", "start"]


@dataclass
class Leak:
    """What one test leaked: counters above baseline, and the sessions behind them."""

    nodeid: str
    counters: dict[str, int]  # counter -> excess over baseline
    objects: list[tuple[str, str]]  # (repr of the session, Python stack where it was created)

    def headline(self) -> str:
        return f"bitnet: native objects leaked by {self.nodeid}: " + ", ".join(f"{k} +{v}" for k, v in self.counters.items())

    def text(self) -> str:
        lines = [self.headline() + " (after teardown and gc.collect(); close sessions, or mark the test bitnet_allow_leaks)"]
        for what, stack in self.objects:
            lines += [f"  {what} created at (most recent call last):", stack.rstrip()]
        if not self.objects:
            lines.append("  no open BitnetSession was created by this test: the leak is inside the native bridge "
                         "(a per-call function or an error path did not free what it allocated)")
        return "\n".join(lines)


# Frames of pytest's own machinery; a creation stack starts after the last.
_NOISE: Final = (os.sep + "_pytest" + os.sep, os.sep + "pluggy" + os.sep)
_ZERO: Final = dict.fromkeys(LEAK_COUNTERS, 0)


def _format_stack(stack: traceback.StackSummary) -> str:
    frames = list(stack)
    last = max((i for i, f in enumerate(frames) if any(n in f.filename for n in _NOISE)), default=-1)
    return "".join(traceback.StackSummary.from_list(frames[last + 1 :]).format())


def _counters_module() -> Any:
    # None until pytest_bitnet.bridge.session is imported: no session exists before.
    return sys.modules.get("pytest_bitnet.bridge.counters")


def _creation_seq() -> int:
    mod = _counters_module()
    return mod.creation_seq() if mod is not None else 0


def default_counters() -> dict[str, int]:
    """The built-in pytest_bitnet_counters: the bridge's live counters."""
    # Until something loads the bridge nothing native can be alive: a
    # suite that never touches it never loads it for the leak check.
    if "pytest_bitnet.bridge._native" not in sys.modules:
        return _ZERO
    from pytest_bitnet.bridge.counters import live_counters

    c = live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


def counters(run: RunState) -> dict[str, int]:
    return run.config.hook.pytest_bitnet_counters()  # type: ignore[no-any-return]


def configure(run: RunState) -> None:
    if run.settings.leak_check != "off":
        # Creation stacks for leak reports, from before any session exists.
        from pytest_bitnet.bridge import counters as bridge_counters

        run.previous_tracking = bridge_counters.track_creation(True)


def unconfigure(run: RunState) -> None:
    if run.settings.leak_check != "off":
        from pytest_bitnet.bridge import counters as bridge_counters

        bridge_counters.track_creation(run.previous_tracking)


def start(run: RunState, st: TestState) -> None:
    if st.leak_mode != "off":
        st.seq_start = _creation_seq()
        st.baseline = counters(run)


def check(run: RunState, item: pytest.Item, st: TestState) -> None:
    """After teardown: sets st.leak when counters stay above the baseline."""
    if st.baseline is None:
        return
    excess = _excess(st, counters(run))
    if not excess:
        return
    gc.collect()  # only when something looks leaked: a full collection per test is too slow
    excess = _excess(st, counters(run))
    if not excess:
        return
    from pytest_bitnet.bridge import counters as bridge_counters

    objects = [
        (repr(s), _format_stack(stack))
        for seq, s, stack in bridge_counters.open_sessions(st.seq_start)
        if not any(lo < seq <= hi for lo, hi in st.excluded)
    ]
    leak = Leak(item.nodeid, excess, objects)
    if item.ihook.pytest_bitnet_leak_found(item=item, leak=leak) is False:
        return
    st.leak = leak


def _excess(st: TestState, now: dict[str, int]) -> dict[str, int]:
    base, adj = st.baseline or {}, st.adjust
    return {k: d for k in now if (d := now[k] - base.get(k, 0) - adj.get(k, 0)) > 0}


# ---- higher-scoped fixtures ----------------------------------------------------------------


@contextlib.contextmanager
def crediting(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Iterator[None]:
    """Around a session/module/class fixture's setup: its delta is not the test's."""
    run = request.config.stash[RUN]
    st = run.current
    if st is None or st.baseline is None:
        yield
        return
    before, seq = counters(run), _creation_seq()
    try:
        yield
    finally:
        after = counters(run)
        for k in after:
            st.adjust[k] = st.adjust.get(k, 0) + after[k] - before.get(k, 0)
        st.excluded.append((seq, _creation_seq()))
        # Runs before the fixture's own teardown (finalizers run last-in first-out).
        fixturedef.addfinalizer(lambda: run.fixture_snapshots.__setitem__(id(fixturedef), counters(run)))


def fixture_torn_down(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
    """After a session/module/class fixture's teardown: what it freed is not the test's either."""
    run = request.config.stash.get(RUN, None)
    if run is None:
        return
    before = run.fixture_snapshots.pop(id(fixturedef), None)
    st = run.current
    if before is None or st is None or st.baseline is None:
        return
    after = counters(run)
    for k in after:
        st.adjust[k] = st.adjust.get(k, 0) + after[k] - before.get(k, 0)
