"""grpo_swift demo: GRPO trains a tiny policy from scratch, on CPU, in a couple of minutes.

The task: the prompt is "a+b=" with single digits a + b <= 9; the policy writes up to 4
tokens. Two reward functions, as in a real GRPO run:
    correctness  1 if the first completion token is the digit a+b, else 0
    format       1 if the answer is followed immediately by <eos>, 0.5 if <eos> comes
                 later, 0 if the completion never stops
The policy is a small GRU language model (PyTorch) with an LM head. Everything GRPO-
specific runs in grpo_swift's Swift kernels:
    grpo_swift.group_advantages        the group-normalised advantages (TRL's formula)
    grpo_swift.torch.fused_log_probs   per-token log-probs from the hidden states and the
                                       LM head (never materialising the logits), autograd
    grpo_swift.grpo_loss               TRL's GRPO loss, its gradient and TRL's metrics
A frozen copy of the initial policy is the reference model (beta > 0, so the KL term is
visible), and every generation is used for `num_iterations` optimiser steps, so the
importance ratios move away from 1 and the clip ratios are not trivially zero.

At the end it saves a figure (loss and its policy/KL parts, KL, each reward, clip ratios,
the advantage distribution) and prints a reading of it computed from this run's numbers.

    make demo                     (or: python examples/demo.py)
    python examples/demo.py --quick          # the short run the tests use
    python examples/demo.py --steps 600 --seed 1 --out out/run.png
Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch

import grpo_swift
import grpo_swift.torch as gst

DIGITS = [str(d) for d in range(10)]
VOCAB = DIGITS + ["+", "=", "<eos>"]
PLUS, EQ, EOS = 10, 11, 12
V = len(VOCAB)
PROMPT_LEN = 4  # a + b =


class TinyLM(torch.nn.Module):
    """Embedding -> 1-layer GRU -> hidden states; the LM head weight is applied by grpo_swift."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(V, hidden)
        self.gru = torch.nn.GRU(hidden, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, V, bias=True)

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(tokens))
        return out

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, max_new: int, gen: torch.Generator) -> torch.Tensor:
        """Samples max_new tokens per prompt at temperature 1 (positions after <eos> are padding)."""
        out, h = self.gru(self.embed(prompts))
        x = out[:, -1]
        toks = []
        done = torch.zeros(prompts.shape[0], dtype=torch.bool)
        for _ in range(max_new):
            probs = torch.softmax(self.head(x), dim=-1)
            t = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            t = torch.where(done, torch.full_like(t, EOS), t)
            toks.append(t)
            done |= t == EOS
            o, h = self.gru(self.embed(t[:, None]), h)
            x = o[:, -1]
        return torch.stack(toks, dim=1)


def completion_log_probs(model: TinyLM, prompts: torch.Tensor, completions: torch.Tensor,
                         labels: torch.Tensor):
    """Per-token log-probs (and entropies) of the completions, via grpo_swift's fused LM head."""
    seq = torch.cat([prompts, completions[:, :-1]], dim=1)
    hid = model.hidden_states(seq)[:, PROMPT_LEN - 1:]  # hidden state that predicts each completion token
    return gst.fused_log_probs(hid, model.head.weight, labels, bias=model.head.bias)


def rewards_of(a: np.ndarray, b: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """(N, 2) rewards: correctness, format."""
    correct = (comp[:, 0] == a + b).astype(np.float64)
    stops_right = comp[:, 0] < 10
    stops_right &= comp[:, 1] == EOS if comp.shape[1] > 1 else True
    stops_at_all = (comp == EOS).any(axis=1) & (comp[:, 0] != EOS)
    fmt = np.where(stops_right, 1.0, np.where(stops_at_all, 0.5, 0.0))
    return np.stack([correct, fmt], axis=1)


def train(steps: int, seed: int, prompts_per_step: int, num_generations: int, num_iterations: int,
          beta: float, lr: float, loss_type: str, max_new: int, progress: bool = True,
          advantages_fn=None) -> dict:
    """GRPO on "a+b=" for `steps` generations; returns the per-step history.

    advantages_fn(rewards (N, 2), weights, mask (N, T) bool, num_generations) -> (advantages (N,)
    or (N, T), fraction of rows in groups without reward spread) replaces the default,
    grpo_swift.group_advantages (TRL's GRPO); examples/estimators.py passes the other estimators.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pairs = np.array([(a, b) for a in range(10) for b in range(10) if a + b <= 9])
    policy = TinyLM()
    ref = copy.deepcopy(policy).requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    weights = [1.0, 0.5]
    opts = dict(loss_type=loss_type, beta=beta, epsilon=0.2, max_completion_length=max_new)
    hist: dict[str, list] = {k: [] for k in (
        "loss", "policy_term", "kl_term", "kl", "clip_low", "clip_high", "clip_region", "loss_first",
        "policy_term_first", "grad_norm_first", "correctness", "format", "reward", "frac_zero_std",
        "adv_q", "adv_zero", "entropy")}

    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=steps, desc="GRPO", unit="step", dynamic_ncols=True, file=sys.stdout)
        except ImportError:  # tqdm is optional: fall back to a line every 10%
            bar = None
    for step in range(steps):
        idx = rng.integers(0, len(pairs), size=prompts_per_step)
        ab = np.repeat(pairs[idx], num_generations, axis=0)  # G consecutive rows per prompt
        prompts = torch.tensor(np.stack([ab[:, 0], np.full(len(ab), PLUS), ab[:, 1], np.full(len(ab), EQ)], 1))
        comp = policy.generate(prompts, max_new, gen)
        c = comp.numpy()
        # mask: the completion up to and including its first <eos> (TRL's completion_mask)
        first_eos = np.where((c == EOS).any(1), (c == EOS).argmax(1), max_new - 1)
        mask = np.arange(max_new)[None, :] <= first_eos[:, None]
        labels = torch.where(torch.from_numpy(mask), comp, torch.full_like(comp, -100))

        r = rewards_of(ab[:, 0], ab[:, 1], c)
        if advantages_fn is None:
            ga = grpo_swift.group_advantages(r, num_generations, reward_weights=weights)
            adv, frac_zero_std = ga.advantages, float(ga.frac_reward_zero_std)
        else:
            adv, frac_zero_std = advantages_fn(r, weights, mask, num_generations)
        adv_kept = adv[mask] if adv.ndim == 2 else adv  # token-level estimators: the kept tokens
        with torch.no_grad():
            old_lp, _ = completion_log_probs(policy, prompts, comp, labels)
            ref_lp, _ = completion_log_probs(ref, prompts, comp, labels)
        old_np, ref_np = old_lp.numpy(), ref_lp.numpy()

        per_it = []
        for it in range(num_iterations):
            lp, ent = completion_log_probs(policy, prompts, comp, labels)
            res = grpo_swift.grpo_loss(lp.detach().numpy(), adv, mask, old_logps=old_np,
                                       ref_logps=ref_np, entropies=ent.detach().numpy(), **opts)
            opt.zero_grad()
            lp.backward(torch.from_numpy(res.grad))  # d loss / d logps from the Swift kernel
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            per_it.append(res)
            if it == 0:
                hist["loss_first"].append(res.loss)
                hist["policy_term_first"].append(res.metrics["policy_term"])
                hist["grad_norm_first"].append(float(np.linalg.norm(res.grad)))
        m = lambda k: float(np.mean([x.metrics[k] for x in per_it]))  # noqa: E731
        hist["loss"].append(float(np.mean([x.loss for x in per_it])))
        for k, name in (("policy_term", "policy_term"), ("kl_term", "kl_term"), ("kl", "kl"),
                        ("clip_low", "clip_ratio/low_mean"), ("clip_high", "clip_ratio/high_mean"),
                        ("clip_region", "clip_ratio/region_mean"), ("entropy", "entropy")):
            hist[k].append(m(name))
        hist["correctness"].append(float(r[:, 0].mean()))
        hist["format"].append(float(r[:, 1].mean()))
        hist["reward"].append(float((r * weights).sum(1).mean()))
        hist["frac_zero_std"].append(frac_zero_std)
        hist["adv_q"].append(np.percentile(adv_kept, [5, 25, 50, 75, 95]))
        hist["adv_zero"].append(float(np.mean(adv_kept == 0.0)))
        if bar is not None:
            bar.set_postfix(reward=f"{hist['reward'][-1]:.2f}", kl=f"{hist['kl'][-1]:.3f}",
                            loss=f"{hist['loss'][-1]:+.3f}", refresh=False)
            bar.update(1)
        elif progress and (step + 1) % max(1, steps // 10) == 0:
            print(f"step {step + 1}/{steps}  reward {hist['reward'][-1]:.2f}  kl {hist['kl'][-1]:.3f}  "
                  f"loss {hist['loss'][-1]:+.3f}", flush=True)
    if bar is not None:
        bar.close()
    out = {k: np.asarray(v) for k, v in hist.items()}
    out["weights"] = weights
    return out


def window_means(x: np.ndarray) -> tuple[float, float]:
    k = max(1, int(round(0.1 * len(x))))
    return float(np.mean(x[:k])), float(np.mean(x[-k:]))


def plot(h: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.arange(1, len(h["loss"]) + 1)
    fig, ax = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    a = ax[0, 0]
    a.plot(s, h["loss"], label="loss (mean over updates)", color="k", lw=1.2)
    a.plot(s, h["policy_term"], label="policy-loss part", lw=1)
    a.plot(s, h["kl_term"], label="KL part (beta * KL)", lw=1)
    a.plot(s, h["loss_first"], label="loss at the 1st update (ratio = 1)", lw=1, ls=":", color="tab:red")
    a.axhline(0, color="grey", lw=0.5)
    a.set_title("loss = policy-loss part + KL part")
    a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(s, h["kl"], color="tab:purple")
    a.set_title("KL(policy || reference), token mean")
    a = ax[0, 2]
    a.plot(s, h["correctness"], label="correctness")
    a.plot(s, h["format"], label="format")
    a.plot(s, h["reward"], label=f"total (weights {h['weights']})", color="k", lw=1)
    a.set_ylim(-0.02, 1.55)
    a.set_title("reward components (batch mean)")
    a.legend(fontsize=8)
    a = ax[1, 0]
    a.plot(s, h["clip_region"], label="region_mean", color="k")
    a.plot(s, h["clip_low"], label="low_mean (r < 1-eps, A < 0)", lw=1)
    a.plot(s, h["clip_high"], label="high_mean (r > 1+eps, A > 0)", lw=1)
    a.set_title("clip ratios (mean over the updates of a generation)")
    a.legend(fontsize=8)
    a = ax[1, 1]
    q = np.stack(h["adv_q"])
    a.fill_between(s, q[:, 0], q[:, 4], alpha=0.2, label="5-95%")
    a.fill_between(s, q[:, 1], q[:, 3], alpha=0.4, label="25-75%")
    a.plot(s, q[:, 2], lw=1, label="median")
    a.set_title("advantage distribution")
    a.legend(fontsize=8, loc="upper right")
    a = ax[1, 2]
    a.plot(s, h["frac_zero_std"], label="frac_reward_zero_std")
    a.plot(s, h["adv_zero"], label="fraction of advantages == 0", ls="--")
    a.set_ylim(-0.02, 1.02)
    a.set_title("groups without a learning signal")
    a.legend(fontsize=8)
    for a in ax.flat:
        a.set_xlabel("step (one generation)")
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reading(h: dict, beta: float, loss_type: str, num_iterations: int) -> str:
    r0, r1 = window_means(h["reward"])
    c0, c1 = window_means(h["correctness"])
    f0, f1 = window_means(h["format"])
    k0, k1 = window_means(h["kl"])
    cl0, cl1 = window_means(h["clip_region"])
    z0, z1 = window_means(h["frac_zero_std"])
    pt_first = np.abs(h["policy_term_first"])
    gn0 = h["grad_norm_first"][0]
    late_loss = window_means(h["loss"])[1]
    late_kl_term = window_means(h["kl_term"])[1]
    txt = (f"Reading: the mean reward went from {r0:.2f} (first 10% of steps) to {r1:.2f} (last 10%): "
           f"correctness {c0:.2f} -> {c1:.2f}, format {f0:.2f} -> {f1:.2f}. ")
    if pt_first.max() < 1e-6:  # grpo (and any type whose first-update value is ~0 on this run)
        txt += (f"The loss started at {h['loss_first'][0]:+.2e} (zero up to float32 rounding) although the "
                f"gradient norm at that update was {gn0:.3f}: at the first update of each generation the ratio "
                f"is 1 and each group's advantages sum to 0, so the '{loss_type}' policy part was at most "
                f"{pt_first.max():.1e} in magnitude at every first update, and the KL part is 0 while the "
                f"policy equals the reference. ")
    else:  # token-normalised types: -sum_i A_i L_i / normaliser at ratio 1
        txt += (f"The loss started at {h['loss_first'][0]:+.2e} with a gradient norm of {gn0:.3f}: for "
                f"'{loss_type}' the policy part at ratio 1 is -sum_i A_i L_i / normaliser, which is not 0 when "
                f"completion lengths differ (its magnitude at first updates averaged {pt_first.mean():.1e}); it "
                f"says whether the better completions were longer or shorter, not how well the policy does. ")
    if beta > 0:
        verb = "then rose with the KL" if late_loss > h["loss_first"][0] else "moved with the KL"
        txt += (f"The loss {verb} (mean KL {k0:.4f} -> {k1:.4f}; in the last 10% the KL part "
                f"beta*KL = {late_kl_term:.4f} of the mean loss {late_loss:+.4f}) as the policy moved away "
                f"from the reference: a rising loss here is the price of learning, not a failure. ")
    if num_iterations > 1:
        txt += (f"With {num_iterations} updates per generation the ratios move within a generation, and "
                f"the clipped share of the tokens (clip_ratio/region_mean) was {100 * cl0:.1f}% -> "
                f"{100 * cl1:.1f}% (first -> last 10%). ")
    txt += (f"The fraction of groups with no reward spread (all rewards equal: advantages exactly 0, no "
            f"gradient) went from {z0:.2f} to {z1:.2f}")
    if z1 > z0 + 0.2:
        txt += ": as the policy solves prompts, whole groups stop teaching it anything, and the loss and the "
        txt += "gradient of those groups are both exactly 0."
    else:
        txt += "."
    return txt


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The training options shared by this demo and examples/estimators.py."""
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--num-iterations", type=int, default=3, help="optimiser updates per generation")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--loss-type", default="grpo", choices=["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="generations (default 300; 60 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("out", "grpo_demo.png"), help="where to save the figure (PNG)")
    p.add_argument("--quick", action="store_true", help="a short run (what the tests use)")
    add_training_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    steps = args.steps if args.steps is not None else (60 if args.quick else 300)
    if steps < 1:
        p.error("--steps must be >= 1")
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they give

    print(f"grpo_swift {grpo_swift.__version__}: GRPO from scratch on 'a+b=' ({steps} steps x "
          f"{args.prompts} prompts x G={args.num_generations}, {args.num_iterations} updates per generation, "
          f"loss_type={args.loss_type!r}, beta={args.beta}, seed={args.seed})", flush=True)
    t0 = time.perf_counter()
    h = train(steps, args.seed, args.prompts, args.num_generations, args.num_iterations, args.beta, args.lr,
              args.loss_type, max_new=4, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    r0, r1 = window_means(h["reward"])
    print(f"\ntrained {steps} steps in {wall:.1f} s")
    print(f"mean reward, first 10% of steps: {r0:.3f}")
    print(f"mean reward, last 10% of steps:  {r1:.3f}")
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    plot(h, out, f"grpo_swift GRPO demo: {steps} steps, loss_type={args.loss_type}, beta={args.beta}, "
                 f"{args.num_iterations} updates/generation, seed {args.seed}")
    print(f"figure: {out}\n")
    print(reading(h, args.beta, args.loss_type, args.num_iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
