"""Native log lines into the ``logging`` module (logger ``pytest_bitnet.native``).

The native side formats ``[YYYY-MM-DD HH:MM:SS] [LEVEL] [component] message``
and drops lines above BITNET_CPP_LOG_LEVEL before formatting them, so a
disabled level costs nothing.  Lines reach Python through a cffi callback,
on whatever thread logged them.
"""

from __future__ import annotations

import logging

from ._native import ffi, lib

native_log = logging.getLogger("pytest_bitnet.native")
# A library leaves output to the application: without this, Python's
# last-resort handler would print every native warning to stderr.
logging.getLogger("pytest_bitnet").addHandler(logging.NullHandler())

# native level -> logging level (error, warn, info, debug, trace)
LEVELS = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG, 5)


@ffi.def_extern()
def _bitnet_log_sink(level: int, component: bytes, line: bytes) -> None:
    try:
        py_level = LEVELS[level] if 0 <= level < len(LEVELS) else logging.ERROR
        native_log.log(
            py_level,
            ffi.string(line).decode("utf-8", "replace"),
            extra={"bitnet_component": ffi.string(component).decode("utf-8", "replace")},
        )
    except Exception:  # a logging failure must never unwind into C
        pass


def install() -> None:
    lib.bitnet_bridge_set_log_sink(lib._bitnet_log_sink)


#: native level names, by native number (bitnet_bridge.h: 0=error .. 4=trace)
LEVEL_NAMES = ("error", "warn", "info", "debug", "trace")


def set_native_level(name: str) -> None:
    """Changes the native threshold: error, warn, info, debug or trace."""
    if name.lower() not in LEVEL_NAMES:
        raise ValueError(f"unknown native log level {name!r}: expected one of {', '.join(LEVEL_NAMES)}")
    lib.bitnet_bridge_set_log_level(LEVEL_NAMES.index(name.lower()))


def native_level() -> str:
    """The native threshold's name."""
    return LEVEL_NAMES[max(0, lib.bitnet_bridge_get_log_level())]
