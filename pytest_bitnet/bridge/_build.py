"""cffi build script for the native bridge (out-of-line API mode).

``pip install`` runs this through ``cffi_modules`` in setup.py and compiles
every C file under ``native/`` into ``pytest_bitnet.bridge._bridge``.  The cdef is
read from the headers themselves, so a declaration lives in one place.

Build options (environment):

``BITNET_SANITIZE``  e.g. ``address,undefined``: compile and link with
                     ``-fsanitize=...`` (the sanitizer CI pass).
``BITNET_CFLAGS``    extra compiler flags, split on whitespace.
``BITNET_FAULTS``    ``0``: compile every fault point out (``-DBN_NO_FAULTS``);
                     fault_inject then reports injection as not compiled in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
INCLUDE_DIRS = [NATIVE / "include", NATIVE / "common", NATIVE / "reference", NATIVE / "bridge", NATIVE / "fault"]
SOURCE_DIRS = [NATIVE / "common", NATIVE / "reference", NATIVE / "bridge", NATIVE / "fault"]

# Internal declarations the Python side uses besides the socket ABI: the
# kernels, for the matvec benchmark and kernel tests.
INTERNAL_CDEF = """
typedef struct {
    uint32_t type;
    const void *data;
    int64_t ncols;
    int64_t nrows;
    size_t row_bytes;
    float scale;
} bn_weight;
size_t bn_act_size(const bn_weight *w, int64_t n_tokens);
void bn_act_prepare(const bn_weight *w, const float *x, int64_t n_tokens, void *act);
void bn_matmul_rows(const bn_weight *w, const void *act, int64_t n_tokens,
                    float *y, int64_t r0, int64_t r1);
const char *bn_kernels_impl(void);
void bn_kernels_force_portable(int on);
extern "Python" void _bitnet_log_sink(int level, const char *component, const char *line);
"""

# The fault engine's firing callback (pytest_bitnet.bridge.faults defines it).
FAULT_CDEF = """
extern "Python" void _bitnet_fault_fired(void *user, const bitnet_fault_event_t *event);
"""


def header_cdef(path: Path) -> str:
    """The declarations of a C header in the subset cffi's cdef parses.

    Drops preprocessor blocks (include guards, ``extern "C"``, export
    macros) but keeps ``#define NAME <integer>`` constants.
    """
    text = path.read_text()
    text = re.sub(r"#if(?:def)?[^\n]*(?:__cplusplus|_WIN32)[\s\S]*?#endif[^\n]*\n", "", text)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if re.fullmatch(r"#define\s+\w+\s+-?\d+", stripped):
                lines.append(stripped)
            continue
        lines.append(line.replace("BITNET_API ", ""))
    return "\n".join(lines)


def native_sources() -> list[str]:
    """Every C file of the bridge and the reference engine, relative to the root."""
    return sorted(str(p.relative_to(ROOT)) for d in SOURCE_DIRS if d.is_dir() for p in d.glob("*.c"))


def include_dirs() -> list[str]:
    return [str(d.relative_to(ROOT)) for d in INCLUDE_DIRS]


def _flags() -> tuple[list[str], list[str]]:
    cflags = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]
    ldflags: list[str] = ["-lm", "-lpthread", "-ldl"]
    sanitize = os.environ.get("BITNET_SANITIZE", "").strip()
    if sanitize:
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-O1", "-g"]
        ldflags += [f"-fsanitize={sanitize}"]
    if os.environ.get("BITNET_FAULTS", "").strip() == "0":
        cflags.append("-DBN_NO_FAULTS")
    cflags += os.environ.get("BITNET_CFLAGS", "").split()
    return cflags, ldflags


CFLAGS, LDFLAGS = _flags()

# The standalone library (setup.py) and the test variants built like it
# (tests/native_builds.py): the reference engine as a guest of the bridge
# that dlopens it (BN_GUEST, see native/include/bitnet_host.h).
STANDALONE_DEFINES = [("BN_STANDALONE_LIBRARY", "1"), ("BN_GUEST", "1")]

ffibuilder = FFI()
ffibuilder.cdef(
    header_cdef(NATIVE / "include" / "bitnet.h")
    + header_cdef(NATIVE / "include" / "bitnet_bridge.h")
    + header_cdef(NATIVE / "include" / "bitnet_fault.h")
    + INTERNAL_CDEF
    + FAULT_CDEF
)
ffibuilder.set_source(
    "pytest_bitnet.bridge._bridge",
    '#include "bitnet.h"\n#include "bitnet_bridge.h"\n#include "bitnet_fault.h"\n#include "kernels.h"\n',
    sources=native_sources(),
    include_dirs=include_dirs(),
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)

if __name__ == "__main__":
    # An in-place build would leave a _bridge.cpython-*.so beside the
    # editable install's _bridge.abi3.so, and Python prefers the former: a
    # stale module that silently wins.  Build one way only.
    raise SystemExit("build with: pip install -e .   (or BITNET_SANITIZE=... bash .ci/sanitize)")
