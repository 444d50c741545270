"""An independent numpy implementation of the forward pass, for tests.

It reads the GGUF file with gguf-py's own reader (not ours), dequantizes
with gguf-py, and mirrors what ggml does to activations before each kind of
matmul, so the native engine can be held to a tight bound:

  F32    nothing
  F16    activations rounded to fp16
  TQ2_0  activations quantized to Q8_K (blocks of 256, iscale = -127/max)
  I2_S   activations quantized per row to int8 with s = 127/max|x|

I2_S files are not readable by gguf-py (type 36 is BitNet.cpp's); tests
evaluate them with ``act_quant="i2_s"`` on the TQ2_0 file of the same seed,
which holds the same ternary weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import gguf
import numpy as np

ActQuant = Literal["none", "f16", "q8k", "i2_s"]


@dataclass
class RefModel:
    arch: str
    hp: dict[str, float]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # float32, (rows, cols)
    types: dict[str, int] = field(default_factory=dict)


def _field(reader: gguf.GGUFReader, key: str, default: object = None) -> object:
    f = reader.get_field(key)
    if f is None:
        return default
    return f.contents()


def load(path: str) -> RefModel:
    r = gguf.GGUFReader(path)
    arch = str(_field(r, "general.architecture"))
    hp = {
        "n_embd": int(_field(r, f"{arch}.embedding_length")),
        "n_layer": int(_field(r, f"{arch}.block_count")),
        "n_ff": int(_field(r, f"{arch}.feed_forward_length")),
        "n_head": int(_field(r, f"{arch}.attention.head_count")),
        "eps": float(_field(r, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_base": float(_field(r, f"{arch}.rope.freq_base", 10000.0)),
    }
    hp["n_head_kv"] = int(_field(r, f"{arch}.attention.head_count_kv", hp["n_head"]))
    m = RefModel(arch, hp)
    for t in r.tensors:
        data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        m.tensors[t.name] = np.asarray(data, dtype=np.float32).reshape(
            [int(x) for x in reversed(t.shape.tolist())] if len(t.shape) > 1 else [-1]
        )
        m.types[t.name] = int(t.tensor_type)
    return m


def _nearest_int(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int32)  # round half to even, like ggml's trick


def quant_q8k(x: np.ndarray) -> np.ndarray:
    """x (n, cols) through ggml's Q8_K quantize/dequantize, float32 ops."""
    x = x.astype(np.float32)
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        for b in range(0, x.shape[1], 256):
            blk = x[r, b : b + 256]
            ax = np.abs(blk)
            j = int(np.argmax(ax))  # first of the largest, as ggml's strict '>'
            if ax[j] == 0:
                out[r, b : b + 256] = 0
                continue
            iscale = np.float32(-127.0) / blk[j]
            q = np.minimum(127, _nearest_int(iscale * blk))
            d = np.float32(1.0) / iscale
            out[r, b : b + 256] = q.astype(np.float32) * d
    return out


def quant_i2s(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 quantization of BitNet.cpp: (q, s) with x ~ q / s."""
    x = x.astype(np.float32)
    amax = np.abs(x).max(axis=1, keepdims=True)
    s = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.clip(_nearest_int(x * s), -128, 127)
    return q, s


def matmul(w: np.ndarray, x: np.ndarray, mode: ActQuant) -> np.ndarray:
    """x (n, cols) -> (n, rows) with w (rows, cols)."""
    if mode == "none":
        return (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32)
    if mode == "f16":
        xh = x.astype(np.float16).astype(np.float64)
        return (xh @ w.astype(np.float16).astype(np.float64).T).astype(np.float32)
    if mode == "q8k":
        return (quant_q8k(x).astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32)
    if mode == "i2_s":
        scale = np.abs(w).max()
        tern = np.rint(w / scale) if scale > 0 else w
        q, s = quant_i2s(x)
        acc = q.astype(np.float64) @ tern.T.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(s > 0, acc / np.where(s > 0, s, 1), 0.0) * scale
        return y.astype(np.float32)
    raise ValueError(mode)


def _mode_for(m: RefModel, name: str, override: ActQuant | None) -> ActQuant:
    t = m.types[name]
    if t == gguf.GGMLQuantizationType.F32:
        return "none"
    if t == gguf.GGMLQuantizationType.F16:
        return "f16"
    return override or "q8k"


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    mean = (x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True)
    return (x / np.sqrt(mean + eps)).astype(np.float32) * w


def rope(x: np.ndarray, pos: int, base: float, neox: bool) -> np.ndarray:
    """One head (head_dim,), theta advanced by float32 multiplication as ggml."""
    n = x.shape[0]
    theta_scale = np.float32(base) ** np.float32(-2.0 / n)
    out = x.copy()
    theta = np.float32(pos)
    for i in range(n // 2):
        a, b = (i, i + n // 2) if neox else (2 * i, 2 * i + 1)
        c, s = np.cos(theta), np.sin(theta)
        out[a] = x[a] * c - x[b] * s
        out[b] = x[a] * s + x[b] * c
        theta = np.float32(theta * theta_scale)
    return out


def forward(m: RefModel, tokens: list[int], proj_quant: ActQuant | None = None) -> np.ndarray:
    """Logits (n_tokens, n_vocab) for tokens from an empty context.

    proj_quant overrides how activations meet the ternary projections
    ("q8k" for TQ2_0 files, "i2_s" to mirror an I2_S file of the same seed).
    """
    hp = m.hp
    d, nh, nkv = int(hp["n_embd"]), int(hp["n_head"]), int(hp["n_head_kv"])
    hd = d // nh
    neox = m.arch == "bitnet"
    T = m.tensors
    x = T["token_embd.weight"][tokens].astype(np.float32)
    n = len(tokens)
    for l in range(int(hp["n_layer"])):
        p = f"blk.{l}."

        def mm(name: str, inp: np.ndarray) -> np.ndarray:
            y = matmul(T[p + name + ".weight"], inp, _mode_for(m, p + name + ".weight", proj_quant))
            if p + name + ".scale" in T:
                y = y * T[p + name + ".scale"].reshape(())
            return y

        xn = rmsnorm(x, T[p + "attn_norm.weight"], hp["eps"])
        q, k, v = mm("attn_q", xn), mm("attn_k", xn), mm("attn_v", xn)
        q = q.reshape(n, nh, hd)
        k = k.reshape(n, nkv, hd)
        v = v.reshape(n, nkv, hd)
        for t in range(n):
            for h in range(nh):
                q[t, h] = rope(q[t, h], t, hp["rope_base"], neox)
            for h in range(nkv):
                k[t, h] = rope(k[t, h], t, hp["rope_base"], neox)
        o = np.zeros((n, nh, hd), dtype=np.float32)
        for h in range(nh):
            kh = h // (nh // nkv)
            scores = (q[:, h, :].astype(np.float64) @ k[:, kh, :].T.astype(np.float64)) / np.sqrt(hd)
            scores[np.triu_indices(n, 1)] = -np.inf
            scores -= scores.max(axis=1, keepdims=True)
            wts = np.exp(scores)
            wts /= wts.sum(axis=1, keepdims=True)
            o[:, h, :] = (wts @ v[:, kh, :].astype(np.float64)).astype(np.float32)
        o = o.reshape(n, d)
        if m.arch == "bitnet":
            o = rmsnorm(o, T[p + "attn_sub_norm.weight"], hp["eps"])
        x = x + mm("attn_output", o)
        xn = rmsnorm(x, T[p + "ffn_norm.weight"], hp["eps"])
        g, u = mm("ffn_gate", xn), mm("ffn_up", xn)
        h_ = (g / (1.0 + np.exp(-g))) * u
        if m.arch == "bitnet":
            h_ = rmsnorm(h_, T[p + "ffn_sub_norm.weight"], hp["eps"])
        x = x + mm("ffn_down", h_)
    xn = rmsnorm(x, T["output_norm.weight"], hp["eps"])
    out_w = "output.weight" if "output.weight" in T else "token_embd.weight"
    return matmul(T[out_w], xn, _mode_for(m, out_w, None))
