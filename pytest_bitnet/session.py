"""Sessions and per-call functions over the socket ABI.

A BitnetSession holds one native context: the model stays loaded and each
sequence keeps its KV cache, so repeated calls pay no load cost.  The
per-call functions load, work and free on every call (seed 003's MVP path).
Results are numpy arrays that native code fills in place.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import traceback
import warnings
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import numpy.typing as npt

from . import _logging, errors
from ._native import ffi, lib, native_message, new_err_buffer, raise_native

__all__ = ["BitnetSession", "tokenize", "evaluate", "capabilities", "live_counters", "Capabilities"]

log = logging.getLogger("pytest_bitnet")

QUERY = "QUERY PHASE"
FILL = "FILL PHASE"

DEFAULT_TIMEOUT = 30.0  # seconds, when neither the call, the session nor BITNET_CPP_TIMEOUT says

_logging.install()


# ---- argument validation (before native code sees anything) -------------


def _path_arg(model_path: str | os.PathLike[str]) -> bytes:
    if not isinstance(model_path, (str, os.PathLike)):
        raise errors.InvalidArgument(
            f"model_path must be a str or os.PathLike, got {type(model_path).__name__}",
            errors.ErrorContext(operation="validate", parameters={"model_path": repr(model_path)}),
        )
    raw = os.fsencode(model_path)
    if b"\0" in raw:
        raise errors.InvalidArgument(
            f"model_path {os.fspath(model_path)!r} contains a NUL byte",
            errors.ErrorContext(operation="validate"),
        )
    return raw


def _int_arg(operation: str, name: str, value: Any, *, minimum: int, maximum: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise errors.InvalidArgument(
            f"{operation}: {name} must be an int, got {type(value).__name__}; pass a whole number",
            errors.ErrorContext(operation=operation, parameters={name: repr(value)}),
        )
    if not minimum <= int(value) <= maximum:
        raise errors.InvalidArgument(
            f"{operation}: {name}={int(value)} is out of range: expected {minimum}..{maximum}; pass a value in that range",
            errors.ErrorContext(operation=operation, parameters={name: int(value)}),
        )
    return int(value)


def _prompt_arg(prompt: str | bytes) -> bytes:
    if isinstance(prompt, str):
        try:
            raw = prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise errors.InvalidArgument(
                f"prompt is not valid Unicode text: {exc.reason} at index {exc.start}; "
                "remove lone surrogates (for example decode bytes with errors='replace')",
                errors.ErrorContext(operation="validate"),
            ) from exc
    elif isinstance(prompt, (bytes, bytearray)):
        raw = bytes(prompt)
    else:
        raise errors.InvalidArgument(
            f"prompt must be str or bytes, got {type(prompt).__name__}",
            errors.ErrorContext(operation="validate"),
        )
    nul = raw.find(b"\0")
    if nul >= 0:
        raise errors.InvalidArgument(
            f"prompt contains a NUL byte at byte offset {nul}: the C API takes NUL-terminated "
            "text; strip or replace NUL characters",
            errors.ErrorContext(operation="validate", parameters={"offset": nul}),
        )
    return raw


def _tokens_arg(tokens: npt.ArrayLike | Iterable[int]) -> npt.NDArray[np.int32]:
    try:
        arr = np.asarray(tokens if not isinstance(tokens, (str, bytes)) else None)
    except (ValueError, TypeError, OverflowError) as exc:
        # numpy refuses ragged nested lists and some objects outright; the
        # caller gets the same InvalidArgument as any other non-1-D input
        raise errors.InvalidArgument(
            f"tokens must be a 1-D sequence of integer ids, got {type(tokens).__name__} "
            f"that numpy cannot make an array of ({exc})",
            errors.ErrorContext(operation="validate"),
        ) from exc
    if arr.dtype == object or arr.ndim != 1:
        raise errors.InvalidArgument(
            f"tokens must be a 1-D sequence of integer ids, got {type(tokens).__name__}"
            + (f" with shape {arr.shape}" if arr.dtype != object else ""),
            errors.ErrorContext(operation="validate"),
        )
    if arr.size == 0:
        arr = arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise errors.InvalidArgument(
            f"tokens must have an integer dtype, got {arr.dtype}; token ids are int32",
            errors.ErrorContext(operation="validate", parameters={"dtype": str(arr.dtype)}),
        )
    if arr.dtype != np.int32:
        info = np.iinfo(np.int32)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            bad = int(np.flatnonzero((arr < info.min) | (arr > info.max))[0])
            raise errors.InferenceError(
                f"invalid token id {int(arr[bad])} at position {bad}: does not fit in int32",
                errors.ErrorContext(operation="validate", parameters={"position": bad}),
            )
    return np.ascontiguousarray(arr, dtype=np.int32)


def _timeout_arg(timeout: Any, source: str = "timeout") -> float:
    """Seconds (math.inf for none) from a user value; InvalidArgument if bad."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
        raise errors.InvalidArgument(
            f"{source} must be a number of seconds or None, got {type(timeout).__name__}",
            errors.ErrorContext(operation="validate", parameters={source: repr(timeout)}),
        )
    try:
        value = float(timeout)
    except OverflowError:
        # an int too large for a float (10**400 seconds): no deadline
        value = math.inf if timeout > 0 else -math.inf
    if math.isnan(value) or value < 0:
        raise errors.InvalidArgument(
            f"{source}={value!r} is invalid: expected seconds >= 0 (math.inf for no deadline)",
            errors.ErrorContext(operation="validate", parameters={source: value}),
        )
    return value


def default_timeout() -> float:
    """BITNET_CPP_TIMEOUT (seconds; 'inf' or 'none' for no deadline), else 30 s."""
    raw = os.environ.get("BITNET_CPP_TIMEOUT")
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT
    if raw.strip().lower() in ("none", "inf", "infinity"):
        return math.inf
    try:
        return _timeout_arg(float(raw), "BITNET_CPP_TIMEOUT")
    except ValueError:
        raise errors.InvalidArgument(
            f"BITNET_CPP_TIMEOUT={raw!r} is not a number of seconds",
            errors.ErrorContext(operation="validate"),
        ) from None


_MAX_TIMEOUT_NS = 2**63 - 1  # bitnet_bridge_set_call_timeout takes int64_t


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    # The bridge reads a thread-local deadline at the start of each call;
    # no thread is started, the native step points check it.
    # A finite timeout beyond the native int64 nanoseconds (~292 years) is
    # no deadline in practice: pass "none" rather than overflow.
    ns = 0 if seconds * 1e9 >= _MAX_TIMEOUT_NS else max(1, int(seconds * 1e9))
    lib.bitnet_bridge_set_call_timeout(ns)
    try:
        yield
    finally:
        lib.bitnet_bridge_set_call_timeout(0)


class _Options:
    """bitnet_bridge_options with the strings it points to kept alive."""

    __slots__ = ("cdata", "_keep")

    def __init__(self, backend: str | None = None, library_path: str | os.PathLike[str] | None = None) -> None:
        self.cdata = ffi.new("bitnet_bridge_options *")
        self._keep: list[Any] = []
        self.cdata.force_fallback = -1
        if backend is not None:
            if not isinstance(backend, str):
                raise errors.InvalidArgument(
                    f"backend must be a str, got {type(backend).__name__}", errors.ErrorContext(operation="validate")
                )
            self.cdata.backend = self._str(backend.encode())
        if library_path is not None:
            self.cdata.library_path = self._str(_path_arg(library_path))

    def _str(self, raw: bytes) -> Any:
        buf = ffi.new("char[]", raw)
        self._keep.append(buf)
        return buf


def _warn_if_fallback(label: str, operation: str) -> None:
    if label.startswith("fallback:"):
        warnings.warn(
            errors.OptionalSymbolMissing(
                f"{operation} served by {label}: "
                + ("the native tier was bypassed" if "BITNET_FORCE_LLAMA_FALLBACK" in label else "the native tier lacks it")
            ),
            stacklevel=3,
        )


# ---- native two-pass helpers ---------------------------------------------


def _tokenize_two_pass(call: Any, operation: str, params: dict[str, Any]) -> npt.NDArray[np.int32]:
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


def _eval_two_pass(call: Any, operation: str, params: dict[str, Any]) -> npt.NDArray[np.float32]:
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


def _free_context(ctx: Any, path: str) -> None:
    # weakref.finalize callback: the session was collected without close().
    warnings.warn(
        f"BitnetSession for {path!r} was not closed; freeing it in the finalizer "
        "(use 'with BitnetSession.create(...)' or call close())",
        ResourceWarning,
        stacklevel=2,
    )
    log.warning("unclosed BitnetSession for %r freed by its finalizer", path)
    lib.bitnet_cpp_free_context(ctx)


class BitnetSession:
    """A loaded model with its context: create once, call many times.

    Use as a context manager, or call close().  A session serves one call at
    a time (a second thread gets ThreadSafetyError); give each thread its
    own.  Every operation takes a timeout in seconds: the call's, else the
    session's, else BITNET_CPP_TIMEOUT, else 30 s; math.inf disables it.
    """

    __slots__ = ("_ctx", "_finalizer", "model_path", "n_ctx", "n_vocab", "timeout", "backend_info", "__weakref__")

    def __init__(self) -> None:  # use create()
        raise TypeError("use BitnetSession.create(model_path, ...)")

    @classmethod
    def create(
        cls,
        model_path: str | os.PathLike[str],
        n_ctx: int = 512,
        n_gpu_layers: int = 0,
        timeout: float | None = None,
        backend: str | None = None,
        library_path: str | os.PathLike[str] | None = None,
    ) -> BitnetSession:
        """Loads model_path with a context of n_ctx positions (0: the model's own).

        backend: "reference" (embedded), "dlopen" (a libbitnet.so found by
        discovery, or library_path), "stub"; default BITNET_BACKEND, else
        "reference".  timeout bounds the load and is the session's default.
        """
        raw_path = _path_arg(model_path)
        n_ctx = _int_arg("create", "n_ctx", n_ctx, minimum=0)
        n_gpu_layers = _int_arg("create", "n_gpu_layers", n_gpu_layers, minimum=0)
        session_timeout = default_timeout() if timeout is None else _timeout_arg(timeout)
        opts = _Options(backend, library_path)
        out = ffi.new("bitnet_context_t **")
        err = new_err_buffer()
        path = os.fsdecode(raw_path)
        params = {"model_path": path, "n_ctx": n_ctx, "n_gpu_layers": n_gpu_layers, "timeout": session_timeout}
        if backend is not None:
            params["backend"] = backend
        with _deadline(session_timeout):
            rc = lib.bitnet_bridge_init_context(out, raw_path, n_ctx, n_gpu_layers, opts.cdata, err, len(err))
        if rc:
            hint = None
            if rc == lib.BITNET_E_OOM and n_ctx != 1 and "n_ctx" not in native_message(err)[0]:
                hint = f"the KV cache grows with n_ctx: lower n_ctx (now {n_ctx or 'the model default'}) to need less memory"
            raise_native(rc, "create", err, parameters=params, hint=hint)
        self = object.__new__(cls)
        self._ctx = out[0]
        self.model_path = path
        self.timeout = session_timeout
        self._finalizer = weakref.finalize(self, _free_context, out[0], path)
        info_v, info_c = ffi.new("int32_t *"), ffi.new("int32_t *")
        lib.bitnet_cpp_get_model_info(self._ctx, info_v, info_c)
        self.n_vocab = int(info_v[0])
        self.n_ctx = int(info_c[0])
        self.backend_info = {"create": ffi.string(lib.bitnet_bridge_backend_name(self._ctx)).decode()}
        if _CREATED.enabled:
            _CREATED.record(self)
        return self

    # -- lifecycle ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def close(self) -> None:
        """Frees the native context.  Idempotent.

        Raises CleanupFailed when the native free fails; the session then
        stays open (and counted) so close() can be retried.
        """
        if self._ctx is None:
            return
        rc = lib.bitnet_cpp_free_context(self._ctx)
        if rc:
            # Whatever stopped the free, the caller's question is "is it
            # freed?": CleanupFailed (the class says retry), naming the
            # cause's class when it was something else.
            params: dict[str, Any] = {"model_path": self.model_path}
            if rc not in (lib.BITNET_E_CLEANUP, lib.BITNET_E_INVALID_HANDLE):
                params["cause"] = errors.error_for_code(rc).__name__
            raise_native(rc if rc == lib.BITNET_E_INVALID_HANDLE else lib.BITNET_E_CLEANUP, "close", None, parameters=params)
        self._finalizer.detach()
        self._ctx = None

    def cancel(self) -> None:
        """Stops the call running on this session (from another thread).

        The call raises OperationTimeout at its next step point; the session
        stays usable.  Does nothing when no call is running.
        """
        ctx = self._ctx
        if ctx is not None:
            lib.bitnet_bridge_cancel(ctx)

    def __enter__(self) -> BitnetSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._ctx is None else f"n_ctx={self.n_ctx}, n_vocab={self.n_vocab}"
        return f"<BitnetSession {self.model_path!r} {state}>"

    def _live(self, operation: str) -> Any:
        if self._ctx is None:
            raise errors.InferenceError(
                f"{operation} on a closed session: the session for {self.model_path!r} was "
                "closed; create a new one with BitnetSession.create()",
                errors.ErrorContext(operation=operation, parameters={"model_path": self.model_path}),
            )
        return self._ctx

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else _timeout_arg(timeout)

    def _served(self, ctx: Any, operation: str) -> None:
        label = lib.bitnet_bridge_served_by(ctx, operation.encode())
        if label != ffi.NULL:
            text = ffi.string(label).decode()
            self.backend_info[operation] = text
            _warn_if_fallback(text, operation)

    # -- work --------------------------------------------------------------

    def tokenize(
        self, prompt: str | bytes, add_bos: bool = True, parse_special: bool = False, timeout: float | None = None
    ) -> npt.NDArray[np.int32]:
        """Token ids of prompt (BOS first when add_bos), as int32."""
        ctx = self._live("tokenize")
        raw = _prompt_arg(prompt)
        seconds = self._timeout(timeout)
        params = {"prompt_bytes": len(raw), "add_bos": bool(add_bos), "parse_special": bool(parse_special), "timeout": seconds}

        def call(buf: Any, cap: int, n: Any, err: Any) -> int:
            return lib.bitnet_cpp_tokenize_with_context(ctx, raw, bool(add_bos), bool(parse_special), buf, cap, n, err, len(err))

        with _deadline(seconds):
            out = _tokenize_two_pass(call, "tokenize", params)
        self._served(ctx, "tokenize")
        return out

    def evaluate(self, tokens: npt.ArrayLike, seq_id: int = 0, timeout: float | None = None) -> npt.NDArray[np.float32]:
        """Logits (n_tokens x n_vocab, float32) for tokens appended to seq_id.

        A failed or timed-out call leaves the sequence as it was.
        """
        ctx = self._live("evaluate")
        toks = _tokens_arg(tokens)
        seq_id = _int_arg("evaluate", "seq_id", seq_id, minimum=0)
        seconds = self._timeout(timeout)
        params = {"n_tokens": int(toks.size), "seq_id": seq_id, "n_past": self.n_past(seq_id), "timeout": seconds}
        ptr = ffi.from_buffer("int32_t[]", toks)

        def call(buf: Any, cap: int, rows: Any, cols: Any, err: Any) -> int:
            return lib.bitnet_cpp_eval_with_context(ctx, ptr, toks.size, seq_id, buf, cap, rows, cols, err, len(err))

        with _deadline(seconds):
            out = _eval_two_pass(call, "evaluate", params)
        self._served(ctx, "evaluate")
        return out

    def n_past(self, seq_id: int = 0) -> int:
        """Positions already evaluated in sequence seq_id."""
        ctx = self._live("n_past")
        out = ffi.new("int32_t *")
        rc = lib.bitnet_cpp_get_n_past(ctx, _int_arg("n_past", "seq_id", seq_id, minimum=0), out)
        if rc:
            raise_native(rc, "n_past", None, parameters={"seq_id": seq_id})
        return int(out[0])

    def reset(self, seq_id: int | None = None) -> None:
        """Forgets sequence seq_id (every sequence when None)."""
        ctx = self._live("reset")
        seq = -1 if seq_id is None else _int_arg("reset", "seq_id", seq_id, minimum=0)
        rc = lib.bitnet_cpp_reset_context(ctx, seq)
        if rc:
            raise_native(rc, "reset", None, parameters={"seq_id": seq_id})


# ---- creation stacks (for leak reports) -------------------------------------


TRACK_ENV = "BITNET_TRACK_CREATION"  # "1": track from import on (see track_creation)


class _CreationRegistry:
    """Where each live session was created, while tracking is on.

    The pytest plugin's leak check turns tracking on so a leaked session can
    be named with the Python stack that created it; off (the default) it
    costs create() one branch.
    """

    __slots__ = ("enabled", "live", "seq")

    def __init__(self) -> None:
        # record stacks in create(); the plugin sets the variable when it
        # turns tracking on before this module is imported
        self.enabled = os.environ.get(TRACK_ENV) == "1"
        self.seq = 0  # sessions recorded so far (a creation order)
        self.live: weakref.WeakKeyDictionary[BitnetSession, tuple[int, traceback.StackSummary]] = weakref.WeakKeyDictionary()

    def record(self, session: BitnetSession) -> None:
        self.seq += 1
        # [:-2]: drop record() and create() themselves
        self.live[session] = (self.seq, traceback.StackSummary.from_list(traceback.extract_stack()[:-2]))


_CREATED = _CreationRegistry()


def track_creation(enabled: bool) -> bool:
    """Records the creating stack of every session from now on (or stops).

    Returns the previous setting, so nested users can restore it.
    """
    previous = _CREATED.enabled
    _CREATED.enabled = bool(enabled)
    if not enabled:
        _CREATED.live.clear()
    return previous


def creation_seq() -> int:
    """The number of sessions recorded so far; compare with open_sessions()."""
    return _CREATED.seq


def open_sessions(after: int = 0) -> list[tuple[int, BitnetSession, traceback.StackSummary]]:
    """Open sessions recorded after creation number `after`: (number, session, stack)."""
    return sorted(
        ((seq, s, stack) for s, (seq, stack) in list(_CREATED.live.items()) if seq > after and not s.closed),
        key=lambda t: t[0],
    )


# ---- per-call functions ----------------------------------------------------


def tokenize(
    model_path: str | os.PathLike[str],
    prompt: str | bytes,
    add_bos: bool = True,
    parse_special: bool = False,
    timeout: float | None = None,
    backend: str | None = None,
    library_path: str | os.PathLike[str] | None = None,
) -> npt.NDArray[np.int32]:
    """Loads the model's vocabulary, tokenizes prompt, frees everything.

    backend / library_path: as for BitnetSession.create.
    """
    raw_path, raw = _path_arg(model_path), _prompt_arg(prompt)
    seconds = default_timeout() if timeout is None else _timeout_arg(timeout)
    opts = _Options(backend, library_path)
    params = {"model_path": os.fsdecode(raw_path), "prompt_bytes": len(raw), "add_bos": bool(add_bos), "timeout": seconds}

    def call(buf: Any, cap: int, n: Any, err: Any) -> int:
        return lib.bitnet_bridge_percall_tokenize(opts.cdata, raw_path, raw, bool(add_bos), bool(parse_special), buf, cap, n, err, len(err))

    with _deadline(seconds):
        return _tokenize_two_pass(call, "tokenize (per-call)", params)


def evaluate(
    model_path: str | os.PathLike[str],
    tokens: npt.ArrayLike,
    n_ctx: int = 512,
    timeout: float | None = None,
    backend: str | None = None,
    library_path: str | os.PathLike[str] | None = None,
) -> npt.NDArray[np.float32]:
    """Loads the model, evaluates tokens from an empty context, frees everything.

    backend / library_path: as for BitnetSession.create.
    """
    raw_path, toks = _path_arg(model_path), _tokens_arg(tokens)
    n_ctx = _int_arg("evaluate", "n_ctx", n_ctx, minimum=0)
    seconds = default_timeout() if timeout is None else _timeout_arg(timeout)
    opts = _Options(backend, library_path)
    params = {"model_path": os.fsdecode(raw_path), "n_tokens": int(toks.size), "n_ctx": n_ctx, "timeout": seconds}
    ptr = ffi.from_buffer("int32_t[]", toks)

    def call(buf: Any, cap: int, rows: Any, cols: Any, err: Any) -> int:
        return lib.bitnet_bridge_percall_eval(opts.cdata, raw_path, ptr, toks.size, n_ctx, buf, cap, rows, cols, err, len(err))

    with _deadline(seconds):
        return _eval_two_pass(call, "evaluate (per-call)", params)


# ---- machine facts -----------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What the native library can use on this machine (Socket 6)."""

    has_avx2: bool
    has_avx512: bool
    has_neon: bool
    has_cuda: bool
    has_metal: bool
    has_hip: bool

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


def capabilities() -> Capabilities:
    caps = ffi.new("bitnet_capabilities_t *")
    rc = lib.bitnet_cpp_get_capabilities(caps)
    if rc:
        raise_native(rc, "capabilities")
    return Capabilities(**{f: bool(getattr(caps, f)) for f in Capabilities.__dataclass_fields__})


def live_counters() -> dict[str, int]:
    """Live native objects and bytes: contexts, sessions, models, bytes,
    allocations; and the monotonic model_loads and peak_bytes."""
    c = ffi.new("bitnet_counters_t *")
    lib.bitnet_cpp_get_counters(c)
    return {name: int(getattr(c, name)) for name in ("contexts", "sessions", "models", "bytes", "allocations", "model_loads", "peak_bytes")}
