"""Group advantages: per-call overhead at N=8 and throughput at N=1M, G=16.

Anchor: a vectorised numpy implementation of the same maths (nanmean / Bessel nanstd per
group), measured in the same run. Ratios > 1 mean grpo_swift is faster.
    python python/benchmarks/bench_advantages.py [--quick]
"""
from __future__ import annotations

import numpy as np

import grpo_swift
from grpo_swift import _native
from _harness import machine, median_time, quick, table


def numpy_group_advantages(r: np.ndarray, g: int) -> np.ndarray:
    x = r.reshape(-1, g)
    mean = np.nanmean(x, axis=1, keepdims=True)
    count = np.sum(~np.isnan(x), axis=1, keepdims=True)
    var = np.nansum((x - mean) ** 2, axis=1, keepdims=True) / np.maximum(count - 1, 1)
    std = np.where(count > 1, np.sqrt(var), np.nan)
    return np.nan_to_num((x - mean) / (std + 1e-4), nan=0.0).ravel()


def main() -> None:
    print("bench_advantages:", machine())
    rng = np.random.default_rng(0)

    # Per-call overhead: N = 8, G = 8.
    small = rng.normal(size=8)
    out = [np.empty(8) for _ in range(3)]
    zero = np.empty(8, dtype=bool)
    small2 = small.reshape(8, 1)
    inner = 200 if quick() else 20000
    t_api = median_time(lambda: grpo_swift.group_advantages(small, 8), inner=inner)
    t_native = median_time(lambda: _native.group_advantages(small2, None, 8, 0, 0, *out, zero), inner=inner)
    t_np = median_time(lambda: numpy_group_advantages(small, 8), inner=inner)
    table("per-call overhead, N=8, G=8 (goal: grpo_swift.group_advantages under 5 us)", [
        ("numpy reference (anchor)", t_np, ""),
        ("grpo_swift.group_advantages", t_api, "validation + allocation + kernel"),
        ("grpo_swift._native.group_advantages", t_native, "C call with preallocated outputs"),
    ], "numpy reference (anchor)")
    print(f"  goal < 5 us: {'MET' if t_api < 5e-6 else 'NOT MET'} ({t_api * 1e6:.2f} us)")

    # Throughput: N = 1M (2^20), G = 16.
    n = 1 << 20 if not quick() else 1 << 16
    big = rng.normal(size=n)
    big[rng.random(n) < 0.01] = np.nan
    ref = numpy_group_advantages(big, 16)
    got = grpo_swift.group_advantages(big, 16).advantages
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    t_np = median_time(lambda: numpy_group_advantages(big, 16), repeats=5)
    t_api = median_time(lambda: grpo_swift.group_advantages(big, 16), repeats=5)
    t_copy = median_time(lambda: big.copy(), repeats=5)
    table(f"throughput, N={n}, G=16, float64, 1% NaN", [
        ("numpy reference (anchor)", t_np, ""),
        ("grpo_swift.group_advantages", t_api, f"{n / t_api / 1e6:.0f} M rows/s"),
        ("memcopy of the rewards (bandwidth)", t_copy, "lower bound for one pass"),
    ], "numpy reference (anchor)")


if __name__ == "__main__":
    main()
