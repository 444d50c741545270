"""fault_inject.interpose against a real shared library that speaks the
interposer's ABI (bitnet_interpose.h): attach through the bridge's host
table, registered points, live counters, the object hook's creation stacks.

The library is built here from a few lines of C: it exports the attach,
counters, hook, real-library and timeout symbols and three llama-like
functions placing registered points, so these tests need neither
llama-cpp-python nor the interposer's build.  Loading it registers points
and adds a counter source for the life of the process, so each test runs in
a child process of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SOURCE = r"""
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bitnet_fault.h"
#include "bitnet_host.h"

#define API __attribute__((visibility("default")))
#define A(x) (1u << BITNET_FAULT_##x)

typedef struct {
    int64_t llama_models, llama_contexts, llama_batches, llama_samplers,
        llama_adapters;
} counters_t;

static const bitnet_host_t *host;
static int32_t first = -1;
static _Atomic int64_t models;
static void (*hook)(void *, const char *, const void *, int);
static void *hook_user;

API int bitnet_interpose_attach(const bitnet_host_t *h)
{
    if (h->size < (int32_t)(offsetof(bitnet_host_t, register_points) +
                            sizeof h->register_points) ||
        !h->register_points)
        return 1; /* BITNET_HOST_DECLINED_FAULTS */
    bitnet_fault_point_t pts[] = {
        {"llama_model_load_from_file", "fail/oom: NULL", BITNET_E_MODEL_LOAD,
         A(FAIL) | A(OOM) | A(DELAY) | A(HANG)},
        {"llama_decode", "fail: -3", BITNET_E_INFERENCE, A(FAIL)},
        {"llama_model_free", "counted", BITNET_E_INTERNAL, 0},
    };
    if (h->register_points(pts, 3, &first))
        return -1;
    host = h;
    return 0;
}

static int point(int k)
{
    struct { int action; int64_t arg; uint64_t hit; } special;
    if (!host || !atomic_load_explicit(host->fault_armed, memory_order_relaxed))
        return 0;
    return host->fault_eval(first + k, &special);
}

API void *llama_model_load_from_file(void)
{
    if (point(0) < 0)
        return NULL;
    void *m = malloc(16);
    models++;
    if (hook)
        hook(hook_user, "llama_models", m, 1);
    return m;
}

API void llama_model_free(void *m)
{
    point(2);
    if (!m)
        return;
    if (hook)
        hook(hook_user, "llama_models", m, 0);
    models--;
    free(m);
}

API int llama_decode(void) { return point(1) < 0 ? -3 : 0; }

API int bitnet_interpose_counters(counters_t *out)
{
    memset(out, 0, sizeof *out);
    out->llama_models = models;
    return 0;
}

API void bitnet_interpose_set_object_hook(
    void (*h)(void *, const char *, const void *, int), void *user)
{
    hook_user = user;
    hook = h;
}

API const char *bitnet_interpose_real_library(void)
{
    return "/nonexistent/libllama.so";
}

API void bitnet_interpose_set_timeout_ns(int64_t ns) { (void)ns; }
"""


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("fake_interposer")
    (d / "fake.c").write_text(SOURCE)
    lib = d / "libllama.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-fvisibility=hidden", f"-I{ROOT / 'native' / 'include'}",
                    str(d / "fake.c"), "-o", str(lib)], check=True)
    return lib


PRELUDE = """
import ctypes, sys
from pathlib import Path
import fault_inject as fi
import pytest_bitnet as bn
from fault_inject import interpose
from pytest_bitnet.bridge import counters

lib = interpose._load(Path(sys.argv[1]))
dll = ctypes.CDLL(sys.argv[1])  # what a binding loading it by path gets: the same, attached copy
dll.llama_model_load_from_file.restype = ctypes.c_void_p
dll.llama_model_free.argtypes = [ctypes.c_void_p]
"""


def run(fake: Path, body: str) -> list[str]:
    # a file, not -c: creation stacks show source lines
    script = fake.parent / f"script_{abs(hash(body))}.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    proc = subprocess.run([sys.executable, str(script), str(fake)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_attached_points_are_in_the_registry_and_fire(fake: Path) -> None:
    out = run(fake, """
        names = [p.name for p in fi.points()]
        print([p.name for p in lib.points], names[-3:] == [p.name for p in lib.points])
        print(sorted(fi.registry.lookup("llama_decode").actions))
        with fi.inject("llama_decode=1*fail") as armed:
            print(dll.llama_decode(), dll.llama_decode())
        print(armed.hits("llama_decode"), armed.fired("llama_decode"))
        with fi.inject("llama_model_load*=oom"):
            print(dll.llama_model_load_from_file())
        try:
            fi.arm("llama_model_free=fail")
        except ValueError as e:
            print("refused", "does not support 'fail'" in str(e))
    """)
    assert out[0] == "['llama_model_load_from_file', 'llama_decode', 'llama_model_free'] True"
    assert out[1] == "['fail', 'off']"
    assert out[2] == "-3 0"  # the interposed function's own failure, then through
    assert out[3] == "2 1"
    assert out[4] == "None"  # NULL
    assert out[5] == "refused True"


def test_interposed_objects_are_live_counters_with_creation_stacks(fake: Path) -> None:
    out = run(fake, """
        counters.track_creation(True)
        assert "llama_models" in counters.LEAK_COUNTERS
        mark = counters.watch()
        base = bn.live_counters()
        model = dll.llama_model_load_from_file()  # the line that made it
        print(bn.live_counters()["llama_models"] - base["llama_models"])
        [rec] = counters.tracked(mark)
        print(rec.what.split(" at ")[0], rec.state, rec.footprint)
        print(rec.stack[-1].line)
        dll.llama_model_free(model)
        print(bn.live_counters()["llama_models"] - base["llama_models"], counters.tracked(mark)[0].state)
        print(counters.delta(base, bn.live_counters()))
    """)
    assert out[0] == "1"
    assert out[1] == "llama model open {'llama_models': 1}"
    assert out[2] == "model = dll.llama_model_load_from_file()  # the line that made it"
    assert out[3] == "0 closed"
    assert out[4] == "{}"


def test_a_leaked_interposed_object_fails_the_leak_check_naming_its_line(fake: Path, tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import ctypes
        from pathlib import Path
        from fault_inject import interpose
        interpose._load(Path({str(fake)!r}))
        DLL = ctypes.CDLL({str(fake)!r})
        DLL.llama_model_load_from_file.restype = ctypes.c_void_p
    """))
    (tmp_path / "test_app.py").write_text(textwrap.dedent("""
        from conftest import DLL
        PARKED = []

        def test_parks_a_model():
            PARKED.append(DLL.llama_model_load_from_file())  # parked in a global

        def test_frees_its_model():
            DLL.llama_model_free.argtypes = [__import__("ctypes").c_void_p]
            DLL.llama_model_free(DLL.llama_model_load_from_file())
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "2 passed, 1 error" in text, text  # the leak check fails the parking test's teardown
    assert "native objects leaked by test_app.py::test_parks_a_model: llama_models +1" in text, text
    assert "llama model at 0x" in text and "(made through the interposing libllama) still open" in text, text
    assert "PARKED.append(DLL.llama_model_load_from_file())  # parked in a global" in text, text


# ---- the real thing: llama-cpp-python through the interposer built by build.py -----------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'pytest-bitnet[llama]')")
    from pytest_bitnet.testing.models import make_tiny_model

    path = tmp_path_factory.mktemp("interpose_e2e") / "tiny-bitnet-tq2_0.gguf"
    make_tiny_model(path, arch="bitnet", weight_type="tq2_0")
    return path


def run_script(tmp_path: Path, body: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    script = tmp_path / f"script_{abs(hash(body))}.py"
    script.write_text(textwrap.dedent(body))
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def test_llama_cpp_python_runs_through_the_interposer_with_faults_and_counters(tiny_model: Path, tmp_path: Path) -> None:
    out = run_script(tmp_path, """
        import gc, os, sys
        import fault_inject as fi
        import pytest_bitnet as bn
        from fault_inject import interpose
        from pytest_bitnet.bridge import counters

        it = interpose.enable()
        print(interpose.enable() is it, it.real_library == interpose.find_real(), os.environ["LLAMA_CPP_LIB_PATH"] == str(it.directory))
        base = bn.live_counters()
        import llama_cpp
        from llama_cpp import Llama
        print(llama_cpp.llama_cpp._lib._name == str(it.library))
        llm = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
        print(counters.delta(base, bn.live_counters()))
        with fi.inject("llama_decode=fail") as armed:
            try:
                llm("hello", max_tokens=4)
                print("no error")
            except RuntimeError as e:
                print("RuntimeError:", e)
        print(armed.hits("llama_decode"), armed.fired("llama_decode"))
        print(len(llm("hello", max_tokens=4)["choices"][0]["text"]) > 0)
        llm.close()
        print({k: v for k, v in counters.delta(base, bn.live_counters()).items() if k != "llama_samplers"})
        del llm
        gc.collect()
        print(counters.delta(base, bn.live_counters()))
    """, str(tiny_model))
    assert out[0] == "True True True"  # idempotent; the real library found; llama-cpp-python pointed at the copy
    assert out[1] == "True"  # llama-cpp-python loaded the interposer
    assert out[2] == "{'llama_models': 1, 'llama_contexts': 1, 'llama_batches': 1}"
    assert out[3] == "RuntimeError: llama_decode returned -3"  # llama-cpp-python's own error for a failed decode
    assert out[4] == "1 1"
    assert out[5] == "True"  # disarmed: the same Llama works
    # close() frees model, context and batch; the sampler chain of the last
    # completion lives until the Llama object goes (llama-cpp-python's own doing)
    assert out[6] == "{}"
    assert out[7] == "{}"


def test_enable_refuses_when_llama_cpp_was_imported_first(tiny_model: Path, tmp_path: Path) -> None:
    out = run_script(tmp_path, """
        import llama_cpp
        from fault_inject import interpose
        try:
            interpose.enable()
        except interpose.InterposeError as e:
            print(e)
        print(interpose.active())
    """)
    assert "llama_cpp was imported before interposition could be enabled: it loaded " in out[0]
    assert "libllama.so" in out[0] and "Call fault_inject.interpose.enable() before anything imports llama_cpp" in out[0]
    assert "pytest --bitnet-interpose=llama" in out[0] and "python -m fault_inject run --interpose=llama" in out[0]
    assert out[1] == "None"


def test_find_real_uses_the_users_lib_path_not_the_copy(tiny_model: Path, tmp_path: Path) -> None:
    out = run_script(tmp_path, """
        import os, subprocess, sys
        from fault_inject import interpose
        real = interpose.find_real()
        os.environ["LLAMA_CPP_LIB_PATH"] = str(real.parent)  # the user's own setting
        it = interpose.enable()
        print(os.environ["LLAMA_CPP_LIB_PATH"] == str(it.directory))
        # a child (an xdist worker, a program run by fault_inject run) inherits the copy's path
        child = subprocess.run([sys.executable, "-c", "from fault_inject import interpose; print(interpose.find_real())"],
                               capture_output=True, text=True, check=True).stdout.strip()
        print(child == str(real))
        interpose.disable()
        print(os.environ["LLAMA_CPP_LIB_PATH"] == str(real.parent), "BITNET_INTERPOSE_USER_LIB_PATH" in os.environ)
        os.environ["LLAMA_CPP_LIB_PATH"] = "/nonexistent"
        try:
            interpose.find_real()
        except interpose.InterposeError as e:
            print(e)
    """)
    assert out[0] == "True"
    assert out[1] == "True"
    assert out[2] == "True False"
    assert "LLAMA_CPP_LIB_PATH=/nonexistent holds no libllama.so" in out[3]


def test_the_command_line_lists_and_runs_with_interposed_points(tiny_model: Path, tmp_path: Path) -> None:
    listing = subprocess.run([sys.executable, "-m", "fault_inject", "points", "--interpose=llama"],
                             capture_output=True, text=True, timeout=600)
    assert listing.returncode == 0, listing.stderr
    head, *rows = listing.stdout.splitlines()
    assert "interposed llama points" in head and "llama_*=ACTION arms every one that performs ACTION" in head
    names = {r.split()[0] for r in rows if r and not r.startswith(" ")}
    assert {"llama_decode", "llama_model_load_from_file", "llama_tokenize", "llama_init_from_model"} <= names
    assert "tokenize.fill" not in names  # the bridge's own points are not interposed ones

    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import sys
        from llama_cpp import Llama
        llm = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
        try:
            llm("hello", max_tokens=4)
            print("completed")
        except RuntimeError as e:
            print("RuntimeError:", e)
        llm.close()
    """))
    proc = subprocess.run([sys.executable, "-m", "fault_inject", "run", "--interpose=llama", "--spec", "llama_decode=fail",
                           str(app), str(tiny_model)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "RuntimeError: llama_decode returned -3"
    assert "fault_inject: llama_decode=fail" in proc.stderr and "llama_decode: 1 hits, 1 fired" in proc.stderr, proc.stderr

    # without --interpose the spec names an unknown point: refused, not silently inert
    plain = subprocess.run([sys.executable, "-m", "fault_inject", "run", "--spec", "llama_decode=fail", str(app), str(tiny_model)],
                           capture_output=True, text=True, timeout=600)
    assert plain.returncode == 2 and "unknown fault point 'llama_decode'" in plain.stderr, plain.stderr


def test_bitnet_interpose_lets_bitnet_inject_name_interposed_points(tiny_model: Path, tmp_path: Path) -> None:
    # any program importing fault_inject honours BITNET_INJECT; a spec naming
    # llama_* points needs the interposer attached first: BITNET_INTERPOSE
    app = """
        import sys
        import fault_inject
        from llama_cpp import Llama
        llm = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
        try:
            llm("hello", max_tokens=4)
            print("completed")
        except RuntimeError as e:
            print("RuntimeError:", e)
        llm.close()
    """
    out = run_script(tmp_path, app, str(tiny_model), env={"BITNET_INTERPOSE": "llama", "BITNET_INJECT": "llama_decode=fail"})
    assert out == ["RuntimeError: llama_decode returned -3"]
    out = run_script(tmp_path, app, str(tiny_model), env={"BITNET_INTERPOSE": "none", "BITNET_INJECT": "tokenize.fill=fail"})
    assert out == ["completed"]  # nothing interposed: the bridge's points are not on llama-cpp-python's path


def test_the_bridges_llama_backend_keeps_the_real_library_in_interposed_children(tiny_model: Path, tmp_path: Path) -> None:
    # an xdist worker (or a program fault_inject run starts) inherits the
    # copy's LLAMA_CPP_LIB_PATH: the bridge's own llama backend must still
    # link the real libllama, not build an adapter against the interposer
    out = run_script(tmp_path, """
        import os, subprocess, sys
        from fault_inject import interpose
        it = interpose.enable()
        child = subprocess.run([sys.executable, "-c", "\\n".join([
            "import sys, pytest_bitnet as bn",
            "from pytest_bitnet.bridge import llama",
            "print(llama.status().libllama)",
            "s = bn.BitnetSession.create(sys.argv[1], backend='llama')",
            "print(s.backend_info)",
            "s.close()",
        ]), sys.argv[1]], capture_output=True, text=True)
        print(child.returncode, child.stdout.splitlines()[:1] == [str(it.real_library)], child.stderr[-300:].replace("\\n", " "))
        interpose.disable()
        print("BITNET_LLAMA_LIB_PATH" in os.environ)
    """, str(tiny_model))
    assert out[0].startswith("0 True"), out
    assert out[1] == "False"
