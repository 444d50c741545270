"""Reference engine vs llama.cpp on the same model, side by side in one run.

    python tests/benchmarks/bench_llama_vs_reference.py [--model PATH] [--rounds N] [--one-process]

Tokens per second for prompt evaluation (a ~100-token prompt in one call)
and for single-token generation (32 steps after a 4-token prompt), with 1
and 2 threads: BITNET_NUM_THREADS sets both (the reference engine's pool
and the n_threads of the llama.cpp context; both read it when a session is
created).  The ratio is reference / llama.cpp: >= 1.0x means the reference
engine is at least as fast.  The last column is the reference engine's
weight bytes read per second (each evaluation call reads every weight
once) as a share of the read bandwidth measured in this run.  Needs llama-cpp-python (pip install
'pytest-bitnet[llama]').

By default each engine runs in its own process, the two alternating round
by round (median of --rounds): in one process they tax each other, since
each evicts the other's weights from L3 and llama.cpp's OpenMP workers
spin-wait after every graph on the cores the reference engine then uses
(measured: the reference's 2-thread generation 444 t/s beside llama.cpp,
634 t/s with OMP_WAIT_POLICY=passive).  --one-process measures them side
by side in one process, as earlier versions did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from _common import fmt_share, interleaved, median_time, read_bandwidth, weight_bytes, what_ran
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


def measure(path: Path, backend: str, threads: int, repeat: int) -> dict[str, float]:
    """Seconds per prompt evaluation and per generation run of one engine,
    in this process alone (the --worker side of --processes)."""
    os.environ["BITNET_NUM_THREADS"] = str(threads)
    with bn.BitnetSession.create(path, n_ctx=512, backend=backend) as s:
        # the reference engine's tokens for both (they tokenize alike: crossval)
        with bn.BitnetSession.create(path, n_ctx=16, backend="reference") as t:
            toks = prompt_tokens(t)
        prompt, gen = workloads(s, toks)
        prompt(), gen()  # warm
        return {"prompt": median_time(prompt, repeat=5 * repeat, warmup=0), "generation": median_time(gen, repeat=repeat, warmup=0),
                "prompt_tokens": int(toks.size)}


def in_processes(path: Path, threads: int, rounds: int) -> dict[str, tuple[float, float, float]]:
    """Each engine in its own process, the two alternating round by round,
    so neither one's workers (llama.cpp's OpenMP team spin-waits after each
    graph) nor its weights in L3 tax the other; the median over rounds."""
    times: dict[str, dict[str, list[float]]] = {"reference": {}, "llama": {}}
    n_prompt = 0
    for _ in range(rounds):
        for backend in ("reference", "llama"):
            out = subprocess.run([sys.executable, __file__, "--worker", backend, "--threads", str(threads), "--model", str(path)],
                                 check=True, capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            n_prompt = got.pop("prompt_tokens")
            for row, t in got.items():
                times[backend].setdefault(row, []).append(t)
    tokens = {"prompt": n_prompt, "generation": GEN_STEPS}
    return {row: (tokens[row], statistics.median(times["reference"][row]), statistics.median(times["llama"][row]))
            for row in ("prompt", "generation")}


def in_one_process(path: Path, threads: int, rounds: int) -> dict[str, tuple[float, float, float]]:
    """Both engines in this process, interleaved round by round."""
    os.environ["BITNET_NUM_THREADS"] = str(threads)
    with bn.BitnetSession.create(path, n_ctx=512, backend="reference") as ref, bn.BitnetSession.create(
        path, n_ctx=512, backend="llama"
    ) as ll:
        toks = prompt_tokens(ref)
        ref_prompt, ref_gen = workloads(ref, toks)
        ll_prompt, ll_gen = workloads(ll, toks)
        ll_prompt(), ref_prompt()  # warm both
        tp = interleaved(ref_prompt, ll_prompt, rounds=rounds, repeat=5)
        tg = interleaved(ref_gen, ll_gen, rounds=rounds, repeat=1)
    return {"prompt": (toks.size, *tp), "generation": (GEN_STEPS, *tg)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--one-process", action="store_true", help="both engines in this process (they then share caches and cores)")
    ap.add_argument("--worker", choices=("reference", "llama"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not LLAMA.available:
        raise SystemExit(f"llama.cpp backend unavailable: {LLAMA.reason}")
    path = args.model or bn.models.cached_tiny_model(tempfile.mkdtemp(), **BENCH_MODEL)
    if args.worker:
        print(json.dumps(measure(path, args.worker, args.threads, repeat=1)))
        return
    print(f"model: {path.name}  {path.stat().st_size / 1e6:.1f} MB  llama.cpp: {LLAMA.libllama}")
    print(what_ran())
    wbytes = weight_bytes(path)
    bw = {t: read_bandwidth(t) for t in (1, 2)}
    print(f"read bandwidth: {bw[1] / 1e9:.1f} GB/s 1 thread, {bw[2] / 1e9:.1f} GB/s 2 threads; weights {wbytes / 1e6:.1f} MB")
    how = in_one_process if args.one_process else in_processes
    print("engines: " + ("both in this process, interleaved" if args.one_process else
                         f"each in its own process, alternating, median of {args.rounds} rounds"))
    print(f"{'threads':>7}  {'row':18} {'reference':>12} {'llama.cpp':>12} {'ratio':>7}  weights read, share of bandwidth")
    saved = os.environ.get("BITNET_NUM_THREADS")
    try:
        for threads in (1, 2):
            results = how(path, threads, args.rounds)
            for row, (n_tok, ta, tb) in results.items():
                calls = 1 if row == "prompt" else GEN_STEPS + 1
                share = fmt_share(calls * wbytes, ta, bw[threads])
                print(f"{threads:>7}  {row:18} {n_tok / ta:8.1f} t/s {n_tok / tb:8.1f} t/s {tb / ta:6.2f}x  {share}")
    finally:
        if saved is None:
            os.environ.pop("BITNET_NUM_THREADS", None)
        else:
            os.environ["BITNET_NUM_THREADS"] = saved
    print(f"prompt: {results['prompt'][0]} tokens; generation: {GEN_STEPS} single-token steps after a 4-token prompt")


if __name__ == "__main__":
    main()
