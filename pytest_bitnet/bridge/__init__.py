"""The Python API over the native bridge: the lowest Python layer.

Public modules (what :mod:`fault_inject`, the plugin and users may import):

``session``       BitnetSession
``percall``       tokenize(), evaluate(): load, work, free on every call
``capabilities``  Capabilities, capabilities()
``counters``      the live counters: names, live_counters(), delta(), creation stacks
``errors``        the error taxonomy
``validate``      argument parsers shared by everything above (timeouts, backends, ...)
``settings``      defaults: the environment, read once, and configure() for a harness
``native_log``    native log lines into ``logging``; the native threshold
``diagnostics``   what the bridge would load and why
``deadlines``     whether a session's calls can be bounded in process; who is told when not
``faults``        the native fault registry and engine, in Python values
``abi``           the C ABI itself, for tests below the Python API
``llama``         finding libllama and building the llama.cpp adapter

Private: ``_native`` (the cffi glue), ``_calls`` (deadlines, two-pass
calls), ``_build`` (the cffi build script), ``_bridge`` (the compiled
module).  Nothing here imports pytest or fault_inject.  Importing this
package loads nothing native: the names below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .capabilities import Capabilities, capabilities
    from .counters import live_counters
    from .diagnostics import diagnostics
    from .errors import BitnetError, ErrorContext
    from .percall import detokenize, evaluate, tokenize
    from .session import BitnetSession

_EXPORTS: dict[str, str] = {
    "BitnetSession": "session",
    "tokenize": "percall",
    "evaluate": "percall",
    "detokenize": "percall",
    "Capabilities": "capabilities",
    "capabilities": "capabilities",
    "live_counters": "counters",
    "diagnostics": "diagnostics",
    "BitnetError": "errors",
    "ErrorContext": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
