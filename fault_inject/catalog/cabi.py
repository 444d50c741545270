"""Tools for the entries (and tests) that call the C ABI below the Python API.

A Python caller never hands the bridge a too-small buffer, a raw handle or
a short error buffer; a C caller of ``bitnet.h`` does (E14, E19, E24, E26).
These helpers build such calls through cffi and turn a returned code into
what the Python API raises.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Final, Iterator

from pytest_bitnet.bridge.abi import ffi, lib, raise_for_code

__all__ = ["CANARY", "err_buffer", "guarded", "native_context", "raise_for_code", "tokenize_on_handle"]

#: A value no real token id or logit takes: whatever still holds it was not written.
CANARY: Final = 0x7EADBEEF


def err_buffer(size: int = 512) -> Any:
    """A C error buffer (char[size]) for the err/err_len arguments."""
    return ffi.new("char[]", size)


def guarded(ctype: str, n: int, guard: int, fill: Any) -> Any:
    """A C array of n + guard elements, all set to fill.

    Pass n as the capacity: the guard elements after it must still hold
    fill after the call, or the callee wrote past what it was given.
    """
    buf = ffi.new(f"{ctype}[]", n + guard)
    for i in range(n + guard):
        buf[i] = fill
    return buf


@contextlib.contextmanager
def native_context(model: str | os.PathLike[str], n_ctx: int = 64) -> Iterator[Any]:
    """A raw ``bitnet_context_t *`` from bitnet_cpp_init_context, freed on exit."""
    out = ffi.new("bitnet_context_t **")
    err = err_buffer()
    raise_for_code(lib.bitnet_cpp_init_context(out, os.fsencode(model), n_ctx, 0, err, len(err)), "create", err)
    try:
        yield out[0]
    finally:
        lib.bitnet_cpp_free_context(out[0])


def tokenize_on_handle(handle: Any) -> None:
    """bitnet_cpp_tokenize_with_context on a raw handle, raising what the session layer raises."""
    n = ffi.new("int32_t *")
    err = err_buffer()
    raise_for_code(lib.bitnet_cpp_tokenize_with_context(handle, b"x", 1, 0, ffi.NULL, 0, n, err, len(err)), "tokenize", err)
