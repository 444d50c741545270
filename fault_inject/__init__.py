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
    resolved = fi.validate("eval.fill=fail")        # check once, arm many times

Modules: :mod:`~fault_inject.spec` (the grammar), :mod:`~fault_inject.registry`
(the points, the one validator), :mod:`~fault_inject.arming` (handles),
:mod:`~fault_inject.events` (firings), :mod:`~fault_inject.env`
(``BITNET_INJECT``), ``fault_inject.sweep`` (the module), :mod:`~fault_inject.catalog`,
:mod:`~fault_inject.matrix` and :mod:`~fault_inject.interpose` (fault points and
counters in unmodified llama.cpp apps: imported only when asked for).  If the environment variable
``BITNET_INJECT`` holds a spec, importing this package arms it (seed from
``BITNET_INJECT_SEED``); ``python -m fault_inject run script.py`` runs a
program that way.  Nothing here depends on pytest, and only the public
modules of :mod:`pytest_bitnet.bridge` are used.
"""

from __future__ import annotations

from .arming import (
    Armed,
    DisarmReport,
    FaultStateError,
    NeverHit,
    NeverHitWarning,
    PointReport,
    arm,
    armed,
    derive_seed,
    disarm,
    disarm_all,
    fired,
    hits,
    inject,
    parse_seed,
)
from .env import arm_from_env, release_env
from .events import FireEvent, on_fire
from .registry import InjectionNotCompiled, PointInfo, UnknownPoint, compiled_in, error_codes, points, validate
from .spec import FaultSpecError, Resolved, Spec, parse
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
    "Resolved",
    "Spec",
    "SweepFailed",
    "SweepReport",
    "UnknownPoint",
    "arm",
    "arm_from_env",
    "armed",
    "compiled_in",
    "derive_seed",
    "disarm",
    "disarm_all",
    "error_codes",
    "fired",
    "hits",
    "inject",
    "on_fire",
    "parse",
    "parse_seed",
    "points",
    "release_env",
    "sweep",
    "validate",
]

arm_from_env()
