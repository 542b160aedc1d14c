"""Fused linear GRPO loss (hidden states + LM head -> loss and gradients), float32.

N=2048 rows, H=896, V=32768 and V=151936 (Qwen2.5's vocabulary; skipped with --quick, which
runs tiny sizes only):
  - grpo_swift.fused_linear_grpo_loss (loss + grad_hidden + grad_weight, one call)
  - the composed path: fused_log_probs_forward -> grpo_loss -> fused_log_probs_backward
  - the GEMM floor: one plain OpenBLAS sgemm of the (N x H) x (H x V) shape, x3 (anchor;
    goal: the fused loss within 1.15x of it) and x4 (the composed path's GEMM count).
The fused kernel runs the 3-GEMM schedule here (per block of whole sequences the logits stay
resident between the fold and the gradient, within the default budget min(256 MiB, half of the
N x V logits); see
Sources/GRPOSwift/FusedLinearLoss+Resident.swift); the composed path runs 4. Medians over
interleaved rounds measured in this run; "peak" is the largest resident-memory increase while the call
ran, sampled every ms (includes the gradient outputs: grad_weight is V x H x 4 bytes).
    python python/benchmarks/bench_fused_loss.py [--quick]
"""
from __future__ import annotations

import time

import numpy as np

import grpo_swift
from grpo_swift import _native
from _harness import fmt_time, machine, quick
from bench_logprobs import median, peak_increase, show


def timed_rounds(fns: dict, rounds: int, warmup: bool) -> tuple[dict, dict]:
    """Interleaved rounds (every fn once per round, so load changes hit all alike); each call is
    timed and its peak RSS increase sampled. Returns name -> times, name -> max peak."""
    if warmup:
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    peaks = {k: 0 for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            peak = peak_increase(fn)
            times[k].append(time.perf_counter() - t0)
            peaks[k] = max(peaks[k], peak)
    return times, peaks


def run(n: int, hsz: int, v: int, rounds: int, warmup: bool, check: bool) -> None:
    rng = np.random.default_rng(0)
    B = 16
    T = n // B
    h = rng.standard_normal((B, T, hsz), dtype=np.float32)
    w = rng.standard_normal((v, hsz), dtype=np.float32) * np.float32(0.05)
    ids = rng.integers(0, v, (B, T))
    mask = (rng.random((B, T)) < 0.9).astype(np.uint8)
    adv = rng.standard_normal(B).astype(np.float32)
    old = (rng.normal(-np.log(v), 0.5, (B, T))).astype(np.float32)
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
    c.fill(1.0)  # pages touched here, not inside the timed sgemm
    h2 = h.reshape(n, hsz)

    def one_sgemm():
        _native.benchmark_sgemm_nt(h2, w, c)

    if check:  # correctness in this run
        a = fused()
        lc, gH, gW = composed()
        assert abs(a.loss - lc) <= 1e-5 * max(1, abs(lc))
        assert np.abs(a.grad_weight - gW).max() <= 1e-4 * np.abs(gW).max()
        assert np.abs(a.grad_hidden - gH).max() <= 1e-4 * np.abs(gH).max()
        del a, gH, gW

    anchor = "3 x plain OpenBLAS sgemm (anchor)"
    four = "4 x plain OpenBLAS sgemm"
    fused_name = "grpo_swift fused_linear_grpo_loss"
    comp_name = "composed: fused_log_probs fwd+bwd + grpo_loss"
    times, peaks = timed_rounds({"sgemm": one_sgemm, fused_name: fused, comp_name: composed}, rounds, warmup)
    t1s = times.pop("sgemm")
    p1 = peaks.pop("sgemm")
    times = {anchor: [3 * t for t in t1s], fused_name: times[fused_name], comp_name: times[comp_name],
             four: [4 * t for t in t1s]}
    peaks = {anchor: p1, fused_name: peaks[fused_name], comp_name: peaks[comp_name], four: p1}
    ratios = show(f"fused linear GRPO loss, fwd + grads, N={n}, H={hsz}, V={v}, float32, {rounds} round(s)"
                  f"{'' if warmup else ', no warm-up'} (ratio = anchor time / time; goal: fused >= 1/1.15 = 0.87x)",
                  times, peaks, anchor)
    r = ratios[fused_name]
    t1 = median(t1s)
    print(f"  fused / (3 x sgemm) = {1 / r:.2f}x: goal within 1.15x {'MET' if 1 / r <= 1.15 else 'NOT MET'}; "
          f"fused / (4 x sgemm) = {ratios[four] / r:.2f}x")
    rc = median([f / c_ for f, c_ in zip(times[fused_name], times[comp_name])])
    print(f"  fused / composed = {rc:.2f}x; one sgemm {fmt_time(t1)} ({2 * n * v * hsz / t1 / 1e9:.0f} GFLOP/s; "
          f"its (N, V) output is allocated and touched beforehand)")
    scratch = grpo_swift.fused_linear_loss_scratch_bytes(B, T, hsz, v)
    scratch4 = grpo_swift.fused_linear_loss_scratch_bytes(B, T, hsz, v, scratch_budget=1)
    print(f"  scratch: fused {scratch / 2**20:.1f} MB (3-GEMM schedule, default budget min(256 MiB, half the "
          f"logits)), composed/4-GEMM "
          f"{scratch4 / 2**20:.1f} MB; outputs grad_weight {v * hsz * 4 / 2**20:.0f} MB + grad_hidden "
          f"{n * hsz * 4 / 2**20:.1f} MB; an N x V float32 logits buffer would be {n * v * 4 / 2**20:.0f} MB")


def main() -> None:
    print("bench_fused_loss:", machine())
    if quick():
        run(256, 128, 4096, 2, True, True)
        return
    run(2048, 896, 32768, 3, True, True)
    # V=151936: one round without warm-up (each call takes minutes on a loaded 2-core machine)
    run(2048, 896, 151936, 1, False, False)


if __name__ == "__main__":
    main()
