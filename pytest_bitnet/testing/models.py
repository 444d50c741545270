"""Deterministic test models, written with the ``gguf`` package.

``make_tiny_model`` writes a small but complete model of the ``bitnet`` (or
``llama``) architecture: ternary projections (TQ2_0, I2_S as BitNet.cpp packs
it, or the same ternary values as F16/F32), an SPM vocabulary with byte
tokens, and every hyperparameter llama.cpp needs to load it.  The same seed
gives the same bytes.  ``broken_variants`` derives malformed files from a
good one for the error-path tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import numpy.typing as npt

from . import malformed
from .vocab import build_spm_vocab

__all__ = [
    "make_tiny_model",
    "cached_tiny_model",
    "broken_variants",
    "pack_i2_s",
    "pack_tq2_0",
    "I2_S_TYPE",
    "GENERATOR_VERSION",
    "SHAPE_2B",
    "model_cache_dir",
    "cached_2b_model",
]

# ggml type id of BitNet.cpp's I2_S (absent from upstream ggml and gguf-py).
I2_S_TYPE = 36
# Bumped whenever the bytes make_tiny_model writes change (invalidates caches).
GENERATOR_VERSION = 1

WeightType = Literal["tq2_0", "i2_s", "f16", "f32"]
EmbdType = Literal["f32", "f16"]


def pack_i2_s(ternary: npt.NDArray[np.int8], scale: float) -> npt.NDArray[np.uint8]:
    """Packs a (rows, cols) array of -1/0/+1 as BitNet.cpp's x86 I2_S.

    Codes 0/1/2 stand for -1/0/+1; each block of 128 consecutive weights is
    32 bytes, weight j of a block in byte j % 32 at bit shift 6 - 2*(j // 32);
    the float32 scale follows the codes, padded to 32 bytes.
    """
    flat = ternary.reshape(-1).astype(np.int16) + 1
    if flat.size % 128:
        raise ValueError(f"I2_S needs a multiple of 128 weights, got {flat.size}")
    blocks = flat.reshape(-1, 4, 32).astype(np.uint8)  # [block, j // 32, j % 32]
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)
    codes = np.bitwise_or.reduce(blocks << shifts, axis=1).reshape(-1)
    trailer = np.zeros(32, dtype=np.uint8)
    trailer[:4] = np.frombuffer(np.float32(scale).tobytes(), dtype=np.uint8)
    return np.concatenate([codes, trailer])


def pack_tq2_0(ternary: npt.NDArray[np.int8], scale: float) -> npt.NDArray[np.uint8]:
    """Packs a (rows, cols) array of -1/0/+1 times scale as ggml's TQ2_0.

    The same bytes as ``gguf.quants.quantize(ternary * scale, TQ2_0)``
    (tests/testing/test_models.py checks it), without the float detour:
    every block's max ``|w|`` is the scale (fp16-exact) unless the block is all
    zeros, where gguf-py writes d = 0.  Blocks of 256 weights: 64 bytes of
    codes (weight e in byte (e // 128) * 32 + e % 32 at shift
    2 * ((e % 128) // 32), code = w + 1), then the fp16 d.  About 20x faster
    than gguf-py's, which matters for the 2B-shaped model (2.1e9 weights).
    """
    rows, cols = ternary.shape
    if cols % 256:
        raise ValueError(f"TQ2_0 needs rows of whole 256-weight blocks, got {cols} columns")
    codes = (ternary.reshape(rows, cols // 256, 2, 4, 32) + np.int8(1)).view(np.uint8)
    qs = codes[:, :, :, 0] | (codes[:, :, :, 1] << 2) | (codes[:, :, :, 2] << 4) | (codes[:, :, :, 3] << 6)
    nonzero = np.any(ternary.reshape(rows, cols // 256, 256) != 0, axis=-1)
    d = np.where(nonzero, np.float16(scale), np.float16(0)).astype(np.float16)
    out = np.concatenate([qs.reshape(rows, cols // 256, 64), d[..., None].view(np.uint8)], axis=-1)
    return out.reshape(rows, cols // 256 * 66)


# Elements per block of the projection types (a row holds whole blocks).
_WEIGHT_BLOCK: dict[str, int] = {"tq2_0": 256, "i2_s": 128, "f16": 1, "f32": 1}


def _ternary(rng: np.random.Generator, rows: int, cols: int) -> npt.NDArray[np.int8]:
    return rng.integers(-1, 2, size=(rows, cols), dtype=np.int8)


def _add_weight(
    w: gguf.GGUFWriter, name: str, ternary: npt.NDArray[np.int8], scale: float, weight_type: WeightType
) -> None:
    if weight_type == "f32":
        w.add_tensor(name, ternary.astype(np.float32) * np.float32(scale))
    elif weight_type == "f16":
        w.add_tensor(name, (ternary.astype(np.float32) * np.float32(scale)).astype(np.float16))
    elif weight_type == "tq2_0":
        w.add_tensor(name, pack_tq2_0(ternary, scale), raw_dtype=gguf.GGMLQuantizationType.TQ2_0)
    elif weight_type == "i2_s":
        # gguf-py does not know type 36: hand it the bytes as int8 with the
        # logical shape so it neither reshapes them nor looks up a block size.
        packed = pack_i2_s(ternary, scale).view(np.int8)
        w.add_tensor(name, packed, raw_shape=ternary.shape, raw_dtype=I2_S_TYPE)  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown weight_type {weight_type!r}: expected tq2_0, i2_s, f16 or f32")


def make_tiny_model(
    path: str | os.PathLike[str],
    arch: Literal["bitnet", "llama"] = "bitnet",
    seed: int = 0,
    *,
    n_vocab: int = 512,
    n_embd: int = 256,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 512,
    n_ctx_train: int = 2048,
    weight_type: WeightType = "tq2_0",
    embd_type: EmbdType = "f32",
    scales: bool = False,
    rope_base: float = 10000.0,
    rms_eps: float = 1e-5,
    alignment: int | None = None,
) -> Path:
    """Writes a deterministic model to path and returns it as a Path.

    Projections hold ternary weights times a per-tensor scale that fp16
    represents exactly, so TQ2_0, I2_S, F16 and F32 files of one seed hold
    the same numbers.  ``scales=True`` (bitnet) also writes the optional
    per-tensor ``.scale`` tensors.  n_embd and n_ff must be multiples of the
    weight type's block: 256 for TQ2_0, 128 for I2_S; F16 and F32 take any
    size (the fuzzer's seeds, fuzz/make_corpus.py, are models of a few KiB).
    ``alignment`` writes ``general.alignment`` and pads the tensor data to it
    (None: no key, GGUF's default 32); any power of two is written, so a
    test can offer the reader one GGUF forbids.
    """
    block = _WEIGHT_BLOCK.get(weight_type, 1)
    if n_embd % block or n_ff % block:
        raise ValueError(
            f"n_embd ({n_embd}) and n_ff ({n_ff}) must be multiples of {block} (the {weight_type.upper()} block size)"
        )
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(f"n_head ({n_head}) must divide n_embd ({n_embd}) and be a multiple of n_head_kv ({n_head_kv})")
    path = Path(path)
    rng = np.random.default_rng(seed)
    vocab = build_spm_vocab(n_vocab, seed=seed)
    head_dim = n_embd // n_head
    kv_dim = head_dim * n_head_kv

    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_name(f"pytest-bitnet tiny {arch} seed={seed}")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(rms_eps)
    w.add_rope_freq_base(rope_base)
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_bos_token_id(vocab.bos_id)
    w.add_eos_token_id(vocab.eos_id)
    w.add_unk_token_id(vocab.unk_id)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)

    embd = (rng.standard_normal((n_vocab, n_embd)) * 0.5).astype(np.float32)
    w.add_tensor("token_embd.weight", embd if embd_type == "f32" else embd.astype(np.float16))
    w.add_tensor("output_norm.weight", (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32))

    def norm(n: int) -> npt.NDArray[np.float32]:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    # (name, rows, cols): rows = outputs, cols = inputs (ggml ne = [cols, rows])
    shapes = [
        ("attn_q", n_embd, n_embd),
        ("attn_k", kv_dim, n_embd),
        ("attn_v", kv_dim, n_embd),
        ("attn_output", n_embd, n_embd),
        ("ffn_gate", n_ff, n_embd),
        ("ffn_up", n_ff, n_embd),
        ("ffn_down", n_embd, n_ff),
    ]
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm(n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm(n_embd))
        if arch == "bitnet":
            w.add_tensor(f"blk.{i}.attn_sub_norm.weight", norm(n_embd))
            w.add_tensor(f"blk.{i}.ffn_sub_norm.weight", norm(n_ff))
        for name, rows, cols in shapes:
            # 1/sqrt(fan_in) rounded to fp16 so every storage type is exact
            scale = float(np.float16(1.0 / np.sqrt(cols)))
            _add_weight(w, f"blk.{i}.{name}.weight", _ternary(rng, rows, cols), scale, weight_type)
            if scales and arch == "bitnet":
                w.add_tensor(f"blk.{i}.{name}.scale", np.array([0.5 + rng.random()], dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def cached_tiny_model(cache_dir: str | os.PathLike[str], **params: object) -> Path:
    """make_tiny_model with the same params, built once per cache_dir.

    The file name hashes the parameters and GENERATOR_VERSION; the model is
    written to a temporary name and renamed, so concurrent test workers
    never see half a file.
    """
    key = json.dumps({"v": GENERATOR_VERSION, **params}, sort_keys=True, default=str)
    name = f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:16]}.gguf"
    target = Path(cache_dir) / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        make_tiny_model(tmp, **params)  # type: ignore[arg-type]
        os.replace(tmp, target)
    return target


# The dimensions of BitNet b1.58 2B4T (its config.json): what a benchmark
# needs to see how cost grows to a real model's size.  Embeddings as that
# model's GGUF has them: F16, output tied to token_embd.  Weights are random
# ternary TQ2_0 and the architecture is this project's ``bitnet`` (sub-norms,
# SiLU), not the real model's ``bitnet-b1.58`` (ReLU²): same bytes to read,
# same shapes, same work per token.
SHAPE_2B: dict[str, object] = dict(
    arch="bitnet",
    n_vocab=128256,
    n_embd=2560,
    n_layer=30,
    n_head=20,
    n_head_kv=5,
    n_ff=6912,
    n_ctx_train=4096,
    weight_type="tq2_0",
    embd_type="f16",
    rope_base=500000.0,
)


def model_cache_dir() -> Path:
    """Where models too big to rebuild per run live (the 2B-shaped one):
    ``$XDG_CACHE_HOME/pytest-bitnet/models`` (``~/.cache/...``), beside the
    llama.cpp adapter the bridge caches."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "pytest-bitnet" / "models"


def cached_2b_model(cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0, **overrides: object) -> Path:
    """The 2B-shaped model (SHAPE_2B, ~1.2 GB: 537 MB of TQ2_0 projections,
    657 MB of F16 embeddings), built once per cache directory (default
    model_cache_dir()).  ``overrides`` change single dimensions, e.g.
    ``n_layer=1`` for a quick model of the same layer shapes."""
    return cached_tiny_model(cache_dir or model_cache_dir(), **{**SHAPE_2B, "seed": seed, **overrides})


def broken_variants(model: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, tuple[Path, str]]:
    """Malformed copies of a valid model: name -> (path, expected message fragment)."""
    return malformed.write_variants(Path(model), Path(out_dir))
