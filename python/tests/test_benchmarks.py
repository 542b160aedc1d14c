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


def test_run_all_quick_report(tmp_path):
    """run_all.py --quick --report writes the markdown report with machine, load, versions and the
    goal summary. --quick skips the Swift-native benchmark (building it takes ~2 minutes); the
    bench_*.py scripts are selected by name ("advantages") to keep this test fast."""
    report = tmp_path / "perf.md"
    res = subprocess.run([sys.executable, "run_all.py", "--quick", "--no-scaling", "--report", str(report),
                          "advantages"], cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = report.read_text()
    for heading in ("## Machine", "load average at start", "load average at end", "## Versions", "## Goals",
                    "## Full output", "bench_advantages.py"):
        assert heading in text, heading
    assert "| numpy |" in text and "| grpo_swift |" in text
    # bench_advantages prints one "goal < 5 us: MET/NOT MET" line: it must be in the summary table.
    goal_rows = [ln for ln in text.splitlines() if ln.startswith("| MET |") or ln.startswith("| **NOT MET** |")]
    assert any("goal < 5 us" in ln for ln in goal_rows), text[:3000]


def test_goal_lines_parser():
    sys.path.insert(0, BENCH)
    try:
        import run_all
    finally:
        sys.path.remove(BENCH)
    out = "x\n  goal >= 10x: MET (12.0x)\n  goal within 1.2x: NOT MET (1.5x)\nMET without the word\n(goal: later)\n"
    assert run_all.goal_lines(out) == [("MET", "goal >= 10x: MET (12.0x)"),
                                       ("NOT MET", "goal within 1.2x: NOT MET (1.5x)")]


def test_scaling_quick(tmp_path):
    png = tmp_path / "scaling.png"
    res = subprocess.run([sys.executable, "scaling.py", "--quick", "--png", str(png)], cwd=BENCH,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "x" in res.stdout and png.stat().st_size > 1000
