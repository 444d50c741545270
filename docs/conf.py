"""Sphinx configuration of the pytest-bitnet documentation (built by .ci/docs).

Pages are Markdown (MyST).  Every example on them runs while the site builds
(docs/_ext/bitnet_docs.py), and the reference pages are generated from the
code (docs/_ext/bitnet_reference.py), so a page cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "pytest-bitnet"
author = "pytest-bitnet contributors"
copyright = "pytest-bitnet contributors"  # noqa: A001 - Sphinx's name
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # a few docstrings use Google-style sections
    "bitnet_docs",
]
# No intersphinx: the build runs without network (CI reaches only package
# registries), so no inventory of python or pytest could be fetched, and a
# failed fetch is a warning -W turns fatal.

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "**/.ipynb_checkpoints"]

myst_enable_extensions = ["colon_fence", "deflist", "fieldlist", "attrs_inline"]
myst_heading_anchors = 3  # `page.md#a-heading` links resolve (and are checked)

# A reference that resolves nowhere is a warning, hence an error.  Names of
# the standard library and of other packages cannot resolve without their
# inventories (see above): those are accepted as plain text.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(typing|collections|collections\.abc|os|pathlib|enum|types|dataclasses|logging|threading"
               r"|contextlib|warnings|argparse|concurrent\.futures|numpy|numpy\.typing|np|npt|_pytest|pytest"
               r"|pluggy|cffi|gguf|llama_cpp)(\..*)?"),
    # builtins and the typing shorthands autodoc writes bare
    (r"py:.*", r"(None|int|float|str|bytes|bool|object|dict|list|tuple|set|frozenset|type|Exception|BaseException"
               r"|Warning|ValueError|RuntimeError|TimeoutError|MemoryError|AssertionError|LookupError|OSError"
               r"|Any|Callable|Iterator|Iterable|Mapping|Sequence|Final|Literal|Self|TypeVar|T|PathLike"
               r"|ndarray|Path|Item|Config|Parser|FixtureRequest|TempPathFactory)"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}

html_theme = "furo"
html_title = "pytest-bitnet"
html_static_path = ["_static"]
html_css_files = ["bitnet.css"]
html_show_sourcelink = False
pygments_style = "sphinx"
pygments_dark_style = "monokai"
