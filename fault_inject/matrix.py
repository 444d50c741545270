"""The error-path matrix: every catalog entry on every backend asked for.

::

    python -m fault_inject matrix                          # reference column, in this process
    python -m fault_inject matrix --backend reference --backend dlopen --backend stub -n 2
    python -m fault_inject matrix --only E20,E21 --json m.json --junit m.xml --markdown m.md

Rows are entries, columns backends.  A cell passes when the entry behaved
as catalogued and the live counters came back to their baseline; an entry
that does not apply to a backend is shown as ``n/a`` with the reason.  The
exit status is 0 only when no applicable cell failed.

``-n N`` runs the cells on N pytest-xdist workers (``pytest_bitnet.matrix``
is the pytest side); a cell that crashes its worker is a failed cell, not
the end of the run.  Without it the cells run in this process, one after
the other.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Iterable, Sequence

from . import env
from .catalog import (
    BACKENDS, CATALOG, CATEGORIES, FAIL, NOT_APPLICABLE, PASS, STUB_UNAVAILABLE, Entry, Outcome, column_unavailable, run_entry,
)  # fmt: skip
from .spec import closest_names

__all__ = ["Matrix", "select", "run_in_process", "run_on_workers", "main"]


@dataclass
class Matrix:
    """The outcomes of a run, keyed by (entry id, backend)."""

    entries: list[Entry]
    backends: list[str]
    outcomes: dict[tuple[str, str], Outcome] = field(default_factory=dict)
    wall_seconds: float = 0.0
    workers: int = 0  # 0: in process
    isolation: str | None = None  # the cells' sessions: None / "none" in their process, "process" in workers of their own
    # backend -> why that column cannot run here (all its cells n/a): one line, not a row each
    unavailable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for b in self.backends:
            why = column_unavailable(b)
            if why and b not in self.unavailable:
                self.unavailable[b] = why

    @property
    def ok(self) -> bool:
        return not any(o.result == FAIL for o in self.outcomes.values())

    def cell(self, entry_id: str, backend: str) -> Outcome:
        return self.outcomes.get((entry_id, backend)) or Outcome(entry_id, backend, FAIL, reason="no result (the run stopped before this cell)")

    def counts(self, backend: str) -> dict[str, int]:
        """pass / fail / n/a, and ONLY_UNAVAILABLE: the passes that only saw
        CppNotAvailable (the stub column's entries that need a backend)."""
        out = {PASS: 0, FAIL: 0, NOT_APPLICABLE: 0, ONLY_UNAVAILABLE: 0}
        for e in self.entries:
            o = self.cell(e.id, backend)
            out[o.result] += 1
            out[ONLY_UNAVAILABLE] += _only_unavailable(e, o)
        return out

    # -- reports ----------------------------------------------------------------------

    def summary(self) -> str:
        parts = []
        for b in self.backends:
            c = self.counts(b)
            if b in self.unavailable:
                parts.append(f"{b} unavailable ({c[NOT_APPLICABLE]} n/a)")
                continue
            applicable = c[PASS] + c[FAIL]
            text = f"{b} {c[PASS]}/{applicable} passed"
            if c[ONLY_UNAVAILABLE]:
                text += f" ({c[ONLY_UNAVAILABLE]} of them only CppNotAvailable)"
            if c[FAIL]:
                text += f", {c[FAIL]} FAILED"
            if c[NOT_APPLICABLE]:
                text += f", {c[NOT_APPLICABLE]} n/a"
            parts.append(text)
        where = f"{self.workers} workers" if self.workers else "in process"
        if self.isolation == "process":
            where += ", each session isolated in a worker process"
        return f"{'; '.join(parts)}  ({len(self.entries)} entries, {self.wall_seconds:.1f} s wall, {where})"

    def table(self, width: int = 58) -> str:
        head = f"{'id':4} {'category':17} {'scenario':{width}}"
        cols = [max(22, len(b) + 2) for b in self.backends]
        lines = [head + "".join(f" {b:<{w}}" for b, w in zip(self.backends, cols))]
        lines.append("-" * len(lines[0]))
        for e in self.entries:
            title = e.title if len(e.title) <= width else e.title[: width - 1] + "…"
            row = f"{e.id:4} {e.category:17} {title:{width}}"
            for b, w in zip(self.backends, cols):
                row += f" {_cell_text(e, self.cell(e.id, b)):<{w}}"
            lines.append(row.rstrip())
        failed = [(e, b) for e in self.entries for b in self.backends if self.cell(e.id, b).result == FAIL]
        if failed:
            lines.append("")
            lines.append("failures:")
            for e, b in failed:
                lines.append(f"  {e.id} [{b}] {self.cell(e.id, b).reason}")
        for line in self.unavailable_lines():
            lines += ["", line]
        skipped = [(e, b) for e in self.entries for b in self.backends
                   if b not in self.unavailable and self.cell(e.id, b).result == NOT_APPLICABLE]
        if skipped:
            lines.append("")
            lines.append("not applicable:")
            for e, b in skipped:
                lines.append(f"  {e.id} [{b}] {self.cell(e.id, b).reason}")
        lines.append("")
        lines.append(self.summary())
        return "\n".join(lines)

    def unavailable_lines(self) -> list[str]:
        """One line per column that cannot run: ``llama: unavailable: <why, how to fix>``."""
        return [f"{b}: unavailable: {why}" for b, why in self.unavailable.items()]

    def as_json(self) -> dict[str, object]:
        return {
            "backends": self.backends,
            "unavailable": dict(self.unavailable),
            "wall_seconds": round(self.wall_seconds, 3),
            "workers": self.workers,
            "isolation": self.isolation or "none",
            "ok": self.ok,
            "summary": {b: self.counts(b) for b in self.backends},
            "rows": [
                {
                    "id": e.id, "category": e.category, "title": e.title, "operation": e.operation,
                    "expect": e.expect, "fragments": list(e.fragments), "inject": e.inject,
                    "cells": {b: self.cell(e.id, b).as_dict() for b in self.backends},
                }
                for e in self.entries
            ],
        }  # fmt: skip

    def junit(self) -> ET.ElementTree:
        suites = ET.Element("testsuites", name="bitnet error-path matrix", time=f"{self.wall_seconds:.3f}")
        for b in self.backends:
            c = self.counts(b)
            suite = ET.SubElement(suites, "testsuite", name=f"matrix[{b}]", tests=str(len(self.entries)),
                                  failures=str(c[FAIL]), skipped=str(c[NOT_APPLICABLE]), errors="0")
            props = ET.SubElement(suite, "properties")
            ET.SubElement(props, "property", name="passed_only_cpp_not_available", value=str(c[ONLY_UNAVAILABLE]))
            if b in self.unavailable:
                ET.SubElement(props, "property", name="unavailable", value=self.unavailable[b])
            for e in self.entries:
                o = self.cell(e.id, b)
                case = ET.SubElement(suite, "testcase", classname=f"matrix.{b}.{e.category}", name=f"{e.id} {e.title}",
                                     time=f"{o.seconds:.3f}")
                if o.result == FAIL:
                    ET.SubElement(case, "failure", message=o.reason[:200]).text = o.reason
                elif o.result == NOT_APPLICABLE:
                    ET.SubElement(case, "skipped", message=o.reason)
                if o.observed or o.notes:
                    ET.SubElement(case, "system-out").text = "\n".join(filter(None, [o.observed, *o.notes]))
        return ET.ElementTree(suites)

    def markdown(self) -> str:
        lines = ["| id | category | scenario | " + " | ".join(self.backends) + " |",
                 "|---|---|---|" + "---|" * len(self.backends)]
        for e in self.entries:
            cells = " | ".join(_cell_text(e, self.cell(e.id, b)).replace("FAIL", "**FAIL**") for b in self.backends)
            lines.append(f"| {e.id} | {e.category} | {e.title.replace('|', '/')} | {cells} |")
        lines.append("")
        lines.append(self.summary())
        lines += ["", *(f"- {line}" for line in self.unavailable_lines())] if self.unavailable else []
        failed = [(e, b) for e in self.entries for b in self.backends if self.cell(e.id, b).result == FAIL]
        if failed:
            lines += ["", "Failures:", ""] + [f"- {e.id} [{b}]: {self.cell(e.id, b).reason}" for e, b in failed]
        return "\n".join(lines) + "\n"


#: counts() key: passes that only observed CppNotAvailable
ONLY_UNAVAILABLE: Final = "only_cpp_not_available"


def _only_unavailable(e: Entry, o: Outcome) -> bool:
    """A stub cell of an entry that needs a backend passes by raising
    CppNotAvailable at its first call: it shows that much, not the path."""
    return o.result == PASS and o.backend == "stub" and e.stub == STUB_UNAVAILABLE


def _cell_text(e: Entry, o: Outcome) -> str:
    if o.result == PASS:
        return f"{'CppNotAvailable' if _only_unavailable(e, o) else 'pass'} {o.seconds:.2f}s"
    return "n/a" if o.result == NOT_APPLICABLE else f"FAIL {o.seconds:.2f}s"


# ---- choosing and running cells -----------------------------------------------------


class SelectionError(ValueError):
    """--only / --category / --backend named something that does not exist."""


def select(only: Iterable[str] = (), categories: Iterable[str] = ()) -> list[Entry]:
    """The entries named by --only ids and --category names (all when neither is given)."""
    ids = [i.strip().upper() for part in only for i in part.split(",") if i.strip()]
    cats = [c.strip() for part in categories for c in part.split(",") if c.strip()]
    for i in ids:
        if i not in CATALOG:
            near = closest_names(i, CATALOG)
            raise SelectionError(f"no catalog entry {i!r}" + (f"; did you mean {', '.join(near)}?" if near else " (ids are E01..E52)"))
    for c in cats:
        if c not in CATEGORIES:
            near = closest_names(c, CATEGORIES)
            raise SelectionError(f"no category {c!r}" + (f"; did you mean {', '.join(near)}?" if near else f"; categories: {', '.join(CATEGORIES)}"))
    return [e for e in CATALOG.values() if (not ids or e.id in ids) and (not cats or e.category in cats)]


def _check_backends(backends: Sequence[str]) -> list[str]:
    out = []
    for b in backends or ["reference"]:
        for name in b.split(","):
            name = name.strip()
            if name not in BACKENDS:
                raise SelectionError(f"unknown backend {name!r} (valid: {', '.join(BACKENDS)})")
            if name not in out:
                out.append(name)
    return out


def run_in_process(entries: list[Entry], backends: list[str], *, models: Path, library: str | None = None,
                   progress: bool = False, timeout: float | None = None, isolation: str | None = None) -> Matrix:
    """Every cell in this process, entry by entry."""
    m = Matrix(entries, backends, isolation=isolation)
    start = time.perf_counter()
    for e in entries:
        for b in backends:
            m.outcomes[(e.id, b)] = o = run_entry(e, b, models=models, library=library, timeout=timeout,
                                                  isolation=isolation)
            if progress:
                print(f"{e.id} [{b}] {o.result}" + (f": {o.reason}" if o.result == FAIL else ""), file=sys.stderr, flush=True)
    m.wall_seconds = time.perf_counter() - start
    return m


def run_on_workers(entries: list[Entry], backends: list[str], workers: int, *, models: Path,
                   library: str | None = None, timeout: float | None = None, isolation: str | None = None) -> Matrix:
    """Every cell as a pytest item, distributed over `workers` pytest-xdist processes."""
    if importlib.util.find_spec("xdist") is None:  # the workers are pytest's, in a subprocess
        raise SelectionError("-n needs pytest-xdist: pip install 'pytest-bitnet[test]' (or pytest-xdist)")
    m = Matrix(entries, backends, workers=workers, isolation=isolation)
    with tempfile.TemporaryDirectory(prefix="bitnet-matrix-") as tmp:
        out = Path(tmp, "cells.json")
        empty = Path(tmp, "collect")  # nothing to collect: the plugin makes the items
        empty.mkdir()
        cmd = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:bitnet", "-p", "pytest_bitnet.matrix",
            "-n", str(workers), "--rootdir", tmp, "-c", os.devnull,
            "--bitnet-matrix", ",".join(backends), "--bitnet-matrix-ids", ",".join(e.id for e in entries),
            "--bitnet-matrix-models", str(models), "--bitnet-matrix-out", str(out), str(empty),
        ]  # fmt: skip
        if library:
            cmd += ["--bitnet-matrix-library", library]
        if timeout is not None:  # repr: a float parse_timeout reads back exactly ("inf" too)
            cmd += ["--bitnet-matrix-timeout", repr(timeout)]
        if isolation is not None:
            cmd += ["--bitnet-matrix-isolation", isolation]
        environ = {k: v for k, v in os.environ.items() if k != env.ENV_SPEC}  # cells arm their own faults
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=environ)
        m.wall_seconds = time.perf_counter() - start
        if not out.exists():
            raise RuntimeError(f"the pytest run wrote no results (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        for d in json.loads(out.read_text()):
            o = Outcome.from_dict(d)
            m.outcomes[(o.id, o.backend)] = o
    return m


def main(args: argparse.Namespace) -> int:
    """``python -m fault_inject matrix`` (arguments parsed by fault_inject.__main__)."""
    try:
        entries = select(args.only or (), args.category or ())
        backends = _check_backends(args.backend or [])
    except SelectionError as exc:
        print(f"fault_inject matrix: {exc}", file=sys.stderr)
        return 2
    if env.release_env():
        print(f"fault_inject matrix: ignoring ${env.ENV_SPEC}: every cell arms its own faults", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        models = Path(args.models or stack.enter_context(tempfile.TemporaryDirectory(prefix="bitnet-matrix-models-")))
        from pytest_bitnet.testing.models import cached_tiny_model

        cached_tiny_model(models, arch="bitnet", seed=0)  # once, before any worker wants it
        if args.workers > 0:
            try:
                m = run_on_workers(entries, backends, args.workers, models=models, library=args.library, timeout=args.timeout,
                                   isolation=args.isolation)
            except SelectionError as exc:
                print(f"fault_inject matrix: {exc}", file=sys.stderr)
                return 2
        else:
            m = run_in_process(entries, backends, models=models, library=args.library, progress=args.verbose,
                               timeout=args.timeout, isolation=args.isolation)
    print(m.table())
    if args.json:
        Path(args.json).write_text(json.dumps(m.as_json(), indent=1) + "\n")
    if args.junit:
        m.junit().write(args.junit, encoding="utf-8", xml_declaration=True)
    if args.markdown:
        Path(args.markdown).write_text(m.markdown())
    return 0 if m.ok else 1
