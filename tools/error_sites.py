"""Error sites as data: every place that reports a failure, and whether a run reached it.

Run by .ci/coverage after the instrumented suite and matrix; it can also list
the sites alone (``--list``).  Standard library only.

What counts as an error site (the rules, applied mechanically to the source;
no hand-kept list):

Native (``native/**/*.c``, ``native/**/*.h``; comments and string literals
are blanked first, ``#`` directive lines skipped):

``error``   a ``bn_error(`` call: the origin of a native error (code and
            message).  ``bn_error_prefix`` only adds context to one already
            raised, so it is not a site of its own.
``code``    ``return BITNET_E_...;``: a failure code returned without a message
            of its own (``BITNET_OK`` is not a failure).
``null``    ``return NULL;``: a pointer-returning function's failure (or
            "not found", which its caller turns into one).
``minus1``  ``return -1;``: the 0/-1 convention of the small helpers.

One site per statement: ``return bn_error(...)`` is one ``error`` site.  A
statement is reached when gcov counted any of its lines (a call that spans
lines is attributed to one of them).

Python (``pytest_bitnet/``, ``fault_inject/``): a ``raise`` whose expression
calls a BitnetError subclass, or a factory that returns one.  The subclasses
are found by a fixpoint over the packages' class definitions, starting from
``BitnetError``; a factory is a function whose return annotation names one of
them or whose body returns a call of one.  ``raise cls(...)`` / ``raise err``
with the class in a variable is not a site: the site is where it is chosen.

Unreachable on purpose (the NEVER() marker; design, issue 16):

Native: ``if (NEVER(cond, "why no input can make cond true")) return ...;``
(native/common/bn_never.h).  In the coverage/test build (``-DBN_COVERAGE``)
a NEVER that is true aborts naming the reason, so the site is proven not
reached rather than merely unmeasured; in release it is the plain test.  A
site is marked when its statement line, or the ``if`` line just above it,
holds ``NEVER(``; the reason is the string literal inside.

Python: a ``# NEVER: why`` comment on the ``raise`` line (or the ``if``
line above it).

Marked sites are listed separately and are not counted in N/M.

The last line printed is exactly ``error sites reached: N/M (P%)``.
"""

from __future__ import annotations

import argparse
import ast
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

NATIVE_RULES = [
    # not its declaration or definition ("int bn_error(int code, ...")
    ("error", re.compile(r"(?<!int )\bbn_error\s*\(")),
    # the llama adapter is a library of its own, built at run time against
    # libllama; its errors originate in its own recorder, fail()
    ("error", re.compile(r"(?<!int )\bfail\s*\("), "native/llama/"),
    ("code", re.compile(r"\breturn\s+\(?\s*BITNET_E_[A-Z_]+\s*\)?\s*;")),
    ("null", re.compile(r"\breturn\s+NULL\s*;")),
    ("minus1", re.compile(r"\breturn\s+-1\s*;")),
]
PROBE = "BN_SITE"  # tools/site_probe.h
NEVER_RE = re.compile(r"\bNEVER\s*\(")
PY_NEVER_RE = re.compile(r"#\s*NEVER:\s*(.*)")
PY_PACKAGES = ("pytest_bitnet", "fault_inject")


@dataclass
class Site:
    file: str  # relative to the root
    line: int  # first line of the statement
    last: int  # last line of the statement
    kind: str
    text: str
    never: str | None = None  # the reason, when marked unreachable
    reached: bool | None = None  # None: no data for any of its lines (not built / not run)
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- native


def _blank_comments_and_strings(src: str) -> tuple[str, dict[int, str]]:
    """The source with comments and string/char literals replaced by spaces
    (newlines kept, so line numbers hold), and the string literals by line
    (for NEVER reasons)."""
    out = []
    strings: dict[int, str] = {}
    i, n, line = 0, len(src), 1
    while i < n:
        c = src[i]
        if src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            chunk = src[i:j]
            out.append(re.sub(r"[^\n]", " ", chunk))
            line += chunk.count("\n")
            i = j
        elif src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            chunk = src[i:j]
            if c == '"':
                strings.setdefault(line, chunk[1:-1])
            out.append(c + re.sub(r"[^\n]", " ", chunk[1:-1]) + c if len(chunk) >= 2 else chunk)
            line += chunk.count("\n")
            i = j
        else:
            if c == "\n":
                line += 1
            out.append(c)
            i += 1
    return "".join(out), strings


def native_sites(root: Path) -> list[Site]:
    sites = []
    for path in sorted([*root.glob("native/**/*.c"), *root.glob("native/**/*.h")]):
        rel = str(path.relative_to(root))
        raw = path.read_text(errors="replace")
        code, strings = _blank_comments_and_strings(raw)
        lines = code.split("\n")
        raw_lines = raw.split("\n")
        seen: set[int] = set()  # statement starts already counted
        for idx, text in enumerate(lines):
            if text.lstrip().startswith("#") and not text.rstrip().endswith("\\"):
                continue  # a directive (a multi-line #define's body lines are code)
            for kind, rule, *only in NATIVE_RULES:
                if only and not rel.startswith(only[0]):
                    continue
                m = rule.search(text)
                if not m:
                    continue
                start = _statement_start(lines, idx, m.start())
                if start in seen:
                    break
                seen.add(start)
                last = _statement_end(lines, idx, m.start())
                site = Site(rel, start + 1, last + 1, kind, raw_lines[idx].strip(),
                            extra={"at": (idx, m.start(), m.end())})
                for k in (start, start - 1):  # the statement, or the if just above it
                    if 0 <= k < len(lines) and NEVER_RE.search(lines[k]):
                        site.never = strings.get(k + 1, "(no reason given)")
                        break
                sites.append(site)
                break
    return sites


def _statement_start(lines: list[str], idx: int, col: int) -> int:
    """The line the statement holding lines[idx][col] starts on: lines[idx],
    unless the line above ends mid-expression (an operator, ',' or '(')."""
    k = idx
    while k > 0 and re.search(r"[=,(?&|+\-*/]\s*$", lines[k - 1]):
        k -= 1
    return k


def _statement_end(lines: list[str], idx: int, col: int) -> int:
    depth = 0
    k, j = idx, col
    while k < len(lines):
        for ch in lines[k][j:]:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == ";" and depth <= 0:
                return k
        k, j = k + 1, 0
    return idx


def site_id(s: Site) -> str:
    return f"{s.file}:{s.line}"


def instrument(root: Path, sites: list[Site]) -> int:
    """Rewrites each native site of the tree at root, in place, to log the
    first time it runs (tools/site_probe.h): ``return X;`` becomes
    ``return (BN_SITE("f:l"), X);`` and ``bn_error(`` becomes
    ``(BN_SITE("f:l"), bn_error)(``.  Every line keeps its number, so gcov's
    counts still name the original lines.  For a scratch copy only."""
    by_file: dict[str, list[Site]] = {}
    for s in sites:
        by_file.setdefault(s.file, []).append(s)
    for rel, fs in by_file.items():
        path = root / rel
        lines = path.read_text().split("\n")
        # right to left, so that an earlier rewrite on a line keeps the columns of the next
        for s in sorted(fs, key=lambda s: s.extra["at"], reverse=True):
            idx, a, b = s.extra["at"]
            text, tag = lines[idx], f'{PROBE}("{site_id(s)}")'
            if s.kind == "error":
                name = re.match(r"\w+", text[a:]).group(0)  # type: ignore[union-attr]
                lines[idx] = f"{text[:a]}({tag}, {name}){text[a + len(name):]}"
            else:
                expr = text[a:b].strip()[len("return"):-1].strip()
                lines[idx] = f"{text[:a]}return ({tag}, {expr});{text[b:]}"
        path.write_text("\n".join(lines))
    return sum(len(fs) for fs in by_file.values())


OUTSIDE = "(outside any test)"


def read_site_log(path: Path) -> dict[str, str]:
    """site id -> the first test that reached it, from the probe's log
    (a test's name is preferred to a hit outside any test)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        test = re.sub(r" \((setup|call|teardown)\)$", "", parts[2].strip()) or OUTSIDE
        if out.get(parts[1], OUTSIDE) == OUTSIDE:
            out[parts[1]] = test
    return out


def gcovr_counts(path: Path, root: Path) -> dict[str, dict[int, int]]:
    """file (relative to root) -> line -> count, the maximum over builds and
    functions (gcovr lists a line once per function instance)."""
    data = json.loads(path.read_text())
    out: dict[str, dict[int, int]] = {}
    for f in data.get("files", []):
        name = f["file"]
        p = Path(name)
        rel = str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else name
        lines = out.setdefault(rel, {})
        for ln in f.get("lines", []):
            if ln.get("gcovr/noncode"):
                continue
            n = ln["line_number"]
            lines[n] = max(lines.get(n, 0), int(ln.get("count", 0)))
    return out


# Kernels for instructions a CPU may lack (native/reference/kernels.c picks
# them at run time): a function named *_<suffix> runs only where /proc/cpuinfo
# lists the flag.  On a CPU without it their lines cannot run, so they are
# left out of the native line figure, and the figure says how many.
CPU_KERNELS = {"_vnni": "avx512_vnni", "_avx512": "avx512f"}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def native_line_figures(path: Path, flags: set[str]) -> tuple[int, int, int, str]:
    """(covered, total, left out, why) over the native lines of a gcovr JSON
    report, one entry per source line (the maximum over builds), without the
    lines of kernels this CPU cannot run."""
    data = json.loads(path.read_text())
    lacking = {suffix: flag for suffix, flag in CPU_KERNELS.items() if flag not in flags}
    counts: dict[tuple[str, int], int] = {}
    left: set[tuple[str, int]] = set()
    for f in data.get("files", []):
        for ln in f.get("lines", []):
            if ln.get("gcovr/noncode"):
                continue
            key = (f["file"], ln["line_number"])
            fn = ln.get("function_name") or ""
            if any(fn.endswith(suffix) for suffix in lacking):
                left.add(key)
            counts[key] = max(counts.get(key, 0), int(ln.get("count", 0)))
    kept = {k: v for k, v in counts.items() if k not in left}
    fns = {(ln.get("function_name") or "") for f in data.get("files", []) for ln in f.get("lines", [])
           if (f["file"], ln["line_number"]) in left}
    why = ", ".join(sorted({flag for suffix, flag in lacking.items() if any(fn.endswith(suffix) for fn in fns)}))
    return sum(1 for v in kept.values() if v > 0), len(kept), len(left), why


def mark_native(sites: list[Site], counts: dict[str, dict[int, int]], log: dict[str, str]) -> None:
    """gcov's counts, or the probe's log: a build whose counts are gone by
    report time (a compiled-out build in a test's tmp_path) still logged."""
    for s in sites:
        file_counts = counts.get(s.file)
        seen = [file_counts[n] for n in range(s.line, s.last + 1) if n in file_counts] if file_counts else []
        s.reached = None if not seen else max(seen) > 0
        by = log.get(site_id(s))
        if by is not None:
            s.reached = True
            s.extra["by"] = by


# ---------------------------------------------------------------- python


def _final_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _final_name(node.value)
    return None


def _py_files(root: Path) -> list[Path]:
    return sorted(p for pkg in PY_PACKAGES for p in (root / pkg).rglob("*.py"))


def python_sites(root: Path) -> list[Site]:
    trees = {p: ast.parse(p.read_text(), str(p)) for p in _py_files(root)}
    classes = {"BitnetError"}
    changed = True
    while changed:
        changed = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in classes:
                    if any(_final_name(b) in classes for b in node.bases):
                        classes.add(node.name)
                        changed = True
    factories: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            ann = node.returns
            names = {_final_name(n) for n in ast.walk(ann) if isinstance(n, (ast.Name, ast.Attribute))} if ann else set()
            if ann is not None and isinstance(ann, ast.Constant) and isinstance(ann.value, str):
                names |= set(re.findall(r"\w+", ann.value))
            returns = {
                _final_name(r.value.func)
                for r in ast.walk(node)
                if isinstance(r, ast.Return) and isinstance(r.value, ast.Call)
            }
            if (names | returns) & classes:
                factories.add(node.name)
    sites = []
    for path, tree in trees.items():
        rel = str(path.relative_to(root))
        raw_lines = path.read_text().split("\n")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
                continue
            name = _final_name(node.exc.func)
            if name not in classes and name not in factories:
                continue
            site = Site(rel, node.lineno, node.end_lineno or node.lineno, "raise" if name in classes else "factory",
                        raw_lines[node.lineno - 1].strip())
            for k in (node.lineno - 1, node.lineno - 2):
                m = PY_NEVER_RE.search(raw_lines[k]) if 0 <= k < len(raw_lines) else None
                if m:
                    site.never = m.group(1).strip() or "(no reason given)"
                    break
            sites.append(site)
    return sorted(sites, key=lambda s: (s.file, s.line))


def mark_python(sites: list[Site], path: Path, root: Path) -> None:
    data = json.loads(path.read_text())
    executed: dict[str, set[int]] = {}
    measured: dict[str, set[int]] = {}
    contexts: dict[str, dict[str, list[str]]] = {}
    for name, f in data.get("files", {}).items():
        p = Path(name)
        rel = str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else name
        executed[rel] = set(f.get("executed_lines", []))
        measured[rel] = executed[rel] | set(f.get("missing_lines", []))
        contexts[rel] = f.get("contexts", {})
    for s in sites:
        if s.line not in measured.get(s.file, ()):
            s.reached = None
        else:
            s.reached = s.line in executed[s.file]
        # --show-contexts: the tests that ran the line (coverage's context
        # is the test's node id, set by the coverage run's pytest plugin)
        named = [c for c in contexts.get(s.file, {}).get(str(s.line), []) if c]
        if s.reached:
            s.extra["by"] = named[0] if named else OUTSIDE


# ---------------------------------------------------------------- report


def report(sites: list[Site], native_summary: str | None, python_json: Path | None,
           native_lines: tuple[int, int, int, str] | None = None) -> tuple[int, int]:
    if native_lines:
        hit, total, left, why = native_lines
        extra = f"; {left} lines of kernels for {why} left out: this CPU lacks the instructions" if left else ""
        print(f"native lines: {100.0 * hit / max(total, 1):.1f}% ({hit} out of {total}{extra})")
    if native_summary:
        for line in native_summary.splitlines():
            if line.startswith(("branches:", "functions:")) or (line.startswith("lines:") and not native_lines):
                print(f"native {line}")
    if python_json:
        t = json.loads(python_json.read_text()).get("totals", {})
        if t:
            lines = 100.0 * t["covered_lines"] / max(t["num_statements"], 1)
            branches = 100.0 * t.get("covered_branches", 0) / max(t.get("num_branches", 0), 1)
            print(f"python lines: {lines:.1f}% ({t['covered_lines']} out of {t['num_statements']})")
            print(f"python branches: {branches:.1f}% ({t.get('covered_branches', 0)} out of {t.get('num_branches', 0)})")
    counted = [s for s in sites if s.never is None]
    never = [s for s in sites if s.never is not None]
    by_file: dict[str, list[Site]] = {}
    for s in counted:
        by_file.setdefault(s.file, []).append(s)
    print("\nerror sites by file (reached/all; unreached listed; '?' = no data: not built or not run):")
    for f, fs in by_file.items():
        hit = sum(1 for s in fs if s.reached)
        print(f"  {f}: {hit}/{len(fs)}")
        for s in fs:
            if not s.reached:
                mark = "?" if s.reached is None else "-"
                print(f"    {mark} {s.line:5d} {s.kind:7s} {s.text[:100]}")
    if never:
        print("\nmarked unreachable (NEVER), not counted:")
        for s in never:
            state = "REACHED (the marker is wrong)" if s.reached else "not reached"
            print(f"  {s.file}:{s.line} {state}: {s.never}")
    kinds: dict[str, list[int]] = {}
    for s in counted:
        k = kinds.setdefault(s.kind, [0, 0])
        k[0] += bool(s.reached)
        k[1] += 1
    print("\nby kind: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in sorted(kinds.items())))
    n = sum(1 for s in counted if s.reached)
    return n, len(counted)


def _state(s: Site) -> str:
    if s.never is not None:
        return "REACHED-NEVER" if s.reached else "never"
    return {True: "reached", False: "unreached", None: "no-data"}[s.reached]


def write_reports(sites: list[Site], root: Path, out: Path) -> None:
    """Every site, with its state and the test that reached it: error-sites.txt
    (one line each), error-sites.json, and error-sites.html (each file's source
    with its sites highlighted)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"site": site_id(s), "kind": s.kind, "state": _state(s), "by": s.extra.get("by"),
         "never": s.never, "text": s.text}
        for s in sites
    ]
    (out / "error-sites.json").write_text(json.dumps(rows, indent=1))
    with open(out / "error-sites.txt", "w") as f:
        for r in rows:
            why = r["by"] if r["state"] == "reached" else (r["never"] or "")
            f.write(f"{r['state']:9s} {r['kind']:7s} {r['site']}  {why}\n")
    colour = {"reached": "#cfc", "unreached": "#fbb", "no-data": "#fdb", "never": "#ddd", "REACHED-NEVER": "#f66"}
    by_file: dict[str, list[Site]] = {}
    for s in sites:
        by_file.setdefault(s.file, []).append(s)
    parts = ["<!doctype html><meta charset=utf-8><title>error sites</title>",
             "<style>body{font:13px sans-serif}pre{font:12px monospace;margin:0}"
             "td{vertical-align:top;padding:0 6px}.n{color:#888;text-align:right}</style>",
             "<h1>Error sites</h1><p>" + ", ".join(
                 f"<span style='background:{c}'>{k}</span>" for k, c in colour.items()) + "</p><ul>"]
    for f, fs in by_file.items():
        counted = [s for s in fs if s.never is None]
        parts.append(f"<li><a href='#{html.escape(f)}'>{html.escape(f)}</a> "
                     f"{sum(1 for s in counted if s.reached)}/{len(counted)}</li>")
    parts.append("</ul>")
    for f, fs in by_file.items():
        marks = {n: s for s in fs for n in range(s.line, s.last + 1)}
        parts.append(f"<h2 id='{html.escape(f)}'>{html.escape(f)}</h2><table>")
        src = (root / f).read_text(errors="replace").split("\n")
        for n, text in enumerate(src, 1):
            s = marks.get(n)
            style = f" style='background:{colour[_state(s)]}'" if s else ""
            note = ""
            if s and n == s.line:
                note = html.escape(f"{_state(s)}: {s.extra.get('by') or s.never or ''}")
            parts.append(f"<tr{style}><td class=n>{n}</td><td><pre>{html.escape(text)}</pre></td>"
                         f"<td>{note}</td></tr>")
        parts.append("</table>")
    (out / "error-sites.html").write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the source tree measured")
    ap.add_argument("--native", type=Path, help="gcovr --json output")
    ap.add_argument("--python", type=Path, help="coverage json output")
    ap.add_argument("--summary", type=Path, help="gcovr --txt-summary output (native line/branch figures)")
    ap.add_argument("--list", action="store_true", help="list the sites and the rules' counts, no coverage data")
    ap.add_argument("--instrument", action="store_true",
                    help="rewrite the native sites of --root in place to log their first run (a scratch copy only)")
    ap.add_argument("--site-log", type=Path, help="the probe's log ($BITNET_SITE_LOG of the run)")
    ap.add_argument("--out", type=Path, help="write error-sites.{txt,json,html} here")
    ap.add_argument("--gate", default="0", help="1: exit 1 when a figure is below its bar")
    ap.add_argument("--gate-sites", type=float, default=95.0)
    ap.add_argument("--gate-native-lines", type=float, default=90.0)
    ap.add_argument("--exit-code", type=int, default=0, help="the runs' status, returned when nonzero")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    native = native_sites(root)
    python = python_sites(root)
    if args.list:
        for s in native + python:
            print(f"{s.file}:{s.line}: {s.kind}{' NEVER: ' + s.never if s.never else ''}: {s.text[:100]}")
        print(f"error sites: {len(native)} native, {len(python)} python")
        return 0
    if args.instrument:
        print(f"instrumented {instrument(root, native)} native error sites under {root}")
        return 0
    log = read_site_log(args.site_log) if args.site_log else {}
    if args.native:
        mark_native(native, gcovr_counts(args.native, root), log)
    if args.python:
        mark_python(python, args.python, root)
    summary = args.summary.read_text() if args.summary else None
    if args.out:
        write_reports(native + python, root, args.out)
    figures = native_line_figures(args.native, cpu_flags()) if args.native else None
    n_nat, m_nat = report(native, summary, args.python, figures)
    n_py, m_py = report(python, None, None)
    print(f"native error sites reached: {n_nat}/{m_nat}; python: {n_py}/{m_py}")
    n, m = n_nat + n_py, m_nat + m_py
    p = 100.0 * n / m if m else 100.0
    status = args.exit_code
    if args.gate == "1":
        native_lines = round(100.0 * figures[0] / max(figures[1], 1), 1) if figures else None
        if p < args.gate_sites or (native_lines is not None and native_lines < args.gate_native_lines):
            print(f"GATE: below the bar (error sites {p:.1f}% < {args.gate_sites}% or native lines "
                  f"{native_lines}% < {args.gate_native_lines}%)")
            status = status or 1
    print(f"error sites reached: {n}/{m} ({p:.0f}%)")
    return status


if __name__ == "__main__":
    sys.exit(main())
