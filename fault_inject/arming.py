"""Arming, disarming and reading the native fault points.

State is explicit: every :func:`arm` returns an :class:`Armed` handle that
owns the points it armed, counts their hits and firings, keeps the Python
stack and native backtrace of each point's first firing, and on
:meth:`Armed.disarm` returns a :class:`DisarmReport` naming what was armed
but never hit.  Nothing here knows about pytest.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Mapping

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
        parts = [f"{n}: {r.hits} hits, {r.fired} fired" for n, r in self.points.items() if r.hits or not self.never_hit]
        text = f"{self.spec} (seed {self.seed}): " + ("; ".join(parts) or "nothing hit")
        if self.never_hit:
            text += "; never hit: " + ", ".join(self.never_hit)
        return text


# ---- armed handles -------------------------------------------------------------------------


class Armed:
    """Points armed by one spec.  Use as a context manager, or call disarm().

    Counters are those of this arm: they restart when a point is armed.
    """

    __slots__ = ("resolved", "seed", "thread_scoped", "_live", "_first", "_reports", "_report", "_strict")

    def __init__(self, resolved: Resolved, seed: int, thread_scoped: bool, strict: bool) -> None:
        self.resolved = resolved  # the validated spec; str() is its canonical text
        self.seed = seed  # the seed of its probability draws
        self.thread_scoped = thread_scoped  # hits from the arming thread only
        self._live: set[str] = set()  # points still armed; under _STATE.lock
        self._first: dict[str, tuple[str, ...]] = {}  # point -> Python stack at first firing
        self._reports: dict[str, PointReport] = {}  # points already disarmed
        self._report: DisarmReport | None = None  # set once everything is disarmed
        self._strict = strict  # NeverHit instead of NeverHitWarning on exit

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
        return bool(self._live)

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
        if point in self._reports:
            return getattr(self._reports[point], which)
        return getattr(native.stats(lookup(point).index), which)

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
        if point in self._reports:
            return self._reports[point].native_backtrace
        return native.backtrace(lookup(point).index)

    def disarm(self) -> DisarmReport:
        """Disarms what is still armed; returns the report (idempotent)."""
        with _STATE.lock:
            if self._report is None:
                _disarm_points(self, sorted(self._live))
                self._report = self._make_report()
            return self._report

    def _make_report(self) -> DisarmReport:
        # a point missing from _reports was never armed (a refused arm rolled back)
        never = tuple(
            e.pattern for e in self.resolved.entries if not any(n in self._reports and self._reports[n].hits for n in e.points)
        )
        return DisarmReport(str(self.spec), self.seed, self.thread_scoped, dict(self._reports), never)

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
        self.owners: dict[str, Armed] = {}  # point name -> the handle that armed it


_STATE: Final = _State()


def owner_of(point: str) -> Armed | None:
    """The handle that armed `point` now (read without the lock: a firing's view)."""
    return _STATE.owners.get(point)


def _disarm_points(armed: Armed, names: list[str]) -> None:
    # Caller holds _STATE.lock.  Counters are read after the native disarm,
    # so no hit can slip in between; they stay valid until the next arm,
    # which needs the lock.
    for name in names:
        info = lookup(name)
        native.disarm(name)
        st = native.stats(info.index)
        armed._reports[name] = PointReport(
            point=name,
            hits=st.hits,
            fired=st.fired,
            first_fired_hit=st.first_fired_hit,
            python_stack=armed._first.get(name),
            native_backtrace=native.backtrace(info.index),
        )
        armed._live.discard(name)
        if _STATE.owners.get(name) is armed:
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


def arm(
    spec: str | Spec | Resolved,
    *,
    seed: int | None = None,
    thread: bool = False,
    strict: bool = False,
    source: str | None = None,
) -> Armed:
    """Arms every entry of spec; returns the handle that owns them.

    spec: text, a parsed Spec, or what fault_inject.validate() returned
    (taken as it is).  seed: the probability draws' seed (None:
    BITNET_INJECT_SEED, else random; read it back from ``Armed.seed``).
    thread: only hits from this thread count and fire.  strict: leaving
    the handle's ``with`` block raises NeverHit (instead of warning) if an
    entry was never hit.  source: where the spec came from, for messages.

    All or nothing: on any error nothing stays armed.  Raises
    FaultSpecError (bad text, unknown point), FaultStateError (a point is
    already armed), InjectionNotCompiled.
    """
    require_compiled()
    resolved = registry.validate(spec, source=source)
    armed = Armed(resolved, parse_seed(seed), bool(thread), strict)
    with _STATE.lock:
        for name in resolved.points:
            holder = _STATE.owners.get(name)
            if holder is not None:
                raise FaultStateError(
                    f"cannot arm {str(resolved)!r}: point {name!r} is already armed by {str(holder.spec)!r}; "
                    "disarm that first (fault_inject.disarm(point) or its handle's disarm())"
                )
        done: list[str] = []
        try:
            for ce in resolved.entries:
                refused = native.arm(ce.pattern, list(ce.terms), armed.seed, native.THIS_THREAD if thread else 0)
                if refused is not None:
                    # only reachable if something armed these points natively
                    raise FaultStateError(f"cannot arm {str(resolved)!r}: {refused}")
                done.extend(ce.points)
                armed._live.update(ce.points)
                for name in ce.points:
                    _STATE.owners[name] = armed
        except BaseException:
            _disarm_points(armed, done)
            raise
    return armed


class inject:  # noqa: N801 - used as a function: with fi.inject(spec) as armed
    """``with inject("tokenize.fill=fail") as armed:`` arms for the block.

    Arms on entering the block (same arguments as :func:`arm`); on exit
    everything is disarmed, even on error, and entries never hit give a
    NeverHitWarning (strict=True: NeverHit) unless the block raised.  The
    report is ``armed.disarm()`` (idempotent) after the block.
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
    ) -> None:
        self._spec = spec
        self._kwargs = {"seed": seed, "thread": thread, "strict": strict, "source": source}
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

    Raises FaultStateError when nothing matching is armed.
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
        owned: dict[int, tuple[Armed, list[str]]] = {}
        for name in names:
            holder = _STATE.owners.get(name)
            if holder is not None:
                owned.setdefault(id(holder), (holder, []))[1].append(name)
        if not owned:
            raise FaultStateError(f"cannot disarm {target!r}: it is not armed (armed now: {', '.join(sorted(_STATE.owners)) or 'nothing'})")
        reports: dict[str, PointReport] = {}
        for holder, mine in owned.values():
            _disarm_points(holder, mine)
            reports.update({n: holder._reports[n] for n in mine})
        first = next(iter(owned.values()))[0]
        never = tuple(n for n, r in reports.items() if r.hits == 0)
        return DisarmReport(target, first.seed, first.thread_scoped, reports, never)


def disarm_all() -> list[DisarmReport]:
    """Disarms everything (also points armed natively); one report per handle.

    Never raises for "nothing armed": returns [].
    """
    with _STATE.lock:
        handles = list({id(a): a for a in _STATE.owners.values()}.values())
        reports = [a.disarm() for a in handles]
        if compiled_in():
            native.disarm_all()
        return reports


def compiled_in() -> bool:
    return registry.compiled_in()


def armed() -> tuple[Armed, ...]:
    """The handles with points still armed."""
    with _STATE.lock:
        return tuple({id(a): a for a in _STATE.owners.values()}.values())


def hits(point: str) -> int:
    """Hits of a point since it was last armed (still readable after disarm)."""
    require_compiled()
    return native.stats(lookup(point).index).hits


def fired(point: str) -> int:
    """Firings of a point since it was last armed (still readable after disarm)."""
    require_compiled()
    return native.stats(lookup(point).index).fired
