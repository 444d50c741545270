"""Hooks the bitnet pytest plugin calls, for downstream conftest.py files and plugins.

Implement them in a ``conftest.py`` (or a plugin)::

    def pytest_bitnet_fault_fired(item, event):
        print(f"{item.nodeid}: {event.point} fired ({event.action}) at hit {event.hit}")

    def pytest_bitnet_leak_found(item, leak):
        if item.get_closest_marker("known_leak"):
            return False          # accept it: the test does not fail

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
    ``leak.objects`` lists the leaked sessions with the Python stack that
    created them.  Return False to accept the leak (the test does not fail
    and it is not listed), True or None for the default handling
    (``--bitnet-leak-check``: strict fails the test, warn reports it).
    The first non-None result wins.
    """


@pytest.hookspec(firstresult=True)
def pytest_bitnet_counters() -> dict[str, Any] | None:
    """Live native counters to leak-check, as a dict of ints.

    The default reads :func:`pytest_bitnet.live_counters` and checks
    contexts, sessions, models, bytes and allocations; return your own
    dict (for example with counters of a library wrapping the bridge) to
    change what is checked.  The first non-None result wins.
    """
