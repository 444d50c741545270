"""pytest_bitnet.testing.malformed's structured editor (Gguf): a file read and
written back is the same file, and edits lay it out again validly, so the only
thing wrong with an edited file is the value a test put there."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

import pytest_bitnet as bn
from pytest_bitnet.testing.malformed import Gguf, tensor_nbytes

U32, F32 = 4, 6


@pytest.mark.parametrize("params", [{}, {"weight_type": "f16"}, {"weight_type": "i2_s"}, {"arch": "llama"}], ids=str)
def test_read_then_write_is_the_same_file(params: dict[str, str], make_model: Callable[..., Path]) -> None:
    path = make_model(**params)
    assert Gguf.read(path).to_bytes() == path.read_bytes()


def test_edits_lay_the_file_out_again(make_model: Callable[..., Path], tmp_path: Path) -> None:
    g = Gguf.read(make_model())
    g.set("general.alignment", 64, U32)  # every offset and the padding move
    g.set("{arch}.attention.layer_norm_rms_epsilon", 1e-6)  # the old type is kept
    g.set("pytest_bitnet.extra", 7, U32)  # a new key needs its type
    g.retype("blk.0.ffn_down.weight", 0)  # TQ2_0 -> F32: four times the bytes, the file grows
    out = g.write(tmp_path / "edited.gguf")
    again = Gguf.read(out)
    assert again.kvs["bitnet.attention.layer_norm_rms_epsilon"].vtype == F32
    assert again.kvs["pytest_bitnet.extra"].value == 7
    t = again.tensor("blk.0.ffn_down.weight")
    assert (t.type, len(t.data)) == (0, tensor_nbytes(0, t.ne))
    # the strict reader takes the layout: the reference engine loads and runs it
    with bn.BitnetSession.create(out, n_ctx=16) as s:
        assert s.evaluate(s.tokenize("hi")).shape[0] >= 1


def test_a_new_key_needs_its_type(make_model: Callable[..., Path]) -> None:
    with pytest.raises(KeyError, match="pass vtype"):
        Gguf.read(make_model()).set("no.such.key", 1)
