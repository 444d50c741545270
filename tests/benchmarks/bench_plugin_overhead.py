"""Wall time of a synthetic suite of 2000 quick tests: bitnet plugin on vs -p no:bitnet.

    python tests/benchmarks/bench_plugin_overhead.py [--tests 2000] [--rounds 5]

Both runs are real pytest processes on the same generated suite, alternated
round by round; the plugin run has its default leak check (strict) on.
Prints the ratio of median wall times (target: <= 1.03).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_suite(root: Path, n: int) -> None:
    per_file = 100
    for f in range(0, n, per_file):
        body = "\n".join(f"def test_{i}():\n    assert {i} + 1 == {i + 1}\n" for i in range(f, min(f + per_file, n)))
        (root / f"test_quick_{f // per_file:03d}.py").write_text(body)
    (root / "pytest.ini").write_text("[pytest]\n")


def run(root: Path, *extra: str) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pytest {' '.join(extra)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bitnet-bench-") as tmp:
        root = Path(tmp)
        write_suite(root, args.tests)
        on, off = [], []
        run(root)  # warm up the file cache and imports
        for _ in range(args.rounds):
            on.append(run(root))
            off.append(run(root, "-p", "no:bitnet"))
        t_on, t_off = statistics.median(on), statistics.median(off)
    print(f"{args.tests} quick tests, median of {args.rounds} runs each")
    print(f"  plugin on (leak check strict): {t_on:7.3f} s")
    print(f"  -p no:bitnet:                  {t_off:7.3f} s")
    print(f"  ratio on / off:                {t_on / t_off:7.3f}x  (target <= 1.03x)")


if __name__ == "__main__":
    main()
