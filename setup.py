# The package metadata is in pyproject.toml; setup.py exists only because
# cffi's build hook (cffi_modules) is a setuptools keyword.
from setuptools import setup

setup(cffi_modules=["pytest_bitnet/_build.py:ffibuilder"])
