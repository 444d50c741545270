"""The error taxonomy: one class per native code, each with an ErrorContext.

Every message says what happened, why and how to fix it; the native text
is carried as is and the context (operation, phase, parameters, native
code, time, thread) travels on ``error.context``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final, Mapping

__all__ = [
    "BitnetError",
    "CppNotAvailable",
    "LibraryNotFound",
    "SymbolNotFound",
    "AbiMismatch",
    "OptionalSymbolMissing",
    "ModelLoadError",
    "InferenceError",
    "ComparisonError",
    "OutOfMemory",
    "ContextOverflow",
    "ThreadSafetyError",
    "CleanupFailed",
    "OperationTimeout",
    "InvalidHandle",
    "InvalidArgument",
    "Unsupported",
    "InternalError",
    "ErrorContext",
    "error_for_code",
]


@dataclass(frozen=True)
class ErrorContext:
    """Where an error happened: enough to reproduce it."""

    operation: str
    phase: str | None = None  # "QUERY PHASE" / "FILL PHASE" for two-pass calls
    parameters: Mapping[str, Any] = field(default_factory=dict)
    native_code: int | None = None
    native_message: str | None = None
    time: float = field(default_factory=time.time)
    thread: str = field(default_factory=lambda: threading.current_thread().name)


class BitnetError(Exception):
    """Base class of every error raised by pytest_bitnet."""

    def __init__(self, message: str, context: ErrorContext | None = None) -> None:
        super().__init__(message)
        self.context = context if context is not None else ErrorContext(operation="unknown")


class CppNotAvailable(BitnetError):
    """No backend can serve the call (stub mode, or every tier missing)."""


class LibraryNotFound(BitnetError):
    """A native library could not be found or loaded."""


class AbiMismatch(BitnetError):
    """A library was built for another version of the socket ABI."""


class SymbolNotFound(BitnetError):
    """A required symbol is missing from a native library."""


class OptionalSymbolMissing(Warning):
    """An optional symbol is missing; a fallback serves the call instead."""


class ModelLoadError(BitnetError):
    """The model file is missing, malformed or unsupported."""


class InferenceError(BitnetError):
    """Tokenize or evaluate failed."""


class ComparisonError(BitnetError):
    """Two backends disagree beyond tolerance."""


class OutOfMemory(BitnetError, MemoryError):
    """An allocation failed or was refused as too large."""


class ContextOverflow(InferenceError):
    """More tokens than the context holds."""


class ThreadSafetyError(BitnetError):
    """A handle was used by two threads at once."""


class CleanupFailed(BitnetError):
    """Freeing a native object failed; it is still alive."""


class OperationTimeout(BitnetError, TimeoutError):
    """The deadline passed or the operation was cancelled."""

    def __init__(self, message: str, context: ErrorContext | None = None, duration: float | None = None) -> None:
        super().__init__(message, context)
        self.duration = duration


class InvalidHandle(InferenceError):
    """A closed, freed or foreign handle was used."""


class InvalidArgument(BitnetError, ValueError):
    """An argument was rejected (by Python validation or natively)."""


class Unsupported(BitnetError):
    """The capability is not built in or not present on this machine."""


class InternalError(BitnetError):
    """An invariant did not hold: a bug, please report it."""


# Native code -> class.  The codes are defined once, in native/include/bitnet.h;
# pytest_bitnet._native checks at import that this table covers all of them.
CODE_CLASSES: Final[Mapping[int, type[BitnetError]]] = {
    -1: InvalidArgument,
    -2: ModelLoadError,
    -3: ModelLoadError,
    -4: InferenceError,
    -5: OutOfMemory,
    -6: ThreadSafetyError,
    -7: InvalidHandle,
    -8: ContextOverflow,
    -9: Unsupported,
    -10: InternalError,
    -11: OperationTimeout,
    -12: SymbolNotFound,
    -13: CleanupFailed,
    -14: CppNotAvailable,
    -15: LibraryNotFound,
    -16: AbiMismatch,
}


def error_for_code(code: int) -> type[BitnetError]:
    """The exception class for a native code (InternalError if unknown)."""
    return CODE_CLASSES.get(code, InternalError)
