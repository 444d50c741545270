"""pytest-bitnet: a native BitNet bridge with fault injection, and its pytest plugin.

    import pytest_bitnet as bn
    path = bn.models.make_tiny_model("tiny.gguf", arch="bitnet", seed=0)
    with bn.BitnetSession.create(path, n_ctx=512) as s:
        logits = s.evaluate(s.tokenize("What is 2+2?"))

Exports are resolved on first use (PEP 562): importing the package -- as
pytest does for the plugin -- loads neither the native bridge nor numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy table below provides, for type checkers
    from . import errors, models
    from ._diagnostics import diagnostics
    from .errors import BitnetError, ErrorContext
    from .session import BitnetSession, Capabilities, capabilities, evaluate, live_counters, tokenize

# public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "BitnetSession": ("session", "BitnetSession"),
    "Capabilities": ("session", "Capabilities"),
    "capabilities": ("session", "capabilities"),
    "evaluate": ("session", "evaluate"),
    "live_counters": ("session", "live_counters"),
    "tokenize": ("session", "tokenize"),
    "BitnetError": ("errors", "BitnetError"),
    "ErrorContext": ("errors", "ErrorContext"),
    "diagnostics": ("_diagnostics", "diagnostics"),
    "errors": ("errors", None),
    "models": ("models", None),
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
