"""Firings as events: every firing of an armed point, heard on the firing thread.

The bridge reports each firing (pytest_bitnet.bridge.faults); this module
turns it into a :class:`FireEvent`, keeps the Python stack of each point's
first firing on the handle that armed it, and hands the event to the
listeners registered with :func:`on_fire`.  Nothing here knows about pytest.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass
from typing import Callable

from pytest_bitnet.bridge import faults as native

from . import registry
from .arming import owner_of

__all__ = ["FireEvent", "on_fire"]

log = logging.getLogger("fault_inject")


@dataclass(frozen=True)
class FireEvent:
    """One firing, as listeners registered with on_fire() see it."""

    point: str
    hit: int  # the hit number at the point (1-based, since armed)
    action: str  # "fail", "oom", "delay", ...
    arg: int  # the term's argument (delay: ms; grow: n)
    code: int  # what the point returns (fail / oom); 0 otherwise
    first: bool  # the point's first firing since armed
    term: int  # index of the chain term taken
    thread: str  # name of the Python thread that fired
    python_stack: tuple[str, ...] | None  # formatted frames, first firing only
    spec: str | None  # the spec that armed the point, if armed from Python


_lock = threading.Lock()
_listeners: tuple[Callable[[FireEvent], None], ...] = ()  # replaced, never mutated


def _fired(firing: native.NativeFiring) -> None:
    # On the firing thread, inside the native call: the engine's re-entry
    # guard is held, so nothing native fires from here.
    name = registry.points()[firing.point].name
    owner = owner_of(name)
    stack = None
    if firing.first:
        stack = tuple(traceback.format_stack()[:-2])  # without this handler and the bridge's
        if owner is not None:
            owner._first.setdefault(name, stack)
    listeners = _listeners
    if not listeners:
        return
    ev = FireEvent(
        point=name,
        hit=firing.hit,
        action=firing.action,
        arg=firing.arg,
        code=firing.code,
        first=firing.first,
        term=firing.term,
        thread=threading.current_thread().name,
        python_stack=stack,
        spec=str(owner.spec) if owner is not None else None,
    )
    for fn in listeners:
        try:
            fn(ev)
        except Exception:
            log.exception("fault_inject: on_fire listener %r raised", fn)


native.set_fire_handler(_fired)


def on_fire(callback: Callable[[FireEvent], None]) -> Callable[[], None]:
    """Calls callback(FireEvent) on every firing; returns the unsubscribe function.

    The callback runs on the firing thread while the native call waits, so
    it can inspect the stack; it must be quick, must not arm or disarm, and
    its exceptions are logged, not raised.  Points reached from inside it do
    not fire.  It should not call the bridge: the firing thread may hold a
    bridge lock (``alloc`` fires inside the handle registry, for one).
    """
    global _listeners
    if not callable(callback):
        raise TypeError(f"on_fire needs a callable, got {type(callback).__name__}")
    with _lock:
        _listeners = (*_listeners, callback)

    def unsubscribe() -> None:
        global _listeners
        with _lock:
            _listeners = tuple(fn for fn in _listeners if fn is not callback)

    return unsubscribe
