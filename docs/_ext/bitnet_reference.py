"""The generated reference pages: Markdown made from the code at build time.

A page holds ``{bitnet-generated} NAME`` blocks; bitnet_docs replaces each
with ``generate(NAME)`` before the page is parsed.  Nothing here is typed
twice: every list comes from the module that owns it.
"""

from __future__ import annotations

from typing import Any, Callable

GENERATORS: dict[str, Callable[..., str]] = {}


def generator(name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def register(fn: Callable[..., str]) -> Callable[..., str]:
        GENERATORS[name] = fn
        return fn

    return register


def generate(name: str, *, app: Any, docname: str) -> str:
    try:
        fn = GENERATORS[name]
    except KeyError:
        raise LookupError(f"no generator {name!r} (known: {', '.join(sorted(GENERATORS))})") from None
    return fn()
