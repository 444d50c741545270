"""The SPM tokenizer: round trips, special tokens, byte fallback, and exact
agreement with llama.cpp's own tokenizer when llama-cpp-python is installed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import gguf
import pytest

import pytest_bitnet as bn
from pytest_bitnet.testing.crossval import DEFAULT_PROMPTS

# + a long run (merges over hundreds of symbols) and adjacent special tokens;
# both are out of crossval's logits corpus (README: cross-validation findings)
# Tokenized here, kept out of crossval's logits corpus until the engines agree
# on every row (the parity issue): against an AVX2-only build of libllama (an
# AMD EPYC without AVX-512) one row of each of the first two prompts is 0.33
# apart, and the adjacent special tokens of the last flip one row by 0.12.
# Token ids agree everywhere.
CORPUS = (*DEFAULT_PROMPTS, "<|user|>hi<|assistant|>there", "<s>literal bos text</s>", "x" * 300,
          "mixed <|assistant|><|user|> adjacent")


@pytest.fixture(scope="module")
def pieces(tiny_model: Path) -> list[str]:
    r = gguf.GGUFReader(str(tiny_model))
    return list(r.get_field("tokenizer.ggml.tokens").contents())


@pytest.fixture(scope="module")
def session(tiny_model: Path) -> Iterator[bn.BitnetSession]:
    with bn.BitnetSession.create(tiny_model, n_ctx=64) as s:
        yield s


def detokenize(pieces: list[str], ids: list[int]) -> str:
    out = bytearray()
    for i in ids:
        p = pieces[i]
        if len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
            out.append(int(p[3:5], 16))
        else:
            out += p.replace("\u2581", " ").encode()
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize("text", [t for t in CORPUS if t and "<" not in t])  # "" has no space prefix (test_bos_and_empty_input)
def test_round_trip(session: bn.BitnetSession, pieces: list[str], text: str) -> None:
    ids = session.tokenize(text, add_bos=False).tolist()
    assert detokenize(pieces, ids) == " " + text  # SPM adds one space prefix


def test_bos_and_empty_input(session: bn.BitnetSession) -> None:
    assert session.tokenize("", add_bos=True).tolist() == [1]
    assert session.tokenize("", add_bos=False).tolist() == []
    assert session.tokenize("hi", add_bos=True)[0] == 1
    assert session.tokenize("hi", add_bos=False)[0] != 1


def test_byte_fallback(session: bn.BitnetSession, pieces: list[str]) -> None:
    ids = session.tokenize("🤖", add_bos=False).tolist()
    names = [pieces[i] for i in ids]
    assert [n for n in names if n.startswith("<0x")] == ["<0xF0>", "<0x9F>", "<0xA4>", "<0x96>"]


def test_special_tokens_only_with_parse_special(session: bn.BitnetSession, pieces: list[str]) -> None:
    user = pieces.index("<|user|>")
    parsed = session.tokenize("<|user|>hi", add_bos=False, parse_special=True).tolist()
    assert parsed[0] == user
    literal = session.tokenize("<|user|>hi", add_bos=False, parse_special=False).tolist()
    assert user not in literal
    assert detokenize(pieces, literal) == " <|user|>hi"


def test_per_call_equals_session(tiny_model: Path, session: bn.BitnetSession) -> None:
    for text in CORPUS:
        for special in (False, True):
            assert bn.tokenize(tiny_model, text, parse_special=special).tolist() == session.tokenize(text, parse_special=special).tolist()


@pytest.fixture(scope="module")
def llama_tokenize(make_model: Callable[..., Path]) -> Callable[[Path, str, bool, bool], list[int]]:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp comparison needs llama-cpp-python: pip install -e '.[llama]'")
    cache: dict[Path, object] = {}

    def tok(path: Path, text: str, add_bos: bool, special: bool) -> list[int]:
        if path not in cache:
            cache[path] = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        return list(cache[path].tokenize(text.encode(), add_bos=add_bos, special=special))  # type: ignore[attr-defined]

    return tok


@pytest.mark.parametrize("n_vocab", [512, 4000])
def test_identical_to_llama_cpp(make_model: Callable[..., Path], llama_tokenize: Callable[..., list[int]], n_vocab: int) -> None:
    path = make_model(arch="bitnet", seed=0, n_vocab=n_vocab)
    with bn.BitnetSession.create(path, n_ctx=16) as s:
        for text in CORPUS:
            for add_bos in (True, False):
                for special in (True, False):
                    ours = s.tokenize(text, add_bos=add_bos, parse_special=special).tolist()
                    assert ours == llama_tokenize(path, text, add_bos, special), (text, add_bos, special)


# ---- deadlines inside the tokenizer ------------------------------------------------------------

# A timed-out call must return well within this of its deadline (generous for
# a loaded machine; before every loop polled, these inputs ran for seconds).
LATE = 2.0
HUGE = 20_000_000  # bytes: each input below takes about 1-2 s per pass with no deadline


@pytest.mark.parametrize(
    ("text", "parse_special"),
    [
        pytest.param("a" * HUGE, False, id="symbols-and-queue"),  # one symbol and one lookup per byte, few merges
        pytest.param(" " * HUGE, False, id="escaping"),  # every byte becomes U+2581 (3 bytes)
        pytest.param("\u20ac" * (HUGE // 3), False, id="byte-fallback"),  # no token: three <0xXX> per character
        pytest.param("<|user|>" * (HUGE // 8), True, id="special-token-split"),  # one special token per 8 bytes
    ],
)
def test_every_loop_honours_the_deadline(session: bn.BitnetSession, text: str, parse_special: bool) -> None:
    timeout = 0.2
    start = time.monotonic()
    with pytest.raises(bn.errors.OperationTimeout, match="tokenize timed out"):
        session.tokenize(text, parse_special=parse_special, timeout=timeout)
    assert time.monotonic() - start < timeout + LATE
    assert session.tokenize("still works", timeout=timeout).size > 1
