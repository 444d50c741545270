"""pytest-bitnet: a native BitNet bridge with fault injection, and its pytest plugin.

    import pytest_bitnet as bn
    path = bn.models.make_tiny_model("tiny.gguf", arch="bitnet", seed=0)
    with bn.BitnetSession.create(path, n_ctx=512) as s:
        logits = s.evaluate(s.tokenize("What is 2+2?"))
"""

from __future__ import annotations

from . import errors, models
from .diagnostics import diagnostics
from .errors import BitnetError, ErrorContext
from .session import BitnetSession, Capabilities, capabilities, evaluate, live_counters, tokenize

__all__ = [
    "BitnetSession",
    "BitnetError",
    "Capabilities",
    "ErrorContext",
    "capabilities",
    "diagnostics",
    "errors",
    "evaluate",
    "live_counters",
    "models",
    "tokenize",
]
__version__ = "0.1.0"

# A program run with BITNET_INJECT set gets its faults armed as soon as the
# bridge is imported, without importing fault_inject itself.
import os as _os

if _os.environ.get("BITNET_INJECT"):
    import fault_inject  # noqa: F401  (arms BITNET_INJECT on import)
