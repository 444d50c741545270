"""Cross-validation: the reference engine against llama.cpp on one model.

For every prompt of a corpus both backends tokenize (tokens must be
identical) and evaluate the same tokens from an empty context (logits must
agree within a tolerance, 1e-3 max abs difference by default).  Both
backends stay loaded for the whole corpus.

    from pytest_bitnet import crossval
    report = crossval.compare(model, crossval.DEFAULT_PROMPTS)
    crossval.check(model, prompts)          # ComparisonError on divergence

What the comparison found, for the README: llama.cpp's default KV cache
holds K and V in fp16 (and its flash attention rounds Q to fp16 too); that
alone moves the tiny bitnet model's logits by ~0.3-0.7 (about 1% of their
range).  The adapter therefore asks llama.cpp for an f32 cache and plain
attention, after which the remaining difference is float summation order,
~1e-5.  BITNET_LLAMA_KV=f16 restores llama.cpp's defaults (then expect the
larger figure).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..bridge import errors
from ..bridge.session import BitnetSession

__all__ = ["DEFAULT_PROMPTS", "TOLERANCE", "PromptResult", "compare", "check", "read_prompts"]

TOLERANCE = 1e-3

# ASCII, unicode, whitespace runs, the empty prompt, special tokens: the one
# corpus the tokenizer tests, the catalog's fallback entries and crossval use.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "What is 2+2?",
    "Hello world",
    "hello   world",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\n",
    "naïve café résumé",
    "中文字符 and ASCII",
    "emoji 🤖 outside the vocabulary",
    "\u00a0non-breaking space",
    "\u200b zero width, ß\u0301 combining, ½ fractions",
    "",
    " ",
    "a",
    "text with <|user|> in the middle",
)


@dataclass(frozen=True)
class PromptResult:
    """One prompt compared: tokens, and logits row by row."""

    prompt: str
    n_tokens: int
    tokens_equal: bool
    first_token_mismatch: int | None  # position, when tokens differ
    max_abs_diff: float  # over every logit of every row (0.0 when not evaluated)
    position: int | None  # row of the largest difference
    token: int | None  # the token at that row
    argmax_agree: float  # fraction of rows whose argmax agrees

    def diverges(self, tolerance: float) -> bool:
        return not self.tokens_equal or self.max_abs_diff > tolerance or self.argmax_agree < 1.0

    def describe(self) -> str:
        if not self.tokens_equal:
            return f"prompt {self.prompt!r}: tokens differ from position {self.first_token_mismatch}"
        return (
            f"prompt {self.prompt!r}: max abs difference {self.max_abs_diff:.3g} at position "
            f"{self.position} (token {self.token}); argmax agrees on {self.argmax_agree:.0%} of "
            f"{self.n_tokens} rows"
        )


def _first_mismatch(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32]) -> int | None:
    n = min(a.size, b.size)
    diff = np.flatnonzero(a[:n] != b[:n])
    if diff.size:
        return int(diff[0])
    return None if a.size == b.size else n


def _compare_one(ref: BitnetSession, other: BitnetSession, prompt: str, parse_special: bool) -> PromptResult:
    toks = ref.tokenize(prompt, add_bos=True, parse_special=parse_special)
    theirs = other.tokenize(prompt, add_bos=True, parse_special=parse_special)
    mismatch = _first_mismatch(toks, theirs)
    if mismatch is not None:
        return PromptResult(prompt, int(toks.size), False, mismatch, float("inf"), mismatch, None, 0.0)
    if toks.size == 0:
        return PromptResult(prompt, 0, True, None, 0.0, None, None, 1.0)
    ref.reset()
    other.reset()
    a, b = ref.evaluate(toks), other.evaluate(toks)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    row = int(np.unravel_index(int(np.argmax(diff)), diff.shape)[0])
    agree = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    return PromptResult(prompt, int(toks.size), True, None, float(diff.max()), row, int(toks[row]), agree)


def iter_compare(
    model: str | os.PathLike[str],
    prompts: Iterable[str],
    *,
    n_ctx: int = 512,
    parse_special: bool = True,
    backend: str = "llama",
) -> Iterator[PromptResult]:
    """Compares prompt by prompt, the reference engine against `backend`."""
    with BitnetSession.create(model, n_ctx=n_ctx, backend="reference") as ref:
        with BitnetSession.create(model, n_ctx=n_ctx, backend=backend) as other:
            for prompt in prompts:
                yield _compare_one(ref, other, prompt, parse_special)


def compare(model: str | os.PathLike[str], prompts: Iterable[str] = DEFAULT_PROMPTS, **kwargs: object) -> list[PromptResult]:
    return list(iter_compare(model, prompts, **kwargs))  # type: ignore[arg-type]


def check(
    model: str | os.PathLike[str], prompts: Iterable[str] = DEFAULT_PROMPTS, *, tolerance: float = TOLERANCE, **kwargs: object
) -> list[PromptResult]:
    """compare(), raising ComparisonError at the first divergence."""
    results = []
    for r in iter_compare(model, prompts, **kwargs):  # type: ignore[arg-type]
        if r.diverges(tolerance):
            raise errors.ComparisonError(
                f"reference and llama.cpp diverge (tolerance {tolerance:g}): {r.describe()}",
                errors.ErrorContext(operation="crossval", parameters={"model_path": os.fspath(model), **asdict(r)}),
            )
        results.append(r)
    return results


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """One prompt per line; a line is taken as a Python-style escaped string
    (\\t, \\n, \\u00a0 ...) so whitespace and control characters can be
    written; an empty line is the empty prompt."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends a line, it is not a prompt
    return [_ESCAPE.sub(_unescape, line) for line in lines]


_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[ntr\\])")
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _unescape(m: re.Match[str]) -> str:
    code = m.group(1)
    return _SIMPLE[code] if code in _SIMPLE else chr(int(code[1:], 16))


def format_table(results: Sequence[PromptResult], tolerance: float = TOLERANCE) -> str:
    head = f"{'n tok':>5}  {'tokens':<6}  {'max abs diff':>12}  {'argmax':>6}  {'':4}  prompt"
    rows = [head]
    for r in results:
        verdict = "FAIL" if r.diverges(tolerance) else "ok"
        rows.append(
            f"{r.n_tokens:>5}  {'equal' if r.tokens_equal else 'DIFF':<6}  {r.max_abs_diff:>12.3g}  "
            f"{r.argmax_agree:>6.0%}  {verdict:4}  {r.prompt!r}"
        )
    return "\n".join(rows)
