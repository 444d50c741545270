"""What every native call of the API does around the C function: set the
deadline, run the two passes of a buffer-filling socket (checking what the
native side reports against the buffer), say which tier served a call,
report a fallback.

Shared by sessions (session.py) and the per-call functions (percall.py).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import numpy.typing as npt

from . import errors
from ._native import ffi, lib, new_err_buffer, raise_native

QUERY = "QUERY PHASE"
FILL = "FILL PHASE"

_MAX_NS = 2**63 - 1  # the bridge's deadlines are int64_t nanoseconds

#: Told QUERY / FILL as each pass starts and None when the call ends, when
#: set: an isolated session's worker publishes the phase on a page its
#: caller reads, so a worker that dies or is stopped mid-call is reported
#: with the phase it was in (isolation/worker.py).  None in process.
phase_observer: Callable[[str | None], None] | None = None


def _phase(phase: str | None) -> None:
    observer = phase_observer
    if observer is not None:
        observer(phase)


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


def copied_text(fn: Callable[..., int], *args: Any) -> str | None:
    """The text a copy-out function of the bridge gives (bitnet_bridge_served_by, ...), or None.

    Each copies into the caller's buffer while it holds the handle and
    returns the full length without the NUL (negative: an error), so no
    pointer into a context another thread may free is ever read here.
    """
    buf = ffi.new("char[]", 256)
    n = int(fn(*args, buf, len(buf)))
    if n >= len(buf):
        buf = ffi.new("char[]", n + 1)
        n = int(fn(*args, buf, len(buf)))
    return str(ffi.string(buf).decode("utf-8", "replace")) if n >= 0 else None


def served_label(ctx: Any, operation: str) -> str | None:
    """Which tier serves operation ("tokenize" / "evaluate") for a context; None once it is closed."""
    return copied_text(lib.bitnet_bridge_served_by, ctx, operation.encode())


def percall_served_label() -> str | None:
    """Which tier served the calling thread's last per-call function."""
    return copied_text(lib.bitnet_bridge_percall_served_by) or None


def _misreport(
    operation: str, phase: str, what: str, params: dict[str, Any], served_by: Callable[[], str | None] | None,
    socket: str | None = None,
) -> errors.InferenceError:
    # A count the native side reported that the buffer does not agree with:
    # the result is not returned, whatever the library's return code said.
    # (The bridge has already checked each count against the inputs and the
    # buffer; what is left for here is the fill against its query.)
    library = (served_by() if served_by is not None else None) or "an unidentified library"
    through = f", socket {socket}" if socket else ""
    return errors.InferenceError(
        f"{operation} ({phase}) failed: {what} (served by {library}{through}), so the result is discarded; "
        "if the model file was being replaced, call again once it is stable, otherwise the library "
        "misreports its output: report it to its authors",
        errors.ErrorContext(operation=operation, phase=phase,
                            parameters={**params, "served_by": library, **({"socket": socket} if socket else {})}),
    )


def _counted_two_pass(
    call: Any, operation: str, params: dict[str, Any], served_by: Callable[[], str | None] | None,
    socket: str | None, unit: str, buffer_for: Callable[[int], tuple[Any, Any]],
) -> tuple[Any, int]:
    """The two passes of a socket whose result is one count of `unit`s.

    buffer_for(n) gives (the result object, the cdata the fill writes into).
    Every count the native side reports is checked: a negative one, or a
    fill that reports another count than its query, is an InferenceError
    naming both and the library that served the call (served_by() says
    which), never a result the native side did not fill.
    """
    n = ffi.new("int32_t *")
    err = new_err_buffer()
    _phase(QUERY)
    rc = call(ffi.NULL, 0, n, err)
    if rc:
        raise_native(rc, operation, err, phase=QUERY, parameters=params)
    want = int(n[0])
    if want < 0:
        raise _misreport(operation, QUERY, f"the query pass reported {want} {unit}", params, served_by, socket)
    out, cdata = buffer_for(want)
    _phase(FILL)
    rc = call(cdata, want, n, err)
    if rc:
        raise_native(rc, operation, err, phase=FILL, parameters={**params, f"expected_{unit}": want})
    got = int(n[0])
    if got != want:
        beyond = " (more than the buffer holds)" if got > want else ""
        raise _misreport(
            operation, FILL, f"the fill pass reported {got} {unit}{beyond} where the query pass reported {want}",
            {**params, f"query_{unit}": want, f"fill_{unit}": got}, served_by, socket,
        )
    return out, want


def _int32_buffer(n: int) -> tuple[npt.NDArray[np.int32], Any]:
    out = np.empty(n, dtype=np.int32)
    return out, ffi.from_buffer("int32_t[]", out)


def _char_buffer(n: int) -> tuple[Any, Any]:
    buf = ffi.new("char[]", max(n, 1))  # never NULL: a NULL buffer would be another query
    return buf, buf


def tokenize_two_pass(
    call: Any, operation: str, params: dict[str, Any], served_by: Callable[[], str | None] | None = None,
    socket: str | None = None,
) -> npt.NDArray[np.int32]:
    """Runs a tokenize socket: query the count, then fill a numpy array (checked as _counted_two_pass says)."""
    out, _ = _counted_two_pass(call, operation, params, served_by, socket, "tokens", _int32_buffer)
    return out


def bytes_two_pass(
    call: Any, operation: str, params: dict[str, Any], served_by: Callable[[], str | None] | None = None,
    socket: str | None = None,
) -> bytes:
    """Runs a socket that returns bytes (detokenize): query the length, then fill (checked alike)."""
    buf, n = _counted_two_pass(call, operation, params, served_by, socket, "bytes", _char_buffer)
    return bytes(ffi.buffer(buf, n))


#: Gives the float32 array of shape (rows, cols) an evaluate's fill pass
#: writes into: a fresh numpy array in process; an isolated session's worker
#: puts in one that views the memory it shares with its caller, so the
#: logits are written there once and never copied into a message.
def _new_logits(shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    return np.empty(shape, dtype=np.float32)


logits_buffer: Callable[[tuple[int, int]], npt.NDArray[np.float32]] = _new_logits


def eval_two_pass(
    call: Any, operation: str, params: dict[str, Any], served_by: Callable[[], str | None] | None = None,
    socket: str | None = None,
) -> npt.NDArray[np.float32]:
    """Runs an eval socket: query rows x cols, then fill a numpy array.

    As for tokenize_two_pass: the fill must report the query's rows and
    cols, else an InferenceError naming both shapes and the library.
    """
    rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
    err = new_err_buffer()
    _phase(QUERY)
    rc = call(ffi.NULL, 0, rows, cols, err)
    if rc:
        raise_native(rc, operation, err, phase=QUERY, parameters=params)
    want = (int(rows[0]), int(cols[0]))
    if min(want) < 0:
        raise _misreport(operation, QUERY, f"the query pass reported {want[0]} x {want[1]} logits", params, served_by, socket)
    if want[0] * want[1] > 2**31 - 1:
        raise errors.OutOfMemory(
            f"{operation}: {want[0]} x {want[1]} logits exceed the C API's int32 capacity; "
            "evaluate fewer tokens per call",
            errors.ErrorContext(operation=operation, phase=QUERY, parameters=params),
        )
    out = logits_buffer(want)
    _phase(FILL)
    rc = call(ffi.from_buffer("float[]", out), out.size, rows, cols, err)
    if rc:
        raise_native(rc, operation, err, phase=FILL, parameters={**params, "rows": out.shape[0], "cols": out.shape[1]})
    got = (int(rows[0]), int(cols[0]))
    if got != want:
        beyond = " (more than the buffer holds)" if min(got) >= 0 and got[0] * got[1] > out.size else ""
        raise _misreport(
            operation, FILL,
            f"the fill pass reported {got[0]} x {got[1]} logits{beyond} where the query pass reported {want[0]} x {want[1]}",
            {**params, "query_shape": want, "fill_shape": got}, served_by, socket,
        )
    return out
