"""Runs every benchmark (python/benchmarks/bench_*.py) in one go and prints their reports.

    python python/benchmarks/run_all.py [--quick] [name ...]
Each benchmark prints its own ratio tables against the anchors it measures in the same run.
--quick runs each with tiny sizes and few repeats: it checks the harness, not the speed.
Exit status is non-zero when a benchmark fails.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if names:
        scripts = [s for s in scripts if any(n in os.path.basename(s) for n in names)]
    failed = []
    for script in scripts:
        name = os.path.basename(script)
        print(f"\n{'=' * 100}\n{name}{' (quick)' if quick else ''}\n{'=' * 100}", flush=True)
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, script, *(["--quick"] if quick else [])], cwd=HERE)
        print(f"[{name}: exit {res.returncode}, {time.perf_counter() - t0:.1f} s]", flush=True)
        if res.returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nFAILED benchmarks: {', '.join(failed)}")
        return 1
    print(f"\nall {len(scripts)} benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
