"""Cross-validation of the reference engine against llama.cpp (issue 7):
identical tokens and logits within 1e-3 on the tiny bitnet TQ2_0 model;
on every row of seeded random prompts, over weight types and threads, and
--explain finding a planted divergence (issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_bitnet import errors
from pytest_bitnet.bridge.llama import configured
from pytest_bitnet.testing import crossval, explain
from pytest_bitnet.testing.models import cached_tiny_model

import numpy as np

LLAMA = configured()
# Bit-identical parity holds against a libggml built as the reference engine
# rounds (crossval.GgmlBuild); against another build the tests below that
# demand it would only measure that build's summation order.
BUILD = crossval.ggml_build() if LLAMA.available else None
_UNMATCHED = f"llama.cpp backend unavailable: {LLAMA.reason}" if BUILD is None else BUILD.mismatch()
MATCHED = pytest.mark.skipif(_UNMATCHED is not None, reason=str(_UNMATCHED))

pytestmark = pytest.mark.skipif(not LLAMA.available, reason=f"llama.cpp backend unavailable: {LLAMA.reason}")

ROOT = Path(__file__).resolve().parents[2]


@MATCHED
def test_corpus_agrees_on_the_tiny_bitnet_model(tiny_model: Path) -> None:
    results = crossval.check(tiny_model)  # raises ComparisonError on divergence
    assert [r.prompt for r in results] == crossval.default_corpus()
    assert set(crossval.DEFAULT_PROMPTS) | set(crossval.HARD_PROMPTS) <= {r.prompt for r in results}
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


def test_random_prompts_are_seeded_mixed_and_bounded() -> None:
    a, b = crossval.random_prompts(11, 50), crossval.random_prompts(11, 50)
    assert a == b and a != crossval.random_prompts(12, 50) and len(a) == 50
    text = "".join(a)
    assert any(ord(c) > 0x2E7F for c in text) and any(0xC0 <= ord(c) <= 0x17F for c in text)  # CJK and Latin
    assert all(p.strip() for p in a)
    assert crossval.random_prompts(3, 200, max_words=1) == [p for p in crossval.random_prompts(3, 200, max_words=1) if " " not in p]


def test_row_metrics_tell_rounding_from_a_different_distribution() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 50)).astype(np.float32) * 5
    diff, kl, argmax, topk = crossval.row_metrics(a, a.copy())
    assert (diff == 0).all() and (kl == 0).all() and argmax.all() and topk.all()
    b = a.copy()
    b[1] = b[1][::-1]  # another distribution on row 1 only
    diff, kl, argmax, topk = crossval.row_metrics(a, b)
    assert diff[0] == diff[2] == 0 and diff[1] > 0
    assert kl[1] > 0.1 and kl[0] == kl[2] == 0
    assert not topk[1] and topk[0] and topk[2]


# (model parameters, threads): the CI-bounded random-prompt crossval of
# issue 19 — weight types, both architectures, GQA, per-tensor scales
PARITY_CASES = [
    (dict(arch="bitnet", seed=11, weight_type="tq2_0"), 1),
    (dict(arch="bitnet", seed=11, weight_type="tq2_0"), 2),
    (dict(arch="bitnet", seed=12, weight_type="f32"), 2),
    (dict(arch="bitnet", seed=13, weight_type="f16", n_head=8, n_head_kv=2), 1),
    (dict(arch="llama", seed=14, weight_type="tq2_0"), 2),
    (dict(arch="bitnet", seed=15, weight_type="tq2_0", scales=True, embd_type="f16"), 2),
]


@MATCHED
@pytest.mark.parametrize(("params", "threads"), PARITY_CASES, ids=lambda v: str(v) if isinstance(v, int) else f"{v['arch']}-{v['weight_type']}-{v['seed']}")
def test_random_prompts_agree_on_every_row(
    params: dict, threads: int, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # both engines read BITNET_NUM_THREADS as their contexts are created
    monkeypatch.setenv("BITNET_NUM_THREADS", str(threads))
    model = cached_tiny_model(tmp_path_factory.getbasetemp() / "parity-models", **params)
    results = crossval.compare(model, crossval.random_prompts(params["seed"], 40), n_ctx=256)
    summary = crossval.summarize(results)
    assert all(r.tokens_equal for r in results)
    assert summary.rows_over == 0, [r.describe() for r in results if r.rows_over][:3]
    assert summary.worst <= crossval.TOLERANCE and summary.argmax_disagree == summary.topk_disagree == 0
    assert summary.max_kl < 1e-9


@MATCHED
def test_explain_localises_a_planted_divergence(tiny_model: Path, tmp_path: Path) -> None:
    plain = explain.explain(tiny_model, "naïve café 中文 hello")
    # nothing upstream of the logits differs (bit-identical on an AVX2 libggml)
    assert plain.first is None or plain.first.name == "result_output", plain.describe()
    other = explain.perturbed_copy(tiny_model, tmp_path / "planted.gguf", "blk.1.ffn_norm.weight", index=7, factor=1.5)
    e = explain.explain(tiny_model, "naïve café 中文 hello", other_model=other)
    assert e.first is not None and e.first.name == "ffn_norm-1", e.describe()
    assert (e.first.token, e.first.index) == (0, 7)
    assert e.first.other == pytest.approx(1.5 * e.first.reference, rel=1e-6)
    names = [t.name for t in e.tensors]
    assert all(t.identical for t in e.tensors[: names.index("ffn_norm-1")])
    assert e.crossing is not None and e.crossing.name == "ffn_norm-1" and e.crossing.rounding == "Q8_K"
    assert "first difference in ffn_norm-1" in e.describe()


@MATCHED
def test_command_explain_names_the_planted_tensor(tiny_model: Path, tmp_path: Path) -> None:
    other = explain.perturbed_copy(tiny_model, tmp_path / "planted.gguf", "blk.0.attn_sub_norm.weight", index=3, factor=1.25)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello world\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_bitnet", "crossval", str(tiny_model), "--prompts", str(prompts), "--explain", "--other-model", str(other)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "EXPLAIN prompt 'Hello world'" in proc.stdout and "first difference in attn_sub_norm-0" in proc.stdout
    assert "crosses a Q8_K rounding step" in proc.stdout


AVX2_INFO = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "


@pytest.mark.parametrize(
    ("info", "verdict"),
    [
        (AVX2_INFO, None),
        (AVX2_INFO.replace("BMI2 = 1 |", "BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 |"), "built with AVX512, AVX512_VNNI"),
        (AVX2_INFO.replace("LLAMAFILE = 1", "LLAMAFILE = 0"), "built without LLAMAFILE"),
        ("CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | LLAMAFILE = 1 | ", "built without AVX2, F16C, FMA"),
        # a GPU backend's features are not the CPU's
        ("CPU : SSE3 = 1 | | CUDA : ARCHS = 890 | AVX2 = 1 | FMA = 1 | F16C = 1 | LLAMAFILE = 1 |", "built without AVX2"),
        (AVX2_INFO + "CUDA : ARCHS = 890 | AVX512 = 1 |", None),
    ],
)
def test_ggml_build_says_whether_the_orders_match(info: str, verdict: str | None) -> None:
    build = crossval.GgmlBuild.parse(info)
    if verdict is None:
        assert build.mismatch() is None and "bit-identical" in build.describe()
    else:
        why = build.mismatch()
        assert why is not None and verdict in why and crossval.MATCHED_CMAKE_ARGS in why


@pytest.mark.skipif(not LLAMA.available, reason=str(LLAMA.reason))
def test_the_loaded_libggml_is_described_from_its_own_report() -> None:
    import llama_cpp  # llama-cpp-python's own view of the same libllama

    import pytest_bitnet as bn
    from pytest_bitnet.bridge.llama import system_info

    info = system_info(LLAMA.libllama)
    assert info == llama_cpp.llama_print_system_info().decode()
    caps = bn.capabilities(backend="llama")  # the adapter reads ggml's feature list itself
    assert BUILD is not None and ("AVX2" in BUILD.features) == caps.has_avx2
    assert any(f.startswith("AVX512") for f in BUILD.features) == caps.has_avx512


def test_ci_builds_llama_cpp_as_the_orders_the_reference_follows() -> None:
    # one fact in two places: .ci/run is bash and runs before the package is installed
    assert f'CMAKE_ARGS="{crossval.MATCHED_CMAKE_ARGS}"' in (ROOT / ".ci" / "run").read_text()
