"""``pytest_bitnet.errors``: the public path of the error taxonomy, which
lives in :mod:`pytest_bitnet.bridge.errors` (the layer that raises it)."""

from .bridge.errors import *  # noqa: F401,F403
from .bridge.errors import __all__  # noqa: F401
