"""The native layers do not circle: every ``#include "..."`` under native/ points down.

A file's layer is its directory under native/.  The order (DESIGN.md,
"Layers": data flows down, errors flow up) is

    include  <  common  <  fault  <  reference  <  check  <  bridge
                                       llama (a library of its own)

and ALLOWED below writes down, per layer, which layers its files may
include.  The one exception crossing it: code anywhere may place fault
points with the BN_FAULT* macros, so bn_fault.h may be included from the
layers below fault (placing a point is not wiring the engine: that is
native/fault/lend.c, called from the bridge).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[2] / "native"

ALLOWED: dict[str, set[str]] = {
    # the ABI headers and the .def tables: self-contained, what third parties compile against
    "include": {"include"},
    # allocator, errors, logging, deadlines, CPU detection: the base every layer stands on; it reads an
    # attached host table (an include-level struct) but wires nothing
    "common": {"include", "common"},
    # the point registry and engine: uses errors and deadlines from common
    "fault": {"include", "common", "fault"},
    # the embedded engine: knows nothing of the bridge that routes to it
    "reference": {"include", "common", "reference"},
    # what a file must satisfy before llama.cpp sees it: rules over the strict GGUF reader, independent of
    # the bridge's handles and of the adapter, so anything that hands files to llama.cpp can use it
    "check": {"include", "common", "reference", "check"},
    # routing, handles, sockets, loader, host: serves calls with the reference engine as a backend and
    # lends the fault engine and the llama check to the libraries it loads
    "bridge": {"include", "common", "fault", "reference", "check", "bridge"},
    # the llama.cpp adapter: a separate shared library built against the ABI headers alone
    "llama": {"include"},
    # the interposing libllama: a separate shared library over the ABI headers; it places no point of
    # points.def but reads the layout fault_eval hands back from bn_fault.h
    "interpose": {"include", "interpose"},
}

# Headers any layer may include whatever ALLOWED says: placing points (see the docstring).
POINT_HEADERS = {"bn_fault.h"}

# Headers private to their own directory.
PRIVATE = {"fault_internal.h": "fault"}

# Quoted includes that are not ours: the header of the library the adapter links.
EXTERNAL = {("llama", "llama.h"), ("llama", "ggml-backend.h"), ("interpose", "llama.h")}

INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"]+)[>"]', re.M)


def _sources() -> list[Path]:
    return sorted(p for p in NATIVE.rglob("*") if p.suffix in {".c", ".h", ".def"})


def _headers() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in _sources():
        if p.suffix != ".c":
            assert p.name not in found, f"two native headers named {p.name}: {found[p.name]} and {p}"
            found[p.name] = p
    return found


def _layer(path: Path) -> str:
    return path.relative_to(NATIVE).parts[0]


def _includes() -> list[tuple[Path, str, str]]:
    return [(p, m[1], m[2]) for p in _sources() for m in INCLUDE.finditer(p.read_text())]


def test_every_native_directory_is_a_known_layer() -> None:
    unknown = {_layer(p) for p in _sources()} - set(ALLOWED)
    assert not unknown, f"native directories without a layer: {sorted(unknown)}; add them to ALLOWED with a reason"


def test_includes_point_down() -> None:
    headers = _headers()
    wrong = []
    for src, bracket, name in _includes():
        layer = _layer(src)
        target = headers.get(Path(name).name)
        if bracket == "<":
            assert target is None, f"{src.relative_to(NATIVE)} includes our {name} as <{name}>: use quotes"
            continue
        if target is None:
            assert (layer, name) in EXTERNAL, f"{src.relative_to(NATIVE)} includes {name!r}, which is not under native/"
            continue
        to = _layer(target)
        if name in PRIVATE and PRIVATE[name] != layer:
            wrong.append(f"{src.relative_to(NATIVE)} -> {name} (private to native/{PRIVATE[name]})")
        elif to not in ALLOWED[layer] and name not in POINT_HEADERS:
            wrong.append(f"{src.relative_to(NATIVE)} ({layer}) -> {target.relative_to(NATIVE)} ({to})")
    assert not wrong, "includes pointing up or across the layers:\n  " + "\n  ".join(wrong)


def test_the_check_sees_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The test above must fail for common including the bridge: build a tiny tree that does.
    for d in ("include", "common", "bridge"):
        (tmp_path / d).mkdir()
    (tmp_path / "bridge" / "host.h").write_text("/* bridge */\n")
    (tmp_path / "common" / "bn_x.c").write_text('#include "host.h"\n')
    monkeypatch.setattr(sys.modules[__name__], "NATIVE", tmp_path)
    with pytest.raises(AssertionError, match=r"common/bn_x.c \(common\) -> bridge/host.h \(bridge\)"):
        test_includes_point_down()
