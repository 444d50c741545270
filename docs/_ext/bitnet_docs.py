"""Executed examples for the pytest-bitnet docs: a page cannot drift from the code.

Three directives, each run while the page is read, each rendering what
really happened:

``bitnet-run``    Python code, run in the page's namespace (shared by the
                  page's blocks, in order; ``import pytest_bitnet as bn``
                  done beforehand) with the page's temporary directory as
                  the working directory.  Rendered: the code, then what it
                  printed.  ``:raises: Class`` (bare or qualified name): the
                  block must raise it, and the output ends ``Class: message``.
                  ``:hide-code:`` shows only the output.
``bitnet-file``   ``{bitnet-file} path``: the body is written to ``path`` in
                  the page's directory (overwriting an earlier version) and
                  shown captioned with the path.
``bitnet-shell``  command lines, run by one bash in the page's directory,
                  the docs' Python first on PATH.  Rendered ``$ command`` and
                  its output (stdout and stderr together).  Every command
                  but the last must exit 0, the last with ``:returncode: N``
                  (default 0).  ``:timeout: S`` (default 120) for the block;
                  ``:filter: REGEX`` and ``:max-lines: N`` trim the shown
                  output (``...`` marks what was left out).

A failing example is logged as an error at its page and line, and the
build fails at the end (also without -W), after --keep-going has reported
every failure.

The generated reference pages use ``{bitnet-generated} NAME`` blocks,
replaced by Markdown from :mod:`bitnet_reference` before the page is
parsed (so headings and ``(label)=`` targets in it are ordinary Markdown).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

# ---- one page's state: its namespace and its working directory -------------------------


@dataclass
class Page:
    docname: str
    workdir: Path
    namespace: dict[str, Any] = field(default_factory=dict)


_pages: dict[str, Page] = {}
_failures: list[str] = []  # "docname:line: what", for the end of the build


def _page(docname: str) -> Page:
    page = _pages.get(docname)
    if page is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"bitnet-docs-{docname.replace('/', '-')}-"))
        import pytest_bitnet as bn  # the package is documented, so it must import

        page = _pages[docname] = Page(docname, workdir, {"__name__": "__bitnet_docs__", "bn": bn})
    return page


def _end_page(app: Sphinx, doctree: nodes.document) -> None:
    # After a page is read: its examples are done.  Nothing may stay armed
    # into the next page, whatever the last block did.
    page = _pages.pop(app.env.docname, None)
    if page is None:
        return
    page.namespace.clear()
    if "fault_inject" in sys.modules:
        sys.modules["fault_inject"].disarm_all()
    shutil.rmtree(page.workdir, ignore_errors=True)


def _always_reread(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    # Examples run when a page is read; a cached doctree would show the
    # output of an older build of the code.  So every build reads every page.
    return sorted(env.found_docs - added - changed - removed)


def _fail_build(app: Sphinx, exception: BaseException | None) -> None:
    if exception is None and _failures:
        count = len(_failures)
        raise ExtensionError(f"{count} docs example{'s' if count > 1 else ''} failed:\n  " + "\n  ".join(_failures))


# ---- shared by the three directives ------------------------------------------------------


def _trim(text: str, pattern: str | None, max_lines: int | None) -> str:
    """The output as shown: matching lines only, at most max_lines; '...' where lines were dropped."""
    lines = text.splitlines()
    if pattern:
        regex = re.compile(pattern)
        kept: list[str] = []
        for line in lines:
            if regex.search(line):
                kept.append(line)
            elif not kept or kept[-1] != "...":
                kept.append("...")
        lines = kept
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines)


class _Example(SphinxDirective):
    has_content = True

    def fail(self, what: str) -> list[nodes.Node]:
        """Logs the failure at the directive's line, records it for the end of the build,
        and shows it on the page (a build that fails is never published, but read locally)."""
        where = f"{_source(self.env, self.env.docname)}:{self.lineno}"
        logger.error(f"{self.name} example failed: {what}", location=(self.env.docname, self.lineno))
        _failures.append(f"{where}: {what.splitlines()[0]}")
        return [nodes.literal_block(what, what, classes=["bitnet-failed"])]

    @property
    def page(self) -> Page:
        return _page(self.env.docname)

    @property
    def body(self) -> str:
        return "\n".join(self.content) + "\n"


def _literal(text: str, language: str, *classes: str) -> nodes.literal_block:
    return nodes.literal_block(text, text, language=language, classes=list(classes))


def _source(env: Any, docname: str) -> str:
    """The page's file as the reader knows it (docs/quickstart.md)."""
    return os.path.relpath(env.doc2path(docname), os.path.dirname(env.srcdir))


# ---- bitnet-run --------------------------------------------------------------------------


def _matches(exc: BaseException, name: str) -> bool:
    """exc is an instance of the class called `name` (bare, or module.qualname of the class or an alias)."""
    if "." not in name:
        return any(cls.__name__ == name for cls in type(exc).__mro__)
    module, _, attr = name.rpartition(".")
    try:
        target = getattr(__import__(module, fromlist=[attr]), attr)
    except (ImportError, AttributeError):
        target = None
    if isinstance(target, type):
        return isinstance(exc, target)
    return any(f"{cls.__module__}.{cls.__qualname__}" == name for cls in type(exc).__mro__)


class BitnetRun(_Example):
    option_spec = {
        "raises": directives.unchanged_required,
        "hide-code": directives.flag,
        "filter": directives.unchanged_required,
        "max-lines": directives.positive_int,
    }

    def run(self) -> list[nodes.Node]:
        page, code = self.page, self.body
        expected = self.options.get("raises")
        filename = f"{_source(self.env, self.env.docname)}:{self.lineno}"
        out = io.StringIO()
        raised: BaseException | None = None
        cwd = os.getcwd()
        sys.path.insert(0, str(page.workdir))  # a module a bitnet-file wrote is importable
        try:
            compiled = compile(code, filename, "exec")
            os.chdir(page.workdir)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec(compiled, page.namespace)
        except (KeyboardInterrupt, SystemExit) as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raised = exc
        except BaseException as exc:  # what the example raised is the result
            raised = exc
        finally:
            os.chdir(cwd)
            sys.path.remove(str(page.workdir))
        printed = out.getvalue()
        if raised is not None and not (expected and _matches(raised, expected)):
            tb = "".join(traceback.format_exception(type(raised), raised, raised.__traceback__))
            want = f"expected {expected}, got" if expected else "raised"
            return self.fail(f"{want} {type(raised).__name__}: {raised}\n{printed}{tb}")
        if raised is None and expected:
            return self.fail(f"expected {expected}, but the block raised nothing\n{printed}")
        if raised is not None:
            printed += ("" if not printed or printed.endswith("\n") else "\n") + f"{type(raised).__name__}: {raised}"
        shown: list[nodes.Node] = []
        if "hide-code" not in self.options:
            shown.append(_literal(code.rstrip("\n"), "python", "bitnet-code"))
        printed = _trim(printed.rstrip("\n"), self.options.get("filter"), self.options.get("max-lines"))
        if printed:
            shown.append(_literal(printed, "text", "bitnet-output"))
        return shown


# ---- bitnet-file -------------------------------------------------------------------------

_LANGUAGES = {".py": "python", ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".yml": "yaml", ".yaml": "yaml",
              ".sh": "bash", ".c": "c", ".h": "c", ".json": "json", ".md": "markdown", ".txt": "text"}


class BitnetFile(_Example):
    required_arguments = 1
    option_spec = {"language": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        relative = Path(self.arguments[0])
        target = (self.page.workdir / relative).resolve()
        if relative.is_absolute() or not target.is_relative_to(self.page.workdir.resolve()):
            return self.fail(f"{self.arguments[0]!r}: the path must stay inside the page's directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.body)
        language = self.options.get("language") or _LANGUAGES.get(relative.suffix, "text")
        literal = _literal(self.body.rstrip("\n"), language, "bitnet-file")
        self.set_source_info(literal)
        # the caption is the path as it is, never parsed (a __init__.py is no markup)
        caption = nodes.caption(str(relative), str(relative))
        self.set_source_info(caption)
        wrapper = nodes.container("", literal_block=True, classes=["literal-block-wrapper"])
        wrapper += [caption, literal]
        return [wrapper]


# ---- bitnet-shell ------------------------------------------------------------------------

_MARK = "\x1ebitnet-rc"  # ends each command's output: the marker, its index, its status


def _commands(lines: list[str]) -> list[str]:
    """The body's command lines; a line ending in a backslash continues on the next."""
    commands: list[str] = []
    pending = ""
    for line in lines:
        pending = f"{pending}\n{line}" if pending else line
        if not line.endswith("\\"):
            if pending.strip():
                commands.append(pending)
            pending = ""
    if pending.strip():
        commands.append(pending)
    return commands


class BitnetShell(_Example):
    option_spec = {
        "returncode": int,
        "timeout": directives.positive_int,
        "filter": directives.unchanged_required,
        "max-lines": directives.positive_int,
    }

    def run(self) -> list[nodes.Node]:
        commands = _commands(list(self.content))
        if not commands:
            return self.fail("no command")
        want = self.options.get("returncode", 0)
        timeout = self.options.get("timeout", 120)
        # One bash runs every line (so cd and export carry on); after each
        # command it prints a marker with the command's status, so output and
        # status are told apart per command; it stops at the first failure.
        script = []
        for i, cmd in enumerate(commands):
            last = i == len(commands) - 1
            script.append(f"{cmd}\n__rc=$?; printf '{_MARK} {i} %d\\n' \"$__rc\"")
            if not last:
                script.append('[ "$__rc" -eq 0 ] || exit "$__rc"')
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1",
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=self.page.workdir, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # so a timeout kills the command's children too
        try:
            raw, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raw, _ = proc.communicate()
            return self.fail(f"timed out after {timeout} s:\n{raw.decode(errors='replace')}")
        text = raw.decode(errors="replace")
        pieces = re.split(re.escape(_MARK) + r" (\d+) (-?\d+)\n", text)
        # pieces: output, index, status, output, index, status, ..., trailing
        shown: list[str] = []
        for i in range(len(pieces) // 3):
            output, status = pieces[3 * i], int(pieces[3 * i + 2])
            cmd = commands[int(pieces[3 * i + 1])]
            trimmed = _trim(output.rstrip("\n"), self.options.get("filter"), self.options.get("max-lines"))
            shown.append("$ " + cmd.replace("\n", "\n> ") + ("\n" + trimmed if trimmed else ""))
            last = int(pieces[3 * i + 1]) == len(commands) - 1
            if (last and status != want) or (not last and status != 0):
                expected = want if last else 0
                return self.fail(f"`{cmd}` exited {status}, expected {expected}:\n{output}")
        if len(pieces) // 3 != len(commands):  # the shell itself ended early (exit in a command)
            return self.fail(f"bash exited {proc.returncode} before every command ran:\n{text}")
        return [_literal("\n".join(shown), "console", "bitnet-shell")]


# ---- generated reference pages -----------------------------------------------------------

_GENERATED = re.compile(r"^```\{bitnet-generated\}[ \t]+(\S+)[ \t]*\n```[ \t]*$", re.MULTILINE)


def _splice_generated(app: Sphinx, docname: str, source: list[str]) -> None:
    # Generated Markdown replaces its block before MyST parses the page, so
    # its headings and labels are the page's own (a directive's output could
    # not hold sections).
    if "{bitnet-generated}" not in source[0]:
        return
    import bitnet_reference

    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        try:
            return bitnet_reference.generate(name, app=app, docname=docname)
        except Exception as exc:  # noqa: BLE001 - any failure is the page's build error
            lineno = source[0].count("\n", 0, match.start()) + 1
            what = f"generating {name!r} failed: {type(exc).__name__}: {exc}"
            logger.error(what, location=(docname, lineno))
            _failures.append(f"{_source(app.env, docname)}:{lineno}: {what}")
            return f"```text\n{traceback.format_exc()}\n```\n"

    source[0] = _GENERATED.sub(generate, source[0])


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("bitnet-run", BitnetRun)
    app.add_directive("bitnet-file", BitnetFile)
    app.add_directive("bitnet-shell", BitnetShell)
    app.connect("source-read", _splice_generated)
    app.connect("doctree-read", _end_page)
    app.connect("env-get-outdated", _always_reread)
    app.connect("build-finished", _fail_build)
    # parallel reading would run pages' examples in other processes, where
    # the failures list and the per-page state do not reach
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
