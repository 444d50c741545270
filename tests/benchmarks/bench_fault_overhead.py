"""What fault points cost when nothing fires: instructions, counted by callgrind.

    python tests/benchmarks/bench_fault_overhead.py [--model PATH] [--keep DIR]

Builds a small C driver against the native sources twice, with the same
flags as the bridge: once with the points compiled in, once with
-DBN_NO_FAULTS.  Runs one session lifecycle (create, tokenize, evaluate,
close) under ``valgrind --tool=callgrind``, counting instructions only
inside the lifecycle (``--toggle-collect``), single-threaded
(BITNET_NUM_THREADS=1) so the counts are deterministic.  Three runs:

  compiled out                         the baseline
  compiled in, nothing armed           limit: <= 1% more
  compiled in, an unrelated point armed (``eval_gpu``, never reached)
                                       limit: <= 5% more

and, for the standalone library (what dlopen mode loads), the same
lifecycle called straight into it, as a program that never attaches it
would: a guest build (BN_GUEST: points forward through a pointer to a
local zero, deadline and log checks look for a host first) against the
library as it was built before guests, with faults compiled out.

  standalone, compiled out             the baseline
  standalone guest, not attached       limit: <= 1% more

Prints both ratios; exits 1 if a limit is exceeded, 2 without valgrind.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"disarmed": 1.01, "armed": 1.05, "guest": 1.01}

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitnet.h"
#include "bitnet_fault.h"

#define CHECK(call) do { int rc_ = (call); if (rc_) { \
    fprintf(stderr, "%s failed: %d %s\n", #call, rc_, err); exit(1); } } while (0)

static char err[1024];

/* The measured unit: callgrind collects only inside this function. */
__attribute__((noinline)) void lifecycle(const char *model)
{
    bitnet_session_t *s = NULL;
    int32_t n = 0, rows = 0, cols = 0;
    CHECK(bitnet_cpp_session_create(&s, model, NULL, 64, 0, err, sizeof err));
    CHECK(bitnet_cpp_session_tokenize(s, "What is 2+2?", 1, 0, NULL, 0, &n, err, sizeof err));
    int32_t *toks = malloc(sizeof *toks * (size_t)n);
    CHECK(bitnet_cpp_session_tokenize(s, "What is 2+2?", 1, 0, toks, n, &n, err, sizeof err));
    CHECK(bitnet_cpp_session_eval(s, toks, n, NULL, 0, &rows, &cols, err, sizeof err));
    float *logits = malloc(sizeof *logits * (size_t)rows * (size_t)cols);
    CHECK(bitnet_cpp_session_eval(s, toks, n, logits, rows * cols, &rows, &cols, err, sizeof err));
    CHECK(bitnet_cpp_session_free(s));
    free(logits);
    free(toks);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL disarmed|armed\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[2], "armed") == 0) {
        bitnet_fault_term_t t = {1.0, 0, BITNET_FAULT_FAIL, 0};
        CHECK(bitnet_fault_arm("eval_gpu", &t, 1, 0, 0, NULL, err, sizeof err));
    }
    lifecycle(argv[1]);
    return 0;
}
"""


def load_build() -> object:
    # pytest_bitnet/bridge/_build.py holds the one list of sources and flags
    spec = importlib.util.spec_from_file_location("_bitnet_build", ROOT / "pytest_bitnet" / "bridge" / "_build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(out: Path, defines: list[str]) -> Path:
    b = load_build()
    driver = out.parent / "driver.c"
    driver.write_text(DRIVER)
    flags = [f for f in b.CFLAGS if f != "-fvisibility=hidden"]  # type: ignore[attr-defined]
    cmd = ["gcc", *flags, *defines, *(f"-I{ROOT / d}" for d in b.include_dirs()), str(driver)]  # type: ignore[attr-defined]
    cmd += [str(ROOT / s) for s in b.native_sources()]  # type: ignore[attr-defined]
    cmd += ["-o", str(out), *b.LDFLAGS]  # type: ignore[attr-defined]
    subprocess.run(cmd, check=True)
    return out


def instructions(exe: Path, model: Path, mode: str, workdir: Path) -> int:
    out = workdir / f"callgrind.{exe.name}.{mode}"
    # LD_BIND_NOW: resolve every libc symbol at start, so whatever ran before
    # the lifecycle (arming) cannot make its first calls cheaper.
    env = {**os.environ, "BITNET_NUM_THREADS": "1", "BITNET_CPP_LOG_LEVEL": "error", "LD_BIND_NOW": "1"}
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--toggle-collect=lifecycle", f"--callgrind-out-file={out}", str(exe), str(model), mode],
        check=True,
        env=env,
        capture_output=True,
    )
    text = out.read_text()
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"no instruction total in {out}")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="GGUF model (default: the tests' tiny model)")
    ap.add_argument("--keep", type=Path, help="keep the builds and callgrind files here")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_fault_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = args.model
    else:
        sys.path.insert(0, str(ROOT))
        from pytest_bitnet.models import cached_tiny_model

        model = cached_tiny_model(work, arch="bitnet", seed=0)
    (work / "in").mkdir(exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    exe_in = build(work / "in" / "points_in", [])
    exe_out = build(work / "out" / "points_out", ["-DBN_NO_FAULTS"])
    (work / "guest").mkdir(exist_ok=True)
    (work / "standalone").mkdir(exist_ok=True)
    standalone = [f"-D{name}={value}" for name, value in load_build().STANDALONE_DEFINES if name != "BN_GUEST"]  # type: ignore[attr-defined]
    exe_guest = build(work / "guest" / "guest", [*standalone, "-DBN_GUEST=1"])
    exe_sa_out = build(work / "standalone" / "standalone_out", [*standalone, "-DBN_NO_FAULTS"])
    base = instructions(exe_out, model, "disarmed", work)
    disarmed = instructions(exe_in, model, "disarmed", work)
    armed = instructions(exe_in, model, "armed", work)
    sa_base = instructions(exe_sa_out, model, "disarmed", work)
    guest = instructions(exe_guest, model, "disarmed", work)
    print(f"callgrind: instructions in one session lifecycle (create, tokenize, evaluate, close) of {model.name}, 1 thread")
    worst = 0
    rows = (
        ("points compiled out", base, None, base),
        ("compiled in, nothing armed", disarmed, "disarmed", base),
        ("compiled in, 'eval_gpu' armed", armed, "armed", base),
        ("standalone, compiled out", sa_base, None, sa_base),
        ("standalone guest, not attached", guest, "guest", sa_base),
    )
    for label, count, name, against in rows:
        if name is None:
            print(f"  {label:<33}{count:>14,}")
            continue
        ratio = count / against
        ok = ratio <= LIMITS[name]
        worst |= not ok
        print(f"  {label:<33}{count:>14,}   ratio {ratio:.5f}  (limit {LIMITS[name]:.2f}: {'ok' if ok else 'OVER'})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
