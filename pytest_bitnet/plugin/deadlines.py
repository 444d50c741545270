"""The one-time warning for a library whose calls no timeout can stop.

A session whose library cannot honour deadlines in process (the bridge's
:mod:`pytest_bitnet.bridge.deadlines` says which and why) makes every
timeout of the run a promise nobody keeps: a hang inside the library hangs
the run.  The first in-process session of each such library gets one
:class:`BitnetUnboundedCallsWarning` per run (per xdist worker), naming the
library, why, the test that created it, and what bounds the calls.

The bridge tells us inside ``create()``; the warning is issued after the
test's call (or its teardown), not from inside ``create()``: the session
exists by then, so the bridge logs and swallows whatever a listener raises
(create() must hand the session out, or it would leak), and a warning
turned into an error there would never reach the test.  Issued here,
turned into an error (``-W error::pytest_bitnet.plugin.BitnetUnboundedCallsWarning``)
it fails the test that created the session, and nothing leaks.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Final

import pytest

__all__ = ["MESSAGE", "BitnetUnboundedCallsWarning", "configure", "start", "unconfigure", "warn_pending"]


class BitnetUnboundedCallsWarning(pytest.PytestWarning):
    """Calls into a session's library cannot be bounded in process (once per library per run)."""

    __module__ = "pytest_bitnet.plugin"


#: The warning's text; {where}: "in <nodeid>" or "outside any test".
MESSAGE: Final = (
    "calls into {library} cannot be bounded in process ({reason}); a hang there hangs the run: "
    "--bitnet-isolation=process (env BITNET_ISOLATION=process) bounds them. First session created {where}"
)

_PACKAGE: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pytest_bitnet/


class _Watch:
    """The run's libraries heard of, and the warnings still to issue."""

    __slots__ = ("current", "lock", "pending", "seen", "unsubscribe")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the listener runs on whichever thread creates a session
        self.seen: set[str] = set()  # libraries warned of (or pending): once per run
        self.pending: list[tuple[str, str, str, tuple[str, int]]] = []  # (library, reason, where, (file, line))
        self.current: str | None = None  # nodeid of the test between setup start and its teardown
        self.unsubscribe = lambda: None

    def heard(self, library: str, reason: str) -> None:
        # inside create(): note it, raise nothing
        with self.lock:
            if library in self.seen:
                return
            self.seen.add(library)
            where = f"in {self.current}" if self.current else "outside any test"
            self.pending.append((library, reason, where, _caller()))


_WATCH: Final = pytest.StashKey[_Watch]()


def _caller() -> tuple[str, int]:
    """Where create() was called from: the first frame outside pytest_bitnet."""
    f = sys._getframe(1)
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_PACKAGE + os.sep):
        f = f.f_back
    return (f.f_code.co_filename, f.f_lineno) if f is not None else ("<unknown>", 0)


def configure(config: pytest.Config) -> None:
    from pytest_bitnet.bridge import deadlines

    watch = _Watch()
    watch.unsubscribe = deadlines.on_unbounded(watch.heard)
    config.stash[_WATCH] = watch


def unconfigure(config: pytest.Config) -> None:
    watch = config.stash.get(_WATCH, None)
    if watch is not None:
        watch.unsubscribe()
        del config.stash[_WATCH]


def start(item: pytest.Item) -> None:
    """At the start of a test's setup: sessions from here on are its."""
    watch = item.config.stash.get(_WATCH, None)
    if watch is not None:
        watch.current = item.nodeid


def warn_pending(item: pytest.Item, *, ended: bool = False) -> None:
    """Issues the warnings heard so far (inside the test's warning capture);
    ended: the test's teardown is over, later sessions are no test's."""
    watch = item.config.stash.get(_WATCH, None)
    if watch is None:
        return
    with watch.lock:
        todo, watch.pending = watch.pending, []
        if ended:
            watch.current = None
    for i, (library, reason, where, (filename, lineno)) in enumerate(todo):
        try:
            warnings.warn_explicit(
                MESSAGE.format(library=library, reason=reason, where=where), BitnetUnboundedCallsWarning, filename, lineno
            )
        except BaseException:  # an error filter: this one fails the test, the rest wait for the next
            with watch.lock:
                watch.pending[:0] = todo[i + 1 :]
            raise
