"""E34-E43: the fallback tier, and saying which tier served what."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.diagnostics import format_text
from pytest_bitnet.testing.crossval import DEFAULT_PROMPTS

from ._core import STUB_SAME, Scenario, entry

_FORCE = {"BITNET_FORCE_LLAMA_FALLBACK": "1"}

#: Prompts both tiers must tokenize alike (ASCII, unicode, whitespace runs, empty, special tokens).
CORPUS: tuple[str, ...] = DEFAULT_PROMPTS


def _quiet_session(s: Scenario, **kw: Any) -> bn.BitnetSession:
    """A session whose fallback warnings are expected and not the point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        return s.session(**kw)


@entry("E34", "fallback-tokenize", "forced fallback (`BITNET_FORCE_LLAMA_FALLBACK=1`) → tokens start with BOS",
       expect="OptionalSymbolMissing", fragments=("tokenize served by fallback", "BITNET_FORCE_LLAMA_FALLBACK=1"))
def e34(s: Scenario) -> None:
    """BITNET_FORCE_LLAMA_FALLBACK=1; session.tokenize('hello world')"""
    with s.env(**_FORCE):
        sess = s.session()
        tokens = s.warns(sess.tokenize, "hello world")
    s.independent_fallback(sess, "tokenize")
    s.check(len(tokens) > 1 and tokens[0] == 1, f"fallback tokens must start with BOS (1): {list(tokens)}")
    s.check(sess.backend_info["tokenize"].startswith("fallback:"), f"served by {sess.backend_info['tokenize']!r}")


@entry("E35", "fallback-tokenize", "native and fallback tokens identical over a prompt corpus")
def e35(s: Scenario) -> None:
    """tokenize each CORPUS prompt natively and with BITNET_FORCE_LLAMA_FALLBACK=1, with and without parse_special"""
    native = s.session()
    with s.env(**_FORCE):
        fallback = _quiet_session(s)
    for prompt in CORPUS:
        for special in (False, True):
            a = native.tokenize(prompt, parse_special=special)
            b = fallback.tokenize(prompt, parse_special=special)
            s.check(np.array_equal(a, b), f"tokens differ for {prompt!r} (parse_special={special}): {list(a)} vs {list(b)}")
    s.check(fallback.backend_info["tokenize"].startswith("fallback:"), "the forced session did not use the fallback")
    s.independent_fallback(fallback, "tokenize")


def _warn_lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


@entry("E36", "fallback-tokenize", "fallback logs a warning naming the missing symbol and the fallback used",
       expect="OptionalSymbolMissing", inject="dlsym.bitnet_cpp_tokenize_with_context=missing",
       fragments=("bitnet_cpp_tokenize_with_context",), stub=STUB_SAME)
def e36(s: Scenario) -> None:
    """a library lacking bitnet_cpp_tokenize_with_context; session.tokenize; the pytest_bitnet log"""
    with s.logs() as records:
        sess = s.session(**s.library_args())
        s.warns(sess.tokenize, "hello")
    lines = [line for line in _warn_lines(records) if "bitnet_cpp_tokenize_with_context" in line and "fallback" in line]
    s.check(lines, f"no WARN line names the symbol and the fallback: {_warn_lines(records)}")


@entry("E37", "fallback-eval", "forced fallback eval → one row of logits per token",
       expect="OptionalSymbolMissing", fragments=("evaluate served by fallback",))
def e37(s: Scenario) -> None:
    """BITNET_FORCE_LLAMA_FALLBACK=1; session.evaluate(tokens)"""
    with s.env(**_FORCE):
        sess = _quiet_session(s)
        tokens = sess.tokenize("one row per token")
        logits = s.warns(sess.evaluate, tokens)
    s.independent_fallback(sess, "evaluate")
    s.check(logits.shape == (len(tokens), sess.n_vocab), f"logits shape {logits.shape} for {len(tokens)} tokens")


@entry("E38", "fallback-eval", "native vs fallback logits: max abs difference ≤ 1e-3")
def e38(s: Scenario) -> None:
    """evaluate the same tokens natively and with BITNET_FORCE_LLAMA_FALLBACK=1"""
    native = s.session()
    tokens = native.tokenize("native and fallback agree")
    want = native.evaluate(tokens)
    with s.env(**_FORCE):
        fallback = _quiet_session(s)
    got = fallback.evaluate(tokens)
    s.independent_fallback(fallback, "evaluate")
    diff = float(np.abs(got - want).max())
    s.check(diff <= 1e-3, f"max abs difference {diff:.3g} > 1e-3")
    s.check(fallback.backend_info["evaluate"].startswith("fallback:"), "the forced session did not use the fallback")


@entry("E39", "fallback-eval", "fallback eval logs its warning",
       expect="OptionalSymbolMissing", inject="dlsym.bitnet_cpp_eval_with_context=missing",
       fragments=("bitnet_cpp_eval_with_context",), stub=STUB_SAME)
def e39(s: Scenario) -> None:
    """a library lacking bitnet_cpp_eval_with_context; session.evaluate; the pytest_bitnet log"""
    with s.logs() as records:
        sess = s.session(**s.library_args())
        s.warns(sess.evaluate, [1, 2, 3])
    lines = [line for line in _warn_lines(records) if "bitnet_cpp_eval_with_context" in line and "fallback" in line]
    s.check(lines, f"no WARN line names the symbol and the fallback: {_warn_lines(records)}")


@entry("E40", "fallback-chain", "optional symbols and fallback all missing → CppNotAvailable naming both tiers",
       expect="CppNotAvailable", inject="dlsym.bitnet_cpp_eval_with_context=missing",
       fragments=("no tier can serve evaluate", "native tier", "lacks bitnet_cpp_eval_with_context", "fallback tier is disabled"),
       stub=STUB_SAME)
def e40(s: Scenario) -> None:
    """BITNET_FALLBACK=none; create(backend='dlopen') on a library lacking bitnet_cpp_eval_with_context"""
    with s.env(BITNET_FALLBACK="none"):
        s.fails(bn.BitnetSession.create, s.model, **s.library_args())


@entry("E41", "fallback-chain", "fallback in a session loads the model once over 10 calls",
       inject="dlsym.bitnet_cpp_eval_with_context=missing", stub=STUB_SAME,
       in_process="it counts model loads in this process's model_loads, and an isolated session loads in its worker")
def e41(s: Scenario) -> None:
    """a library lacking bitnet_cpp_eval_with_context; one session, 10 evaluations; counters' model_loads"""
    before = bn.live_counters()["model_loads"]
    sess = _quiet_session(s, **s.library_args())
    after_create = bn.live_counters()["model_loads"]
    tokens = sess.tokenize("ten calls")
    for _ in range(10):
        sess.reset()
        sess.evaluate(tokens)
    loads = bn.live_counters()["model_loads"] - after_create
    s.check(loads == 0, f"the fallback loaded the model {loads} more times over 10 calls")
    s.check(after_create - before == 2, f"create loaded {after_create - before} models: expected the library's and the fallback's")


@entry("E42", "diagnostics", "diagnostics list env vars, mode, library path, each symbol required/optional with status and fallback",
       inject="dlsym.bitnet_cpp_tokenize_with_context=missing", stub=STUB_SAME)
def e42(s: Scenario) -> None:
    """bn.diagnostics(backend='dlopen') with a library lacking bitnet_cpp_tokenize_with_context"""
    args = s.library_args()
    report = bn.diagnostics(backend="dlopen", library_path=args.get("library_path"))
    s.check(report["mode"] == "dlopen" and report.get("library", "").endswith(".so"), f"mode/library: {report.get('mode')}, {report.get('library')}")
    s.check({"BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_FALLBACK"} <= set(report["env"]), "environment variables missing")
    symbols = {sym["name"]: sym for sym in report["symbols"]}
    init = symbols.get("bitnet_cpp_init_context", {})
    s.check(init.get("required") and init.get("status") == "found", f"bitnet_cpp_init_context: {init}")
    tok = symbols.get("bitnet_cpp_tokenize_with_context", {})
    s.check(not tok.get("required") and tok.get("status") == "missing" and str(tok.get("served_by", "")).startswith("fallback"),
            f"bitnet_cpp_tokenize_with_context: {tok}")
    s.check(report["ok"], f"a missing optional symbol must not make the report fail: {report['errors']}")
    text = format_text(report)
    s.check("bitnet_cpp_tokenize_with_context" in text and "optional" in text and "missing" in text, "the text report lacks the symbol table")


@entry("E43", "diagnostics", "`backend_info` names the implementation that served each operation (no silent fallback)",
       inject="dlsym.bitnet_cpp_eval_with_context=missing", stub=STUB_SAME)
def e43(s: Scenario) -> None:
    """a library lacking bitnet_cpp_eval_with_context: backend_info after tokenize and evaluate"""
    sess = _quiet_session(s, **s.library_args())
    sess.evaluate(sess.tokenize("who served this"))
    info = sess.backend_info
    s.check(info["create"].startswith("dlopen:") and info["tokenize"] == info["create"], f"backend_info: {info}")
    s.check(info["evaluate"].startswith("fallback:") and "bitnet_cpp_eval_with_context missing" in info["evaluate"], f"backend_info: {info}")
