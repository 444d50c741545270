"""--bitnet-interpose: unmodified apps load the interposing libllama.

llama-cpp-python loads ``libllama`` once, when ``llama_cpp`` is first
imported, from the directory in ``LLAMA_CPP_LIB_PATH``.  So interposition
must be enabled (:func:`fault_inject.interpose.enable` builds the copy,
loads and attaches it, and points ``LLAMA_CPP_LIB_PATH`` at it) before any
of the user's code imports ``llama_cpp``.  The earliest hook a plugin gets
is ``pytest_load_initial_conftests`` (tryfirst): it runs after the plugins
are loaded and the command line is known, and before pytest itself (a
trylast implementation) imports the rootdir's and the test paths'
``conftest.py`` files.  So a conftest.py may import ``llama_cpp``; only code
that ran before (a plugin given with ``-p`` or ``PYTEST_PLUGINS``, an
installed plugin, the program that called ``pytest.main()``) cannot, and
that is a usage error saying so.

xdist workers run the same hook on the same command line, ini file and
environment, so each enables itself before it collects; the controller
sends the real library it interposed on, and a worker that would
interpose on another one stops (see :mod:`.xdist`).

Nothing here imports :mod:`fault_inject.interpose` unless the setting asks
for interposition.  Interposition lasts for the process: a loaded library
is never unloaded, so a second run in the same process finds it active.
"""

from __future__ import annotations

import importlib
import math
import sys
from typing import TYPE_CHECKING, Any, Final

import pytest

from .settings import import_fault_inject, resolve_early, usage

if TYPE_CHECKING:
    from fault_inject.interpose import Interposed

__all__ = ["INTERPOSED", "enable", "header"]

#: What this config interposed (absent: interposition off, or not enabled yet).
INTERPOSED: Final = pytest.StashKey["Interposed"]()

#: The module of llama-cpp-python that loads libllama (ctypes.CDLL at import).
LOADER: Final = "llama_cpp.llama_cpp"


def _loaded_from() -> str:
    """Which libllama the already imported llama_cpp loaded (best effort, for the message)."""
    module = sys.modules.get(LOADER)
    lib = getattr(module, "_lib", None)
    name = getattr(lib, "_name", None)
    if name:
        return f"it loaded {name}"
    return f"{LOADER} is in sys.modules" if module is not None else "llama_cpp is in sys.modules"


def imported_first(kind: str, source: str) -> str | None:
    """Why interposing now is too late (None: it is not).

    llama_cpp loaded its libllama already, and not through an active
    interposition of this process (a second run in one process finds its
    own copy loaded, which is fine).
    """
    if LOADER not in sys.modules and "llama_cpp" not in sys.modules:
        return None
    module = sys.modules.get("fault_inject.interpose")
    active = module.active() if module is not None else None
    if active is not None and active.kind == kind:
        return None
    return (
        f"--bitnet-interpose={kind} (from {source}) cannot interpose: llama_cpp was imported before the bitnet plugin "
        f"could point it at the interposing libllama ({_loaded_from()}); llama-cpp-python loads libllama once, "
        "at its first import.  Fix: do not import llama_cpp in a plugin loaded with -p or PYTEST_PLUGINS, in an "
        "installed pytest plugin, or in the program that calls pytest.main() (import it in conftest.py files or "
        "tests: they are imported after the plugin interposed); or run without --bitnet-interpose"
    )


def enable(config: pytest.Config) -> Interposed | None:
    """Enables the configured interposition once per config; None when off.

    Called from ``pytest_load_initial_conftests`` and again from
    ``pytest_configure`` (for a plugin registered too late for the first).
    """
    if INTERPOSED in config.stash:
        return config.stash[INTERPOSED]
    kind, source = resolve_early(config, "interpose")
    if kind is None:
        return None
    refused = imported_first(kind, source)
    if refused is not None:
        raise usage(refused)
    import_fault_inject()
    # import_module: the entry of sys.modules, as an import statement would
    # find it (a test stands a stub in for it there)
    interpose = importlib.import_module("fault_inject.interpose")

    from pytest_bitnet.bridge.errors import BitnetError

    try:
        interposed = interpose.enable(kind)
    except (interpose.InterposeError, BitnetError) as exc:
        # cannot interpose here (no llama-cpp-python, no compiler, ...): the
        # user's to fix, so a usage error with enable()'s reason, not a crash
        raise usage(f"--bitnet-interpose={kind} (from {source}): {exc}") from None
    config.stash[INTERPOSED] = interposed
    return interposed


def sync_timeout(config: pytest.Config) -> None:
    """Interposed calls get the deadline the bridge's calls have now.

    A delay or hang fired in an interposed function waits for that deadline
    (the interposer's process-wide one); called whenever the plugin changes
    the bridge's default (the run's --bitnet-timeout, a bitnet_timeout
    marker, their restoring), so --bitnet-timeout means the same for both.
    """
    if INTERPOSED not in config.stash:
        return
    from pytest_bitnet.bridge import settings

    seconds = settings.default_timeout()
    # set_timeout: None = no deadline; 0 would mean none too, but here 0 is a
    # deadline already past, so the smallest one that is not
    sys.modules["fault_inject.interpose"].set_timeout(max(seconds, 1e-9) if math.isfinite(seconds) else None)


def header(config: pytest.Config, source: str) -> list[str]:
    interposed = config.stash.get(INTERPOSED, None)
    if interposed is None:
        return []
    return [f"bitnet: interpose={interposed.kind} ({source}): the real {interposed.real_library} is interposed by "
            f"{interposed.library} (LLAMA_CPP_LIB_PATH={interposed.directory}); points {interposed.kind}_*"]


def workerinput(config: pytest.Config) -> dict[str, Any] | None:
    """What a worker must interpose on the same way (None: off)."""
    interposed = config.stash.get(INTERPOSED, None)
    if interposed is None:
        return None
    return {"kind": interposed.kind, "real_library": str(interposed.real_library)}


def check_worker(config: pytest.Config, sent: dict[str, Any] | None) -> None:
    """On a worker: it interposes exactly as the controller does."""
    mine = workerinput(config)
    if mine == sent:
        return
    if sent is None:
        raise usage(f"this xdist worker interposes ({mine}) but the controller does not: the setting must not differ "
                    "between them (BITNET_INTERPOSE, --bitnet-interpose, ini bitnet_interpose)")
    raise usage(f"this xdist worker would interpose on {mine['real_library'] if mine else 'nothing'} but the controller "
                f"interposes on {sent['real_library']}: every worker must load the same real libllama "
                "(is LLAMA_CPP_LIB_PATH different in the workers' environment?)")
