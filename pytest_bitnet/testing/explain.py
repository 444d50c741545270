"""Where two engines first part: intermediate tensors compared (issue 19).

Both engines write the tensors of a forward pass to files when
``BITNET_CAPTURE_DIR`` names a directory as their context is created
(native/include/bitnet_capture.h): llama.cpp through the context's
``cb_eval`` callback (every tensor its graph names ``<name>-<layer>``), the
reference engine through a capture hook in its forward pass, under the
same names.  ``explain()`` evaluates one prompt on both, compares the
tensors in the order the forward pass computes them, and reports the first
that is not bit-identical: where, by how much, and whether the difference
crossed a rounding step, i.e. whether an input of a quantized product
(Q8_K for TQ2_0 weights, fp16 for F16 weights) rounds to a different code
on the two sides.  A difference of an ulp that crosses no step stays an
ulp; one that crosses a Q8_K step becomes 1/127 of the block's largest
value, which is how the logits came to differ by 0.5.

    from pytest_bitnet.testing import explain
    e = explain.explain(model, "naïve café")
    print(e.describe())
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import numpy.typing as npt

from ..bridge.session import BitnetSession

__all__ = ["CAPTURE_ENV", "Crossing", "Explanation", "TensorDiff", "explain", "perturbed_copy", "read_capture"]

CAPTURE_ENV = "BITNET_CAPTURE_DIR"  # BN_CAPTURE_ENV in bitnet_capture.h

# bn_capture_hdr: magic, pos0, name, ne0, ne1
_HDR = struct.Struct("=4si56sqq")
_MAGIC = b"BNT1"

# Inputs of quantized products: the tensor, and the weights that read it
# (the first one's type decides how the input is rounded).
_QUANTIZED_INPUTS: dict[str, str] = {
    "attn_norm": "blk.{l}.attn_q.weight",
    "attn_sub_norm": "blk.{l}.attn_output.weight",
    "ffn_norm": "blk.{l}.ffn_gate.weight",
    "ffn_sub_norm": "blk.{l}.ffn_down.weight",
    "result_norm": "output.weight",
}


# Reference names -> what llama.cpp's llama-architecture graph calls them.
_ALIASES: dict[str, str] = {"ffn_sub_out": "ffn_swiglu", "ffn_down": "ffn_out"}


def read_capture(path: str | os.PathLike[str]) -> dict[str, npt.NDArray[np.float32]]:
    """A capture file as {name: tokens x values}, in the order first written.

    A name written more than once at one position (llama.cpp names Q before
    and after RoPE alike) keeps its last value; records at different
    positions (a prompt decoded in several batches) are joined in order."""
    data = Path(path).read_bytes()
    by_name: dict[str, dict[int, npt.NDArray[np.float32]]] = {}
    off = 0
    while off + _HDR.size <= len(data):
        magic, pos0, raw, ne0, ne1 = _HDR.unpack_from(data, off)
        if magic != _MAGIC:
            raise ValueError(f"{os.fspath(path)!r}: not a capture record at byte {off} (magic {magic!r})")
        off += _HDR.size
        n = ne0 * ne1
        values = np.frombuffer(data, np.float32, n, off).reshape(ne1, ne0).copy()
        off += 4 * n
        by_name.setdefault(raw.rstrip(b"\0").decode(), {})[pos0] = values
    return {name: np.concatenate([parts[p] for p in sorted(parts)]) for name, parts in by_name.items()}


@dataclass(frozen=True)
class TensorDiff:
    """One tensor compared: its first differing element and the largest difference."""

    name: str
    n_differ: int  # elements not bit-identical
    size: int
    max_abs: float
    token: int | None  # first differing element: row (token of the prompt) ...
    index: int | None  # ... and position within the row
    reference: float | None
    other: float | None

    @property
    def identical(self) -> bool:
        return self.n_differ == 0

    def describe(self) -> str:
        if self.identical:
            return f"{self.name}: bit-identical ({self.size} values)"
        return (
            f"{self.name}: {self.n_differ} of {self.size} values differ, max abs {self.max_abs:.3g}; first at "
            f"token {self.token}, element {self.index}: reference {self.reference!r}, other {self.other!r} "
            f"(difference {abs((self.reference or 0.0) - (self.other or 0.0)):.3g})"
        )


@dataclass(frozen=True)
class Crossing:
    """An input of a quantized product that rounds to different codes."""

    name: str
    rounding: str  # "Q8_K" or "F16"
    token: int
    index: int
    reference: float
    other: float
    reference_code: int | float
    other_code: int | float
    scale_differs: bool  # Q8_K: the block's scale itself differs

    def describe(self) -> str:
        why = "the block's scale differs" if self.scale_differs else f"{self.reference!r} vs {self.other!r}"
        return (
            f"{self.name}: crosses a {self.rounding} rounding step at token {self.token}, element {self.index}: "
            f"code {self.reference_code!r} vs {self.other_code!r} ({why})"
        )


@dataclass(frozen=True)
class Explanation:
    prompt: str
    n_tokens: int
    tensors: list[TensorDiff]  # in the order the forward pass computes them
    first: TensorDiff | None  # the first not bit-identical
    crossing: Crossing | None  # the first input of a quantized product rounding differently
    only_one_side: list[str] = field(default_factory=list)

    def describe(self) -> str:
        head = f"prompt {self.prompt!r} ({self.n_tokens} tokens), {len(self.tensors)} tensors compared: "
        if self.first is None:
            return head + "every one bit-identical"
        lines = [head + f"first difference in {self.first.name}", "  " + self.first.describe()]
        if self.crossing is not None:
            lines.append("  " + self.crossing.describe())
        else:
            lines.append("  no input of a quantized product rounds differently (the difference is summation order)")
        worst = max(self.tensors, key=lambda t: t.max_abs)
        lines.append(f"  largest difference: {worst.name}, {worst.max_abs:.3g}")
        return "\n".join(lines)


def _diff(name: str, a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> TensorDiff:
    differ = (a != b) & ~(np.isnan(a) & np.isnan(b))
    flat = np.flatnonzero(differ.ravel())
    if flat.size == 0:
        return TensorDiff(name, 0, int(a.size), 0.0, None, None, None, None)
    tok, idx = divmod(int(flat[0]), a.shape[1])
    max_abs = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return TensorDiff(name, int(flat.size), int(a.size), max_abs, tok, idx, float(a[tok, idx]), float(b[tok, idx]))


def _q8k(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """quantize_row_q8_K per 256-block of each row: codes and 1/iscale."""
    rows, n = x.shape
    blocks = x.reshape(rows, n // 256, 256)
    pick = np.argmax(np.abs(blocks), axis=2)  # the first of largest magnitude, as ggml
    mx = np.take_along_axis(blocks, pick[..., None], axis=2)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx == 0, np.float32(0), np.float32(-127.0) / mx).astype(np.float32)
    q = np.rint((iscale[..., None] * blocks).astype(np.float32)).astype(np.int32)  # half to even, as nearest_int
    return np.minimum(q, 127).reshape(rows, n), iscale


def _crossing(name: str, kind: str, a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> Crossing | None:
    if kind == "Q8_K" and a.shape[1] % 256 == 0:
        qa, sa = _q8k(a)
        qb, sb = _q8k(b)
        scale_diff = np.repeat(sa != sb, 256, axis=1)
    elif kind == "F16":
        qa, qb = a.astype(np.float16), b.astype(np.float16)
        scale_diff = np.zeros(a.shape, bool)
    else:
        return None
    flat = np.flatnonzero((qa != qb).ravel())
    if flat.size == 0:
        return None
    tok, idx = divmod(int(flat[0]), a.shape[1])
    code = int if kind == "Q8_K" else float
    return Crossing(
        name, kind, tok, idx, float(a[tok, idx]), float(b[tok, idx]), code(qa[tok, idx]), code(qb[tok, idx]), bool(scale_diff[tok, idx])
    )


def _rounding_of(model: str | os.PathLike[str]) -> dict[str, str]:
    """Weight tensor name -> how ggml rounds the input of its product."""
    kinds = {gguf.GGMLQuantizationType.TQ2_0: "Q8_K", gguf.GGMLQuantizationType.F16: "F16"}
    out = {}
    for t in gguf.GGUFReader(os.fspath(model)).tensors:
        if t.tensor_type in kinds:
            out[t.name] = kinds[t.tensor_type]
    if "output.weight" not in out and "token_embd.weight" in out:
        out["output.weight"] = out["token_embd.weight"]  # tied output
    return out


def _input_rounding(name: str, rounding: dict[str, str]) -> str | None:
    base, _, layer = name.rpartition("-")
    if not base:
        base, layer = name, ""
    weight = _QUANTIZED_INPUTS.get(base)
    return rounding.get(weight.format(l=layer)) if weight else None


def _captured(model: str | os.PathLike[str], backend: str, tokens: npt.NDArray[np.int32], n_ctx: int, tmp: Path) -> dict[str, npt.NDArray[np.float32]]:
    out = tmp / backend
    out.mkdir()
    previous = os.environ.get(CAPTURE_ENV)
    os.environ[CAPTURE_ENV] = str(out)  # read once, as the context is created
    try:
        session = BitnetSession.create(model, n_ctx=n_ctx, backend=backend, isolation="none")
    finally:
        if previous is None:
            del os.environ[CAPTURE_ENV]
        else:
            os.environ[CAPTURE_ENV] = previous
    with session:
        session.evaluate(tokens)
    files = list(out.glob("*.bnt"))
    if len(files) != 1:
        raise RuntimeError(f"backend {backend!r} wrote {len(files)} capture files in {out} (expected one): was it built with capture support?")
    return read_capture(files[0])


def explain(
    model: str | os.PathLike[str],
    prompt: str,
    *,
    other_model: str | os.PathLike[str] | None = None,
    backend: str = "llama",
    n_ctx: int = 512,
    parse_special: bool = True,
) -> Explanation:
    """Evaluates prompt on the reference engine (model) and on backend
    (other_model, default the same file), and compares their tensors."""
    with BitnetSession.create(model, n_ctx=n_ctx, backend="reference") as s:
        tokens = s.tokenize(prompt, add_bos=True, parse_special=parse_special)
    rounding = _rounding_of(model)
    with tempfile.TemporaryDirectory(prefix="bitnet-explain-") as tmp:
        ref = _captured(model, "reference", tokens, n_ctx, Path(tmp))
        other = _captured(other_model if other_model is not None else model, backend, tokens, n_ctx, Path(tmp))
    diffs, crossing = [], None
    for name, a in ref.items():
        b = other.get(name)
        if b is None:  # the llama architecture's graph names two of them otherwise
            base, dash, layer = name.rpartition("-")
            b = other.get(_ALIASES.get(base, base) + dash + layer)
        if b is None or b.shape != a.shape:
            continue
        diffs.append(_diff(name, a, b))
        kind = _input_rounding(name, rounding)
        if crossing is None and kind is not None:
            crossing = _crossing(name, kind, a, b)
    first = next((d for d in diffs if not d.identical), None)
    compared = {d.name for d in diffs}
    only = sorted(n for n in ref if n not in compared)
    return Explanation(prompt, int(tokens.size), diffs, first, crossing, only)


def perturbed_copy(
    model: str | os.PathLike[str], out: str | os.PathLike[str], tensor: str, index: int = 0, factor: float = 1.01
) -> Path:
    """A copy of model with one element of an F32 tensor multiplied by
    factor: a planted divergence for testing explain()."""
    reader = gguf.GGUFReader(os.fspath(model))
    found = [t for t in reader.tensors if t.name == tensor]
    if not found or found[0].tensor_type != gguf.GGMLQuantizationType.F32:
        raise ValueError(f"{os.fspath(model)!r} has no F32 tensor {tensor!r}")
    data = bytearray(Path(model).read_bytes())
    at = int(found[0].data_offset) + 4 * index
    (value,) = struct.unpack_from("<f", data, at)
    struct.pack_into("<f", data, at, value * factor)
    Path(out).write_bytes(bytes(data))
    return Path(out)


def iter_explain(model: str | os.PathLike[str], prompts: list[str], **kwargs: object) -> Iterator[Explanation]:
    for p in prompts:
        yield explain(model, p, **kwargs)  # type: ignore[arg-type]
