"""What a regular (non-editable) install contains: setup.py's build_py output.

The full check is .ci/wheel (a wheel in a fresh venv, used from outside the
source tree); this is its fast half, run with the suite: every subpackage and
every native file the installed package compiles at run time (issue 20.1).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
# llama.cpp's own headers come with the libllama the adapter is built against.
_LLAMA_CPP_HEADERS = {"llama.h", "ggml.h", "ggml-backend.h"}


@pytest.fixture(scope="module")
def build_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build_lib")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_subpackage_is_installed(build_lib: Path) -> None:
    for top in ("pytest_bitnet", "fault_inject"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.relative_to(ROOT)
            assert (build_lib / rel).is_file(), f"{rel} is not in a regular install"


def test_the_llama_adapter_and_everything_it_includes_are_installed(build_lib: Path) -> None:
    native = build_lib / "pytest_bitnet" / "bridge" / "native"
    adapter = native / "llama" / "adapter.c"
    assert adapter.is_file(), f"{adapter.relative_to(build_lib)} is not in a regular install"
    # Follow the quoted includes: each must resolve among the shipped files
    # (the adapter is compiled with -I<native>/include, as llama.py does).
    todo, seen = [adapter], set()
    while todo:
        f = todo.pop()
        for name in _INCLUDE.findall(f.read_text()):
            if name in _LLAMA_CPP_HEADERS or name in seen:
                continue
            seen.add(name)
            found = [d / name for d in (f.parent, native / "include") if (d / name).is_file()]
            assert found, f"{f.name} includes {name!r}, which a regular install lacks"
            todo.append(found[0])
    assert {"bitnet.h", "bitnet_host.h", "bitnet_errors.def"} <= seen


def test_the_installed_llama_module_compiles_from_the_installed_files(build_lib: Path) -> None:
    path = build_lib / "pytest_bitnet" / "bridge" / "llama.py"
    spec = importlib.util.spec_from_file_location("_installed_llama", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        assert module.native_dir() == build_lib / "pytest_bitnet" / "bridge" / "native"
        assert module.ADAPTER_SOURCE.is_file()
        assert module.OUR_HEADERS and all(build_lib in h.parents for h in module.OUR_HEADERS)
    finally:
        del sys.modules[spec.name]


def test_the_source_tree_serves_an_editable_install() -> None:
    from pytest_bitnet.bridge import llama

    # No copy inside the checkout: an editable install reads native/ itself.
    assert not (ROOT / "pytest_bitnet" / "bridge" / "native").exists()
    assert llama.native_dir() == ROOT / "native"


def test_the_interposer_sources_and_everything_they_include_are_installed(build_lib: Path) -> None:
    # fault_inject/interpose/build.py compiles native/interpose/ on first use, like the adapter
    native = build_lib / "pytest_bitnet" / "bridge" / "native"
    source = native / "interpose" / "interpose.c"
    assert source.is_file(), f"{source.relative_to(build_lib)} is not in a regular install"
    dirs = [native / d for d in ("interpose", "include", "fault", "common")]  # build.py's INCLUDE_DIRS
    todo, seen = [source], set()
    while todo:
        f = todo.pop()
        for name in _INCLUDE.findall(f.read_text()):
            if name in _LLAMA_CPP_HEADERS or name in seen:
                continue
            seen.add(name)
            found = [d / name for d in (f.parent, *dirs) if (d / name).is_file()]
            assert found, f"{f.name} includes {name!r}, which a regular install lacks"
            todo.append(found[0])
    assert {"llama_points.def", "bitnet_interpose.h", "bn_fault.h", "points.def"} <= seen
