"""A 2B-shaped model: load time, memory, tokens/s, and how each grows.

    python tests/benchmarks/bench_2b.py [--rounds N] [--prompt N] [--steps N] [--no-llama]

The model has BitNet b1.58 2B4T's dimensions (models.SHAPE_2B: 2560
embedding, 30 layers, 6912 FFN, 20 / 5 heads, 128256-token F16 tied
embeddings) and random ternary TQ2_0 weights; it is generated once into
models.model_cache_dir() (~1.2 GB; the run says how long generation took).
Every figure is printed for the 40 MB benchmark model too, and the growth
from it to the 2B shape and from n_ctx 512 to 4096.

* load: BitnetSession.create's time in a fresh process, median of 3 (the
  file is in the page cache after the first).
* memory: what the bridge's counted allocator holds (live_counters bytes),
  against the weights plus the f32 KV cache for n_ctx (2 x n_layer x n_ctx
  x kv_dim x 4 bytes) and against seed 003's <= 700 MB; resident memory
  (RssAnon / RssFile of /proc/self/status) before create, after create and
  after the first evaluation: resident is only what is touched.  Both in a
  fresh process per figure (memory_child says why).
* tokens/s: prompt evaluation (one call) and generation (single-token
  steps), 1 and 2 threads, reference and llama.cpp on the same file side by
  side (interleaved rounds); generation also as weight bytes read per second
  and as a share of the read bandwidth measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from _common import fmt_share, interleaved, read_bandwidth, weight_bytes, what_ran
from bench_session_vs_percall import BENCH_MODEL

import pytest_bitnet as bn
from pytest_bitnet.bridge.llama import configured
from pytest_bitnet.testing.models import SHAPE_2B, cached_2b_model, model_cache_dir

SEED_SESSION_MB = 700  # seed 003: a session of the 2B model in <= 700 MB


def status_kb(*fields: str) -> dict[str, int]:
    """Fields of /proc/self/status in bytes (RssAnon: heap; RssFile: mapped files)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in fields:
                out[key] = int(line.split()[1]) * 1024
    return out


def resident() -> dict[str, int]:
    return status_kb("VmRSS", "RssAnon", "RssFile")


def kv_bytes(shape: dict, n_ctx: int) -> int:
    kv_dim = shape["n_embd"] // shape["n_head"] * shape["n_head_kv"]
    return 2 * shape["n_layer"] * n_ctx * kv_dim * 4


def prompt_tokens(s: bn.BitnetSession, n: int) -> np.ndarray:
    words = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches"
    toks = s.tokenize(" ".join([words] * (n // 8 + 2)))
    return toks[: n + 1]


def workloads(s: bn.BitnetSession, toks: np.ndarray, steps: int) -> tuple[Callable[[], None], Callable[[], None]]:
    def prompt_eval() -> None:
        s.reset()
        s.evaluate(toks)

    def generate() -> None:
        s.reset()
        logits = s.evaluate(toks[:4])
        for _ in range(steps):
            logits = s.evaluate([int(logits[-1].argmax())])

    return prompt_eval, generate


def with_threads(n: int) -> None:
    os.environ["BITNET_NUM_THREADS"] = str(n)


def memory_child(path: str, n_ctx: int, backend: str) -> None:
    """One session in this fresh process: its first load, its memory, as JSON on stdout.

    A fresh interpreter per measurement, because in a process that has loaded
    and freed a model before, malloc hands the freed heap back to the next
    load: the resident figures grow by nothing and the load skips its page
    faults (seen: 0 MB resident for the 40 MB model, after the earlier
    rounds of the same process had freed theirs)."""
    r0 = resident()
    t0 = time.perf_counter()
    s = bn.BitnetSession.create(Path(path), n_ctx=n_ctx, backend=backend)
    load = time.perf_counter() - t0
    r1 = resident()
    counted = bn.live_counters()["bytes"]
    s.evaluate(s.tokenize("warm the scratch buffers up"))
    r2 = resident()
    s.close()

    def grown(r: dict, key: str) -> int:
        return r[key] - r0[key]

    print(json.dumps({"load": load, "counted": counted, "anon_load": grown(r1, "RssAnon"),
                      "anon_eval": grown(r2, "RssAnon"), "file_load": grown(r1, "RssFile"),
                      "file_eval": grown(r2, "RssFile"), "resident": grown(r2, "VmRSS")}))


def in_child(path: Path, n_ctx: int, backend: str = "reference") -> dict:
    """memory_child's figures from a fresh process; its failure ends the benchmark with the child's own stderr."""
    cmd = [sys.executable, __file__, "--memory-child", str(path), str(n_ctx), backend]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def memory_rows(name: str, path: Path, shape: dict, wbytes: int, runs: int = 3) -> dict[tuple[str, int], float]:
    """Load time and memory of the reference engine at n_ctx 512 and 4096, each from
    `runs` fresh processes (the file is in the page cache: the load is the median first
    load of a process; memory is the same in every run, the last one is printed)."""
    figures: dict[tuple[str, int], float] = {}
    for n_ctx in (512, 4096):
        got = [in_child(path, n_ctx) for _ in range(runs)]
        load = statistics.median(g["load"] for g in got)
        m = got[-1]
        kv = kv_bytes(shape, n_ctx)
        mb = 1e6
        print(
            f"{name:6} {n_ctx:>5} {load * 1e3:8.0f} ms {m['counted'] / mb:9.0f} {wbytes / mb:8.0f} {kv / mb:6.0f}"
            f" {(m['counted'] - wbytes - kv) / mb:8.1f} {m['anon_load'] / mb:9.0f}"
            f" {m['anon_eval'] / mb:9.0f} {m['file_eval'] / mb:8.0f}"
        )
        figures[("load", n_ctx)] = load
        figures[("counted", n_ctx)] = m["counted"]
        figures[("resident", n_ctx)] = m["resident"]
    return figures


def llama_resident(path: Path) -> None:
    """llama.cpp maps the file: resident is what the first evaluation touched (a fresh process, as memory_rows)."""
    m = in_child(path, 512, backend="llama")
    mb = 1e6
    print(
        f"llama.cpp ({path.stat().st_size / mb:.0f} MB file, n_ctx 512): RssFile +{m['file_load'] / mb:.0f} MB"
        f" after load, +{m['file_eval'] / mb:.0f} MB after the first eval; RssAnon +{m['anon_eval'] / mb:.0f} MB"
    )


def speed_rows(
    name: str, path: Path, wbytes: int, bw: dict[int, float], args: argparse.Namespace, llama: bool
) -> dict[tuple[str, int], float]:
    figures: dict[tuple[str, int], float] = {}
    for threads in (1, 2):
        with_threads(threads)
        ref = bn.BitnetSession.create(path, n_ctx=512, backend="reference")
        ll = bn.BitnetSession.create(path, n_ctx=512, backend="llama") if llama else None
        try:
            toks = prompt_tokens(ref, args.prompt)
            rp, rg = workloads(ref, toks, args.steps)
            lp, lg = workloads(ll, toks, args.steps) if ll else (lambda: None, lambda: None)
            rp(), lp()  # warm both
            for row, n_tok, a, b in (("prompt", toks.size, rp, lp), ("generation", args.steps, rg, lg)):
                ta, tb = interleaved(a, b, rounds=args.rounds, repeat=1)
                ra = n_tok / ta
                # generation: every step reads every weight once (the 4-token prompt is one more read)
                reads = (args.steps + 1) if row == "generation" else 1
                share = fmt_share(reads * wbytes, ta, bw[threads])
                other = f"{n_tok / tb:9.1f} t/s {tb / ta:6.2f}x" if ll else f"{'-':>13} {'-':>7}"
                print(f"{name:6} {threads:>7} {row:11} {ra:9.1f} t/s {other}  {share}")
                figures[(row, threads)] = ra
        finally:
            ref.close()
            if ll:
                ll.close()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (plus BOS)")
    ap.add_argument("--steps", type=int, default=16, help="generation steps")
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--memory-child", nargs=3, metavar=("PATH", "N_CTX", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        path, n_ctx, backend = args.memory_child
        memory_child(path, int(n_ctx), backend)
        return
    llama = configured()
    use_llama = llama.available and not args.no_llama
    if not use_llama:
        print(f"llama.cpp not compared: {llama.reason if not llama.available else '--no-llama'}")

    t0 = time.perf_counter()
    big = cached_2b_model()
    made = time.perf_counter() - t0
    small = bn.models.cached_tiny_model(tempfile.mkdtemp(), **BENCH_MODEL)
    print(
        f"2B-shaped model: {big} {big.stat().st_size / 1e6:.0f} MB"
        f" ({'generated' if made > 2 else 'cached'}: {made:.1f} s, in {model_cache_dir()})"
    )
    print(f"40 MB model: {small.stat().st_size / 1e6:.1f} MB")
    print(what_ran())

    bw = {t: read_bandwidth(t) for t in (1, 2)}
    print(f"read bandwidth (numpy max over 1 GiB): {bw[1] / 1e9:.1f} GB/s 1 thread, {bw[2] / 1e9:.1f} GB/s 2 threads")

    models = (("40MB", small, BENCH_MODEL), ("2B", big, SHAPE_2B))
    wb = {name: weight_bytes(path) for name, path, _ in models}

    saved = os.environ.get("BITNET_NUM_THREADS")
    try:
        print("\nreference engine, MB (1e6 bytes); counted = the bridge's allocator; other = counted - weights - KV")
        print(
            f"{'model':6} {'n_ctx':>5} {'load':>11} {'counted':>9} {'weights':>8} {'KV':>6} {'other':>8}"
            f" {'anon+load':>9} {'anon+eval':>9} {'file+':>8}"
        )
        mem = {name: memory_rows(name, path, shape, wb[name]) for name, path, shape in models}
        two_b = mem["2B"][("counted", 512)] / 1e6
        print(
            f"seed 003 asks <= {SEED_SESSION_MB} MB per 2B session: {two_b:.0f} MB at n_ctx 512,"
            f" of which {wb['2B'] / 1e6:.0f} MB are the weights the reference engine reads into memory"
        )
        if use_llama:
            llama_resident(big)

        print(f"\n{'model':6} {'threads':>7} {'row':11} {'reference':>13} {'llama.cpp':>13} {'ratio':>7}  weights read, share of bandwidth")
        speed = {name: speed_rows(name, path, wb[name], bw, args, use_llama) for name, path, _ in models}
    finally:
        if saved is None:
            os.environ.pop("BITNET_NUM_THREADS", None)
        else:
            os.environ["BITNET_NUM_THREADS"] = saved

    print("\ngrowth, 40 MB model -> 2B shape (weights x{:.1f})".format(wb["2B"] / wb["40MB"]))
    for key in (("load", 512), ("counted", 512), ("resident", 512)):
        print(f"  {key[0]:9} n_ctx {key[1]}: x{mem['2B'][key] / mem['40MB'][key]:.1f}")
    for key in (("prompt", 1), ("prompt", 2), ("generation", 1), ("generation", 2)):
        print(f"  {key[0]:10} {key[1]} thread(s): tokens/s x{speed['2B'][key] / speed['40MB'][key]:.3f}")
    print("growth, n_ctx 512 -> 4096 (reference engine)")
    for name, _, _ in models:
        m = mem[name]
        print(
            f"  {name:5} load x{m[('load', 4096)] / m[('load', 512)]:.2f}, counted x{m[('counted', 4096)] / m[('counted', 512)]:.2f},"
            f" resident x{m[('resident', 4096)] / m[('resident', 512)]:.2f}"
        )
    print(f"prompt: {args.prompt + 1} tokens in one call; generation: {args.steps} single-token steps after a 4-token prompt")


if __name__ == "__main__":
    main()
