"""The SPM tokenizer: round trips, special tokens, byte fallback, and exact
agreement with llama.cpp's own tokenizer when llama-cpp-python is installed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import gguf
import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
from pytest_bitnet.testing.crossval import DEFAULT_PROMPTS
from pytest_bitnet.testing.malformed import Gguf

# + a long run (merges over hundreds of symbols) and adjacent special tokens;
# both are out of crossval's logits corpus (docs/explanation/numerics.md: cross-validation)
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


# ---- hostile vocabularies: a precise ModelLoadError, nothing leaked ---------------------------
#
# Each file is the tiny model with one tokenizer value made hostile by
# pytest_bitnet.testing.malformed.Gguf (the layout stays valid), so the
# vocabulary loader (bn_vocab_load) is the first to object.  Both loads are
# tried: a session loads the weights too, the per-call tokenize the
# vocabulary only.

I32, F32, BOOL, STR, ARR = 5, 6, 7, 8, 9
TOK = "tokenizer.ggml."


def _cut(key: str, n: int) -> Callable[[Gguf], Gguf]:
    def edit(g: Gguf) -> Gguf:
        return g.set(key, list(g.kvs[key].value)[:n])  # type: ignore[call-overload]

    return edit


def _vocab_of(n: int) -> Callable[[Gguf], Gguf]:
    """The first n tokens only (tables cut to match), and no id keys: the defaults apply."""

    def edit(g: Gguf) -> Gguf:
        for key in ("tokens", "scores", "token_type"):
            _cut(TOK + key, n)(g)
        for key in ("bos", "eos", "unknown"):
            g.drop(f"{TOK}{key}_token_id")
        return g

    return edit


HOSTILE_VOCABULARIES = {
    "model-not-spm": (lambda g: g.set(TOK + "model", "gpt2"),
                      "tokenizer.ggml.model is 'gpt2'; only the SentencePiece tokenizer \"llama\" is supported; "
                      "convert the model with a llama (SPM) vocabulary"),
    "no-tokens": (lambda g: g.drop(TOK + "tokens"),
                  "tokenizer.ggml.tokens is missing: the model has no vocabulary; convert it with its tokenizer"),
    "tokens-not-strings": (lambda g: g.set(TOK + "tokens", [1, 2, 3], ARR, I32),
                           "tokenizer.ggml.tokens must be an array of strings; rewrite the model's tokenizer metadata"),
    "no-token-at-all": (lambda g: g.set(TOK + "tokens", []),
                        "tokenizer.ggml.tokens has 0 tokens; a vocabulary needs 1 to 536870911"),
    "scores-not-numbers": (lambda g: g.set(TOK + "scores", ["0"] * 512, ARR, STR),
                           "tokenizer.ggml.scores must be an array of float32 (or int32); rewrite the model's "
                           "tokenizer metadata"),
    "scores-a-scalar": (lambda g: g.set(TOK + "scores", 0.5, F32),
                        "tokenizer.ggml.scores must be an array of float32 (or int32)"),
    "scores-short": (_cut(TOK + "scores", 511),
                     "tokenizer.ggml.scores has 511 entries for 512 tokens; it needs one score per token"),
    "types-not-int32": (lambda g: g.set(TOK + "token_type", [1.0] * 512, ARR, F32),
                        "tokenizer.ggml.token_type must be an array of int32; rewrite the model's tokenizer metadata"),
    "types-short": (_cut(TOK + "token_type", 100),
                    "tokenizer.ggml.token_type has 100 entries for 512 tokens; it needs one type per token"),
    "bos-out-of-range": (lambda g: g.set(TOK + "bos_token_id", 512),
                         "tokenizer.ggml.bos_token_id is 512 but the vocabulary has 512 tokens; fix the tokenizer "
                         "metadata"),
    "unknown-out-of-range": (lambda g: g.set(TOK + "unknown_token_id", 4_000_000_000),
                             "tokenizer.ggml.unknown_token_id is 4000000000 but the vocabulary has 512 tokens"),
    # llama.cpp gives a Phi-3 vocabulary rstrip/lstrip by name and fails the
    # load when one of the tokens it adjusts is absent (the tiny vocabulary
    # has no <|endoftext|>)
    "phi3-without-endoftext": (lambda g: g.set("general.name", "Phi-3 mini"),
                               "a Phi-3 vocabulary (general.name 'Phi-3 mini') must have the token '<|endoftext|>'"),
}


@pytest.fixture
def hostile(tiny_model: Path, tmp_path: Path) -> Callable[[str, Callable[[Gguf], Gguf]], Path]:
    def write(name: str, edit: Callable[[Gguf], Gguf]) -> Path:
        return edit(Gguf.read(tiny_model)).write(tmp_path / f"{name}.gguf")

    return write


def _live() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


@pytest.mark.parametrize("name", list(HOSTILE_VOCABULARIES))
def test_a_hostile_vocabulary_is_refused(hostile: Callable[..., Path], name: str) -> None:
    edit, fragment = HOSTILE_VOCABULARIES[name]
    path = hostile(name, edit)
    before = _live()
    for load in (lambda: bn.BitnetSession.create(path, n_ctx=16), lambda: bn.tokenize(path, "hi")):
        with pytest.raises(errors.ModelLoadError) as exc:
            load()
        assert fragment in str(exc.value)
        assert str(path) in str(exc.value)  # which file: the loader puts the path in front
        assert exc.value.context.native_code == -3
    assert _live() == before


def test_int32_scores_are_read_as_scores(tiny_model: Path, hostile: Callable[..., Path]) -> None:
    # the other array type load_scores takes: the same scores as integers
    # give the same merges
    g = Gguf.read(tiny_model)
    scores = [int(s) for s in g.kvs[TOK + "scores"].value]  # type: ignore[attr-defined]
    assert [float(s) for s in scores] == list(g.kvs[TOK + "scores"].value)  # type: ignore[call-overload]
    path = hostile("int-scores", lambda g: g.set(TOK + "scores", scores, ARR, I32))
    for text in CORPUS:
        assert bn.tokenize(path, text).tolist() == bn.tokenize(tiny_model, text).tolist()


def test_a_vocabulary_without_bos_refuses_add_bos(hostile: Callable[..., Path]) -> None:
    # one token: the default BOS id (1) is out of range, so there is none
    path = hostile("one-token", _vocab_of(1))
    before = _live()
    with pytest.raises(errors.InferenceError) as exc:
        bn.tokenize(path, "hi", add_bos=True)
    assert "add_bos was requested but the vocabulary has no BOS token; call with add_bos=0" in str(exc.value)
    assert exc.value.context.native_code == -4
    # without BOS it tokenizes: each byte of "\u2581hi" (3 + 2) falls back to the unknown token 0
    assert bn.tokenize(path, "hi", add_bos=False).tolist() == [0] * 5
    assert _live() == before


def test_a_vocabulary_asking_for_eos_without_one_is_an_error(hostile: Callable[..., Path]) -> None:
    # two tokens: BOS (1) exists, the default EOS id (2) does not
    path = hostile("two-tokens", lambda g: _vocab_of(2)(g).set(TOK + "add_eos_token", True, BOOL))
    before = _live()
    with pytest.raises(errors.InferenceError) as exc:
        bn.tokenize(path, "hi", add_bos=True)
    assert "the vocabulary asks for EOS but has no EOS token; call with add_bos=0" in str(exc.value)
    assert exc.value.context.native_code == -4
    assert bn.tokenize(path, "hi", add_bos=False).tolist()[0] == 0
    assert _live() == before


# ---- limits and allocation failures inside a tokenize call ------------------------------------

MAX_FRAGMENT = 1 << 29  # tokenizer.c: the longest text between special tokens (32-bit indices)


def test_text_longer_than_the_fragment_limit_is_refused(tiny_model: Path) -> None:
    # Through the C ABI: the prompt is passed without a copy (512 MiB).  The
    # limit is checked after the split around special tokens, before any
    # per-byte work, so the refusal costs one scan of the text.
    from pytest_bitnet.bridge.abi import ffi, lib

    out = ffi.new("bitnet_context_t **")
    e = ffi.new("char[]", 512)
    assert lib.bitnet_cpp_init_context(out, str(tiny_model).encode(), 16, 0, e, len(e)) == 0, ffi.string(e)
    try:
        text = b"a" * (MAX_FRAGMENT + 1)
        n = ffi.new("int32_t *", -7)
        rc = lib.bitnet_cpp_tokenize_with_context(out[0], text, 1, 0, ffi.NULL, 0, n, e, len(e))
        del text
        assert rc == lib.BITNET_E_INVALID_ARG
        assert ffi.string(e).decode() == (
            f"text of {MAX_FRAGMENT + 1} bytes without a special token is too long to tokenize "
            f"(limit {MAX_FRAGMENT}); split the text")
        # a special token splits it: the same bytes in two fragments are fine for the limit
        ok = lib.bitnet_cpp_tokenize_with_context(out[0], b"a" * 10 + b"<|tool|>" + b"a" * 10, 1, 0, ffi.NULL, 0, n, e, len(e))
        assert ok == 0 and n[0] > 2
    finally:
        assert lib.bitnet_cpp_free_context(out[0]) == 0


def test_every_allocation_of_a_many_fragment_tokenize_can_fail(session: bn.BitnetSession) -> None:
    # 40 fragments: the two fragment lists (16 entries to start with) grow
    # twice, each growth two reallocations; the sweep fails every allocation
    # of the call in turn, and each must be a clean OutOfMemory that leaves
    # the session working and nothing allocated.
    import fault_inject as fi

    text = "<|user|>a" * 20
    expected = session.tokenize(text, parse_special=True).tolist()
    assert len(expected) == 1 + 40  # BOS, then <|user|> and one token for "\u2581a" each time
    report = fi.sweep("alloc", lambda: session.tokenize(text, parse_special=True), action="oom",
                      expected=errors.OutOfMemory)
    assert report.ok, report.describe(failures_only=True)
    grown = [it.message for it in report.iterations if it.message and "bytes for text fragments" in it.message]
    # 16 -> 32 entries (768 bytes) for each of the two lists, in the query
    # pass and in the fill pass; again for 32 -> 64 (1536 bytes)
    for size in (768, 1536):
        assert sum(f"allocate {size} bytes for text fragments" in m for m in grown) == 4, grown
    assert session.tokenize(text, parse_special=True).tolist() == expected


def test_many_overlapping_special_tokens_split_as_llama_cpp_does(
    make_model: Callable[..., Path], llama_tokenize: Callable[..., list[int]], tmp_path: Path
) -> None:
    """More than 16 special tokens, most of one length, overlapping everywhere
    in the text: which one claims a stretch depends on the order they are tried
    in, which is llama.cpp's unstable std::sort by length (the tokenizer's
    introsort, past its insertion-sort-only size)."""
    import itertools
    import random

    g = Gguf.read(make_model(arch="bitnet", seed=0, n_vocab=4000))
    tokens = list(g.kvs["tokenizer.ggml.tokens"].value)
    types = list(g.kvs["tokenizer.ggml.token_type"].value)
    pieces = ["".join(p) for n in (4, 5) for p in itertools.product("QZ", repeat=n)]  # 16 + 32, all overlapping
    for i, piece in enumerate(pieces):
        tokens[3000 + i], types[3000 + i] = piece, gguf.TokenType.CONTROL
    g.set("tokenizer.ggml.tokens", tokens).set("tokenizer.ggml.token_type", types)
    path = tmp_path / "specials.gguf"
    g.write(path)
    rng = random.Random(16)
    texts = ["".join(rng.choice("QZ") for _ in range(rng.randint(5, 60))) for _ in range(40)]
    texts += ["hello QZQZQ world", "ZZZZZQQQQQ", "aQZQZb"]
    with bn.BitnetSession.create(path, n_ctx=16) as s:
        for text in texts:
            ours = s.tokenize(text, add_bos=False, parse_special=True).tolist()
            assert ours == llama_tokenize(path, text, False, True), text
            assert any(t >= 3000 for t in ours), text  # the specials did split it
