"""Interposition: fault points and live counters in unmodified llama.cpp apps.

An application that calls llama.cpp through llama-cpp-python (or its own
ctypes binding) never reaches the bridge's points.  An *interposing*
``libllama.so`` (``native/interpose/``, built per real libllama by
:mod:`.build`) is loaded instead of the real one: it forwards every exported
function to the real library, and the functions of
``native/interpose/llama_points.def`` place a fault point each (named by the
C function: ``llama_decode``) and count the llama objects made through it.
Attached to this process's bridge, its points live in the same registry as
the bridge's (:func:`fault_inject.points`, specs, hit counts, never-hit
reports, seeds, sweeps) and its counters in :func:`pytest_bitnet.live_counters`.

::

    from fault_inject import interpose
    interpose.enable()              # before llama_cpp is imported
    import llama_cpp                # loads the interposing libllama
    with fi.inject("llama_decode=fail"):
        llm(prompt)                 # -> RuntimeError("llama_decode returned -3")

    path = interpose.library_for(real_libllama)   # for a ctypes binding loading by path

Nothing of this is imported or loaded unless asked for.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Final, Mapping

from pytest_bitnet.bridge import counters as _counters
from pytest_bitnet.bridge import faults as _faults
from pytest_bitnet.bridge import llama as _bridge_llama

from .. import registry as _registry

__all__ = [
    "COUNTERS",
    "KINDS",
    "Interposed",
    "InterposeError",
    "InterposedPoint",
    "active",
    "disable",
    "enable",
    "find_real",
    "library_for",
    "loaded",
    "points",
    "set_timeout",
]

log = logging.getLogger("fault_inject.interpose")

#: What can be interposed.
KINDS: Final = ("llama",)

#: The live counters of bitnet_interpose.h (bitnet_interpose_counters_t, in
#: its order): llama objects made through the interposer and not yet freed.
COUNTERS: Final = ("llama_models", "llama_contexts", "llama_batches", "llama_samplers", "llama_adapters")

#: What a leaked object of each counter is called in a leak report.
_OBJECT_NAMES: Final = {
    "llama_models": "llama model", "llama_contexts": "llama context", "llama_batches": "llama batch",
    "llama_samplers": "llama sampler", "llama_adapters": "llama LoRA adapter",
}  # fmt: skip

#: llama-cpp-python's override of where it loads libllama from (a directory).
LIB_PATH_ENV: Final = "LLAMA_CPP_LIB_PATH"
#: LLAMA_CPP_LIB_PATH as the user had it before enable() changed it ("" when
#: unset), kept in the environment so child processes (xdist workers, a
#: program run by ``fault_inject run``) find the real library, not the copy.
USER_LIB_PATH_ENV: Final = "BITNET_INTERPOSE_USER_LIB_PATH"
#: Where the bridge's llama backend takes its libllama from before
#: LLAMA_CPP_LIB_PATH.
BRIDGE_LIB_PATH_ENV: Final = _bridge_llama.LIB_PATH_VARS[0]

class InterposeError(RuntimeError):
    """Interposition cannot be arranged (the message says why and what to do)."""


@dataclass(frozen=True)
class Interposed:
    """An interposition in effect."""

    kind: str  # "llama"
    directory: Path  # what LLAMA_CPP_LIB_PATH points at: the copy and its companions
    library: Path  # the interposing libllama.so
    real_library: Path  # the libllama.so it forwards to


@dataclass(frozen=True)
class InterposedPoint:
    """One interposed function's fault point."""

    name: str  # the C function, e.g. "llama_decode"
    actions: frozenset[str]  # the actions it accepts
    description: str  # what a firing does, in llama.cpp's terms


# ---- finding the real library ---------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InterposeError(f"cannot interpose {kind!r}: the kinds are {', '.join(map(repr, KINDS))}")


def _user_lib_path() -> str:
    """LLAMA_CPP_LIB_PATH as the user set it (before any enable() of ours)."""
    if USER_LIB_PATH_ENV in os.environ:
        return os.environ[USER_LIB_PATH_ENV].strip()
    return os.environ.get(LIB_PATH_ENV, "").strip()


def find_real(kind: str = "llama") -> Path:
    """The real libllama.so, as llama-cpp-python would load it: from the
    directory in LLAMA_CPP_LIB_PATH (as the user had it), else from the
    installed llama_cpp package's ``lib/``.  llama_cpp is not imported
    (importing it would load the library this is meant to replace)."""
    _check_kind(kind)
    override = _user_lib_path()
    if override:
        lib = Path(override) / "libllama.so"
        if not lib.is_file():
            raise InterposeError(
                f"{LIB_PATH_ENV}={override} holds no libllama.so, so there is no real library to interpose; "
                "point it at the directory with llama-cpp-python's libllama.so (<site-packages>/llama_cpp/lib) or unset it"
            )
        return lib.resolve()
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InterposeError(
            "cannot interpose llama.cpp: llama-cpp-python is not installed (no llama_cpp package) and "
            f"{LIB_PATH_ENV} is not set; install it (pip install 'pytest-bitnet[llama]') or set {LIB_PATH_ENV} "
            "to the directory holding the libllama.so to interpose"
        )
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libllama.so"
    if not lib.is_file():
        raise InterposeError(f"llama-cpp-python is installed but {lib} does not exist; reinstall it (pip install --force-reinstall llama-cpp-python)")
    return lib.resolve()


# ---- loading and attaching an interposer ------------------------------------------------------


class _Counters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in COUNTERS]


_HOOK_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)


class _Library:
    """One interposing library, loaded and attached to this process's bridge."""

    __slots__ = ("path", "real", "dll", "points", "_struct")

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # The same absolute path llama-cpp-python will dlopen: the loader
            # hands it this very copy, attached.
            self.dll = ctypes.CDLL(str(path))
            for name in ("bitnet_interpose_attach", "bitnet_interpose_counters", "bitnet_interpose_set_object_hook",
                         "bitnet_interpose_real_library", "bitnet_interpose_set_timeout_ns"):
                getattr(self.dll, name)
        except (OSError, AttributeError) as exc:
            raise InterposeError(f"{path} is not a usable interposing libllama ({exc}); delete it so it is rebuilt") from None
        self.dll.bitnet_interpose_attach.argtypes = [ctypes.c_void_p]
        self.dll.bitnet_interpose_attach.restype = ctypes.c_int
        self.dll.bitnet_interpose_counters.argtypes = [ctypes.POINTER(_Counters)]
        self.dll.bitnet_interpose_counters.restype = ctypes.c_int
        self.dll.bitnet_interpose_set_object_hook.argtypes = [_HOOK_TYPE, ctypes.c_void_p]
        self.dll.bitnet_interpose_set_object_hook.restype = None
        self.dll.bitnet_interpose_real_library.restype = ctypes.c_char_p
        self.dll.bitnet_interpose_set_timeout_ns.argtypes = [ctypes.c_int64]
        self.dll.bitnet_interpose_set_timeout_ns.restype = None
        self._struct = _Counters()
        self.real = Path(os.fsdecode(self.dll.bitnet_interpose_real_library() or b""))
        before = len(_registry.points())
        rc = int(self.dll.bitnet_interpose_attach(_faults.host_table()))
        if rc < 0:
            raise InterposeError(
                f"the interposing library {path} refused this bridge's host table (code {rc}): it was built from "
                "other sources than this pytest-bitnet; delete it so it is rebuilt"
            )
        if rc > 0:
            log.warning("%s attached without fault points (this bridge has fault injection compiled out): its counters "
                        "work, its points cannot be armed", path)
        # The points it registered now, or (attached before, or a copy for
        # another real library: registration is idempotent by name) the
        # points of the same names.
        names = _def_names()
        self.points = tuple(p for p in _registry.points()[before:]) or tuple(
            p for p in _registry.points() if p.name in names)
        self.dll.bitnet_interpose_set_object_hook(_hook, None)

    def counters(self) -> dict[str, int]:
        self.dll.bitnet_interpose_counters(ctypes.byref(self._struct))
        return {name: int(getattr(self._struct, name)) for name in COUNTERS}


_lock = threading.RLock()
_libraries: dict[Path, _Library] = {}  # interposer path -> loaded library; never unloaded
_active: Interposed | None = None
_bridge_path_was_set = False  # BITNET_LLAMA_LIB_PATH was the user's before enable()


def _sum_counters() -> dict[str, int]:
    total = dict.fromkeys(COUNTERS, 0)
    for lib in list(_libraries.values()):
        for k, v in lib.counters().items():
            total[k] += v
    return total


def _load(path: Path) -> _Library:
    """Loads and attaches the interposer at path (once per process)."""
    path = path.resolve()
    with _lock:
        lib = _libraries.get(path)
        if lib is None:
            lib = _Library(path)
            if not _libraries:
                # one source for every interposer loaded: their sum
                _counters.add_source(COUNTERS, _sum_counters)
            _libraries[path] = lib
        return lib


def _def_names() -> frozenset[str]:
    """The point names of llama_points.def (the one list of them)."""
    from . import build

    try:
        text = Path(build.TABLE).read_text()
    except OSError:
        return frozenset()
    return frozenset(re.findall(r"^\s*BN_INTERPOSE_POINT\(\s*(\w+)", text, re.M))


# ---- creation stacks ------------------------------------------------------------------------

_made: dict[tuple[str, int], int] = {}  # (counter, object address) -> identity in the bridge's creation registry


def _object_event(kind: bytes | None, obj: int | None, created: int) -> None:
    name = (kind or b"?").decode("ascii", "replace")
    key = (name, int(obj or 0))
    if created:
        what = f"{_OBJECT_NAMES.get(name, name)} at 0x{key[1]:x} (made through the interposing libllama)"
        # skip: this function and _hook; the innermost frame left is the
        # binding's call into libllama, below the user's line
        serial = _counters.record_object(what, {name: 1}, skip=2)
        if serial:
            _made[key] = serial
    else:
        serial = _made.pop(key, 0)
        _counters.end_object(serial, {name: -1})


@_HOOK_TYPE  # type: ignore[misc]
def _hook(user: Any, kind: bytes | None, obj: int | None, created: int) -> None:
    # Runs on the thread that made or freed the object, inside the libllama
    # call; must never raise into C.
    try:
        _object_event(kind, obj, created)
    except Exception:
        log.exception("fault_inject.interpose: recording a llama object failed")


# ---- the public calls -------------------------------------------------------------------------


def _build_for(real: Path) -> Path:
    """The interposing libllama.so built for real (build.py caches it)."""
    from . import build

    try:
        directory = Path(build.build_for(real))
    except Exception as exc:
        # build.py's errors say what is missing and how to get it
        raise InterposeError(f"cannot build the interposing libllama for {real}: {exc}") from exc
    return directory / "libllama.so" if directory.is_dir() else directory


def library_for(real_path: str | os.PathLike[str]) -> Path:
    """The interposing copy of the real libllama at real_path: built (cached),
    loaded and attached to this process's bridge.  Load it by this path (a
    ctypes binding's ``CDLL(path)``) and its calls reach the real library
    through the fault points."""
    real = Path(real_path)
    if not real.is_file():
        raise InterposeError(f"cannot interpose {real}: no such file; pass the path of a libllama.so")
    return _load(_build_for(real.resolve())).path


def _loaded_from_elsewhere(library: Path | None) -> str | None:
    """Where llama_cpp loaded libllama from, if it is imported and that is
    not `library`."""
    mod = sys.modules.get("llama_cpp.llama_cpp")
    if mod is None:
        # the package without its loader module: an import that failed half way, or a stand-in
        return "llama_cpp (it is in sys.modules)" if "llama_cpp" in sys.modules else None
    lib = getattr(mod, "_lib", None)
    where = getattr(lib, "_name", None) or getattr(mod, "__file__", "?")
    if library is not None and where and Path(where).resolve() == library.resolve():
        return None
    return str(where)


def enable(kind: str = "llama") -> Interposed:
    """Arranges that llama-cpp-python, imported from now on, loads the
    interposing libllama: builds it for the real library (:func:`find_real`),
    loads and attaches it, and points LLAMA_CPP_LIB_PATH at its directory.
    Idempotent.  InterposeError if llama_cpp was imported before (it holds
    the real library: nothing could reach it through the copy)."""
    global _active
    _check_kind(kind)
    with _lock:
        if _active is not None:
            return _active
        early = _loaded_from_elsewhere(None)
        if early is not None:
            raise InterposeError(
                f"llama_cpp was imported before interposition could be enabled: it loaded {early}, and every call "
                "of this process goes there, past the fault points (llama-cpp-python loads libllama once, at its "
                "first import).  Call fault_inject.interpose.enable() before anything imports llama_cpp; or let "
                "the harness do it: `pytest --bitnet-interpose=llama` (conftest.py files may then import llama_cpp), "
                "`python -m fault_inject run --interpose=llama app.py`"
            )
        real = find_real(kind)
        lib = _load(_build_for(real))
        global _bridge_path_was_set
        _bridge_path_was_set = BRIDGE_LIB_PATH_ENV in os.environ
        if USER_LIB_PATH_ENV not in os.environ:
            os.environ[USER_LIB_PATH_ENV] = os.environ.get(LIB_PATH_ENV, "")
        # The bridge's own llama backend (the adapter) must keep linking the
        # real library, here and in child processes that inherit the copy's
        # LLAMA_CPP_LIB_PATH: it reads BRIDGE_LIB_PATH_ENV first.
        os.environ.setdefault(BRIDGE_LIB_PATH_ENV, str(real.parent))
        os.environ[LIB_PATH_ENV] = str(lib.path.parent)
        _active = Interposed(kind, lib.path.parent, lib.path, lib.real if str(lib.real) not in ("", ".") else real)
        return _active


def active() -> Interposed | None:
    """The interposition in effect, or None."""
    return _active


def disable() -> None:
    """Undoes enable()'s environment (for tests): LLAMA_CPP_LIB_PATH is the
    user's again.  The library stays loaded and attached (a loaded library
    cannot be taken back from a binding that holds it), and so do its
    counters."""
    global _active
    with _lock:
        if _active is None:
            return
        if not _bridge_path_was_set:
            os.environ.pop(BRIDGE_LIB_PATH_ENV, None)
        user = os.environ.pop(USER_LIB_PATH_ENV, "")
        if user:
            os.environ[LIB_PATH_ENV] = user
        else:
            os.environ.pop(LIB_PATH_ENV, None)
        _active = None


def set_timeout(seconds: float | None) -> None:
    """The deadline of every interposed call in which a delay or hang fires
    (None or 0: none; a hang is then refused at the call)."""
    ns = 0 if not seconds else int(seconds * 1e9)
    with _lock:
        for lib in _libraries.values():
            lib.dll.bitnet_interpose_set_timeout_ns(ns)


def points(kind: str = "llama") -> tuple[InterposedPoint, ...]:
    """The interposed points: name, accepted actions, what a firing does.
    Builds and attaches the interposer (not enabling it) if needed."""
    _check_kind(kind)
    lib = next(iter(_libraries.values()), None) if _libraries else None
    if lib is None:
        lib = _load(_build_for(find_real(kind)))
    return tuple(InterposedPoint(p.name, p.actions, p.description) for p in lib.points)


def loaded() -> tuple[Interposed, ...]:
    """Every interposer this process has loaded and attached (enabled or
    not), oldest first."""
    with _lock:
        return tuple(Interposed("llama", lib.path.parent, lib.path, lib.real) for lib in _libraries.values())


def counters() -> Mapping[str, int]:
    """The interposers' live counters (also in pytest_bitnet.live_counters())."""
    return _sum_counters()


