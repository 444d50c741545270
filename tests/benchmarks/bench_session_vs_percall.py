"""Session vs per-call: the rows of seed 003's performance table.

    python tests/benchmarks/bench_session_vs_percall.py [--model PATH]

Per-call functions load the model, work and free on every call; a session
loads once.  Generation per call has no KV cache to keep, so each of the 32
steps re-evaluates the whole prefix, as the seed's per-call MVP must.
Prints per-row times and the session speed-up; seed 003 asks >= 10x and
expects 40x / 30x / 12x / 16x.  Each row alternates --rounds rounds of
per-call and of session calls (one untimed call first in each), so that
bandwidth moving under other processes moves both sides alike.  The last
column is the session's weight bytes read per second (every evaluation
call reads each weight once) as a share of the read bandwidth measured in
this run at the pool's thread count.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from _common import fmt_share, fmt_time, interleaved, read_bandwidth, weight_bytes

import pytest_bitnet as bn

# ~40 MB: a 32000-token vocabulary with F16 embeddings (tied output), 8 TQ2_0 layers
BENCH_MODEL = dict(arch="bitnet", seed=7, n_vocab=32000, n_embd=512, n_layer=8, n_head=8, n_head_kv=4, n_ff=1536, embd_type="f16", n_ctx_train=4096)
SEED_EXPECTED = {"tokenize 100 tokens": 40, "eval 1 token": 30, "eval 4 tokens": 12, "32-token generation": 16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = args.model or bn.models.cached_tiny_model(tmp, **BENCH_MODEL)
    size = path.stat().st_size
    print(f"model: {path.name}  {size / 1e6:.1f} MB  ({bn.capabilities().as_dict()})")
    wbytes = weight_bytes(path)
    threads = int(os.environ.get("BITNET_NUM_THREADS", "") or min(os.cpu_count() or 1, 8))
    bw = read_bandwidth(threads)
    print(f"read bandwidth ({threads} thread(s)): {bw / 1e9:.1f} GB/s; weights {wbytes / 1e6:.1f} MB")

    with bn.BitnetSession.create(path, n_ctx=512) as s:
        words = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches"
        prompt = " ".join([words] * 8)
        toks = s.tokenize(prompt)
        while len(toks) > 101:  # 100 tokens plus BOS
            prompt = prompt[: int(len(prompt) * 0.9)]
            toks = s.tokenize(prompt)
        one, four = toks[:1], toks[:4]

        def session_eval(t: np.ndarray) -> None:
            s.reset()
            s.evaluate(t)

        def session_generate() -> None:
            s.reset()
            logits = s.evaluate(four)
            for _ in range(32):
                logits = s.evaluate([int(logits[-1].argmax())])

        def percall_generate() -> None:
            seq = list(four)
            logits = bn.evaluate(path, seq)
            for _ in range(32):
                seq.append(int(logits[-1].argmax()))
                logits = bn.evaluate(path, seq)

        rows = [  # (name, per-call, session, repeats, evaluation calls of the session)
            ("tokenize 100 tokens", lambda: bn.tokenize(path, prompt), lambda: s.tokenize(prompt), 5, 200, 0),
            ("eval 1 token", lambda: bn.evaluate(path, one), lambda: session_eval(one), 5, 50, 1),
            ("eval 4 tokens", lambda: bn.evaluate(path, four), lambda: session_eval(four), 5, 30, 1),
            ("32-token generation", percall_generate, session_generate, 1, 1, 33),
        ]
        print(f"{'row':22} {'per-call':>12} {'session':>12} {'speed-up':>9} {'seed expects':>13}  session reads")
        for name, percall, session, rep_p, rep_s, calls in rows:
            # per-call and session rounds alternate: on a shared machine the
            # bandwidth moves (two runs minutes apart: the session side 2.2x,
            # the per-call side 1.2x), so two stretches measured one after
            # the other need not have seen the same bandwidth
            tp, ts = interleaved(percall, session, rounds=args.rounds, repeat=rep_p, repeat_b=rep_s, warmup=1)
            share = fmt_share(calls * wbytes, ts, bw) if calls else "-"
            print(f"{name:22} {fmt_time(tp):>12} {fmt_time(ts):>12} {tp / ts:8.1f}x {SEED_EXPECTED[name]:12d}x  {share}")
    print(f"tokens in the 100-token prompt: {len(toks)}")


if __name__ == "__main__":
    main()
