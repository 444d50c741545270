# The package metadata is in pyproject.toml.  setup.py exists for what
# pyproject cannot say: cffi's build hook (cffi_modules, a setuptools
# keyword) and the standalone reference library.
import importlib.util
from pathlib import Path

from setuptools import Extension, setup

# pytest_bitnet/bridge/_build.py holds the one list of native sources and flags;
# load it by path (importing the package would need the bridge it builds).
_spec = importlib.util.spec_from_file_location("_bitnet_build", Path(__file__).parent / "pytest_bitnet" / "bridge" / "_build.py")
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

setup(
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
