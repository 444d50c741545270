"""Native log lines into the ``logging`` module (logger ``pytest_bitnet.native``).

The native side formats ``[YYYY-MM-DD HH:MM:SS] [LEVEL] [component] message``
(the component is what failed: ``create``, ``tokenize``, ``loader``, ...)
and drops lines above BITNET_CPP_LOG_LEVEL before formatting them, so a
disabled level costs nothing.  Lines reach Python through a cffi callback,
on whatever thread logged them.

As the logging HOWTO asks of a library ("Configuring Logging for a
Library"), the package adds only a NullHandler: an application sees native
lines once it configures logging (``logging.basicConfig()``), and the
command-line tools (``python -m fault_inject``, ``python -m pytest_bitnet``)
install :func:`cli_handler`.  What the user must fix in their own code or
configuration is a warning instead (``warnings``): OptionalSymbolMissing,
and an invalid BITNET_CPP_LOG_LEVEL.
"""

from __future__ import annotations

import logging
import sys
import warnings

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


class LogLevelWarning(UserWarning):
    """BITNET_CPP_LOG_LEVEL names no log level (it is ignored: the level is warn)."""


def install() -> None:
    # The native report of a bad BITNET_CPP_LOG_LEVEL is taken before the
    # sink is set (else it would arrive as a log line a script never sees):
    # a configuration the user must fix is a warning.
    buf = ffi.new("char[]", 512)
    if lib.bitnet_bridge_take_log_config_error(buf, len(buf)) > 0:
        warnings.warn(LogLevelWarning(ffi.string(buf).decode("utf-8", "replace")), stacklevel=2)
    lib.bitnet_bridge_set_log_sink(lib._bitnet_log_sink)


def cli_handler(level: int = logging.WARNING) -> logging.Handler:
    """For command-line tools only: native warnings (and the package's) on stderr.

    A library never installs handlers of its own; a CLI is an application.
    Native lines are already formatted, so the handler prints the message.
    Idempotent: a second call returns the handler the first installed.
    """
    root = logging.getLogger("pytest_bitnet")
    for h in root.handlers:
        if getattr(h, "_bitnet_cli", False):
            return h
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    handler._bitnet_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if root.getEffectiveLevel() > level:
        root.setLevel(level)
    return handler


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
