"""Scaling of the log-prob kernels with tokens N and vocabulary V, against torch's naive
materialised-logits approach (log_softmax + gather, autograd), fwd + bwd, float32.

    python scaling.py [--quick] [--png FILE] [--budget SECONDS]
1. from logits: grpo_swift.selective_log_softmax_forward + _backward(out=) vs torch
   log_softmax(x).gather + backward. The (N, V) logits are the input of both, so both hold them.
2. fused LM head (H=256): grpo_swift.fused_log_probs_forward + _backward vs torch
   (h @ W.T) -> log_softmax -> gather + backward (materialises the (N, V) logits and their grad).
N = 1k, 4k, 16k, 64k, 256k; V = 32768, 151936 (quick: tiny). The naive anchor is skipped when
its logits would exceed --max-logits-gib (default 4 GiB), and so is the from-logits kernel, whose
input they are; the fused kernel never holds them and runs on. A measurement is skipped when its
time, extrapolated from the previous size of the same kernel, exceeds 60 s, or when the --budget
(default 600 s) is spent. Calls over 10 s are timed once (after a warm-up call), with their peak
memory sampled during that call.
Peak memory = the largest RSS increase over the pre-call level during one fwd + bwd (sampled
every ms; inputs are allocated before, so it is the extra memory each approach needs).
The ratio column is the anchor's time / grpo_swift's time, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

import grpo_swift
from _harness import fmt_time, machine, median_time, quick

PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_SECONDS = 60.0


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_increase(fn) -> int:
    base = rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(0, peak[0] - base)


def measure(fn, est: float | None) -> tuple[float, int] | str:
    if est is not None and est > MAX_SECONDS:
        return f"skipped (estimated {est:.0f} s > {MAX_SECONDS:.0f} s)"
    t0 = time.perf_counter()
    fn()  # warm-up, also the time estimate for the repeats
    first = time.perf_counter() - t0
    if first > 10:  # the largest sizes: one timed call, its peak memory sampled during it
        t0 = time.perf_counter()
        peak = peak_increase(fn)
        return time.perf_counter() - t0, peak
    repeats = 1 if (quick() or first > 2) else 3
    t = median_time(fn, repeats=repeats, warmup=0)
    return t, peak_increase(fn)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--png", default=None)
    ap.add_argument("--budget", type=float, default=600.0)
    ap.add_argument("--max-logits-gib", type=float, default=4.0)
    args = ap.parse_args()
    import torch
    torch.manual_seed(0)
    print(machine(), f"| torch {torch.__version__}, torch threads={torch.get_num_threads()}")
    tokens = [256, 1024] if quick() else [1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18]
    vocabs = [4096, 8192] if quick() else [32768, 151936]
    hsz = 64 if quick() else 256
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    results: list[dict] = []

    for kernel in ("logits", "fused"):
        print(f"\n{'1. from logits' if kernel == 'logits' else f'2. fused LM head, H={hsz}'}, fwd + bwd, float32")
        print(f"  {'N':>7} {'V':>7} {'grpo_swift':>12} {'peak':>10} {'torch naive':>12} {'peak':>10} {'ratio':>7}")
        for v in vocabs:
            per_elem = {"ours": None, "naive": None}
            for n in tokens:
                gib = n * v * 4 / 2**30
                naive_fits = gib <= args.max_logits_gib
                if not naive_fits and kernel == "logits":  # the (N, V) logits are this kernel's input too
                    print(f"  {n:>7} {v:>7}  skipped: the input logits would be {gib:.1f} GiB > "
                          f"{args.max_logits_gib:g} GiB")
                    continue
                if time.perf_counter() - t_start > args.budget:
                    print(f"  {n:>7} {v:>7}  skipped: the {args.budget:.0f} s budget is spent")
                    continue
                idx = rng.integers(0, v, n)
                gl = rng.standard_normal(n).astype(np.float32)
                gh = rng.standard_normal(n).astype(np.float32)
                it = torch.from_numpy(idx)
                glt, ght = torch.from_numpy(gl), torch.from_numpy(gh)
                if kernel == "logits":
                    x = rng.standard_normal((n, v), dtype=np.float32) * 3
                    out = np.zeros_like(x)
                    xt = torch.from_numpy(x)

                    def ours():
                        f = grpo_swift.selective_log_softmax_forward(x, idx)
                        grpo_swift.selective_log_softmax_backward(x, idx, gl, gh, logsumexp=f.logsumexp,
                                                                  entropy=f.entropy, out=out)

                    def naive():
                        z = xt.detach().requires_grad_(True)
                        logp = torch.log_softmax(z, dim=-1)
                        lp = logp.gather(-1, it[:, None])[:, 0]
                        ent = -(logp.exp() * logp).sum(-1)
                        ((lp * glt).sum() + (ent * ght).sum()).backward()
                else:
                    h = (rng.standard_normal((n, hsz), dtype=np.float32) / np.float32(np.sqrt(hsz)))
                    w = rng.standard_normal((v, hsz), dtype=np.float32)
                    ht, wt = torch.from_numpy(h), torch.from_numpy(w)

                    def ours():
                        f = grpo_swift.fused_log_probs_forward(h, w, idx)
                        grpo_swift.fused_log_probs_backward(h, w, idx, gl, gh, logsumexp=f.logsumexp,
                                                            entropy=f.entropy)

                    def naive():
                        hh = ht.detach().requires_grad_(True)
                        ww = wt.detach().requires_grad_(True)
                        logp = torch.log_softmax(hh @ ww.T, dim=-1)
                        lp = logp.gather(-1, it[:, None])[:, 0]
                        ent = -(logp.exp() * logp).sum(-1)
                        ((lp * glt).sum() + (ent * ght).sum()).backward()

                row = {"kernel": kernel, "n": n, "v": v}
                for name, fn in (("ours", ours), ("naive", naive)):
                    if name == "naive" and not naive_fits:
                        row[name] = f"skipped (its logits would be {gib:.1f} GiB > {args.max_logits_gib:g} GiB)"
                        continue
                    est = None if per_elem[name] is None else per_elem[name] * n * v
                    r = measure(fn, est)
                    if isinstance(r, str):
                        row[name] = r
                    else:
                        row[name], row[name + "_mem"] = r
                        per_elem[name] = r[0] / (n * v)
                results.append(row)

                def cell(name):
                    if isinstance(row[name], str):
                        return f"{'skipped':>12} {'':>10}"
                    return f"{fmt_time(row[name]):>12} {row[name + '_mem'] / 2**20:>8.0f}Mi"
                ratio = (f"{row['naive'] / row['ours']:>6.2f}x"
                         if not isinstance(row["ours"], str) and not isinstance(row["naive"], str) else "     -")
                print(f"  {n:>7} {v:>7} {cell('ours')} {cell('naive')} {ratio}", flush=True)
                for name in ("ours", "naive"):
                    if isinstance(row[name], str):
                        print(f"          {name}: {row[name]}")
                del ours, naive

    if args.png:
        plot(results, args.png, hsz)


def plot(results: list[dict], path: str, hsz: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for col, kernel in enumerate(("logits", "fused")):
        rows = [r for r in results if r["kernel"] == kernel]
        for v in sorted({r["v"] for r in rows}):
            for name, label, ls in (("ours", "grpo_swift", "-"), ("naive", "torch naive", "--")):
                pts = [(r["n"], r[name], r[name + "_mem"]) for r in rows
                       if r["v"] == v and not isinstance(r.get(name), str) and name in r]
                if not pts:
                    continue
                ns, ts, ms = zip(*pts)
                axes[0][col].plot(ns, ts, ls, marker="o", label=f"{label}, V={v}")
                axes[1][col].plot(ns, [m / 2**20 for m in ms], ls, marker="o", label=f"{label}, V={v}")
        title = "from logits" if kernel == "logits" else f"fused LM head (H={hsz})"
        axes[0][col].set_title(f"{title}: time, fwd + bwd")
        axes[1][col].set_title(f"{title}: peak extra memory")
        axes[0][col].set_ylabel("seconds")
        axes[1][col].set_ylabel("MiB")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens N")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("grpo_swift log-prob kernels vs torch naive (materialised logits), float32")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"\nplot written to {path}")


if __name__ == "__main__":
    main()
