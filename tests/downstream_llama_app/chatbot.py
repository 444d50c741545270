"""A small app written against llama-cpp-python only, as a user of pytest-bitnet would have it.

Nothing here knows about pytest-bitnet: the point of issue 14 is that its
suite (suite/) gets fault injection and leak checks on llama.cpp's own calls
with ``pytest --bitnet-interpose=llama`` and no change to this file.

It has one real defect, on purpose: ``cached()`` parks every Llama it makes
in a module-level dict that nothing ever empties, so each test that calls it
keeps a llama_model and a llama_context alive after it ends.
"""

from __future__ import annotations

import os

from llama_cpp import Llama

N_CTX = 128

_CACHE: dict[str, Llama] = {}  # BUG: never emptied, never closed


def load(model_path: str | os.PathLike[str], *, n_ctx: int = N_CTX) -> Llama:
    # llama-cpp-python needs a str path (os.path.exists + .encode)
    return Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=1, verbose=False)


def cached(model_path: str | os.PathLike[str]) -> Llama:
    """One Llama per path, kept for later calls (the leak)."""
    key = str(model_path)
    if key not in _CACHE:
        _CACHE[key] = load(model_path)
    return _CACHE[key]


def complete(llm: Llama, prompt: str, *, max_tokens: int = 8) -> str:
    """Greedy completion of prompt."""
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1)
    return out["choices"][0]["text"]


def count_tokens(llm: Llama, text: str) -> int:
    return len(llm.tokenize(text.encode("utf-8"), add_bos=True))


def round_trip(llm: Llama, text: str) -> str:
    """text tokenized and detokenized again."""
    # with the BOS first, llama-cpp-python drops the space prefix the tokenizer added
    return llm.detokenize(llm.tokenize(text.encode("utf-8"), add_bos=True)).decode("utf-8")


def answer(model_path: str | os.PathLike[str], prompt: str, *, max_tokens: int = 8) -> str:
    """Load, complete, free: the well-behaved path (the model is freed on every error too)."""
    llm = load(model_path)
    try:
        return complete(llm, prompt, max_tokens=max_tokens)
    finally:
        llm.close()
