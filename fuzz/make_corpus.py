"""Writes the GGUF fuzzer's seed corpus (fuzz/gguf_fuzzer.c).

    python3 fuzz/make_corpus.py fuzz/seeds

Seeds: small valid models of both architectures and every weight and
embedding type the engine computes with (a few KiB each, so mutations stay
cheap and the loader, tokenizer and forward pass are reached), one of the
tests' default size, and every malformed kind from ``broken_variants`` so
each of the reader's refusals starts out covered.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

# Run from a checkout: import this tree's package, not an installed one.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_bitnet import models  # noqa: E402

# The smallest vocabulary build_spm_vocab allows plus a few merges.
N_VOCAB = 300


def small_models(out: Path) -> list[Path]:
    written = []
    for arch, weight_type, embd_type in itertools.product(
        ("bitnet", "llama"), ("f32", "f16", "i2_s", "tq2_0"), ("f32", "f16")
    ):
        # F32/F16 rows can be any length: 16-wide layers keep the file tiny;
        # I2_S and TQ2_0 need whole blocks (128 / 256).
        width = {"f32": 16, "f16": 16, "i2_s": 128, "tq2_0": 256}[weight_type]
        path = out / f"{arch}-{weight_type}-embd_{embd_type}.gguf"
        models.make_tiny_model(
            path,
            arch,  # type: ignore[arg-type]
            seed=1,
            n_vocab=N_VOCAB,
            n_embd=width,
            n_ff=width,
            n_layer=1,
            n_head=2,
            n_head_kv=1,
            n_ctx_train=64,
            weight_type=weight_type,  # type: ignore[arg-type]
            embd_type=embd_type,  # type: ignore[arg-type]
            scales=arch == "bitnet" and weight_type == "f32",
        )
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    written = small_models(out)
    with tempfile.TemporaryDirectory() as tmp:
        # broken_variants of a small model: the same twelve refusals, small
        for name, (path, _fragment) in models.broken_variants(written[0], tmp).items():
            target = out / f"broken-{name}.gguf"
            target.write_bytes(path.read_bytes())
            written.append(target)
    sizes = [p.stat().st_size for p in written]
    print(f"{len(written)} seeds in {out}: {min(sizes)}..{max(sizes)} bytes, {sum(sizes)} in all")


if __name__ == "__main__":
    main()
