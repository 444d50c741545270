"""Detokenize (issue 20 item 19): the reference engine's SPM detokenizer
(native/reference/tokenizer.c, bn_detokenize) through Socket 2's
bitnet_cpp_detokenize_with_context -- round trips against tokenize, byte
tokens, the space prefix, special tokens rendered or skipped -- and exact
equality with llama.cpp's llama_detokenize on the corpus when
llama-cpp-python is installed."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable, Iterator

import gguf
import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors

from .test_tokenizer import CORPUS


@pytest.fixture(scope="module")
def session(tiny_model: Path) -> Iterator[bn.BitnetSession]:
    with bn.BitnetSession.create(tiny_model, n_ctx=64) as s:
        yield s


@pytest.fixture(scope="module")
def pieces(tiny_model: Path) -> list[str]:
    r = gguf.GGUFReader(str(tiny_model))
    return list(r.get_field("tokenizer.ggml.tokens").contents())


@pytest.mark.parametrize("text", CORPUS)
def test_round_trip_without_bos(session: bn.BitnetSession, text: str) -> None:
    # the space prefix the tokenizer adds is taken off the first token
    assert session.detokenize(session.tokenize(text, add_bos=False)) == text


@pytest.mark.parametrize("text", [t for t in CORPUS if t and "<" not in t])
def test_round_trip_with_special_tokens_rendered(session: bn.BitnetSession, text: str) -> None:
    # (text after a special token gets its own space prefix: no round trip
    # there, in llama.cpp either -- test_identical_to_llama_cpp covers it)
    ids = session.tokenize(text, add_bos=False, parse_special=True)
    assert session.detokenize(ids, unparse_special=True) == text


def test_control_tokens_give_nothing_unless_rendered(session: bn.BitnetSession, pieces: list[str]) -> None:
    user = pieces.index("<|user|>")
    ids = session.tokenize("<|user|>hi", add_bos=False, parse_special=True)
    assert ids[0] == user
    # the tokenizer put a space prefix after the special token
    assert session.detokenize(ids, unparse_special=True) == "<|user|> hi"
    assert session.detokenize(ids) == " hi"


def test_bos_and_remove_special(session: bn.BitnetSession) -> None:
    ids = session.tokenize("hello world", add_bos=True)
    assert ids[0] == 1
    assert session.detokenize(ids, unparse_special=True) == "<s> hello world"
    # llama_detokenize keeps the space prefix when it removes a leading BOS
    assert session.detokenize(ids, remove_special=True) == " hello world"
    assert session.detokenize([]) == ""


def test_byte_tokens_give_their_bytes(session: bn.BitnetSession, pieces: list[str]) -> None:
    ids = session.tokenize("🤖 robot", add_bos=False).tolist()
    assert any(pieces[i].startswith("<0x") for i in ids)
    assert session.detokenize_bytes(ids) == "🤖 robot".encode()
    # a sequence cut inside the character: bytes stay exact, str replaces
    first_byte = [i for i in ids if pieces[i] == "<0xF0>"]
    assert session.detokenize_bytes(first_byte) == b"\xf0"
    assert session.detokenize(first_byte) == "\ufffd"


@pytest.mark.parametrize("bad, pos", [([5, -1], 1), ([7, 8, 512], 2)])
def test_an_id_outside_the_vocabulary_is_refused(session: bn.BitnetSession, bad: list[int], pos: int) -> None:
    with pytest.raises(errors.InferenceError) as ei:
        session.detokenize(bad)
    msg = str(ei.value)
    assert f"invalid token id {bad[pos]} at position {pos}: ids must be in [0, 512)" in msg
    assert session.detokenize([5]) == session.detokenize([5])  # the session still works


def test_per_call_equals_session(tiny_model: Path, session: bn.BitnetSession) -> None:
    ids = session.tokenize("per call", add_bos=True)
    before = bn.live_counters()
    assert bn.detokenize(tiny_model, ids, remove_special=True) == session.detokenize(ids, remove_special=True)
    after = bn.live_counters()
    assert (after["contexts"], after["bytes"]) == (before["contexts"], before["bytes"])


def test_backend_info_names_the_tier(session: bn.BitnetSession) -> None:
    session.detokenize([5, 6])
    assert session.backend_info["detokenize"] == "reference"


# ---- equality with llama.cpp ---------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_detokenize(make_model: Callable[..., Path]) -> Callable[[Path, list[int], bool, bool], bytes]:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp comparison needs llama-cpp-python: pip install -e '.[llama]'")
    cache: dict[Path, object] = {}

    def detok(path: Path, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        if path not in cache:
            cache[path] = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(cache[path].model)  # type: ignore[attr-defined]
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, len(buf), remove_special, unparse_special)
        assert 0 <= n <= len(buf)
        return buf.raw[:n]

    return detok


@pytest.mark.parametrize("n_vocab", [512, 4000])
def test_identical_to_llama_cpp(make_model: Callable[..., Path], llama_detokenize: Callable[..., bytes], n_vocab: int) -> None:
    path = make_model(arch="bitnet", seed=0, n_vocab=n_vocab)
    with bn.BitnetSession.create(path, n_ctx=16) as s:
        for text in (*CORPUS, "🤖 robot", "  two leading spaces", "trailing  "):
            for add_bos in (True, False):
                for parse in (True, False):
                    ids = s.tokenize(text, add_bos=add_bos, parse_special=parse).tolist()
                    for remove in (True, False):
                        for unparse in (True, False):
                            ours = s.detokenize_bytes(ids, remove_special=remove, unparse_special=unparse)
                            assert ours == llama_detokenize(path, ids, remove, unparse), (text, add_bos, parse, remove, unparse)
        # every single token, alone: each piece type (normal, byte, control, user-defined, unknown)
        for i in range(n_vocab):
            for unparse in (True, False):
                assert s.detokenize_bytes([i], unparse_special=unparse) == llama_detokenize(path, [i], False, unparse), i


# ---- the C ABI's argument checks ----------------------------------------------------------


@pytest.fixture
def raw_ctx(tiny_model: Path) -> Iterator[object]:
    from pytest_bitnet.bridge.abi import ffi, lib

    out = ffi.new("bitnet_context_t **")
    e = ffi.new("char[]", 512)
    assert lib.bitnet_cpp_init_context(out, str(tiny_model).encode(), 16, 0, e, len(e)) == 0, ffi.string(e)
    yield out[0]
    assert lib.bitnet_cpp_free_context(out[0]) == 0


def test_null_tokens_with_a_count_are_refused(raw_ctx: object) -> None:
    from pytest_bitnet.bridge.abi import ffi, lib

    e, n = ffi.new("char[]", 512), ffi.new("int32_t *", -7)
    rc = lib.bitnet_cpp_detokenize_with_context(raw_ctx, ffi.NULL, 3, 0, 0, ffi.NULL, 0, n, e, len(e))
    assert rc == lib.BITNET_E_INVALID_ARG
    assert ffi.string(e).decode() == "tokens is NULL"
    assert n[0] == -7  # nothing reported for a call that did not run
    # no tokens and no pointer is an empty text, not an error
    assert lib.bitnet_cpp_detokenize_with_context(raw_ctx, ffi.NULL, 0, 0, 0, ffi.NULL, 0, n, e, len(e)) == 0
    assert n[0] == 0


def test_capacity_below_the_text_writes_nothing(raw_ctx: object, session: bn.BitnetSession) -> None:
    from pytest_bitnet.bridge.abi import ffi, lib

    ids = session.tokenize("hello world", add_bos=False).tolist()
    tokens = ffi.new("int32_t[]", ids)
    e, n = ffi.new("char[]", 512), ffi.new("int32_t *")
    assert lib.bitnet_cpp_detokenize_with_context(raw_ctx, tokens, len(ids), 0, 0, ffi.NULL, 0, n, e, len(e)) == 0
    need = n[0]
    assert need == len("hello world")
    buf = ffi.new("char[]", b"\xaa" * need)
    rc = lib.bitnet_cpp_detokenize_with_context(raw_ctx, tokens, len(ids), 0, 0, buf, need - 1, n, e, len(e))
    assert rc == lib.BITNET_E_INVALID_ARG
    assert ffi.string(e).decode().startswith(
        f"buffer too small (need {need}, got {need - 1}): call first with out_text=NULL to query the size")
    assert n[0] == need  # the size it needs, so the caller can retry
    assert ffi.buffer(buf, need)[:] == b"\xaa" * need  # not a byte written
    assert lib.bitnet_cpp_detokenize_with_context(raw_ctx, tokens, len(ids), 0, 0, buf, need, n, e, len(e)) == 0
    assert ffi.buffer(buf, need)[:] == b"hello world"
