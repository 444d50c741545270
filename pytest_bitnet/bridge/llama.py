"""llama.cpp as a backend: finding libllama and building the adapter.

The adapter (``native/llama/adapter.c``) exports the socket ABI over
llama.cpp.  llama.cpp's params structs are passed by value and change
between releases, so the adapter is compiled here, on demand, with the
system C compiler against the ``llama.h`` that ships beside the very
``libllama.so`` it links (rpath), and cached under a hash of everything
that decides the result.  The bridge then loads it like any backend
library.  llama_cpp itself is never imported: ``find_spec`` locates it.

Where things come from:

``BITNET_LLAMA_LIB_PATH``       directory holding the libllama.so the adapter links, else
``LLAMA_CPP_LIB_PATH``          (llama-cpp-python's own override), else ``<llama_cpp>/lib``.
                                A harness that points llama-cpp-python elsewhere (an
                                interposing copy of libllama) sets the first to the real one,
                                so the bridge's own backend, in this process and its children,
                                keeps linking the real library
``BITNET_LLAMA_ADAPTER_DIR``    adapter cache, else ``$XDG_CACHE_HOME/pytest-bitnet``
                                (``~/.cache/pytest-bitnet``)
``CC``                          the compiler, else ``cc``
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "LIB_PATH_VARS",
    "LlamaStatus",
    "compiler",
    "configure",
    "configured",
    "extra_cflags",
    "find_include",
    "native_dir",
    "status",
    "system_info",
]

log = logging.getLogger("pytest_bitnet.llama")

INSTALL_HINT = "pip install 'pytest-bitnet[llama]' (its first build compiles llama.cpp, ~8 min)"

#: The native files compiled here at run time, relative to ``native/``: the
#: adapter and the headers and tables of ours it includes (bitnet.h includes
#: the error table), and the interposing libllama that fault_inject.interpose
#: builds the same way (its sources, and the two headers below native/include
#: it reads: the layout fault_eval hands back).  setup.py ships exactly these
#: inside the package, at ``pytest_bitnet/bridge/`` + PACKAGED_NATIVE, because a
#: wheel has no source tree.
RUNTIME_NATIVE_FILES = (
    "llama/adapter.c",
    "include/*.h",
    "include/*.def",
    "interpose/*.c",
    "interpose/*.h",
    "interpose/*.def",
    "fault/bn_fault.h",
    "common/bn_error.h",
)
PACKAGED_NATIVE = "native"


def native_dir() -> Path:
    """Where the adapter's native files are: inside the installed package (a
    wheel), else the source tree's ``native/`` (an editable install or a checkout)."""
    packaged = Path(__file__).resolve().parent / PACKAGED_NATIVE
    if (packaged / "llama" / "adapter.c").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "native"


NATIVE = native_dir()
ADAPTER_SOURCE = NATIVE / "llama" / "adapter.c"
# A change to any of our headers or tables must rebuild the adapter (_key).
OUR_HEADERS = sorted((NATIVE / "include").glob("*.h")) + sorted((NATIVE / "include").glob("*.def"))
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fPIC", "-shared", "-fvisibility=hidden"]


@dataclass(frozen=True)
class LlamaStatus:
    """The adapter and the libllama it links, or why there is none."""

    adapter: Path | None
    libllama: Path | None
    reason: str | None  # set when adapter is None

    @property
    def available(self) -> bool:
        return self.adapter is not None


class _Unavailable(Exception):
    pass


def _package_dir() -> Path | None:
    """llama_cpp's directory, found without importing it."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


#: Where the adapter's libllama comes from, first match wins (see the module docstring).
LIB_PATH_VARS = ("BITNET_LLAMA_LIB_PATH", "LLAMA_CPP_LIB_PATH")


def _lib_dir() -> Path:
    for var in LIB_PATH_VARS:
        override = os.environ.get(var, "").strip()
        if not override:
            continue
        lib_dir = Path(override)
        if not (lib_dir / "libllama.so").is_file():
            raise _Unavailable(
                f"{var}={override} holds no libllama.so; point it at the directory "
                "with llama-cpp-python's libllama.so (<site-packages>/llama_cpp/lib) or unset it"
            )
        return lib_dir
    package = _package_dir()
    if package is None:
        raise _Unavailable(f"llama-cpp-python is not installed: {INSTALL_HINT}")
    lib_dir = package / "lib"
    if not (lib_dir / "libllama.so").is_file():
        raise _Unavailable(
            f"llama-cpp-python is installed but {lib_dir} holds no libllama.so; reinstall it: {INSTALL_HINT}"
        )
    return lib_dir


def _include_candidates(lib_dir: Path, installed: bool = True) -> list[Path]:
    candidates = [lib_dir.parent / "include", lib_dir / "include", lib_dir.parent.parent / "include"]
    package = _package_dir() if installed else None
    if package is not None:
        candidates.append(package.parent / "include")
    return candidates


def find_include(lib_dir: Path, installed: bool = True) -> Path | None:
    """The directory of the llama.h (and ggml.h) released with lib_dir's libllama, or None.
    installed=False looks beside the library only, not in the installed llama_cpp package
    (fault_inject.interpose's build: a wrapper compiled against another release's params
    structs would pass them with the wrong layout)."""
    for d in _include_candidates(lib_dir, installed):
        if (d / "llama.h").is_file() and (d / "ggml.h").is_file():
            return d
    return None


def _include_dir(lib_dir: Path) -> Path:
    """The directory of the llama.h released with lib_dir's libllama."""
    found = find_include(lib_dir)
    if found is not None:
        return found
    candidates = _include_candidates(lib_dir)
    raise _Unavailable(
        f"no llama.h/ggml.h found for {lib_dir / 'libllama.so'} (looked in "
        f"{', '.join(str(c) for c in candidates)}); llama-cpp-python installs them in "
        f"<site-packages>/include: {INSTALL_HINT}"
    )


def _cache_dir() -> Path:
    override = os.environ.get("BITNET_LLAMA_ADAPTER_DIR", "").strip()
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "pytest-bitnet"


def compiler() -> list[str]:
    """The C compiler command for the libraries built at run time (this
    adapter, fault_inject's interposer): ``$CC``, else ``cc``."""
    return shlex.split(os.environ.get("CC", "").strip() or "cc")


def extra_cflags() -> list[str]:
    """``$BITNET_CFLAGS`` (as for the bridge's own build, _build.py), given
    after a run-time build's own flags so that they win: .ci/coverage's -O0,
    without which gcc folds the small error branches it counts."""
    return os.environ.get("BITNET_CFLAGS", "").split()


def _key(libllama: Path, include: Path) -> str:
    """Hash of what decides the adapter binary: sources, headers, the
    library's identity and the compiler command."""
    h = hashlib.sha256()
    # ggml-backend.h: the adapter includes it when shipped (Socket 6's device list)
    backend_h = [include / "ggml-backend.h"] if (include / "ggml-backend.h").is_file() else []
    for f in [ADAPTER_SOURCE, *OUR_HEADERS, include / "llama.h", include / "ggml.h", *backend_h]:
        h.update(f.read_bytes())
    st = libllama.stat()
    h.update(f"{libllama.resolve()}|{st.st_size}|{st.st_mtime_ns}|{compiler()}|{CFLAGS}|{extra_cflags()}".encode())
    return h.hexdigest()[:16]


def _build(target: Path, libllama: Path, include: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    lib_dir = libllama.resolve().parent
    cmd = [
        *compiler(),
        *CFLAGS,
        *extra_cflags(),
        f"-I{NATIVE / 'include'}",
        f"-I{include}",
        f'-DAD_LLAMA_LIB="{libllama}"',
        str(ADAPTER_SOURCE),
        str(libllama.resolve()),
        f"-Wl,-rpath,{lib_dir}",
        "-lpthread",
        "-o",
        str(tmp),
    ]
    log.info("building the llama.cpp adapter: %s", shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _Unavailable(f"could not run the C compiler ({shlex.join(compiler())}): {exc}; set CC") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise _Unavailable(f"compiling the llama.cpp adapter failed ({shlex.join(cmd)}):\n{tail}")
    os.replace(tmp, target)  # concurrent builders (xdist workers) never see half a file


def status() -> LlamaStatus:
    """Finds libllama and returns the adapter for it, building it if needed."""
    try:
        if not ADAPTER_SOURCE.is_file():
            raise _Unavailable(f"the adapter source {ADAPTER_SOURCE} is missing from this installation")
        lib_dir = _lib_dir()
        libllama = lib_dir / "libllama.so"
        include = _include_dir(lib_dir)
        target = _cache_dir() / f"llama-adapter-{_key(libllama, include)}.so"
        if not target.is_file():
            _build(target, libllama, include)
        return LlamaStatus(target, libllama, None)
    except _Unavailable as exc:
        return LlamaStatus(None, None, str(exc))
    except OSError as exc:
        return LlamaStatus(None, None, f"preparing the llama.cpp adapter failed: {exc}")


def configure(lib: object, ffi: object) -> LlamaStatus:
    """Tells the bridge where the adapter is, or why there is none."""
    st = status()
    if st.available:
        lib.bitnet_bridge_set_llama_library(str(st.adapter).encode(), str(st.libllama).encode(), ffi.NULL)  # type: ignore[attr-defined]
    else:
        log.debug("llama.cpp backend unavailable: %s", st.reason)
        lib.bitnet_bridge_set_llama_library(ffi.NULL, ffi.NULL, str(st.reason).encode())  # type: ignore[attr-defined]
    return st


def system_info(libllama: Path) -> str:
    """``llama_print_system_info()`` of that libllama: per backend the
    features it was compiled with (``CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 |
    ...``).  They decide ggml's kernels, hence its summation orders
    (testing.crossval.GgmlBuild).  Loads the library in this process, as the
    adapter does."""
    lib = ctypes.CDLL(str(libllama))
    fn = lib.llama_print_system_info
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    return (fn() or b"").decode("utf-8", "replace")


def configured() -> LlamaStatus:
    """What the bridge was told when it loaded: the adapter in use, or why there is none."""
    from ._native import LLAMA

    return LLAMA
