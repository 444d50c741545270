"""Building the interposing libllama for one real libllama.

``build_for(real)`` returns a directory holding ``libllama.so`` (and
``libllama.so.0``, the SONAME that ``libmtmd`` and others record) built from
``native/interpose/`` for that very library, beside symlinks to every other
``lib*.so*`` of the real library's directory (``libggml*``, ``libmtmd``), so
that a loader pointed at the directory (llama-cpp-python's
``LLAMA_CPP_LIB_PATH``) finds the companions.  The companions' ``RUNPATH
$ORIGIN`` resolves against the symlink's directory, so ``libmtmd``'s
``libllama.so.0`` is the interposer too.

The interposer exports every function the real library exports (``nm -D
--defined-only``: ``T`` and ``W``): the functions of
``native/interpose/llama_points.def`` are C wrappers compiled against the
``llama.h`` released with the library (its params structs are passed by value
and change between releases), every other one a generated trampoline that
jumps through a slot filled from the real library at load.  Data symbols
(``B``/``D``/``R``/``V``/``u``: C++ typeinfo, vtables, guard variables) cannot
be forwarded by a jump; they are left out and listed in ``data-symbols.txt``
in the directory.  llama-cpp-python and ctypes bindings bind functions only,
and ``libmtmd`` (the one companion linking libllama) imports none of them.

The directory is cached, keyed by the real library (path, size, mtime), our
sources and headers, the llama.h it was compiled against and the compiler
command: the same pattern as the llama.cpp adapter (pytest_bitnet.bridge.llama).

``CC``                      the compiler, else ``cc``
``BITNET_INTERPOSE_CACHE``  the cache, else ``$XDG_CACHE_HOME/pytest-bitnet`` (``~/.cache/...``)
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from pytest_bitnet.bridge.errors import BitnetError
from pytest_bitnet.bridge.llama import (
    INSTALL_HINT,
    compiler,
    extra_cflags,
    find_include,
    native_dir,
)

__all__ = ["InterposeBuildError", "build_for", "exported_functions", "interposed_functions", "needed_libraries"]

NATIVE = native_dir()
SOURCE_DIR = NATIVE / "interpose"
SOURCE = SOURCE_DIR / "interpose.c"
TABLE = SOURCE_DIR / "llama_points.def"
# bn_fault.h (bn_fault_special, the layout fault_eval hands back) and what it includes
INCLUDE_DIRS = [SOURCE_DIR, NATIVE / "include", NATIVE / "fault", NATIVE / "common"]
CFLAGS = [
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    # llama.h's LLAMA_API is visibility("default") only when building the library itself: our
    # wrappers are the library's functions, so they must be exported the same way
    "-DLLAMA_SHARED",
    "-DLLAMA_BUILD",
]
# -z defs: a wrapper listed in the table but not written is a link error, not a missing export
LDFLAGS = ["-Wl,-z,defs", "-Wl,-soname,libllama.so.0", "-ldl", "-lpthread"]

_ROW = re.compile(r"^\s*BN_INTERPOSE_(?:POINT|WRAP)\(\s*(\w+)", re.M)
# nm's type letters of functions (T: text, W: weak text, i: GNU ifunc) and its line format
_FUNCTION_TYPES = {"T", "W", "i"}
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.$]*$")


class InterposeBuildError(BitnetError):
    """The interposer could not be built for a real libllama (no compiler, no header, no nm, ...)."""


def interposed_functions() -> list[str]:
    """The functions with a C wrapper (llama_points.def), in table order."""
    return _ROW.findall(_strip_comments(TABLE.read_text()))


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _binutils(tool: str, env: str, args: list[str], library: Path, what: str) -> str:
    """The output of a binutils tool (nm, readelf) run on library; the tool is $env, else tool on PATH."""
    exe = shutil.which(os.environ.get(env, "").strip() or tool)
    if exe is None:
        raise InterposeBuildError(
            f"cannot {what} {library}: no '{tool}' on PATH; install binutils (apt-get install binutils) or set {env} to its path"
        )
    proc = subprocess.run([exe, *args, str(library)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InterposeBuildError(f"'{tool} {' '.join(args)} {library}' failed ({proc.stderr.strip() or 'no output'}): is it a shared library?")
    return proc.stdout


def _nm(library: Path) -> list[tuple[str, str]]:
    out = []
    for line in _binutils("nm", "NM", ["-D", "--defined-only"], library, "list the symbols of").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[1], parts[2].split("@", 1)[0]))  # drop a symbol version
    return out


def needed_libraries(library: Path) -> list[str]:
    """The DT_NEEDED entries of a shared library, in order (``readelf -d``)."""
    text = _binutils("readelf", "READELF", ["-d", "--wide"], library, "list what links")
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text)


def exported_functions(library: Path) -> list[str]:
    """Every function symbol a shared library exports (sorted, unique)."""
    return sorted({name for kind, name in _nm(library) if kind in _FUNCTION_TYPES})


def _data_symbols(library: Path) -> list[str]:
    return sorted({name for kind, name in _nm(library) if kind not in _FUNCTION_TYPES})


def trampolines_asm(names: list[str], machine: str | None = None) -> str:
    """The assembly of one trampoline per name, jumping through bn_ip_slots[i]; the slot table
    (filled by interpose.c's constructor) and the names, NUL-separated, in the same order."""
    machine = machine or platform.machine()
    lines = ["/* generated by fault_inject/interpose/build.py: do not edit */", ".text"]
    for i, name in enumerate(names):
        if machine in ("x86_64", "AMD64"):
            body = [f"    jmp *(bn_ip_slots+{8 * i})(%rip)"]
        elif machine in ("aarch64", "arm64"):
            body = [
                f"    adrp x16, bn_ip_slots+{8 * i}",
                f"    ldr x16, [x16, #:lo12:bn_ip_slots+{8 * i}]",
                "    br x16",
            ]
        else:
            raise InterposeBuildError(
                f"no trampoline for the {machine!r} architecture: the interposer supports x86_64 and aarch64"
            )
        lines += [".p2align 4", f".globl {name}", f".type {name}, @function", f"{name}:", *body, f".size {name}, .-{name}"]
    n = len(names)
    lines += [
        ".data",
        ".p2align 3",
        ".globl bn_ip_slots",
        ".hidden bn_ip_slots",
        "bn_ip_slots:",
        f"    .zero {8 * max(n, 1)}",
        ".section .rodata",
        ".p2align 2",
        ".globl bn_ip_n_slots",
        ".hidden bn_ip_n_slots",
        "bn_ip_n_slots:",
        f"    .long {n}",
        ".globl bn_ip_names",
        ".hidden bn_ip_names",
        "bn_ip_names:",
        *(f'    .asciz "{name}"' for name in names),
        '    .asciz ""',
        '.section .note.GNU-stack,"",@progbits',
    ]
    return "\n".join(lines) + "\n"


def _cache_root() -> Path:
    override = os.environ.get("BITNET_INTERPOSE_CACHE", "").strip()
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "pytest-bitnet"


def _sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*")) + sorted((NATIVE / "include").glob("*")) + [NATIVE / "fault" / "bn_fault.h", NATIVE / "common" / "bn_error.h"]


def _key(real: Path, include: Path) -> str:
    h = hashlib.sha256()
    for f in [*_sources(), include / "llama.h", include / "ggml.h", Path(__file__)]:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    st = real.stat()
    h.update(f"{real}|{st.st_size}|{st.st_mtime_ns}|{compiler()}|{CFLAGS}|{extra_cflags()}|{LDFLAGS}".encode())
    return h.hexdigest()[:16]


def _real_path(real: Path | str) -> Path:
    path = Path(real)
    if path.is_dir():
        path = path / "libllama.so"
    if not path.is_file():
        raise InterposeBuildError(
            f"no libllama at {path}: pass the path of the real libllama.so (llama-cpp-python's is in "
            f"<site-packages>/llama_cpp/lib): {INSTALL_HINT}"
        )
    return path.resolve()


def build_for(real: Path | str) -> Path:
    """The directory of the interposer for the real libllama ``real`` (a file, or a directory
    holding libllama.so), building it on first use.  Raises InterposeBuildError saying what is
    missing and how to get it."""
    real = _real_path(real)
    include = find_include(real.parent, installed=False)
    if include is None:
        raise InterposeBuildError(
            f"no llama.h/ggml.h found beside {real} (in ../include, ./include or ../../include): the "
            f"interposer is compiled against the llama.h released with the library (llama-cpp-python installs it in <site-packages>/include): {INSTALL_HINT}"
        )
    target = _cache_root() / f"interpose-{_key(real, include)}"
    if (target / "libllama.so").is_file():
        return target
    _cache_root().mkdir(parents=True, exist_ok=True)
    # built aside and renamed into place: concurrent builders (xdist workers) never see half a directory
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=_cache_root()))
    try:
        _build_into(tmp, real, include)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "libllama.so").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_into(out: Path, real: Path, include: Path) -> None:
    wrapped = set(interposed_functions())
    functions = exported_functions(real)
    forwarded = [n for n in functions if n not in wrapped and not n.startswith("bitnet_interpose_")]
    bad = [n for n in forwarded if not _SYMBOL.match(n)]
    if bad:
        raise InterposeBuildError(f"{real} exports names no trampoline can carry: {bad[:5]!r}")
    asm = out / "trampolines.S"
    asm.write_text(trampolines_asm(forwarded))
    (out / "data-symbols.txt").write_text(
        "# exported by the real library but not by the interposer: data, not functions (see build.py)\n"
        + "".join(f"{n}\n" for n in _data_symbols(real))
    )
    # The companions first: the interposer links the ones the real library links.
    for companion in sorted(real.parent.glob("lib*.so*")):
        if companion.name.startswith("libllama.so"):
            continue  # ours stands in for every name of the real one
        os.symlink(companion.resolve(), out / companion.name)
    # The real libllama lists libggml*.so.0 as DT_NEEDED, so a binding that reads
    # ggml_* through libllama's handle (dlsym searches an object's dependencies)
    # finds them; the interposer lists the same ones, found through the
    # symlinks beside it ($ORIGIN), which are the very files the real one loads.
    companions = [n for n in needed_libraries(real) if (out / n).exists()]
    lib = out / "libllama.so"
    cmd = [
        *compiler(),
        *CFLAGS,
        *extra_cflags(),
        *(f"-I{d}" for d in INCLUDE_DIRS),
        f"-I{include}",
        f'-DIP_REAL_LIB="{real}"',
        str(SOURCE),
        str(asm),
        *LDFLAGS,
        f"-L{out}",
        "-Wl,--no-as-needed",
        *(f"-l:{n}" for n in companions),
        "-Wl,-rpath,$ORIGIN",
        "-o",
        str(lib),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InterposeBuildError(
            f"could not run the C compiler ({shlex.join(compiler())}): {exc}; install gcc or set CC"
        ) from None
    if proc.returncode != 0:
        # from the first error on: the cause is there; a header of another release makes
        # hundreds of lines whose last ones are notes about macro expansions
        lines = proc.stderr.strip().splitlines()
        first = next((i for i, line in enumerate(lines) if "error" in line), max(len(lines) - 15, 0))
        shown = "\n".join(lines[first : first + 15])
        raise InterposeBuildError(f"compiling the interposing libllama failed ({shlex.join(cmd)}):\n{shown}")
    os.symlink("libllama.so", out / "libllama.so.0")
