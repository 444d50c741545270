"""In process vs isolated (isolation="process"): what a worker process costs.

    python tests/benchmarks/bench_isolation.py [--model PATH] [--rounds R] [--repeat N] [--overshoot N]

Side by side in one run, on the 40 MB benchmark model (bench_session_vs_percall's),
an in-process session and an isolated one, both alive, calls alternated round by
round so drift hits both alike:

  round trip         n_past(): no work, only the call (and, isolated, the pipe)
  tokenize           a 100-token prompt
  evaluate 1 / 32    tokens appended to an empty sequence (reset between, untimed)
  create             session start-up (isolated: the worker's interpreter, numpy,
                     the bridge, then the model load)
  memory             the worker's resident set vs what an in-process session adds
                     to this process's
  overshoot          a library deaf to deadlines (tests/broken_backend.c
                     SLEEP_TOKENIZE) called with timeout=0.2: how long after the
                     deadline the caller gets OperationTimeout (GRACE, the kill, the
                     reap)

Prints medians and fastest runs; the per-call overhead is isolated minus in
process.  The issue's goal: overhead under 50 us and under 5% of a 1-token
evaluate.  Nothing is asserted (tests/benchmarks/_common.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _common import fmt_time  # noqa: E402
from bench_session_vs_percall import BENCH_MODEL  # noqa: E402

import pytest_bitnet as bn  # noqa: E402
from pytest_bitnet import errors  # noqa: E402
from pytest_bitnet.bridge.isolation import client  # noqa: E402


def samples(fn: Callable[[], object], repeat: int, before: Callable[[], object] | None = None) -> list[float]:
    out = []
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--overshoot", type=int, default=5, help="timed-out calls measured (each starts a worker)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = args.model or bn.models.cached_tiny_model(tmp, **BENCH_MODEL)
    print(f"model: {path.name}  {path.stat().st_size / 1e6:.1f} MB  cpu: {bn.capabilities().as_dict()}  "
          f"cores: {os.cpu_count()}  load: {os.getloadavg()[0]:.2f}")

    rss0 = rss_kb(os.getpid())
    here = bn.BitnetSession.create(path, n_ctx=512)
    rss_here = rss_kb(os.getpid()) - rss0
    there = bn.BitnetSession.create(path, n_ctx=512, isolation="process")
    words = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches "
    prompt = words * 8
    while len(here.tokenize(prompt)) > 101:
        prompt = prompt[: int(len(prompt) * 0.9)]
    toks = here.tokenize(prompt)
    assert there.tokenize(prompt).tobytes() == toks.tobytes()
    one, many = toks[:1], toks[:32]

    rows: list[tuple[str, Callable[[bn.BitnetSession], Callable[[], object]], bool]] = [
        ("round trip (n_past)", lambda s: lambda: s.n_past(), False),
        ("tokenize 100 tokens", lambda s: lambda: s.tokenize(prompt), False),
        ("evaluate 1 token", lambda s: lambda: s.evaluate(one), True),
        ("evaluate 32 tokens", lambda s: lambda: s.evaluate(many), True),
    ]
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _, _ in rows}
    for _ in range(args.rounds):
        for name, make, reset in rows:
            for which, s in ((0, here), (1, there)):
                results[name][which].extend(samples(make(s), args.repeat, s.reset if reset else None))

    print(f"\n{'':22} {'in process':>12} {'isolated':>12} {'overhead':>12} {'ratio':>7}   (median; fastest)")
    eval1 = None
    for name, (a, b) in results.items():
        ma, mb, fa, fb = statistics.median(a), statistics.median(b), min(a), min(b)
        if name == "evaluate 1 token":
            eval1 = (ma, mb, fa, fb)
        print(f"{name:22} {fmt_time(ma)} {fmt_time(mb)} {fmt_time(mb - ma)} {mb / ma:6.2f}x   "
              f"fastest {fmt_time(fa).strip()} / {fmt_time(fb).strip()}: {fmt_time(fb - fa).strip()}")
    if eval1 is not None:
        ma, mb, fa, fb = eval1
        print(f"\noverhead of a 1-token evaluate: {(mb - ma) * 1e6:.1f} us = {(mb - ma) / ma * 100:.1f}% (median), "
              f"{(fb - fa) * 1e6:.1f} us = {(fb - fa) / fa * 100:.1f}% (fastest); goal < 50 us and < 5%")

    print(f"\nmemory: worker resident set {rss_kb(there.pid) / 1024:.1f} MiB; an in-process session added "
          f"{rss_here / 1024:.1f} MiB to this process")
    there.close()
    here.close()

    creates: tuple[list[float], list[float]] = ([], [])
    for _ in range(max(3, args.rounds)):
        for which, iso in ((0, "none"), (1, "process")):
            t0 = time.perf_counter()
            s = bn.BitnetSession.create(path, n_ctx=512, isolation=iso)
            creates[which].append(time.perf_counter() - t0)
            s.close()
    print(f"create (start-up):     in process {fmt_time(statistics.median(creates[0]))}, isolated "
          f"{fmt_time(statistics.median(creates[1]))} (fastest {fmt_time(min(creates[1])).strip()})")

    if args.overshoot:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from native_builds import build_broken_backend

        from pytest_bitnet.bridge._native import bundled_library

        real = bundled_library()
        lib = build_broken_backend(Path(tmp, "sleepy"), "SLEEP_TOKENIZE", real) if real else None
        if lib is None:
            print("overshoot: no bundled library to wrap")
            return
        late = []
        for _ in range(args.overshoot):
            s = bn.BitnetSession.create(path, backend="dlopen", library_path=lib, isolation="process")
            t0 = time.perf_counter()
            try:
                s.tokenize("hello", timeout=0.2)
            except errors.OperationTimeout:
                late.append(time.perf_counter() - t0 - 0.2)
            s.close()
        print(f"overshoot past a 0.2 s deadline (GRACE {client.GRACE * 1e3:.0f} ms + kill + reap): median "
              f"{statistics.median(late) * 1e3:.1f} ms, max {max(late) * 1e3:.1f} ms, min {min(late) * 1e3:.1f} ms "
              f"over {len(late)}")


if __name__ == "__main__":
    main()
