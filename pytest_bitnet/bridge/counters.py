"""Live native counters, and where each live session was created.

The native bridge counts every object and byte it holds (bitnet.h,
``bitnet_counters_t``).  This module is the one list of those counters'
names, the reading of them, and the registry of creation stacks a leak
report names.  Importing it loads nothing native: :func:`live_counters`
loads the bridge on first use, so a harness can hold the names (and turn
tracking on) before any test touched the bridge.
"""

from __future__ import annotations

import threading
import traceback
import weakref
from typing import TYPE_CHECKING, Final, Mapping

if TYPE_CHECKING:
    from .session import BitnetSession

__all__ = [
    "COUNTERS",
    "LEAK_COUNTERS",
    "MONOTONIC_COUNTERS",
    "creation_seq",
    "delta",
    "live_counters",
    "open_sessions",
    "track_creation",
    "tracking",
]

#: Every field of bitnet_counters_t, in its order (checked against the C
#: struct when the bridge loads).
COUNTERS: Final = ("contexts", "sessions", "models", "bytes", "allocations", "model_loads", "peak_bytes")
#: Those that only grow (a history, not something alive).
MONOTONIC_COUNTERS: Final = ("model_loads", "peak_bytes")
#: What a leak check compares: everything alive.
LEAK_COUNTERS: Final = tuple(c for c in COUNTERS if c not in MONOTONIC_COUNTERS)


def live_counters() -> dict[str, int]:
    """Live native objects and bytes (contexts, sessions, models, bytes,
    allocations) and the monotonic model_loads and peak_bytes."""
    from ._native import ffi, lib

    c = ffi.new("bitnet_counters_t *")
    lib.bitnet_cpp_get_counters(c)
    return {name: int(getattr(c, name)) for name in COUNTERS}


def delta(before: Mapping[str, int], after: Mapping[str, int], names: tuple[str, ...] = LEAK_COUNTERS) -> dict[str, int]:
    """after - before for each counter in `names` that moved."""
    return {k: after[k] - before[k] for k in names if after.get(k, 0) != before.get(k, 0)}


# ---- creation stacks (for leak reports) ---------------------------------------------


class _CreationRegistry:
    """Where each live session was created, while tracking is on.

    The pytest plugin's leak check turns tracking on so a leaked session can
    be named with the Python stack that created it; off (the default) it
    costs create() one branch.
    """

    __slots__ = ("enabled", "live", "seq", "lock")

    def __init__(self) -> None:
        self.enabled = False  # record stacks in create()
        self.seq = 0  # sessions recorded so far (a creation order)
        self.lock = threading.Lock()
        self.live: weakref.WeakKeyDictionary[BitnetSession, tuple[int, traceback.StackSummary]] = weakref.WeakKeyDictionary()

    def record(self, session: BitnetSession) -> None:
        # [:-2]: drop record() and create() themselves
        stack = traceback.StackSummary.from_list(traceback.extract_stack()[:-2])
        with self.lock:
            self.seq += 1
            self.live[session] = (self.seq, stack)


_CREATED: Final = _CreationRegistry()


def tracking() -> bool:
    """Whether creation stacks are being recorded."""
    return _CREATED.enabled


def record(session: BitnetSession) -> None:
    """Called by BitnetSession.create while tracking is on."""
    _CREATED.record(session)


def track_creation(enabled: bool) -> bool:
    """Records the creating stack of every session from now on (or stops).

    Returns the previous setting, so nested users can restore it.
    """
    previous = _CREATED.enabled
    _CREATED.enabled = bool(enabled)
    if not enabled:
        with _CREATED.lock:
            _CREATED.live.clear()
    return previous


def creation_seq() -> int:
    """The number of sessions recorded so far; compare with open_sessions()."""
    return _CREATED.seq


def open_sessions(after: int = 0) -> list[tuple[int, BitnetSession, traceback.StackSummary]]:
    """Open sessions recorded after creation number `after`: (number, session, stack)."""
    with _CREATED.lock:
        items = list(_CREATED.live.items())
    return sorted(((seq, s, stack) for s, (seq, stack) in items if seq > after and not s.closed), key=lambda t: t[0])
