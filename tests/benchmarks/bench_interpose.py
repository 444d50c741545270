"""What the interposing libllama costs when nothing is armed.

    python tests/benchmarks/bench_interpose.py [--model PATH] [--calls N] [--rounds R]

Side by side in one run, on the libllama that llama-cpp-python loads:

  per forwarded call   ns per call of a function the interposer only forwards
                       (``llama_max_devices``: its trampoline, one indirect jump)
                       and of one it wraps (``llama_token_to_piece``: the wrapper's
                       disarmed fault check, then the real function), called from
                       C through the real library and through the interposing copy
                       (attached to the bridge's registry, as under pytest)
  a whole completion   ``Llama.create_completion`` of 16 tokens on the project's
                       tiny bitnet TQ2_0 model, in a child process loading the real
                       library and in one loading the interposer (fault_inject's
                       ``interpose.enable()``), alternated over rounds so drift hits
                       both alike

Prints the ratios (interposed / real).  Nothing is asserted: the machine is
shared and noisy (tests/benchmarks/_common.py); the issue's bar is that the
completion's ratio is lost in the noise of a decode.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_time  # noqa: E402

# The timed loops, in C: a Python-side loop (ctypes ~ 1 us per call) would
# bury a trampoline's nanosecond.  Function pointers come from Python, so the
# one loop times the real symbol and the interposer's alike.
LOOPS = r"""
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include "llama.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

typedef size_t (*max_devices_fn)(void);
typedef int32_t (*piece_fn)(const struct llama_vocab *, llama_token, char *, int32_t, int32_t, bool);
typedef struct llama_model_params (*defaults_fn)(void);
typedef struct llama_model *(*load_fn)(const char *, struct llama_model_params);
typedef const struct llama_vocab *(*vocab_fn)(const struct llama_model *);

/* A model loaded through the real library (vocab only: no weights needed). */
const void *bench_vocab(void *defaults, void *load, void *get_vocab, const char *path, void **model_out)
{
    struct llama_model_params p = ((defaults_fn)defaults)();
    p.vocab_only = true;
    struct llama_model *m = ((load_fn)load)(path, p);
    *model_out = m;
    return m ? ((vocab_fn)get_vocab)(m) : NULL;
}

double bench_trampoline(void *fn, int64_t n)
{
    max_devices_fn f = (max_devices_fn)fn;
    volatile size_t sink = 0;
    double t0 = now_ns();
    for (int64_t i = 0; i < n; i++)
        sink += f();
    (void)sink;
    return (now_ns() - t0) / (double)n;
}

double bench_wrapped(void *fn, const void *vocab, int64_t n)
{
    piece_fn f = (piece_fn)fn;
    char buf[64];
    volatile int32_t sink = 0;
    double t0 = now_ns();
    for (int64_t i = 0; i < n; i++)
        sink += f((const struct llama_vocab *)vocab, (llama_token)(i % 200 + 3), buf, sizeof buf, 0, false);
    (void)sink;
    return (now_ns() - t0) / (double)n;
}
"""

CHILD = r"""
import json, os, statistics, sys, time
if sys.argv[2] == "interposed":
    import fault_inject.interpose as ip
    ip.enable("llama")
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
def once():
    llm.create_completion("hello world", max_tokens=16, temperature=0.0, top_k=1)
once()
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter(); once(); times.append(time.perf_counter() - t0)
import llama_cpp.llama_cpp as lc
print(json.dumps({"median": statistics.median(times), "lib": lc._lib._name}))
llm.close()
"""


def include_dir(real: Path) -> Path:
    # llama-cpp-python ships llama.h in site-packages/include, beside llama_cpp/lib
    for d in (real.parent.parent.parent / "include", Path(sysconfig.get_paths()["purelib"]) / "include"):
        if (d / "llama.h").is_file():
            return d
    raise SystemExit(f"llama.h not found beside {real}: reinstall llama-cpp-python (pip install -e '.[llama]')")


def build_loops(real: Path, work: Path) -> ctypes.CDLL:
    src = work / "loops.c"
    src.write_text(LOOPS)
    out = work / "libbenchloops.so"
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", f"-I{include_dir(real)}", str(src), "-o", str(out)], check=True
    )
    lib = ctypes.CDLL(str(out))
    lib.bench_vocab.restype = ctypes.c_void_p
    lib.bench_vocab.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.bench_trampoline.restype = ctypes.c_double
    lib.bench_trampoline.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.bench_wrapped.restype = ctypes.c_double
    lib.bench_wrapped.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def fn(lib: ctypes.CDLL, name: str) -> int:
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0


def per_call(model: Path, calls: int, rounds: int) -> None:
    import fault_inject.interpose as ip

    real = ip.find_real("llama")
    copy = ip.library_for(real)  # built, loaded and attached, as under --bitnet-interpose
    with tempfile.TemporaryDirectory() as tmp:
        loops = build_loops(real, Path(tmp))
        rl, il = ctypes.CDLL(str(real)), ctypes.CDLL(str(copy))
        model_ptr = ctypes.c_void_p()
        vocab = loops.bench_vocab(
            fn(rl, "llama_model_default_params"), fn(rl, "llama_model_load_from_file"), fn(rl, "llama_model_get_vocab"),
            str(model).encode(), ctypes.byref(model_ptr),
        )
        if not vocab:
            raise SystemExit(f"llama.cpp could not load {model}")
        rows = {
            "forwarded (llama_max_devices)": lambda lib: loops.bench_trampoline(fn(lib, "llama_max_devices"), calls),
            "wrapped (llama_token_to_piece)": lambda lib: loops.bench_wrapped(fn(lib, "llama_token_to_piece"), vocab, calls),
        }
        print(f"per call, {calls} calls x {rounds} rounds, median (interposer: {copy})")
        for label, run in rows.items():
            r, i = [], []
            for _ in range(rounds):  # alternate, so drift hits both alike
                r.append(run(rl))
                i.append(run(il))
            mr, mi = statistics.median(r), statistics.median(i)
            print(f"  {label:32} real {mr:7.2f} ns   interposed {mi:7.2f} ns   +{mi - mr:6.2f} ns   ratio {mi / mr:5.2f}x")
        ctypes.CDLL(str(real)).llama_model_free(model_ptr)


def completion(model: Path, rounds: int, per_child: int) -> None:
    env = {**os.environ, "BITNET_CPP_LOG_LEVEL": "error"}
    times: dict[str, list[float]] = {"real": [], "interposed": []}
    libs: dict[str, str] = {}
    for _ in range(rounds):
        for mode in times:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(model), mode, str(per_child)], env=env, check=True, capture_output=True, text=True
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            times[mode].append(res["median"])
            libs[mode] = res["lib"]
    mr, mi = statistics.median(times["real"]), statistics.median(times["interposed"])
    print(f"Llama.create_completion, 16 tokens, {rounds} rounds x {per_child} completions per child process, median")
    print(f"  real        {fmt_time(mr)}   ({libs['real']})")
    print(f"  interposed  {fmt_time(mi)}   ({libs['interposed']})")
    spread = max(statistics.pstdev(times["real"]) / mr, statistics.pstdev(times["interposed"]) / mi)
    print(f"  ratio {mi / mr:5.3f}x   (spread of the rounds: {spread * 100:.1f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a GGUF model (default: the project's tiny bitnet TQ2_0 model)")
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--completions", type=int, default=10, help="completions timed per child process")
    args = ap.parse_args()
    tmp = None
    if args.model is None:
        from pytest_bitnet.testing.models import cached_tiny_model

        tmp = tempfile.TemporaryDirectory()
        args.model = cached_tiny_model(Path(tmp.name), arch="bitnet", seed=0)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    per_call(args.model, args.calls, args.rounds)
    completion(args.model, args.rounds, args.completions)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
