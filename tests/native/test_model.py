"""The loader's checks beyond the reader (native/reference/model.c): a file
laid out validly whose hyperparameters or tensors the bitnet / llama
architecture cannot run is refused with a ModelLoadError naming the key or
tensor, the value and what is required, with nothing left allocated.

Each file is a tiny model with one value made hostile by
pytest_bitnet.testing.malformed.Gguf.  Hyperparameters are checked by the
vocabulary-only load too (the per-call tokenize); tensors only when a
session loads the weights.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
from pytest_bitnet.testing.malformed import Gguf, TensorData

U32, F64 = 4, 12
GGML_F32, GGML_F16 = 0, 1
A = "{arch}."


def _drop_tensor(name: str) -> Callable[[Gguf], Gguf]:
    def edit(g: Gguf) -> Gguf:
        g.tensors = [t for t in g.tensors if t.name != name]
        return g

    return edit


def _add_tensor(t: TensorData) -> Callable[[Gguf], Gguf]:
    def edit(g: Gguf) -> Gguf:
        g.tensors.append(t)
        return g

    return edit


def _i2s_scale(name: str, value: float) -> Callable[[Gguf], Gguf]:
    """Tensor `name` (I2_S) with its per-tensor scale, the float after the codes, set to value."""

    def edit(g: Gguf) -> Gguf:
        t = g.tensor(name)
        at = math.prod(t.ne) // 4
        t.data = t.data[:at] + struct.pack("<f", value) + t.data[at + 4 :]
        return g

    return edit


@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[Gguf], Gguf]
    fragment: str
    params: tuple[tuple[str, str], ...] = ()  # make_model parameters of the file edited
    hparam: bool = True  # also refused by the vocabulary-only load


CASES = [
    Case("required-key-missing", lambda g: g.drop(A + "context_length"),
         "required key 'bitnet.context_length' is missing from the GGUF metadata"),
    Case("epsilon-beyond-f32", lambda g: g.set(A + "attention.layer_norm_rms_epsilon", 1e300, F64),
         "has value 1e+300 (f64), which does not fit f32"),
    Case("heads-do-not-divide-embedding", lambda g: g.set(A + "attention.head_count", 3),
         "inconsistent hyperparameters: n_embd=256 n_layer=2 n_ff=512 n_head=3 n_head_kv=2 n_ctx_train=2048 "
         "(n_embd must divide into n_head heads, n_head into n_head_kv groups, all positive)"),
    Case("no-layers", lambda g: g.set(A + "block_count", 0), "inconsistent hyperparameters: n_embd=256 n_layer=0"),
    Case("rope-dimension-odd", lambda g: g.set(A + "rope.dimension_count", 63, U32),
         "rope.dimension_count 63 must be even and at most the head size 64"),
    Case("rope-dimension-beyond-head", lambda g: g.set(A + "rope.dimension_count", 66, U32),
         "rope.dimension_count 66 must be even and at most the head size 64"),
    Case("tensor-missing", _drop_tensor("blk.1.ffn_up.weight"),
         "tensor 'blk.1.ffn_up.weight' is missing: the bitnet architecture needs it; the file is incomplete or was "
         "written for another architecture", hparam=False),
    Case("projection-shaped-for-other-heads", lambda g: g.retype("blk.0.attn_q.weight", GGML_F32, [256, 128]),
         "tensor 'blk.0.attn_q.weight' has shape [256, 128] but the hyperparameters require [256, 256]", hparam=False),
    Case("norm-not-f32", lambda g: g.retype("output_norm.weight", GGML_F16),
         "unsupported tensor type F16 for norm 'output_norm.weight' (supported for norms: F32)", hparam=False),
    Case("i2s-scale-nan", _i2s_scale("blk.0.attn_k.weight", math.nan),
         "tensor 'blk.0.attn_k.weight': I2_S scale is not finite", (("weight_type", "i2_s"),), hparam=False),
    Case("i2s-scale-inf", _i2s_scale("blk.1.ffn_down.weight", math.inf),
         "tensor 'blk.1.ffn_down.weight': I2_S scale is not finite", (("weight_type", "i2_s"),), hparam=False),
    Case("scale-not-one-value", _add_tensor(TensorData("blk.0.attn_q.scale", [2], GGML_F32, bytes(8))),
         "tensor 'blk.0.attn_q.scale' must be a single F32 value", hparam=False),
    Case("scale-not-f32", _add_tensor(TensorData("blk.1.ffn_gate.scale", [1], GGML_F16, bytes(2))),
         "tensor 'blk.1.ffn_gate.scale' must be a single F32 value", hparam=False),
]


def _live() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_model_the_architecture_cannot_run_is_refused(case: Case, make_model: Callable[..., Path], tmp_path: Path) -> None:
    path = case.edit(Gguf.read(make_model(**dict(case.params)))).write(tmp_path / f"{case.id}.gguf")
    before = _live()
    loads = [lambda: bn.BitnetSession.create(path, n_ctx=16), lambda: bn.evaluate(path, [1, 2])]
    if case.hparam:
        loads.append(lambda: bn.tokenize(path, "hi"))
    for load in loads:
        with pytest.raises(errors.ModelLoadError) as exc:
            load()
        assert case.fragment in str(exc.value)
        assert str(path) in str(exc.value)  # the loader names the file
        assert exc.value.context.native_code == -3
    assert _live() == before
    if not case.hparam:  # the vocabulary alone is fine: the per-call tokenize does not read the weights
        assert bn.tokenize(path, "hi").tolist()[0] == 1


def test_a_valid_scale_tensor_scales_the_projection(make_model: Callable[..., Path], tiny_model: Path, tmp_path: Path) -> None:
    # the check above refuses only malformed scales: a single F32 value is
    # applied, so doubling every projection of layer 0 changes the logits
    edit = _add_tensor(TensorData("blk.0.ffn_down.scale", [1], GGML_F32, struct.pack("<f", 2.0)))
    path = edit(Gguf.read(tiny_model)).write(tmp_path / "scaled.gguf")
    with bn.BitnetSession.create(tiny_model, n_ctx=16) as s:
        plain = s.evaluate([1, 2, 3])
    with bn.BitnetSession.create(path, n_ctx=16) as s:
        scaled = s.evaluate([1, 2, 3])
    assert scaled.shape == plain.shape and not (scaled == plain).all()
