"""BitnetSession: one native context, created once and called many times.

The model stays loaded and each sequence keeps its KV cache, so repeated
calls pay no load cost.  Results are numpy arrays that native code fills in
place.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

from . import counters, errors, native_log
from ._calls import deadline, eval_two_pass, served_label, tokenize_two_pass, warn_if_fallback
from ._native import Options, ffi, lib, native_message, new_err_buffer, raise_native
from .settings import default_timeout
from .validate import int_arg, parse_timeout, path_arg, prompt_arg, tokens_arg

__all__ = ["BitnetSession"]

log = logging.getLogger("pytest_bitnet")

native_log.install()


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
    session's, else the run-wide default (settings.configure), else
    BITNET_CPP_TIMEOUT, else 30 s; math.inf disables it, 0 is already past.
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
        discovery, or library_path), "llama", "stub"; default BITNET_BACKEND,
        else "reference".  timeout bounds the load and is the session's default.
        """
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
        with deadline(session_timeout):
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
        if counters.tracking():
            counters.record(self)
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

    @property
    def handle(self) -> Any:
        """The native ``bitnet_context_t *`` (cffi), for callers of the C ABI
        (:mod:`pytest_bitnet.bridge.abi`); InferenceError once closed."""
        return self._live("handle")

    def _live(self, operation: str) -> Any:
        if self._ctx is None:
            raise errors.InferenceError(
                f"{operation} on a closed session: the session for {self.model_path!r} was "
                "closed; create a new one with BitnetSession.create()",
                errors.ErrorContext(operation=operation, parameters={"model_path": self.model_path}),
            )
        return self._ctx

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else parse_timeout(timeout)

    def _served(self, ctx: Any, operation: str) -> None:
        text = served_label(ctx, operation)
        if text is not None:
            self.backend_info[operation] = text
            warn_if_fallback(text, operation)

    # -- work --------------------------------------------------------------

    def tokenize(
        self, prompt: str | bytes, add_bos: bool = True, parse_special: bool = False, timeout: float | None = None
    ) -> npt.NDArray[np.int32]:
        """Token ids of prompt (BOS first when add_bos), as int32."""
        ctx = self._live("tokenize")
        raw = prompt_arg(prompt)
        seconds = self._timeout(timeout)
        params = {"prompt_bytes": len(raw), "add_bos": bool(add_bos), "parse_special": bool(parse_special), "timeout": seconds}

        def call(buf: Any, cap: int, n: Any, err: Any) -> int:
            return lib.bitnet_cpp_tokenize_with_context(ctx, raw, bool(add_bos), bool(parse_special), buf, cap, n, err, len(err))

        with deadline(seconds):
            out = tokenize_two_pass(call, "tokenize", params, served_by=lambda: served_label(ctx, "tokenize"))
        self._served(ctx, "tokenize")
        return out

    def evaluate(self, tokens: npt.ArrayLike, seq_id: int = 0, timeout: float | None = None) -> npt.NDArray[np.float32]:
        """Logits (n_tokens x n_vocab, float32) for tokens appended to seq_id.

        A failed or timed-out call leaves the sequence as it was.
        """
        ctx = self._live("evaluate")
        toks = tokens_arg(tokens)
        seq_id = int_arg("evaluate", "seq_id", seq_id, minimum=0)
        seconds = self._timeout(timeout)
        params = {"n_tokens": int(toks.size), "seq_id": seq_id, "n_past": self.n_past(seq_id), "timeout": seconds}
        ptr = ffi.from_buffer("int32_t[]", toks)

        def call(buf: Any, cap: int, rows: Any, cols: Any, err: Any) -> int:
            return lib.bitnet_cpp_eval_with_context(ctx, ptr, toks.size, seq_id, buf, cap, rows, cols, err, len(err))

        with deadline(seconds):
            out = eval_two_pass(call, "evaluate", params, served_by=lambda: served_label(ctx, "evaluate"))
        self._served(ctx, "evaluate")
        return out

    def n_past(self, seq_id: int = 0) -> int:
        """Positions already evaluated in sequence seq_id."""
        ctx = self._live("n_past")
        out = ffi.new("int32_t *")
        rc = lib.bitnet_cpp_get_n_past(ctx, int_arg("n_past", "seq_id", seq_id, minimum=0), out)
        if rc:
            raise_native(rc, "n_past", None, parameters={"seq_id": seq_id})
        return int(out[0])

    def reset(self, seq_id: int | None = None) -> None:
        """Forgets sequence seq_id (every sequence when None)."""
        ctx = self._live("reset")
        seq = -1 if seq_id is None else int_arg("reset", "seq_id", seq_id, minimum=0)
        rc = lib.bitnet_cpp_reset_context(ctx, seq)
        if rc:
            raise_native(rc, "reset", None, parameters={"seq_id": seq_id})
