"""Repository-level test configuration only (fixtures live in tests/conftest.py).

pytester runs the plugin's own tests in real pytest sessions; pytest accepts
``pytest_plugins`` only in the rootdir's conftest, hence here.
"""

pytest_plugins = ["pytester"]
