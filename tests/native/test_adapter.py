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


# ---- the adapter's own argument checks --------------------------------------------------------
# The bridge validates every argument before it calls the adapter, so these
# refusals are reached only by a caller of the adapter's C ABI itself (another
# binding, or a bridge of another release): called here directly, each with
# the one bad argument, the code and the message it answers with.

_I32P = ctypes.POINTER(ctypes.c_int32)


class _Adapter:
    def __init__(self, path: Path) -> None:
        self.dll = ctypes.CDLL(str(path))
        self.buf = ctypes.create_string_buffer(512)
        sigs = {
            "bitnet_cpp_init_context": [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32,
                                        ctypes.c_char_p, ctypes.c_int32],
            "bitnet_cpp_free_context": [ctypes.c_void_p],
            "bitnet_cpp_tokenize_with_context": [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                                 _I32P, ctypes.c_int32, _I32P, ctypes.c_char_p, ctypes.c_int32],
            "bitnet_cpp_detokenize_with_context": [ctypes.c_void_p, _I32P, ctypes.c_int32, ctypes.c_int,
                                                   ctypes.c_int, ctypes.c_char_p, ctypes.c_int32, _I32P,
                                                   ctypes.c_char_p, ctypes.c_int32],
            "bitnet_cpp_eval_with_context": [ctypes.c_void_p, _I32P, ctypes.c_int32, ctypes.c_int32,
                                             ctypes.POINTER(ctypes.c_float), ctypes.c_int32, _I32P, _I32P,
                                             ctypes.c_char_p, ctypes.c_int32],
            "bitnet_cpp_eval_gpu": [ctypes.c_void_p, _I32P, ctypes.c_int32, ctypes.POINTER(ctypes.c_float),
                                    ctypes.c_int32, _I32P, _I32P, ctypes.c_char_p, ctypes.c_int32],
            "bitnet_cpp_get_n_past": [ctypes.c_void_p, ctypes.c_int32, _I32P],
            "bitnet_cpp_reset_context": [ctypes.c_void_p, ctypes.c_int32],
            "bitnet_cpp_get_model_info": [ctypes.c_void_p, _I32P, _I32P],
            "bitnet_cpp_get_capabilities": [ctypes.c_void_p],
            "crossval_bitnet_tokenize": [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, _I32P,
                                         ctypes.c_int32, _I32P, ctypes.c_char_p, ctypes.c_int32],
            "crossval_bitnet_eval_with_tokens": [ctypes.c_char_p, _I32P, ctypes.c_int32, ctypes.c_int32,
                                                 ctypes.POINTER(ctypes.c_float), ctypes.c_int32, _I32P, _I32P,
                                                 ctypes.c_char_p, ctypes.c_int32],
            "bitnet_cpp_get_last_error": [ctypes.c_char_p, ctypes.c_int32],
            "bitnet_cpp_get_last_error_code": [],
        }
        for name, args in sigs.items():
            getattr(self.dll, name).argtypes = args

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.dll, name)

    def last(self) -> tuple[int, str]:
        self.dll.bitnet_cpp_get_last_error(self.buf, len(self.buf))
        return int(self.dll.bitnet_cpp_get_last_error_code()), self.buf.value.decode()


def _code(name: str) -> int:
    return int(getattr(lib, name))


def _refuses(a: _Adapter, rc: int, code: str, text: str, err: ctypes.Array[ctypes.c_char] | None = None) -> None:
    assert rc == _code(code), (rc, a.last())
    got_code, said = a.last()
    assert got_code == rc and text in said, said
    if err is not None:  # the entry's own err buffer says the same
        assert err.value.decode() == said


@pytest.fixture
def adapter(tiny_model: Path) -> _Adapter:
    with bn.BitnetSession.create(tiny_model, backend="llama"):  # the bridge has loaded and attached it
        pass
    return _Adapter(LLAMA.adapter)


@pytest.fixture
def adapter_ctx(adapter: _Adapter, tiny_model: Path):  # type: ignore[no-untyped-def]
    """A context of 4 positions per sequence, made directly by the adapter."""
    h = ctypes.c_void_p()
    err = ctypes.create_string_buffer(512)
    assert adapter.bitnet_cpp_init_context(ctypes.byref(h), str(tiny_model).encode(), 4, 0, err, len(err)) == 0, \
        err.value
    yield h
    assert adapter.bitnet_cpp_free_context(h) == 0


def test_init_context_refuses_its_arguments(adapter: _Adapter, tiny_model: Path, tmp_path: Path) -> None:
    err = ctypes.create_string_buffer(512)
    h = ctypes.c_void_p()
    model = str(tiny_model).encode()

    def init(path: bytes | None, n_ctx: int = 16, gpu: int = 0, out: object = None) -> int:
        err.value = b""
        return int(adapter.bitnet_cpp_init_context(ctypes.byref(h) if out is None else out, path, n_ctx, gpu,
                                                   err, len(err)))

    _refuses(adapter, init(model, out=ctypes.c_void_p()), "BITNET_E_INVALID_ARG", "out_ctx is NULL", err)
    _refuses(adapter, init(model, n_ctx=-1), "BITNET_E_INVALID_ARG", "n_ctx=-1 is negative", err)
    too_many = (2**31 - 1) // 8 + 1
    _refuses(adapter, init(model, n_ctx=too_many), "BITNET_E_INVALID_ARG",
             f"n_ctx={too_many} is more than the {too_many - 1} positions", err)
    _refuses(adapter, init(model, gpu=-1), "BITNET_E_INVALID_ARG", "n_gpu_layers=-1 is negative", err)
    _refuses(adapter, init(None), "BITNET_E_INVALID_ARG", "model_path is NULL", err)
    _refuses(adapter, init(b""), "BITNET_E_MODEL_NOT_FOUND", "model path is empty: pass the path", err)
    missing = tmp_path / "missing.gguf"
    _refuses(adapter, init(str(missing).encode()), "BITNET_E_MODEL_NOT_FOUND",
             f"'{missing}': model file not found (No such file or directory)", err)
    _refuses(adapter, init(str(tmp_path).encode()), "BITNET_E_MODEL_NOT_FOUND",
             f"'{tmp_path}': not a regular file", err)
    assert h.value is None  # nothing handed out for any of them


def test_session_calls_refuse_a_null_context(adapter: _Adapter) -> None:
    err = ctypes.create_string_buffer(512)
    n = ctypes.c_int32()
    calls = [
        lambda: adapter.bitnet_cpp_tokenize_with_context(None, b"x", 1, 0, None, 0, ctypes.byref(n), err, len(err)),
        lambda: adapter.bitnet_cpp_detokenize_with_context(None, None, 0, 0, 0, None, 0, ctypes.byref(n), err,
                                                           len(err)),
        lambda: adapter.bitnet_cpp_eval_with_context(None, None, 1, 0, None, 0, ctypes.byref(n), ctypes.byref(n),
                                                     err, len(err)),
        lambda: adapter.bitnet_cpp_eval_gpu(None, None, 1, None, 0, ctypes.byref(n), ctypes.byref(n), err, len(err)),
        lambda: adapter.bitnet_cpp_get_n_past(None, 0, ctypes.byref(n)),
        lambda: adapter.bitnet_cpp_reset_context(None, 0),
        lambda: adapter.bitnet_cpp_get_model_info(None, None, None),
    ]
    for call in calls:
        err.value = b""
        _refuses(adapter, call(), "BITNET_E_INVALID_HANDLE", "context is NULL")
    assert adapter.bitnet_cpp_get_capabilities(None) == _code("BITNET_E_INVALID_ARG")
    assert adapter.last() == (_code("BITNET_E_INVALID_ARG"), "out_caps is NULL")


def test_tokenize_refuses_its_arguments(adapter: _Adapter, adapter_ctx: ctypes.c_void_p, tiny_model: Path) -> None:
    err = ctypes.create_string_buffer(512)
    n = ctypes.c_int32(-7)
    toks = (ctypes.c_int32 * 64)(*([-5] * 64))

    def tok(prompt: bytes | None, out: object, cap: int, out_len: object) -> int:
        err.value = b""
        return int(adapter.bitnet_cpp_tokenize_with_context(adapter_ctx, prompt, 1, 0, out, cap, out_len, err,
                                                            len(err)))

    _refuses(adapter, tok(None, None, 0, ctypes.byref(n)), "BITNET_E_INVALID_ARG", "prompt is NULL", err)
    _refuses(adapter, tok(b"hello", None, 0, None), "BITNET_E_INVALID_ARG", "out_len is NULL", err)
    _refuses(adapter, tok(b"hello", toks, -1, ctypes.byref(n)), "BITNET_E_INVALID_ARG", "out_capacity=-1 is negative",
             err)
    assert n.value == -7  # nothing written for a refusal
    assert tok(b"hello world", None, 0, ctypes.byref(n)) == 0 and n.value > 1
    need = n.value
    _refuses(adapter, tok(b"hello world", toks, need - 1, ctypes.byref(n)), "BITNET_E_INVALID_ARG",
             f"buffer too small (need {need}, got {need - 1})", err)
    assert list(toks) == [-5] * 64  # nothing written into the short buffer
    # the per-call form refuses its model path the way a context does
    _refuses(adapter, adapter.crossval_bitnet_tokenize(None, b"x", 1, 0, None, 0, ctypes.byref(n), err, len(err)),
             "BITNET_E_INVALID_ARG", "model_path is NULL", err)


def test_detokenize_refuses_its_arguments(adapter: _Adapter, adapter_ctx: ctypes.c_void_p) -> None:
    err = ctypes.create_string_buffer(512)
    n = ctypes.c_int32(-7)
    ids = (ctypes.c_int32 * 3)()  # the tokens of "hi" (a byte-level vocabulary: 2), which have text
    assert adapter.bitnet_cpp_tokenize_with_context(adapter_ctx, b"hi", 0, 0, ids, 3,
                                                    ctypes.byref(n), None, 0) == 0, adapter.last()
    count, n.value = n.value, -7
    text = ctypes.create_string_buffer(b"\x7f" * 64, 64)

    def detok(tokens: object, count: int, out: object, cap: int, out_len: object) -> int:
        err.value = b""
        return int(adapter.bitnet_cpp_detokenize_with_context(adapter_ctx, tokens, count, 0, 0, out, cap, out_len,
                                                              err, len(err)))

    _refuses(adapter, detok(ids, count, None, 0, None), "BITNET_E_INVALID_ARG", "out_len is NULL", err)
    _refuses(adapter, detok(ids, -1, None, 0, ctypes.byref(n)), "BITNET_E_INVALID_ARG", "n_tokens=-1 is negative", err)
    _refuses(adapter, detok(None, 3, None, 0, ctypes.byref(n)), "BITNET_E_INVALID_ARG", "tokens is NULL", err)
    _refuses(adapter, detok(ids, count, text, -1, ctypes.byref(n)), "BITNET_E_INVALID_ARG", "out_capacity=-1 is negative",
             err)
    bad = (ctypes.c_int32 * 2)(1, 1 << 30)
    _refuses(adapter, detok(bad, 2, None, 0, ctypes.byref(n)), "BITNET_E_INFERENCE",
             f"invalid token id {1 << 30} at position 1", err)
    assert n.value == -7
    assert detok(ids, count, None, 0, ctypes.byref(n)) == 0 and n.value > 0
    need = n.value
    _refuses(adapter, detok(ids, count, text, need - 1, ctypes.byref(n)), "BITNET_E_INVALID_ARG",
             f"buffer too small (need {need}, got {need - 1})", err)
    assert text.raw == b"\x7f" * 64


def test_evaluate_refuses_its_arguments(adapter: _Adapter, adapter_ctx: ctypes.c_void_p, tiny_model: Path) -> None:
    err = ctypes.create_string_buffer(512)
    rows, cols = ctypes.c_int32(-7), ctypes.c_int32(-7)
    ids = (ctypes.c_int32 * 5)(1, 2, 3, 4, 5)
    logits = (ctypes.c_float * 8)(*([9.0] * 8))

    def ev(tokens: object, count: int, seq: int = 0, out: object = None, cap: int = 0, r: object = True) -> int:
        err.value = b""
        rp = ctypes.byref(rows) if r else None
        return int(adapter.bitnet_cpp_eval_with_context(adapter_ctx, tokens, count, seq, out, cap, rp,
                                                        ctypes.byref(cols), err, len(err)))

    _refuses(adapter, ev(ids, 1, r=False), "BITNET_E_INVALID_ARG", "out_rows/out_cols is NULL", err)
    for seq in (-1, 8):
        _refuses(adapter, ev(ids, 1, seq=seq), "BITNET_E_INVALID_ARG", f"seq_id {seq} is out of range: use 0..7", err)
    _refuses(adapter, ev(ids, 0), "BITNET_E_INFERENCE", "empty token list", err)
    _refuses(adapter, ev(None, 1), "BITNET_E_INVALID_ARG", "tokens is NULL", err)
    bad = (ctypes.c_int32 * 1)(-3)
    _refuses(adapter, ev(bad, 1), "BITNET_E_INFERENCE", "invalid token id -3 at position 0", err)
    # the context was made with 4 positions per sequence
    _refuses(adapter, ev(ids, 5), "BITNET_E_CONTEXT_OVERFLOW",
             "0 tokens already in sequence 0 plus 5 new ones = 5 exceeds n_ctx=4", err)
    _refuses(adapter, ev(ids, 1, out=logits, cap=8), "BITNET_E_INVALID_ARG", "buffer too small (need ", err)
    assert (rows.value, cols.value) != (-7, -7) and list(logits) == [9.0] * 8  # sized, nothing written
    _refuses(adapter, adapter.bitnet_cpp_eval_gpu(adapter_ctx, ids, 1, None, 0, ctypes.byref(rows),
                                                  ctypes.byref(cols), err, len(err)),
             "BITNET_E_UNSUPPORTED", "GPU evaluation", err)
    _refuses(adapter, adapter.crossval_bitnet_eval_with_tokens(str(tiny_model).encode(), ids, 1, -1, None, 0,
                                                               ctypes.byref(rows), ctypes.byref(cols), err, len(err)),
             "BITNET_E_INVALID_ARG", "n_ctx=-1 is negative", err)


def test_context_helpers_refuse_their_arguments(adapter: _Adapter, adapter_ctx: ctypes.c_void_p) -> None:
    n = ctypes.c_int32(-7)
    _refuses(adapter, adapter.bitnet_cpp_get_n_past(adapter_ctx, 0, None), "BITNET_E_INVALID_ARG",
             "out_n_past is NULL")
    for seq in (-1, 8):
        _refuses(adapter, adapter.bitnet_cpp_get_n_past(adapter_ctx, seq, ctypes.byref(n)), "BITNET_E_INVALID_ARG",
                 f"seq_id {seq} is out of range: use 0..7")
    _refuses(adapter, adapter.bitnet_cpp_reset_context(adapter_ctx, 8), "BITNET_E_INVALID_ARG",
             "seq_id 8 is out of range: use 0..7, or -1 for all")
    assert n.value == -7
