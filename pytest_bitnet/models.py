"""``pytest_bitnet.models``: the public path of the model generator, which
lives in :mod:`pytest_bitnet.testing.models`."""

from .testing.models import *  # noqa: F401,F403
from .testing.models import __all__, cached_tiny_model, make_tiny_model  # noqa: F401
