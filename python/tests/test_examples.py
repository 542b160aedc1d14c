"""Every example script runs (in its smallest setting) and prints what it promises."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_example(name: str, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_demo_prints_advantages():
    out = run_example("demo.py")
    assert "advantage" in out and "frac_reward_zero_std = 0.250" in out
