"""Advantage estimators over explicit group ids: throughput against vectorised numpy anchors.

Anchors (measured in the same run, same maths, float64):
  - RLOO / GRPO over N rows with shuffled int64 group ids: np.unique(return_inverse) + bincount.
  - REINFORCE++ over (N, T): the column-by-column backward return loop (as verl writes it in
    torch, here in numpy) plus a masked whitening.
Ratios > 1 mean grpo_swift is faster.
    python python/benchmarks/bench_estimators.py [--quick]
"""
from __future__ import annotations

import numpy as np

import grpo_swift
from _harness import machine, median_time, quick, table


def numpy_rloo(r: np.ndarray, ids: np.ndarray) -> np.ndarray:
    _, inv = np.unique(ids, return_inverse=True)
    ok = ~np.isnan(r)
    k = np.bincount(inv, weights=ok.astype(float))
    s = np.bincount(inv, weights=np.where(ok, r, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        a = r - (s[inv] - r) / (k[inv] - 1)
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def numpy_grpo(r: np.ndarray, ids: np.ndarray) -> np.ndarray:
    _, inv = np.unique(ids, return_inverse=True)
    ok = ~np.isnan(r)
    k = np.bincount(inv, weights=ok.astype(float))
    mu = np.bincount(inv, weights=np.where(ok, r, 0.0)) / np.maximum(k, 1)
    d = np.where(ok, r - mu[inv], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.bincount(inv, weights=d * d) / (k - 1))
        a = (r - mu[inv]) / (sd[inv] + 1e-4)
    return np.nan_to_num(a, nan=0.0)


def numpy_reinforce_pp(r: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    n, t = mask.shape
    m = mask.astype(float)
    last = t - 1 - np.argmax(mask[:, ::-1], axis=1)
    tok = np.zeros((n, t))
    tok[np.arange(n), last] = r
    ret = np.zeros((n, t))
    running = np.zeros(n)
    for j in range(t - 1, -1, -1):
        running = tok[:, j] + gamma * running
        ret[:, j] = running
        running = running * m[:, j]
    x = ret[mask]
    return np.where(mask, (ret - x.mean()) / np.sqrt(x.var(ddof=1) + 1e-8), 0.0)


def main() -> None:
    print("bench_estimators:", machine())
    rng = np.random.default_rng(0)
    n = 1 << 20 if not quick() else 1 << 14
    g = 16
    r = rng.integers(0, 2, n).astype(float) + rng.normal(scale=0.1, size=n)
    ids = rng.permutation(np.repeat(rng.choice(1 << 40, n // g, replace=False), g)).astype(np.int64)
    runs = np.repeat(rng.choice(1 << 40, n // g, replace=False), g).astype(np.int64)
    np.testing.assert_allclose(grpo_swift.rloo_advantages(r, group_ids=ids), numpy_rloo(r, ids), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grpo_swift.advantages(r, group_ids=ids), numpy_grpo(r, ids), rtol=1e-9, atol=1e-9)
    rows = [
        ("numpy RLOO, explicit ids (anchor)", median_time(lambda: numpy_rloo(r, ids), repeats=5), ""),
        ("grpo_swift.rloo_advantages(group_ids=)", median_time(lambda: grpo_swift.rloo_advantages(r, group_ids=ids),
                                                               repeats=5), "shuffled ids: sorted once"),
        ("grpo_swift.rloo_advantages(group_ids=runs)",
         median_time(lambda: grpo_swift.rloo_advantages(r, group_ids=runs), repeats=5),
         "each id's rows adjacent, ids unsorted (verl layout)"),
        ("grpo_swift.rloo_advantages(num_generations=)",
         median_time(lambda: grpo_swift.rloo_advantages(r, g), repeats=5), "consecutive groups (no sort)"),
    ]
    table(f"RLOO, N={n}, G={g}, shuffled int64 ids, float64", rows, "numpy RLOO, explicit ids (anchor)")
    rows = [
        ("numpy GRPO, explicit ids (anchor)", median_time(lambda: numpy_grpo(r, ids), repeats=5), ""),
        ("grpo_swift.advantages('grpo', group_ids=)",
         median_time(lambda: grpo_swift.advantages(r, group_ids=ids), repeats=5), ""),
    ]
    table(f"GRPO, N={n}, G={g}, shuffled int64 ids, float64", rows, "numpy GRPO, explicit ids (anchor)")

    nt, t = (4096, 1024) if not quick() else (256, 128)
    lens = rng.integers(1, t + 1, nt)
    mask = np.arange(t)[None, :] < lens[:, None]
    rr = rng.normal(size=nt)
    np.testing.assert_allclose(grpo_swift.reinforce_pp_advantages(rr, mask, gamma=0.99),
                               numpy_reinforce_pp(rr, mask, 0.99), rtol=1e-8, atol=1e-9)
    rows = [
        ("numpy column loop + whitening (anchor)", median_time(lambda: numpy_reinforce_pp(rr, mask, 0.99), repeats=3), ""),
        ("grpo_swift.reinforce_pp_advantages",
         median_time(lambda: grpo_swift.reinforce_pp_advantages(rr, mask, gamma=0.99), repeats=3),
         "includes the bool->uint8 mask view"),
    ]
    table(f"REINFORCE++, N={nt}, T={t}, gamma=0.99, float64", rows, "numpy column loop + whitening (anchor)")


if __name__ == "__main__":
    main()
