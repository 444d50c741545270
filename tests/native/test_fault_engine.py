"""The fault engine's own refusals (native/fault/engine.c), in a program
built from the layers below the bridge and through the bridge's control
ABI: what a wrongly placed point or a bad argument gets instead of being
silently ignored."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pytest_bitnet.bridge.abi import ffi, lib

from ..native_builds import build_program

# missing, nan and grow are performed by the site (BN_FAULT_SPECIAL): a
# point that accepts one but is reached through plain BN_FAULT (a placing
# bug) must say so, not return success as if nothing had been armed.
PLAIN_SITE = r"""
#include <stdio.h>

#include "bn_error.h"
#include "bn_fault.h"

int main(void)
{
    bitnet_fault_term_t t = {1.0, 0, BITNET_FAULT_MISSING, 0};
    if (bitnet_fault_arm("dlopen", &t, 1, 0, 0, NULL, NULL, 0))
        return 2;
    int rc = BN_FAULT(DLOPEN);
    printf("%d %s\n", rc, bn_error_message());
    bn_fault_special fs;
    int src = BN_FAULT_SPECIAL(DLOPEN, &fs);
    printf("special %d %d\n", src, fs.action == BITNET_FAULT_MISSING);
    return 0;
}
"""


def test_a_special_action_at_a_plain_site_is_an_internal_error(tmp_path: Path) -> None:
    exe = build_program(tmp_path, PLAIN_SITE, "plain_site")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    plain, special = proc.stdout.splitlines()
    assert plain == (
        f"{lib.BITNET_E_INTERNAL} injected fault at 'dlopen' (missing, hit 1): this site cannot perform 'missing' "
        "(placed with BN_FAULT, not BN_FAULT_SPECIAL): a bug in the bridge, please report it"
    )
    assert special == "special 1 1"  # the same arming, at a site that performs it


def test_remote_points_must_be_registered_here() -> None:
    # refused before anything changes: an isolation worker of another build
    n = lib.bitnet_fault_point_count()
    pts = ffi.new("int32_t[]", [0, n])
    assert lib.bitnet_fault_set_remote(pts, 2, ffi.NULL, ffi.NULL) == lib.BITNET_E_INVALID_ARG
    from pytest_bitnet.bridge.abi import last_error

    assert last_error() == (
        f"bitnet_fault_set_remote: point index {n} is not registered here ({n} points): both processes must run the same build"
    )
    assert lib.bitnet_fault_set_remote(ffi.NULL, 1, ffi.NULL, ffi.NULL) == lib.BITNET_E_INVALID_ARG
    assert f"point index -1 is not registered here ({n} points)" in last_error()
