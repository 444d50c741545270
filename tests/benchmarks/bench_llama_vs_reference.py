"""Reference engine vs llama.cpp on the same model, side by side in one run.

    python tests/benchmarks/bench_llama_vs_reference.py [--model PATH] [--rounds N]

Tokens per second for prompt evaluation (a ~100-token prompt in one call)
and for single-token generation (32 steps after a 4-token prompt), with 1
and 2 threads: BITNET_NUM_THREADS sets both (the reference engine's pool
and the n_threads of the llama.cpp context; both read it when a session is
created).  The ratio is reference / llama.cpp: >= 1.0x means the reference
engine is at least as fast.  The last column is the reference engine's
weight bytes read per second (each evaluation call reads every weight
once) as a share of the read bandwidth measured in this run.  Needs llama-cpp-python (pip install
'pytest-bitnet[llama]').
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from _common import fmt_share, interleaved, read_bandwidth, weight_bytes, what_ran
from bench_session_vs_percall import BENCH_MODEL

import pytest_bitnet as bn
from pytest_bitnet.bridge.llama import configured

LLAMA = configured()

GEN_STEPS = 32


def prompt_tokens(s: bn.BitnetSession, n: int = 100) -> np.ndarray:
    words = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches"
    prompt = " ".join([words] * 8)
    toks = s.tokenize(prompt)
    return toks[: n + 1]  # n tokens plus BOS


def workloads(s: bn.BitnetSession, toks: np.ndarray) -> tuple[Callable[[], None], Callable[[], None]]:
    def prompt_eval() -> None:
        s.reset()
        s.evaluate(toks)

    def generate() -> None:
        s.reset()
        logits = s.evaluate(toks[:4])
        for _ in range(GEN_STEPS):
            logits = s.evaluate([int(logits[-1].argmax())])

    return prompt_eval, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not LLAMA.available:
        raise SystemExit(f"llama.cpp backend unavailable: {LLAMA.reason}")
    path = args.model or bn.models.cached_tiny_model(tempfile.mkdtemp(), **BENCH_MODEL)
    print(f"model: {path.name}  {path.stat().st_size / 1e6:.1f} MB  llama.cpp: {LLAMA.libllama}")
    print(what_ran())
    wbytes = weight_bytes(path)
    bw = {t: read_bandwidth(t) for t in (1, 2)}
    print(f"read bandwidth: {bw[1] / 1e9:.1f} GB/s 1 thread, {bw[2] / 1e9:.1f} GB/s 2 threads; weights {wbytes / 1e6:.1f} MB")
    print(f"{'threads':>7}  {'row':18} {'reference':>12} {'llama.cpp':>12} {'ratio':>7}  weights read, share of bandwidth")
    saved = os.environ.get("BITNET_NUM_THREADS")
    try:
        for threads in (1, 2):
            os.environ["BITNET_NUM_THREADS"] = str(threads)
            with bn.BitnetSession.create(path, n_ctx=512, backend="reference") as ref, bn.BitnetSession.create(
                path, n_ctx=512, backend="llama"
            ) as ll:
                toks = prompt_tokens(ref)
                ref_prompt, ref_gen = workloads(ref, toks)
                ll_prompt, ll_gen = workloads(ll, toks)
                ll_prompt(), ref_prompt()  # warm both
                rows = [
                    # (name, tokens, evaluation calls, reference, llama.cpp, repeat)
                    ("prompt eval", toks.size, 1, ref_prompt, ll_prompt, 5),
                    ("generation", GEN_STEPS, GEN_STEPS + 1, ref_gen, ll_gen, 1),
                ]
                for name, n_tok, calls, a, b, repeat in rows:
                    ta, tb = interleaved(a, b, rounds=args.rounds, repeat=repeat)
                    ra, rb = n_tok / ta, n_tok / tb
                    share = fmt_share(calls * wbytes, ta, bw[threads])
                    print(f"{threads:>7}  {name:18} {ra:8.1f} t/s {rb:8.1f} t/s {ra / rb:6.2f}x  {share}")
    finally:
        if saved is None:
            os.environ.pop("BITNET_NUM_THREADS", None)
        else:
            os.environ["BITNET_NUM_THREADS"] = saved
    print(f"prompt: {toks.size} tokens; generation: {GEN_STEPS} single-token steps after a 4-token prompt")


if __name__ == "__main__":
    main()
