"""fault_inject: arm the native bridge's fault points, observe them, sweep them.

::

    import fault_inject as fi

    with fi.inject("tokenize.fill=fail"):          # armed for the block
        ...                                         # -> InferenceError "FILL PHASE"
    armed = fi.arm("alloc=2*off->1*oom", seed=7)    # or keep the handle
    armed.hits("alloc"), armed.fired("alloc")
    report = armed.disarm()                         # report.never_hit, report.points[...]
    fi.sweep("alloc", body, fork=True).raise_if_failed()
    fi.points()                                     # the registry: names, descriptions, codes

The grammar is in :mod:`fault_inject.spec`; arming and observing in
:mod:`fault_inject.control`; sweeps in :mod:`fault_inject.sweep`.  If the
environment variable ``BITNET_INJECT`` holds a spec, importing this package
arms it (seed from ``BITNET_INJECT_SEED``); ``python -m fault_inject run
script.py`` runs a program that way.  Nothing here depends on pytest.
"""

from __future__ import annotations

from .control import (
    Armed,
    DisarmReport,
    FaultStateError,
    FireEvent,
    InjectionNotCompiled,
    NeverHit,
    NeverHitWarning,
    PointInfo,
    PointReport,
    UnknownPoint,
    arm,
    arm_from_env,
    armed,
    compiled_in,
    disarm,
    disarm_all,
    error_codes,
    fired,
    hits,
    inject,
    on_fire,
    points,
    release_env,
)
from .spec import FaultSpecError, Spec, parse
from .sweep import Iteration, SweepFailed, SweepReport, sweep

__all__ = [
    "Armed",
    "DisarmReport",
    "FaultSpecError",
    "FaultStateError",
    "FireEvent",
    "InjectionNotCompiled",
    "Iteration",
    "NeverHit",
    "NeverHitWarning",
    "PointInfo",
    "PointReport",
    "Spec",
    "SweepFailed",
    "SweepReport",
    "UnknownPoint",
    "arm",
    "arm_from_env",
    "armed",
    "compiled_in",
    "disarm",
    "disarm_all",
    "error_codes",
    "fired",
    "hits",
    "inject",
    "on_fire",
    "parse",
    "points",
    "release_env",
    "sweep",
]

arm_from_env()
