"""The error taxonomy: one class per native code, each with an ErrorContext.

Every message says what happened, why and how to fix it; the native text
is carried as is and the context (operation, phase, parameters, native
code, time, thread) travels on ``error.context``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

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
    "BackendCrashed",
    "ErrorContext",
    "code_classes",
    "add_hint",
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
    """Freeing a native object failed; it is still alive.

    ``session`` is the BitnetSession whose close() failed (None when the
    error came from elsewhere): still open and counted, retry its close().
    """

    session: Any = None


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


class BackendCrashed(BitnetError):
    """The worker process of an isolated session died during a call.

    Raised only for ``isolation="process"`` sessions and calls
    (pytest_bitnet.bridge.isolation): the library crashed (a signal) or
    exited inside the worker; the calling process is unharmed and the
    session is closed.  ``signal`` / ``signal_name`` name the signal (None
    for an exit), ``exit_code`` the exit status (None for a signal),
    ``operation`` / ``phase`` what the worker was doing, ``stderr_tail``
    the last lines the worker wrote to stderr.  No native code maps to it:
    the native side cannot report its own death.
    """

    def __init__(
        self, message: str, context: ErrorContext | None = None, *, signal: int | None = None,
        signal_name: str | None = None, exit_code: int | None = None, stderr_tail: str = "",
    ) -> None:
        super().__init__(message, context)
        self.signal = signal
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.operation = self.context.operation
        self.phase = self.context.phase
        self.stderr_tail = stderr_tail


def code_classes() -> Mapping[int, type[BitnetError]]:
    """Native code -> class, as native/include/bitnet_errors.def says (loads the bridge)."""
    # The codes and the class of each are defined once, natively; the
    # glue reads that table by class name.
    from ._native import CODE_CLASSES

    return CODE_CLASSES


def error_for_code(code: int) -> type[BitnetError]:
    """The exception class for a native code (InternalError if unknown)."""
    return code_classes().get(code, InternalError)


# ---- hints: the Python side's words in native messages ------------------------------------


@dataclass(frozen=True)
class _Hint:
    fragment: str
    replace: str | None
    append: str | None


_HINTS: list[_Hint] = []


def add_hint(fragment: str, *, replace: str | None = None, append: str | None = None) -> None:
    """Puts the Python side's words into native messages that contain `fragment`.

    The native bridge knows nothing of Python: its messages name the C API
    (``bitnet_bridge_set_call_timeout``).  A layer above that knows what its
    users call things registers, once, either a ``replace`` for the
    fragment or text to ``append`` to the message; raised errors carry the
    result (``ErrorContext.native_message`` keeps the native text).
    """
    if not fragment or (replace is None) == (append is None):
        raise ValueError("add_hint needs a fragment and exactly one of replace= or append=")
    _HINTS.append(_Hint(fragment, replace, append))


def apply_hints(message: str) -> str:
    """The message with every registered hint applied."""
    for h in _HINTS:
        if h.fragment in message:
            message = message.replace(h.fragment, h.replace) if h.replace is not None else f"{message}; {h.append}"
    return message


# What the C API's names are in the Python API's words.
add_hint("raise the timeout (bitnet_bridge_set_call_timeout)", replace="raise the timeout (timeout=..., BITNET_CPP_TIMEOUT)")
add_hint("give the call a timeout (bitnet_bridge_set_call_timeout)", replace="give the call a finite timeout (timeout=..., BITNET_CPP_TIMEOUT)")
add_hint("check the backend option (bitnet_bridge_options.backend)", replace="check the backend= argument")
add_hint("bitnet_bridge_options.library_path", replace="library_path=")
add_hint("evaluate on the CPU (bitnet_cpp_eval_with_context)", replace="use evaluate() on the CPU")
add_hint("or load it with a bridge of its ABI version", replace="or install the pytest-bitnet release that matches it")
add_hint("repeat both passes, query then fill", replace="call again once the file is stable (each call runs both passes)")
add_hint("the llama.cpp adapter '", append="remove it to have it rebuilt, or reinstall llama-cpp-python")
