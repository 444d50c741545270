"""What the plugin reports: the header, each test's teardown report, the summary.

Per-test data travels on the teardown report (``report.bitnet``, builtin
types only, so it survives xdist); the controller gathers it in
:class:`Collector` and writes the terminal summary.  JUnit XML gets
``bitnet_*`` properties.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .settings import rerun_flags
from .state import RunState, TestState

__all__ = ["SECTION", "Collector", "decorate", "header"]

#: The report section of a leak that did not fail the teardown (warn mode).
SECTION = "bitnet leaked native objects"


def header(run: RunState) -> list[str]:
    s = run.settings
    lines = [f"bitnet: backend={s.backend or 'reference'} ({s.backend_source}), leak-check={s.leak_check} ({s.leak_check_source})"
             + (f", timeout={s.timeout}s ({s.timeout_source})" if s.timeout is not None else "")
             + (f", isolation={s.isolation} ({s.isolation_source})" if s.isolation is not None else "")]
    # Each test draws with derive_seed(run seed, its node id): the run seed
    # and the node id are what reproduce one test.
    if s.inject is not None:
        lines.append(f"bitnet: inject={str(s.inject)!r} ({s.inject_source}), seed={run.seed} ({s.seed_source}); "
                     f"reproduce with --bitnet-inject='{s.inject}' --bitnet-seed={run.seed}{''.join(' ' + f for f in rerun_flags(s))} "
                     "(one test: pytest NODEID with the same flags; each test draws from its own seed, "
                     "fault_inject.derive_seed(seed, NODEID))")
    else:
        cancelled = f"inject=none ({s.inject_source}), " if s.inject_source != "default" else ""
        lines.append(f"bitnet: {cancelled}seed={run.seed} ({s.seed_source})")
    from .interpose import header as interpose_header

    lines += interpose_header(run.config, s.interpose_source)
    if s.diagnostics:
        from pytest_bitnet.bridge.diagnostics import diagnostics, format_text

        lines += [f"bitnet diagnostics: ({s.diagnostics_source})"] + ["  " + line for line in format_text(diagnostics()).splitlines()]
    return lines


def decorate(st: TestState, report: pytest.TestReport, run_seed: int | None = None) -> None:
    """Puts the test's bitnet data on its teardown report (travels under xdist).

    A spec armed with the test's own seed (derived from run_seed and the
    node id) is marked "derived": the summary groups those by run seed.
    """
    if not (st.reports or st.leak):
        return
    data: dict[str, Any] = {}
    if st.reports:
        data["faults"] = [
            {"spec": r.spec, "seed": r.seed, "derived": r.seed == st.seed, "hits": r.hits, "fired": r.fired,
             "never_hit": list(r.never_hit)} for r in st.reports
        ]
        for r in st.reports:
            derived = f", derived from run seed {run_seed} and the node id" if r.seed == st.seed else ""
            report.user_properties.append(("bitnet_inject", f"{r.spec} (seed {r.seed}{derived})"))
            report.user_properties.append(("bitnet_hits", json.dumps(r.hits, sort_keys=True)))
            report.user_properties.append(("bitnet_fired", json.dumps(r.fired, sort_keys=True)))
            if r.never_hit:
                report.user_properties.append(("bitnet_never_hit", ", ".join(r.never_hit)))
    if st.leak:
        text = st.leak.text()
        fail = st.leak_mode == "strict"
        data["leak"] = {"counters": st.leak.counters, "text": text, "failed": fail}
        report.user_properties.append(("bitnet_leaked", json.dumps(st.leak.counters, sort_keys=True)))
        # junitxml writes neither custom report sections nor anything but the
        # error's longrepr for a failed teardown: the creation stacks go in
        # the longrepr (the error's text) and in a property (warn mode too).
        report.user_properties.append(("bitnet_leak", text))
        if fail and report.passed:
            report.outcome = "failed"
            report.longrepr = text
        else:
            # not failing (warn mode), or the teardown failed for its own
            # reason: a section, shown by -rA and kept in the terminal
            report.sections.append((SECTION, text))
    report.bitnet = data  # type: ignore[attr-defined]


class Collector:
    """Registered on the controller: gathers the reports' data for the summary."""

    def __init__(self, run: RunState) -> None:
        self.run = run

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "bitnet", None)
        if not data:
            return
        run = self.run
        for f in data.get("faults", ()):
            row = run.fault_rows.setdefault((f["spec"], run.seed if f.get("derived") else f["seed"]), {"tests": 0, "hits": {}, "fired": {}, "never_hit": {}})
            row["tests"] += 1
            for k, v in f["hits"].items():
                row["hits"][k] = row["hits"].get(k, 0) + v
            for k, v in f["fired"].items():
                row["fired"][k] = row["fired"].get(k, 0) + v
            for p in f["never_hit"]:
                row["never_hit"].setdefault(p, []).append(report.nodeid)
        if "leak" in data:
            run.leaks.append((report.nodeid, data["leak"]["text"], data["leak"]["failed"]))
        if "crash" in data:
            run.crashes.append(data["crash"])

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run, tr = self.run, terminalreporter
        if not (run.fault_rows or run.leaks or run.crashes):
            return
        tr.write_sep("=", "bitnet")
        for (spec, seed), row in run.fault_rows.items():
            tr.write_line(f"fault spec {spec!r} (seed {seed}) armed in {row['tests']} test(s):")
            idle = 0
            for point in sorted(row["hits"]):
                if row["hits"][point] or len(row["hits"]) == 1:
                    tr.write_line(f"  {point}: {row['hits'][point]} hits, {row['fired'].get(point, 0)} fired")
                else:
                    idle += 1  # a pattern's points that no test reached: counted, not listed
            if idle:
                tr.write_line(f"  {idle} more point(s) armed, not hit")
            for point, tests in row["never_hit"].items():
                where = tests[0] + (f" and {len(tests) - 1} more" if len(tests) > 1 else "")
                tr.write_line(f"  armed but never hit: {point} (in {where})")
        if run.leaks:
            failed = sum(1 for _, _, f in run.leaks if f)
            tr.write_line(f"native leaks in {len(run.leaks)} test(s)" + ("" if failed else " (warn mode: not failing)") + ":")
            for _nodeid, text, _ in run.leaks:
                for line in text.splitlines():
                    tr.write_line("  " + line)
        for crash in run.crashes:
            tr.write_line(f"worker crash: {crash}")
