"""The compiled bridge and the helpers every native call shares.

Native calls go through cffi's API mode, which releases the GIL for the
duration of the C call.  Nothing here knows about pytest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NoReturn

from . import errors
from ._bridge import ffi, lib  # built by pip install (cffi_modules)

__all__ = ["ffi", "lib", "ERR_LEN", "new_err_buffer", "raise_native", "native_message"]

# Size of the per-call error buffer handed to native code.  Messages longer
# than this are truncated there and recovered whole from the thread's last
# error (bitnet_cpp_get_last_error).
ERR_LEN = 512


def _check_code_table() -> None:
    # The codes are defined in bitnet.h; the class table must cover them all.
    native = {getattr(lib, name) for name in dir(lib) if name.startswith("BITNET_E_") and name != "BITNET_E_MIN"}
    missing = native - set(errors.CODE_CLASSES)
    if missing:
        raise ImportError(f"pytest_bitnet.errors has no class for native codes {sorted(missing)}")


_check_code_table()


def bundled_library() -> Path | None:
    """The reference engine built as a standalone libbitnet (setup.py)."""
    found = sorted(Path(__file__).parent.glob("_libbitnet*.so"))
    return found[0] if found else None


# dlopen mode's last resort when BITNET_CPP_LIBDIR / BITNET_CPP_DIR are unset.
_bundled = bundled_library()
if _bundled is not None:
    lib.bitnet_bridge_set_bundled_library(str(_bundled).encode())


# llama.cpp (backend "llama", and the fallback tier when available): the
# adapter is found or built now, so the bridge can route to it.
from . import _llama  # noqa: E402  (needs lib)

LLAMA = _llama.configure(lib, ffi)


def new_err_buffer() -> Any:
    return ffi.new("char[]", ERR_LEN)


def native_message(err: Any) -> tuple[str, bool]:
    """The native message of a failed call and whether the buffer cut it.

    Must run on the thread that made the failed call (the last error is
    thread-local).
    """
    text = ffi.string(err).decode("utf-8", "replace") if err is not None else ""
    full_len = lib.bitnet_cpp_get_last_error(ffi.NULL, 0)
    if err is None or len(text.encode()) >= ERR_LEN - 1 or not text:
        if full_len > 0:
            buf = ffi.new("char[]", full_len + 1)
            lib.bitnet_cpp_get_last_error(buf, full_len + 1)
            full = ffi.string(buf).decode("utf-8", "replace")
            return full, bool(text) and len(full) > len(text)
    return text, False


def raise_native(
    code: int,
    operation: str,
    err: Any = None,
    *,
    phase: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    hint: str | None = None,
) -> NoReturn:
    """Raises the exception class for a native code with a full context.

    hint: advice the caller's layer can give and the native side cannot
    (it knows the arguments), appended to the native message.
    """
    message, truncated = native_message(err)
    params = dict(parameters or {})
    if truncated:
        params["native_message_truncated"] = True
    ctx = errors.ErrorContext(
        operation=operation,
        phase=phase,
        parameters=params,
        native_code=code,
        native_message=message,
    )
    where = f"{operation} ({phase})" if phase else operation
    detail = ", ".join(f"{k}={v!r}" for k, v in params.items())
    text = f"{where} failed: {message or 'no message from native code'}"
    if hint:
        text += f"; {hint}"
    if detail:
        text += f" [{detail}]"
    cls = errors.error_for_code(code)
    if cls is errors.OperationTimeout:
        raise errors.OperationTimeout(text, ctx, duration=params.get("timeout"))
    raise cls(text, ctx)
