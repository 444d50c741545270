"""The bitnet pytest plugin: fault injection, leak assertion, timeouts, reports.

Registered as the ``bitnet`` pytest11 entry point (``-p no:bitnet`` turns it
off).  Thin glue: arming is :mod:`fault_inject`'s, counters and sessions are
:mod:`pytest_bitnet`'s; this module only decides *when* (per test) and
*reports* (header, sections, summary, JUnit properties, xdist crashes).

Settings and their precedence (later wins): ini key < environment <
command line < marker.  The native library is imported only when a setting
or a test needs it.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import pytest

if TYPE_CHECKING:
    import fault_inject as fi

    from .session import BitnetSession

# ---- settings: one table, help written once ------------------------------------------

LEAK_MODES: Final = ("strict", "warn", "off")
BACKENDS: Final = ("reference", "dlopen", "llama", "stub")
#: set while the leak check is on: pytest_bitnet.session records creation stacks from import on
TRACK_ENV: Final = "BITNET_TRACK_CREATION"
#: the live counters a leak check compares (pytest_bitnet.live_counters())
LEAK_COUNTERS: Final = ("contexts", "sessions", "models", "bytes", "allocations")


@dataclass(frozen=True)
class _Option:
    """One setting: its command-line flag, ini key, environment variable and help."""

    name: str  # attribute of Settings
    flag: str  # command-line option
    ini: str  # ini key
    env: str | None  # environment variable, if any
    help: str  # shared by the option and the ini key
    kind: Literal["string", "bool"] = "string"  # ini type
    metavar: str = "VALUE"  # in --help


OPTIONS: Final = (
    _Option("inject", "--bitnet-inject", "bitnet_inject", "BITNET_INJECT",
            "fault spec armed for every test, e.g. 'tokenize.fill=fail' or 'alloc=2*off->oom' (grammar: fault_inject.spec)", metavar="SPEC"),
    _Option("seed", "--bitnet-seed", "bitnet_seed", "BITNET_INJECT_SEED",
            "seed of the fault spec's probability draws (default: random, printed in the header)", metavar="N"),
    _Option("leak_check", "--bitnet-leak-check", "bitnet_leak_check", None,
            "native leak check after each test: strict (fail the test; default), warn (report only), off", metavar="MODE"),
    _Option("timeout", "--bitnet-timeout", "bitnet_timeout", None,
            "default deadline in seconds for native calls in each test (sets BITNET_CPP_TIMEOUT); 'none' for no deadline", metavar="SECONDS"),
    _Option("backend", "--bitnet-backend", "bitnet_backend", "BITNET_BACKEND",
            "native backend for the run: " + " | ".join(BACKENDS) + " (sets BITNET_BACKEND)", metavar="NAME"),
    _Option("diagnostics", "--bitnet-diagnostics", "bitnet_diagnostics", None,
            "print the native library diagnostics (library, symbols, fallbacks) in the header", kind="bool"),
)

#: marker name -> description (listed by --markers)
MARKERS: Final = {
    "bitnet_inject": "bitnet_inject(spec, thread=False, seed=None): arm the fault spec for this test "
    "(replaces --bitnet-inject); thread=True: only the test's thread hits the points",
    "bitnet_allow_leaks": "bitnet_allow_leaks: do not leak-check this test's native objects",
    "bitnet_timeout": "bitnet_timeout(seconds): default deadline for native calls in this test (replaces --bitnet-timeout)",
}


@dataclass(frozen=True)
class Settings:
    """Resolved settings; *_source names where each came from."""

    inject: str | None = None
    inject_source: str = "default"
    seed: int | None = None
    seed_source: str = "default"
    leak_check: str = "strict"
    leak_check_source: str = "default"
    timeout: float | None = None  # None: leave BITNET_CPP_TIMEOUT alone
    timeout_source: str = "default"
    backend: str | None = None
    backend_source: str = "default"
    diagnostics: bool = False
    diagnostics_source: str = "default"


def _usage(what: str, value: object, source: str, expected: str) -> pytest.UsageError:
    return pytest.UsageError(f"bitnet: invalid {what} {value!r} from {source}: expected {expected}")


def _fault_inject() -> Any:
    """fault_inject, imported without letting it arm BITNET_INJECT run-wide.

    Under pytest the plugin arms BITNET_INJECT per test (and validates it
    as a setting); fault_inject's own import-time arming would arm it for
    the whole run, or crash the run on a bad value.
    """
    module = sys.modules.get("fault_inject")
    if module is None:
        saved = os.environ.pop("BITNET_INJECT", None)
        try:
            import fault_inject as module
        finally:
            if saved is not None:
                os.environ["BITNET_INJECT"] = saved
    return module


def check_inject(value: str, source: str) -> str:
    """The spec text if it parses and names known points; UsageError otherwise."""
    fi = _fault_inject()
    from fault_inject import spec as fspec

    if not fi.compiled_in():
        raise pytest.UsageError(f"bitnet: fault spec {value!r} from {source}: {fi.control.NOT_COMPILED}")
    try:
        parsed = fi.parse(value, source=source)
        fspec.resolve(parsed, {p.name: p for p in fi.points()}, fi.error_codes(), source=source)
    except (fi.FaultSpecError, fi.UnknownPoint) as exc:
        text = str(exc)
        raise pytest.UsageError(f"bitnet: {text}" if source in text else f"bitnet: invalid fault spec from {source}: {text}") from None
    return str(parsed)


def check_seed(value: str, source: str) -> int:
    try:
        seed = int(str(value).strip(), 0)
    except ValueError:
        raise _usage("seed", value, source, "a whole number in 0..2**64-1") from None
    if not 0 <= seed < 2**64:
        raise _usage("seed", value, source, "a whole number in 0..2**64-1")
    return seed


def check_leak_check(value: str, source: str) -> str:
    mode = str(value).strip().lower()
    if mode not in LEAK_MODES:
        raise _usage("leak check", value, source, " | ".join(LEAK_MODES))
    return mode


def check_timeout(value: object, source: str) -> float:
    """Seconds > 0, or math.inf for 'none'/'inf'."""
    if isinstance(value, str) and value.strip().lower() in ("none", "inf", "infinity"):
        return float("inf")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _usage("timeout", value, source, "seconds > 0, or 'none'") from None
    if not seconds > 0:
        raise _usage("timeout", value, source, "seconds > 0, or 'none'")
    return seconds


def check_backend(value: str, source: str) -> str:
    backend = str(value).strip().lower()
    if backend not in BACKENDS:
        raise _usage("backend", value, source, " | ".join(BACKENDS))
    return backend


def check_diagnostics(value: object, source: str) -> bool:
    return bool(value)


_VALIDATORS: Final[dict[str, Callable[[Any, str], Any]]] = {
    "inject": check_inject,
    "seed": check_seed,
    "leak_check": check_leak_check,
    "timeout": check_timeout,
    "backend": check_backend,
    "diagnostics": check_diagnostics,
}


def _dest(opt: _Option) -> str:
    return opt.flag.lstrip("-").replace("-", "_")


def resolve_settings(config: pytest.Config) -> Settings:
    """Reads every setting from command line, environment, then ini; validates each."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw: Any = config.getoption(_dest(opt))
        source = opt.flag
        if raw is None and opt.env and os.environ.get(opt.env, "").strip():
            raw, source = os.environ[opt.env], opt.env
        if raw is None:
            ini = config.getini(opt.ini)
            if ini not in ("", None, False):
                raw, source = ini, f"ini key {opt.ini}" + (f" in {config.inipath}" if config.inipath else "")
        if raw is None:
            continue
        values[opt.name] = _VALIDATORS[opt.name](raw, source)
        values[f"{opt.name}_source"] = source
    return Settings(**values)


# ---- hooks: options, markers, own hookspecs ------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bitnet", "native BitNet bridge: fault injection and leak checks")
    for opt in OPTIONS:
        if opt.kind == "bool":
            group.addoption(opt.flag, action="store_true", default=None, dest=_dest(opt), help=opt.help)
        else:
            group.addoption(opt.flag, default=None, dest=_dest(opt), metavar=opt.metavar, help=opt.help)
        parser.addini(opt.ini, opt.help, type=opt.kind, default=False if opt.kind == "bool" else "")


# ---- per-test state ----------------------------------------------------------------------


@dataclass
class Leak:
    """What one test leaked: counters above baseline, and the sessions behind them."""

    nodeid: str
    counters: dict[str, int]  # counter -> excess over baseline
    objects: list[tuple[str, str]]  # (repr of the session, Python stack where it was created)

    def headline(self) -> str:
        return f"bitnet: native objects leaked by {self.nodeid}: " + ", ".join(f"{k} +{v}" for k, v in self.counters.items())

    def text(self) -> str:
        lines = [self.headline() + " (after teardown and gc.collect(); close sessions, or mark the test bitnet_allow_leaks)"]
        for what, stack in self.objects:
            lines += [f"  {what} created at (most recent call last):", stack.rstrip()]
        if not self.objects:
            lines.append("  no open BitnetSession was created by this test: the leak is inside the native bridge "
                         "(a per-call function or an error path did not free what it allocated)")
        return "\n".join(lines)


class _TestState:
    """One test's bitnet state, from setup to its teardown report."""

    # A plain class with __slots__: one is made per test, and the leak
    # check's overhead must stay within a few percent of an empty test.
    __slots__ = (
        "adjust",
        "armed",
        "baseline",
        "events",
        "excluded",
        "finished",
        "leak",
        "leak_mode",
        "reports",
        "saved_timeout",
        "seq_start",
        "timeout_set",
    )

    def __init__(self, leak_mode: str = "strict") -> None:
        self.baseline: dict[str, int] | None = None  # counters at setup start (None: leak check off)
        self.adjust: dict[str, int] = {}  # deltas of higher-scoped fixtures, not the test's
        self.seq_start = 0  # session creation number at setup start
        self.excluded: list[tuple[int, int]] = []  # creation numbers made by higher-scoped fixtures
        self.armed: list[fi.Armed] = []  # every arm of this test, disarmed at its end
        self.reports: list[fi.DisarmReport] = []  # filled at disarm
        self.events: list[fi.FireEvent] = []  # firings, for pytest_bitnet_fault_fired
        self.saved_timeout: str | None = None  # BITNET_CPP_TIMEOUT before a bitnet_timeout marker
        self.timeout_set = False  # the marker changed BITNET_CPP_TIMEOUT
        self.leak: Leak | None = None
        self.leak_mode = leak_mode  # strict | warn | off (bitnet_allow_leaks)
        self.finished = False  # finish() ran


_STATE: Final = pytest.StashKey[_TestState]()
_PLUGIN: Final = pytest.StashKey["BitnetPlugin"]()

# Frames of pytest's own machinery; a creation stack starts after the last.
_NOISE: Final = (os.sep + "_pytest" + os.sep, os.sep + "pluggy" + os.sep)


def _format_stack(stack: traceback.StackSummary) -> str:
    frames = list(stack)
    last = max((i for i, f in enumerate(frames) if any(n in f.filename for n in _NOISE)), default=-1)
    return "".join(traceback.StackSummary.from_list(frames[last + 1 :]).format())


class BitnetPlugin:
    """The plugin's run-wide state; one per pytest.Config (in config.stash)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.seed = settings.seed
        self.current: _TestState | None = None  # the test between setup start and teardown end
        self.fixture_snapshots: dict[int, dict[str, int]] = {}  # id(fixturedef) -> counters before its teardown
        self.saved_env: dict[str, str | None] = {}
        self.state_dir: str | None = None  # xdist: where workers note the spec armed now
        self.unsubscribe: Callable[[], None] | None = None
        self.previous_tracking = False
        # controller-side summary, from reports
        self.fault_rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.leaks: list[tuple[str, str, bool]] = []  # (nodeid, text, failed)
        self.crashes: list[str] = []

    # -- run-wide ------------------------------------------------------------------

    def configure(self) -> None:
        s = self.settings
        if s.backend is not None:
            self._setenv("BITNET_BACKEND", s.backend)
        if s.timeout is not None:
            self._setenv("BITNET_CPP_TIMEOUT", "inf" if s.timeout == float("inf") else repr(s.timeout))
        workerinput = getattr(self.config, "workerinput", None)
        if workerinput is not None:
            if self.seed is None and "bitnet_seed" in workerinput:
                self.seed = workerinput["bitnet_seed"]
            self.state_dir = workerinput.get("bitnet_state_dir")
        if self.seed is None:
            import secrets

            self.seed = secrets.randbelow(2**32)
        if os.environ.get("BITNET_INJECT", "").strip():
            _take_over_env_arm()
        if s.leak_check != "off":
            # Creation stacks for leak reports, without importing the
            # session module (numpy, the bridge) before a test needs it.
            session = sys.modules.get("pytest_bitnet.session")
            if session is not None:
                self.previous_tracking = session.track_creation(True)
            self._setenv(TRACK_ENV, "1")
        if self.config.pluginmanager.hook.pytest_bitnet_fault_fired.get_hookimpls():
            fi = _fault_inject()
            self.unsubscribe = fi.on_fire(self._on_fire)

    def unconfigure(self) -> None:
        if self.unsubscribe is not None:
            self.unsubscribe()
        session = sys.modules.get("pytest_bitnet.session")
        if self.settings.leak_check != "off" and session is not None:
            session.track_creation(self.previous_tracking)
        for name, value in self.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self.state_dir is not None and getattr(self.config, "workerinput", None) is None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _setenv(self, name: str, value: str) -> None:
        self.saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def _on_fire(self, event: fi.FireEvent) -> None:
        # On the firing thread, inside a native call: only record.
        cur = self.current
        if cur is not None and len(cur.events) < 10_000:
            cur.events.append(event)

    # -- per test --------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return self.config.hook.pytest_bitnet_counters()  # type: ignore[no-any-return]

    def start(self, item: pytest.Item) -> None:
        st = _TestState(leak_mode=self.settings.leak_check)
        item.stash[_STATE] = st
        self.current = st
        spec, spec_source, thread, seed = self.settings.inject, self.settings.inject_source, False, self.seed
        for mark in item.iter_markers():
            if not mark.name.startswith("bitnet_"):
                continue
            if mark.name == "bitnet_allow_leaks":
                st.leak_mode = "off"
            elif mark.name == "bitnet_timeout" and not st.timeout_set:
                if len(mark.args) != 1 or mark.kwargs:
                    raise pytest.UsageError(f"bitnet: marker bitnet_timeout on {item.nodeid} takes one argument (seconds), got {mark.args!r} {mark.kwargs!r}")
                seconds = check_timeout(mark.args[0], f"marker bitnet_timeout on {item.nodeid}")
                st.saved_timeout, st.timeout_set = os.environ.get("BITNET_CPP_TIMEOUT"), True
                os.environ["BITNET_CPP_TIMEOUT"] = "inf" if seconds == float("inf") else repr(seconds)
            elif mark.name == "bitnet_inject" and spec_source != "marker":
                if len(mark.args) != 1 or set(mark.kwargs) - {"thread", "seed"}:
                    raise pytest.UsageError(
                        f"bitnet: marker bitnet_inject on {item.nodeid} takes (spec, thread=False, seed=None), got {mark.args!r} {mark.kwargs!r}"
                    )
                where = f"marker bitnet_inject on {item.nodeid}"
                spec, spec_source = check_inject(mark.args[0], where), "marker"
                thread = bool(mark.kwargs.get("thread", False))
                if mark.kwargs.get("seed") is not None:
                    seed = check_seed(str(mark.kwargs["seed"]), where)
        if st.leak_mode != "off":
            st.seq_start = _creation_seq()
            st.baseline = self.counters()
        if spec is not None:
            self.arm(st, item, spec, seed=seed, thread=thread, source=spec_source)

    def arm(self, st: _TestState, item: pytest.Item, spec: str, *, seed: int | None, thread: bool, source: str) -> fi.Armed:
        armed = _fault_inject().arm(spec, seed=self.seed if seed is None else seed, thread=thread, source=source)
        st.armed.append(armed)
        if self.state_dir is not None:
            # Read by the controller if this worker dies (see pytest_handlecrashitem).
            note = {"nodeid": item.nodeid, "specs": [[str(a.spec), a.seed] for a in st.armed if a.active]}
            Path(self.state_dir, self.config.workerinput["workerid"]).write_text(json.dumps(note))  # type: ignore[attr-defined]
        return armed

    def finish(self, item: pytest.Item) -> None:
        """After teardown: disarm everything, restore the timeout, check leaks.  Idempotent."""
        st = item.stash.get(_STATE, None)
        if st is None or st.finished:
            return
        st.finished = True
        self.current = None
        try:
            for armed in st.armed:
                st.reports.append(armed.disarm())
            if st.armed and self.state_dir is not None:
                Path(self.state_dir, self.config.workerinput["workerid"]).unlink(missing_ok=True)  # type: ignore[attr-defined]
        finally:
            if st.timeout_set:
                if st.saved_timeout is None:
                    os.environ.pop("BITNET_CPP_TIMEOUT", None)
                else:
                    os.environ["BITNET_CPP_TIMEOUT"] = st.saved_timeout
        for event in st.events:
            item.ihook.pytest_bitnet_fault_fired(item=item, event=event)
        if st.baseline is not None:
            self.check_leaks(item, st)

    def check_leaks(self, item: pytest.Item, st: _TestState) -> None:
        assert st.baseline is not None
        excess = self._excess(st, self.counters())
        if not excess:
            return
        gc.collect()  # only when something looks leaked: a full collection per test is too slow
        excess = self._excess(st, self.counters())
        if not excess:
            return
        from . import session

        objects = [
            (repr(s), _format_stack(stack))
            for seq, s, stack in session.open_sessions(st.seq_start)
            if not any(lo < seq <= hi for lo, hi in st.excluded)
        ]
        leak = Leak(item.nodeid, excess, objects)
        if item.ihook.pytest_bitnet_leak_found(item=item, leak=leak) is False:
            return
        st.leak = leak

    def _excess(self, st: _TestState, now: dict[str, int]) -> dict[str, int]:
        base, adj = st.baseline or {}, st.adjust
        return {k: d for k in now if (d := now[k] - base.get(k, 0) - adj.get(k, 0)) > 0}

    def decorate(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Puts the test's bitnet data on its teardown report (travels under xdist)."""
        st = item.stash.get(_STATE, None)
        if st is None or not (st.reports or st.leak):
            return
        data: dict[str, Any] = {}
        if st.reports:
            data["faults"] = [
                {"spec": r.spec, "seed": r.seed, "hits": r.hits, "fired": r.fired, "never_hit": list(r.never_hit)} for r in st.reports
            ]
            for r in st.reports:
                report.user_properties.append(("bitnet_inject", f"{r.spec} (seed {r.seed})"))
                report.user_properties.append(("bitnet_hits", json.dumps(r.hits, sort_keys=True)))
                if r.never_hit:
                    report.user_properties.append(("bitnet_never_hit", ", ".join(r.never_hit)))
        if st.leak:
            text = st.leak.text()
            fail = st.leak_mode == "strict"
            data["leak"] = {"counters": st.leak.counters, "text": text, "failed": fail}
            report.sections.append(("bitnet leaked native objects", text))
            report.user_properties.append(("bitnet_leaked", json.dumps(st.leak.counters, sort_keys=True)))
            if fail and report.passed:
                report.outcome = "failed"
                report.longrepr = st.leak.headline() + " (where each was created: section 'bitnet leaked native objects')"
        report.bitnet = data  # type: ignore[attr-defined]

    # -- controller-side summary ---------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # A hook of this registered instance: it needs the run's state.
        self.collect(report)

    def collect(self, report: pytest.TestReport) -> None:
        data = getattr(report, "bitnet", None)
        if not data:
            return
        for f in data.get("faults", ()):
            row = self.fault_rows.setdefault((f["spec"], f["seed"]), {"tests": 0, "hits": {}, "fired": {}, "never_hit": {}})
            row["tests"] += 1
            for k, v in f["hits"].items():
                row["hits"][k] = row["hits"].get(k, 0) + v
            for k, v in f["fired"].items():
                row["fired"][k] = row["fired"].get(k, 0) + v
            for p in f["never_hit"]:
                row["never_hit"].setdefault(p, []).append(report.nodeid)
        if "leak" in data:
            self.leaks.append((report.nodeid, data["leak"]["text"], data["leak"]["failed"]))
        if "crash" in data:
            self.crashes.append(data["crash"])

    def summary(self, tr: Any) -> None:
        if not (self.fault_rows or self.leaks or self.crashes):
            return
        tr.write_sep("=", "bitnet")
        for (spec, seed), row in self.fault_rows.items():
            tr.write_line(f"fault spec {spec!r} (seed {seed}) armed in {row['tests']} test(s):")
            for point in sorted(row["hits"]):
                tr.write_line(f"  {point}: {row['hits'][point]} hits, {row['fired'].get(point, 0)} fired")
            for point, tests in row["never_hit"].items():
                where = tests[0] + (f" and {len(tests) - 1} more" if len(tests) > 1 else "")
                tr.write_line(f"  armed but never hit: {point} (in {where})")
        if self.leaks:
            failed = sum(1 for _, _, f in self.leaks if f)
            tr.write_line(f"native leaks in {len(self.leaks)} test(s)" + ("" if failed else " (warn mode: not failing)") + ":")
            for _nodeid, text, _ in self.leaks:
                for line in text.splitlines():
                    tr.write_line("  " + line)
        for crash in self.crashes:
            tr.write_line(f"worker crash: {crash}")


def _take_over_env_arm() -> None:
    # BITNET_INJECT was armed run-wide when pytest_bitnet was imported
    # (fault_inject.arm_from_env).  Under pytest the plugin arms it per test
    # instead, so hits are counted per test and disarmed between tests.
    _fault_inject().release_env()


# ---- hook implementations ------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    for text in MARKERS.values():
        config.addinivalue_line("markers", text)
    plugin = BitnetPlugin(config, resolve_settings(config))
    config.stash[_PLUGIN] = plugin
    config.pluginmanager.register(plugin, "bitnet-run")
    plugin.configure()


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(_PLUGIN, None)
    if plugin is not None:
        plugin.unconfigure()
        config.pluginmanager.unregister(plugin)
        del config.stash[_PLUGIN]


_ZERO: Final = dict.fromkeys(LEAK_COUNTERS, 0)


def _creation_seq() -> int:
    # 0 until pytest_bitnet.session is imported: no session exists before.
    session = sys.modules.get("pytest_bitnet.session")
    return session.creation_seq() if session is not None else 0


@pytest.hookimpl(trylast=True)
def pytest_bitnet_counters() -> dict[str, int]:
    # Until something loads the bridge nothing native can be alive: a
    # suite that never touches it never loads it for the leak check.
    if "pytest_bitnet._native" not in sys.modules:
        return _ZERO
    from .session import live_counters

    c = live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


def pytest_report_header(config: pytest.Config) -> list[str]:
    plugin = config.stash[_PLUGIN]
    s = plugin.settings
    backend = s.backend or os.environ.get("BITNET_BACKEND") or "reference"
    lines = [f"bitnet: backend={backend} ({s.backend_source}), leak-check={s.leak_check} ({s.leak_check_source})"
             + (f", timeout={s.timeout}s ({s.timeout_source})" if s.timeout is not None else "")]
    if s.inject is not None:
        lines.append(f"bitnet: inject={s.inject!r} ({s.inject_source}), seed={plugin.seed} ({s.seed_source}); "
                     f"reproduce with --bitnet-inject='{s.inject}' --bitnet-seed={plugin.seed}")
    else:
        lines.append(f"bitnet: seed={plugin.seed} ({s.seed_source})")
    if s.diagnostics:
        from ._diagnostics import diagnostics, format_text

        lines += ["bitnet diagnostics:"] + ["  " + line for line in format_text(diagnostics()).splitlines()]
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    plugin = item.config.stash[_PLUGIN]
    try:
        return (yield)
    finally:
        # Safety net (an interrupted test): nothing armed outlives its test.
        plugin.finish(item)
        if _STATE in item.stash:
            del item.stash[_STATE]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Not a wrapper: an error here (a bad marker) must not stop other
    # plugins' setup wrappers from running.  tryfirst: before any fixture.
    try:
        item.config.stash[_PLUGIN].start(item)
    except pytest.UsageError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        # After every fixture's teardown (function scope, and higher scopes
        # ending here): the leak check sees only what outlived the test.
        item.config.stash[_PLUGIN].finish(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "teardown":
        item.config.stash[_PLUGIN].decorate(item, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    # Objects made by session/module/class fixtures belong to no test: their
    # deltas are credited to the baseline of the test that set them up.
    if fixturedef.scope == "function":
        return (yield)
    plugin = request.config.stash[_PLUGIN]
    st = plugin.current
    if st is None or st.baseline is None:
        return (yield)
    before, seq = plugin.counters(), _creation_seq()
    try:
        return (yield)
    finally:
        after = plugin.counters()
        for k in after:
            st.adjust[k] = st.adjust.get(k, 0) + after[k] - before.get(k, 0)
        st.excluded.append((seq, _creation_seq()))
        # Runs before the fixture's own teardown (finalizers run last-in first-out).
        fixturedef.addfinalizer(lambda: plugin.fixture_snapshots.__setitem__(id(fixturedef), plugin.counters()))


def pytest_fixture_post_finalizer(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
    if fixturedef.scope == "function":
        return
    plugin = request.config.stash.get(_PLUGIN, None)
    if plugin is None:
        return
    before = plugin.fixture_snapshots.pop(id(fixturedef), None)
    st = plugin.current
    if before is None or st is None or st.baseline is None:
        return
    after = plugin.counters()
    for k in after:
        st.adjust[k] = st.adjust.get(k, 0) + after[k] - before.get(k, 0)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    config.stash[_PLUGIN].summary(terminalreporter)


# ---- fixtures ----------------------------------------------------------------------------


class Injector:
    """What the ``bitnet_inject`` fixture returns: arm specs inside a test.

    ``bitnet_inject(spec, thread=False, seed=None)`` arms and returns the
    :class:`fault_inject.Armed` handle (also usable as ``with``); whatever is
    still armed when the test ends is disarmed then, whatever its outcome.
    """

    __slots__ = ("_item", "_plugin", "_state")

    def __init__(self, plugin: BitnetPlugin, item: pytest.Item, state: _TestState) -> None:
        self._plugin, self._item, self._state = plugin, item, state

    def __call__(self, spec: str, *, thread: bool = False, seed: int | None = None) -> fi.Armed:
        return self._plugin.arm(self._state, self._item, spec, seed=seed, thread=thread, source="the bitnet_inject fixture")

    @property
    def armed(self) -> tuple[fi.Armed, ...]:
        """Every handle armed in this test (by the fixture, a marker or --bitnet-inject)."""
        return tuple(self._state.armed)

    def hits(self, point: str | None = None) -> Any:
        """Hits of one point (int) or of every armed point (dict), over this test's arms."""
        if point is None:
            return {p: n for a in self._state.armed for p, n in a.hits().items()}
        for a in reversed(self._state.armed):
            if point in a.points:
                return a.hits(point)
        raise LookupError(f"{point!r} is not armed in this test; armed: {', '.join(p for a in self._state.armed for p in a.points) or 'nothing'}")

    def fired(self, point: str | None = None) -> Any:
        """Firings of one point (int) or of every armed point (dict)."""
        if point is None:
            return {p: n for a in self._state.armed for p, n in a.fired().items()}
        for a in reversed(self._state.armed):
            if point in a.points:
                return a.fired(point)
        raise LookupError(f"{point!r} is not armed in this test")


class Counters:
    """What the ``bitnet_counters`` fixture returns: the native live counters."""

    __slots__ = ("baseline",)

    def __init__(self) -> None:
        self.baseline = self.current()  # when the fixture was set up

    @staticmethod
    def current() -> dict[str, int]:
        """pytest_bitnet.live_counters() now."""
        from .session import live_counters

        return live_counters()

    def delta(self) -> dict[str, int]:
        """Leak-checked counters that differ from the baseline (current - baseline)."""
        now = self.current()
        return {k: now[k] - self.baseline[k] for k in LEAK_COUNTERS if now[k] != self.baseline[k]}


def _state_of(request: pytest.FixtureRequest) -> _TestState:
    st = request.node.stash.get(_STATE, None)
    if st is None:  # only if setup hooks did not run (another plugin skipped them)
        st = request.node.stash[_STATE] = _TestState()
    return st


@pytest.fixture
def bitnet_inject(request: pytest.FixtureRequest) -> Injector:
    """Arm fault specs inside a test: ``armed = bitnet_inject("eval.fill=fail")``; read ``.hits(point)``."""
    return Injector(request.config.stash[_PLUGIN], request.node, _state_of(request))


#: directory where bitnet_model keeps its models across runs (default: the run's temporary directory)
MODEL_CACHE_ENV: Final = "BITNET_MODEL_CACHE"


@pytest.fixture(scope="session")
def bitnet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a cached tiny bitnet GGUF model (built once per run and worker,
    or once per ``BITNET_MODEL_CACHE`` directory when that is set)."""
    from .models import cached_tiny_model

    cache = os.environ.get(MODEL_CACHE_ENV, "").strip()
    where = Path(cache) if cache else tmp_path_factory.mktemp("bitnet-models")
    return cached_tiny_model(where, arch="bitnet", seed=0)


@pytest.fixture
def bitnet_session(bitnet_model: Path) -> Iterator[BitnetSession]:
    """An open BitnetSession on ``bitnet_model``, closed at teardown."""
    from .session import BitnetSession

    with BitnetSession.create(bitnet_model) as session:
        yield session


@pytest.fixture
def bitnet_counters() -> Counters:
    """Native live counters: ``.baseline``, ``.current()``, ``.delta()``."""
    return Counters()


# ---- xdist: seed and state dir to workers, crashes named -----------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    plugin = node.config.stash[_PLUGIN]
    if plugin.state_dir is None:
        plugin.state_dir = tempfile.mkdtemp(prefix="bitnet-xdist-")
    node.workerinput["bitnet_seed"] = plugin.seed
    node.workerinput["bitnet_state_dir"] = plugin.state_dir


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    node = getattr(report, "node", None)
    plugin = node.config.stash.get(_PLUGIN, None) if node is not None else None
    if node is None or plugin is None:
        return
    specs: list[list[Any]] = []
    if plugin.state_dir is not None:
        note = Path(plugin.state_dir, node.gateway.id)
        try:
            data = json.loads(note.read_text())
            if data.get("nodeid") == crashitem:
                specs = data["specs"]
        except (OSError, ValueError):
            pass
    if specs:
        armed = "; ".join(f"{spec!r} (seed {seed})" for spec, seed in specs)
        line = f"{crashitem} crashed the worker with fault spec {armed} armed"
        repro = f"reproduce: pytest '{crashitem}' --bitnet-inject='{specs[0][0]}' --bitnet-seed={specs[0][1]}"
    else:
        line = f"{crashitem} crashed the worker with no fault armed"
        repro = f"reproduce: pytest '{crashitem}'"
    report.longrepr = f"{report.longrepr}\nbitnet: {line}\nbitnet: {repro}"
    report.bitnet = {"crash": f"{line}; {repro}"}  # type: ignore[attr-defined]
