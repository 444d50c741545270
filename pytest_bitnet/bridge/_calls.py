"""What every native call of the API does around the C function: set the
deadline, run the two passes of a buffer-filling socket, report a fallback.

Shared by sessions (session.py) and the per-call functions (percall.py).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt

from . import errors
from ._native import ffi, lib, new_err_buffer, raise_native

QUERY = "QUERY PHASE"
FILL = "FILL PHASE"

_MAX_NS = 2**63 - 1  # the bridge's deadlines are int64_t nanoseconds


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """The calling thread's deadline for the bridge calls in the block.

    One absolute deadline, fixed on entry: every call in the block (both
    passes of a two-pass call) shares the budget, instead of each starting
    a fresh one.  No thread is started; the native step points check it.
    A finite timeout beyond the native int64 nanoseconds (~292 years) is no
    deadline in practice.
    """
    if seconds * 1e9 >= _MAX_NS:
        at = 0  # none
    else:
        now = lib.bitnet_bridge_now_ns()  # the bridge's clock, not Python's
        at = min(now + max(1, int(seconds * 1e9)), _MAX_NS)
    lib.bitnet_bridge_set_call_deadline(at)
    try:
        yield
    finally:
        lib.bitnet_bridge_set_call_deadline(0)


def warn_if_fallback(label: str, operation: str) -> None:
    if label.startswith("fallback:"):
        warnings.warn(
            errors.OptionalSymbolMissing(
                f"{operation} served by {label}: "
                + ("the native tier was bypassed" if "BITNET_FORCE_LLAMA_FALLBACK" in label else "the native tier lacks it")
            ),
            stacklevel=4,
        )


def tokenize_two_pass(call: Any, operation: str, params: dict[str, Any]) -> npt.NDArray[np.int32]:
    """Runs a tokenize socket: query the count, then fill a numpy array."""
    n = ffi.new("int32_t *")
    err = new_err_buffer()
    rc = call(ffi.NULL, 0, n, err)
    if rc:
        raise_native(rc, operation, err, phase=QUERY, parameters=params)
    out = np.empty(n[0], dtype=np.int32)
    rc = call(ffi.from_buffer("int32_t[]", out), out.size, n, err)
    if rc:
        raise_native(rc, operation, err, phase=FILL, parameters={**params, "expected_tokens": out.size})
    return out[: n[0]]


def eval_two_pass(call: Any, operation: str, params: dict[str, Any]) -> npt.NDArray[np.float32]:
    """Runs an eval socket: query rows x cols, then fill a numpy array."""
    rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
    err = new_err_buffer()
    rc = call(ffi.NULL, 0, rows, cols, err)
    if rc:
        raise_native(rc, operation, err, phase=QUERY, parameters=params)
    out = np.empty((rows[0], cols[0]), dtype=np.float32)
    if out.size > 2**31 - 1:
        raise errors.OutOfMemory(
            f"{operation}: {rows[0]} x {cols[0]} logits exceed the C API's int32 capacity; "
            "evaluate fewer tokens per call",
            errors.ErrorContext(operation=operation, phase=QUERY, parameters=params),
        )
    rc = call(ffi.from_buffer("float[]", out), out.size, rows, cols, err)
    if rc:
        raise_native(rc, operation, err, phase=FILL, parameters={**params, "rows": out.shape[0], "cols": out.shape[1]})
    return out
