"""The compiled bridge and the helpers every native call shares.

Native calls go through cffi's API mode, which releases the GIL for the
duration of the C call.  Nothing here knows about pytest or fault_inject.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Mapping, NoReturn

from . import errors
from ._bridge import ffi, lib  # built by pip install (cffi_modules)
from .counters import COUNTERS
from .validate import BACKENDS, path_arg

__all__ = ["ffi", "lib", "ERR_LEN", "Options", "bundled_library", "new_err_buffer", "raise_native", "native_message"]

# Size of the per-call error buffer handed to native code.  Messages longer
# than this are truncated there and recovered whole from the thread's last
# error (bitnet_cpp_get_last_error).
ERR_LEN = 512


def _code_classes() -> Mapping[int, type[errors.BitnetError]]:
    """Code -> class from the native error table (bitnet_errors.def), by class name."""
    table: dict[int, type[errors.BitnetError]] = {}
    info = ffi.new("bitnet_error_info_t *")
    for i in range(lib.bitnet_bridge_error_count()):
        lib.bitnet_bridge_error_info(i, info)
        name = ffi.string(info.class_name).decode()
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.BitnetError)):
            raise ImportError(f"native error {ffi.string(info.name).decode()} names class {name!r}, "
                              "which pytest_bitnet.bridge.errors does not define")
        table[int(info.code)] = cls
    return table


CODE_CLASSES: Final = _code_classes()


def _check_tables() -> None:
    # Facts defined natively and mirrored here by name: refuse to load when
    # they disagree rather than misreport later.
    fields = tuple(name for name, _ in ffi.typeof("bitnet_counters_t").fields)
    if fields != COUNTERS:
        raise ImportError(f"pytest_bitnet.bridge.counters.COUNTERS {COUNTERS} differs from bitnet_counters_t {fields}")
    info = ffi.new("bitnet_backend_info_t *")
    native = []
    for i in range(lib.bitnet_bridge_backend_count()):
        lib.bitnet_bridge_backend_info(i, info)
        native.append(ffi.string(info.name).decode())
    if tuple(native) != BACKENDS:
        raise ImportError(f"pytest_bitnet.bridge.validate.BACKENDS {BACKENDS} differs from bitnet_backends.def {tuple(native)}")


_check_tables()


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
from . import llama as _llama  # noqa: E402  (needs lib)

LLAMA = _llama.configure(lib, ffi)


class Options:
    """bitnet_bridge_options with the strings it points to kept alive.

    backend None: the run-wide default (settings.configure), else the
    native bridge's own (BITNET_BACKEND, else reference).
    """

    __slots__ = ("cdata", "_keep", "backend", "library_path")

    def __init__(self, backend: str | None = None, library_path: str | os.PathLike[str] | None = None) -> None:
        from .settings import current

        self.cdata = ffi.new("bitnet_bridge_options *")
        self._keep: list[Any] = []
        self.cdata.force_fallback = -1
        if backend is None:
            backend = current().backend
        if backend is not None and not isinstance(backend, str):
            raise errors.InvalidArgument(f"backend must be a str, got {type(backend).__name__}", errors.ErrorContext(operation="validate"))
        # the name itself is checked natively, with the list of valid ones
        self.backend = backend
        self.library_path = None if library_path is None else os.fsdecode(path_arg(library_path))
        if self.backend is not None:
            self.cdata.backend = self._str(self.backend.encode())
        if self.library_path is not None:
            self.cdata.library_path = self._str(os.fsencode(self.library_path))

    def _str(self, raw: bytes) -> Any:
        buf = ffi.new("char[]", raw)
        self._keep.append(buf)
        return buf


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
    text = f"{where} failed: {errors.apply_hints(message) if message else 'no message from native code'}"
    if hint:
        text += f"; {hint}"
    if detail:
        text += f" [{detail}]"
    cls = errors.error_for_code(code)
    if cls is errors.OperationTimeout:
        raise errors.OperationTimeout(text, ctx, duration=params.get("timeout"))
    raise cls(text, ctx)

