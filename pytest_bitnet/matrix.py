"""``-p pytest_bitnet.matrix``: the name the matrix's pytest items are loaded
by (``python -m fault_inject matrix -n N`` passes it); they live in
:mod:`pytest_bitnet.plugin.matrix`."""

from .plugin.matrix import *  # noqa: F401,F403
from .plugin.matrix import MatrixCell, MatrixCells, pytest_addoption, pytest_configure, pytest_make_collect_report  # noqa: F401
