"""Per-test fault arming: the run-wide spec, markers, the timeout marker.

Everything armed for a test is disarmed when it ends, whatever its outcome
(:func:`finish` runs from a teardown wrapper and again, as a safety net,
from the protocol wrapper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from . import xdist
from .settings import check_seed, check_spec, check_timeout, usage
from .state import RunState, TestState

if TYPE_CHECKING:
    import fault_inject as fi
    from fault_inject import Resolved


def _fault_inject() -> Any:
    """fault_inject, imported without letting it arm BITNET_INJECT run-wide.

    Under pytest the plugin arms BITNET_INJECT per test (validated as a
    setting); fault_inject's own import-time arming would arm it for the
    whole run, or crash the run on a bad value.
    """
    import os
    import sys

    module = sys.modules.get("fault_inject")
    if module is None:
        saved = os.environ.pop("BITNET_INJECT", None)
        try:
            import fault_inject as module
        finally:
            if saved is not None:
                os.environ["BITNET_INJECT"] = saved
    return module


def configure(run: RunState) -> None:
    """Run-wide: take BITNET_INJECT over from fault_inject, listen to firings if hooks want them."""
    import os

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
    """Reads the test's markers, then arms its spec (run-wide, or a marker's)."""
    spec: Resolved | None = run.settings.inject
    spec_source, thread, seed = run.settings.inject_source, False, run.seed
    timeout_marked = False
    for mark in item.iter_markers():
        if mark.name == "bitnet_allow_leaks":
            st.leak_mode = "off"
        elif mark.name == "bitnet_timeout" and not timeout_marked:
            if len(mark.args) != 1 or mark.kwargs:
                raise usage(f"marker bitnet_timeout on {item.nodeid} takes one argument (seconds), got {mark.args!r} {mark.kwargs!r}")
            seconds = check_timeout(mark.args[0], f"marker bitnet_timeout on {item.nodeid}")
            from pytest_bitnet.bridge import settings

            st.saved_defaults = settings.configure(timeout=seconds)
            timeout_marked = True
        elif mark.name == "bitnet_inject" and spec_source != "marker":
            if len(mark.args) != 1 or set(mark.kwargs) - {"thread", "seed"}:
                raise usage(f"marker bitnet_inject on {item.nodeid} takes (spec, thread=False, seed=None), got {mark.args!r} {mark.kwargs!r}")
            where = f"marker bitnet_inject on {item.nodeid}"
            spec, spec_source = check_spec(mark.args[0], where), "marker"
            thread = bool(mark.kwargs.get("thread", False))
            if mark.kwargs.get("seed") is not None:
                seed = check_seed(str(mark.kwargs["seed"]), where)
    if spec is not None:
        arm(run, st, item, spec, seed=seed, thread=thread, source=spec_source)


def arm(run: RunState, st: TestState, item: pytest.Item, spec: str | Resolved, *, seed: int | None, thread: bool, source: str) -> fi.Armed:
    armed = _fault_inject().arm(spec, seed=run.seed if seed is None else seed, thread=thread, source=source)
    st.armed.append(armed)
    xdist.note_armed(run, item, st)
    return armed


def finish(run: RunState, item: pytest.Item, st: TestState) -> None:
    """Disarms everything the test armed, restores the timeout, delivers firings."""
    try:
        for armed in st.armed:
            st.reports.append(armed.disarm())
        if st.armed:
            xdist.clear_note(run)
    finally:
        if st.saved_defaults is not None:
            from pytest_bitnet.bridge import settings

            settings.restore(st.saved_defaults)
            st.saved_defaults = None
    for event in st.events:
        item.ihook.pytest_bitnet_fault_fired(item=item, event=event)
