"""Where the bridge's defaults come from: the environment, read here only,
and run-wide values a harness sets with ``configure()``.

Environment variables are user input.  The Python layers read them in this
module and pass values on; a harness (the pytest plugin) changes defaults
through :func:`configure`, never by writing ``os.environ``.  The native
bridge reads the variables of its own C API (``BITNET_BACKEND``,
``BITNET_FALLBACK``, ``BITNET_CPP_LIBDIR``, ...) when a call passes no
explicit option, which is why a backend set here travels as an option.

Precedence of a call's timeout: the call's ``timeout=``, else the session's,
else :func:`configure`'s, else ``BITNET_CPP_TIMEOUT``, else 30 s.  Of its
backend: the call's ``backend=``, else :func:`configure`'s, else the native
bridge's (``BITNET_BACKEND``, else ``reference``).  Of a session's isolation:
the call's ``isolation=``, else :func:`configure`'s, else ``BITNET_ISOLATION``,
else ``"none"``.
"""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass, replace
from typing import Any, Final

from .validate import backend_arg, isolation_arg, parse_timeout

__all__ = [
    "DEFAULT_TIMEOUT", "ENV_ISOLATION", "ENV_TIMEOUT", "ENV_VARS", "Defaults", "configure", "current", "default_isolation",
    "default_timeout", "environment", "isolation_for", "timeout_option", "worker_environment",
]  # fmt: skip

DEFAULT_TIMEOUT: Final = 30.0  # seconds, when nothing else says
ENV_TIMEOUT: Final = "BITNET_CPP_TIMEOUT"
ENV_ISOLATION: Final = "BITNET_ISOLATION"

#: Every variable the project reads (here or natively), as diagnostics lists them.
ENV_VARS: Final = (
    "BITNET_BACKEND",
    "BITNET_CPP_LIBDIR",
    "BITNET_CPP_DIR",
    "BITNET_FORCE_LLAMA_FALLBACK",
    "BITNET_FALLBACK",
    "BITNET_CPP_TIMEOUT",
    "BITNET_ISOLATION",
    "BITNET_CPP_LOG_LEVEL",
    "BITNET_NUM_THREADS",
    "BITNET_INJECT",
    "BITNET_INJECT_SEED",
    "LD_LIBRARY_PATH",
    "LLAMA_CPP_LIB_PATH",
    "BITNET_LLAMA_LIB_PATH",
    "BITNET_LLAMA_ADAPTER_DIR",
    "BITNET_LLAMA_KV",
)


@dataclass(frozen=True)
class Defaults:
    """Run-wide defaults set by a harness; None: not set (fall through)."""

    backend: str | None = None
    timeout: float | None = None
    isolation: str | None = None


_lock = threading.Lock()
_current = Defaults()
_KEEP: Final = object()


def configure(*, backend: object = _KEEP, timeout: object = _KEEP, isolation: object = _KEEP) -> Defaults:
    """Sets run-wide defaults (None clears one); returns the previous ones.

    ``backend``: a name of validate.BACKENDS; ``timeout``: as
    validate.parse_timeout takes it; ``isolation``: one of validate.ISOLATIONS.  Restore with ``configure(**asdict(previous))``
    or :func:`restore`.
    """
    global _current
    with _lock:
        previous = _current
        changes: dict[str, object] = {}
        if backend is not _KEEP:
            changes["backend"] = None if backend is None else backend_arg(backend)
        if timeout is not _KEEP:
            changes["timeout"] = None if timeout is None else parse_timeout(timeout, "settings.configure(timeout=...)", text=True)
        if isolation is not _KEEP:
            changes["isolation"] = None if isolation is None else isolation_arg(isolation, "settings.configure(isolation=...)")
        _current = replace(_current, **changes)  # type: ignore[arg-type]
        return previous


def restore(previous: Defaults) -> None:
    """Puts back what :func:`configure` returned."""
    global _current
    with _lock:
        _current = previous


def current() -> Defaults:
    return _current


def default_timeout() -> float:
    """The deadline of a call that names none: configure()'s, else
    BITNET_CPP_TIMEOUT, else DEFAULT_TIMEOUT."""
    if _current.timeout is not None:
        return _current.timeout
    raw = os.environ.get(ENV_TIMEOUT, "")
    return parse_timeout(raw, ENV_TIMEOUT, text=True) if raw.strip() else DEFAULT_TIMEOUT


def default_isolation() -> str:
    """Where a session that names no isolation runs: configure()'s, else
    BITNET_ISOLATION, else "none"."""
    if _current.isolation is not None:
        return _current.isolation
    raw = os.environ.get(ENV_ISOLATION, "")
    return isolation_arg(raw, ENV_ISOLATION) if raw.strip() else "none"


def isolation_for(isolation: object) -> str:
    """A call's isolation= (None: :func:`default_isolation`), validated."""
    return default_isolation() if isolation is None else isolation_arg(isolation)


def _cli_timeout(text: str) -> float:
    try:
        return parse_timeout(text, "--timeout", text=True)
    except ValueError as exc:  # InvalidArgument: argparse words it as a usage error (exit 2)
        raise argparse.ArgumentTypeError(str(exc)) from None


def timeout_option(what: str) -> dict[str, Any]:
    """``add_argument("--timeout", **timeout_option(...))`` for a command line
    tool: parsed by validate.parse_timeout, applied with ``configure(timeout=...)``
    (so it is the default of every native call that names none), help written once."""
    return {
        "type": _cli_timeout, "default": None, "metavar": "SECONDS",
        "help": f"default deadline of every native call {what}, in seconds ('none': no deadline); "
                f"default: ${ENV_TIMEOUT}, else {DEFAULT_TIMEOUT:g} s",
    }  # fmt: skip


def worker_environment() -> dict[str, str]:
    """The environment an isolated session's worker starts with: this
    process's, without BITNET_ISOLATION (the worker serves its session in
    process; it must not isolate again)."""
    return {k: v for k, v in os.environ.items() if k != ENV_ISOLATION}


def environment() -> dict[str, str | None]:
    """The value of every variable in ENV_VARS (None: unset)."""
    return {k: os.environ.get(k) for k in ENV_VARS}
