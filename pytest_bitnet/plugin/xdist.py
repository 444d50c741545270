"""pytest-xdist: the seed, the interposition and a state directory to every worker, crashes named.

Each worker enables --bitnet-interpose itself, in its own
``pytest_load_initial_conftests`` (before ``workerinput`` exists: it reads
the same command line, ini file and environment); the controller sends
the real library it interposed on, and a worker that interposes on another
one (or not at all) stops with a usage error.

A worker notes the specs armed for its current test in a file of the
state directory; when it dies, the controller reads the note and names the
spec and the command line that reproduces the crash.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from . import interpose
from .settings import rerun_flags
from .state import RUN, RunState, TestState

__all__ = ["configure", "note_armed", "clear_note", "pytest_configure_node", "pytest_handlecrashitem", "unconfigure"]


def configure(run: RunState) -> None:
    """On a worker: take the controller's seed (when none was set) and state directory."""
    workerinput = run.workerinput
    if workerinput is not None:
        if run.settings.seed is None and "bitnet_seed" in workerinput:
            run.seed = workerinput["bitnet_seed"]
        run.state_dir = workerinput.get("bitnet_state_dir")
        interpose.check_worker(run.config, workerinput.get("bitnet_interpose"))


def unconfigure(run: RunState) -> None:
    if run.state_dir is not None and run.workerinput is None:
        shutil.rmtree(run.state_dir, ignore_errors=True)


def note_armed(run: RunState, item: pytest.Item, st: TestState) -> None:
    if run.state_dir is not None and run.workerinput is not None:
        # the run seed, not the test's: rerunning the test derives its seed again
        note = {"nodeid": item.nodeid, "specs": [[str(a.spec), a.seed] for a in st.armed if a.active], "run_seed": run.seed,
                "run_spec": str(run.settings.inject) if run.settings.inject is not None else None}
        Path(run.state_dir, run.workerinput["workerid"]).write_text(json.dumps(note))


def clear_note(run: RunState) -> None:
    if run.state_dir is not None and run.workerinput is not None:
        Path(run.state_dir, run.workerinput["workerid"]).unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    run = node.config.stash[RUN]
    if run.state_dir is None:
        run.state_dir = tempfile.mkdtemp(prefix="bitnet-xdist-")
    node.workerinput["bitnet_seed"] = run.seed
    node.workerinput["bitnet_state_dir"] = run.state_dir
    node.workerinput["bitnet_interpose"] = interpose.workerinput(run.config)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    node = getattr(report, "node", None)
    run = node.config.stash.get(RUN, None) if node is not None else None
    if node is None or run is None:
        return
    specs: list[list[Any]] = []
    data: dict[str, Any] = {}
    if run.state_dir is not None:
        note = Path(run.state_dir, node.gateway.id)
        try:
            data = json.loads(note.read_text())
            if data.get("nodeid") == crashitem:
                specs = data["specs"]
            else:
                data = {}
        except (OSError, ValueError):
            pass
    if specs:
        armed = "; ".join(f"{spec!r} (seed {seed})" for spec, seed in specs)
        line = f"{crashitem} crashed the worker with fault spec {armed} armed"
        flags = f" --bitnet-inject='{data['run_spec']}'" if data.get("run_spec") else ""
        repro = f"reproduce: pytest '{crashitem}'{flags} --bitnet-seed={data.get('run_seed', run.seed)}"
    else:
        line = f"{crashitem} crashed the worker with no fault armed"
        repro = f"reproduce: pytest '{crashitem}'"
    repro += "".join(f" {flag}" for flag in rerun_flags(run.settings))  # the controller's settings are the workers'
    report.longrepr = f"{report.longrepr}\nbitnet: {line}\nbitnet: {repro}"
    report.bitnet = {"crash": f"{line}; {repro}"}  # type: ignore[attr-defined]
