"""The catalog's machinery: what an entry is, and the scenario it runs in.

An :class:`Entry` is data (id, category, title, the fault spec it arms, the
error class it expects, the message fragments that must appear) plus the
function that performs its operation.  The function receives a
:class:`Scenario`, which opens sessions on the backend under test, catches
the expected error (``s.fails``) or warning (``s.warns``) and checks it
against the entry, and closes whatever it opened.  :func:`run_entry` wraps
one entry on one backend with the invariant every entry shares: the live
native counters are back to their baseline afterwards.

Nothing here depends on pytest: the matrix runs entries directly, and the
readable tests in ``tests/catalog/`` use the same data.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Iterator, Mapping, Sequence, TypeVar

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import settings, validate
from pytest_bitnet.bridge.counters import delta

from .. import arming

__all__ = [
    "BACKENDS",
    "ENGINE_POINTS",
    "CATALOG",
    "CATEGORIES",
    "Entry",
    "NotApplicable",
    "Outcome",
    "Scenario",
    "ScenarioFailed",
    "column_unavailable",
    "entry",
    "run_entry",
]

#: The backends a catalog entry can run on (the matrix's columns): the bridge's.
BACKENDS: Final = validate.BACKENDS

#: Categories in DESIGN.md's order.
CATEGORIES: Final = (
    "library", "symbols", "model", "inference", "buffers", "cleanup", "messages",
    "fallback-tokenize", "fallback-eval", "fallback-chain", "diagnostics",
    "timeouts", "memory", "threads", "logging",
)  # fmt: skip

# Where an entry stands on the stub backend (which serves nothing):
STUB_UNAVAILABLE: Final = "unavailable"  # its first native call must raise CppNotAvailable
STUB_SAME: Final = "same"  # it does not depend on the column's backend: run it as is

T = TypeVar("T")

#: Fault points inside the engine that serves a call (the reference engine,
#: in process or as the dlopen'd library); the others sit at the bridge's
#: boundary and reach every backend.  llama.cpp has none inside.
ENGINE_POINTS: Final = frozenset({"alloc", "load.step", "tokenize.step", "eval.step", "eval.logits"})


def engine_point(point: str) -> dict[str, str]:
    """not_for= of an entry that needs `point` to fire inside the engine."""
    # The reason is shown by an installed matrix: it names no file of the
    # source tree (issue 20.14), only what a user can act on.
    return {"llama": f"'{point}' is a point inside the reference engine; llama.cpp has none "
                     "(the bridge's boundary points reach it, and the llama adapter maps llama.cpp's own "
                     "failures, timeouts through its abort callback included, to the same error classes)"}


class ScenarioFailed(AssertionError):
    """The entry's operation did not behave as the catalog says."""


class NotApplicable(Exception):
    """The entry cannot show anything on this machine's backend (known only
    when it runs, unlike ``not_for``): an n/a cell with the reason, not a pass."""


def column_unavailable(backend: str) -> str | None:
    """Why no entry can run on `backend` here (a column that cannot run), else None.

    Only llama.cpp can be missing: the reference engine is embedded, the
    bundled library is built with it, and the stub serves nothing by design.
    """
    if backend != "llama":
        return None
    from pytest_bitnet.bridge import llama

    status = llama.configured()
    if status.available:
        return None
    reason = status.reason or "the llama.cpp adapter was not configured"
    return reason if "pip install" in reason else f"{reason}; {llama.INSTALL_HINT}"


@dataclass(frozen=True)
class Entry:
    """One catalogued error path."""

    id: str
    category: str
    title: str  # the scenario and what must happen, as in DESIGN.md
    run: Callable[[Scenario], None] = field(repr=False, compare=False)
    expect: str | None = None  # class in pytest_bitnet.errors the operation raises (or warns with)
    fragments: tuple[str, ...] = ()  # must appear in its message; "{name}" is filled from the scenario
    # backend -> fragments where that backend words the same error its own way
    fragments_for: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    inject: str | None = None  # fault spec armed around the operation, if any
    stub: str = STUB_UNAVAILABLE
    arm_in_scenario: bool = False  # the operation arms `inject` itself (s.armed()) around the call it targets
    # backend -> why the entry does not apply there (shown, never dropped)
    not_for: Mapping[str, str] = field(default_factory=dict, compare=False)
    # why the entry cannot run with isolation="process" (it reaches the
    # library in this process: the C ABI on a handle, the finalizer's free,
    # two threads on one native context); "" runs it isolated too
    in_process: str = field(default="", compare=False)

    @property
    def error_class(self) -> type[BaseException]:
        """The expected class (``pytest.raises(entry.error_class)``)."""
        if self.expect is None:
            raise LookupError(f"{self.id} expects no error: it checks an outcome")
        return getattr(errors, self.expect)  # type: ignore[no-any-return]

    @property
    def operation(self) -> str:
        """What the entry does, from its function's docstring."""
        return (self.run.__doc__ or "").strip()

    def applies_to(self, backend: str) -> str | None:
        """None when the entry runs on `backend`, else why it does not."""
        return self.not_for.get(backend)

    def check(self, error: BaseException | str, *, values: Mapping[str, object] | None = None,
              expect: str | None = None, fragments: Sequence[str] | None = None, backend: str | None = None) -> None:
        """Raises ScenarioFailed unless `error` has the expected class and fragments.

        `error` may be an exception or a warning message (for warnings the
        class is checked by whoever caught it).
        """
        want = expect if expect is not None else self.expect
        message = str(error)
        if isinstance(error, BaseException) and want is not None:
            cls = getattr(errors, want)
            if not isinstance(error, cls):
                raise ScenarioFailed(f"expected {want}, got {type(error).__name__}: {_first_line(message)}")
        if fragments is None:
            fragments = self.fragments_for.get(backend or "", self.fragments)
        missing = [f for f in _fill(fragments, values or {}) if f not in message]
        if missing:
            raise ScenarioFailed(f"message lacks {', '.join(repr(m) for m in missing)}: {_first_line(message, 300)}")
        if _RAW_CODE in message:
            raise ScenarioFailed(f"message shows a raw native code: {_first_line(message)}")


_RAW_CODE: Final = "code=-"  # E33: codes are named in messages, never shown raw


def _fill(fragments: Sequence[str], values: Mapping[str, object]) -> list[str]:
    return [f.format_map(values) if "{" in f else f for f in fragments]


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


#: id -> Entry, in id order (filled by the category modules on import).
CATALOG: dict[str, Entry] = {}


def entry(id: str, category: str, title: str, *, expect: str | None = None, fragments: Sequence[str] = (),
          inject: str | None = None, stub: str = STUB_UNAVAILABLE, arm_in_scenario: bool = False,
          not_for: Mapping[str, str] | None = None, fragments_for: Mapping[str, Sequence[str]] | None = None,
          in_process: str = "") -> Callable[[Callable[[Scenario], None]], Callable[[Scenario], None]]:
    """Registers the decorated function as catalog entry `id`."""
    if category not in CATEGORIES:
        raise ValueError(f"{id}: unknown category {category!r}")
    if expect is not None and not hasattr(errors, expect):
        raise ValueError(f"{id}: {expect!r} is not a class in pytest_bitnet.errors")
    if inject is not None:
        from ..spec import parse

        parse(inject, source=f"catalog entry {id}")  # a typo fails at import, not in a run

    def register(fn: Callable[[Scenario], None]) -> Callable[[Scenario], None]:
        if id in CATALOG:
            raise ValueError(f"catalog entry {id} defined twice")
        CATALOG[id] = Entry(id, category, title, fn, expect, tuple(fragments),
                            {b: tuple(f) for b, f in (fragments_for or {}).items()}, inject, stub, arm_in_scenario,
                            dict(not_for or {}), in_process)
        return fn

    return register


# ---- the scenario an entry runs in ------------------------------------------------------


class Scenario:
    """The backend under test and the tools an entry's operation uses.

    ``backend`` is the column: ``reference`` (the embedded engine),
    ``dlopen`` (a library found by discovery, or ``library``), ``stub`` or
    ``llama``.  Sessions and per-call functions opened through it use that
    backend unless told otherwise, and are closed when the scenario ends.
    """

    def __init__(self, entry: Entry, backend: str, *, workdir: Path, models: Path, library: str | None = None) -> None:
        self.entry = entry
        self.backend = backend
        self.library = library  # dlopen column: the library under test (None: discovery)
        self.tmp = workdir
        self._models = models
        self.values: dict[str, object] = {"tmp": workdir}
        self._sessions: list[bn.BitnetSession] = []
        self.errors_seen: list[BaseException] = []
        self.notes: list[str] = []

    # -- models
    @property
    def model(self) -> Path:
        """The default tiny bitnet model (TQ2_0 projections, n_ctx 512)."""
        return self.make_model(arch="bitnet", seed=0)

    def make_model(self, **params: Any) -> Path:
        return bn.models.cached_tiny_model(self._models, **params)

    # -- the backend under test
    def backend_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"backend": self.backend}
        if self.backend == "dlopen" and self.library:
            args["library_path"] = self.library
        return args

    def session(self, path: str | os.PathLike[str] | None = None, **kw: Any) -> bn.BitnetSession:
        """A session on the backend under test, closed when the scenario ends."""
        s = bn.BitnetSession.create(self.model if path is None else path, **{**self.backend_args(), **kw})
        self._sessions.append(s)
        return s

    def tokenize(self, text: str | bytes, path: str | os.PathLike[str] | None = None, **kw: Any) -> Any:
        """Per-call tokenize on the backend under test."""
        return bn.tokenize(self.model if path is None else path, text, **{**self.backend_args(), **kw})

    def evaluate(self, tokens: Any, path: str | os.PathLike[str] | None = None, **kw: Any) -> Any:
        """Per-call evaluate on the backend under test."""
        return bn.evaluate(self.model if path is None else path, tokens, **{**self.backend_args(), **kw})

    def init_context(self, out: Any, path: str | os.PathLike[str], n_ctx: int, err: Any, err_len: int) -> int:
        """The C ABI's create on the backend under test: bitnet_cpp_init_context
        with the column's backend and library (bitnet_bridge_init_context)."""
        from pytest_bitnet.bridge import abi

        opts = abi.Options(**self.backend_args())
        return int(abi.lib.bitnet_bridge_init_context(out, os.fsencode(path), n_ctx, 0, opts.cdata, err, err_len))

    def library_args(self) -> dict[str, Any]:
        """dlopen on the library under test: the column's, else the bundled one."""
        return {"backend": "dlopen", "library_path": self.library} if self.library else {"backend": "dlopen"}

    # -- expectations
    def fails(self, fn: Callable[..., Any], *args: Any, expect: str | None = None,
              fragments: Sequence[str] | None = None, **kw: Any) -> errors.BitnetError:
        """Calls fn, which must raise the entry's error (or `expect`); returns it."""
        want = expect if expect is not None else self.entry.expect
        try:
            result = fn(*args, **kw)
        except errors.BitnetError as exc:
            self._stub_passthrough(exc, want)
            self.errors_seen.append(exc)
            self.entry.check(exc, values=self.values, expect=want, fragments=fragments, backend=self.backend)
            return exc
        raise ScenarioFailed(f"expected {want}, but {_name(fn)} returned {_short(result)}")

    def warns(self, fn: Callable[..., T], *args: Any, fragments: Sequence[str] | None = None, **kw: Any) -> T:
        """Calls fn, which must warn with the entry's warning class; returns its result."""
        assert self.entry.expect is not None
        cls = getattr(errors, self.entry.expect)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn(*args, **kw)
        matching = [w for w in caught if issubclass(w.category, cls)]
        if not matching:
            raise ScenarioFailed(f"expected a {self.entry.expect} warning from {_name(fn)}; got {[str(w.message) for w in caught] or 'none'}")
        self.entry.check(str(matching[0].message), values=self.values, fragments=fragments, backend=self.backend)
        return result

    def check(self, condition: object, reason: str) -> None:
        """A further condition of the entry (a ScenarioFailed with `reason` if false)."""
        if not condition:
            raise ScenarioFailed(reason)

    def _stub_passthrough(self, exc: BaseException, want: str | None) -> None:
        # On the stub column the first native call of most entries fails
        # with CppNotAvailable before the path under test is reached: let
        # it through to run_entry, which knows whether that was expected.
        if self.backend == "stub" and isinstance(exc, errors.CppNotAvailable) and want != "CppNotAvailable":
            raise exc

    def independent_fallback(self, session: bn.BitnetSession, operation: str) -> None:
        """Raises NotApplicable when `session`'s fallback tier served `operation`
        with the very engine its native tier is: E34-E38 set the tiers against
        each other, and the reference engine compared with itself proves nothing."""
        create, served = session.backend_info.get("create", ""), session.backend_info.get(operation, "")
        if not served.startswith("fallback:reference"):
            return  # llama.cpp, independent of every native tier but itself (never its own fallback)
        from pytest_bitnet.bridge.abi import bundled_library

        bundled = bundled_library()
        if create == "reference" or (bundled is not None and create == f"dlopen:{bundled}"):
            from pytest_bitnet.bridge import llama

            status = llama.configured()
            why = (f"llama.cpp, the independent tier, is unavailable: {status.reason}" if not status.available
                   else "BITNET_FALLBACK pins the tier to the reference engine")
            raise NotApplicable(f"no independent fallback tier: the fallback is the reference engine, which serves this "
                                f"column too, so the comparison would be of the engine with itself ({why})")

    def reaches(self, point: str) -> bool:
        """Whether `point` can fire on this backend (engine points: not inside llama.cpp)."""
        return point not in ENGINE_POINTS or self.backend != "llama"

    # -- environment
    @contextlib.contextmanager
    def env(self, **values: str | None) -> Iterator[None]:
        """Sets (or, with None, removes) environment variables for the block."""
        old = {k: os.environ.get(k) for k in values}
        try:
            for k, v in values.items():
                _setenv(k, v)
            yield
        finally:
            for k, v in old.items():
                _setenv(k, v)

    def inject(self, spec: str, **kw: Any) -> arming.inject:
        """fault_inject.inject(spec): armed for a ``with`` block."""
        return arming.inject(spec, source=f"catalog entry {self.entry.id}", **kw)

    def armed(self) -> arming.inject:
        """The entry's own spec, for entries that arm it around one call (arm_in_scenario)."""
        if not self.entry.inject:
            raise LookupError(f"{self.entry.id} has no fault spec to arm")
        return arming.inject(self.entry.inject, source=f"catalog entry {self.entry.id}", strict=True)

    def note(self, text: str) -> None:
        """A figure or fact worth reporting with the outcome (a timeout's overshoot, a sweep's size)."""
        self.notes.append(text)

    @contextlib.contextmanager
    def logs(self, level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
        """Records of the ``pytest_bitnet`` loggers during the block."""
        records: list[logging.LogRecord] = []
        handler = _ListHandler(records)
        logger = logging.getLogger("pytest_bitnet")
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(level)
        try:
            yield records
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)

    def close(self) -> list[str]:
        """Closes every session still open; returns problems met doing so."""
        problems = []
        for s in reversed(self._sessions):
            if s.closed:
                continue
            try:
                s.close()
            except errors.BitnetError as exc:
                problems.append(f"closing a session: {type(exc).__name__}: {_first_line(str(exc))}")
        self._sessions.clear()
        return problems


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _setenv(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _short(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:79] + "…"


# ---- running one entry ------------------------------------------------------------------

PASS: Final = "pass"
FAIL: Final = "fail"
NOT_APPLICABLE: Final = "n/a"


@dataclass(frozen=True)
class Outcome:
    """One entry on one backend."""

    id: str
    backend: str
    result: str  # pass, fail, n/a
    seconds: float = 0.0
    reason: str = ""  # why it failed, or why it does not apply
    observed: str = ""  # the first error met: "Class: first line"
    notes: tuple[str, ...] = ()  # figures the entry reported

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (the matrix's reports, and what travels from xdist workers)."""
        return {"id": self.id, "backend": self.backend, "result": self.result, "seconds": round(self.seconds, 4),
                "reason": self.reason, "observed": self.observed, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Outcome:
        """The inverse of as_dict."""
        return cls(d["id"], d["backend"], d["result"], d["seconds"], d["reason"], d["observed"], tuple(d.get("notes", ())))

    @classmethod
    def crashed(cls, id: str, backend: str, seconds: float, last_line: str) -> Outcome:
        """A cell whose process died before it reported (a crash on a worker)."""
        return cls(id, backend, FAIL, seconds, f"crashed: {last_line or 'no report'}")


# Variables an entry may read; each run starts from the caller's values
# and gets them back whatever the entry did.
_ENV_KEPT: Final = ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK",
                    "BITNET_FALLBACK", "BITNET_CPP_TIMEOUT", "BITNET_CPP_LOG_LEVEL", "LLAMA_CPP_LIB_PATH")


def run_entry(entry: Entry, backend: str, *, models: Path, library: str | None = None,
              timeout: float | None = None, isolation: str | None = None) -> Outcome:
    """Runs `entry` on `backend` and checks the shared invariant.

    Passes when the operation behaved as catalogued and the live counters
    are back to their baseline once its sessions are closed; on the stub
    backend, entries that need a backend pass when their first native call
    raised CppNotAvailable.  Never raises for what the entry does.
    ``timeout``: the default deadline of the cell's native calls
    (settings.configure); the timeouts an entry passes itself still win.
    ``isolation``: where the cell's sessions and per-call functions run
    (settings.configure; "process": each in a worker process); an entry
    that must reach the library in this process (the C ABI, its threads)
    is n/a under "process", with its reason (``Entry.in_process``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (valid: {', '.join(BACKENDS)})")
    unavailable = column_unavailable(backend)
    if unavailable:
        return Outcome(entry.id, backend, NOT_APPLICABLE, reason=f"{backend}: unavailable: {unavailable}")
    why_not = entry.applies_to(backend)
    if why_not:
        return Outcome(entry.id, backend, NOT_APPLICABLE, reason=why_not)
    if isolation == "process" and entry.in_process:
        return Outcome(entry.id, backend, NOT_APPLICABLE, reason=f"in process only: {entry.in_process}")
    baseline = bn.live_counters()  # settled: the last cell ended collected (below)
    saved_env = {k: os.environ.get(k) for k in _ENV_KEPT}
    start = time.perf_counter()
    failure = ""
    not_applicable = ""
    with tempfile.TemporaryDirectory(prefix=f"bitnet-{entry.id}-") as tmp, warnings.catch_warnings():
        # Fallback and never-hit warnings are part of what entries provoke;
        # the entries that expect one catch it themselves (Scenario.warns).
        warnings.simplefilter("ignore")
        s = Scenario(entry, backend, workdir=Path(tmp), models=models, library=library)
        changes = {k: v for k, v in (("timeout", timeout), ("isolation", isolation)) if v is not None}
        previous = settings.configure(**changes) if changes else None
        try:
            os.environ["BITNET_BACKEND"] = backend
            if entry.inject and not entry.arm_in_scenario:
                with arming.inject(entry.inject, source=f"catalog entry {entry.id}", strict=True):
                    entry.run(s)
            else:
                entry.run(s)
            if backend == "stub" and entry.stub == STUB_UNAVAILABLE and not s.errors_seen:
                failure = "the stub backend served this entry's operation: expected CppNotAvailable"
        except errors.CppNotAvailable as exc:
            if not (backend == "stub" and entry.stub == STUB_UNAVAILABLE):
                failure = f"CppNotAvailable: {_first_line(str(exc))}"
            elif "BITNET_BACKEND" not in str(exc):
                failure = f"CppNotAvailable does not say how to enable a backend: {_first_line(str(exc))}"
            else:
                s.errors_seen.append(exc)
        except ScenarioFailed as exc:
            failure = str(exc)
        except NotApplicable as exc:
            not_applicable = str(exc)
        except errors.BitnetError as exc:
            failure = f"unexpected {type(exc).__name__}: {_first_line(str(exc))}"
        except Exception as exc:  # the catalog's own bug or an escaped error: a red row, not a dead run
            failure = f"{type(exc).__name__}: {exc} at {_where(exc)}"
        finally:
            problems = s.close()
            arming.disarm_all()
            if previous is not None:
                settings.restore(previous)
            for k, v in saved_env.items():
                _setenv(k, v)
        if problems and not failure:
            failure = "; ".join(problems)
    seconds = time.perf_counter() - start
    leaked = _leaked(baseline)
    if leaked:  # something may only wait for the garbage collector (a traceback's frames)
        gc.collect()
        leaked = _leaked(baseline)
    if leaked and not failure:
        failure = "counters not back to baseline: " + ", ".join(f"{k} {v:+d}" for k, v in leaked.items())
    observed = ""
    if s.errors_seen:
        first = s.errors_seen[0]
        observed = f"{type(first).__name__}: {_first_line(str(first))}"
    if not_applicable and not failure:  # what it opened is still checked above
        return Outcome(entry.id, backend, NOT_APPLICABLE, seconds, not_applicable, observed, tuple(s.notes))
    return Outcome(entry.id, backend, FAIL if failure else PASS, seconds, failure, observed, tuple(s.notes))


def _leaked(baseline: Mapping[str, int]) -> dict[str, int]:
    return delta(baseline, bn.live_counters())


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno}"
