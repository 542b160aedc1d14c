"""Fused linear GRPO loss (hidden states + LM head -> loss and gradients), float32.

N=2048 rows, H=896, V=32768 and V=151936 (Qwen2.5's vocabulary; skipped with --quick, which
runs tiny sizes only):
  - grpo_swift.fused_linear_grpo_loss (loss + grad_hidden + grad_weight, one call)
  - the composed path: fused_log_probs_forward -> grpo_loss -> fused_log_probs_backward
  - the GEMM floor: one plain OpenBLAS sgemm of the (N x H) x (H x V) shape, x3 (anchor;
    goal: the fused loss within 1.15x of it) and x4 (the composed path's GEMM count).
The fused kernel runs 4 GEMM passes (logits, recompute, grad_hidden, grad_weight): the loss is
global over the batch, so the logits tiles cannot be kept between pass 1 and pass 2 without
an N x V buffer (see Sources/GRPOSwift/FusedLinearLoss.swift). Medians over interleaved
rounds measured in this run; "peak" is the largest resident-memory increase while the call
ran, sampled every ms (includes the gradient outputs: grad_weight is V x H x 4 bytes).
    python python/benchmarks/bench_fused_loss.py [--quick]
"""
from __future__ import annotations

import numpy as np

import grpo_swift
from grpo_swift import _native
from _harness import fmt_time, machine, quick
from bench_logprobs import interleaved, median, peak_increase, show


def run(n: int, hsz: int, v: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    B = 16
    T = n // B
    h = rng.standard_normal((B, T, hsz), dtype=np.float32)
    w = rng.standard_normal((v, hsz), dtype=np.float32) * np.float32(0.05)
    ids = rng.integers(0, v, (B, T))
    mask = (rng.random((B, T)) < 0.9).astype(np.uint8)
    adv = rng.standard_normal(B).astype(np.float32)
    lp0 = grpo_swift.fused_log_probs(h, w, ids, return_entropy=False)
    old = (lp0 + rng.normal(0, 0.1, lp0.shape)).astype(np.float32)
    opts = dict(loss_type="dapo")

    def fused():
        return grpo_swift.fused_linear_grpo_loss(h, w, ids, mask, adv, old_logps=old, **opts)

    def composed():
        f = grpo_swift.fused_log_probs_forward(h, w, ids)
        r = grpo_swift.grpo_loss(f.log_probs, adv, mask, old_logps=old, entropies=f.entropy, **opts)
        gH, gW, _ = grpo_swift.fused_log_probs_backward(h, w, ids, r.grad, None, logsumexp=f.logsumexp,
                                                        entropy=f.entropy)
        return r.loss, gH, gW

    c = np.empty((n, v), np.float32)
    h2 = h.reshape(n, hsz)

    def one_sgemm():
        _native.benchmark_sgemm_nt(h2, w, c)

    # Correctness in this run.
    a = fused()
    lc, gH, gW = composed()
    assert abs(a.loss - lc) <= 1e-5 * max(1, abs(lc))
    assert np.abs(a.grad_weight - gW).max() <= 1e-4 * np.abs(gW).max()
    assert np.abs(a.grad_hidden - gH).max() <= 1e-4 * np.abs(gH).max()
    del a, gH, gW

    anchor = "3 x plain OpenBLAS sgemm (anchor)"
    four = "4 x plain OpenBLAS sgemm"
    fns = {anchor: one_sgemm, "grpo_swift fused_linear_grpo_loss": fused,
           "composed: fused_log_probs fwd+bwd + grpo_loss": composed, four: one_sgemm}
    peaks = {name: peak_increase(fn) for name, fn in fns.items() if name != four}
    peaks[four] = peaks[anchor]
    times = interleaved({k: f for k, f in fns.items() if k != four}, reps)
    t1s = times[anchor]
    times[four] = [4 * t for t in t1s]
    times[anchor] = [3 * t for t in t1s]
    ratios = show(f"fused linear GRPO loss, fwd + grads, N={n}, H={hsz}, V={v}, float32 "
                  f"(ratio = anchor time / time; goal: fused >= 1/1.15 = 0.87x)", times, peaks, anchor)
    r = ratios["grpo_swift fused_linear_grpo_loss"]
    t1 = median(t1s)
    print(f"  fused / (3 x sgemm) = {1 / r:.2f}x: goal within 1.15x {'MET' if 1 / r <= 1.15 else 'NOT MET'}; "
          f"fused / (4 x sgemm) = {ratios[four] / r:.2f}x (the kernel runs 4 GEMM passes)")
    rc = median([f / c_ for f, c_ in zip(times["grpo_swift fused_linear_grpo_loss"],
                                          times["composed: fused_log_probs fwd+bwd + grpo_loss"])])
    print(f"  fused / composed = {rc:.2f}x; one sgemm {fmt_time(t1)} ({2 * n * v * hsz / t1 / 1e9:.0f} GFLOP/s)")
    scratch = grpo_swift.fused_linear_loss_scratch_bytes(n, hsz, v)
    print(f"  scratch budget {scratch / 2**20:.1f} MB; outputs grad_weight {v * hsz * 4 / 2**20:.0f} MB + "
          f"grad_hidden {n * hsz * 4 / 2**20:.1f} MB; an N x V float32 logits buffer would be "
          f"{n * v * 4 / 2**20:.0f} MB")


def main() -> None:
    print("bench_fused_loss:", machine())
    if quick():
        run(256, 128, 4096, 2)
        return
    run(2048, 896, 32768, 3)
    run(2048, 896, 151936, 2)


if __name__ == "__main__":
    main()
