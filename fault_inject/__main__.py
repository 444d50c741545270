"""python -m fault_inject: list points, check a spec, run a program with faults.

    python -m fault_inject points                 # the registry
    python -m fault_inject points --interpose=llama   # the interposed llama.cpp functions' points
    python -m fault_inject check 'alloc=2*off->oom'   # parse + resolve, print the canonical form
    python -m fault_inject run [--spec S] [--seed N] [--thread] [--timeout S] script.py [args...]
    python -m fault_inject run --spec S -m package.module [args...]
    python -m fault_inject run --interpose=llama --spec 'llama_decode=fail' app.py
    python -m fault_inject matrix [--backend B]... [--only E20,E21] [--category C] [-n N]
                                  [--timeout S] [--json F] [--junit F] [--markdown F]

``run`` arms the spec (default: $BITNET_INJECT) for the whole program and
prints, on exit, the hits and firings of every armed point.  With
``--interpose=llama`` the program's llama-cpp-python loads the interposing
libllama (fault_inject.interpose), so the spec may name its points
(``llama_decode``, ``llama_*``).
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Sequence

from pytest_bitnet.bridge import settings, validate

from . import arming, env, registry, spec
from . import matrix as _matrix


def _interpose(kind: str | None) -> object | None:
    """Enables interposition of `kind` (None: nothing is loaded); prints
    why not and returns None on failure."""
    from . import interpose

    try:
        return interpose.enable(kind) if kind else None
    except interpose.InterposeError as exc:
        print(f"fault_inject: --interpose={kind}: {exc}", file=sys.stderr)
        return False


def _interposed_points(kind: str) -> int:
    from . import interpose

    try:
        rows = interpose.points(kind)
    except interpose.InterposeError as exc:
        print(f"fault_inject: --interpose={kind}: {exc}", file=sys.stderr)
        return 2
    lib = interpose.loaded()[0]
    print(f"{len(rows)} interposed {kind} points ({lib.library}, forwarding to {lib.real_library}); {kind}_*=ACTION arms every one that performs ACTION")
    width = max((len(p.name) for p in rows), default=0)
    for p in rows:
        acts = ",".join(a for a in spec.ACTIONS if a in p.actions)
        print(f"{p.name:<{width}}  [{acts}]")
        print(f"{'':<{width}}  {p.description}")
    return 0


def _points(args: argparse.Namespace) -> int:
    if args.interpose:
        return _interposed_points(args.interpose)
    rows = registry.points()
    width = max(len(p.name) for p in rows)
    state = "compiled in" if registry.compiled_in() else "NOT compiled in (built with BITNET_FAULTS=0)"
    print(f"{len(rows)} fault points, {state}")
    for p in rows:
        acts = ",".join(a for a in spec.ACTIONS if a in p.actions)
        print(f"{p.name:<{width}}  {p.default_error:<27} [{acts}]")
        if args.verbose:
            print(f"{'':<{width}}  {p.description}")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        resolved = registry.validate(args.spec, source="the command line")
    except spec.FaultSpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(resolved)
    for ce in resolved.entries:
        print(f"  {ce.pattern}: arms {', '.join(ce.points)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    text = args.spec or os.environ.get(env.ENV_SPEC, "")
    if not text.strip():
        print(f"fault_inject run: no spec: pass --spec or set {env.ENV_SPEC}", file=sys.stderr)
        return 2
    # Importing this package armed $BITNET_INJECT already: take it over, so
    # the spec is armed once, with this command's seed and scope.
    env.release_env()
    # before arming (the spec may name the interposer's points, registered
    # when it attaches) and before the program imports llama_cpp
    interposed = _interpose(args.interpose)
    if interposed is False:
        return 2
    if interposed is not None and args.timeout is not None:
        from . import interpose

        interpose.set_timeout(args.timeout)
    try:
        armed = arming.arm(text, seed=args.seed, thread=args.thread, source="--spec" if args.spec else env.ENV_SPEC)
    except (spec.FaultSpecError, arming.FaultStateError, registry.InjectionNotCompiled) as exc:
        print(exc, file=sys.stderr)
        return 2
    code = 0
    sys.argv = [args.target, *args.args]
    previous = settings.configure(timeout=args.timeout) if args.timeout is not None else None
    try:
        if args.module:
            runpy.run_module(args.target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(args.target, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if previous is not None:
            settings.restore(previous)
        report = armed.disarm()
        print(f"fault_inject: {report.summary()}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' CLI reference is generated from it)."""
    ap = argparse.ArgumentParser(prog="python -m fault_inject", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("points", help="list the registered fault points")
    p.add_argument("-v", "--verbose", action="store_true", help="with descriptions")
    p.add_argument("--interpose", choices=("llama",), help="list the points of the interposing libllama instead (builds it if needed)")
    p.set_defaults(fn=_points)
    c = sub.add_parser("check", help="parse and resolve a spec")
    c.add_argument("spec")
    c.set_defaults(fn=_check)
    r = sub.add_parser("run", help="run a Python program with a spec armed")
    r.add_argument("--spec", help=f"the spec (default: ${env.ENV_SPEC})")
    r.add_argument("--seed", type=int, help=f"seed of probability terms (default: ${env.ENV_SEED} or random)")
    r.add_argument("--thread", action="store_true", help="only the main thread's hits count")
    r.add_argument("--timeout", **settings.timeout_option("the program makes"))
    r.add_argument("-m", dest="module", action="store_true", help="target is a module name")
    r.add_argument("--interpose", choices=("llama",),
                   help="the program's llama-cpp-python loads the interposing libllama: the spec may name llama_* points "
                        f"(also ${env.ENV_INTERPOSE}, which a spec in ${env.ENV_SPEC} naming llama_* points needs)")
    r.add_argument("target")
    r.add_argument("args", nargs=argparse.REMAINDER)
    r.set_defaults(fn=_run)
    m = sub.add_parser("matrix", help="run the 52 catalogued error paths on one or more backends",
                       description=_matrix.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--backend", action="append", metavar="B",
                   help="reference (default), dlopen, stub, llama; repeat or comma-separate for side-by-side columns")
    m.add_argument("--only", action="append", metavar="IDS", help="only these entries, e.g. E20,E21")
    m.add_argument("--category", action="append", metavar="C", help="only this category (repeatable)")
    m.add_argument("-n", dest="workers", type=int, default=0, metavar="N", help="run on N pytest-xdist workers (default: in this process)")
    m.add_argument("--library", metavar="PATH", help="the library the dlopen column loads (default: discovery)")
    m.add_argument("--timeout", **settings.timeout_option("in each cell (an entry's own timeouts still win)"))
    m.add_argument("--isolation", choices=validate.ISOLATIONS, default=None,
                   help="where each cell's sessions run: none (in this process) or process (a worker process each: "
                        "hard deadlines, crashes contained); default: $BITNET_ISOLATION, else none")
    m.add_argument("--models", metavar="DIR", help="where to generate the test models (default: a temporary directory)")
    m.add_argument("--json", metavar="F", help="write the matrix as JSON")
    m.add_argument("--junit", metavar="F", help="write a JUnit XML report")
    m.add_argument("--markdown", metavar="F", help="write a Markdown table")
    m.add_argument("-v", "--verbose", action="store_true", help="print each cell as it finishes (in process)")
    m.set_defaults(fn=_matrix.main)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "matrix":
        # a CLI is an application: native warnings reach stderr (the
        # library itself only adds a NullHandler).  Not for the matrix,
        # whose cells provoke failures on purpose and report each in its
        # table: their log lines are the cells' expected output.
        from pytest_bitnet.bridge.native_log import cli_handler

        cli_handler()
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
