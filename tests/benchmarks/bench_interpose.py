"""What the interposing libllama costs when nothing is armed.

    python tests/benchmarks/bench_interpose.py [--model PATH] [--calls N] [--rounds R] [--completions N]

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
                       ``interpose.enable()``), both alive, completions alternated
                       one by one so drift hits both alike

Prints the ratios (interposed / real), of the medians and of the fastest
runs (on a loaded machine the fastest is the least disturbed).  Nothing is asserted: the machine is
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
typedef void (*log_set_fn)(ggml_log_callback, void *);

static void quiet(enum ggml_log_level level, const char *text, void *user)
{
    (void)level; (void)text; (void)user;
}

void bench_quiet(void *log_set)
{
    ((log_set_fn)log_set)(quiet, NULL);
}

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
import json, sys, time
if sys.argv[2] == "interposed":
    import fault_inject.interpose as ip
    ip.enable("llama")
from llama_cpp import Llama
import llama_cpp.llama_cpp as lc
llm = Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
def once():
    # the prompt's cache would turn later completions into no decode at all
    llm.reset()
    return llm.create_completion("hello world", max_tokens=16, temperature=0.0, top_k=1)
first = once()
print(json.dumps({"lib": lc._lib._name, "text": first["choices"][0]["text"], "tokens": first["usage"]["completion_tokens"]}), flush=True)
for line in sys.stdin:  # one completion per line, timed here
    t0 = time.perf_counter(); once()
    print(time.perf_counter() - t0, flush=True)
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
    lib.bench_quiet.argtypes = [ctypes.c_void_p]
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
        loops.bench_quiet(fn(rl, "llama_log_set"))
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
            print(f"  {label:32} real {mr:7.2f} ns   interposed {mi:7.2f} ns   +{mi - mr:6.2f} ns   ratio {mi / mr:5.2f}x"
                  f"   (fastest round: {min(r):.2f} / {min(i):.2f} ns)")
        ctypes.CDLL(str(real)).llama_model_free(model_ptr)


def completion(model: Path, rounds: int) -> None:
    # Both libraries stay loaded, each in its own process (llama-cpp-python
    # binds one libllama per process); completions alternate one by one, so
    # whatever else the machine does hits both alike.
    env = {**os.environ, "BITNET_CPP_LOG_LEVEL": "error"}
    procs = {
        mode: subprocess.Popen([sys.executable, "-c", CHILD, str(model), mode], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        for mode in ("real", "interposed")
    }
    try:
        info = {mode: json.loads(p.stdout.readline()) for mode, p in procs.items()}  # type: ignore[union-attr]
        done = {mode: (i["tokens"], i["text"]) for mode, i in info.items()}
        if done["real"] != done["interposed"]:  # the same work, or the ratio means nothing
            raise SystemExit(f"the completions differ: real {done['real']!r}, interposed {done['interposed']!r}")
        times: dict[str, list[float]] = {mode: [] for mode in procs}
        for _ in range(rounds):
            for mode, p in procs.items():
                p.stdin.write("go\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
                times[mode].append(float(p.stdout.readline()))  # type: ignore[union-attr]
    finally:
        for p in procs.values():
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(timeout=60)
    mr, mi = statistics.median(times["real"]), statistics.median(times["interposed"])
    pairs = sorted(i / r for r, i in zip(times["real"], times["interposed"]))
    q1, q3 = pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]
    print(f"Llama.create_completion, {done['real'][0]} tokens, {rounds} completions each, alternated, median")
    print(f"  real        {fmt_time(mr)}   ({info['real']['lib']})")
    print(f"  interposed  {fmt_time(mi)}   ({info['interposed']['lib']})")
    print(f"  ratio {mi / mr:5.3f}x   (pairwise ratios, middle half: {q1:.3f} .. {q3:.3f}; "
          f"fastest completions {fmt_time(min(times['real'])).strip()} / {fmt_time(min(times['interposed'])).strip()}, "
          f"ratio {min(times['interposed']) / min(times['real']):.3f}x)")
    # a loaded machine (look at the load average printed first) moves a
    # completion by 10x; the fastest of each is the least disturbed one


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a GGUF model (default: the project's tiny bitnet TQ2_0 model)")
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--completions", type=int, default=40, help="completions timed in each process")
    args = ap.parse_args()
    tmp = None
    if args.model is None:
        from pytest_bitnet.testing.models import cached_tiny_model

        tmp = tempfile.TemporaryDirectory()
        args.model = cached_tiny_model(Path(tmp.name), arch="bitnet", seed=0)
    print(f"{cpu()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    per_call(args.model, args.calls, args.rounds)
    completion(args.model, args.completions)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
