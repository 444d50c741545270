"""What the bridge would do and why: environment, mode, library discovery,
symbols and the tier serving each, build options, capabilities, versions.

    bn.diagnostics(backend="dlopen")             # a dict
    python -m pytest_bitnet diagnostics [--backend dlopen] [--json]

The command exits non-zero when a required part is missing (no library, a
required symbol absent, stub mode).
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from . import deadlines, errors, native_log, settings
from ._native import Options, bundled_library, ffi, lib
from .capabilities import capabilities

__all__ = ["diagnostics", "format_text"]


def _describe(backend: str | None, library_path: str | None) -> str:
    opts = Options(backend, library_path)
    # Discovery runs again on every call and may word an attempt differently
    # the second time ("already loaded"), so size generously and re-check.
    size = lib.bitnet_bridge_describe(opts.cdata, ffi.NULL, 0) + 1024
    while True:
        buf = ffi.new("char[]", size)
        n = lib.bitnet_bridge_describe(opts.cdata, buf, size)
        if n < size:
            return ffi.string(buf).decode("utf-8", "replace")
        size = n + 1024


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def diagnostics(backend: str | None = None, library_path: str | None = None) -> dict[str, Any]:
    """A JSON-serialisable report; ``report["ok"]`` is False when a required part is missing.

    ``report["deadlines"]``: whether a timeout can stop a call into the
    library in process, as a session's ``backend_info["deadlines"]`` says it
    (absent when no library could be loaded).
    """
    report: dict[str, Any] = {
        "env": settings.environment(),
        "tried": [],
        "symbols": [],
        "errors": [],
    }
    for line in _describe(backend, library_path).splitlines():
        kind, _, rest = line.partition("\t")
        fields = rest.split("\t")
        if kind == "tried":
            report["tried"].append({"path": fields[0], "result": fields[1]})
        elif kind == "symbol":
            name, need, status, served = fields
            report["symbols"].append({"name": name, "required": need == "required", "status": status, "served_by": served})
        elif kind == "abi":
            report["abi"] = {"found": int(fields[0]), "expected": int(fields[1])}
        elif kind == "error":
            report["errors"].append(rest)
        elif kind in ("mode", "fallback", "library", "version"):
            report[kind] = rest
        elif kind == "deadlines":
            # as backend_info["deadlines"] says it for a session of this library
            report["deadlines"] = deadlines.text(fields[1] if fields[0] != deadlines.HONOURED else "")
        elif kind == "force_fallback":
            report["force_fallback"] = rest == "1"
    # where a session that names no isolation runs (settings says: configure(), BITNET_ISOLATION)
    try:
        report["isolation"] = settings.default_isolation()
    except errors.InvalidArgument as exc:
        report["isolation"] = None
        report["errors"].append(str(exc))
    report["build"] = {
        "kernels": ffi.string(lib.bn_kernels_impl()).decode(),
        "bundled_library": str(bundled_library()) if bundled_library() else None,
        "abi_version": int(lib.BITNET_ABI_VERSION),
        "native_log_level": native_log.native_level(),
    }
    # the capabilities of the library in use (the one the options select),
    # not of the bridge; a library without Socket 6 reports none
    try:
        report["capabilities"] = capabilities(backend, library_path).as_dict()
    except errors.BitnetError as exc:
        report["capabilities"] = None
        report["capabilities_error"] = str(exc)
    report["versions"] = {
        "pytest-bitnet": _version("pytest-bitnet"),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "gguf": _version("gguf"),
        "cffi": _version("cffi"),
        "llama-cpp-python": _version("llama-cpp-python"),
    }
    # a required symbol another socket stands in for (Socket 1 by a library's
    # Socket 4) is served: "library (Socket 4: ...)"
    missing_required = [
        s["name"] for s in report["symbols"]
        if s["required"] and s["status"] != "found" and not s["served_by"].startswith("library")
    ]
    report["ok"] = not report["errors"] and not missing_required
    return report


_ISOLATION_TEXT = {
    "process": "process (each session's library in a worker process: hard deadlines, crashes contained)",
    "none": "none (in this process; isolation='process' or BITNET_ISOLATION=process isolates sessions)",
}


def format_text(report: dict[str, Any]) -> str:
    """The report as the command prints it."""
    out = [f"mode            {report.get('mode', '?')}   (fallback tier: {report.get('fallback', '?')}, forced: {report.get('force_fallback', False)})"]
    out.append(f"library         {report.get('library', '-')}")
    if "abi" in report:
        out.append(f"abi             found {report['abi']['found']}, expected {report['abi']['expected']}")
    out.append(f"version         {report.get('version', '-')}")
    out.append(f"deadlines       {report.get('deadlines', 'unknown (no library loaded)')}")
    out.append("isolation       " + _ISOLATION_TEXT.get(report.get("isolation"), "invalid (see ERROR below)"))
    if report["tried"]:
        out.append("library search:")
        out += [f"  {t['path']}: {t['result']}" for t in report["tried"]]
    if report["symbols"]:
        out.append("symbols:")
        out += [
            f"  {s['name']:36} {'required' if s['required'] else 'optional':8} {s['status']:8} -> {s['served_by']}"
            for s in report["symbols"]
        ]
    out.append("environment:")
    out += [f"  {k}={v}" for k, v in report["env"].items() if v is not None] or ["  (no BITNET_* variables set)"]
    out.append(f"build           {report['build']}")
    if report["capabilities"] is None:
        out.append(f"capabilities    unknown: {report.get('capabilities_error', '?')}")
    else:
        out.append(f"capabilities    {report['capabilities']}")
    out.append(f"versions        {report['versions']}")
    for e in report["errors"]:
        out.append(f"ERROR: {e}")
    out.append("status          " + ("ok" if report["ok"] else "MISSING REQUIRED PARTS"))
    return "\n".join(out)
