"""Hooks the bitnet pytest plugin calls, for downstream conftest.py files and plugins.

Implement them in a ``conftest.py`` (or a plugin)::

    def pytest_bitnet_fault_fired(item, event):
        print(f"{item.nodeid}: {event.point} fired ({event.action}) at hit {event.hit}")

    def pytest_bitnet_leak_found(item, leak):
        if item.get_closest_marker("known_leak"):
            return False          # accept it: the test does not fail

    def pytest_bitnet_counters():
        return {"wrapper_handles": len(my_wrapper.OPEN)}   # checked besides the bridge's

They are registered by the plugin with ``pytest_addhooks``; nothing here
imports the native library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fault_inject import FireEvent

    from .leaks import Leak


@pytest.hookspec()
def pytest_bitnet_fault_fired(item: pytest.Item, event: FireEvent) -> None:
    """A fault armed for ``item`` fired.

    Called once per firing, in order, on the process that ran the test
    (an xdist worker), after the test phase in which it fired: a firing
    happens inside a native call, where calling back into arbitrary Python
    (which might call the bridge again) is not safe.  ``event`` is a
    :class:`fault_inject.FireEvent` (point, hit, action, code, thread,
    python_stack of the first firing, spec).
    """


@pytest.hookspec(firstresult=True)
def pytest_bitnet_leak_found(item: pytest.Item, leak: Leak) -> bool | None:
    """Native objects outlived ``item`` (after teardown and ``gc.collect()``).

    ``leak.counters`` maps each counter above its baseline to the excess;
    ``leak.objects`` lists the sessions the test did not close (still open,
    or freed by their finalizer) with the Python stack that created them;
    ``leak.native`` is the bridge counters' excess no such session explains
    (a leak inside the native bridge), ``leak.custom`` that of the counters
    of ``pytest_bitnet_counters`` implementations.  Return False to accept
    the leak (the test does not fail and it is not listed), True or None for
    the default handling
    (``--bitnet-leak-check``: strict fails the test, warn reports it).
    The first non-None result wins.
    """


@pytest.hookspec()
def pytest_bitnet_counters() -> dict[str, int] | None:
    """More live counters to leak-check, as a dict of ints (or None).

    The built-in counters -- the bridge's contexts, sessions, models, bytes
    and allocations (:func:`pytest_bitnet.live_counters`) -- are always
    checked; every implementation's counters are checked in addition (for
    example the handles of a library wrapping the bridge).  Their names must
    differ from the built-in ones and from each other's.  A leak of one is
    reported as that counter's, never as a leak inside the native bridge.
    """
