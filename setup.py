# The package metadata is in pyproject.toml.  setup.py exists for what
# pyproject cannot say: cffi's build hook (cffi_modules, a setuptools
# keyword) and the standalone reference library.
import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# pytest_bitnet/bridge/_build.py holds the one list of native sources and flags;
# load it by path (importing the package would need the bridge it builds).
_spec = importlib.util.spec_from_file_location("_bitnet_build", Path(__file__).parent / "pytest_bitnet" / "bridge" / "_build.py")
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)
# pytest_bitnet/bridge/llama.py says which native files it compiles at run
# time (it imports only the standard library at module level).
_spec = importlib.util.spec_from_file_location("_bitnet_llama", Path(__file__).parent / "pytest_bitnet" / "bridge" / "llama.py")
_llama = sys.modules["_bitnet_llama"] = importlib.util.module_from_spec(_spec)  # its dataclasses look it up
_spec.loader.exec_module(_llama)


class build_py_with_native(build_py):
    """Also ships the native files the installed package compiles at run time.

    pytest_bitnet/bridge/llama.py builds the llama.cpp adapter on first use,
    against the llama.h of whichever libllama is installed then, so the
    adapter's source and the headers and tables it includes must be in the
    wheel, not only in the source tree (issue 20.1).  They are copied to
    pytest_bitnet/bridge/native/ in the build directory only: an editable
    install keeps reading them from native/ (llama.py's native_dir()).
    """

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        native = Path(__file__).parent / "native"
        target = Path(self.build_lib, "pytest_bitnet", "bridge", _llama.PACKAGED_NATIVE)
        for pattern in _llama.RUNTIME_NATIVE_FILES:
            for src in sorted(native.glob(pattern)):
                dest = target / src.relative_to(native)
                self.mkpath(str(dest.parent))
                self.copy_file(str(src), str(dest))


class build_ext_per_extension(build_ext):
    """Compiles each extension's objects in a directory of its own.

    The bridge and the standalone library compile the same native/*.c with
    different defines; in one shared build_temp the second overwrites the
    first's objects, and under --coverage (.ci/coverage) its .gcno notes too,
    so the bridge's counts would be read against the other build's notes.
    """

    def build_extension(self, ext) -> None:
        shared = self.build_temp
        self.build_temp = str(Path(shared, ext.name))
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = shared


setup(
    cmdclass={"build_py": build_py_with_native, "build_ext": build_ext_per_extension},
    cffi_modules=["pytest_bitnet/bridge/_build.py:ffibuilder"],
    # The reference engine as a plain shared library exporting the socket
    # ABI (bitnet.h): what BITNET_BACKEND=dlopen loads when no other
    # library is configured.  Never imported as a module.
    ext_modules=[
        Extension(
            "pytest_bitnet.bridge._libbitnet",
            sources=_build.native_sources(),
            include_dirs=_build.include_dirs(),
            extra_compile_args=_build.CFLAGS,
            extra_link_args=_build.LDFLAGS,
            # A guest of the bridge that loads it (native/include/
            # bitnet_host.h): it exports bitnet_host_attach, and once
            # attached its deadlines, logging and engine fault points are
            # the bridge's.  It has no fault engine of its own: faults are
            # armed and counted in the bridge.
            define_macros=_build.STANDALONE_DEFINES,
        )
    ],
)
