"""pytest-bitnet: a native BitNet bridge with fault injection, and its pytest plugin.

::

    import pytest_bitnet as bn
    path = bn.models.make_tiny_model("tiny.gguf", arch="bitnet", seed=0)
    with bn.BitnetSession.create(path, n_ctx=512) as s:
        logits = s.evaluate(s.tokenize("What is 2+2?"))

The package is three layers, each importing only the ones below it:
``pytest_bitnet.bridge`` (the Python API over the native bridge),
``pytest_bitnet.testing`` (test tooling: models, malformed files,
crossval) and ``pytest_bitnet.plugin`` (the pytest plugin); ``fault_inject``
sits between the bridge and the plugin.  This module is the public facade.

Exports are resolved on first use (PEP 562): importing the package -- as
pytest does for the plugin -- loads neither the native bridge nor numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy table below provides, for type checkers
    from .bridge import errors
    from .bridge.capabilities import Capabilities, capabilities
    from .bridge.counters import live_counters
    from .bridge.diagnostics import diagnostics
    from .bridge.errors import BitnetError, ErrorContext
    from .bridge.percall import detokenize, evaluate, tokenize
    from .bridge.session import BitnetSession
    from .testing import models

# public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "BitnetSession": ("bridge.session", "BitnetSession"),
    "Capabilities": ("bridge.capabilities", "Capabilities"),
    "capabilities": ("bridge.capabilities", "capabilities"),
    "evaluate": ("bridge.percall", "evaluate"),
    "detokenize": ("bridge.percall", "detokenize"),
    "live_counters": ("bridge.counters", "live_counters"),
    "tokenize": ("bridge.percall", "tokenize"),
    "BitnetError": ("bridge.errors", "BitnetError"),
    "ErrorContext": ("bridge.errors", "ErrorContext"),
    "diagnostics": ("bridge.diagnostics", "diagnostics"),
    "errors": ("bridge.errors", None),
    "models": ("testing.models", None),
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
