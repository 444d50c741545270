"""The model generator's fast paths and the 2B-shaped preset."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from pytest_bitnet.testing.models import SHAPE_2B, cached_2b_model, pack_tq2_0


@pytest.mark.parametrize("rows, cols", [(1, 256), (7, 512), (64, 2560)])
def test_pack_tq2_0_writes_gguf_py_bytes(rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows)
    ternary = rng.integers(-1, 2, size=(rows, cols), dtype=np.int8)
    ternary[0, :256] = 0  # an all-zero block: gguf-py writes d = 0 there
    scale = float(np.float16(1 / np.sqrt(cols)))
    expected = gguf.quants.quantize(ternary.astype(np.float32) * np.float32(scale), gguf.GGMLQuantizationType.TQ2_0)
    np.testing.assert_array_equal(pack_tq2_0(ternary, scale), expected)


def test_2b_preset_has_the_2b4t_layer_shapes(tmp_path) -> None:
    # one layer and a small vocabulary: the real preset's layers, in about a second
    path = cached_2b_model(tmp_path, n_layer=1, n_vocab=1024)
    reader = gguf.GGUFReader(str(path))
    shapes = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type.name) for t in reader.tensors}
    e, ff, kv = SHAPE_2B["n_embd"], SHAPE_2B["n_ff"], 2560 // 20 * 5
    assert (e, ff, kv) == (2560, 6912, 640)
    assert shapes["token_embd.weight"] == ((e, 1024), "F16")
    assert "output.weight" not in shapes  # tied, as the real model
    assert shapes["blk.0.attn_q.weight"] == ((e, e), "TQ2_0")
    assert shapes["blk.0.attn_k.weight"] == ((e, kv), "TQ2_0")
    assert shapes["blk.0.ffn_up.weight"] == ((e, ff), "TQ2_0")
    assert shapes["blk.0.ffn_down.weight"] == ((ff, e), "TQ2_0")
    assert shapes["blk.0.ffn_sub_norm.weight"] == ((ff,), "F32")
    assert "blk.1.attn_q.weight" not in shapes
    assert cached_2b_model(tmp_path, n_layer=1, n_vocab=1024) == path  # cached, not rebuilt
