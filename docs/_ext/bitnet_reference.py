"""The generated reference pages: Markdown made from the code at build time.

A page holds ``{bitnet-generated} NAME`` blocks; bitnet_docs replaces each
with ``generate(NAME)`` before MyST parses the page.  Nothing here is typed
twice: every list comes from the module that owns it (the catalog, the point
registry and bitnet_fault.h, the error module, the argparse parsers, the
plugin's settings table, markers, fixtures and hookspecs), and every
message shown is one a real call produced during this build.

Docstrings are reStructuredText (autodoc reads them so), so they go into
``{eval-rst}`` blocks; other text from the code is plain and is escaped.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

GENERATORS: dict[str, Callable[[], str]] = {}
REPO = Path(__file__).resolve().parents[2]


def generator(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        GENERATORS[name] = fn
        return fn

    return register


def generate(name: str, *, app: Any = None, docname: str = "") -> str:
    try:
        fn = GENERATORS[name]
    except KeyError:
        raise LookupError(f"no generator {name!r} (known: {', '.join(sorted(GENERATORS))})") from None
    return fn()


# ---- Markdown helpers --------------------------------------------------------------------

_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#~$])")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def esc(text: str) -> str:
    """Plain text, every Markdown character escaped."""
    return _SPECIAL.sub(r"\\\1", text)


def prose(text: str) -> str:
    """Text whose backtick spans are code (``x`` or `x`), the rest escaped."""
    out, pos = [], 0
    for m in _CODE_SPAN.finditer(text):
        out.append(esc(text[pos:m.start()]))
        out.append(code(m.group(2)))
        pos = m.end()
    out.append(esc(text[pos:]))
    return "".join(out)


def code(text: str) -> str:
    """An inline code span holding text as it is (backticks inside included)."""
    text = str(text)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def cell(text: str) -> str:
    """A table cell: one line, pipes escaped (even inside code spans)."""
    return " ".join(text.split()).replace("|", "\\|")


def fence(text: str, language: str = "text") -> str:
    longest = max((len(m) for m in re.findall(r"^`{3,}", text, flags=re.M)), default=2)
    f = "`" * (longest + 1)
    return f"{f}{language}\n{text.rstrip()}\n{f}\n"


def rst(docstring: str | None) -> str:
    """A docstring, as the reStructuredText it is."""
    text = inspect.cleandoc(docstring or "")
    return fence(text, "{eval-rst}") if text else ""


def ref(label: str, text: str) -> str:
    return f"{{ref}}`{text} <{label}>`"


def error_ref(name: str) -> str:
    return ref(f"error-{name}", name)


def point_ref(name: str) -> str:
    return ref(f"point-{name}", name)


# ---- catalog -----------------------------------------------------------------------------


def _catalog() -> Any:
    from fault_inject import catalog

    return catalog


def _spec_points(spec: str) -> list[str]:
    """The registered points a spec arms (wildcards expanded)."""
    from fault_inject import validate

    names: list[str] = []
    for entry in validate(spec).entries:
        names.extend(p for p in entry.points if p not in names)
    return names


def _stub_words(e: Any, catalog: Any) -> str:
    if e.stub == catalog.STUB_UNAVAILABLE:
        return f"on `stub` its first native call must raise {error_ref('CppNotAvailable')}"
    return "on `stub` it runs as it is (it does not depend on the column's backend)"


@generator("catalog")
def catalog_page() -> str:
    catalog = _catalog()
    entries = list(catalog.CATALOG.values())
    out = [f"The catalog holds {len(entries)} entries in {len(catalog.CATEGORIES)} categories. "
           "Placeholders in braces in a message fragment (`{tmp}`, `{path}`) are filled in when the entry runs.\n",
           "## Summary\n",
           "| Id | Category | Scenario → expected | Fault spec |",
           "|---|---|---|---|"]
    for e in entries:
        spec = code(e.inject) if e.inject else ""
        out.append(f"| {ref('catalog-' + e.id, e.id)} | {cell(e.category)} | {cell(prose(e.title))} | {cell(spec)} |")
    out.append("")
    for category in catalog.CATEGORIES:
        out.append(f"(catalog-{category})=\n## {esc(category)}\n")
        for e in (e for e in entries if e.category == category):
            out.append(f"(catalog-{e.id})=\n### {e.id}: {prose(e.title)}\n")
            rows = [f"- **Operation:** {prose(e.operation) or '(none)'}"]
            if e.inject:
                points = ", ".join(point_ref(p) for p in _spec_points(e.inject))
                how = "armed by the entry itself around the call it targets" if e.arm_in_scenario else "armed around the operation"
                rows.append(f"- **Fault spec:** {code(e.inject)} ({how}; points: {points})")
            else:
                rows.append("- **Fault spec:** none (the scenario sets up the failure itself)")
            if e.expect is None:
                rows.append("- **Expects:** no error: the entry checks an outcome")
            else:
                cls = e.error_class
                kind = "a warning" if issubclass(cls, Warning) else "raises"
                rows.append(f"- **Expects:** {kind} {error_ref(e.expect)}")
            if e.fragments:
                rows.append("- **Message contains:** " + ", ".join(code(f) for f in e.fragments))
            for backend, frags in e.fragments_for.items():
                rows.append(f"- **On `{backend}` the message contains:** " + ", ".join(code(f) for f in frags))
            for backend, why in e.not_for.items():
                rows.append(f"- **Not on `{backend}`:** {prose(why)}")
            rows.append(f"- **Stub column:** {_stub_words(e, catalog)}")
            if e.in_process:
                rows.append(f"- **In process only** (n/a with `--isolation process`): {prose(e.in_process)}")
            out.append("\n".join(rows) + "\n")
    out.append(_matrix_example())
    return "\n".join(out)


def _matrix_example() -> str:
    """The matrix run for real, its terminal output and its Markdown report."""
    with tempfile.TemporaryDirectory(prefix="bitnet-docs-matrix-") as tmp:
        command = ["python3", "-m", "fault_inject", "matrix", "--markdown", "matrix.md"]
        proc = subprocess.run([sys.executable, *command[1:]], cwd=tmp, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        report = (Path(tmp) / "matrix.md").read_text()
    shown = (proc.stdout + proc.stderr).rstrip().splitlines()
    head = shown[:6] + ["..."] + shown[-3:] if len(shown) > 12 else shown
    return "\n".join([
        "(catalog-matrix-report)=",
        "## The matrix's report\n",
        "The matrix runs every entry on the chosen backends (here the default, the embedded `reference` engine) "
        "and writes JSON, JUnit XML or Markdown reports besides its terminal table. This run happened when the "
        "page was built:\n",
        fence("$ " + " ".join(command) + "\n" + "\n".join(head), "console"),
        "and `matrix.md` as written, rendered:\n",
        _demote(report),
    ])


def _demote(markdown: str) -> str:
    """Headings of an included report moved below this page's ### level."""
    return re.sub(r"^(#{1,3}) ", lambda m: "#" * (len(m.group(1)) + 3) + " ", markdown, flags=re.M)


# ---- fault points ------------------------------------------------------------------------

_ENUM_LINE = re.compile(r"BITNET_FAULT_([A-Z_]+)\s*=\s*(\d+),\s*/\*\s*(.*?)\s*\*/")


def _action_comments() -> dict[str, str]:
    """Action name -> what it does, from the comments of bitnet_fault.h's enum (its one description)."""
    header = (REPO / "native" / "include" / "bitnet_fault.h").read_text()
    return {m.group(1).lower(): m.group(3) for m in _ENUM_LINE.finditer(header)}


def _grammar() -> str:
    """The grammar block of fault_inject.spec's docstring."""
    from fault_inject import spec

    doc = inspect.cleandoc(spec.__doc__ or "")
    m = re.search(r"::\n\n((?:    .*\n)+)", doc + "\n")
    if not m:
        raise LookupError("fault_inject.spec's docstring has no grammar block")
    return inspect.cleandoc(m.group(1))


@generator("points")
def points_page() -> str:
    import fault_inject as fi
    from fault_inject import registry, spec

    points = fi.points()
    comments = _action_comments()
    missing = [a for a in spec.ACTIONS if a not in comments]
    if missing:
        raise LookupError(f"bitnet_fault.h describes no action {missing}")
    codes = {v: k for k, v in fi.error_codes().items()}
    lim = registry.limits()
    state = "compiled in" if fi.compiled_in() else "not compiled in (this build has BITNET_FAULTS=0)"
    out = [f"This build registers {len(points)} points; fault injection is {state}.\n",
           "(points-grammar)=", "## Grammar\n",
           "One string for the command line, `BITNET_INJECT`, markers and fixtures (`fault_inject.spec`):\n",
           fence(_grammar()),
           f"A chain holds at most {lim.terms} terms; `N*` at most {lim.count}; `delay(ms)` at most "
           f"{lim.delay_ms} ms; `grow(n)` at most {lim.grow}; a point name or pattern at most {lim.name - 1} bytes. "
           "A trailing `*` in a point name matches a prefix (`session.*`, `dlsym.*`).\n",
           "(points-actions)=", "## Actions\n",
           "| Action | Argument | What it does |", "|---|---|---|"]
    for action in spec.ACTIONS:
        arg = spec.ARG_ACTIONS.get(action, "none")
        out.append(f"| {code(action)} | {arg} | {cell(esc(comments[action]))} |")
    out += ["", "`fail`, `oom`, `delay`, `hang` and `crash` work at every point; `missing`, `nan` and `grow` only at "
            "the points whose code performs them (the Actions column below). Arming an action a point does not "
            "accept is refused.\n",
            "(points-list)=", "## Points\n",
            "| Point | `fail` raises | Actions |", "|---|---|---|"]
    from pytest_bitnet.bridge import errors

    classes = errors.code_classes()
    for p in points:
        acts = ", ".join(a for a in spec.ACTIONS if a in p.actions)
        cls = classes[p.default_code].__name__
        out.append(f"| {point_ref(p.name)} | {error_ref(cls)} | {cell(acts)} |")
    out.append("")
    for p in points:
        acts = ", ".join(code(a) for a in spec.ACTIONS if a in p.actions)
        cls = classes[p.default_code].__name__
        out += [f"(point-{p.name})=", f"### {code(p.name)}\n", f"{prose(p.description)}.\n",
                f"- **`fail` returns:** {code(codes.get(p.default_code, p.default_code))} ({p.default_code}), "
                f"raised as {error_ref(cls)}",
                f"- **Actions:** {acts}\n"]
    return "\n".join(out)


# ---- error classes -----------------------------------------------------------------------

# Where no catalog entry raises a class, a small scenario does: run as an
# ordinary bitnet-run example on the page (so it is shown, and checked).
SCENARIOS: dict[str, str] = {
    "ComparisonError": """\
from pytest_bitnet.testing import crossval

model = bn.models.make_tiny_model("tiny.gguf", arch="bitnet", seed=0)
other = bn.models.make_tiny_model("other.gguf", arch="bitnet", seed=1)  # other weights
crossval.check(model, ["What is 2+2?"], other_model=other)  # llama.cpp is given `other`
""",
    "BackendCrashed": """\
import fault_inject as fi

model = bn.models.make_tiny_model("tiny.gguf", arch="bitnet", seed=0)
with bn.BitnetSession.create(model, isolation="process") as s:
    tokens = s.tokenize("What is 2+2?")
    with fi.inject("eval.step=crash"):  # abort() in the worker process
        s.evaluate(tokens)
""",
}


def _hierarchy(root: type, classes: list[type]) -> list[str]:
    lines: list[str] = []

    def walk(cls: type, depth: int) -> None:
        lines.append("  " * depth + f"- {error_ref(cls.__name__)}")
        for sub in classes:
            if cls in sub.__bases__ and sub is not cls:
                walk(sub, depth + 1)

    walk(root, 0)
    return lines


@contextlib.contextmanager
def _recording_scenarios() -> Iterator[list[Any]]:
    """run_entry, unchanged, with Scenario objects kept (their errors and warnings)."""
    from fault_inject.catalog import _core

    made: list[Any] = []

    class Recording(_core.Scenario):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.warnings_seen: list[warnings.WarningMessage] = []
            made.append(self)

        def warns(self, fn: Callable[..., Any], *args: Any, fragments: Any = None, **kw: Any) -> Any:
            def recorded(*a: Any, **k: Any) -> Any:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = fn(*a, **k)
                self.warnings_seen.extend(caught)
                for w in caught:  # to Scenario.warns, which checks them
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                return result

            recorded.__qualname__ = getattr(fn, "__qualname__", repr(fn))
            return super().warns(recorded, *args, fragments=fragments, **kw)

    with mock.patch.object(_core, "Scenario", Recording):
        yield made


def _real_errors(models: Path) -> dict[str, tuple[str, BaseException | warnings.WarningMessage]]:
    """Class name -> (entry id, the first error or warning of exactly that class),
    from the entries that expect the class, else from any entry that met it."""
    catalog = _catalog()
    found: dict[str, tuple[str, Any]] = {}
    ran: set[str] = set()

    def run(e: Any) -> None:
        with _recording_scenarios() as made:
            outcome = catalog.run_entry(e, "reference", models=models)
        if outcome.result != catalog.PASS:
            raise RuntimeError(f"catalog entry {e.id} did not pass on reference: {outcome.result}: {outcome.reason}")
        ran.add(e.id)
        for s in made:
            for err in [*s.errors_seen, *(w.message for w in s.warnings_seen)]:
                found.setdefault(type(err).__name__, (e.id, err))

    from pytest_bitnet import errors

    wanted = [n for n in errors.__all__ if isinstance(getattr(errors, n), type)
              and n not in ("BitnetError", "ErrorContext") and n not in SCENARIOS]
    for name in wanted:  # the entries that expect the class, in id order
        for e in catalog.CATALOG.values():
            if name in found:
                break
            if e.expect == name and e.id not in ran:
                run(e)
    for e in catalog.CATALOG.values():  # then those that expect any error (E32 meets every class)
        if any(n not in found for n in wanted) and e.expect == "BitnetError" and e.id not in ran:
            run(e)
    return found


def _context_lines(err: BaseException) -> str:
    ctx = getattr(err, "context", None)
    if ctx is None:
        return ""
    fields = [f"operation={ctx.operation!r}", f"phase={ctx.phase!r}", f"parameters={dict(ctx.parameters)!r}",
              f"native_code={ctx.native_code!r}"]
    if ctx.native_message and ctx.native_message != str(err):
        fields.append(f"native_message={ctx.native_message!r}")
    return "error.context: " + ", ".join(fields)


@generator("error-classes")
def error_classes_page() -> str:
    from fault_inject import error_codes
    from pytest_bitnet import errors

    catalog = _catalog()
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)
               and n != "ErrorContext"]
    by_code: dict[str, list[str]] = {}
    names = {v: k for k, v in error_codes().items()}
    for code_value, cls in sorted(errors.code_classes().items(), key=lambda kv: -kv[0]):
        by_code.setdefault(cls.__name__, []).append(f"{code(names.get(code_value, code_value))} ({code_value})")
    with tempfile.TemporaryDirectory(prefix="bitnet-docs-errors-") as tmp:
        real = _real_errors(Path(tmp))
    out = ["(error-hierarchy)=", "## Hierarchy\n",
           "Each class is importable from `pytest_bitnet.errors`. Some also derive from a built-in exception, so "
           "generic handlers catch them: `OutOfMemory` is a `MemoryError`, `OperationTimeout` a `TimeoutError`, "
           "`InvalidArgument` a `ValueError`. `OptionalSymbolMissing` is a `Warning`, never raised.\n"]
    out += _hierarchy(errors.BitnetError, classes)
    out += [f"- {error_ref('OptionalSymbolMissing')} (a `Warning`)", ""]
    out += ["(error-context)=", "## `ErrorContext`\n",
            "Every error carries `error.context`, an `ErrorContext` (a frozen dataclass): enough to reproduce the "
            "failure.\n", "| Field | Type | Default |", "|---|---|---|"]
    import dataclasses

    for f in dataclasses.fields(errors.ErrorContext):
        default = ("(required)" if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   else "computed when created" if f.default is dataclasses.MISSING else repr(f.default))
        out.append(f"| {code(f.name)} | {code(f.type)} | {cell(esc(default))} |")
    out += ["", rst(errors.ErrorContext.__doc__), "## The classes\n"]
    for cls in [errors.BitnetError, *[c for c in classes if c is not errors.BitnetError]]:
        name = cls.__name__
        bases = ", ".join(error_ref(b.__name__) if b.__module__ == errors.__name__ else code(b.__name__)
                          for b in cls.__bases__)
        out += [f"(error-{name})=", f"### `{name}`\n", f"Bases: {bases}\n", rst(cls.__doc__)]
        if name in by_code:
            out.append(f"Raised for the native codes {', '.join(by_code[name])}.\n")
        expecting = [e.id for e in catalog.CATALOG.values() if e.expect == name]
        if expecting:
            out.append("Catalog entries that expect it: " + ", ".join(ref(f"catalog-{i}", i) for i in expecting) + ".\n")
        if name in real:
            entry_id, err = real[name]
            out.append(f"A real message, from catalog entry {ref('catalog-' + entry_id, entry_id)} run on the "
                       "`reference` backend while this page was built:\n")
            context = _context_lines(err) if isinstance(err, BaseException) else ""
            out.append(fence(f"{name}: {err}" + (f"\n\n{context}" if context else "")))
        elif name in SCENARIOS:
            out += ["No catalog entry raises it; this scenario did, while this page was built:\n",
                    fence(f":raises: {name}\n{SCENARIOS[name]}", "{bitnet-run}")]
        elif cls is errors.BitnetError:
            out.append("Never raised itself: catch it to handle every error of the bridge.\n")
        else:
            raise LookupError(f"no catalog entry or scenario produces {name}: add one to SCENARIOS")
    return "\n".join(out)


# ---- command line ------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order they were added."""
    for action in parser._actions:  # argparse keeps no public list of them
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = ["| Argument | Default | What it is |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + (formatter._metavar_formatter(action, action.dest.upper())(1)[0])
            names = ", ".join(code(o + metavar) for o in action.option_strings)
        else:
            names = code(formatter._metavar_formatter(action, action.dest)(1)[0])
        helptext = formatter._expand_help(action) if action.help else ""
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            helptext += f" (one of: {', '.join(map(str, action.choices))})"
        if action.nargs == argparse.REMAINDER:
            helptext = helptext or "the rest of the command line, passed to the program"
        default = "" if action.default in (None, False, argparse.SUPPRESS) else code(repr(action.default))
        rows.append(f"| {names} | {cell(default)} | {cell(esc(helptext))} |")
    return rows


@generator("cli")
def cli_page() -> str:
    import fault_inject.__main__ as fi_main
    import pytest_bitnet.__main__ as bn_main

    out: list[str] = []
    # argparse wraps usage lines to the terminal's width: a fixed one, so the page is the same everywhere
    with mock.patch.dict("os.environ", {"COLUMNS": "100"}):
        return _cli_sections(out, bn_main, fi_main)


def _cli_sections(out: list[str], bn_main: Any, fi_main: Any) -> str:
    for prog, module in (("pytest_bitnet", bn_main), ("fault_inject", fi_main)):
        parser = module.build_parser()
        out += [f"(cli-{prog})=", f"## `python3 -m {prog}`\n", fence(parser.format_usage().strip()),
                fence(inspect.cleandoc(parser.description or ""))]
        for name, helptext, sub in _subparsers(parser):
            out += [f"(cli-{prog}-{name})=", f"### `{name}`\n", f"{prose(helptext[:1].upper() + helptext[1:])}.\n",
                    fence(sub.format_usage().strip())]
            if sub.description:
                out.append(fence(inspect.cleandoc(sub.description)))
            out += _argument_rows(sub) + [""]
    return "\n".join(out)


# ---- the pytest plugin -------------------------------------------------------------------


class _Recorder:
    """Stands in for pytest's Parser and its groups: records what a plugin's pytest_addoption adds."""

    def __init__(self) -> None:
        self.options: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self.ini: list[tuple[str, str]] = []

    def getgroup(self, name: str, description: str = "") -> _Recorder:
        return self

    def addoption(self, *names: str, **attrs: Any) -> None:
        self.options.append((names, attrs))

    def addini(self, name: str, help: str, **kw: Any) -> None:
        self.ini.append((name, help))


def _fixture_scope(obj: Any) -> str:
    marker = getattr(obj, "_fixture_function_marker", None) or getattr(obj, "_pytestfixturefunction", None)
    return getattr(marker, "scope", "function") if marker else "function"


def _fixture_doc(obj: Any) -> str | None:
    fn = getattr(obj, "_get_wrapped_function", None)
    return (fn() if fn else obj).__doc__


@generator("plugin")
def plugin_page() -> str:
    from pytest_bitnet.bridge import settings as bridge_settings
    from pytest_bitnet.plugin import fixtures, hookspecs, matrix, settings

    recorded = _Recorder()
    settings.add_options(recorded)  # type: ignore[arg-type]
    flags = {names[0] for names, _ in recorded.options}
    table = {o.flag: o for o in settings.OPTIONS}
    if flags != set(table):
        raise LookupError(f"add_options adds {sorted(flags)}, OPTIONS lists {sorted(table)}")
    out = ["(plugin-options)=", "## Options and ini keys\n",
           "Every setting has a command-line option and an ini key (in `pytest.ini`, `pyproject.toml`'s "
           "`[tool.pytest.ini_options]`, `tox.ini` or `setup.cfg`), some an environment variable too. "
           "Precedence, later wins: ini key < environment variable < command line (< marker, for the per-test "
           "ones). A bad value is a usage error naming where it came from.\n",
           "| Option | Ini key | Environment |", "|---|---|---|"]
    for o in settings.OPTIONS:
        label = "option-" + o.flag.lstrip("-")
        out.append(f"| {ref(label, o.flag)} | {code(o.ini)} | {code(o.env) if o.env else ''} |")
    out.append("")
    for o in settings.OPTIONS:
        label = "option-" + o.flag.lstrip("-")
        usage = o.flag if o.kind == "bool" else f"{o.flag}={o.metavar}"
        out += [f"({label})=", f"### `{usage}`\n", f"{esc(o.help[:1].upper() + o.help[1:])}.\n",
                f"- **Ini key:** {code(o.ini)}" + (" (true or false)" if o.kind == "bool" else ""),
                f"- **Environment variable:** {code(o.env) if o.env else 'none'}\n"]
    mrec = _Recorder()
    matrix.pytest_addoption(mrec)  # type: ignore[arg-type]
    out += ["(plugin-matrix-options)=", "## Matrix options\n",
            "With `-p pytest_bitnet.matrix` (what `python3 -m fault_inject matrix -n N` loads), the catalog's cells "
            "are collected as test items, `bitnet-matrix::E01[reference]` and so on. These options drive it; "
            "they have no ini keys.\n"]
    for names, attrs in mrec.options:
        label = "option-" + names[0].lstrip("-")
        metavar = attrs.get("metavar", "")
        usage = f"{names[0]}={metavar}" if metavar else names[0]
        helptext = attrs.get("help", "")
        if attrs.get("choices"):
            helptext += f" (one of: {', '.join(attrs['choices'])})"
        out += [f"({label})=", f"### `{usage}`\n", f"{esc(helptext[:1].upper() + helptext[1:])}.\n"]
    out += ["(plugin-markers)=", "## Markers\n",
            "Registered by the plugin (`pytest --markers` lists them).\n"]
    for name, text in settings.MARKERS.items():
        signature, _, description = text.partition(": ")
        out += [f"(marker-{name})=", f"### `{signature}`\n", f"{esc(description[:1].upper() + description[1:])}.\n"]
    out += ["(plugin-fixtures)=", "## Fixtures\n"]
    for name in fixtures.__all__:
        obj = getattr(fixtures, name)
        if isinstance(obj, type):
            continue
        out += [f"(fixture-{name})=", f"### `{name}`\n", f"Scope: `{_fixture_scope(obj)}`.\n", rst(_fixture_doc(obj))]
    for name in fixtures.__all__:
        obj = getattr(fixtures, name)
        if isinstance(obj, type):
            out.append(fence(f"{obj.__module__}.{name}\n:members:\n:no-index:", "{autoclass}"))
    out += ["(plugin-hooks)=", "## Hooks\n", rst(hookspecs.__doc__)]
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("pytest_bitnet_"):
            continue
        opts = getattr(fn, "pytest_spec", {}) or {}
        sig = inspect.signature(fn)
        out += [f"(hook-{name})=", f"### `{name}`\n", fence(f"def {name}{sig}: ...", "python")]
        if opts.get("firstresult"):
            out.append("The first non-None result wins (`firstresult`).\n")
        out.append(rst(fn.__doc__))
    out += ["(plugin-environment)=", "## Environment variables\n",
            "Every variable the project reads (`pytest_bitnet.bridge.settings.ENV_VARS`, the list "
            "`python3 -m pytest_bitnet diagnostics` prints):\n"]
    by_env = {o.env: o for o in settings.OPTIONS if o.env}
    for var in bridge_settings.ENV_VARS:
        also = f" (also {ref('option-' + by_env[var].flag.lstrip('-'), by_env[var].flag)})" if var in by_env else ""
        out.append(f"- {code(var)}{also}")
    return "\n".join(out) + "\n"


# ---- the Python API ----------------------------------------------------------------------


@generator("api")
def api_page() -> str:
    import fault_inject
    import pytest_bitnet

    out = ["(api-pytest_bitnet)=", "## `pytest_bitnet`\n", rst(pytest_bitnet.__doc__)]
    for name in pytest_bitnet.__all__:
        obj = getattr(pytest_bitnet, name)
        if inspect.ismodule(obj):
            continue
        out.append(_autodoc(obj))
    out += ["(api-errors)=", "## `pytest_bitnet.errors`\n",
            "The exception classes; see {doc}`error-classes` for each with a real message.\n",
            "(api-models)=", "## `pytest_bitnet.models`\n",
            fence("pytest_bitnet.testing.models\n:members:", "{automodule}"),
            "(api-crossval)=", "## `pytest_bitnet.testing.crossval`\n",
            fence("pytest_bitnet.testing.crossval\n:members:", "{automodule}"),
            "(api-fault_inject)=", "## `fault_inject`\n", rst(fault_inject.__doc__)]
    for name in fault_inject.__all__:
        out.append(_autodoc(getattr(fault_inject, name)))
    return "\n".join(out)


def _autodoc(obj: Any) -> str:
    kind = "autoclass" if isinstance(obj, type) else "autofunction"
    target = f"{obj.__module__}.{obj.__qualname__}"
    return fence(target + ("\n:members:" if kind == "autoclass" else ""), f"{{{kind}}}")
