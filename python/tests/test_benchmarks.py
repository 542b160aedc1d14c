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


def _run_all():
    sys.path.insert(0, BENCH)
    try:
        import run_all
    finally:
        sys.path.remove(BENCH)
    return run_all


def test_summary_block_rewritten_between_markers(tmp_path):
    """make bench's --readme rewrites only what stands between the bench markers, with the report
    link relative to each file, and refuses a file without markers."""
    run_all = _run_all()
    (tmp_path / "docs").mkdir()
    readme = tmp_path / "README.md"
    guide = tmp_path / "docs" / "guide.md"
    readme.write_text("# t\nbefore\n<!-- bench:begin (generated) -->\nold table\n<!-- bench:end -->\nafter\n")
    guide.write_text("g\n<!-- bench:begin -->\n<!-- bench:end -->\n")
    goals = [("MET", "goal < 5 us: MET (4.06 us)", "bench_advantages.py: per call"),
             ("NOT MET", "goal >= 8x: NOT MET (2.4x)", "bench_torch_loss.py: B=64")]
    extra = "  percall_loss_B1_T8   20.00us   -   -   1.00us   20.00x   19.00us\n"
    body = run_all.summary_markdown(started="2026-12-01", load_start="0.50 0.40 0.30 (1, 5, 15 min)",
                                    load_end="0.60 0.50 0.40 (1, 5, 15 min)", report="docs/performance.md",
                                    goals=goals, extra=extra)
    run_all.write_summaries(body, "docs/performance.md", root=str(tmp_path))
    text = readme.read_text()
    assert text.startswith("# t\nbefore\n<!-- bench:begin (generated) -->\n") and text.endswith(
        "<!-- bench:end -->\nafter\n")
    assert "old table" not in text and "1 of 2 goals met" in text and "**NOT MET**" in text
    assert "](docs/performance.md)" in text and "percall_loss_B1_T8" in text and "0.50 0.40 0.30" in text
    assert "](performance.md)" in guide.read_text()
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        run_all.write_summaries(body, "docs/performance.md", root=str(tmp_path))


def test_repository_docs_have_bench_blocks():
    """README.md and docs/guide.md carry the generated performance block make bench rewrites."""
    run_all = _run_all()
    root = os.path.dirname(os.path.dirname(BENCH))
    for rel in run_all.SUMMARY_FILES:
        with open(os.path.join(root, rel)) as f:
            text = f.read()
        assert text.count(run_all.BEGIN_MARK) == 1 and text.count(run_all.END_MARK) == 1, rel
        assert "goals met in this run" in text, rel
