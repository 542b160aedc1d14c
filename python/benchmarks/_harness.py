"""Tiny timing harness shared by the benchmarks: medians of repeated runs, ratio tables."""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from typing import Callable


def quick() -> bool:
    """--quick (or GRPO_BENCH_QUICK=1): few repeats, to check the harness runs (CI)."""
    import sys
    return "--quick" in sys.argv or os.environ.get("GRPO_BENCH_QUICK") == "1"


def median_time(fn: Callable[[], object], *, repeats: int = 7, inner: int = 1, warmup: int = 1) -> float:
    """Median over `repeats` of the mean time of `inner` back-to-back calls, in seconds."""
    if quick():
        repeats, warmup = min(repeats, 2), min(warmup, 1)
    for _ in range(warmup):
        fn()
    times = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) / inner)
    finally:
        if gc_was:
            gc.enable()
    return statistics.median(times)


def machine() -> str:
    import numpy as np
    try:
        import grpo_swift
        threads = grpo_swift.get_num_threads()
    except Exception:  # pragma: no cover
        threads = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, grpo_swift threads={threads}, numpy {np.__version__}"


def fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:9.2f} us"
    if t < 1:
        return f"{t * 1e3:9.2f} ms"
    return f"{t:9.3f} s "


def table(title: str, rows: list[tuple[str, float, str]], anchor: str) -> None:
    """rows: (name, seconds, note). Prints time and the anchor's time / this time."""
    ref = dict((r[0], r[1]) for r in rows)[anchor]
    print(f"\n{title}")
    print(f"  {'implementation':<38} {'time':>12} {'vs ' + anchor:>24}  note")
    for name, t, note in rows:
        ratio = ref / t if t > 0 else float("inf")
        print(f"  {name:<38} {fmt_time(t):>12} {ratio:>22.2f}x  {note}")
