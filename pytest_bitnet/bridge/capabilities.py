"""What the native library serving the calls can use (Socket 6).

Answered by that library, never by the bridge: ``capabilities()`` asks the
backend the options select (``backend=`` / ``library_path=``, else the
run-wide default, else ``BITNET_BACKEND``), loading it if need be;
``BitnetSession.capabilities`` asks the library that serves the session.
The llama backend answers from llama.cpp's own report (GPU offload support,
its backend devices).  A library without Socket 6 raises ``Unsupported``
(what it can use is unknown, not False); stub mode raises CppNotAvailable.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ._native import Options, ffi, lib, raise_native

__all__ = ["Capabilities", "capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """CPU features and GPU runtimes the native library can use."""

    has_avx2: bool
    has_avx512: bool
    has_neon: bool
    has_cuda: bool
    has_metal: bool
    has_hip: bool

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def _from_native(cls, caps: Any) -> Capabilities:
        # the bridge has checked every field is 0 or 1
        return cls(**{f: bool(getattr(caps, f)) for f in cls.__dataclass_fields__})


def capabilities(backend: str | None = None, library_path: str | os.PathLike[str] | None = None) -> Capabilities:
    """What the backend the options select can use (as BitnetSession.create would select it)."""
    opts = Options(backend, library_path)
    caps = ffi.new("bitnet_capabilities_t *")
    rc = lib.bitnet_bridge_get_capabilities(opts.cdata, caps)
    if rc:
        params: dict[str, Any] = {}
        if opts.backend is not None:
            params["backend"] = opts.backend
        if opts.library_path is not None:
            params["library_path"] = opts.library_path
        raise_native(rc, "capabilities", None, parameters=params)
    return Capabilities._from_native(caps)


def context_capabilities(ctx: Any, operation: str = "capabilities") -> Capabilities:
    """What the library serving a native context can use (BitnetSession.capabilities)."""
    caps = ffi.new("bitnet_capabilities_t *")
    rc = lib.bitnet_bridge_context_capabilities(ctx, caps)
    if rc:
        raise_native(rc, operation, None)
    return Capabilities._from_native(caps)
