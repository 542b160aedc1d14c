"""The kernels grpo-bench (Benchmarks/GRPOBench/main.swift) times in Swift, called from Python.

Same sizes and data shapes as grpo-bench; prints `PYCALL <kernel> median_s=<seconds>` lines that
run_all.py divides by grpo-bench's `SWIFT <kernel>` lines (Python-call / Swift-native ratio).
    python swift_overhead.py [--quick]
"""
from __future__ import annotations

import numpy as np

import grpo_swift
from _harness import machine, median_time, quick


def report(name: str, t: float, note: str) -> None:
    print(f"PYCALL {name} median_s={t!r}  ({t * 1e3:.3f} ms)  {note}")


def main() -> None:
    print(machine())
    rng = np.random.default_rng(42)
    n = 1 << 16 if quick() else 1 << 20
    rewards = rng.normal(size=n)
    rewards[rng.random(n) < 0.01] = np.nan
    t = median_time(lambda: grpo_swift.group_advantages(rewards, 16), repeats=7)
    report(f"advantages_N{n}_G16", t, "grpo_swift.group_advantages")

    b, tl = (8, 64) if quick() else (64, 1024)
    lp = (-rng.uniform(0.05, 3, (b, tl))).astype(np.float32)
    old = (lp - rng.uniform(-0.3, 0.3, (b, tl))).astype(np.float32)
    ref = (lp + rng.uniform(-0.5, 0.5, (b, tl))).astype(np.float32)
    adv = rng.normal(size=b).astype(np.float32)
    mask = np.ones((b, tl), dtype=bool)
    for i in range(b):
        mask[i, int(tl * rng.uniform(0.5, 1.0)):] = False
    t = median_time(lambda: grpo_swift.grpo_loss(lp, adv, mask, old_logps=old, ref_logps=ref, loss_type="dapo",
                                                 beta=0.04), repeats=15, inner=5)
    report(f"loss_dapo_B{b}_T{tl}", t, "grpo_swift.grpo_loss (loss + grad + metrics)")

    rows, vocab = (256, 8192) if quick() else (2048, 32768)
    x = rng.standard_normal((rows, vocab), dtype=np.float32) * 3
    idx = rng.integers(0, vocab, rows)
    gl = rng.standard_normal(rows).astype(np.float32)
    gh = rng.standard_normal(rows).astype(np.float32)
    out = np.zeros_like(x)

    def lp_fwd_bwd():
        f = grpo_swift.selective_log_softmax_forward(x, idx)
        grpo_swift.selective_log_softmax_backward(x, idx, gl, gh, logsumexp=f.logsumexp, entropy=f.entropy, out=out)

    t = median_time(lp_fwd_bwd, repeats=7)
    report(f"logprobs_fwd_bwd_N{rows}_V{vocab}", t, "selective_log_softmax_forward + _backward(out=)")

    # Per-call overhead of the Python boundary: the smallest calls, the same data as grpo-bench's
    # percall_* lines (which time the C ABI from Swift). Python pays argument validation, buffer
    # acquisition, output allocation and the GIL release on top of the kernel.
    r8 = np.array([0.1, 0.9, 0.4, 0.4, 1.0, 0.0, 0.7, 0.3])
    t = median_time(lambda: grpo_swift.group_advantages(r8, 8), repeats=21, inner=2000)
    report("percall_advantages_N8", t, "grpo_swift.group_advantages, N=8")
    lp8 = np.array([[-0.5, -1.0, -0.25, -2.0, -0.1, -0.7, -1.5, -0.3]], dtype=np.float32)
    ref8 = (lp8 + np.float32(0.05)).astype(np.float32)
    adv1 = np.array([0.5], dtype=np.float32)
    mask8 = np.ones((1, 8), dtype=bool)
    t = median_time(lambda: grpo_swift.grpo_loss(lp8, adv1, mask8, ref_logps=ref8, loss_type="dapo", beta=0.04),
                    repeats=21, inner=2000)
    report("percall_loss_B1_T8", t, "grpo_swift.grpo_loss, dapo + KL, B=1, T=8 (loss + grad + metrics)")
    x16 = ((np.arange(16) % 5) * 0.5 - 1).astype(np.float32)[None, :]
    t1 = np.array([3])
    t = median_time(lambda: grpo_swift.selective_log_softmax(x16, t1, return_entropy=True), repeats=21, inner=2000)
    report("percall_logprobs_N1_V16", t, "grpo_swift.selective_log_softmax(return_entropy=True), 1 x 16")


if __name__ == "__main__":
    main()
