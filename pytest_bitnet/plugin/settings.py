"""The plugin's settings: one table of options, one validator each, one resolver.

Each setting has a command-line flag, an ini key (help written once, shared
by both), optionally an environment variable, and a validator that names
where a bad value came from.  Precedence, later wins: ini key <
environment < command line (< marker, for the per-test ones).

Validators use the parsers of the layers below (the bridge's timeout and
backend parsers, fault_inject's spec validator and seed parser), so a value
means the same wherever it is given.  Importing this module loads nothing
native; validating a fault spec does (it needs the point registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Final, Literal

import pytest

from pytest_bitnet.bridge import errors as bridge_errors
from pytest_bitnet.bridge.validate import BACKENDS, ISOLATIONS, backend_arg, isolation_arg, parse_timeout

if TYPE_CHECKING:
    from fault_inject import Resolved

__all__ = ["LEAK_MODES", "MARKERS", "OPTIONS", "Settings", "add_options", "check_seed", "check_spec", "check_timeout", "rerun_flags", "resolve", "resolve_early"]

LEAK_MODES: Final = ("strict", "warn", "off")


@dataclass(frozen=True)
class Option:
    """One setting: its command-line flag, ini key, environment variable and help."""

    name: str  # attribute of Settings
    flag: str  # command-line option
    ini: str  # ini key
    env: str | None  # environment variable, if any
    help: str  # shared by the option and the ini key
    kind: Literal["string", "bool"] = "string"  # ini type
    metavar: str = "VALUE"  # in --help

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: Final = (
    Option("inject", "--bitnet-inject", "bitnet_inject", "BITNET_INJECT",
           "fault spec armed for every test, e.g. 'tokenize.fill=fail' or 'alloc=2*off->oom' (grammar: fault_inject.spec); "
           "'none' or an empty value: no spec (cancels one from the ini file or BITNET_INJECT)", metavar="SPEC"),
    Option("seed", "--bitnet-seed", "bitnet_seed", "BITNET_INJECT_SEED",
           "seed of the fault spec's probability draws (default: random, printed in the header)", metavar="N"),
    Option("leak_check", "--bitnet-leak-check", "bitnet_leak_check", None,
           "native leak check after each test: strict (fail the test; default), warn (report only), off", metavar="MODE"),
    Option("timeout", "--bitnet-timeout", "bitnet_timeout", None,
           "default deadline in seconds for native calls in each test; 'none' for no deadline, 0 for one already past",
           metavar="SECONDS"),
    Option("backend", "--bitnet-backend", "bitnet_backend", "BITNET_BACKEND",
           "native backend for the run: " + " | ".join(BACKENDS), metavar="NAME"),
    Option("isolation", "--bitnet-isolation", "bitnet_isolation", "BITNET_ISOLATION",
           "where every session of the run runs its library: " + " | ".join(ISOLATIONS) + " ('process': in a worker "
           "process per session, so a hang ends at the deadline and a crash fails one test)", metavar="MODE"),
    Option("diagnostics", "--bitnet-diagnostics", "bitnet_diagnostics", None,
           "print the native library diagnostics (library, symbols, fallbacks) in the header", kind="bool"),
    Option("interpose", "--bitnet-interpose", "bitnet_interpose", "BITNET_INTERPOSE",
           "interpose on an unmodified app's native library, before conftest.py files are imported: 'llama' "
           "(llama-cpp-python loads an interposing libllama that forwards every call to the real one; fault points "
           "and counters named by the C function, e.g. llama_decode, llama_*); 'none' or an empty value: off",
           metavar="KIND"),
)  # fmt: skip

#: marker name -> description (listed by --markers)
MARKERS: Final = {
    "bitnet_inject": "bitnet_inject(spec, thread=False, seed=None): arm the fault spec for this test; "
    "the narrower scope wins for the points it names, the others stay armed: --bitnet-inject < module marker "
    "< class marker < function marker (of stacked ones, the one nearest the def) < the bitnet_inject fixture; "
    "thread=True: only the test's thread hits the points; seed: instead of the test's own (derived from --bitnet-seed "
    "and the node id)",
    "bitnet_allow_leaks": "bitnet_allow_leaks: do not leak-check this test's native objects",
    "bitnet_timeout": "bitnet_timeout(seconds): default deadline for native calls in this test (replaces --bitnet-timeout; "
    "None or math.inf: none, refused with a hang armed)",
}


@dataclass(frozen=True)
class Settings:
    """Resolved settings; *_source names where each came from."""

    inject: Resolved | None = None  # validated once; armed per test as it is
    inject_source: str = "default"
    seed: int | None = None
    seed_source: str = "default"
    leak_check: str = "strict"
    leak_check_source: str = "default"
    timeout: float | None = None  # None: leave the bridge's default alone
    timeout_source: str = "default"
    backend: str | None = None
    backend_source: str = "default"
    isolation: str | None = None  # None: leave the bridge's default alone
    isolation_source: str = "default"
    diagnostics: bool = False
    diagnostics_source: str = "default"
    interpose: str | None = None  # a kind of fault_inject.interpose.KINDS; None: off
    interpose_source: str = "default"


def rerun_flags(s: Settings) -> list[str]:
    """Flags, besides the spec and the seed, without which a rerun could not
    arm what this run armed: the interposition registers the llama_* points;
    under isolation a `crash` ends a worker, without it the run."""
    flags = [f"--bitnet-interpose={s.interpose}"] if s.interpose is not None else []
    if s.isolation == "process":
        flags.append("--bitnet-isolation=process")
    return flags


def usage(message: str) -> pytest.UsageError:
    return pytest.UsageError(f"bitnet: {message}")


def import_fault_inject() -> Any:
    """fault_inject, imported without letting it arm BITNET_INJECT run-wide.

    Under pytest the plugin arms BITNET_INJECT per test (validated as a
    setting); fault_inject's own import-time arming would arm it for the
    whole run, or crash the run on a bad value (an internal error instead
    of the usage error naming BITNET_INJECT).  Every import of fault_inject
    by the plugin goes through here.
    """
    import os
    import sys

    module = sys.modules.get("fault_inject")
    if module is None:
        saved = os.environ.pop("BITNET_INJECT", None)
        try:
            import fault_inject as module
        finally:
            if saved is not None:
                os.environ["BITNET_INJECT"] = saved
    return module


def check_spec(value: str, source: str) -> Resolved:
    """The spec, validated against the registry; UsageError otherwise."""
    import_fault_inject()
    from fault_inject import FaultSpecError, UnknownPoint, compiled_in, validate
    from fault_inject.registry import NOT_COMPILED

    if not compiled_in():
        raise usage(f"fault spec {value!r} from {source}: {NOT_COMPILED}")
    try:
        return validate(value, source=source)
    except (FaultSpecError, UnknownPoint) as exc:
        text = str(exc)
        if _names_interposed_points(value):  # unknown, since unregistered (a FaultSpecError saying so)
            text += f"\n{INTERPOSED_POINTS_HINT}"  # after the spec and its caret
        raise usage(text if source in text else f"invalid fault spec from {source}: {text}") from None


#: Said when a spec names a llama_* point that is not registered (interposition off).
INTERPOSED_POINTS_HINT: Final = (
    "the llama_* points exist only while llama-cpp-python's libllama is interposed: "
    "--bitnet-interpose=llama (ini bitnet_interpose, env BITNET_INTERPOSE)"
)


def _names_interposed_points(value: str) -> bool:
    """The spec names a llama_* point while no interposition is active (its points unregistered)."""
    import sys

    module = sys.modules.get("fault_inject.interpose")
    if module is not None and getattr(module, "active", lambda: None)() is not None:
        return False  # registered: the name is wrong, not the setting
    return any(entry.split("=", 1)[0].strip().startswith("llama_") for entry in str(value).split(";"))


#: --bitnet-inject=none (and an empty value): no run-wide spec, whatever the ini file or BITNET_INJECT say
NO_SPEC: Final = ("none", "")


def check_run_spec(value: str, source: str) -> Resolved | None:
    """The run-wide spec: check_spec's, or None for 'none' or an empty value."""
    if str(value).strip().lower() in NO_SPEC:
        return None
    return check_spec(value, source)


def check_seed(value: str, source: str) -> int:
    import_fault_inject()
    from fault_inject import parse_seed

    try:
        return parse_seed(str(value), source)
    except ValueError as exc:
        raise usage(str(exc)) from None


def check_leak_check(value: str, source: str) -> str:
    mode = str(value).strip().lower()
    if mode not in LEAK_MODES:
        raise usage(f"invalid leak check {value!r} from {source}: expected {' | '.join(LEAK_MODES)}")
    return mode


def check_timeout(value: object, source: str) -> float:
    try:
        return parse_timeout(value, source, text=True)
    except bridge_errors.InvalidArgument as exc:
        raise usage(str(exc)) from None


def check_backend(value: str, source: str) -> str:
    try:
        return backend_arg(value, source)
    except bridge_errors.InvalidArgument:
        raise usage(f"invalid backend {value!r} from {source}: expected {' | '.join(BACKENDS)}") from None


def check_isolation(value: str, source: str) -> str:
    try:
        return isolation_arg(value, source)
    except bridge_errors.InvalidArgument:
        raise usage(f"invalid isolation {value!r} from {source}: expected {' | '.join(ISOLATIONS)}") from None


_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off", "")


def check_bool(value: object, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise usage(f"invalid value {value!r} from {source}: expected one of {', '.join(_TRUE)} or {', '.join(x for x in _FALSE if x)}")


#: --bitnet-interpose=none (and an empty value): off, whatever the ini file or BITNET_INTERPOSE say
#: (fault_inject.env reads BITNET_INTERPOSE with the same two words)
NO_INTERPOSE: Final = ("none", "")


def check_interpose(value: str, source: str) -> str | None:
    """The kind to interpose on, or None for off; UsageError otherwise.

    Imports nothing for 'none'; a kind is checked against
    fault_inject.interpose.KINDS (the one list of what can be interposed).
    """
    kind = str(value).strip().lower()
    if kind in NO_INTERPOSE:
        return None
    import_fault_inject()
    from fault_inject.interpose import KINDS

    if kind not in KINDS:
        raise usage(f"invalid interpose kind {value!r} from {source}: expected {' | '.join(KINDS)}, or none")
    return kind


_VALIDATORS: Final[dict[str, Callable[[Any, str], Any]]] = {
    "inject": check_run_spec,
    "seed": check_seed,
    "leak_check": check_leak_check,
    "timeout": check_timeout,
    "backend": check_backend,
    "isolation": check_isolation,
    "diagnostics": check_bool,
    "interpose": check_interpose,
}


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("bitnet", "native BitNet bridge: fault injection and leak checks")
    for opt in OPTIONS:
        if opt.kind == "bool":
            group.addoption(opt.flag, action="store_true", default=None, dest=opt.dest, help=opt.help)
        else:
            group.addoption(opt.flag, default=None, dest=opt.dest, metavar=opt.metavar, help=opt.help)
        # a bool ini key is read as text, so check_bool can name a bad value
        parser.addini(opt.ini, opt.help, type="string", default="")


def _raw(config: pytest.Config, opt: Option, cli: Any) -> tuple[Any, str]:
    """The raw value of one setting and where it came from (None: not set)."""
    import os

    raw, source = cli, opt.flag
    if raw is None and opt.env and os.environ.get(opt.env, "").strip():
        raw, source = os.environ[opt.env], opt.env
    if raw is None:
        ini = config.getini(opt.ini)
        if ini not in ("", None):
            raw, source = ini, f"ini key {opt.ini}" + (f" in {config.inipath}" if config.inipath else "")
    return raw, source


def resolve(config: pytest.Config) -> Settings:
    """Reads every setting from command line, environment, then ini; validates each."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw, source = _raw(config, opt, config.getoption(opt.dest))
        if raw is None:
            continue
        values[opt.name] = _VALIDATORS[opt.name](raw, source)
        values[f"{opt.name}_source"] = source
    return Settings(**values)


def resolve_early(config: pytest.Config, name: str) -> tuple[Any, str]:
    """One setting, validated, before the command line is fully parsed
    (``pytest_load_initial_conftests``): (value, source); (None, "default") when not set.

    Reads the same places in the same order as :func:`resolve`, the command
    line from ``config.known_args_namespace`` (all that exists that early).
    """
    opt = next(o for o in OPTIONS if o.name == name)
    raw, source = _raw(config, opt, getattr(config.known_args_namespace, opt.dest, None))
    if raw is None:
        return None, "default"
    return _VALIDATORS[name](raw, source), source
