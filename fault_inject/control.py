"""Arming, disarming and observing the native fault points.

State is explicit: every :func:`arm` returns an :class:`Armed` handle that
owns the points it armed, counts their hits and firings, keeps the Python
stack and native backtrace of each point's first firing, and on
:meth:`Armed.disarm` returns a :class:`DisarmReport` naming what was armed
but never hit.  Listeners registered with :func:`on_fire` hear every firing
(on the firing thread).  Nothing here knows about pytest.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import secrets
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Final, Mapping

from pytest_bitnet._native import ffi, lib

from . import spec as _spec
from .spec import CompiledEntry, Spec

__all__ = [
    "Armed",
    "DisarmReport",
    "FaultStateError",
    "FireEvent",
    "InjectionNotCompiled",
    "NeverHit",
    "NeverHitWarning",
    "PointInfo",
    "PointReport",
    "UnknownPoint",
    "arm",
    "arm_from_env",
    "armed",
    "compiled_in",
    "disarm",
    "disarm_all",
    "error_codes",
    "fired",
    "hits",
    "inject",
    "on_fire",
    "points",
]

log = logging.getLogger("fault_inject")

ENV_SPEC: Final = "BITNET_INJECT"
ENV_SEED: Final = "BITNET_INJECT_SEED"
NOT_COMPILED: Final = (
    "fault injection is not compiled in: pytest_bitnet._bridge was built with BITNET_FAULTS=0 "
    "(BN_NO_FAULTS), which removes every fault point; rebuild without it (pip install -e .) to inject faults"
)
_ERR_LEN: Final = 1024
_MASK64: Final = 2**64 - 1


# ---- errors and warnings -------------------------------------------------------------


class InjectionNotCompiled(RuntimeError):
    """The native bridge was built without fault points (BITNET_FAULTS=0)."""


class FaultStateError(RuntimeError):
    """Arming a point that is armed, or disarming one that is not."""


class UnknownPoint(ValueError):
    """A point name that is not registered (the message lists the closest)."""


class NeverHitWarning(UserWarning):
    """Points were armed but never reached: the spec tested nothing there."""


class NeverHit(AssertionError):
    """inject(..., strict=True) armed points that were never reached."""

    def __init__(self, report: DisarmReport) -> None:
        super().__init__(report.never_hit_message())
        self.report = report


# ---- the registry ----------------------------------------------------------------------


@dataclass(frozen=True)
class PointInfo:
    """A registered fault point."""

    name: str
    description: str
    default_code: int
    default_error: str  # name of default_code, e.g. "BITNET_E_INFERENCE"
    actions: frozenset[str]  # the actions it accepts
    index: int  # position in the native registry


def _check_action_table() -> None:
    # The action numbering is defined once, in bitnet_fault.h.
    for i, name in enumerate(_spec.ACTIONS):
        native = getattr(lib, f"BITNET_FAULT_{name.upper()}")
        if native != i:
            raise ImportError(f"fault_inject.spec.ACTIONS disagrees with bitnet_fault.h: {name!r} is {i} here, {native} there")
    if lib.BITNET_FAULT_N_ACTIONS != len(_spec.ACTIONS):
        raise ImportError("fault_inject.spec.ACTIONS and bitnet_fault.h list different actions")


_check_action_table()


@functools.cache
def error_codes() -> Mapping[str, int]:
    """Native error code names (``BITNET_E_OOM``...) and their values."""
    return {n: int(getattr(lib, n)) for n in dir(lib) if n.startswith("BITNET_E_") and n != "BITNET_E_MIN"}


def _code_name(code: int) -> str:
    return next((n for n, v in error_codes().items() if v == code), str(code))


@functools.cache
def points() -> tuple[PointInfo, ...]:
    """Every registered point, in registry order (readable in any build)."""
    out = []
    info = ffi.new("bitnet_fault_point_t *")
    for i in range(lib.bitnet_fault_point_count()):
        if lib.bitnet_fault_point_info(i, info) != 0:
            raise RuntimeError(f"bitnet_fault_point_info({i}) failed")
        actions = frozenset(a for j, a in enumerate(_spec.ACTIONS) if info.actions & (1 << j))
        out.append(
            PointInfo(
                name=ffi.string(info.name).decode(),
                description=ffi.string(info.description).decode(),
                default_code=int(info.default_code),
                default_error=_code_name(int(info.default_code)),
                actions=actions,
                index=i,
            )
        )
    return tuple(out)


@functools.cache
def _by_name() -> Mapping[str, PointInfo]:
    return {p.name: p for p in points()}


def _point(name: str) -> PointInfo:
    try:
        return _by_name()[name]
    except KeyError:
        near = _spec.closest_names(name, _by_name())
        hint = f"; closest: {', '.join(repr(n) for n in near)}" if near else ""
        raise UnknownPoint(f"unknown fault point {name!r}{hint} (fault_inject.points() lists every point)") from None


def compiled_in() -> bool:
    """False when the bridge was built with BITNET_FAULTS=0 (no points)."""
    return bool(lib.bitnet_fault_compiled_in())


def _require_compiled() -> None:
    if not compiled_in():
        raise InjectionNotCompiled(NOT_COMPILED)


# ---- reports and events ------------------------------------------------------------------


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


def _stats(index: int) -> Any:
    st = ffi.new("bitnet_fault_stats_t *")
    lib.bitnet_fault_stats(index, st)
    return st


def _backtrace(index: int) -> str | None:
    n = lib.bitnet_fault_backtrace(index, ffi.NULL, 0)
    if n <= 0:
        return None
    buf = ffi.new("char[]", n + 1)
    lib.bitnet_fault_backtrace(index, buf, n + 1)
    return str(ffi.string(buf).decode("utf-8", "replace"))


# ---- armed handles -----------------------------------------------------------------------


class Armed:
    """Points armed by one spec.  Use as a context manager, or call disarm().

    Counters are those of this arm: they restart when a point is armed.
    """

    __slots__ = ("spec", "seed", "thread_scoped", "entries", "_live", "_first", "_reports", "_report", "_strict")

    def __init__(self, spec: Spec, seed: int, thread_scoped: bool, entries: tuple[CompiledEntry, ...], strict: bool) -> None:
        self.spec = spec  # the parsed spec; str() is its canonical text
        self.seed = seed  # the seed of its probability draws
        self.thread_scoped = thread_scoped  # hits from the arming thread only
        self.entries = entries  # compiled entries (pattern -> points)
        self._live: set[str] = set()  # points still armed; under _STATE.lock
        self._first: dict[str, tuple[str, ...]] = {}  # point -> Python stack at first firing
        self._reports: dict[str, PointReport] = {}  # points already disarmed
        self._report: DisarmReport | None = None  # set once everything is disarmed
        self._strict = strict  # NeverHit instead of NeverHitWarning on exit

    @property
    def points(self) -> tuple[str, ...]:
        """Every point this spec armed."""
        return tuple(n for e in self.entries for n in e.points)

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
        return int(getattr(_stats(_point(point).index), which))

    def first_stack(self, point: str) -> tuple[str, ...] | None:
        """The Python stack (formatted frames) at the point's first firing."""
        return self._first.get(point)

    def native_backtrace(self, point: str) -> str | None:
        """The native backtrace at the point's first firing, where supported."""
        if point in self._reports:
            return self._reports[point].native_backtrace
        return _backtrace(_point(point).index)

    def disarm(self) -> DisarmReport:
        """Disarms what is still armed; returns the report (idempotent)."""
        with _STATE.lock:
            if self._report is None:
                _disarm_points(self, sorted(self._live))
                self._report = self._make_report()
            return self._report

    def _make_report(self) -> DisarmReport:
        # a point missing from _reports was never armed (a refused arm rolled back)
        never = tuple(e.pattern for e in self.entries if not any(n in self._reports and self._reports[n].hits for n in e.points))
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
    """Module state: who armed what, and who listens to firings."""

    __slots__ = ("lock", "owners", "listeners", "env_armed")

    def __init__(self) -> None:
        self.lock = threading.RLock()  # arm/disarm bookkeeping (never taken on a firing)
        self.owners: dict[str, Armed] = {}  # point name -> the handle that armed it
        self.listeners: tuple[Callable[[FireEvent], None], ...] = ()  # replaced, never mutated
        self.env_armed: Armed | None = None  # what BITNET_INJECT armed


_STATE: Final = _State()


def _disarm_points(armed: Armed, names: list[str]) -> None:
    # Caller holds _STATE.lock.  Counters are read after the native disarm,
    # so no hit can slip in between; they stay valid until the next arm,
    # which needs the lock.
    for name in names:
        info = _point(name)
        n = ffi.new("int32_t *")
        lib.bitnet_fault_disarm(name.encode(), n, ffi.NULL, 0)
        st = _stats(info.index)
        armed._reports[name] = PointReport(
            point=name,
            hits=int(st.hits),
            fired=int(st.fired),
            first_fired_hit=int(st.first_fired_hit),
            python_stack=armed._first.get(name),
            native_backtrace=_backtrace(info.index),
        )
        armed._live.discard(name)
        if _STATE.owners.get(name) is armed:
            del _STATE.owners[name]


# ---- the firing callback ------------------------------------------------------------------


@ffi.def_extern()  # type: ignore[untyped-decorator]
def _bitnet_fault_fired(user: Any, event: Any) -> None:
    # Runs on the firing thread, inside the native call (the engine's
    # re-entry guard is held, so nothing native fires from here).  It must
    # never raise into C.
    try:
        info = points()[event.point]
        owner = _STATE.owners.get(info.name)
        stack = None
        if event.first:
            stack = tuple(traceback.format_stack()[:-1])
            if owner is not None:
                owner._first.setdefault(info.name, stack)
        listeners = _STATE.listeners
        if not listeners:
            return
        ev = FireEvent(
            point=info.name,
            hit=int(event.hit),
            action=_spec.ACTIONS[event.action],
            arg=int(event.arg),
            code=int(event.code),
            first=bool(event.first),
            term=int(event.term),
            thread=threading.current_thread().name,
            python_stack=stack,
            spec=str(owner.spec) if owner is not None else None,
        )
        for fn in listeners:
            try:
                fn(ev)
            except Exception:
                log.exception("fault_inject: on_fire listener %r raised", fn)
    except Exception:
        log.exception("fault_inject: handling a firing failed")


def on_fire(callback: Callable[[FireEvent], None]) -> Callable[[], None]:
    """Calls callback(FireEvent) on every firing; returns the unsubscribe function.

    The callback runs on the firing thread while the native call waits, so
    it can inspect the stack; it must be quick, must not arm or disarm, and
    its exceptions are logged, not raised.  Points reached from inside it do
    not fire.  It should not call the bridge: the firing thread may hold a
    bridge lock (``alloc`` fires inside the handle registry, for one).
    """
    if not callable(callback):
        raise TypeError(f"on_fire needs a callable, got {type(callback).__name__}")
    with _STATE.lock:
        _STATE.listeners = (*_STATE.listeners, callback)

    def unsubscribe() -> None:
        with _STATE.lock:
            _STATE.listeners = tuple(fn for fn in _STATE.listeners if fn is not callback)

    return unsubscribe


def _install_callback() -> None:
    if compiled_in():
        lib.bitnet_fault_set_callback(lib._bitnet_fault_fired, ffi.NULL)
        # Python is going away: firings during shutdown must not call into it.
        atexit.register(lib.bitnet_fault_set_callback, ffi.NULL, ffi.NULL)


_install_callback()


# ---- arming --------------------------------------------------------------------------------


def _seed_arg(seed: int | str | None, source: str = "seed") -> int:
    if seed is None:
        env = os.environ.get(ENV_SEED, "").strip()
        if env:
            return _seed_arg(env, ENV_SEED)
        return secrets.randbelow(2**32)
    if isinstance(seed, str):
        try:
            seed = int(seed, 0)
        except ValueError:
            raise ValueError(f"invalid {source} {seed!r}: expected a whole number") from None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MASK64:
        raise ValueError(f"invalid {source} {seed!r}: expected a whole number in 0..2**64-1")
    return seed


def arm(
    spec: str | Spec,
    *,
    seed: int | None = None,
    thread: bool = False,
    strict: bool = False,
    source: str | None = None,
) -> Armed:
    """Arms every entry of spec; returns the handle that owns them.

    seed: the probability draws' seed (None: BITNET_INJECT_SEED, else
    random; read it back from ``Armed.seed``).  thread: only hits from this
    thread count and fire.  strict: leaving the handle's ``with`` block
    raises NeverHit (instead of warning) if an entry was never hit.
    source: where the spec came from, for error messages.

    All or nothing: on any error nothing stays armed.  Raises
    FaultSpecError (bad text, unknown point), FaultStateError (a point is
    already armed), InjectionNotCompiled.
    """
    _require_compiled()
    parsed = spec if isinstance(spec, Spec) else _spec.parse(spec, source=source)
    compiled = _spec.resolve(parsed, _by_name(), error_codes(), source=source)
    seed = _seed_arg(seed)
    armed = Armed(parsed, seed, bool(thread), compiled, strict)
    with _STATE.lock:
        for ce in compiled:
            for name in ce.points:
                holder = _STATE.owners.get(name)
                if holder is not None:
                    raise FaultStateError(
                        f"cannot arm {str(parsed)!r}: point {name!r} is already armed by {str(holder.spec)!r}; "
                        "disarm that first (fault_inject.disarm(point) or its handle's disarm())"
                    )
        done: list[str] = []
        try:
            for ce in compiled:
                terms = ffi.new("bitnet_fault_term_t[]", len(ce.terms))
                for i, (prob, count, action, arg) in enumerate(ce.terms):
                    terms[i].probability = prob
                    terms[i].count = count
                    terms[i].action = action
                    terms[i].arg = arg
                err = ffi.new("char[]", _ERR_LEN)
                n = ffi.new("int32_t *")
                flags = lib.BITNET_FAULT_THIS_THREAD if thread else 0
                rc = lib.bitnet_fault_arm(ce.pattern.encode(), terms, len(ce.terms), seed, flags, n, err, _ERR_LEN)
                if rc:
                    # only reachable if something armed these points natively
                    raise FaultStateError(f"cannot arm {str(parsed)!r}: {ffi.string(err).decode('utf-8', 'replace')}")
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
        spec: str | Spec,
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
    _require_compiled()
    names = [p.name for p in points() if (p.name.startswith(target[:-1]) if target.endswith("*") else p.name == target)]
    if not names:
        _point(target)  # raises UnknownPoint with the closest names
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
            lib.bitnet_fault_disarm_all()
        if _STATE.env_armed is not None and not _STATE.env_armed.active:
            _STATE.env_armed = None
        return reports


def armed() -> tuple[Armed, ...]:
    """The handles with points still armed."""
    with _STATE.lock:
        return tuple({id(a): a for a in _STATE.owners.values()}.values())


def hits(point: str) -> int:
    """Hits of a point since it was last armed (still readable after disarm)."""
    _require_compiled()
    return int(_stats(_point(point).index).hits)


def fired(point: str) -> int:
    """Firings of a point since it was last armed (still readable after disarm)."""
    _require_compiled()
    return int(_stats(_point(point).index).fired)


# ---- BITNET_INJECT ---------------------------------------------------------------------------


def arm_from_env(environ: Mapping[str, str] | None = None) -> Armed | None:
    """Arms BITNET_INJECT (seed: BITNET_INJECT_SEED) if set; None otherwise.

    At exit the arm is disarmed and entries never hit are reported on
    stderr.  Called when fault_inject is imported, so any program that
    imports it honours the variable.
    """
    env = os.environ if environ is None else environ
    text = env.get(ENV_SPEC, "").strip()
    if not text:
        return None
    if not compiled_in():
        raise InjectionNotCompiled(f"{ENV_SPEC}={text!r} is set, but {NOT_COMPILED}")
    raw_seed = env.get(ENV_SEED, "").strip()
    seed = _seed_arg(raw_seed, ENV_SEED) if raw_seed else secrets.randbelow(2**32)
    with _STATE.lock:
        if _STATE.env_armed is not None and _STATE.env_armed.active:
            return _STATE.env_armed
        armed_env = arm(text, seed=seed, source=ENV_SPEC)
        _STATE.env_armed = armed_env
    if any(t.percent is not None for e in armed_env.spec.entries for t in e.terms) and not env.get(ENV_SEED):
        print(f"fault_inject: {ENV_SPEC} uses probabilities; seed {seed} (set {ENV_SEED}={seed} to reproduce)", file=sys.stderr)
    atexit.register(_report_env, armed_env)
    return armed_env


def release_env() -> bool:
    """Disarms what BITNET_INJECT armed, without the exit report.

    For a harness that arms the same spec itself in smaller scopes (the
    pytest plugin arms it per test).  Returns whether anything was armed.
    """
    with _STATE.lock:
        armed_env, _STATE.env_armed = _STATE.env_armed, None
    if armed_env is None:
        return False
    atexit.unregister(_report_env)
    if armed_env.active:
        armed_env.disarm()
    return True


def _report_env(armed_env: Armed) -> None:
    report = armed_env.disarm()
    if report.never_hit:
        print(f"fault_inject: {ENV_SPEC}: {report.never_hit_message()}", file=sys.stderr)

