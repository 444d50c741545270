"""E09-E13: loading a model file."""

from __future__ import annotations

from pathlib import Path

import pytest_bitnet as bn

from ._core import Scenario, entry


@entry("E09", "model", "path does not exist → ModelLoadError with the path and \"not found\"",
       expect="ModelLoadError", fragments=("{missing}", "not found", "check the path"))
def e09(s: Scenario) -> None:
    """BitnetSession.create('<tmp>/absent.gguf'), and per-call tokenize on it"""
    missing = s.tmp / "absent.gguf"
    s.values["missing"] = missing
    s.fails(s.session, missing)
    s.fails(s.tokenize, "hello", path=missing)


@entry("E10", "model", "not a GGUF file → ModelLoadError \"not a GGUF file\"",
       expect="ModelLoadError", fragments=("{path}", "not a GGUF file", "bad magic"))
def e10(s: Scenario) -> None:
    """BitnetSession.create(<a text file>)"""
    path = s.tmp / "notes.gguf"
    path.write_text("hello, I am a text file\n")
    s.values["path"] = path
    s.fails(s.session, path)


def _variant(s: Scenario, kind: str) -> Path:
    path, _ = bn.models.broken_variants(s.model, s.tmp)[kind]
    return path


@entry("E11", "model", "truncated tensor data → ModelLoadError naming the tensor and offset",
       expect="ModelLoadError", fragments=("truncated tensor data: tensor '", "but the file ends at", "offset"))
def e11(s: Scenario) -> None:
    """BitnetSession.create(<the model cut inside its last tensor>)"""
    s.fails(s.session, _variant(s, "truncated_data"))


@entry("E12", "model", "unsupported tensor type / architecture → ModelLoadError listing the supported ones",
       expect="ModelLoadError", fragments=("unknown tensor type 31 for tensor 'token_embd.weight'", "known types:", "TQ2_0=35", "I2_S=36"))
def e12(s: Scenario) -> None:
    """BitnetSession.create(<token_embd of type 31>), and a model of architecture 'gpt2'"""
    s.fails(s.session, _variant(s, "unsupported_type"))
    if s.backend != "llama":  # llama.cpp knows gpt2 (and fails on the tensors instead)
        s.fails(s.session, s.make_model(arch="gpt2"), fragments=("unsupported architecture 'gpt2'", "supported: "))


# On llama too: the bridge reads every file with the strict reader before
# llama.cpp sees it (native/check), and the reader's load steps are these.
@entry("E13", "model", "slow load past the timeout → OperationTimeout, nothing leaked",
       expect="OperationTimeout", inject="load.step=hang", fragments=("create timed out", "raise the timeout"))
def e13(s: Scenario) -> None:
    """BitnetSession.create(model, timeout=0.2) with every load step hanging"""
    s.fails(s.session, timeout=0.2)
