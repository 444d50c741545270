"""The interposing libllama itself (native/interpose/, fault_inject/interpose/build.py).

Below the Python API: the library built for the installed llama-cpp-python's
libllama, checked with nm, driven unattached by llama-cpp-python (in a
subprocess: llama.cpp's globals and the loaded library stay there), and
driven attached by tests/interpose/host_program.c, whose host table plays
the bridge's engine (fail / oom as a BITNET_E_* code, grow / delay / hang
handed back), so each kind's actions are checked in llama.cpp's own terms.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fault_inject.interpose import build
from pytest_bitnet.bridge.llama import find_include
from pytest_bitnet.testing.models import make_tiny_model

from ..native_builds import SANITIZED, build_fail_calloc

HERE = Path(__file__).resolve().parent
NATIVE = Path(__file__).resolve().parents[2] / "native"


def _real_library() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llama-cpp-python is not installed (pip install 'pytest-bitnet[llama]')")
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libllama.so"
    if not lib.is_file():
        pytest.skip(f"llama-cpp-python has no {lib}")
    return lib.resolve()


@pytest.fixture(scope="module")
def real() -> Path:
    return _real_library()


@pytest.fixture(scope="module")
def built(real: Path) -> Path:
    return build.build_for(real)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("interpose") / "tiny-bitnet-tq2_0.gguf"
    make_tiny_model(path, arch="bitnet", weight_type="tq2_0")
    return path


def _functions(lib: Path) -> set[str]:
    return set(build.exported_functions(lib))


# ---- the build ----------------------------------------------------------------------------------


def test_exports_every_function_of_the_real_library(real: Path, built: Path) -> None:
    mine = _functions(built / "libllama.so")
    missing = _functions(real) - mine
    assert not missing, f"the interposer lacks {len(missing)} functions, e.g. {sorted(missing)[:5]}"
    assert mine - _functions(real) == {
        "bitnet_interpose_attach",
        "bitnet_interpose_counters",
        "bitnet_interpose_real_library",
        "bitnet_interpose_set_object_hook",
        "bitnet_interpose_set_timeout_ns",
    }


def test_every_wrapped_function_is_one_of_the_real_library(real: Path) -> None:
    # a row naming a function the library does not export would wrap nothing (and fail to resolve)
    assert set(build.interposed_functions()) <= _functions(real)


def test_directory_layout(real: Path, built: Path) -> None:
    assert os.readlink(built / "libllama.so.0") == "libllama.so"
    for companion in real.parent.glob("lib*.so*"):
        if not companion.name.startswith("libllama.so"):
            assert (built / companion.name).resolve() == companion.resolve(), companion.name
    data = (built / "data-symbols.txt").read_text().splitlines()[1:]
    # C++ typeinfo / vtables / guard variables and unicode.cpp's tables: listed, not exported (a jump
    # cannot forward data); none is part of llama.h's C API
    assert data and not [name for name in data if name.startswith("llama_")]
    assert not set(data) & _functions(built / "libllama.so")


def test_links_the_ggml_libraries_the_real_library_links(real: Path, built: Path) -> None:
    # A binding that reaches ggml_* through libllama's handle (dlsym searches an
    # object and its dependencies) finds them through the interposer as through
    # the real library, and both use one copy of libggml.
    companions = [n for n in build.needed_libraries(real) if n.startswith("libggml")]
    assert companions, build.needed_libraries(real)
    assert set(companions) <= set(build.needed_libraries(built / "libllama.so"))
    probe = textwrap.dedent(f"""
        import ctypes, sys
        lib = ctypes.CDLL({str(built / "libllama.so")!r})
        lib.ggml_time_us.restype = ctypes.c_int64
        print(lib.ggml_time_us() > 0)
        maps = open("/proc/self/maps").read()
        print(len({{line.split()[-1] for line in maps.splitlines() if "libggml-base.so" in line}}))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "1"]


def test_cached_build_is_reused(real: Path, built: Path) -> None:
    assert build.build_for(real) == built
    assert build.build_for(real.parent) == built


def test_missing_compiler_is_a_clear_error(real: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_INTERPOSE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(build.InterposeBuildError, match="could not run the C compiler .*install gcc or set CC"):
        build.build_for(real)


def test_missing_header_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "lib" / "libllama.so"
    fake.parent.mkdir()
    fake.write_bytes(b"")
    with pytest.raises(build.InterposeBuildError, match="no llama.h/ggml.h found beside .*<site-packages>/include"):
        build.build_for(fake)


def test_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(build.InterposeBuildError, match="no libllama at .*pass the path of the real libllama.so"):
        build.build_for(tmp_path)


# ---- the build refusing real broken inputs (no llama-cpp-python needed) --------------------------
#
# Each "real libllama" here is a real file beside a real include/ (find_include's ../include), built
# or written in the test: a shared library exporting llama-like functions, or a file that is none.

_FAKE_LLAMA = """
int llama_backend_init(void) { return 0; }
int llama_max_devices(void) { return 1; }
"""

# gas accepts a quoted symbol name, so a library can export a name no C identifier (and no
# unquoted trampoline label) can spell
_ODD_EXPORT = """
.text
.globl "llama-odd"
.type "llama-odd", @function
"llama-odd":
    ret
.size "llama-odd", .-"llama-odd"
.section .note.GNU-stack,"",@progbits
"""


def _fake_llama(root: Path, *, odd_export: bool = False, library: bytes | None = None) -> Path:
    """root/lib/libllama.so (compiled, or `library`'s bytes) and root/include/{llama,ggml}.h.

    The headers are empty: a llama.h of no release, against which the interposer cannot compile."""
    (root / "include").mkdir(parents=True)
    for h in ("llama.h", "ggml.h"):
        (root / "include" / h).write_text("/* not llama.cpp's header */\n")
    lib = root / "lib" / "libllama.so"
    lib.parent.mkdir()
    if library is not None:
        lib.write_bytes(library)
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (root / "fake.c").write_text(_FAKE_LLAMA)
    sources = [str(root / "fake.c")]
    if odd_export:
        (root / "odd.S").write_text(_ODD_EXPORT)
        sources.append(str(root / "odd.S"))
    subprocess.run([cc, "-shared", "-fPIC", *sources, "-o", str(lib)], check=True)
    return lib


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("BITNET_INTERPOSE_CACHE", str(d))
    return d


def _nothing_built(cache: Path) -> None:
    # a failed build leaves no half directory for a later run to take as built
    assert not cache.exists() or not any(cache.iterdir()), sorted(cache.iterdir())


@pytest.mark.parametrize("tool, env", [("nm", "NM"), ("readelf", "READELF")])
def test_a_missing_binutils_tool_is_a_clear_error(tool: str, env: str, tmp_path: Path, cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lib = _fake_llama(tmp_path / "llama")
    found = {t: shutil.which(t) for t in ("nm", "readelf")}
    if None in found.values():
        pytest.skip("binutils is not installed here")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no binutils on it
    for t, e in (("nm", "NM"), ("readelf", "READELF")):
        if t == tool:
            monkeypatch.delenv(e, raising=False)
        else:
            monkeypatch.setenv(e, str(found[t]))  # the other tool found through its variable
    with pytest.raises(build.InterposeBuildError) as exc:
        build.build_for(lib)
    msg = str(exc.value)
    assert f"no '{tool}' on PATH" in msg and str(lib) in msg
    assert f"install binutils (apt-get install binutils) or set {env} to its path" in msg
    _nothing_built(cache)


def test_a_file_that_is_no_shared_library_is_a_clear_error(tmp_path: Path, cache: Path) -> None:
    lib = _fake_llama(tmp_path / "llama", library=b"#!/bin/sh\necho this is not a library\n")
    with pytest.raises(build.InterposeBuildError) as exc:
        build.build_for(lib)
    msg = str(exc.value)
    assert f"'nm -D --defined-only {lib}' failed (" in msg and "is it a shared library?" in msg
    assert "no output" not in msg  # nm's own words are quoted
    _nothing_built(cache)


def test_a_library_exporting_a_name_no_trampoline_can_carry_is_refused(tmp_path: Path, cache: Path) -> None:
    lib = _fake_llama(tmp_path / "llama", odd_export=True)
    assert "llama-odd" in build.exported_functions(lib)
    with pytest.raises(build.InterposeBuildError, match=r"exports names no trampoline can carry: \['llama-odd'\]") as exc:
        build.build_for(lib)
    assert str(lib) in str(exc.value)
    _nothing_built(cache)


def test_a_failing_compile_quotes_the_command_and_the_compilers_words(tmp_path: Path, cache: Path) -> None:
    # headers that are not llama.cpp's: the wrappers' types and prototypes are unknown
    lib = _fake_llama(tmp_path / "llama")
    with pytest.raises(build.InterposeBuildError) as exc:
        build.build_for(lib)
    msg = str(exc.value)
    assert msg.startswith("compiling the interposing libllama failed (")
    assert str(build.SOURCE) in msg and f"-I{tmp_path / 'llama' / 'include'}" in msg  # the command, as run
    shown = msg.split(":\n", 1)[1].splitlines()
    assert "error" in shown[0] and len(shown) <= 15  # the compiler's words, from its first error
    _nothing_built(cache)


def test_trampolines_for_aarch64() -> None:
    asm = build.trampolines_asm(["llama_a", "llama_b"], machine="aarch64")
    assert "adrp x16, bn_ip_slots+8" in asm and "br x16" in asm
    with pytest.raises(build.InterposeBuildError, match="supports x86_64 and aarch64"):
        build.trampolines_asm(["f"], machine="riscv64")


# ---- forwarding, unattached: llama-cpp-python on the interposer vs on the real library -----------

_APP = r"""
import json, sys
import llama_cpp as L
from llama_cpp import Llama
out = {"system_info": L.llama_print_system_info().decode(), "max_devices": L.llama_max_devices()}
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False, logits_all=True)
tokens = llm.tokenize(b"hello world, the quick brown fox")
llm.eval(tokens)
out["tokens"] = tokens
out["logits"] = [float(x) for x in llm.scores[len(tokens) - 1][:64]]
out["detok"] = llm.detokenize(tokens).decode()
out["completion"] = llm("hello", max_tokens=6, temperature=0.0)["choices"][0]["text"]
out["lib"] = L.llama_cpp._lib._name
llm.close()
print(json.dumps(out))
"""


def _run_app(model: Path, lib_dir: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    if lib_dir is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    proc = subprocess.run([sys.executable, "-c", _APP, str(model)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_llama_cpp_python_through_the_interposer_gets_identical_results(built: Path, model: Path) -> None:
    real = _run_app(model, None)
    interposed = _run_app(model, built)
    assert interposed.pop("lib") == str(built / "libllama.so")
    assert real.pop("lib") != str(built / "libllama.so")
    assert interposed == real  # every value, logits bit for bit: the same code ran


# ---- attached: each kind's actions --------------------------------------------------------------


@pytest.fixture(scope="module")
def host_program(real: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    include = find_include(real.parent)
    assert include is not None
    exe = tmp_path_factory.mktemp("interpose-host") / "host_program"
    cmd = [cc, "-std=gnu11", "-O1", "-Wall", "-Wno-unused-parameter", *(f"-I{d}" for d in build.INCLUDE_DIRS),
           f"-I{include}", str(HERE / "host_program.c"), "-ldl", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


def _drive(host_program: Path, built: Path, model: Path, point: str = "-", action: str = "fail", arg: int = 0,
           *, attach: int = 1, timeout_ms: int = 0, env: dict[str, str] | None = None) -> dict[str, str]:
    cmd = [str(host_program), str(built / "libllama.so"), str(model), str(attach), point, action, str(arg), str(timeout_ms)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        out[key] = value if key not in out else out[key] + "\n" + value
    assert "bad_id" not in out
    return out


BASELINE = "0 0 0 0 0"


def test_unattached_wrappers_forward_and_count(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model, attach=0)
    assert out["model"] == out["vocab"] == out["context"] == out["batch"] == "1"
    assert int(out["tokenize"]) > 0 and int(out["piece"]) > 0 and int(out["detokenize"]) > 0
    assert out["meta_text"] == "bitnet"
    assert out["decode"] == "0"
    assert out["user_abort_polls"] == "1"  # the caller's abort callback is chained, not replaced
    assert out["counters_live"] == "1 1 1 2 0"
    assert out["counters_chained"] == "1 1 1 1 0"  # a sampler in a chain is the chain's
    assert out["counters_end"] == BASELINE
    assert out["hook"].count("made") == 5 and out["hook"].count("freed") == 5
    # a context llama.cpp refuses (n_batch = n_ubatch = 0): NULL, as from the real one, nothing counted
    assert out["context_refused"] == "1" and out["counters_refused"] == "1 1 0 0 0"


@pytest.fixture(scope="module")
def fail_calloc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fail_calloc(tmp_path_factory.mktemp("fail_calloc"))


@pytest.mark.skipif(SANITIZED, reason="ASan's preloaded runtime owns calloc")
@pytest.mark.parametrize("attach", [0, 1])
def test_a_context_the_interposer_cannot_record_is_still_made_counted_and_freed(host_program: Path, built: Path,
                                                                                model: Path, fail_calloc: Path,
                                                                                attach: int) -> None:
    # out of memory for the wrapper's record (the abort path for delay / hang):
    # the caller still gets the context it asked for, as llama.cpp made it
    env = {**os.environ, "LD_PRELOAD": " ".join(p for p in (os.environ.get("LD_PRELOAD"), str(fail_calloc)) if p)}
    out = _drive(host_program, built, model, "-", "oom_record", attach=attach, env=env)
    assert out["context_unrecorded"] == "1 1"  # made, and the failed allocation was the wrapper's
    assert out["counters_unrecorded"] == "1 2 0 0 0"  # counted like any other
    assert out["counters_end"] == BASELINE  # and its free balanced


def test_attach_refuses_a_table_it_cannot_read_and_counters_need_an_output(host_program: Path, built: Path,
                                                                           model: Path) -> None:
    from pytest_bitnet.bridge._native import lib

    out = _drive(host_program, built, model)
    mismatch = str(int(lib.BITNET_E_ABI_MISMATCH))
    # NULL, another ABI, a table shorter than last_error: refused, and nothing kept of them
    assert out["attach_refused"] == f"{mismatch} {mismatch} {mismatch}"
    assert out["counters_null"] == str(int(lib.BITNET_E_INVALID_ARG))
    assert out["attach"] == "0" and out["decode"] == "0"  # the good table attaches afterwards


def test_attach_registers_every_point_once(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model)
    assert out["attach"] == "0"
    points = [r for r in build.interposed_functions() if r not in {"llama_set_abort_callback", "llama_sampler_chain_add", "llama_sampler_chain_remove"}]
    assert int(out["points"]) == len(points)
    assert out["decode"] == "0" and out["counters_end"] == BASELINE  # attached, nothing armed: forwards


@pytest.mark.parametrize(
    ("point", "action", "arg", "key", "expected"),
    [
        # PTR: NULL, nothing counted
        ("llama_model_load_from_file", "fail", 0, "model", "0"),
        ("llama_model_get_vocab", "fail", 0, "vocab", "0"),
        ("llama_init_from_model", "oom", 0, "context", "0"),
        ("llama_sampler_init_greedy", "fail", 0, "sampler", "1 0"),
        # BATCH: the arrays NULL
        ("llama_batch_init", "oom", 0, "batch", "0"),
        # STATUS: the bridge's code in llama_decode's terms
        ("llama_decode", "fail", 0, "decode", "-3"),
        ("llama_decode", "oom", 0, "decode", "-2"),
        ("llama_decode", "fail", -1, "decode", "-1"),
        ("llama_decode", "fail", -8, "decode", "1"),
        ("llama_decode", "timeout", 0, "decode", "2"),
        # SIZE: llama.cpp's short-buffer forms, and failure values
        ("llama_tokenize", "grow", 8, "tokenize", str(-(32 + 8))),
        ("llama_tokenize", "fail", 0, "tokenize", str(-(2**31))),
        ("llama_token_to_piece", "grow", 3, "piece", str(-(32 + 3))),
        ("llama_detokenize", "grow", 1, "detokenize", str(-(64 + 1))),
        ("llama_chat_apply_template", "grow", 5, "chat", str(8 + 5)),
        ("llama_chat_apply_template", "fail", 0, "chat", "-1"),
        ("llama_model_meta_val_str", "grow", 2, "meta", str(256 - 1 + 2)),
        ("llama_model_meta_val_str", "fail", 0, "meta", "-1"),
    ],
)
def test_actions_in_llama_cpp_terms(host_program: Path, built: Path, model: Path, point: str, action: str, arg: int,
                                    key: str, expected: str) -> None:
    out = _drive(host_program, built, model, point, action, arg)
    assert out[key] == expected, out
    assert out["hits"] == "1"
    assert out["counters_end"] == BASELINE  # a failed constructor counts nothing; every free balanced


def test_failed_metadata_read_clears_the_buffer(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model, "llama_model_meta_val_str", "fail")
    assert out["meta_text"] == ""


def test_decode_hang_ends_at_the_deadline_through_the_abort_callback(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model, "llama_decode", "hang", timeout_ms=200)
    assert out["decode"] == "2"  # llama.cpp's own "aborted"
    # an honest bound on the deadline: not before it, and not stuck past it
    assert 200 <= float(out["decode_ms"]) < 200 + 2000
    assert out["counters_end"] == BASELINE


def test_decode_delay_runs_inside_the_decode_and_then_succeeds(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model, "llama_decode", "delay", 150, timeout_ms=5000)
    assert out["decode"] == "0"
    assert float(out["decode_ms"]) >= 150
    assert out["user_abort_polls"] == "1"


def test_decode_delay_past_the_deadline_aborts(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model, "llama_decode", "delay", 5000, timeout_ms=100)
    assert out["decode"] == "2"
    assert 100 <= float(out["decode_ms"]) < 100 + 2000


def test_hang_without_a_deadline_is_refused(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model, "llama_decode", "hang", timeout_ms=0)
    assert out["decode"] == "-3"  # fails in its own terms instead of never returning
    assert "refusing to hang in llama_decode with no deadline" in out["log"]


def test_constructor_hang_returns_null_at_the_deadline(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model, "llama_init_from_model", "hang", timeout_ms=100)
    assert out["context"] == "0"
    assert out["counters_end"] == BASELINE


def test_attach_is_idempotent_and_serves_one_bridge(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model)
    assert (out["attach"], out["attach_again"], out["attach_other"]) == ("0", "0", str(-1))
    assert "already attached to another bridge" in out["log"]


def test_a_bridge_without_register_points_leaves_the_points_inert(host_program: Path, built: Path, model: Path) -> None:
    out = _drive(host_program, built, model, "llama_decode", "fail", attach=2)
    assert out["attach"] == "1"  # BITNET_HOST_DECLINED_FAULTS: attached for logging, no points
    assert out["points"] == "0" and out["decode"] == "0" and out["hits"] == "0"
    assert "llama_* points stay inert" in out["log"]


# ---- attached to the bridge's own registry (ireg's register_points) -------------------------------

_REGISTRY = r"""
import json, sys
import fault_inject as fi
from fault_inject import interpose
interpose.library_for(sys.argv[1])
out = {"points": {p.name: sorted(p.actions) for p in fi.points() if p.name.startswith("llama_")}}
try:
    fi.arm("llama_token_to_piece=fail")
except Exception as exc:
    out["refused"] = f"{type(exc).__name__}: {exc}"
armed = fi.arm("llama_*=off")
out["armed"] = len(armed.points)
armed.disarm()
with fi.inject("llama_*=fail") as armed:
    out["armed_fail"] = sorted(armed.points)
print(json.dumps(out))
"""


def test_points_in_the_bridge_registry_with_their_actions(real: Path) -> None:
    # a subprocess: registered points stay for the life of the process
    proc = subprocess.run([sys.executable, "-c", _REGISTRY, str(real)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    points = out["points"]
    wrap_only = {"llama_set_abort_callback", "llama_sampler_chain_add", "llama_sampler_chain_remove"}
    assert set(points) == set(build.interposed_functions()) - wrap_only
    assert out["armed"] == len(points)  # llama_* arms them all
    # ... and with an action, those that perform it: every function that can fail, not the frees
    assert out["armed_fail"] == sorted(n for n, actions in points.items() if "fail" in actions)
    assert {"llama_decode", "llama_model_load_from_file", "llama_tokenize"} <= set(out["armed_fail"])
    assert not {"llama_free", "llama_model_free", "llama_batch_free"} & set(out["armed_fail"])
    assert "grow" in points["llama_tokenize"] and "fail" in points["llama_tokenize"]
    assert "fail" not in points["llama_free"] and "delay" in points["llama_free"]  # a free cannot fail
    assert "grow" not in points["llama_decode"] and {"fail", "oom", "hang"} <= set(points["llama_decode"])
    # an action a function cannot perform is refused when the spec is read
    assert "'llama_token_to_piece' does not support 'fail'" in out["refused"]


_DECODE_HANG = r"""
import json, sys, time
import fault_inject as fi
from fault_inject import interpose
interpose.enable()
interpose.set_timeout(0.3)
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
tokens = llm.tokenize(b"hello world")
out = {}
for spec in ("llama_decode=hang", "llama_decode=1*delay(200)"):
    llm.reset()
    t0 = time.monotonic()
    with fi.inject(spec):
        try:
            llm.eval(tokens)
            out[spec] = ["ok", time.monotonic() - t0]
        except RuntimeError as exc:
            out[spec] = [str(exc), time.monotonic() - t0]
llm.close()
print(json.dumps(out))
"""


def test_decode_hang_under_the_bridge_engine_is_llama_cpps_abort_at_the_deadline(built: Path, model: Path) -> None:
    # The bridge's engine hands delay / hang of a registered point back to the interposer: the app's
    # thread has no bridge deadline (sleeping there refused the hang: 'llama_decode returned -3').
    proc = subprocess.run([sys.executable, "-c", _DECODE_HANG, str(model)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    message, took = out["llama_decode=hang"]
    assert message == "llama_decode returned 2"  # llama.cpp's own "aborted", through its abort callback
    assert 0.3 <= took < 0.3 + 2.0
    message, took = out["llama_decode=1*delay(200)"]
    assert message == "ok" and took >= 0.2  # spent inside the decode, which then completes


_LESS_USED = r"""
import ctypes, json, os, sys
import fault_inject as fi
from fault_inject import interpose
import pytest_bitnet as bn
interpose.enable()
import llama_cpp as L
out = {}
def live(name):
    return bn.live_counters()[name]
model = L.llama_model_load_from_file(sys.argv[1].encode(), L.llama_model_default_params())
vocab = L.llama_model_get_vocab(model)
before = live("llama_samplers")
# the deprecated lazy grammar sampler: counted like the others (its free is
# wrapped, so an uncounted constructor would take the counter below zero)
smpl = L.llama_sampler_init_grammar_lazy(vocab, b'root ::= "a"', b"root", None, 0, None, 0)
out["made"] = [bool(smpl), live("llama_samplers") - before]
L.llama_sampler_free(smpl)
out["freed"] = live("llama_samplers") - before
with fi.inject("llama_sampler_init_grammar_lazy=fail"):
    out["failed"] = bool(L.llama_sampler_init_grammar_lazy(vocab, b'root ::= "a"', b"root", None, 0, None, 0))
ctx = L.llama_init_from_model(model, L.llama_context_default_params())
path = os.path.join(sys.argv[2], "session.bin")
tokens = (L.llama_token * 1)(1)
with fi.inject("llama_save_session_file=1*fail") as armed:
    out["save"] = [L.llama_save_session_file(ctx, path.encode(), tokens, 1), L.llama_save_session_file(ctx, path.encode(), tokens, 1)]
    out["save_fired"] = armed.fired("llama_save_session_file")
n = ctypes.c_size_t(0)
with fi.inject("llama_load_session_file=fail"):
    out["load"] = L.llama_load_session_file(ctx, path.encode(), tokens, 1, ctypes.byref(n))
L.llama_free(ctx)
L.llama_model_free(model)
out["end"] = {k: v for k, v in bn.live_counters().items() if k.startswith("llama_") and v}
print(json.dumps(out))
"""


def test_deprecated_and_less_used_constructors_are_counted_and_fail(model: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _LESS_USED, str(model), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["made"] == [True, 1] and out["freed"] == 0 and out["failed"] is False
    assert out["save"] == [False, True] and out["save_fired"] == 1
    assert out["load"] is False
    assert out["end"] == {}
