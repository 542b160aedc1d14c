"""Fused linear GRPO loss (hidden states + LM head -> loss and gradients), float32.

N=2048 rows, H=896, V=32768 and V=151936 (Qwen2.5's vocabulary; skipped with --quick, which
runs tiny sizes only):
  - grpo_swift.fused_linear_grpo_loss (loss + grad_hidden + grad_weight, one call)
  - the composed path: fused_log_probs_forward -> grpo_loss -> fused_log_probs_backward
  - the GEMM floor: one plain OpenBLAS sgemm of the (N x H) x (H x V) shape, x3 (anchor;
    goal: the fused loss within 1.15x of it) and x4 (the composed path's GEMM count).
  - Liger-Kernel's LigerFusedLinearGRPOLoss on CPU (pure torch: chunked logits per sequence and
    per 4096 vocabulary columns, recomputed in its backward), eager and with its compiled=True
    (torch.compile of the loss maths; first call compiles, excluded by the warm-up; V=151936:
    eager only), against grpo_swift.torch.FusedLinearGRPOLoss (the drop-in module) on the same
    torch tensors. Skipped with the reason when liger-kernel is not importable.
The fused kernel runs the 3-GEMM schedule here (per block of whole sequences the logits stay
resident between the fold and the gradient, within the default budget min(256 MiB, half of the
N x V logits); see
Sources/GRPOSwift/FusedLinearLoss+Resident.swift); the composed path runs 4. Medians over
interleaved rounds measured in this run; "peak" is the largest resident-memory increase while the call
ran, sampled every ms (includes the gradient outputs: grad_weight is V x H x 4 bytes).
    python python/benchmarks/bench_fused_loss.py [--quick]
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

import grpo_swift
from grpo_swift import _native
from _harness import fmt_time, machine, quick
from bench_logprobs import median, peak_increase, show


def timed_rounds(fns: dict, rounds: int, warmup: bool, first: Optional[dict] = None) -> tuple[dict, dict]:
    """Interleaved rounds (every fn once per round, so load changes hit all alike); each call is
    timed and its peak RSS increase sampled. Returns name -> times, name -> max peak. The warm-up
    calls' times go to `first` when given."""
    if warmup:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if first is not None:
                first[k] = time.perf_counter() - t0
    times = {k: [] for k in fns}
    peaks = {k: 0 for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            peak = peak_increase(fn)
            times[k].append(time.perf_counter() - t0)
            peaks[k] = max(peaks[k], peak)
    return times, peaks


def liger_fns(h, w, ids, mask, adv, old, compiled_too: bool) -> dict:
    """fwd + bwd of Liger's module (eager / compiled) and of grpo_swift's drop-in module, dapo,
    beta 0, on the same torch tensors; {} (with the reason printed) when liger-kernel is missing."""
    import torch
    from grpo_swift.torch import FusedLinearGRPOLoss
    try:
        import liger_kernel
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except ImportError as e:
        print(f"  Liger-Kernel anchor skipped: liger-kernel is not importable ({e})")
        return {}
    import importlib.metadata
    version = getattr(liger_kernel, "__version__", None) or importlib.metadata.version("liger-kernel")
    print(f"  liger-kernel {version} (module: liger_kernel.chunked_loss), "
          f"torch {torch.__version__} threads={torch.get_num_threads()}")
    x, wt = torch.from_numpy(h), torch.from_numpy(w)
    ids_t, mask_t, adv_t, old_t = (torch.from_numpy(a) for a in (ids, mask.astype(np.int64), adv, old))

    def step(mod):
        def f():
            xi, wi = x.detach().requires_grad_(), wt.detach().requires_grad_()
            loss, _ = mod(xi, wi, ids_t, mask_t, adv_t, old_per_token_logps=old_t)
            loss.backward()
            return float(loss.detach()), xi.grad, wi.grad
        return f

    fns = {"grpo_swift.torch.FusedLinearGRPOLoss": step(FusedLinearGRPOLoss(beta=0.0, loss_type="dapo"))}
    fns["Liger LigerFusedLinearGRPOLoss (eager)"] = step(
        LigerFusedLinearGRPOLoss(beta=0.0, loss_type="dapo", use_ref_model=False, compiled=False))
    if compiled_too:
        fns["Liger LigerFusedLinearGRPOLoss (compiled)"] = step(
            LigerFusedLinearGRPOLoss(beta=0.0, loss_type="dapo", use_ref_model=False, compiled=True))
    return fns


def run(n: int, hsz: int, v: int, rounds: int, warmup: bool, check: bool, liger_compiled: bool = True) -> None:
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

    liger = liger_fns(h, w, ids, mask, adv, old, liger_compiled)
    ours_torch = "grpo_swift.torch.FusedLinearGRPOLoss"
    if check:  # correctness in this run
        a = fused()
        lc, gH, gW = composed()
        assert abs(a.loss - lc) <= 1e-5 * max(1, abs(lc))
        assert np.abs(a.grad_weight - gW).max() <= 1e-4 * np.abs(gW).max()
        assert np.abs(a.grad_hidden - gH).max() <= 1e-4 * np.abs(gH).max()
        for name, fn in liger.items():  # same loss and gradients as the numpy call
            lt, gx, gw = fn()
            assert abs(lt - a.loss) <= 1e-4 * max(1, abs(a.loss)), (name, lt, a.loss)
            assert np.abs(gw.numpy() - a.grad_weight).max() <= 1e-3 * np.abs(a.grad_weight).max(), name
            assert np.abs(gx.numpy().reshape(a.grad_hidden.shape) - a.grad_hidden).max() <= \
                1e-3 * np.abs(a.grad_hidden).max(), name
        del a, gH, gW

    anchor = "3 x plain OpenBLAS sgemm (anchor)"
    four = "4 x plain OpenBLAS sgemm"
    fused_name = "grpo_swift fused_linear_grpo_loss"
    comp_name = "composed: fused_log_probs fwd+bwd + grpo_loss"
    first: dict = {}
    times, peaks = timed_rounds({"sgemm": one_sgemm, fused_name: fused, comp_name: composed, **liger}, rounds,
                                warmup, first)
    t1s = times.pop("sgemm")
    p1 = peaks.pop("sgemm")
    times = {anchor: [3 * t for t in t1s], fused_name: times[fused_name], comp_name: times[comp_name],
             four: [4 * t for t in t1s], **{k: times[k] for k in liger}}
    peaks = {anchor: p1, fused_name: peaks[fused_name], comp_name: peaks[comp_name], four: p1,
             **{k: peaks[k] for k in liger}}
    ratios = show(f"fused linear GRPO loss, fwd + grads, N={n}, H={hsz}, V={v}, float32, {rounds} round(s)"
                  f"{'' if warmup else ', no warm-up'} (ratio = anchor time / time; goal: fused >= 1/1.15 = 0.87x)",
                  times, peaks, anchor)
    r = ratios[fused_name]
    t1 = median(t1s)
    print(f"  load average (1/5/15 min) after this size: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  fused / (3 x sgemm) = {1 / r:.2f}x: goal within 1.15x {'MET' if 1 / r <= 1.15 else 'NOT MET'}; "
          f"fused / (4 x sgemm) = {ratios[four] / r:.2f}x")
    if fused_name in first:
        print(f"  first call at this size in the process (the warm-up, not in the medians): fused "
              f"{fmt_time(first[fused_name])} = {first[fused_name] / (3 * t1):.2f}x 3 x sgemm (its outputs and scratch "
              f"touched for the first time; on this VM fresh memory is backed by the host on first touch)")
    rc = median([f / c_ for f, c_ in zip(times[fused_name], times[comp_name])])
    print(f"  fused / composed = {rc:.2f}x; one sgemm {fmt_time(t1)} ({2 * n * v * hsz / t1 / 1e9:.0f} GFLOP/s; "
          f"its (N, V) output is allocated and touched beforehand)")
    for name in liger:
        if name == ours_torch:
            continue
        rl = median([t / o for t, o in zip(times[name], times[ours_torch])])
        print(f"  {name} / grpo_swift.torch.FusedLinearGRPOLoss = {rl:.2f}x (fwd+bwd, same tensors; "
              f"{'grpo_swift faster' if rl > 1 else 'Liger faster'}); peak {peaks[name] / 2**20:.0f} MB vs "
              f"{peaks[ours_torch] / 2**20:.0f} MB")
    scratch = grpo_swift.fused_linear_loss_scratch_bytes(B, T, hsz, v)
    scratch4 = grpo_swift.fused_linear_loss_scratch_bytes(B, T, hsz, v, scratch_budget=1)
    print(f"  scratch: fused {scratch / 2**20:.1f} MB (3-GEMM schedule, default budget min(256 MiB, half the "
          f"logits)), composed/4-GEMM "
          f"{scratch4 / 2**20:.1f} MB; outputs grad_weight {v * hsz * 4 / 2**20:.0f} MB + grad_hidden "
          f"{n * hsz * 4 / 2**20:.1f} MB; an N x V float32 logits buffer would be {n * v * 4 / 2**20:.0f} MB")
    # Memory goal, on one more call of the same size: the first calls of a size in a process also
    # touch OpenBLAS's per-thread GEMM packing buffers (malloc'd in the worker threads' heaps and
    # kept by OpenBLAS for the process's lifetime) and the library's code pages; that one-time
    # growth is in the "peak" column above when this size ran without a warm-up.
    outputs = v * hsz * 4 + n * hsz * 4
    bound = scratch + outputs
    steady = peak_increase(fused)
    slack = 2 << 20  # huge-page rounding of the scratch mapping, Python objects
    print(f"  memory goal (no N x V allocation; extra memory bounded by the scratch budget): "
          f"{'MET' if steady <= bound + slack else 'NOT MET'}: peak {steady / 2**20:.1f} MB on a repeated call "
          f"<= scratch {scratch / 2**20:.1f} MB + outputs {outputs / 2**20:.1f} MB (+ {slack >> 20} MB slack); "
          f"largest peak over the timed rounds above {peaks[fused_name] / 2**20:.1f} MB")


def main() -> None:
    print("bench_fused_loss:", machine())
    if quick():
        run(256, 128, 4096, 2, True, True, liger_compiled=False)
        return
    run(2048, 896, 32768, 5, True, True)
    # V=151936: a warm-up and 2 rounds (a round takes ~45 s here: one call of each); the first
    # call's time is printed beside the medians. Liger eager only (its torch.compile would be
    # timed with the compilation).
    run(2048, 896, 151936, 2, True, False, liger_compiled=False)


if __name__ == "__main__":
    main()
