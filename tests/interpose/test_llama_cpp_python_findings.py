"""Defects of llama-cpp-python (0.3.36) that the real libllama reaches without any fault.

Each is a finding of tests/interpose/FINDINGS.md; the interposer reproduces
the same code path on any model (test_llama_cpp_python_sweep.py), these show
that a plain model file reaches it too.  They assert the defect: when one
fails, llama-cpp-python has fixed it -- update FINDINGS.md.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_bitnet.testing.malformed import Gguf

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install -e '.[llama]'")

GGUF_STRING = 8  # GGUF value type of a string
META_BUFFER = 1024  # LlamaModel.metadata()'s first buffer
PIECE_BUFFER = 32  # LlamaModel.detokenize()'s and token_to_piece()'s buffer


def _llama(path: Path) -> Any:
    return llama_cpp.Llama(model_path=str(path), n_ctx=32, n_threads=1, verbose=False)


def _piece(llm: Any, token: int) -> bytes:
    """What llama.cpp itself says token's piece is (a buffer large enough)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    assert 0 <= n <= len(buf)
    return buf.raw[:n]


def test_f1_metadata_value_of_exactly_the_buffer_size_loses_its_last_byte(make_model: Callable[..., Path], tmp_path: Path) -> None:
    # llama_model_meta_val_str_by_index returns snprintf's count (the length
    # without the NUL); metadata() retries only when it is > the buffer size,
    # so a value of exactly 1024 bytes comes back as 1023, with no error.
    g = Gguf.read(make_model(arch="bitnet", seed=0))
    g.set("general.description", "d" * META_BUFFER, vtype=GGUF_STRING)
    g.set("general.name", "n" * (META_BUFFER + 1), vtype=GGUF_STRING)  # one more: the retry runs
    llm = _llama(g.write(tmp_path / "meta.gguf"))
    try:
        assert len(llm.metadata["general.name"]) == META_BUFFER + 1
        assert len(llm.metadata["general.description"]) == META_BUFFER - 1  # the defect
    finally:
        llm.close()


def _long_piece_model(make_model: Callable[..., Path], tmp_path: Path) -> tuple[Path, int]:
    g = Gguf.read(make_model(arch="bitnet", seed=0))
    tokens = g.kvs["tokenizer.ggml.tokens"].value
    assert isinstance(tokens, list)
    token = len(tokens) - 1
    tokens[token] = "\u2581" + "x" * 40  # a normal token whose piece is 41 bytes
    return g.write(tmp_path / "long-piece.gguf"), token


def test_f2_detokenize_drops_a_piece_longer_than_its_buffer(make_model: Callable[..., Path], tmp_path: Path) -> None:
    # llama_token_to_piece returns minus the size needed when the piece does
    # not fit; detokenize() checks only `n <= size` and slices buffer[:n]:
    # a negative n slices off everything, so the token vanishes from the text.
    path, token = _long_piece_model(make_model, tmp_path)
    llm = _llama(path)
    try:
        piece = _piece(llm, token)
        assert len(piece) > PIECE_BUFFER
        hello = llm.tokenize(b"hello", add_bos=False)
        assert llm.detokenize(hello + [token] + hello) == llm.detokenize(hello + hello)  # the defect
        assert piece not in llm.detokenize([token])
    finally:
        llm.close()


def test_f3_token_to_piece_returns_the_whole_buffer(make_model: Callable[..., Path]) -> None:
    # LlamaModel.token_to_piece ignores llama_token_to_piece's count and
    # returns bytes(buf): always 32 bytes, the piece padded with NULs.
    llm = _llama(make_model(arch="bitnet", seed=0))
    try:
        (token,) = llm.tokenize(b"is", add_bos=False)[-1:]
        piece = _piece(llm, token)
        got = llm._model.token_to_piece(token)
        assert got != piece and len(got) == PIECE_BUFFER  # the defect
        assert got == piece + b"\0" * (PIECE_BUFFER - len(piece))
    finally:
        llm.close()


def test_f10_an_unreadable_lora_file_crashes_the_first_completion(make_model: Callable[..., Path], tmp_path: Path) -> None:
    # llama_adapter_lora_init's NULL for a file that is not an adapter is
    # never seen (`is None` on a POINTER(c_void_p) result): instead of
    # "Failed to initialize LoRA adapter", Llama(...) succeeds and the first
    # completion segfaults.  In a child process: it is a crash.
    bogus = tmp_path / "not-an-adapter.gguf"
    bogus.write_bytes(b"not a gguf file")
    code = textwrap.dedent(f"""
        import llama_cpp
        llm = llama_cpp.Llama(model_path={str(make_model(arch="bitnet", seed=0))!r}, lora_path={str(bogus)!r},
                              n_ctx=32, n_threads=1, verbose=False)
        print("constructed", bool(llm._lora_adapter), llm._lora_adapter is None, flush=True)
        llm("hello", max_tokens=2)
        print("completed", flush=True)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "BITNET_INTERPOSE", "BITNET_INJECT")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.stdout.splitlines() == ["constructed False False"], (proc.stdout, proc.stderr[-2000:])
    crashed = {-signal.SIGSEGV, -signal.SIGABRT} if "libasan" in os.environ.get("LD_PRELOAD", "") else {-signal.SIGSEGV}
    assert proc.returncode in crashed, (proc.returncode, proc.stderr[-2000:])
