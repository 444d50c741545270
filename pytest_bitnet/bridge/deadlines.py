"""Whether a session's calls can be bounded in process, and who is told when not.

A timeout stops a native call only where the call looks at the caller's
deadline.  The embedded engines do, at every step point; so does a library
the bridge loaded that took the host's table through ``bitnet_host_attach``
(``bitnet_host.h``: the llama.cpp adapter, the bundled standalone library).
Any other library -- BitNet.cpp's own ``libbitnet.so``, a third-party build
-- runs each call to its own end, whatever the timeout says: a hang inside
it hangs the caller.  The native loader is the one that knows (it attached
the library, or could not): :func:`of_context` asks it, and
``BitnetSession.backend_info["deadlines"]`` and the diagnostics show its
answer as :data:`HONOURED` or ``"not honoured in process: <why>"``.

A harness that wants to say so (the pytest plugin's one-time warning)
subscribes with :func:`on_unbounded`; an in-process ``create()`` of such a
library calls every listener.  Importing this module and subscribing load
nothing native (a plugin subscribes at configure time).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Final

__all__ = ["HONOURED", "NOT_HONOURED", "Listener", "created", "of_context", "on_unbounded", "text"]

log = logging.getLogger("pytest_bitnet")

#: What backend_info["deadlines"] says when the caller's deadline reaches
#: inside every call (bitnet_bridge_describe's ``deadlines\thonoured`` too).
HONOURED: Final = "honoured"
#: The beginning of what it says otherwise; the native reason follows.
NOT_HONOURED: Final = "not honoured in process: "

#: listener(library, reason): library is the backend's name as
#: backend_info["create"] gives it ("dlopen:/x/libbitnet.so"), reason the
#: native clause saying why its calls cannot be bounded.
Listener = Callable[[str, str], None]

_listeners: tuple[Listener, ...] = ()  # replaced whole, never mutated: read without the lock
_lock = threading.Lock()


def text(reason: str) -> str:
    """What backend_info["deadlines"] says for a native reason ("" when honoured)."""
    return HONOURED if not reason else NOT_HONOURED + reason


def of_context(ctx: Any) -> str | None:
    """The native reason why ctx's calls cannot be bounded in process ("" when
    they can), or None for a stale handle."""
    from ._calls import copied_text
    from ._native import lib

    return copied_text(lib.bitnet_bridge_deadlines, ctx)


def on_unbounded(listener: Listener) -> Callable[[], None]:
    """Calls listener(library, reason) for every in-process session created
    from now on whose library cannot honour deadlines; returns the unsubscribe."""
    global _listeners
    with _lock:
        _listeners = (*_listeners, listener)

    def unsubscribe() -> None:
        global _listeners
        with _lock:
            _listeners = tuple(x for x in _listeners if x is not listener)

    return unsubscribe


def created(ctx: Any, library: str) -> str:
    """For BitnetSession.create, once its in-process context exists: the text
    of backend_info["deadlines"], after telling the listeners when it is not
    honoured.  A listener that raises is logged, never raised: the session
    exists already and create() must hand it out, or it would leak."""
    reason = of_context(ctx) or ""
    if reason:
        for listener in _listeners:
            try:
                listener(library, reason)
            except Exception:
                log.exception("deadlines listener %r failed for %s", listener, library)
    return text(reason)
