"""The pytest side of the error-path matrix: one item per (entry, backend) cell.

Loaded with ``-p pytest_bitnet.matrix`` (``python -m fault_inject matrix -n N``
does so, with pytest-xdist spreading the items over N workers)::

    pytest -p pytest_bitnet.matrix --bitnet-matrix reference,dlopen -n 2 --junitxml=m.xml

The cells are collected beside the session's own tests, as
``bitnet-matrix::E01[reference]`` ...: counted, reported and selected
(``-k``, ``--deselect``) like any test.  A run-wide fault spec of the bitnet
plugin is refused with them (every cell arms its own faults).

Each item runs :func:`fault_inject.catalog.run_entry` and passes, fails
with the entry's reason, or is skipped when the entry does not apply to the
backend.  The outcome travels to the controller on the report
(``user_properties`` survive xdist), which writes them all to
``--bitnet-matrix-out`` as JSON; a worker crash becomes a failed cell there.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Final

import pytest

_PROPERTY: Final = "bitnet_matrix_cell"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bitnet-matrix", "bitnet error-path matrix")
    group.addoption("--bitnet-matrix", metavar="BACKENDS", help="run the catalog's cells on these backends (comma-separated)")
    group.addoption("--bitnet-matrix-ids", metavar="IDS", default="", help="only these entries (E01,E02,...)")
    group.addoption("--bitnet-matrix-models", metavar="DIR", help="directory of the generated models (default: a temporary one)")
    group.addoption("--bitnet-matrix-library", metavar="PATH", help="the library the dlopen column loads (default: discovery)")
    group.addoption("--bitnet-matrix-out", metavar="FILE", help="write every cell's outcome here (JSON list)")
    group.addoption("--bitnet-matrix-timeout", metavar="SECONDS",
                    help="default deadline of every native call in each cell ('none': no deadline)")
    group.addoption("--bitnet-matrix-isolation", metavar="MODE", choices=("none", "process"),
                    help="where each cell's sessions run: none | process (a worker process each)")


class MatrixCell(pytest.Item):
    def __init__(self, *, entry_id: str, backend: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.entry_id = entry_id
        self.backend = backend

    def runtest(self) -> None:
        from fault_inject.catalog import CATALOG, FAIL, NOT_APPLICABLE, run_entry

        cfg = self.config
        models = Path(cfg.getoption("bitnet_matrix_models") or cfg.stash[_MODELS])
        outcome = run_entry(CATALOG[self.entry_id], self.backend, models=models, library=cfg.getoption("bitnet_matrix_library"),
                            timeout=cfg.stash[_TIMEOUT], isolation=cfg.getoption("bitnet_matrix_isolation"))
        self.user_properties.append((_PROPERTY, outcome.as_dict()))
        if outcome.result == NOT_APPLICABLE:
            pytest.skip(outcome.reason)
        if outcome.result == FAIL:
            raise CellFailed(outcome.reason)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CellFailed):
            return f"{self.entry_id} [{self.backend}]: {excinfo.value}"
        return super().repr_failure(excinfo, style)  # type: ignore[return-value]

    def reportinfo(self) -> tuple[str, int, str]:
        return "fault_inject/catalog", 0, f"{self.entry_id}[{self.backend}]"


class CellFailed(AssertionError):
    pass


_MODELS = pytest.StashKey[str]()
_TIMEOUT = pytest.StashKey["float | None"]()


@pytest.hookimpl(trylast=True)  # after the bitnet plugin resolved its settings
def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("bitnet_matrix"):
        return
    _refuse_a_run_wide_spec(config)
    config.stash[_TIMEOUT] = _timeout(config.getoption("bitnet_matrix_timeout"))
    if not config.getoption("bitnet_matrix_models"):
        config.stash[_MODELS] = tempfile.mkdtemp(prefix="bitnet-matrix-models-")
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        config.pluginmanager.register(_Results(config.getoption("bitnet_matrix_out")), "bitnet-matrix-results")


def _refuse_a_run_wide_spec(config: pytest.Config) -> None:
    """Every cell arms its own faults; the bitnet plugin's run-wide spec
    would arm points around them too and turn them red for no fault of the
    backend (python -m fault_inject matrix ignores $BITNET_INJECT for the
    same reason).  Refused when declared, not met as failing cells."""
    from .state import RUN

    run = config.stash.get(RUN, None)  # None: the bitnet plugin is not loaded (-p no:bitnet)
    if run is None or run.settings.inject is None:
        return
    raise pytest.UsageError(
        f"bitnet: --bitnet-matrix runs cells that arm their own faults, and the run-wide fault spec "
        f"{str(run.settings.inject)!r} from {run.settings.inject_source} would fire in them too: "
        f"cancel it for this run with --bitnet-inject=none, "
        f"or run the matrix on its own: python -m fault_inject matrix -n N"
    )


def _timeout(text: str | None) -> float | None:
    """--bitnet-matrix-timeout, refused at configure time when bad."""
    if text is None:
        return None
    from pytest_bitnet.bridge.errors import InvalidArgument
    from pytest_bitnet.bridge.validate import parse_timeout

    try:
        return parse_timeout(text, "--bitnet-matrix-timeout", text=True)
    except InvalidArgument as exc:
        raise pytest.UsageError(str(exc)) from None


class MatrixCells(pytest.Collector):
    """The cells, collected beside whatever else the session collects.

    A collector of the session's own (not items swapped in by
    pytest_collection_modifyitems), so pytest counts, reports, selects
    (-k, --deselect) and distributes them like any test, and a project's
    own tests are kept alongside them (issue 20.12): the option adds the
    cells, as --doctest-modules adds doctests, and removes nothing.
    """

    def collect(self) -> list[pytest.Item]:
        from fault_inject.catalog import CATALOG

        cfg = self.config
        backends = _backends(cfg)
        ids = [i for i in cfg.getoption("bitnet_matrix_ids").split(",") if i] or list(CATALOG)
        return [MatrixCell.from_parent(self, name=f"{i}[{b}]", entry_id=i, backend=b) for i in ids for b in backends]


def _backends(config: pytest.Config) -> list[str]:
    return [b for b in (config.getoption("bitnet_matrix") or "").split(",") if b]


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if isinstance(collector, pytest.Session) and report.passed and _backends(collector.config):
        report.result.append(MatrixCells.from_parent(collector, name=CELLS_NODE, nodeid=CELLS_NODE))
    return report


#: Node id of the cells' collector: the cells are ``bitnet-matrix::E01[reference]``, ...
CELLS_NODE: Final = "bitnet-matrix"


class _Results:
    """Gathers every cell's outcome on the controller, where all reports arrive."""

    def __init__(self, out: str | None) -> None:
        self.out = out
        self.cells: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        cell = dict(report.user_properties).get(_PROPERTY)
        if report.when == "call" and cell is not None:
            self.cells.append(cell)
        elif report.failed and cell is None:
            # no outcome on a failed report: the item crashed its worker
            from fault_inject.catalog import Outcome

            entry_id, _, backend = report.nodeid.rpartition("::")[2].partition("[")
            lines = str(report.longrepr).strip().splitlines()
            self.cells.append(Outcome.crashed(entry_id, backend.rstrip("]"), report.duration, lines[-1] if lines else "").as_dict())

    def pytest_sessionfinish(self) -> None:
        if self.out:
            Path(self.out).write_text(json.dumps(self.cells, indent=1))
