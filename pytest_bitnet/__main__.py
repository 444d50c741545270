"""python -m pytest_bitnet COMMAND

  demo [--keep DIR]   build a tiny BitNet model, run a session over it and
                      print tokens, logits and live counters
  diagnostics [--backend B] [--library PATH] [--json]
                      what the bridge would load and why; exit 1 when a
                      required part is missing
  crossval MODEL [--prompts FILE] [--tolerance T] [--timeout S] [--explain [--other-model FILE]]
                      reference engine vs llama.cpp: tokens and logits per
                      prompt; exit 1 on divergence
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from .bridge import settings
from .bridge.validate import BACKENDS
from .bridge.capabilities import capabilities
from .bridge.counters import live_counters
from .bridge.session import BitnetSession
from .testing import models


def _demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep) if args.keep else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        path = models.make_tiny_model(where / "tiny.gguf", arch="bitnet", seed=0)
        print(f"model      {path} ({path.stat().st_size} bytes)")
        print(f"cpu        {capabilities().as_dict()}")
        with BitnetSession.create(path, n_ctx=512) as s:
            toks = s.tokenize(args.prompt)
            logits = s.evaluate(toks)
            print(f"tokens     {toks.tolist()}")
            print(f"logits     shape={logits.shape} dtype={logits.dtype} finite={bool(np.isfinite(logits).all())}")
            print(f"next token {int(logits[-1].argmax())}")
            print(f"live       {live_counters()}")
        after = live_counters()
        print(f"closed     {after}")
        return 0 if after["contexts"] == 0 and after["bytes"] == 0 else 1


def _diagnostics(args: argparse.Namespace) -> int:
    from .bridge.diagnostics import diagnostics, format_text

    report = diagnostics(args.backend, args.library)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0 if report["ok"] else 1


def _crossval(args: argparse.Namespace) -> int:
    from .bridge.errors import BitnetError
    from .testing import crossval

    prompts = crossval.read_prompts(args.prompts) if args.prompts else crossval.default_corpus()
    previous = settings.configure(timeout=args.timeout) if args.timeout is not None else None
    try:
        results = crossval.compare(args.model, prompts, other_model=args.other_model)
        print(crossval.format_table(results, args.tolerance))
        bad = [r for r in results if r.diverges(args.tolerance)]
        worst = max((r.max_abs_diff for r in results if r.tokens_equal), default=0.0)
        print(f"{len(results)} prompts, {len(bad)} diverging, worst max abs diff {worst:.3g} (tolerance {args.tolerance:g})")
        print(crossval.summarize(results, args.tolerance).line())
        build = crossval.ggml_build()
        if build is not None:  # which summation orders the two engines share
            print(build.describe())
        for r in bad:
            print(f"DIVERGENCE {r.describe()}")
        if args.explain or args.other_model:
            _explain(args, results, bad)
    except BitnetError as exc:
        print(f"crossval could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            settings.restore(previous)
    return 1 if bad else 0


# prompts explained at most, so a broken engine does not print pages
EXPLAIN_MAX = 5


def _explain(args: argparse.Namespace, results: list, bad: list) -> None:
    from .testing import explain

    # the diverging prompts; when none diverges, the one of largest difference
    chosen = [r for r in bad if r.tokens_equal][:EXPLAIN_MAX]
    if not chosen:
        evaluated = [r for r in results if r.tokens_equal and r.n_tokens]
        if not evaluated:
            return
        chosen = [max(evaluated, key=lambda r: r.max_abs_diff)]
        print("no prompt diverges; the largest difference explained:")
    for r in chosen:
        e = explain.explain(args.model, r.prompt, other_model=args.other_model)
        print(f"EXPLAIN {e.describe()}")


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' CLI reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="python -m pytest_bitnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a session over a generated tiny model")
    demo.add_argument("--prompt", default="What is 2+2?")
    demo.add_argument("--keep", metavar="DIR", help="write the model into DIR instead of a temporary directory")
    demo.set_defaults(func=_demo)
    diag = sub.add_parser("diagnostics", help="environment, library discovery, symbols and fallbacks")
    diag.add_argument("--backend", choices=BACKENDS)
    diag.add_argument("--library", metavar="PATH", help="dlopen this library instead of discovering one")
    diag.add_argument("--json", action="store_true", help="print the report as JSON")
    diag.set_defaults(func=_diagnostics)
    cv = sub.add_parser("crossval", help="reference engine vs llama.cpp on one model")
    cv.add_argument("model", help="a .gguf model both can load (e.g. bitnet TQ2_0)")
    cv.add_argument("--prompts", metavar="FILE", help="one prompt per line (\\t \\n \\uXXXX escapes; an empty line is the empty prompt)")
    cv.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit difference allowed (default 1e-3)")
    cv.add_argument("--timeout", **settings.timeout_option("of both engines"))
    cv.add_argument(
        "--explain",
        action="store_true",
        help="for each diverging prompt (at most 5; else the one of largest difference) compare the engines' "
        "intermediate tensors and print the first that differs and whether it crossed a rounding step",
    )
    cv.add_argument("--other-model", metavar="FILE", help="give llama.cpp this file instead of MODEL (e.g. a copy with a perturbed weight, to see --explain find it)")
    cv.set_defaults(func=_crossval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # a CLI is an application: native warnings reach stderr (the library
    # itself only adds a NullHandler, bridge/native_log.py)
    from .bridge.native_log import cli_handler

    cli_handler()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
