"""The catalog of the 52 error paths (DESIGN.md), as data.

::

    from fault_inject.catalog import CATALOG, run_entry
    e = CATALOG["E21"]           # id, category, title, inject, expect, fragments, run
    e.inject, e.expect           # 'tokenize.fill=fail', 'InferenceError'
    run_entry(e, "dlopen", models=Path("models"))   # Outcome(result='pass', ...)

Each entry is declared once, in the module of its category, as data plus
the function that performs its operation; the matrix
(``python -m fault_inject matrix``) and the readable tests under
``tests/catalog/`` both read it from here.
"""

from __future__ import annotations

from . import buffers, cleanup, fallback, inference, library, messages, model, runtime  # noqa: F401  (they register)
from ._core import (
    BACKENDS,
    CATALOG,
    CATEGORIES,
    FAIL,
    NOT_APPLICABLE,
    PASS,
    STUB_UNAVAILABLE,
    Entry,
    NotApplicable,
    Outcome,
    Scenario,
    ScenarioFailed,
    column_unavailable,
    run_entry,
)

__all__ = [
    "BACKENDS",
    "CATALOG",
    "CATEGORIES",
    "FAIL",
    "NOT_APPLICABLE",
    "PASS",
    "STUB_UNAVAILABLE",
    "Entry",
    "NotApplicable",
    "Outcome",
    "Scenario",
    "ScenarioFailed",
    "column_unavailable",
    "run_entry",
]

_ids = sorted(CATALOG)
if _ids != [f"E{i:02d}" for i in range(1, 53)]:  # pragma: no cover - a registration slip
    raise ImportError(f"the catalog must hold E01..E52 exactly once; it holds {_ids}")
_entries = sorted(CATALOG.items())  # id order, whatever the import order
CATALOG.clear()
CATALOG.update(_entries)
del _ids, _entries
