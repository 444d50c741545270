"""Arming, disarming and reading the native fault points.

State is explicit: every :func:`arm` returns an :class:`Armed` handle that
owns the points it armed, counts their hits and firings, keeps the Python
stack and native backtrace of each point's first firing, and on
:meth:`Armed.disarm` returns a :class:`DisarmReport` naming what was armed
but never hit.  Nothing here knows about pytest.

Composition: ``arm(spec, over=handles)`` arms a narrower spec over wider
ones.  For each point it names that one of ``handles`` holds, it takes the
point over (the wider handle's counts so far are kept); when it is
disarmed the point goes back to the handle below it, whose chain starts
again from its first term.  Points it does not name stay with the wider
handles.  Each handle's hits, firings and report count only the hits it
held the point for.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Iterable, Mapping

from pytest_bitnet.bridge import faults as native

from . import registry
from .registry import UnknownPoint, lookup, require_compiled
from .spec import Resolved, Spec

__all__ = [
    "Armed",
    "DisarmReport",
    "FaultStateError",
    "NeverHit",
    "NeverHitWarning",
    "PointReport",
    "arm",
    "armed",
    "derive_seed",
    "disarm",
    "disarm_all",
    "fired",
    "hits",
    "inject",
    "owner_of",
    "parse_seed",
]

ENV_SEED: Final = "BITNET_INJECT_SEED"
_MASK64: Final = 2**64 - 1


class FaultStateError(RuntimeError):
    """Arming a point that is armed, or disarming one that is not."""


class NeverHitWarning(UserWarning):
    """Points were armed but never reached: the spec tested nothing there."""


class NeverHit(AssertionError):
    """inject(..., strict=True) armed points that were never reached."""

    def __init__(self, report: DisarmReport) -> None:
        super().__init__(report.never_hit_message())
        self.report = report


# ---- reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointReport:
    """Counters of one point over one arm."""

    point: str
    hits: int
    fired: int
    first_fired_hit: int  # 0: never fired
    python_stack: tuple[str, ...] | None = None  # at the first firing
    native_backtrace: str | None = None  # at the first firing, where supported


@dataclass(frozen=True)
class DisarmReport:
    """What one arm did: per-point counters and the entries never reached."""

    spec: str
    seed: int
    thread_scoped: bool
    points: Mapping[str, PointReport]
    never_hit: tuple[str, ...]  # entry points/patterns no in-scope thread reached
    overridden: tuple[str, ...] = ()  # points a narrower arm held for a while (arm(..., over=))

    @property
    def hits(self) -> dict[str, int]:
        return {n: r.hits for n, r in self.points.items()}

    @property
    def fired(self) -> dict[str, int]:
        return {n: r.fired for n, r in self.points.items()}

    def never_hit_message(self) -> str:
        scope = " (from the arming thread: it was armed thread-scoped)" if self.thread_scoped else ""
        return (
            f"fault spec {self.spec!r} (seed {self.seed}): armed but never hit{scope}: "
            + ", ".join(repr(p) for p in self.never_hit)
            + "; the code under test never reached these points, so nothing was injected there"
        )

    def summary(self) -> str:
        parts = [f"{n}: {r.hits} hits, {r.fired} fired" for n, r in self.points.items() if r.hits]
        # a pattern arms many points a program never reaches (`llama_*`: 50):
        # counted, not listed, unless nothing was hit at all (never_hit says so)
        idle = sum(1 for r in self.points.values() if not r.hits)
        if idle and parts:
            parts.append(f"{idle} more armed, not hit")
        elif idle and not self.never_hit:
            parts = [f"{n}: 0 hits" for n in self.points]
        text = f"{self.spec} (seed {self.seed}): " + ("; ".join(parts) or "nothing hit")
        if self.never_hit:
            text += "; never hit: " + ", ".join(self.never_hit)
        if self.overridden:
            text += "; overridden for a while by a narrower spec: " + ", ".join(self.overridden)
        return text


# ---- armed handles -------------------------------------------------------------------------


class Armed:
    """Points armed by one spec.  Use as a context manager, or call disarm().

    Counters are those of this arm: they restart when a point is armed, and
    count only the hits it held the point for (not while a narrower arm
    held it, see ``arm(..., over=)``).
    """

    __slots__ = (
        "resolved", "seed", "thread_scoped", "_live", "_suspended", "_overridden", "_first", "_reports", "_report",
        "_strict", "_thread", "_entry_of",
    )  # fmt: skip

    def __init__(self, resolved: Resolved, seed: int, thread_scoped: bool, strict: bool) -> None:
        self.resolved = resolved  # the validated spec; str() is its canonical text
        self.seed = seed  # the seed of its probability draws
        self.thread_scoped = thread_scoped  # hits from the arming thread only
        self._live: set[str] = set()  # points armed natively with this handle's chain; under _STATE.lock
        self._suspended: set[str] = set()  # points a narrower arm holds now; they come back to this one
        self._overridden: set[str] = set()  # points a narrower arm held at some time (for the report)
        self._first: dict[str, tuple[str, ...]] = {}  # point -> Python stack at first firing
        self._reports: dict[str, PointReport] = {}  # point -> counts of the stretches it was armed (closed ones)
        self._report: DisarmReport | None = None  # set once everything is disarmed
        self._strict = strict  # NeverHit instead of NeverHitWarning on exit
        self._thread = threading.get_ident()  # the arming thread (a thread-scoped point is re-armed for it)
        self._entry_of = {n: ce for ce in resolved.entries for n in ce.points}  # point -> its compiled entry

    @property
    def spec(self) -> Spec:
        """The parsed spec (``str()`` gives its canonical text)."""
        return self.resolved.spec

    @property
    def points(self) -> tuple[str, ...]:
        """Every point this spec armed."""
        return self.resolved.points

    @property
    def active(self) -> bool:
        """Whether it still holds a point (also one a narrower arm has taken over for now)."""
        return bool(self._live or self._suspended)

    def hits(self, point: str | None = None) -> Any:
        """Hits of one point (int), or of every point (dict)."""
        return self._counter("hits", point)

    def fired(self, point: str | None = None) -> Any:
        """Firings of one point (int), or of every point (dict)."""
        return self._counter("fired", point)

    def _counter(self, which: str, point: str | None) -> Any:
        if point is None:
            return {n: self._counter(which, n) for n in self.points}
        if point not in self.points:
            raise UnknownPoint(f"{point!r} is not armed by {str(self.spec)!r}; it armed: {', '.join(self.points)}")
        closed = self._reports.get(point)
        done = getattr(closed, which) if closed is not None else 0
        if point in self._live:
            # read the set before the native counters: a point that leaves
            # _live meanwhile has its stretch already added to _reports
            return done + getattr(native.stats(lookup(point).index), which)
        return done

    def wait_hit(self, point: str, hits: int = 1, *, timeout: float = 10.0, while_alive: threading.Thread | None = None) -> bool:
        """Waits until `point` has `hits` hits (another thread reached it).

        The way to synchronise with a thread inside a native call: it is at
        the point once the point counted it.  Returns False when `timeout`
        seconds pass first, or when `while_alive` (the thread expected to
        hit it) ends without hitting it.
        """
        deadline = time.monotonic() + timeout
        while self.hits(point) < hits:
            if time.monotonic() >= deadline or (while_alive is not None and not while_alive.is_alive()):
                return self.hits(point) >= hits
            time.sleep(0.0005)  # polling a counter: a hit has no other signal
        return True

    def first_stack(self, point: str) -> tuple[str, ...] | None:
        """The Python stack (formatted frames) at the point's first firing."""
        return self._first.get(point)

    def native_backtrace(self, point: str) -> str | None:
        """The native backtrace at the point's first firing, where supported."""
        closed = self._reports.get(point)
        if closed is not None and (closed.native_backtrace or point not in self._live):
            return closed.native_backtrace
        return native.backtrace(lookup(point).index)

    def disarm(self) -> DisarmReport:
        """Disarms what is still armed; returns the report (idempotent).

        Points a narrower arm had taken over from a wider one go back to
        the wider one.
        """
        return self._disarm(give_back=True)

    def _disarm(self, *, give_back: bool) -> DisarmReport:
        with _STATE.lock:
            if self._report is None:
                _release(self, sorted(self._live | self._suspended), give_back=give_back)
                self._report = self._make_report()
            return self._report

    def _make_report(self) -> DisarmReport:
        # a point missing from _reports was never armed (a refused arm rolled back);
        # an entry a narrower arm took over was not this arm's to hit meanwhile
        never = tuple(
            e.pattern for e in self.resolved.entries
            if not any(n in self._reports and self._reports[n].hits for n in e.points) and not self._overridden & set(e.points)
        )  # fmt: skip
        overridden = tuple(n for n in self.points if n in self._overridden)
        return DisarmReport(str(self.spec), self.seed, self.thread_scoped, dict(self._reports), never, overridden)

    def __enter__(self) -> Armed:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._finish(et is not None)

    def _finish(self, failed: bool) -> None:
        # Called from a context manager's __exit__: stacklevel 3 is the
        # caller's `with` line.
        report = self.disarm()
        if report.never_hit and not failed:
            if self._strict:
                raise NeverHit(report)
            warnings.warn(NeverHitWarning(report.never_hit_message()), stacklevel=3)

    def __repr__(self) -> str:
        state = "armed" if self.active else "disarmed"
        scope = ", this thread" if self.thread_scoped else ""
        return f"<Armed {str(self.spec)!r} seed={self.seed}{scope} {state}>"


class _State:
    """Who armed what."""

    __slots__ = ("lock", "owners")

    def __init__(self) -> None:
        self.lock = threading.RLock()  # arm/disarm bookkeeping (never taken on a firing)
        # point name -> the handles holding it, widest first; the last one
        # is armed natively, the others wait for it.  Tuples, replaced
        # under the lock and never mutated, so a firing reads one without it.
        self.owners: dict[str, tuple[Armed, ...]] = {}


_STATE: Final = _State()


def owner_of(point: str) -> Armed | None:
    """The handle that armed `point` now (read without the lock: a firing's view)."""
    holders = _STATE.owners.get(point)
    return holders[-1] if holders else None


def _close_stretch(armed: Armed, name: str) -> None:
    # Caller holds _STATE.lock.  Disarms `name` natively and adds what it
    # counted while `armed` held it to armed's report.  Counters are read
    # after the native disarm, so no hit can slip in between.
    info = lookup(name)
    native.disarm(name)
    st = native.stats(info.index)
    prev = armed._reports.get(name)
    before = prev.hits if prev is not None else 0
    first = prev.first_fired_hit if prev is not None and prev.first_fired_hit else (before + st.first_fired_hit if st.first_fired_hit else 0)
    armed._reports[name] = PointReport(
        point=name,
        hits=before + st.hits,
        fired=(prev.fired if prev is not None else 0) + st.fired,
        first_fired_hit=first,  # numbered over every stretch
        python_stack=armed._first.get(name),
        native_backtrace=(prev.native_backtrace if prev is not None else None) or native.backtrace(info.index),
    )
    armed._live.discard(name)


def _arm_native(armed: Armed, pattern: str, terms: list[tuple[float, int, int, int]]) -> str | None:
    return native.arm(pattern, terms, armed.seed, native.THIS_THREAD if armed.thread_scoped else 0)


def _resume(armed: Armed, name: str) -> None:
    # Caller holds _STATE.lock.  A narrower arm let `name` go: it is armed
    # again with armed's chain, from its first term (the native engine
    # starts a chain afresh; the report keeps counting on).
    armed._suspended.discard(name)
    if armed.thread_scoped and threading.get_ident() != armed._thread:
        # THIS_THREAD means the thread that arms: re-arming from here would
        # scope the point to the wrong thread
        warnings.warn(
            f"fault spec {str(armed.spec)!r}: point {name!r} was not re-armed after a narrower spec released it, "
            "because that happened on another thread than the one that armed it thread-scoped; "
            "disarm the narrower spec on the arming thread",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    refused = _arm_native(armed, name, list(armed._entry_of[name].terms))
    if refused is None:
        armed._live.add(name)
    else:  # only reachable if something armed the point natively meanwhile
        warnings.warn(f"fault spec {str(armed.spec)!r}: point {name!r} could not be re-armed: {refused}", RuntimeWarning, stacklevel=4)


def _release(armed: Armed, names: Iterable[str], *, give_back: bool = True) -> None:
    # Caller holds _STATE.lock.  armed lets go of `names`: where it is the
    # narrowest holder the point is disarmed natively and, with give_back,
    # goes to the holder below; where a narrower one holds it, armed just
    # leaves the queue.
    for name in names:
        holders = _STATE.owners.get(name, ())
        if armed not in holders:
            continue
        rest = tuple(a for a in holders if a is not armed)
        if holders[-1] is armed:
            _close_stretch(armed, name)
            if rest and give_back:
                _resume(rest[-1], name)
        armed._suspended.discard(name)
        if rest:
            _STATE.owners[name] = rest
        else:
            del _STATE.owners[name]


# ---- arming ---------------------------------------------------------------------------------


def parse_seed(seed: int | str | None, source: str | None = None) -> int:
    """A seed in 0..2**64-1 from an int or a text (None: BITNET_INJECT_SEED, else random).

    The one seed parser: arm(), BITNET_INJECT_SEED and the pytest plugin's
    --bitnet-seed use it.  ValueError names `source`.
    """
    if seed is None:
        env = os.environ.get(ENV_SEED, "").strip()
        if env:
            return parse_seed(env, ENV_SEED)
        return secrets.randbelow(2**32)
    value: object = seed
    if isinstance(seed, str):
        try:
            value = int(seed.strip(), 0)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MASK64:
        where = f" from {source}" if source else ""
        raise ValueError(f"invalid seed {seed!r}{where}: expected a whole number in 0..2**64-1")
    return value


def derive_seed(seed: int, key: str) -> int:
    """The seed of one part of a run (a test: key = its node id), from the run's seed.

    Draws hash (seed, point, hit number, term), and hit numbers restart at
    each arm, so arming one spec with one seed in every test would draw
    the same pattern in each.  Mixing a stable key in gives each part its
    own draws; they depend only on (seed, key), not on what ran before, so
    the part alone, run again with the same run seed, draws the same.
    """
    digest = hashlib.blake2b(f"{parse_seed(seed)}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _handles(over: Armed | Iterable[Armed] | None) -> tuple[Armed, ...]:
    if over is None:
        return ()
    if isinstance(over, Armed):
        return (over,)
    handles = tuple(over)
    for h in handles:
        if not isinstance(h, Armed):
            raise TypeError(f"over= takes Armed handles, got {type(h).__name__}")
    return handles


def arm(
    spec: str | Spec | Resolved,
    *,
    seed: int | None = None,
    thread: bool = False,
    strict: bool = False,
    source: str | None = None,
    over: Armed | Iterable[Armed] | None = None,
) -> Armed:
    """Arms every entry of spec; returns the handle that owns them.

    spec: text, a parsed Spec, or what fault_inject.validate() returned
    (taken as it is).  seed: the probability draws' seed (None:
    BITNET_INJECT_SEED, else random; read it back from ``Armed.seed``).
    thread: only hits from this thread count and fire.  strict: leaving
    the handle's ``with`` block raises NeverHit (instead of warning) if an
    entry was never hit.  source: where the spec came from, for messages.
    over: wider arms this one may take points from (a handle or several):
    a point one of them holds is this arm's until it is disarmed, then
    goes back (its chain starts again); the points this spec does not name
    stay theirs.  Hits are counted to whichever holds the point.

    All or nothing: on any error nothing stays armed and nothing is taken
    over.  Raises FaultSpecError (bad text, unknown point),
    FaultStateError (a point is already armed by a handle not in `over`),
    InjectionNotCompiled.
    """
    require_compiled()
    wider = _handles(over)
    resolved = registry.validate(spec, source=source)
    armed = Armed(resolved, parse_seed(seed), bool(thread), strict)
    with _STATE.lock:
        taken: list[tuple[Armed, str]] = []
        for name in resolved.points:
            holders = _STATE.owners.get(name, ())
            if holders and not any(holders[-1] is w for w in wider):
                raise FaultStateError(
                    f"cannot arm {str(resolved)!r}: point {name!r} is already armed by {str(holders[-1].spec)!r}; "
                    "disarm that first (fault_inject.disarm(point) or its handle's disarm()), "
                    "or arm this spec over it (arm(spec, over=handle))"
                )
            if holders:
                taken.append((holders[-1], name))
        done: list[str] = []
        try:
            for holder, name in taken:
                _close_stretch(holder, name)
                holder._suspended.add(name)
            for ce in resolved.entries:
                # Point by point, not by the entry's pattern: the points a
                # pattern matches are those of the registry when the spec
                # was resolved, and a library may register more since (an
                # interposer attaching); natively, the pattern would arm
                # those too, and nothing here would own or disarm them.
                for name in ce.points:
                    refused = _arm_native(armed, name, list(ce.terms))
                    if refused is not None:
                        # only reachable if something armed the point natively
                        raise FaultStateError(f"cannot arm {str(resolved)!r}: {refused}")
                    done.append(name)
                    armed._live.add(name)
                    _STATE.owners[name] = (*_STATE.owners.get(name, ()), armed)
        except BaseException:
            _release(armed, done, give_back=False)
            for holder, name in taken:  # give back what was taken
                _resume(holder, name)
            raise
        for holder, name in taken:  # only now: a refused arm overrode nothing
            holder._overridden.add(name)
    return armed


class inject:  # noqa: N801 - used as a function: with fi.inject(spec) as armed
    """``with inject("tokenize.fill=fail") as armed:`` arms for the block.

    Arms on entering the block (same arguments as :func:`arm`, ``over=``
    included); on exit everything is disarmed, even on error, and entries
    never hit give a NeverHitWarning (strict=True: NeverHit) unless the
    block raised.  The report is ``armed.disarm()`` (idempotent) after the
    block.
    """

    __slots__ = ("_spec", "_kwargs", "_armed")

    def __init__(
        self,
        spec: str | Spec | Resolved,
        *,
        seed: int | None = None,
        thread: bool = False,
        strict: bool = False,
        source: str | None = None,
        over: Armed | Iterable[Armed] | None = None,
    ) -> None:
        self._spec = spec
        self._kwargs = {"seed": seed, "thread": thread, "strict": strict, "source": source, "over": over}
        self._armed: Armed | None = None

    def __enter__(self) -> Armed:
        if self._armed is not None:
            raise FaultStateError("this inject(...) block is already in use; create one per with statement")
        self._armed = arm(self._spec, **self._kwargs)  # type: ignore[arg-type]
        return self._armed

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        assert self._armed is not None
        self._armed._finish(et is not None)


def disarm(target: Armed | str) -> DisarmReport:
    """Disarms a handle, or the points matching a name / 'prefix*'.

    A name disarms the point outright: every handle holding it lets it go
    (none gets it back).  Raises FaultStateError when nothing matching is
    armed.
    """
    if isinstance(target, Armed):
        return target.disarm()
    if not isinstance(target, str):
        raise TypeError(f"disarm needs an Armed handle or a point name, got {type(target).__name__}")
    require_compiled()
    names = [p.name for p in registry.points() if (p.name.startswith(target[:-1]) if target.endswith("*") else p.name == target)]
    if not names:
        lookup(target)  # raises UnknownPoint with the closest names
    with _STATE.lock:
        held = [(name, _STATE.owners[name]) for name in names if name in _STATE.owners]
        if not held:
            raise FaultStateError(f"cannot disarm {target!r}: it is not armed (armed now: {', '.join(sorted(_STATE.owners)) or 'nothing'})")
        reports: dict[str, PointReport] = {}
        for name, holders in held:
            for holder in reversed(holders):  # the narrowest first: no one gets it back
                _release(holder, [name], give_back=False)
            reports[name] = holders[-1]._reports[name]
        first = held[0][1][-1]
        never = tuple(n for n, r in reports.items() if r.hits == 0)
        return DisarmReport(target, first.seed, first.thread_scoped, reports, never)


def disarm_all() -> list[DisarmReport]:
    """Disarms everything (also points armed natively); one report per handle.

    Never raises for "nothing armed": returns [].
    """
    with _STATE.lock:
        handles = list({id(a): a for holders in _STATE.owners.values() for a in holders}.values())
        for a in handles:  # nothing is handed back: everything goes
            a._disarm(give_back=False)
        reports = [a.disarm() for a in handles]
        if compiled_in():
            native.disarm_all()
        return reports


def compiled_in() -> bool:
    return registry.compiled_in()


def armed() -> tuple[Armed, ...]:
    """The handles with points still armed."""
    with _STATE.lock:
        return tuple({id(a): a for holders in _STATE.owners.values() for a in holders}.values())


def hits(point: str) -> int:
    """Hits of a point since it was last armed (still readable after disarm)."""
    require_compiled()
    return native.stats(lookup(point).index).hits


def fired(point: str) -> int:
    """Firings of a point since it was last armed (still readable after disarm)."""
    require_compiled()
    return native.stats(lookup(point).index).fired
