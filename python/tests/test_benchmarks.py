"""The benchmark harness runs (quick mode: tiny sizes; it checks the scripts, not the speed)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.parametrize("script", sorted(os.path.basename(p) for p in glob.glob(os.path.join(BENCH, "bench_*.py"))))
def test_benchmark_runs_quick(script):
    res = subprocess.run([sys.executable, script, "--quick"], cwd=BENCH, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "x" in res.stdout  # every benchmark prints ratios
