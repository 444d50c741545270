"""The C ABI itself, for callers that test it below the Python API.

A Python caller never hands the bridge a too-small buffer or a raw handle;
a C caller of ``bitnet.h`` does.  Tests of that contract (the catalog's
E14, E19, E24, E26) call the socket functions directly::

    from pytest_bitnet.bridge import abi
    err = abi.ffi.new("char[]", 512)
    rc = abi.lib.bitnet_cpp_tokenize_with_context(session.handle, b"x", 1, 0, abi.ffi.NULL, 0, n, err, len(err))
    abi.raise_for_code(rc, "tokenize", err)      # what the Python API raises for rc

``ffi`` / ``lib`` are the compiled cffi module; ``Options`` builds a
``bitnet_bridge_options`` (backend, library_path) for the ``bitnet_bridge_*``
entry points.
"""

from __future__ import annotations

from typing import Any

from ._native import ERR_LEN, Options, bundled_library, ffi, lib, raise_native

__all__ = ["ERR_LEN", "Options", "bundled_library", "ffi", "lib", "raise_for_code", "last_error"]


def raise_for_code(rc: int, operation: str, err: Any = None) -> None:
    """Raises what the Python API raises for native code rc (nothing for 0).

    err: the call's error buffer, or None to take the whole message from
    the thread's last error.
    """
    if rc:
        raise_native(rc, operation, err)


def last_error() -> str:
    """The calling thread's last native error message, whole."""
    n = lib.bitnet_cpp_get_last_error(ffi.NULL, 0)
    buf = ffi.new("char[]", n + 1)
    lib.bitnet_cpp_get_last_error(buf, n + 1)
    return str(ffi.string(buf).decode("utf-8", "replace"))
