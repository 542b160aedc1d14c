"""GRPO with numpy only: advantages, log-probs, loss and a hand-written gradient step.

The policy is a table of logits theta[prompt, token] (a softmax policy: every token of a
completion is drawn from softmax(theta[prompt])). The reward of a completion is the
fraction of its tokens equal to the prompt's target token, plus 0.5 if it ends with <eos>
(token 0). grpo_swift gives the advantages, the per-token log-probs, the loss with its
gradient d loss / d log-probs, and the backward of the log-softmax (d loss / d logits);
the rest is plain numpy and SGD.

    python examples/numpy_grpo.py [--steps 60] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np

import grpo_swift


def run(steps: int = 60, seed: int = 0, prompts: int = 4, G: int = 8, T: int = 6, V: int = 8,
        lr: float = 5.0, verbose: bool = True) -> list[float]:
    rng = np.random.default_rng(seed)
    theta = np.zeros((prompts, V), dtype=np.float32)  # the policy's parameters: uniform to start
    target = rng.integers(1, V, size=prompts)          # each prompt's target token (not <eos>)
    rewards_per_step = []
    for step in range(steps):
        p = np.repeat(np.arange(prompts), G)           # G consecutive completions per prompt
        probs = np.exp(theta[p]) / np.exp(theta[p]).sum(1, keepdims=True)
        tokens = np.stack([[rng.choice(V, p=pr) for _ in range(T)] for pr in probs])  # (B, T)
        mask = np.ones((len(p), T), dtype=bool)
        correct = (tokens == target[p][:, None]).mean(1)
        ends = (tokens[:, -1] == 0).astype(np.float64)
        rewards = np.stack([correct, ends], axis=1)    # two reward functions

        adv = grpo_swift.group_advantages(rewards, G, reward_weights=[1.0, 0.5])
        logits = np.ascontiguousarray(np.broadcast_to(theta[p][:, None, :], (len(p), T, V)))
        fwd = grpo_swift.selective_log_softmax_forward(logits, tokens)
        res = grpo_swift.grpo_loss(fwd.log_probs, adv.advantages, mask, loss_type="grpo")
        # chain rule by hand: d loss / d logits (B, T, V), then sum over the positions that share theta[p]
        g_logits = grpo_swift.selective_log_softmax_backward(logits, tokens, grad_log_probs=res.grad,
                                                             logsumexp=fwd.logsumexp)
        g_theta = np.zeros_like(theta)
        np.add.at(g_theta, p, g_logits.sum(axis=1))
        theta -= lr * g_theta                           # plain SGD
        total = float((rewards * [1.0, 0.5]).sum(1).mean())
        rewards_per_step.append(total)
        if verbose and (step % 10 == 0 or step == steps - 1):
            print(f"step {step:3d}  reward {total:.3f}  loss {res.loss:+.2e}  |grad| {np.linalg.norm(res.grad):.4f}  "
                  f"frac_reward_zero_std {adv.frac_reward_zero_std:.2f}")
    return rewards_per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = run(args.steps, args.seed)
    k = max(1, len(r) // 10)
    print(f"mean reward: first {k} steps {np.mean(r[:k]):.3f}, last {k} steps {np.mean(r[-k:]):.3f}")


if __name__ == "__main__":
    main()
