"""BitnetSession: one native context, created once and called many times.

The model stays loaded and each sequence keeps its KV cache, so repeated
calls pay no load cost.  Results are numpy arrays that native code fills in
place.

Freeing that fails.  ``close()`` raises CleanupFailed and the session stays
open and counted; the exception carries it (``exc.session``) so a handler
that no longer has the object can still retry.  A session dropped without a
successful close is freed by its finalizer (with a ResourceWarning); when
that free fails too, the native context is not forgotten: it waits in a
module-level list (:func:`pending_cleanups`) and is retried by the next
``create()`` and every successful ``close()``, by :func:`retry_pending`, and
once more at interpreter exit.  Until then it stays in the live counters, so
a leak check (``pytest --bitnet-leak-check``) reports it in the test that
dropped it, like a leak pytest-memray would report: counted and visible,
never silently lost.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import warnings
import weakref
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from . import counters, deadlines, errors, native_log
from ._calls import bytes_two_pass, copied_text, deadline, eval_two_pass, served_label, tokenize_two_pass, warn_if_fallback
from ._native import Options, ffi, lib, native_message, new_err_buffer, raise_native
from .capabilities import Capabilities, context_capabilities
from .settings import default_timeout, isolation_for
from .validate import int_arg, parse_timeout, path_arg, prompt_arg, tokens_arg

__all__ = ["BitnetSession", "PendingCleanup", "pending_cleanups", "retry_pending"]

log = logging.getLogger("pytest_bitnet")

native_log.install()


# ---- contexts whose free failed in a finalizer --------------------------------------------


@dataclasses.dataclass
class PendingCleanup:
    """A native context whose free failed after its session was dropped."""

    model_path: str
    handle: Any  # the bitnet_context_t * (cffi)
    attempts: int  # frees tried so far
    error: str  # what the last one said
    serial: int = 0  # the session's identity in the counters registry (0: not tracked)


_pending: list[PendingCleanup] = []
# Re-entrant: a finalizer may run (gc) inside retry_pending on the same thread.
_pending_lock = threading.RLock()


def pending_cleanups() -> tuple[PendingCleanup, ...]:
    """The contexts waiting for a retried free (oldest first)."""
    with _pending_lock:
        return tuple(_pending)


def retry_pending() -> int:
    """Tries to free every pending context again; returns how many are still pending.

    Called by create() and by every successful close(), and at exit; call it
    yourself after removing what made the frees fail.  Never raises.
    """
    with _pending_lock:
        todo = list(_pending)
        del _pending[:]
    kept = []
    for p in todo:
        before = counters.snapshot()
        rc = lib.bitnet_cpp_free_context(p.handle)
        if rc == 0 or rc == lib.BITNET_E_INVALID_HANDLE:  # freed now, or by someone holding the raw handle
            counters.ended(p.serial, counters.FINALIZED, before)
            log.info("pending BitnetSession context for %r freed on retry %d", p.model_path, p.attempts + 1)
            continue
        p.attempts += 1
        p.error = native_message(None)[0]
        kept.append(p)
    with _pending_lock:
        _pending[:0] = kept
        return len(_pending)


def _retry_pending_at_exit() -> None:
    # Registered before any session exists, so it runs after the finalizers
    # weakref.finalize runs at exit (atexit is last in, first out).
    if _pending and retry_pending():
        for p in pending_cleanups():
            log.warning("BitnetSession context for %r could not be freed at exit after %d attempts: %s",
                        p.model_path, p.attempts, p.error)


atexit.register(_retry_pending_at_exit)


def _free_context(ctx: Any, path: str, serial: int) -> None:
    # weakref.finalize callback: the session was collected without close().
    # Free first, warn after: with ResourceWarning turned into an error
    # (-W error::ResourceWarning) the warning raises here, and anything after
    # it never runs -- a warning issued first left the context alive for ever.
    before = counters.snapshot()
    rc = lib.bitnet_cpp_free_context(ctx)
    if rc == 0 or rc == lib.BITNET_E_INVALID_HANDLE:  # freed now, or by someone holding the raw handle
        # the leak check's record: not closed, freed here (a leak of the test that made it)
        counters.ended(serial, counters.FINALIZED, before)
        log.warning("unclosed BitnetSession for %r freed by its finalizer", path)
        warnings.warn(
            f"BitnetSession for {path!r} was not closed; it was freed by its finalizer "
            "(use 'with BitnetSession.create(...)' or call close())",
            ResourceWarning,
            stacklevel=2,
        )
        return
    message = native_message(None)[0]
    with _pending_lock:
        _pending.append(PendingCleanup(path, ctx, 1, message, serial))
    counters.ended(serial, counters.PENDING, before)
    log.warning("unclosed BitnetSession for %r could not be freed by its finalizer (%s); its context stays "
                "alive and counted, pending a retry", path, message)
    warnings.warn(
        f"BitnetSession for {path!r} was not closed, and freeing it in its finalizer failed ({message}); "
        "its context stays alive and counted in pytest_bitnet.bridge.session.pending_cleanups(), and is "
        "retried by the next create() or close(), by retry_pending(), and at exit",
        ResourceWarning,
        stacklevel=2,
    )


# ---- the session --------------------------------------------------------------------------


class BitnetSession:
    """A loaded model with its context: create once, call many times.

    Use as a context manager, or call close().  A session serves one call at
    a time (a second thread gets ThreadSafetyError); give each thread its
    own.  Every operation takes a timeout in seconds: the call's, else the
    session's, else the run-wide default (settings.configure), else
    BITNET_CPP_TIMEOUT, else 30 s; math.inf disables it, 0 is already past.

    A call on a closed session raises InferenceError ("closed"), also when
    another thread closes it while the call starts (InvalidHandle): a call
    never runs on a session other than its own.
    """

    __slots__ = (
        "_ctx", "_finalizer", "_close_lock", "_serial", "model_path", "n_ctx", "n_vocab", "timeout", "backend_info", "__weakref__"
    )

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
        isolation: str | None = None,
    ) -> BitnetSession:
        """Loads model_path with a context of n_ctx positions (0: the model's own).

        backend: "reference" (embedded), "dlopen" (a libbitnet.so found by
        discovery, or library_path), "llama", "stub"; default BITNET_BACKEND,
        else "reference".  timeout bounds the load and is the session's default.
        isolation: "none" (in this process) or "process" (the library runs in
        a worker process: hard deadlines, crashes contained; see
        pytest_bitnet.bridge.isolation); default settings.configure's, else
        BITNET_ISOLATION, else "none".
        Retries the frees of pending_cleanups() first.
        """
        if isolation_for(isolation) == "process":
            from .isolation.session import IsolatedSession

            return IsolatedSession._start(model_path, n_ctx, n_gpu_layers, timeout, backend, library_path)
        if _pending:
            retry_pending()
        raw_path = path_arg(model_path)
        n_ctx = int_arg("create", "n_ctx", n_ctx, minimum=0)
        n_gpu_layers = int_arg("create", "n_gpu_layers", n_gpu_layers, minimum=0)
        session_timeout = default_timeout() if timeout is None else parse_timeout(timeout)
        opts = Options(backend, library_path)
        out = ffi.new("bitnet_context_t **")
        err = new_err_buffer()
        path = os.fsdecode(raw_path)
        params = {"model_path": path, "n_ctx": n_ctx, "n_gpu_layers": n_gpu_layers, "timeout": session_timeout}
        if backend is not None:
            params["backend"] = backend
        before = counters.snapshot()  # None unless a leak check tracks sessions
        with deadline(session_timeout):
            rc = lib.bitnet_bridge_init_context(out, raw_path, n_ctx, n_gpu_layers, opts.cdata, err, len(err))
        if rc:
            hint = None
            if rc == lib.BITNET_E_OOM and n_ctx != 1 and "n_ctx" not in native_message(err)[0]:
                hint = f"the KV cache grows with n_ctx: lower n_ctx (now {n_ctx or 'the model default'}) to need less memory"
            raise_native(rc, "create", err, parameters=params, hint=hint)
        self = object.__new__(cls)
        self._ctx = out[0]
        self._close_lock = threading.Lock()
        self.model_path = path
        self.timeout = session_timeout
        self._serial = counters.reserve(before)
        self._finalizer = weakref.finalize(self, _free_context, out[0], path, self._serial)
        info_v, info_c = ffi.new("int32_t *"), ffi.new("int32_t *")
        # checked natively (at create too); a library without the helper
        # (one served through Socket 4) leaves them unknown: None
        if lib.bitnet_cpp_get_model_info(self._ctx, info_v, info_c) == 0:
            self.n_vocab: int | None = int(info_v[0])
            self.n_ctx: int | None = int(info_c[0])
        else:
            self.n_vocab = self.n_ctx = None
        # nobody else has the handle yet: it cannot be stale here
        self.backend_info = {"create": copied_text(lib.bitnet_bridge_backend_name, self._ctx) or "?", "isolation": "none"}
        # "honoured", or why a timeout cannot stop a call into this library
        self.backend_info["deadlines"] = deadlines.created(self._ctx, self.backend_info["create"])
        counters.record(self, self._serial, before)
        return self

    # -- lifecycle ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ctx is None

    @property
    def isolated(self) -> bool:
        """Whether the library serving this session runs in a worker process (isolation="process")."""
        return False

    def close(self, timeout: float | None = None) -> None:
        """Frees the native context.  Idempotent, also from several threads.

        Raises CleanupFailed when the native free fails; the session then
        stays open (and counted) so close() can be retried, and the
        exception's ``session`` is this session, for a handler that no
        longer holds it.  A session never closed is freed by its finalizer;
        see the module docstring for what happens when that fails.

        timeout (default: the session's) bounds the free as far as the
        library lets it be stopped without leaving it half freed: a free
        that has not started releasing by then fails (CleanupFailed, cause
        OperationTimeout) and can be retried.
        """
        seconds = self._timeout(timeout)
        with self._close_lock:
            if self._ctx is None:
                return
            before = counters.snapshot()
            with deadline(seconds):
                rc = lib.bitnet_cpp_free_context(self._ctx)
            if rc:
                # Whatever stopped the free, the caller's question is "is it
                # freed?": CleanupFailed (the class says retry), naming the
                # cause's class when it was something else.
                params: dict[str, Any] = {"model_path": self.model_path}
                if rc not in (lib.BITNET_E_CLEANUP, lib.BITNET_E_INVALID_HANDLE):
                    params["cause"] = errors.error_for_code(rc).__name__
                hint = None
                if rc == lib.BITNET_E_TIMEOUT:
                    params["timeout"] = seconds
                    hint = ("nothing was freed and the session is still open: call close() again, with a longer "
                            "timeout= if the free needs more time")
                try:
                    raise_native(rc if rc == lib.BITNET_E_INVALID_HANDLE else lib.BITNET_E_CLEANUP, "close", None,
                                 parameters=params, hint=hint)
                except errors.CleanupFailed as exc:
                    exc.session = self
                    raise
            self._finalizer.detach()
            self._ctx = None
            counters.ended(self._serial, counters.CLOSED, before)
        if _pending:
            retry_pending()

    def cancel(self) -> None:
        """Stops the call running on this session (from another thread).

        The call raises OperationTimeout at its next step point; the session
        stays usable.  Does nothing when no call is running, or when the
        session is closed meanwhile (a stale handle cancels nothing).
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

    @property
    def handle(self) -> Any:
        """The native ``bitnet_context_t *`` (cffi), for callers of the C ABI
        (:mod:`pytest_bitnet.bridge.abi`); InferenceError once closed."""
        return self._live("handle")

    def _live(self, operation: str) -> Any:
        """The handle for a call about to start.

        Call it after every argument is converted (conversion can run user
        code: a str subclass's encode(), an object's __array__ or __int__,
        which may close this session) and right before the native call.
        """
        if self._ctx is None:
            raise errors.InferenceError(
                f"{operation} on a closed session: the session for {self.model_path!r} was "
                "closed; create a new one with BitnetSession.create()",
                errors.ErrorContext(operation=operation, parameters={"model_path": self.model_path}),
            )
        return self._ctx

    def _closed_meanwhile(self, operation: str, ctx: Any, exc: errors.InvalidHandle) -> errors.BitnetError:
        """What to raise for an InvalidHandle from a call that held ctx.

        The handle was valid at _live(); refused now, it was freed in
        between: the session was closed by another thread while the call
        started (the bridge's handles are never reused, so the call ran on
        nothing else).
        """
        # A close in progress has freed the handle before it clears _ctx:
        # its lock is held until both are done.
        if self._ctx is ctx and not self._close_lock.locked():
            return exc  # still ours and not closing: report the bridge's words
        return errors.InvalidHandle(
            f"{operation} on a closed session: the session for {self.model_path!r} was closed "
            "by another thread while the call was starting, and the call did nothing. Create a new one with "
            "BitnetSession.create(), and do not close a session other threads are calling",
            errors.ErrorContext(operation=operation, phase=exc.context.phase, parameters=dict(exc.context.parameters),
                                native_code=exc.context.native_code, native_message=exc.context.native_message),
        )

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else parse_timeout(timeout)

    def _served(self, ctx: Any, operation: str) -> None:
        label = served_label(ctx, operation)
        if label is not None:  # None: closed meanwhile; the call itself was served
            self.backend_info[operation] = label
            warn_if_fallback(label, operation)

    # -- work --------------------------------------------------------------

    def tokenize(
        self, prompt: str | bytes, add_bos: bool = True, parse_special: bool = False, timeout: float | None = None
    ) -> npt.NDArray[np.int32]:
        """Token ids of prompt (BOS first when add_bos), as int32."""
        raw = prompt_arg(prompt)
        bos, special = bool(add_bos), bool(parse_special)
        seconds = self._timeout(timeout)
        params = {"model_path": self.model_path, "prompt_bytes": len(raw), "add_bos": bos, "parse_special": special,
                  "timeout": seconds}
        ctx = self._live("tokenize")  # no user code from here to the native call

        def call(buf: Any, cap: int, n: Any, err: Any) -> int:
            return lib.bitnet_cpp_tokenize_with_context(ctx, raw, bos, special, buf, cap, n, err, len(err))

        try:
            with deadline(seconds):
                out = tokenize_two_pass(call, "tokenize", params, served_by=lambda: served_label(ctx, "tokenize"),
                                        socket="bitnet_cpp_tokenize_with_context")
        except errors.InvalidHandle as exc:
            raise self._closed_meanwhile("tokenize", ctx, exc) from None
        self._served(ctx, "tokenize")
        return out

    def detokenize_bytes(
        self, tokens: npt.ArrayLike, remove_special: bool = False, unparse_special: bool = False,
        timeout: float | None = None,
    ) -> bytes:
        """The bytes of tokens, as llama.cpp's llama_detokenize gives them.

        remove_special drops a leading BOS (and a trailing EOS) the
        vocabulary adds; unparse_special renders control tokens' text
        (without it they give nothing).  Bytes, because a token sequence can
        end inside a UTF-8 character (byte tokens <0xXX>).
        """
        toks = tokens_arg(tokens)
        drop, render = bool(remove_special), bool(unparse_special)
        seconds = self._timeout(timeout)
        ptr = ffi.from_buffer("int32_t[]", toks)
        n_tokens = int(toks.size)
        params = {"model_path": self.model_path, "n_tokens": n_tokens, "remove_special": drop,
                  "unparse_special": render, "timeout": seconds}
        ctx = self._live("detokenize")  # no user code from here to the native call

        def call(buf: Any, cap: int, n: Any, err: Any) -> int:
            return lib.bitnet_cpp_detokenize_with_context(ctx, ptr, n_tokens, drop, render, buf, cap, n, err, len(err))

        try:
            with deadline(seconds):
                out = bytes_two_pass(call, "detokenize", params, served_by=lambda: served_label(ctx, "detokenize"),
                                     socket="bitnet_cpp_detokenize_with_context")
        except errors.InvalidHandle as exc:
            raise self._closed_meanwhile("detokenize", ctx, exc) from None
        self._served(ctx, "detokenize")
        return out

    def detokenize(
        self, tokens: npt.ArrayLike, remove_special: bool = False, unparse_special: bool = False,
        timeout: float | None = None,
    ) -> str:
        """The text of tokens (detokenize_bytes decoded as UTF-8; an incomplete
        or invalid sequence becomes U+FFFD, as llama-cpp-python decodes it)."""
        return self.detokenize_bytes(tokens, remove_special, unparse_special, timeout).decode("utf-8", "replace")

    def evaluate(
        self, tokens: npt.ArrayLike, seq_id: int = 0, timeout: float | None = None, gpu: bool = False
    ) -> npt.NDArray[np.float32]:
        """Logits (n_tokens x n_vocab, float32) for tokens appended to seq_id.

        A failed or timed-out call leaves the sequence as it was.  gpu=True
        evaluates through the library's Socket 5 (bitnet_cpp_eval_gpu), on the
        layers offloaded at create (n_gpu_layers), sequence 0 only; a library
        without GPU support raises Unsupported naming what it reports.
        """
        toks = tokens_arg(tokens)
        seq_id = int_arg("evaluate", "seq_id", seq_id, minimum=0)
        if gpu is not False and gpu is not True:
            raise errors.InvalidArgument(
                f"evaluate: gpu must be True or False, got {gpu!r}", errors.ErrorContext(operation="evaluate")
            )
        if gpu and seq_id != 0:
            raise errors.InvalidArgument(
                f"evaluate: gpu=True evaluates sequence 0 only (Socket 5 has no seq_id), got seq_id={seq_id}; "
                "use seq_id=0, or gpu=False for other sequences",
                errors.ErrorContext(operation="evaluate", parameters={"seq_id": seq_id, "gpu": True}),
            )
        seconds = self._timeout(timeout)
        ptr = ffi.from_buffer("int32_t[]", toks)
        n_tokens = int(toks.size)
        operation = "evaluate (gpu)" if gpu else "evaluate"
        ctx = self._live(operation)  # no user code from here to the native call
        try:
            params = {"model_path": self.model_path, "n_tokens": n_tokens, "seq_id": seq_id,
                      "n_past": self._n_past(ctx, seq_id, known=False, operation=operation), "timeout": seconds}
            if gpu:
                params["gpu"] = True

                def call(buf: Any, cap: int, rows: Any, cols: Any, err: Any) -> int:
                    return lib.bitnet_cpp_eval_gpu(ctx, ptr, n_tokens, buf, cap, rows, cols, err, len(err))

                socket = "bitnet_cpp_eval_gpu"
                # Socket 5 is the native tier's own: no fallback serves it
                served_by = lambda: copied_text(lib.bitnet_bridge_backend_name, ctx)  # noqa: E731
            else:

                def call(buf: Any, cap: int, rows: Any, cols: Any, err: Any) -> int:
                    return lib.bitnet_cpp_eval_with_context(ctx, ptr, n_tokens, seq_id, buf, cap, rows, cols, err, len(err))

                socket = "bitnet_cpp_eval_with_context"
                served_by = lambda: served_label(ctx, "evaluate")  # noqa: E731
            with deadline(seconds):
                out = eval_two_pass(call, operation, params, served_by=served_by, socket=socket)
        except errors.InvalidHandle as exc:
            raise self._closed_meanwhile(operation, ctx, exc) from None
        if gpu:
            self.backend_info["evaluate_gpu"] = served_by() or "?"
        else:
            self._served(ctx, "evaluate")
        return out

    @property
    def capabilities(self) -> Capabilities:
        """What the library serving this session can use (its Socket 6 report)."""
        ctx = self._live("capabilities")
        try:
            return context_capabilities(ctx)
        except errors.InvalidHandle as exc:
            raise self._closed_meanwhile("capabilities", ctx, exc) from None

    def n_past(self, seq_id: int = 0) -> int:
        """Positions already evaluated in sequence seq_id."""
        seq_id = int_arg("n_past", "seq_id", seq_id, minimum=0)
        ctx = self._live("n_past")
        try:
            n = self._n_past(ctx, seq_id)
            assert n is not None
            return n
        except errors.InvalidHandle as exc:
            raise self._closed_meanwhile("n_past", ctx, exc) from None

    def _n_past(self, ctx: Any, seq_id: int, known: bool = True, operation: str = "n_past") -> int | None:
        # known=False: for an error's parameters, where a library without the
        # helper (one served through Socket 4) is no reason to fail the call
        out = ffi.new("int32_t *")
        rc = lib.bitnet_cpp_get_n_past(ctx, seq_id, out)
        if rc == lib.BITNET_E_UNSUPPORTED and not known:
            return None
        if rc:  # evaluate asks first: its error is evaluate's
            raise_native(rc, operation, None, parameters={"model_path": self.model_path, "seq_id": seq_id})
        return int(out[0])

    def reset(self, seq_id: int | None = None) -> None:
        """Forgets sequence seq_id (every sequence when None)."""
        seq = -1 if seq_id is None else int_arg("reset", "seq_id", seq_id, minimum=0)
        ctx = self._live("reset")
        rc = lib.bitnet_cpp_reset_context(ctx, seq)
        if rc:
            try:
                raise_native(rc, "reset", None, parameters={"model_path": self.model_path, "seq_id": seq_id if seq_id is None else seq})
            except errors.InvalidHandle as exc:
                raise self._closed_meanwhile("reset", ctx, exc) from None
