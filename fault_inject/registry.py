"""The registry of fault points, as the native library reports it, and the
one spec validator.

Points are declared once, natively (native/include/points.def), and listed
here from the library; so are the error codes and the engine's limits.
:func:`validate` checks a spec's text (or parsed :class:`~fault_inject.spec.Spec`)
against all three and returns the :class:`~fault_inject.spec.Resolved` form
that :func:`fault_inject.arm` takes as it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final, Mapping

from pytest_bitnet.bridge import errors as bridge_errors
from pytest_bitnet.bridge import faults as native

from . import spec as _spec
from .spec import Limits, Resolved, Spec

__all__ = [
    "InjectionNotCompiled",
    "NOT_COMPILED",
    "PointInfo",
    "UnknownPoint",
    "compiled_in",
    "error_codes",
    "limits",
    "lookup",
    "points",
    "validate",
]

NOT_COMPILED: Final = (
    "fault injection is not compiled in: pytest_bitnet.bridge._bridge was built with BITNET_FAULTS=0 "
    "(BN_NO_FAULTS), which removes every fault point; rebuild without it (pip install -e .) to inject faults"
)


class InjectionNotCompiled(RuntimeError):
    """The native bridge was built without fault points (BITNET_FAULTS=0)."""


class UnknownPoint(ValueError):
    """A point name that is not registered (the message lists the closest)."""


@dataclass(frozen=True)
class PointInfo:
    """A registered fault point."""

    name: str
    description: str
    default_code: int
    default_error: str  # name of default_code, e.g. "BITNET_E_INFERENCE"
    actions: frozenset[str]  # the actions it accepts
    index: int  # position in the native registry


# An injected failure's message says how to stop it in this package's terms.
bridge_errors.add_hint("disarm the point to stop it", replace="disarm the point (fault_inject.disarm_all(), or unset BITNET_INJECT) to stop it")
bridge_errors.add_hint("' must be armed there", append="arm it through the bridge that loads the library (fault_inject.arm, BITNET_INJECT)")


def _check_action_table() -> None:
    # The grammar's action names and the native enum must agree.
    if tuple(native.ACTION_IDS) != _spec.ACTIONS or list(native.ACTION_IDS.values()) != list(range(len(_spec.ACTIONS))):
        raise ImportError(f"fault_inject.spec.ACTIONS {_spec.ACTIONS} disagrees with bitnet_fault.h's {dict(native.ACTION_IDS)}")


_check_action_table()


def compiled_in() -> bool:
    """False when the bridge was built with BITNET_FAULTS=0 (no points)."""
    return native.compiled_in()


def require_compiled() -> None:
    """Raises InjectionNotCompiled in a BITNET_FAULTS=0 build."""
    if not compiled_in():
        raise InjectionNotCompiled(NOT_COMPILED)


def error_codes() -> Mapping[str, int]:
    """Native error code names (``BITNET_E_OOM``...) and their values."""
    return native.error_codes()


def code_name(code: int) -> str:
    return next((n for n, v in error_codes().items() if v == code), str(code))


@functools.cache
def limits() -> Limits:
    """The native engine's limits (bitnet_fault.h)."""
    lim = native.LIMITS
    return Limits(terms=lim["max_terms"], name=lim["max_name"], count=lim["max_count"],
                  delay_ms=lim["max_delay_ms"], grow=lim["max_grow"])


# The registry as last read, keyed by the native points it came from: a
# library may register points at any time (an interposing libllama when it
# is attached), so every call asks the bridge, and rebuilds only when the
# bridge has more points than last time.
_read: tuple[tuple[object, ...], tuple[PointInfo, ...], Mapping[str, PointInfo]] = ((), (), {})


def _current() -> tuple[tuple[PointInfo, ...], Mapping[str, PointInfo]]:
    global _read
    source = native.points()
    if source is not _read[0]:
        pts = tuple(PointInfo(p.name, p.description, p.default_code, code_name(p.default_code), p.actions, p.index)
                    for p in source)
        _read = (source, pts, {p.name: p for p in pts})
    return _read[1], _read[2]


def points() -> tuple[PointInfo, ...]:
    """Every registered point, in registry order (readable in any build):
    points.def's, then those registered at run time so far."""
    return _current()[0]


def by_name() -> Mapping[str, PointInfo]:
    return _current()[1]


def lookup(name: str) -> PointInfo:
    """The registered point `name`; UnknownPoint naming the closest otherwise."""
    try:
        return by_name()[name]
    except KeyError:
        near = _spec.closest_names(name, by_name())
        hint = f"; closest: {', '.join(repr(n) for n in near)}" if near else ""
        raise UnknownPoint(f"unknown fault point {name!r}{hint} (fault_inject.points() lists every point)") from None


def validate(spec: str | Spec | Resolved, *, source: str | None = None) -> Resolved:
    """The one spec validator: parses (if text) and checks against the registry.

    Raises FaultSpecError (a ValueError) with the column and what was
    expected.  A Resolved spec is returned as it is.
    """
    if isinstance(spec, Resolved):
        return spec
    parsed = spec if isinstance(spec, Spec) else _spec.parse(spec, source=source)
    return _spec.resolve(parsed, by_name(), error_codes(), limits(), source=source)
