"""Advantage estimators compared on the demo task: the same policy, rewards and loss, one estimator at a time.

examples/demo.py trains a small GRU LM from scratch to answer "a+b=" with GRPO. This script runs
that exact training loop (imported from demo.py: model, sampling, rewards, grpo_swift loss, seed)
once per advantage estimator of grpo_swift and puts the reward curves in one figure:

    grpo                   (r - mean) / (std + 1e-4) per group          TRL's GRPOTrainer
    dr_grpo                r - mean (no std division)                    Dr.GRPO
    rloo                   r - mean of the other rows of the group        RLOO
    opo                    r - length-weighted group mean                 OPO
    gpg                    alpha (r - mean), alpha = N / informative rows GPG
    passk                  only each group's best row gets a signal       pass@k (verl)
    reinforce_pp           batch-whitened returns, no groups              REINFORCE++
    reinforce_pp_baseline  r - mean, then batch-whitened                  REINFORCE++-baseline

The scalar reward of a completion is correctness + 0.5 * format (the demo's two rewards, summed
with its weights). Every run uses the same seed, so the prompts of step k are the same for all
estimators (completions differ as soon as the policies do). A single seed on a small task shows
how the estimators behave here, not which one is best in general: rerun with --seed.

    python examples/estimators.py                  # 8 estimators x 150 steps (~1 min of CPU)
    python examples/estimators.py --quick          # 8 x 20 steps: what the tests run
    python examples/estimators.py --estimators grpo,rloo,reinforce_pp --steps 300
Saves out/estimators.png (reward, correctness and the fraction of groups without reward spread,
per estimator) and prints a summary table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

import grpo_swift as gs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo  # noqa: E402  (examples/demo.py: the model, the task and the training loop)


def _zero_spread(r: np.ndarray, g: int) -> float:
    return float(gs.zero_spread_groups(r, num_generations=g).mean())


# name -> f(scalar rewards (N,), response mask (N, T) bool, G) -> advantages (N,) or (N, T)
ESTIMATORS = {
    "grpo": lambda r, mask, g: gs.advantages(r, "grpo", num_generations=g),
    "dr_grpo": lambda r, mask, g: gs.dr_grpo_advantages(r, g),
    "rloo": lambda r, mask, g: gs.rloo_advantages(r, g),
    "opo": lambda r, mask, g: gs.opo_advantages(r, g, response_mask=mask),
    "gpg": lambda r, mask, g: gs.gpg_advantages(r, g),
    "passk": lambda r, mask, g: gs.passk_advantages(r, g),
    "reinforce_pp": lambda r, mask, g: gs.reinforce_pp_advantages(r, mask),
    "reinforce_pp_baseline": lambda r, mask, g: gs.reinforce_pp_baseline_advantages(r, mask, g),
}


def advantages_fn(name: str):
    """The hook demo.train calls each step: (rewards (N, 2), weights, mask, G) -> (advantages,
    fraction of rows whose group has no reward spread)."""
    est = ESTIMATORS[name]

    def fn(rewards: np.ndarray, weights, mask: np.ndarray, g: int):
        r = rewards @ np.asarray(weights, dtype=np.float64)
        return est(r, mask, g), _zero_spread(r, g)

    return fn


def run(names: list[str], steps: int, seed: int, args) -> dict[str, dict]:
    out = {}
    for name in names:
        t0 = time.perf_counter()
        h = demo.train(steps, seed, args.prompts, args.num_generations, args.num_iterations, args.beta, args.lr,
                       args.loss_type, max_new=4, progress=False, advantages_fn=advantages_fn(name))
        h["wall"] = time.perf_counter() - t0
        first, last = demo.window_means(h["reward"])
        print(f"  {name:<22} reward {first:.3f} -> {last:.3f}   ({h['wall']:.1f} s)", flush=True)
        out[name] = h
    return out


def smooth(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing moving average over up to k steps (same length as x)."""
    c = np.cumsum(np.insert(np.asarray(x, dtype=np.float64), 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def plot(results: dict[str, dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(next(iter(results.values()))["reward"])
    k = max(1, steps // 15)
    fig, ax = plt.subplots(1, 3, figsize=(17, 5.2), constrained_layout=True)
    for name, h in results.items():
        s = np.arange(1, len(h["reward"]) + 1)
        ls = "--" if name.startswith("reinforce") else "-"
        ax[0].plot(s, smooth(h["reward"], k), ls, lw=1.4, label=name)
        ax[1].plot(s, smooth(h["correctness"], k), ls, lw=1.4, label=name)
        ax[2].plot(s, smooth(h["frac_zero_std"], k), ls, lw=1.4, label=name)
    ax[0].set_title(f"mean reward (correctness + 0.5 format, max 1.5), {k}-step average")
    ax[0].set_ylim(-0.02, 1.55)
    ax[1].set_title("correctness (first token is a+b)")
    ax[1].set_ylim(-0.02, 1.02)
    ax[2].set_title("fraction of groups with no reward spread")
    ax[2].set_ylim(-0.02, 1.02)
    for a in ax:
        a.set_xlabel("step (one generation)")
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary(results: dict[str, dict]) -> str:
    lines = [f"{'estimator':<22} {'reward first 10%':>17} {'last 10%':>9} {'correct last 10%':>17} "
             f"{'no-spread groups last 10%':>26} {'time':>7}"]
    for name, h in sorted(results.items(), key=lambda kv: -demo.window_means(kv[1]["reward"])[1]):
        r0, r1 = demo.window_means(h["reward"])
        c1 = demo.window_means(h["correctness"])[1]
        z1 = demo.window_means(h["frac_zero_std"])[1]
        lines.append(f"{name:<22} {r0:>17.3f} {r1:>9.3f} {c1:>17.3f} {z1:>26.3f} {h['wall']:>6.1f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--estimators", default=",".join(ESTIMATORS),
                   help="comma-separated subset of: " + ", ".join(ESTIMATORS))
    p.add_argument("--steps", type=int, default=None, help="generations per estimator (default 150; 20 with --quick)")
    p.add_argument("--quick", action="store_true", help="a short run (what the tests use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("out", "estimators.png"), help="where to save the figure (PNG)")
    demo.add_training_options(p)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        p.error(f"--estimators: unknown {unknown}; choose from {', '.join(ESTIMATORS)}")
    steps = args.steps if args.steps is not None else (20 if args.quick else 150)
    if steps < 1:
        p.error("--steps must be >= 1")
    if args.num_generations < 2:
        p.error("--num-generations must be >= 2 (group-relative estimators need groups)")
    torch.set_num_threads(1)

    print(f"grpo_swift {gs.__version__}: {len(names)} advantage estimators on the demo task 'a+b=' ({steps} steps x "
          f"{args.prompts} prompts x G={args.num_generations}, loss_type={args.loss_type!r}, beta={args.beta}, "
          f"seed={args.seed})", flush=True)
    t0 = time.perf_counter()
    results = run(names, steps, args.seed, args)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    plot(results, out, f"grpo_swift advantage estimators on 'a+b=': {steps} steps, loss_type={args.loss_type}, "
                       f"beta={args.beta}, seed {args.seed}")
    print(f"\n{summary(results)}\n\nall runs: {time.perf_counter() - t0:.1f} s; figure: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
