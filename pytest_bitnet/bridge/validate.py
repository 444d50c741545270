"""Argument validation: every value a user passes is checked here, before
native code sees it, and refused with an InvalidArgument that names it.

One parser per kind of value, shared by the API, the environment and the
pytest plugin, so a value means the same wherever it comes from:

* a **timeout** is seconds >= 0; ``None`` means "use the default";
  ``math.inf``, ``"none"``, ``"inf"`` mean no deadline; **0 means the
  deadline has already passed** (the call times out at its first step
  point, as ``threading.Lock.acquire(timeout=0)`` does not wait), which is
  how tests make a timeout happen on purpose.
* a **backend** is one of :data:`BACKENDS`.
* an **isolation** is one of :data:`ISOLATIONS`.

Nothing here loads the native bridge, and only tokens_arg needs numpy
(imported there: the plugin parses its settings with this module in runs
that never touch numpy).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import TYPE_CHECKING, Any, Final, Iterable

from . import errors

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "BACKENDS",
    "ISOLATIONS",
    "NO_DEADLINE_WORDS",
    "backend_arg",
    "int_arg",
    "isolation_arg",
    "parse_timeout",
    "path_arg",
    "prompt_arg",
    "tokens_arg",
]

#: The backends, in the order help texts list them.  The native bridge
#: validates the same names (native/include/bitnet_backends.def); the
#: bridge checks at import that the two lists agree.
BACKENDS: Final = ("reference", "dlopen", "llama", "stub")

#: Where a session's library runs: "none" in the calling process, "process"
#: in a worker process the bridge owns (pytest_bitnet.bridge.isolation).
ISOLATIONS: Final = ("none", "process")

#: Words a timeout given as text may use for "no deadline".
NO_DEADLINE_WORDS: Final = ("none", "inf", "infinity")


def _invalid(message: str, operation: str = "validate", **parameters: Any) -> errors.InvalidArgument:
    return errors.InvalidArgument(message, errors.ErrorContext(operation=operation, parameters=parameters))


def path_arg(model_path: str | os.PathLike[str]) -> bytes:
    """The model path as bytes for the C API."""
    if not isinstance(model_path, (str, os.PathLike)):
        raise _invalid(f"model_path must be a str or os.PathLike, got {type(model_path).__name__}", model_path=repr(model_path))
    raw = os.fsencode(model_path)
    if b"\0" in raw:
        raise _invalid(f"model_path {os.fspath(model_path)!r} contains a NUL byte")
    return raw


def int_arg(operation: str, name: str, value: Any, *, minimum: int, maximum: int = 2**31 - 1) -> int:
    """An int in minimum..maximum (bools refused: True is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _invalid(f"{operation}: {name} must be an int, got {type(value).__name__}; pass a whole number",
                       operation, **{name: repr(value)})
    if not minimum <= int(value) <= maximum:
        raise _invalid(f"{operation}: {name}={int(value)} is out of range: expected {minimum}..{maximum}; pass a value in that range",
                       operation, **{name: int(value)})
    return int(value)


def prompt_arg(prompt: str | bytes) -> bytes:
    """The prompt as NUL-free UTF-8 bytes."""
    if isinstance(prompt, str):
        try:
            raw = prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _invalid(f"prompt is not valid Unicode text: {exc.reason} at index {exc.start}; "
                           "remove lone surrogates (for example decode bytes with errors='replace')") from exc
    elif isinstance(prompt, (bytes, bytearray)):
        raw = bytes(prompt)
    else:
        raise _invalid(f"prompt must be str or bytes, got {type(prompt).__name__}")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise _invalid(f"prompt contains a NUL byte at byte offset {nul}: the C API takes NUL-terminated "
                       "text; strip or replace NUL characters", offset=nul)
    return raw


def tokens_arg(tokens: npt.ArrayLike | Iterable[int]) -> npt.NDArray[np.int32]:
    """A contiguous int32 1-D array of the token ids."""
    import numpy as np

    try:
        arr = np.asarray(tokens if not isinstance(tokens, (str, bytes)) else None)
    except (ValueError, TypeError, OverflowError) as exc:
        # numpy refuses ragged nested lists and some objects outright; the
        # caller gets the same InvalidArgument as any other non-1-D input
        raise _invalid(f"tokens must be a 1-D sequence of integer ids, got {type(tokens).__name__} "
                       f"that numpy cannot make an array of ({exc})") from exc
    if arr.dtype == object or arr.ndim != 1:
        raise _invalid(f"tokens must be a 1-D sequence of integer ids, got {type(tokens).__name__}"
                       + (f" with shape {arr.shape}" if arr.dtype != object else ""))
    if arr.size == 0:
        arr = arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise _invalid(f"tokens must have an integer dtype, got {arr.dtype}; token ids are int32", dtype=str(arr.dtype))
    if arr.dtype != np.int32:
        info = np.iinfo(np.int32)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            bad = int(np.flatnonzero((arr < info.min) | (arr > info.max))[0])
            raise errors.InferenceError(
                f"invalid token id {int(arr[bad])} at position {bad}: does not fit in int32",
                errors.ErrorContext(operation="validate", parameters={"position": bad}),
            )
    return np.ascontiguousarray(arr, dtype=np.int32)


def parse_timeout(value: Any, source: str = "timeout", *, text: bool = False) -> float:
    """Seconds >= 0 (math.inf: no deadline) from a number, or a text when ``text``.

    ``source`` names where the value came from ("timeout",
    "BITNET_CPP_TIMEOUT", "ini key bitnet_timeout", ...) for the message.
    Texts ("0.5", "none") come from the environment, ini files and command
    lines; the Python API takes numbers only.  See the module docstring for
    what 0 and "none" mean.
    """
    original = value
    expected = "expected seconds >= 0, or 'none' (math.inf) for no deadline"
    if text and isinstance(value, str):
        text = value.strip().lower()
        if text in NO_DEADLINE_WORDS:
            return math.inf
        try:
            value = float(text)
        except ValueError:
            raise _invalid(f"invalid timeout {original!r} from {source}: {expected}", **{source: original}) from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(f"{source} must be a number of seconds or None, got {type(value).__name__}", **{source: repr(value)})
    try:
        seconds = float(value)
    except OverflowError:
        # an int too large for a float (10**400 seconds): no deadline
        seconds = math.inf if value > 0 else -math.inf
    if math.isnan(seconds) or seconds < 0:
        raise _invalid(f"invalid timeout {original!r} from {source}: {expected}", **{source: seconds})
    return seconds


def backend_arg(value: Any, source: str = "backend") -> str:
    """One of BACKENDS (case and blanks ignored)."""
    if not isinstance(value, str):
        raise _invalid(f"{source} must be a str, got {type(value).__name__}", **{source: repr(value)})
    name = value.strip().lower()
    if name not in BACKENDS:
        raise _invalid(f"invalid backend {value!r} from {source}: expected one of {', '.join(BACKENDS)}", **{source: value})
    return name


def isolation_arg(value: Any, source: str = "isolation") -> str:
    """One of ISOLATIONS (case and blanks ignored)."""
    if not isinstance(value, str):
        raise _invalid(f"{source} must be a str, got {type(value).__name__}: expected one of {', '.join(map(repr, ISOLATIONS))}",
                       **{source: repr(value)})
    name = value.strip().lower()
    if name not in ISOLATIONS:
        raise _invalid(f"invalid isolation {value!r} from {source}: expected one of {', '.join(map(repr, ISOLATIONS))}",
                       **{source: value})
    return name
