"""Cross-validation of the reference engine against llama.cpp (issue 7):
identical tokens and logits within 1e-3 on the tiny bitnet TQ2_0 model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_bitnet import errors
from pytest_bitnet.bridge.llama import configured
from pytest_bitnet.testing import crossval

LLAMA = configured()

pytestmark = pytest.mark.skipif(not LLAMA.available, reason=f"llama.cpp backend unavailable: {LLAMA.reason}")

ROOT = Path(__file__).resolve().parents[2]


def test_corpus_agrees_on_the_tiny_bitnet_model(tiny_model: Path) -> None:
    results = crossval.check(tiny_model)  # raises ComparisonError on divergence
    assert [r.prompt for r in results] == list(crossval.DEFAULT_PROMPTS)
    assert all(r.tokens_equal and r.argmax_agree == 1.0 for r in results)
    assert max(r.max_abs_diff for r in results) <= crossval.TOLERANCE
    empty = results[crossval.DEFAULT_PROMPTS.index("")]
    assert empty.n_tokens == 1  # BOS alone is still evaluated


def test_divergence_raises_comparison_error(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # llama.cpp's own defaults (fp16 KV cache) are a real divergence beyond 1e-3
    monkeypatch.setenv("BITNET_LLAMA_KV", "f16")
    with pytest.raises(errors.ComparisonError) as exc:
        crossval.check(tiny_model, ["What is 2+2?"])
    params = exc.value.context.parameters
    assert params["tokens_equal"] and params["max_abs_diff"] > crossval.TOLERANCE
    assert 0 <= params["position"] < params["n_tokens"] and params["token"] is not None
    assert "max abs difference" in str(exc.value) and "argmax agrees on" in str(exc.value)


def test_prompts_file_escapes(tmp_path: Path) -> None:
    f = tmp_path / "prompts.txt"
    f.write_text("plain\n\ntab\\there\nna\\u00efve\n<|user|>hi\n", encoding="utf-8")
    assert crossval.read_prompts(f) == ["plain", "", "tab\there", "naïve", "<|user|>hi"]


def _cli(model: Path, prompts: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_bitnet", "crossval", str(model), "--prompts", str(prompts)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        timeout=120,
    )


def test_command_prints_the_comparison_and_exits_by_verdict(tiny_model: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2+2?\n\nhello   world\n", encoding="utf-8")
    ok = _cli(tiny_model, prompts)
    assert ok.returncode == 0, ok.stderr
    assert "3 prompts, 0 diverging" in ok.stdout and "'hello   world'" in ok.stdout
    bad = _cli(tiny_model, prompts, BITNET_LLAMA_KV="f16")
    assert bad.returncode == 1
    assert "DIVERGENCE prompt 'What is 2+2?'" in bad.stdout


def test_command_timeout_is_the_default_deadline(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # issue 20.21: a hang in either engine ends at --timeout, not at 30 s
    import fault_inject as fi
    from pytest_bitnet import __main__ as cli
    from pytest_bitnet.bridge import settings

    before = settings.current()
    with fi.inject("eval.step=hang"):
        assert cli.main(["crossval", str(tiny_model), "--timeout", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "crossval could not run" in err and "timed out" in err and "timeout=0.2" in err
    assert settings.current() == before
    with pytest.raises(SystemExit) as exc:
        cli.main(["crossval", str(tiny_model), "--timeout", "soon"])
    assert exc.value.code == 2
