"""What the native library can use on this machine (Socket 6)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ._native import ffi, lib, raise_native

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


def capabilities() -> Capabilities:
    caps = ffi.new("bitnet_capabilities_t *")
    rc = lib.bitnet_cpp_get_capabilities(caps)
    if rc:
        raise_native(rc, "capabilities")
    return Capabilities(**{f: bool(getattr(caps, f)) for f in Capabilities.__dataclass_fields__})
