"""The llama.cpp adapter's own C ABI (native/llama/adapter.c), below the bridge.

The bridge only ever hands the adapter a host table it built and a counters
struct it owns; these are the refusals for what a caller of the C ABI (or a
bridge of another release) can hand it instead.  The adapters are real: the
one the package built for llama-cpp-python's libllama, and one compiled here
against another host table ABI, loaded by the bridge in dlopen mode like any
other socket library.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_bitnet as bn
from pytest_bitnet.bridge import llama
from pytest_bitnet.bridge._native import lib

from ..native_builds import SANITIZED, build_fail_calloc

LLAMA = llama.configured()
pytestmark = pytest.mark.skipif(not LLAMA.available, reason=f"llama.cpp backend unavailable: {LLAMA.reason}")


class _HostHead(ctypes.Structure):
    # the first two fields of bitnet_host_t (bitnet_host.h): all the
    # adapter reads before it refuses a table
    _fields_ = [("size", ctypes.c_int32), ("abi", ctypes.c_int32)]


def test_attach_refuses_a_table_it_cannot_read() -> None:
    adapter = ctypes.CDLL(str(LLAMA.adapter))  # the bridge's own copy when it has loaded it: nothing kept
    attach = adapter.bitnet_host_attach
    attach.argtypes = [ctypes.c_void_p]
    mismatch = int(lib.BITNET_E_ABI_MISMATCH)
    last_error = adapter.bitnet_cpp_get_last_error
    last_error.argtypes = [ctypes.c_char_p, ctypes.c_int32]
    buf = ctypes.create_string_buffer(512)

    def said() -> str:
        last_error(buf, len(buf))
        return buf.value.decode()

    assert attach(None) == mismatch
    assert said() == "bitnet_host_attach: the host table is NULL"
    # another ABI, and this ABI with a table shorter than its last_error field
    for head in (_HostHead(size=4096, abi=999), _HostHead(size=ctypes.sizeof(_HostHead), abi=1)):
        assert attach(ctypes.addressof(head)) == mismatch
        assert said().startswith(f"host table ABI {head.abi} ({head.size} bytes) is not the 1 (at least ")


def test_counters_need_an_output(tiny_model: Path) -> None:
    adapter = ctypes.CDLL(str(LLAMA.adapter))
    get = adapter.bitnet_cpp_get_counters
    get.argtypes = [ctypes.c_void_p]
    assert get(None) == int(lib.BITNET_E_INVALID_ARG)
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:  # still counts what it holds
        assert len(s.tokenize("hello")) > 1


@pytest.fixture(scope="module")
def other_abi_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adapter compiled as the package compiles it, against host table ABI 2."""
    st = llama.status()
    assert st.adapter is not None and st.libllama is not None, st.reason
    include = llama.find_include(st.libllama.parent)
    assert include is not None
    target = tmp_path_factory.mktemp("adapter_abi2") / "libllama-adapter.so"
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(llama, "CFLAGS", [*llama.CFLAGS, "-DBITNET_HOST_ABI=2"])
        llama._build(target, st.libllama, include)
    finally:
        mp.undo()
    return target


_OTHER_ABI_CHILD = """
import json, sys, warnings
import pytest_bitnet as bn
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
warnings.simplefilter("ignore")  # the unbounded-calls warning is what refusing the table means
model, library = sys.argv[1], sys.argv[2]
live = lambda: {k: bn.live_counters()[k] for k in LEAK_COUNTERS}
before = live()
with bn.BitnetSession.create(model, backend="dlopen", library_path=library) as s:
    out = {"deadlines": s.backend_info["deadlines"], "tokens": [int(t) for t in s.tokenize("hello world")]}
with bn.BitnetSession.create(model, backend="llama") as ref:
    out["want"] = [int(t) for t in ref.tokenize("hello world")]
out["leaked"] = {k: v - before[k] for k, v in live().items() if v != before[k]}
print(json.dumps(out))
"""


def test_an_adapter_of_another_host_abi_refuses_the_bridges_table_and_still_serves(
        tiny_model: Path, other_abi_adapter: Path) -> None:
    # In a child: both adapters link the one libllama of the process, whose log
    # callback is global; the refused adapter's (with no host to log to) would
    # stay installed for every later llama session of this process.
    proc = subprocess.run([sys.executable, "-c", _OTHER_ABI_CHILD, str(tiny_model), str(other_abi_adapter)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    said = out["deadlines"]
    assert said.startswith(f"not honoured in process: {other_abi_adapter} refused the host table"), said
    assert "BITNET_E_ABI_MISMATCH: host table ABI 1 (" in said and "is not the 2 (at least" in said  # the adapter's reason
    assert "rebuild it with the bridge's bitnet_host.h" in said
    assert out["tokens"] == out["want"] and len(out["tokens"]) > 1  # it still serves
    assert out["leaked"] == {}


# ---- out of memory for the adapter's own context ------------------------------------------------

_OOM_CHILD = """
import ctypes, json, sys
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge._native import Options, ffi, lib, new_err_buffer
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
model = sys.argv[1]
bn.BitnetSession.create(model, backend="llama").close()  # adapter and libllama loaded: nothing first-time below
preloaded = ctypes.CDLL(None)
live = lambda: {k: bn.live_counters()[k] for k in LEAK_COUNTERS}
before = live()
opts, out, err = Options("llama"), ffi.new("bitnet_context_t **"), new_err_buffer()
raw = model.encode()
preloaded.fail_calloc_next(1)  # the bridge allocates with aligned_alloc: the thread's next calloc is the adapter's
rc = lib.bitnet_bridge_init_context(out, raw, 64, 0, opts.cdata, err, len(err))
consumed = not preloaded.fail_calloc_pending()
preloaded.fail_calloc_next(0)
res = {"class": errors.error_for_code(rc).__name__, "consumed": consumed, "null": out[0] == ffi.NULL,
       "message": ffi.string(err).decode(), "leaked": {k: v - before[k] for k, v in live().items() if v != before[k]}}
with bn.BitnetSession.create(model, backend="llama") as s:  # nothing was left half made
    res["after"] = len(s.tokenize("hello")) > 1
print(json.dumps(res))
"""


@pytest.mark.skipif(SANITIZED, reason="ASan's preloaded runtime owns calloc")
def test_out_of_memory_for_the_adapters_context_is_out_of_memory(tiny_model: Path, tmp_path: Path) -> None:
    shim = build_fail_calloc(tmp_path)
    env = {**os.environ, "LD_PRELOAD": " ".join(p for p in (os.environ.get("LD_PRELOAD"), str(shim)) if p)}
    proc = subprocess.run([sys.executable, "-c", _OOM_CHILD, str(tiny_model)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.splitlines()[-1])
    assert res["consumed"] and res["null"], res
    assert res["class"] == "OutOfMemory" and "out of memory for a llama.cpp context" in res["message"], res
    assert res["leaked"] == {} and res["after"]
