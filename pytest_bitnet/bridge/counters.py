"""Live native counters, and the registry of the sessions Python made.

The native bridge counts every object and byte it holds (bitnet.h,
``bitnet_counters_t``).  This module is the one list of those counters'
names, the reading of them, and -- while tracking is on -- the registry of
every session's identity, creation stack and end (closed, or freed by its
finalizer) that a leak check accounts per object.  Importing it loads
nothing native: :func:`live_counters` loads the bridge on first use, so a
harness can hold the names (and turn tracking on) before any test touched
the bridge.
"""

from __future__ import annotations

import collections
import itertools
import threading
import traceback
from typing import TYPE_CHECKING, Callable, Final, Iterator, Mapping, Sequence, overload

if TYPE_CHECKING:
    from .session import BitnetSession

__all__ = [
    "CLOSED",
    "COUNTERS",
    "FINALIZED",
    "LEAK_COUNTERS",
    "MONOTONIC_COUNTERS",
    "OPEN",
    "PENDING",
    "End",
    "Tracked",
    "add_remote",
    "add_source",
    "delta",
    "ends",
    "ended",
    "live_counters",
    "mark",
    "quiet_since",
    "record",
    "record_object",
    "remove_remote",
    "remove_source",
    "reserve",
    "snapshot",
    "source_counters",
    "track_creation",
    "tracked",
    "tracking",
    "unwatch",
    "watch",
]

#: Every field of bitnet_counters_t, in its order (checked against the C
#: struct when the bridge loads).
COUNTERS: Final = ("contexts", "sessions", "models", "bytes", "allocations", "model_loads", "peak_bytes")
#: Those that only grow (a history, not something alive).
MONOTONIC_COUNTERS: Final = ("model_loads", "peak_bytes")
#: The bridge's own counters a leak check compares: everything alive.
_BRIDGE_LEAK_COUNTERS: Final = tuple(c for c in COUNTERS if c not in MONOTONIC_COUNTERS)


# ---- other sources of live counters ------------------------------------------------------
#
# Objects the bridge does not make can be counted too: a source is a set of
# names and a function reading them (fault_inject.interpose adds the llama
# objects an interposing libllama counts).  The bridge knows nothing of who
# adds one; live_counters() merges every source's values, and LEAK_COUNTERS
# lists their names, so everything that checks for leaks covers them.

_sources: dict[tuple[str, ...], Callable[[], Mapping[str, int]]] = {}  # names -> read; replaced whole, never mutated
_sources_lock = threading.Lock()


def add_source(names: Sequence[str], read: Callable[[], Mapping[str, int]]) -> None:
    """Adds live counters `names`, read by `read()` (a mapping with exactly
    those names); they are alive objects: leak-checked.  ValueError when a
    name is taken (the bridge's, or another source's)."""
    global _sources
    key = tuple(names)
    with _sources_lock:
        taken = set(COUNTERS).union(*_sources)
        clash = [n for n in key if n in taken]
        if clash or len(set(key)) != len(key) or not key:
            raise ValueError(
                f"counter source {key!r}: " + (f"{', '.join(map(repr, clash))} taken already (by the bridge or another source); "
                                               if clash else "names must be distinct and at least one; ") + "give each counter a name of its own"
            )
        _sources = {**_sources, key: read}


def remove_source(names: Sequence[str]) -> None:
    """Removes the source added with exactly `names` (nothing if none)."""
    global _sources
    with _sources_lock:
        _sources = {k: v for k, v in _sources.items() if k != tuple(names)}


def source_counters() -> dict[str, int]:
    """Every source's counters now (no bridge needed)."""
    out: dict[str, int] = {}
    for names, read in _sources.items():
        values = read()
        if set(values) != set(names):
            raise RuntimeError(f"counter source {names!r} read {sorted(values)!r}: expected exactly its own names")
        out.update((k, int(values[k])) for k in names)
    return out


class _LeakCounters(Sequence[str]):
    """The names a leak check compares: the bridge's live counters, then
    every source's, as registered now (a live view: ``from counters import
    LEAK_COUNTERS`` sees sources added later)."""

    __slots__ = ()

    def _names(self) -> tuple[str, ...]:
        return _BRIDGE_LEAK_COUNTERS + tuple(n for names in _sources for n in names)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[str, ...]: ...
    def __getitem__(self, i: int | slice) -> str | tuple[str, ...]:
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, _LeakCounters)) else other)

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


#: What a leak check compares: everything alive (the bridge's, and every source's).
LEAK_COUNTERS: Final = _LeakCounters()


# ---- what other processes hold for this one -----------------------------------------------
#
# An isolated session's native objects live in its worker process, which
# this process's bridge does not count.  The session adds what it stands
# for (a context and its model) under the bridge's own names while it is
# open, so a leak check sees an isolated session like one in process; a
# worker that reports objects still alive when its session closed adds
# those for good (the library leaked them: in process they would have
# stayed counted too).

_remote: dict[object, Mapping[str, int]] = {}  # key -> values; replaced whole, never mutated
_remote_lock = threading.Lock()


def add_remote(key: object, values: Mapping[str, int]) -> None:
    """Counts `values` (names of COUNTERS) for `key` in live_counters() until remove_remote(key)."""
    global _remote
    unknown = set(values) - set(COUNTERS)
    if unknown:
        raise ValueError(f"add_remote: {sorted(unknown)!r} are not bridge counters; expected names of {COUNTERS!r}")
    with _remote_lock:
        _remote = {**_remote, key: dict(values)}


def remove_remote(key: object) -> None:
    global _remote
    with _remote_lock:
        _remote = {k: v for k, v in _remote.items() if k != key}


def live_counters() -> dict[str, int]:
    """Live native objects and bytes (contexts, sessions, models, bytes,
    allocations), the monotonic model_loads and peak_bytes, and every added
    source's counters."""
    from ._native import ffi, lib

    c = ffi.new("bitnet_counters_t *")
    lib.bitnet_cpp_get_counters(c)
    out = {name: int(getattr(c, name)) for name in COUNTERS}
    for values in _remote.values():
        for name, n in values.items():
            out[name] += n
    out.update(source_counters())
    return out


def delta(before: Mapping[str, int], after: Mapping[str, int], names: tuple[str, ...] = LEAK_COUNTERS) -> dict[str, int]:
    """after - before for each counter in `names` that moved."""
    return {k: after[k] - before[k] for k in names if after.get(k, 0) != before.get(k, 0)}


# ---- the registry of sessions (for leak checks) -------------------------------------------
#
# Every event (a creation, an end, a reader's mark) takes the next number of
# one sequence, so "created after the test started" and "ended during the
# fixture's teardown" are comparisons of numbers.  Ends are reported from
# finalizers, which run inside any allocation of any thread (gc), possibly
# while this thread holds the registry's lock: they only append to a deque
# (atomic, no lock); readers drain it under the lock.

#: A session's states, as tracked.
OPEN: Final = "open"
CLOSED: Final = "closed"  # close() freed it
FINALIZED: Final = "finalized"  # not closed: its finalizer (or a retry of that free) freed it
PENDING: Final = "pending"  # not closed, and its finalizer's free failed: still counted, to be retried

_numbers = itertools.count(1)  # next() is atomic in CPython: numbering needs no lock


class Tracked:
    """One session Python made, while tracking was on."""

    __slots__ = ("serial", "what", "stack", "footprint", "state", "ended")

    def __init__(self, serial: int, what: str, stack: traceback.StackSummary, footprint: dict[str, int]) -> None:
        self.serial = serial  # its identity: the number of its creation
        self.what = what  # repr at creation (the object may be gone when reported)
        self.stack = stack  # the Python stack that created it
        self.footprint = footprint  # what its create() added to the live counters (global: see End.delta)
        self.state = OPEN  # OPEN | CLOSED | FINALIZED | PENDING
        self.ended = 0  # number of its last end (0 while open)

    def __repr__(self) -> str:
        return f"Tracked({self.serial}, {self.what!r}, {self.state})"


class End:
    """A tracked session's native context freed (or a free that failed)."""

    __slots__ = ("number", "serial", "state", "delta")

    def __init__(self, number: int, serial: int, state: str, delta: dict[str, int]) -> None:
        self.number = number  # its place in the sequence
        self.serial = serial  # the session's identity
        self.state = state  # what the session is now: CLOSED | FINALIZED | PENDING
        # The live counters' change across the free (after - before): exact
        # when nothing else runs meanwhile; frees and allocations of other
        # threads during the free are in it too (the counters are global).
        self.delta = delta

    def __repr__(self) -> str:
        return f"End({self.number}, {self.serial}, {self.state}, {self.delta})"


class _Registry:
    """Every tracked session's identity, creation stack and ends.

    Records of ended sessions and the ends themselves are kept while a
    reader watches (from a mark before them), then dropped: a long run
    keeps only what is alive and what a running check still needs.
    """

    __slots__ = ("enabled", "lock", "records", "ends", "incoming", "watchers", "last", "ended")

    def __init__(self) -> None:
        self.enabled = False  # record in create(), close() and finalizers
        self.lock = threading.Lock()  # records, ends, watchers; never taken by a finalizer
        self.records: dict[int, Tracked] = {}  # serial -> record: alive, or ended and still watched
        self.ends: list[End] = []  # drained ends, in order, still watched
        self.incoming: collections.deque[End] = collections.deque()  # ends not drained yet (lock-free)
        self.watchers: collections.Counter[int] = collections.Counter()  # marks of running readers
        self.last = 0  # the greatest serial recorded (written under the lock)
        self.ended = 0  # drained records in CLOSED / FINALIZED state, not forgotten yet

    def drain(self) -> None:  # under self.lock
        while self.incoming:
            end = self.incoming.popleft()
            rec = self.records.get(end.serial)
            if rec is not None:
                if rec.state in (CLOSED, FINALIZED):
                    self.ended -= 1
                rec.state, rec.ended = end.state, end.number
                if rec.state in (CLOSED, FINALIZED):
                    self.ended += 1
            self.ends.append(end)
        if not (self.ended or self.ends):
            return  # the common case, every test: nothing to forget
        oldest = min(self.watchers) if self.watchers else None
        if oldest is None:
            self.ends.clear()
        elif self.ends and self.ends[0].number < oldest:
            self.ends = [e for e in self.ends if e.number >= oldest]
        gone = [k for k, r in self.records.items() if r.state in (CLOSED, FINALIZED) and (oldest is None or r.ended < oldest)]
        for k in gone:
            del self.records[k]
        self.ended -= len(gone)


_REGISTRY: Final = _Registry()


def tracking() -> bool:
    """Whether sessions are being tracked."""
    return _REGISTRY.enabled


def track_creation(enabled: bool) -> bool:
    """Tracks every session created from now on (or stops, forgetting all).

    Returns the previous setting, so nested users can restore it.
    """
    previous = _REGISTRY.enabled
    _REGISTRY.enabled = bool(enabled)
    if not enabled:
        with _REGISTRY.lock:
            _REGISTRY.records.clear()
            _REGISTRY.ends.clear()
            _REGISTRY.incoming.clear()
            _REGISTRY.ended = 0
    return previous


def snapshot() -> dict[str, int] | None:
    """The leak-checked live counters while tracking (None when off): taken
    before a create or a free, handed to :func:`record` / :func:`ended`."""
    if not _REGISTRY.enabled:
        return None
    c = live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


def _since(before: Mapping[str, int]) -> dict[str, int]:
    c = live_counters()
    return {k: c[k] - before[k] for k in LEAK_COUNTERS}


def reserve(before: Mapping[str, int] | None) -> int:
    """A session's identity, taken by create() once its context exists (0
    when not tracking); the finalizer registered then carries it."""
    return next(_numbers) if before is not None and _REGISTRY.enabled else 0


def record(session: BitnetSession, serial: int, before: Mapping[str, int] | None) -> None:
    """Called by BitnetSession.create with its reserved identity."""
    if not serial or before is None or not _REGISTRY.enabled:
        return
    footprint = _since(before)
    # [:-2]: drop record() and create() themselves
    stack = traceback.StackSummary.from_list(traceback.extract_stack()[:-2])
    rec = Tracked(serial, repr(session), stack, footprint)
    with _REGISTRY.lock:
        _REGISTRY.records[rec.serial] = rec
        _REGISTRY.last = max(_REGISTRY.last, serial)
    return rec.serial


def record_object(what: str, footprint: Mapping[str, int], *, skip: int = 1) -> int:
    """Records an object made outside the bridge's sessions (a llama model an
    interposing libllama made, say), with the Python stack that made it and
    what it adds to the live counters (``{"llama_models": 1}``); returns its
    identity for :func:`end_object` (0 when not tracking).  skip: innermost
    frames to leave out (the recorder's own)."""
    if not _REGISTRY.enabled:
        return 0
    serial = next(_numbers)
    stack = traceback.StackSummary.from_list(traceback.extract_stack()[: -(skip + 1)])
    rec = Tracked(serial, what, stack, dict(footprint))
    with _REGISTRY.lock:
        _REGISTRY.records[serial] = rec
        _REGISTRY.last = max(_REGISTRY.last, serial)
    return serial


def end_object(serial: int, delta: Mapping[str, int]) -> None:
    """An object of :func:`record_object` was freed; delta: what that took
    off the live counters (``{"llama_models": -1}``).  Takes no lock."""
    if serial and _REGISTRY.enabled:
        _REGISTRY.incoming.append(End(next(_numbers), serial, CLOSED, dict(delta)))


def ended(serial: int, state: str, before: Mapping[str, int] | None) -> None:
    """Called when a tracked session's context was freed (or its free failed:
    state PENDING).  Safe in a finalizer: takes no lock."""
    if serial and before is not None and _REGISTRY.enabled:
        end = End(next(_numbers), serial, state, _since(before))
        _REGISTRY.incoming.append(end)


def mark() -> int:
    """A number after every event so far: what a reader compares with."""
    return next(_numbers)


def quiet_since(m: int) -> bool:
    """No tracked session was created or ended after mark `m` (cheap, no lock)."""
    reg = _REGISTRY
    ends = reg.ends  # drain() swaps the list whole: read it once
    return reg.last < m and not reg.incoming and not (ends and ends[-1].number > m)


def watch() -> int:
    """A mark, kept: records and ends after it stay until :func:`unwatch`."""
    with _REGISTRY.lock:
        m = next(_numbers)
        _REGISTRY.watchers[m] += 1
        return m


def unwatch(m: int) -> None:
    with _REGISTRY.lock:
        _REGISTRY.watchers[m] -= 1
        if _REGISTRY.watchers[m] <= 0:
            del _REGISTRY.watchers[m]
        _REGISTRY.drain()


def tracked(after: int) -> list[Tracked]:
    """The tracked sessions created after mark `after`, oldest first (their
    state is the registry's view now: a finalizer may change it later)."""
    with _REGISTRY.lock:
        _REGISTRY.drain()
        return sorted((r for r in _REGISTRY.records.values() if r.serial > after), key=lambda r: r.serial)


def ends(after: int) -> list[End]:
    """The ends after mark `after` (of any tracked session), in order.  Only
    complete while a :func:`watch` mark at or before `after` is held."""
    with _REGISTRY.lock:
        _REGISTRY.drain()
        return [e for e in _REGISTRY.ends if e.number > after]
