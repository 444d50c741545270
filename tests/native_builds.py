"""Real shared libraries for the loader tests, built with the C compiler.

``build_library(out_dir, hide=..., defines=...)`` compiles the reference
engine and bridge into ``out_dir/libbitnet.so`` exactly as setup.py does,
with a linker version script that leaves the named socket symbols out of
the dynamic symbol table: a real library that lacks them, not a simulation.

Under .ci/coverage (CC carries ``--coverage``) the native code these builds
compile is measured too: a test that reaches an error site through a test
program or library reaches it as much as one through the bridge.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compiler(what: str) -> tuple[list[str], list[str]]:
    """The compiler command, and the optimisation flags to build with.

    `cc`, unless CC instruments for coverage (.ci/coverage exports
    CC="gcc --coverage -O0 ..."; the llama adapter and the interposer read
    it too).  Then gcc would write a build's notes and counts beside its
    output, in the test's tmp_path, which the coverage report never sees:
    -dumpdir puts them in a directory of their own under the tree measured
    (.ci/coverage measures a scratch copy, so nothing is left in a
    checkout), and the build keeps CC's -O0 (at -O1 gcc merges the small
    error branches being counted).  Any other CC (.ci/sanitize's) is not
    taken: these builds stay plain there, as they always were.
    """
    cc = shlex.split(os.environ.get("CC", "").strip())
    if "--coverage" not in cc:
        plain = shutil.which("cc") or shutil.which("gcc")
        if plain is None:
            pytest.skip(f"no C compiler to build test {what}")
        return [plain], ["-O1"]
    notes = ROOT / "cache" / "test-builds"
    notes.mkdir(parents=True, exist_ok=True)
    # BITNET_CFLAGS: .ci/coverage's -O0 and the site probe its rewritten
    # sources call (tools/site_probe.h), as for every other build there
    return [*cc, "-dumpdir", tempfile.mkdtemp(dir=notes) + "/"], os.environ.get("BITNET_CFLAGS", "").split()


def _build_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bitnet_build", ROOT / "pytest_bitnet" / "bridge" / "_build.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


# The socket symbols, from their one list (native/include/bitnet_symbols.def):
# every symbol a library exports, and those the bridge's loader resolves (each
# with a dlsym.<symbol> fault point; BITNET_SYMBOL_UNRESOLVED ones are not).
_SYMBOL_TABLE = _build_module().read_def(
    ROOT / "native" / "include" / "bitnet_symbols.def", "BITNET_SYMBOL", "BITNET_SYMBOL_UNRESOLVED"
)
SOCKET_SYMBOLS = tuple(e.args[0] for e in _SYMBOL_TABLE)
LOADER_SYMBOLS = tuple(e.args[0] for e in _SYMBOL_TABLE if e.macro == "BITNET_SYMBOL")


def build_library(out_dir: Path, hide: Iterable[str] = (), defines: Iterable[str] = (), host_hook: bool = True) -> Path:
    """Compiles libbitnet.so into out_dir without the `hide` symbols.

    host_hook=False leaves out bitnet_host_attach too: a library like
    BitNet.cpp's own, which the bridge cannot lend its deadlines to.
    """
    cc, opt = _compiler("libraries")
    b = _build_module()
    hidden = set(hide)
    unknown = hidden - set(SOCKET_SYMBOLS)
    assert not unknown, f"not socket symbols: {unknown}"
    out_dir.mkdir(parents=True, exist_ok=True)
    script = out_dir / "exports.map"
    keep = [s for s in SOCKET_SYMBOLS if s not in hidden] + ["bitnet_bridge_*"] + (["bitnet_host_attach"] if host_hook else [])
    script.write_text("{ global: " + " ".join(f"{s};" for s in keep) + " local: *; };\n")
    lib = out_dir / "libbitnet.so"
    cmd = [*cc, "-shared", "-fPIC", *opt, *[f for f in b.CFLAGS if not f.startswith("-O")],
           *[f"-D{name}={value}" for name, value in b.STANDALONE_DEFINES], *[f"-D{d}" for d in defines],
           *[f"-I{ROOT / d}" for d in b.include_dirs()], *[str(ROOT / s) for s in b.native_sources()],
           f"-Wl,--version-script={script}", "-o", str(lib), *b.LDFLAGS]
    subprocess.run(cmd, check=True, capture_output=True)
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], check=True, capture_output=True, text=True).stdout
    for sym in hidden | (set() if host_hook else {"bitnet_host_attach"}):
        assert f" {sym}\n" not in exported, f"{sym} still exported"
    return lib


BROKEN_BACKEND_BUGS = (
    "LEAK_ON_TOKENIZE_ERROR", "GENERIC_CODE", "WRITE_PAST_BUFFER", "CRASH_IN_EVAL", "OVERREPORT_FILL",
    "NEGATIVE_QUERY", "FILL_SHAPE", "ABSURD_SIZES", "BAD_MODEL_INFO", "BAD_N_PAST", "BAD_CAPS",
    "FAKE_GPU", "SESSION_ONLY", "NULL_SESSION", "FAIL_FREE_ONCE",
    "SLEEP_TOKENIZE", "SLEEP_LOAD", "SEGV_EVAL", "ABORT_FREE", "SLEEP_FREE", "STDERR_EXIT",
)

# What a variant leaves out of its dynamic symbol table (tests/broken_backend.c says why).
_SOCKET4_ONLY = (
    "bitnet_cpp_init_context", "bitnet_cpp_free_context", "bitnet_cpp_tokenize_with_context",
    "bitnet_cpp_eval_with_context", "bitnet_cpp_eval_gpu", "bitnet_cpp_get_n_past", "bitnet_cpp_reset_context",
    "bitnet_cpp_get_model_info",
)
_HIDDEN = {"SESSION_ONLY": _SOCKET4_ONLY, "NULL_SESSION": _SOCKET4_ONLY}


def build_broken_backend(out_dir: Path, bug: str, real_library: Path) -> Path:
    """out_dir/libbitnet.so: real_library behind tests/broken_backend.c with one bug compiled in."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build test libraries")
    assert bug in BROKEN_BACKEND_BUGS, bug
    out_dir.mkdir(parents=True, exist_ok=True)
    # A private copy: its own dlopen handle, statics and counters, so what
    # one variant leaks is never counted through the bundled library too.
    real = out_dir / "libreal.so"
    shutil.copyfile(real_library, real)
    lib = out_dir / "libbitnet.so"
    cmd = [cc, "-shared", "-fPIC", "-O1", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'native' / 'include'}",
           f'-DREAL_LIBRARY="{real}"', f"-DBUG_{bug}", str(ROOT / "tests" / "broken_backend.c"), "-o", str(lib), "-ldl", "-lpthread"]
    hidden = _HIDDEN.get(bug, ())
    if hidden:
        script = out_dir / "exports.map"
        script.write_text("{ local: " + " ".join(f"{s};" for s in hidden) + " };\n")
        cmd.append(f"-Wl,--version-script={script}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if hidden:
        exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], check=True, capture_output=True, text=True).stdout
        assert not [h for h in hidden if f" {h}\n" in exported], exported
    return lib


def build_program(out_dir: Path, source: str, name: str, defines: Iterable[str] = ()) -> Path:
    """out_dir/name: `source` (C text with a main) linked with native/common and native/fault.

    For tests of the layers below the bridge (the allocator, the fault
    engine, the bridge's lock helpers) without a bridge around them.
    """
    cc, opt = _compiler("programs")
    b = _build_module()
    out_dir.mkdir(parents=True, exist_ok=True)
    # not name.c: a program named after a native file (guest) would share
    # that file's coverage notes (named by the source's base name)
    src = out_dir / f"{name}_program.c"
    src.write_text(source)
    exe = out_dir / name
    lower = sorted(str(p) for d in ("common", "fault") for p in (ROOT / "native" / d).glob("*.c"))
    # the caller decides on BN_LOCK_CHECKS (the sanitizer build adds it to CFLAGS)
    flags = [f for f in b.CFLAGS if not f.startswith("-O") and f not in ("-fvisibility=hidden", "-DBN_LOCK_CHECKS")]
    cmd = [*cc, *opt, *flags,
           *[f"-D{d}" for d in defines], *[f"-I{ROOT / d}" for d in b.include_dirs()], str(src), *lower,
           "-o", str(exe), *b.LDFLAGS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


# Under the sanitizer pass (.ci/sanitize) the ASan runtime is preloaded.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")

# A calloc that fails the calling thread's next call on request
# (fail_calloc_next(1); fail_calloc_pending() says whether it is still to
# come), preloaded into one child process: glibc lets a program replace its
# allocator, and every library's references bind to the first definition.
# Under ASan its preloaded runtime comes first and keeps calloc (SANITIZED).
_FAIL_CALLOC = r"""
#include <stddef.h>
extern void *__libc_calloc(size_t n, size_t size);
static _Thread_local int fail_next;
__attribute__((visibility("default"))) void fail_calloc_next(int on) { fail_next = on; }
__attribute__((visibility("default"))) int fail_calloc_pending(void) { return fail_next; }
__attribute__((visibility("default"))) void *calloc(size_t n, size_t size)
{
    if (fail_next) {
        fail_next = 0;
        return NULL;
    }
    return __libc_calloc(n, size);
}
"""


def build_fail_calloc(out_dir: Path) -> Path:
    """out_dir/libfail_calloc.so, to LD_PRELOAD into a child (see _FAIL_CALLOC)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build test libraries")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fail_calloc.c").write_text(_FAIL_CALLOC)
    lib = out_dir / "libfail_calloc.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", str(out_dir / "fail_calloc.c"), "-o", str(lib)], check=True)
    return lib
