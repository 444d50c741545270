"""The native fault-point registry and engine (bitnet_fault.h), in Python values.

This is the bridge's side of fault injection: what the native library
offers, with nothing decided about specs, handles or reports --
:mod:`fault_inject` builds those on top.  Every function takes and returns
plain Python values; cffi stays inside.

The firing callback is installed here once; a harness hands it one Python
callable with :func:`set_fire_handler` and receives a :class:`NativeFiring`
per firing, on the firing thread, inside the native call.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Final, Mapping

from ._native import ffi, lib

__all__ = [
    "ACTION_IDS",
    "LIMITS",
    "NativeDecision",
    "NativeFiring",
    "NativePoint",
    "NativeStats",
    "THIS_THREAD",
    "arm",
    "armed_points",
    "backtrace",
    "compiled_in",
    "decide",
    "disarm",
    "disarm_all",
    "error_codes",
    "host_table",
    "points",
    "register_points",
    "set_fire_handler",
    "set_remote",
    "stats",
]

log = logging.getLogger("pytest_bitnet")

#: action name -> native id, read from bitnet_fault.h's BITNET_FAULT_* enum
#: (the other BITNET_FAULT_* names are the count, limits and flags).
_NOT_ACTIONS: Final = ("N_ACTIONS", "THIS_THREAD")
ACTION_IDS: Final[Mapping[str, int]] = dict(sorted(
    ((name[len("BITNET_FAULT_"):].lower(), int(getattr(lib, name))) for name in dir(lib)
     if name.startswith("BITNET_FAULT_") and not name.startswith("BITNET_FAULT_MAX_")
     and name[len("BITNET_FAULT_"):] not in _NOT_ACTIONS),
    key=lambda kv: kv[1],
))

#: Limits of the grammar the native engine enforces (bitnet_fault.h).
LIMITS: Final[Mapping[str, int]] = {
    name[len("BITNET_FAULT_"):].lower(): int(getattr(lib, name)) for name in dir(lib) if name.startswith("BITNET_FAULT_MAX_")
}

#: arm() flag: only the arming thread's hits count and fire.
THIS_THREAD: Final = int(lib.BITNET_FAULT_THIS_THREAD)


@dataclass(frozen=True)
class NativePoint:
    """One entry of the registry (points.def)."""

    index: int
    name: str
    description: str
    default_code: int
    actions: frozenset[str]


@dataclass(frozen=True)
class NativeStats:
    """Counters of one point since it was last armed."""

    hits: int
    fired: int
    first_fired_hit: int
    armed: bool
    thread_scoped: bool


@dataclass(frozen=True)
class NativeFiring:
    """What the engine reports of one firing (before performing it)."""

    point: int  # registry index
    term: int
    action: str
    code: int
    arg: int
    hit: int
    first: bool


def compiled_in() -> bool:
    """False when the bridge was built with BITNET_FAULTS=0 (no points)."""
    return bool(lib.bitnet_fault_compiled_in())


@functools.cache
def error_codes() -> Mapping[str, int]:
    """Native error code names (``BITNET_E_OOM``...) and their values."""
    return {n: int(getattr(lib, n)) for n in dir(lib) if n.startswith("BITNET_E_") and n != "BITNET_E_MIN"}


# The points read so far.  The native registry only grows (points.def, then
# points a loaded library registers at run time, never removed or changed),
# so the points read once stay true and a call reads only the new ones.
_points: tuple[NativePoint, ...] = ()
_points_lock = threading.Lock()


def points() -> tuple[NativePoint, ...]:
    """Every registered point, in registry order (readable in any build),
    as the registry is now: points registered since the last call are in."""
    global _points
    n = int(lib.bitnet_fault_point_count())
    if n == len(_points):
        return _points
    with _points_lock:
        by_id = {v: k for k, v in ACTION_IDS.items()}
        out = list(_points)
        info = ffi.new("bitnet_fault_point_t *")
        for i in range(len(out), n):
            if lib.bitnet_fault_point_info(i, info) != 0:
                raise RuntimeError(f"bitnet_fault_point_info({i}) failed")
            actions = frozenset(by_id[j] for j in by_id if info.actions & (1 << j))
            out.append(NativePoint(i, ffi.string(info.name).decode(), ffi.string(info.description).decode(),
                                   int(info.default_code), actions))
        _points = tuple(out)
        return _points


def register_points(new: list[tuple[str, str, int, frozenset[str] | set[str]]]) -> int:
    """Registers points (name, description, default code, actions) in the
    native registry, as a library does through the host table; returns the
    first one's index.  Raises ValueError with the native refusal."""
    names = [ffi.new("char[]", name.encode()) for name, *_ in new]
    descs = [ffi.new("char[]", desc.encode()) for _, desc, *_ in new]
    pts = ffi.new("bitnet_fault_point_t[]", len(new))
    for i, (_, _, code, actions) in enumerate(new):
        unknown = set(actions) - set(ACTION_IDS)
        if unknown:
            raise ValueError(f"register_points: unknown actions {sorted(unknown)!r}; known: {', '.join(ACTION_IDS)}")
        pts[i].name, pts[i].description, pts[i].default_code = names[i], descs[i], code
        pts[i].actions = sum(1 << ACTION_IDS[a] for a in actions)
    first = ffi.new("int32_t *")
    rc = lib.bitnet_fault_register_points(pts, len(new), first)
    if rc:
        n = lib.bitnet_cpp_get_last_error(ffi.NULL, 0)
        buf = ffi.new("char[]", n + 1)
        lib.bitnet_cpp_get_last_error(buf, n + 1)
        raise ValueError(ffi.string(buf).decode("utf-8", "replace"))
    return int(first[0])


def host_table() -> int:
    """The address of the bridge's bitnet_host.h table, for handing to a
    cooperating library this process loads itself (an interposing
    libllama's attach function)."""
    return int(ffi.cast("uintptr_t", lib.bitnet_bridge_host_table()))


def arm(pattern: str, terms: list[tuple[float, int, int, int]], seed: int, flags: int = 0) -> str | None:
    """Arms pattern with terms (probability, count, action id, arg).

    Returns None when armed, else the native refusal's message.
    """
    native_terms = ffi.new("bitnet_fault_term_t[]", len(terms))
    for i, (prob, count, action, arg) in enumerate(terms):
        native_terms[i].probability = prob
        native_terms[i].count = count
        native_terms[i].action = action
        native_terms[i].arg = arg
    err = ffi.new("char[]", 1024)
    n = ffi.new("int32_t *")
    rc = lib.bitnet_fault_arm(pattern.encode(), native_terms, len(terms), seed, flags, n, err, len(err))
    return ffi.string(err).decode("utf-8", "replace") if rc else None


def disarm(pattern: str) -> int:
    """Disarms the armed points matching pattern; how many there were."""
    n = ffi.new("int32_t *")
    lib.bitnet_fault_disarm(pattern.encode(), n, ffi.NULL, 0)
    return int(n[0])


def disarm_all() -> int:
    """Disarms everything armed natively; how many points were armed."""
    return int(lib.bitnet_fault_disarm_all())


def stats(index: int) -> NativeStats:
    st = ffi.new("bitnet_fault_stats_t *")
    lib.bitnet_fault_stats(index, st)
    return NativeStats(int(st.hits), int(st.fired), int(st.first_fired_hit), bool(st.armed), bool(st.thread_scoped))


def backtrace(index: int) -> str | None:
    """The native backtrace at the point's first firing, where supported."""
    n = lib.bitnet_fault_backtrace(index, ffi.NULL, 0)
    if n <= 0:
        return None
    buf = ffi.new("char[]", n + 1)
    lib.bitnet_fault_backtrace(index, buf, n + 1)
    return str(ffi.string(buf).decode("utf-8", "replace"))


# ---- the firing callback ----------------------------------------------------------

_handler: Callable[[NativeFiring], None] | None = None
_ACTION_NAMES: Final = {v: k for k, v in ACTION_IDS.items()}


@ffi.def_extern()  # type: ignore[untyped-decorator]
def _bitnet_fault_fired(user: Any, event: Any) -> None:
    # Runs on the firing thread, inside the native call (the engine's
    # re-entry guard is held, so nothing native fires from here).  It must
    # never raise into C.
    handler = _handler
    if handler is None:
        return
    try:
        handler(NativeFiring(int(event.point), int(event.term), _ACTION_NAMES.get(int(event.action), "?"),
                             int(event.code), int(event.arg), int(event.hit), bool(event.first)))
    except Exception:
        log.exception("pytest_bitnet: the fault firing handler raised")


def set_fire_handler(handler: Callable[[NativeFiring], None] | None) -> None:
    """Calls handler(NativeFiring) on every firing (None: stop).

    The handler runs on the firing thread while the native call waits; it
    must be quick and must not arm, disarm or call the bridge (the firing
    thread may hold a bridge lock: ``alloc`` fires inside the handle
    registry, for one).  Its exceptions are logged, never raised into C.
    """
    global _handler
    _handler = handler


# ---- hits decided in another process (process isolation) --------------------------
#
# An isolated session's worker serves its library with the caller's points
# armed (bitnet_fault.h, "hits decided by another process"): the caller
# lists what is armed (armed_points), the worker marks those (set_remote)
# and asks the caller about every hit; the caller's engine decides it
# (decide) on the calling thread, so counts, draws, firings and reports are
# the caller's own.


@dataclass(frozen=True)
class NativeDecision:
    """What the deciding engine chose for one hit (bitnet_fault_decision_t)."""

    term: int
    action: int
    code: int
    arg: int
    hit: int
    text: bytes


#: decide()'s answers (bitnet_fault_decide)
NOT_IN_SCOPE: Final = 0
COUNTED: Final = 1
FIRES: Final = 2


def armed_points() -> tuple[int, ...]:
    """The indexes of the points armed now (one native load when none is)."""
    n = int(lib.bitnet_fault_armed_list(ffi.NULL, 0))
    if not n:
        return ()
    buf = ffi.new("int32_t[]", n + 8)  # room for a few armed meanwhile
    got = int(lib.bitnet_fault_armed_list(buf, n + 8))
    return tuple(buf[0:min(got, n + 8)])


def decide(point: int, locked: bool) -> tuple[int, NativeDecision | None]:
    """This engine's decision for a hit of `point` made elsewhere, on this thread's behalf.

    (NOT_IN_SCOPE | COUNTED | FIRES, the decision when FIRES).  The firing
    handler (set_fire_handler) has been told of a firing, as for a local one.
    """
    out = ffi.new("bitnet_fault_decision_t *")
    how = int(lib.bitnet_fault_decide(point, int(locked), out))
    if how != FIRES:
        return how, None
    return how, NativeDecision(int(out.term), int(out.action), int(out.code), int(out.arg), int(out.hit),
                               bytes(ffi.string(out.text)))


_decider: Callable[[int, bool], tuple[int, NativeDecision | None]] | None = None


@ffi.def_extern()  # type: ignore[untyped-decorator]
def _bitnet_fault_decide(user: Any, point: int, locked: int, out: Any) -> int:
    # Runs on the hitting thread inside a native call of this (worker)
    # process; never raises into C: an unanswerable hit fires nothing.
    decider = _decider
    if decider is None:
        return 0
    try:
        how, d = decider(int(point), bool(locked))
        if how == FIRES and d is not None:
            out.term, out.action, out.code, out.arg, out.hit = d.term, d.action, d.code, d.arg, d.hit
            text = d.text[: ffi.sizeof(out.text) - 1]
            ffi.memmove(out.text, text + b"\0", len(text) + 1)
        return int(how)
    except Exception:
        log.exception("pytest_bitnet: the remote fault decider raised")
        return 0


def set_remote(points: tuple[int, ...], decider: Callable[[int, bool], tuple[int, NativeDecision | None]] | None) -> None:
    """Makes `points` decided by decider(point, locked) -> decide()'s answer (() / None: none)."""
    global _decider
    if not compiled_in():
        return
    _decider = decider if points else None
    arr = ffi.new("int32_t[]", list(points)) if points else ffi.NULL
    rc = lib.bitnet_fault_set_remote(arr, len(points), lib._bitnet_fault_decide if points else ffi.NULL, ffi.NULL)
    if rc:
        raise ValueError(f"set_remote({points!r}) refused (code {rc})")


def _install() -> None:
    if compiled_in():
        lib.bitnet_fault_set_callback(lib._bitnet_fault_fired, ffi.NULL)
        # Python is going away: firings during shutdown must not call into it.
        atexit.register(lib.bitnet_fault_set_callback, ffi.NULL, ffi.NULL)


_install()
