"""Per-test fault arming: the run-wide spec, markers, the fixture, the timeout marker.

Composition, one rule for every way of arming: the narrower scope wins for
the points it names, the wider ones stay armed for the rest.  From wide to
narrow: the run-wide spec (--bitnet-inject, else BITNET_INJECT, else the
ini key) < a module marker < a class marker < a function marker (of
markers stacked on one function, the one nearest the ``def``) < each
``bitnet_inject`` fixture call (a later call over an earlier one).  Each is
armed over the ones before it (:func:`fault_inject.arm` with ``over=``), so
a narrower spec takes over its points and gives them back when it is
disarmed; hits count to whichever spec held the point.

Draws: each test arms with its own seed, ``fault_inject.derive_seed(run
seed, node id)``, unless a marker or the fixture names one; so ``pytest
NODEID --bitnet-seed=RUN`` draws what that test drew in the full run.

Hangs: an injected ``hang`` ends only at the call's deadline or at
``cancel()``; a test that arms one while its native calls have no default
deadline (``--bitnet-timeout=none``, ``bitnet_timeout(None)``) would hang the
run, so it is refused: a usage error at configure time for the run-wide
spec, an error of the test for a marker or the fixture.

Everything armed for a test is disarmed when it ends, whatever its outcome
(:func:`finish` runs from a teardown wrapper and again, as a safety net,
from the protocol wrapper).
"""

from __future__ import annotations

import math
import shlex
from typing import TYPE_CHECKING, Any, Final

import pytest

from . import interpose, xdist
from .settings import check_seed, check_spec, check_timeout, import_fault_inject, rerun_flags, usage
from .state import RunState, TestState

if TYPE_CHECKING:
    import fault_inject as fi
    from fault_inject import Resolved

#: The fixture's source label (also the scope the hang check names).
FIXTURE: Final = "the bitnet_inject fixture"


def _fault_inject() -> Any:
    return import_fault_inject()


def _default_timeout() -> float:
    from pytest_bitnet.bridge import settings

    return settings.default_timeout()


def hang_refusal(spec: Resolved, source: str, timeout: float, timeout_from: str) -> str | None:
    """Why arming spec would hang the run (None: it would not).

    A hang sleeps until the call's deadline or cancel(); with no default
    deadline, every call that does not pass its own timeout would wait for
    ever (session calls for a cancel() nobody sends).
    """
    if not spec.hangs or math.isfinite(timeout):
        return None
    return (
        f"fault spec {str(spec)!r} from {source} injects a hang at {', '.join(spec.hangs)}, but native calls have no "
        f"deadline ({timeout_from}), so the test would hang for ever; give them one: --bitnet-timeout=SECONDS, "
        "ini bitnet_timeout, or @pytest.mark.bitnet_timeout(SECONDS) on the test"
    )


def configure(run: RunState) -> None:
    """Run-wide: refuse a run-wide hang without deadline, take BITNET_INJECT over from
    fault_inject, listen to firings if hooks want them."""
    import os

    s = run.settings
    if s.inject is not None:
        timeout = s.timeout if s.timeout is not None else _default_timeout()
        refused = hang_refusal(s.inject, s.inject_source, timeout, s.timeout_source if s.timeout is not None else "the bridge's default")
        if refused:
            raise usage(refused)
    if os.environ.get("BITNET_INJECT", "").strip():
        # armed run-wide when something imported fault_inject first: the
        # plugin arms it per test instead, so hits are counted per test
        _fault_inject().release_env()
    if run.config.pluginmanager.hook.pytest_bitnet_fault_fired.get_hookimpls():
        run.unsubscribe = _fault_inject().on_fire(lambda event: _on_fire(run, event))


def _on_fire(run: RunState, event: fi.FireEvent) -> None:
    # On the firing thread, inside a native call: only record.
    cur = run.current
    if cur is not None and len(cur.events) < 10_000:
        cur.events.append(event)


def start(run: RunState, item: pytest.Item, st: TestState) -> None:
    """Reads the test's markers, then arms its specs, widest first (module docstring)."""
    layers: list[tuple[Resolved, str, bool, int | None]] = []  # (spec, source, thread, seed), narrowest first
    timeout_from = run.settings.timeout_source if run.settings.timeout is not None else "the bridge's default"
    timeout_marked = False
    for node, mark in item.iter_markers_with_node():  # the closest node first; on one node, the innermost first
        if mark.name == "bitnet_allow_leaks":
            st.leak_mode = "off"
        elif mark.name == "bitnet_timeout" and not timeout_marked:
            if len(mark.args) != 1 or mark.kwargs:
                raise usage(f"marker bitnet_timeout on {item.nodeid} takes one argument (seconds), got {mark.args!r} {mark.kwargs!r}")
            where = f"marker bitnet_timeout on {node.nodeid}"
            # None: no deadline (as the bridge's timeout= takes it), the same as math.inf
            seconds = math.inf if mark.args[0] is None else check_timeout(mark.args[0], where)
            from pytest_bitnet.bridge import settings

            st.saved_defaults = settings.configure(timeout=seconds)
            interpose.sync_timeout(run.config)
            timeout_marked, timeout_from = True, where
        elif mark.name == "bitnet_inject":
            if len(mark.args) != 1 or set(mark.kwargs) - {"thread", "seed"}:
                raise usage(f"marker bitnet_inject on {node.nodeid} takes (spec, thread=False, seed=None), got {mark.args!r} {mark.kwargs!r}")
            where = f"marker bitnet_inject on {node.nodeid}"
            seed = check_seed(str(mark.kwargs["seed"]), where) if mark.kwargs.get("seed") is not None else None
            layers.append((check_spec(mark.args[0], where), where, bool(mark.kwargs.get("thread", False)), seed))
    if run.settings.inject is not None:
        layers.append((run.settings.inject, run.settings.inject_source, False, None))
    if not layers:
        return  # most tests: nothing to arm, nothing more to read
    timeout = _default_timeout()
    for spec, source, _, _ in layers:
        refused = hang_refusal(spec, source, timeout, timeout_from)
        if refused:
            raise usage(refused)
    for spec, source, thread, seed in reversed(layers):
        arm(run, st, item, spec, seed=seed, thread=thread, source=source)


def seed_of(run: RunState, item: pytest.Item, st: TestState) -> int:
    """The seed of this test's draws when no marker or fixture call names one."""
    if st.seed is None:
        assert run.seed is not None
        st.seed = _fault_inject().derive_seed(run.seed, item.nodeid)
    return st.seed


def arm(run: RunState, st: TestState, item: pytest.Item, spec: str | Resolved, *, seed: int | None, thread: bool, source: str) -> fi.Armed:
    """Arms spec for the test, over everything the test armed before (the narrower wins)."""
    fi = _fault_inject()
    if source == FIXTURE:
        resolved = fi.validate(spec, source=source)
        refused = hang_refusal(resolved, source, _default_timeout(), "the test's default")
        if refused:
            raise usage(refused)
        spec = resolved
    armed = fi.arm(spec, seed=seed_of(run, item, st) if seed is None else seed, thread=thread, source=source, over=st.armed)
    st.armed.append(armed)
    xdist.note_armed(run, item, st)
    return armed


def reproduce(run: RunState, item: pytest.Item, st: TestState) -> str | None:
    """What reruns this test alone with the same draws (for its failure report)."""
    if not st.armed:
        return None
    lines = []
    for a in st.armed:
        how = f"test seed {a.seed}" + (f" = derive_seed(run seed {run.seed}, node id)" if a.seed == st.seed else " (given)")
        lines.append(f"fault spec {str(a.spec)!r} ({a.resolved.source or 'armed'}), {how}")
    command = ["pytest", item.nodeid, f"--bitnet-seed={run.seed}"]
    if run.settings.inject is not None:
        command.append(f"--bitnet-inject={run.settings.inject}")
    command += rerun_flags(run.settings)
    lines.append("reproduce this test with the same draws: " + " ".join(shlex.quote(c) for c in command))
    return "\n".join(lines)


def finish(run: RunState, item: pytest.Item, st: TestState) -> None:
    """Disarms everything the test armed, restores the timeout, delivers firings."""
    try:
        for armed in reversed(st.armed):  # the narrowest first: nothing is handed back only to be disarmed
            st.reports.insert(0, armed.disarm())
        if st.armed:
            xdist.clear_note(run)
    finally:
        if st.saved_defaults is not None:
            from pytest_bitnet.bridge import settings

            settings.restore(st.saved_defaults)
            st.saved_defaults = None
            interpose.sync_timeout(run.config)
    for event in st.events:
        item.ihook.pytest_bitnet_fault_fired(item=item, event=event)
