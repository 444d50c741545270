"""Importing the package or its plugin loads nothing native (issue: plugin part 1)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_plugin_import_loads_no_native_code() -> None:
    code = (
        "import sys, pytest_bitnet, pytest_bitnet.plugin\n"
        "heavy = [m for m in ('pytest_bitnet.bridge._bridge', 'numpy', 'gguf') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BITNET_INJECT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
