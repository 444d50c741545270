"""The per-call functions: load, work and free on every call (seed 003's MVP path)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from ._calls import deadline, eval_two_pass, percall_served_label, tokenize_two_pass
from ._native import Options, ffi, lib
from .settings import default_timeout, isolation_for
from .validate import int_arg, parse_timeout, path_arg, prompt_arg, tokens_arg

__all__ = ["tokenize", "detokenize", "detokenize_bytes", "evaluate"]


def tokenize(
    model_path: str | os.PathLike[str],
    prompt: str | bytes,
    add_bos: bool = True,
    parse_special: bool = False,
    timeout: float | None = None,
    backend: str | None = None,
    library_path: str | os.PathLike[str] | None = None,
    isolation: str | None = None,
) -> npt.NDArray[np.int32]:
    """Loads the model's vocabulary, tokenizes prompt, frees everything.

    backend / library_path / isolation: as for BitnetSession.create (an
    isolated call starts a worker of its own and ends it).
    """
    raw_path, raw = path_arg(model_path), prompt_arg(prompt)
    seconds = default_timeout() if timeout is None else parse_timeout(timeout)
    opts = Options(backend, library_path)
    params = {"model_path": os.fsdecode(raw_path), "prompt_bytes": len(raw), "add_bos": bool(add_bos), "timeout": seconds}
    if isolation_for(isolation) == "process":
        return _isolated("tokenize", "tokenize (per-call)", (os.fsdecode(raw_path), raw, bool(add_bos), bool(parse_special)),
                         seconds, opts, params)

    def call(buf: Any, cap: int, n: Any, err: Any) -> int:
        return lib.bitnet_bridge_percall_tokenize(opts.cdata, raw_path, raw, bool(add_bos), bool(parse_special), buf, cap, n, err, len(err))

    with deadline(seconds):
        return tokenize_two_pass(call, "tokenize (per-call)", params, served_by=percall_served_label,
                                 socket="crossval_bitnet_tokenize")


def evaluate(
    model_path: str | os.PathLike[str],
    tokens: npt.ArrayLike,
    n_ctx: int = 512,
    timeout: float | None = None,
    backend: str | None = None,
    library_path: str | os.PathLike[str] | None = None,
    isolation: str | None = None,
) -> npt.NDArray[np.float32]:
    """Loads the model, evaluates tokens from an empty context, frees everything.

    backend / library_path / isolation: as for BitnetSession.create.
    """
    raw_path, toks = path_arg(model_path), tokens_arg(tokens)
    n_ctx = int_arg("evaluate", "n_ctx", n_ctx, minimum=0)
    seconds = default_timeout() if timeout is None else parse_timeout(timeout)
    opts = Options(backend, library_path)
    params = {"model_path": os.fsdecode(raw_path), "n_tokens": int(toks.size), "n_ctx": n_ctx, "timeout": seconds}
    if isolation_for(isolation) == "process":
        return _isolated("evaluate", "evaluate (per-call)", (os.fsdecode(raw_path), toks.tobytes()), seconds, opts,
                         {**params}, n_ctx=n_ctx)
    ptr = ffi.from_buffer("int32_t[]", toks)

    def call(buf: Any, cap: int, rows: Any, cols: Any, err: Any) -> int:
        return lib.bitnet_bridge_percall_eval(opts.cdata, raw_path, ptr, toks.size, n_ctx, buf, cap, rows, cols, err, len(err))

    with deadline(seconds):
        return eval_two_pass(call, "evaluate (per-call)", params, served_by=percall_served_label,
                             socket="crossval_bitnet_eval_with_tokens")


def _isolated(fn: str, operation: str, args: tuple[Any, ...], seconds: float, opts: Options, params: dict[str, Any],
              **kwargs: Any) -> Any:
    from .isolation.session import library_label, percall

    library = library_label(opts.backend, opts.library_path)
    return percall(fn, operation, args, {**kwargs, "timeout": seconds, "backend": opts.backend,
                                         "library_path": opts.library_path}, seconds, params, library)


def detokenize_bytes(
    model_path: str | os.PathLike[str],
    tokens: npt.ArrayLike,
    remove_special: bool = False,
    unparse_special: bool = False,
    timeout: float | None = None,
    backend: str | None = None,
    library_path: str | os.PathLike[str] | None = None,
    isolation: str | None = None,
) -> bytes:
    """Loads the model, detokenizes tokens (BitnetSession.detokenize_bytes), frees everything.

    The socket ABI has no per-call detokenize: this is a session of one call
    (the whole model is loaded), so it behaves exactly as the session's.
    """
    from .session import BitnetSession  # the session module installs the log sink

    toks = tokens_arg(tokens)
    with BitnetSession.create(model_path, n_ctx=1, timeout=timeout, backend=backend, library_path=library_path,
                              isolation=isolation) as s:
        return s.detokenize_bytes(toks, remove_special, unparse_special)


def detokenize(
    model_path: str | os.PathLike[str],
    tokens: npt.ArrayLike,
    remove_special: bool = False,
    unparse_special: bool = False,
    timeout: float | None = None,
    backend: str | None = None,
    library_path: str | os.PathLike[str] | None = None,
    isolation: str | None = None,
) -> str:
    """detokenize_bytes decoded as UTF-8 (U+FFFD for an incomplete sequence)."""
    return detokenize_bytes(model_path, tokens, remove_special, unparse_special, timeout, backend,
                            library_path, isolation).decode("utf-8", "replace")
