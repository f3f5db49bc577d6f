"""A worker yields the CPU to the app and the CLI: it lowers its own priority (KDCORE_WORKER_NICE)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "import os; from kdcore.worker import _yield_cpu; before = os.nice(0); _yield_cpu(); print(os.nice(0) - before)"


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no os.nice on this platform")
@pytest.mark.parametrize("setting, expected", [(None, 10), ("3", 3), ("0", 0), ("not a number", 10)])
def test_a_worker_lowers_its_priority_by_the_setting(setting, expected, kd_home):
    env = {k: v for k, v in os.environ.items() if k != "KDCORE_WORKER_NICE"}
    if setting is not None:
        env["KDCORE_WORKER_NICE"] = setting
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    before = os.nice(0)
    assert int(out.stdout.split()[-1]) == min(expected, 19 - before)  # niceness stops at 19
