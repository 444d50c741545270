"""cffi build script for the native bridge (out-of-line API mode).

``pip install`` runs this through ``cffi_modules`` in setup.py and compiles
every C file under ``native/`` into ``pytest_bitnet.bridge._bridge``.  The cdef is
read from the headers themselves, so a declaration lives in one place, and
the facts of the X-macro tables in ``native/include/*.def`` (error codes,
socket symbols, fault points, backends) are read with :func:`read_def`.

Build options (environment):

``BITNET_SANITIZE``  e.g. ``address,undefined``: compile and link with
                     ``-fsanitize=...`` (the sanitizer CI pass), and with
                     ``-DBN_LOCK_CHECKS``: every fault point reached while a
                     bridge lock is held aborts, armed or not.
``BITNET_CFLAGS``    extra compiler flags, split on whitespace.
``BITNET_COVERAGE``  ``1``: compile and link with ``--coverage`` at ``-O0`` (the
                     coverage CI pass, .ci/coverage) and ``-DBN_COVERAGE``: a
                     ``NEVER()`` site reached aborts (native/common/bn_never.h).
``BITNET_FAULTS``    ``0``: compile every fault point out (``-DBN_NO_FAULTS``);
                     fault_inject then reports injection as not compiled in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
INCLUDE_DIRS = [NATIVE / "include", NATIVE / "common", NATIVE / "reference", NATIVE / "check", NATIVE / "bridge", NATIVE / "fault"]
SOURCE_DIRS = [NATIVE / "common", NATIVE / "reference", NATIVE / "check", NATIVE / "bridge", NATIVE / "fault"]

# Internal declarations the Python side uses besides the socket ABI: the
# kernels, for the matvec benchmark and kernel tests; the llama check, for its
# tests where llama.cpp is not installed.
INTERNAL_CDEF = """
int bn_check_for_llama(const char *path, int vocab_only);
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
uint16_t bn_fp32_to_fp16(float f);
float bn_fp16_to_fp32(uint16_t h);
extern "Python" void _bitnet_log_sink(int level, const char *component, const char *line);
"""

# The fault engine's firing callback (pytest_bitnet.bridge.faults defines it).
FAULT_CDEF = """
extern "Python" void _bitnet_fault_fired(void *user, const bitnet_fault_event_t *event);
extern "Python" int32_t _bitnet_fault_decide(void *user, int32_t point, int32_t locked, bitnet_fault_decision_t *out);
"""


class DefEntry(NamedTuple):
    """One ``MACRO(arg, ...)`` line of an X-macro table (``native/include/*.def``)."""

    macro: str
    args: tuple[Any, ...]  # str for string literals, int for integer literals, else the C text
    raw: tuple[str, ...]  # each argument's C source text


_DEF_TOKEN = re.compile(
    r'(?P<comment>/\*.*?\*/|//[^\n]*)|(?P<pp>^[ \t]*#(?:[^\n]*\\\n)*[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*")'
    r"|(?P<name>[A-Za-z_]\w*)|(?P<open>\()|(?P<close>\))|(?P<comma>,)|(?P<other>[^\s])",
    re.S | re.M,
)


def _def_value(raw: str) -> Any:
    strings = re.fullmatch(r'\s*(?:"(?:[^"\\]|\\.)*"\s*)+', raw)
    if strings:
        return "".join(
            bytes(m, "ascii").decode("unicode_escape") for m in re.findall(r'"((?:[^"\\]|\\.)*)"', raw)
        )
    if re.fullmatch(r"\s*-?\s*\d+\s*", raw):
        return int(raw.replace(" ", ""))
    return raw.strip()


def read_def(path: Path, *macros: str) -> list[DefEntry]:
    """The entries of an X-macro table, in file order: every ``MACRO(...)`` of one of ``macros``.

    Comments and preprocessor lines (a .def's own ``#ifndef`` defaults) are
    skipped; arguments split at top-level commas.  Enough C for the tables in
    native/include, not a preprocessor: an entry written through another
    macro is not seen.
    """
    text = path.read_text()
    wanted = set(macros)
    entries: list[DefEntry] = []
    tokens = [m for m in _DEF_TOKEN.finditer(text) if not (m["comment"] or m["pp"])]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok["name"] in wanted and i + 1 < len(tokens) and tokens[i + 1]["open"]:
            depth, args, start = 0, [], tokens[i + 1].end()
            for j in range(i + 1, len(tokens)):
                t = tokens[j]
                if t["open"]:
                    depth += 1
                elif t["close"]:
                    depth -= 1
                    if depth == 0:
                        args.append(text[start : t.start()])
                        break
                elif t["comma"] and depth == 1:
                    args.append(text[start : t.start()])
                    start = t.end()
            else:
                raise ValueError(f"{path.name}: unterminated {tok['name']}( at offset {tok.start()}")
            raw = tuple(" ".join(_DEF_TOKEN.sub(lambda m: "" if m["comment"] else m[0], a).split()) for a in args)
            entries.append(DefEntry(tok["name"], tuple(_def_value(a) for a in raw), raw))
            i = j + 1
            continue
        i += 1
    return entries


# An X-macro expansion in a header: a macro defined for one table, the
# table, the macro undefined.
_XMACRO = re.compile(
    r'^[ \t]*#define[ \t]+(\w+)\(([^)]*)\)[ \t]*([^\n]*)\n[ \t]*#include[ \t]+"([\w.]+\.def)"[ \t]*\n[ \t]*#undef[ \t]+\1\b[^\n]*\n',
    re.M,
)


def _expand_tables(text: str, include_dir: Path) -> str:
    """Writes out every X-macro expansion of a header from its .def table."""

    def expand(m: re.Match[str]) -> str:
        params = [p.strip() for p in m[2].split(",")]
        out = []
        for entry in read_def(include_dir / m[4], m[1]):
            values = dict(zip(params, entry.raw))
            body = re.sub(r"#\s*(\w+)", lambda p: '"' + values[p[1]] + '"' if p[1] in values else p[0], m[3])
            body = re.sub(r"\b\w+\b", lambda p: values.get(p[0], p[0]), body)
            out.append(re.sub(r"\s*##\s*", "", body))
        return "\n".join(out) + "\n"

    return _XMACRO.sub(expand, text)


def header_cdef(path: Path) -> str:
    """The declarations of a C header in the subset cffi's cdef parses.

    Drops comments and preprocessor blocks (include guards, ``extern "C"``,
    export macros).  Constants keep their names and take their values from
    the compiled C, never from this text: every enumerator and every
    ``#define NAME <value>`` becomes ``#define NAME ...``.  The enumerators
    an X-macro writes from a .def table (``#define M(...)`` / ``#include
    "t.def"`` / ``#undef M``) are written out from the table first.
    """
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    text = re.sub(r"#if(?:def)?[^\n]*(?:__cplusplus|_WIN32)[\s\S]*?#endif[^\n]*\n", "", text)
    text = _expand_tables(text, path.parent)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            constant = re.fullmatch(r"#define\s+(\w+)\s+([^\s\"][^\"]*)", stripped)
            if constant:
                lines.append(f"#define {constant[1]} ...")
            continue
        lines.append(line.replace("BITNET_API ", ""))
    text = "\n".join(lines)

    def constants(m: re.Match[str]) -> str:
        names = [re.match(r"\s*(\w+)", item)[1] for item in m[1].split(",") if item.strip()]  # type: ignore[index]
        return "\n".join(f"#define {name} ..." for name in names) + "\n"

    return re.sub(r"\benum\s*\{([^}]*)\}\s*;", constants, text)


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
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-O1", "-g", "-DBN_LOCK_CHECKS", "-DBN_TEST_BUILD"]
        ldflags += [f"-fsanitize={sanitize}"]
    if os.environ.get("BITNET_COVERAGE", "").strip() == "1":
        # -O0: at -O2 gcc merges and moves the small error branches this pass
        # exists to count, so a reached site can read as unreached.
        # -fprofile-update=atomic: the thread pool updates counts concurrently.
        cflags += ["--coverage", "-fprofile-update=atomic", "-O0", "-g", "-DBN_COVERAGE"]
        # libgcov is linked in statically: keep its symbols (mangle_path)
        # out of the libraries' exports, which tests compare with the ABI.
        ldflags += ["--coverage", "-Wl,--exclude-libs,libgcov.a"]
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
    '#include "bitnet.h"\n#include "bitnet_bridge.h"\n#include "bitnet_fault.h"\n#include "kernels.h"\n#include "llama_check.h"\n',
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
