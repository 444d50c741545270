"""Logits of the native engine against the numpy reference in numpy_reference.py.

Bounds reached (max abs difference of logits, default tiny models):
  F32 weights          <= 1e-4 (float summation order only)
  F16 weights          <= 1e-4 (activations rounded to fp16 on both sides)
  TQ2_0 (Q8_K acts)    <= 1e-4 (same quantization on both sides)
  I2_S (int8 row acts) <= 1e-4 against the reference in I2_S mode
TQ2_0 against I2_S files of the same seed differ only through activation
quantization (per 256-block vs per row): bounded by TOL_TQ2_VS_I2S.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import pytest_bitnet as bn

from . import numpy_reference as ref

PROMPT_TOKENS = [1, 17, 300, 45, 2, 99, 511, 260]
TOL = 1e-4
TOL_TQ2_VS_I2S = 0.25  # two different activation quantizations of one model


def native_logits(path: Path, tokens: list[int]) -> np.ndarray:
    with bn.BitnetSession.create(path, n_ctx=64) as s:
        return s.evaluate(tokens)


@pytest.mark.parametrize("weight_type", ["f32", "f16", "tq2_0"])
@pytest.mark.parametrize("arch", ["bitnet", "llama"])
def test_logits_match_numpy_reference(make_model: Callable[..., Path], arch: str, weight_type: str) -> None:
    path = make_model(arch=arch, seed=1, weight_type=weight_type)
    expected = ref.forward(ref.load(str(path)), PROMPT_TOKENS)
    got = native_logits(path, PROMPT_TOKENS)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOL


def test_f16_embeddings_and_scales(make_model: Callable[..., Path]) -> None:
    path = make_model(arch="bitnet", seed=2, embd_type="f16", scales=True)
    expected = ref.forward(ref.load(str(path)), PROMPT_TOKENS)
    assert np.abs(native_logits(path, PROMPT_TOKENS) - expected).max() <= TOL


def test_i2_s_matches_reference_in_i2_s_mode(make_model: Callable[..., Path]) -> None:
    i2s = make_model(arch="bitnet", seed=3, weight_type="i2_s")
    tq2 = make_model(arch="bitnet", seed=3, weight_type="tq2_0")
    expected = ref.forward(ref.load(str(tq2)), PROMPT_TOKENS, proj_quant="i2_s")
    assert np.abs(native_logits(i2s, PROMPT_TOKENS) - expected).max() <= TOL


def test_same_ternary_weights_as_tq2_0_and_i2_s_agree(make_model: Callable[..., Path]) -> None:
    i2s = native_logits(make_model(arch="bitnet", seed=3, weight_type="i2_s"), PROMPT_TOKENS)
    tq2 = native_logits(make_model(arch="bitnet", seed=3, weight_type="tq2_0"), PROMPT_TOKENS)
    f32 = native_logits(make_model(arch="bitnet", seed=3, weight_type="f32"), PROMPT_TOKENS)
    # both quantized forms stay close to the exact float model, and to each other
    assert np.abs(tq2 - f32).max() <= TOL_TQ2_VS_I2S
    assert np.abs(i2s - f32).max() <= TOL_TQ2_VS_I2S
    assert np.abs(i2s - tq2).max() <= TOL_TQ2_VS_I2S
    assert (i2s.argmax(axis=1) == tq2.argmax(axis=1)).mean() >= 0.75


def test_gqa_and_deeper_model(make_model: Callable[..., Path]) -> None:
    path = make_model(arch="bitnet", seed=4, n_layer=3, n_head=8, n_head_kv=2, n_ff=768)
    expected = ref.forward(ref.load(str(path)), PROMPT_TOKENS)
    assert np.abs(native_logits(path, PROMPT_TOKENS) - expected).max() <= TOL


def test_portable_and_avx2_kernels_agree(tiny_model: Path) -> None:
    from pytest_bitnet._native import lib

    if not bn.capabilities().has_avx2:
        pytest.skip("no AVX2 on this CPU: only the portable kernels run")
    fast = native_logits(tiny_model, PROMPT_TOKENS)
    lib.bn_kernels_force_portable(1)
    try:
        portable = native_logits(tiny_model, PROMPT_TOKENS)
    finally:
        lib.bn_kernels_force_portable(0)
    np.testing.assert_allclose(portable, fast, atol=1e-5, rtol=0)
