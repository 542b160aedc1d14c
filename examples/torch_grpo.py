"""A plain PyTorch GRPO loop on grpo_swift.torch (no TRL).

The policy: a prompt embedding plus a position embedding through a small MLP gives one
hidden state per completion position; the LM head turns it into a token. Prompt k asks for
the sequence k+1, k+2, ... (mod 10) followed by <eos>. Rewards: correctness (the fraction
of the T-1 answer tokens that are right) and format (1 if the last token is <eos>).

Every GRPO piece is a grpo_swift.torch call with autograd:
    grpo_swift.torch.group_advantages   advantages from the (N, 2) rewards
    grpo_swift.torch.fused_log_probs    log-probs from hidden states + LM head weight
    grpo_swift.torch.grpo_loss          TRL's loss; loss.backward() runs the Swift backward

    python examples/torch_grpo.py [--steps 80] [--seed 0]
"""
from __future__ import annotations

import argparse
import copy

import torch

import grpo_swift.torch as gst

V, EOS = 11, 10  # digits 0-9 and <eos>


class Policy(torch.nn.Module):
    def __init__(self, prompts: int, T: int, hidden: int = 32) -> None:
        super().__init__()
        self.prompt = torch.nn.Embedding(prompts, hidden)
        self.pos = torch.nn.Embedding(T, hidden)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh())
        self.head = torch.nn.Linear(hidden, V, bias=False)

    def hidden(self, prompt_ids: torch.Tensor) -> torch.Tensor:  # (B, T, H)
        return self.mlp(self.prompt(prompt_ids)[:, None, :] + self.pos.weight[None])

    def log_probs(self, prompt_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        lp, _entropy = gst.fused_log_probs(self.hidden(prompt_ids), self.head.weight, tokens)
        return lp

    forward = log_probs  # so that a DDP wrapper (examples/distributed_grpo.py) can call it


def sample(policy: Policy, prompt_ids: torch.Tensor, T: int, generator=None) -> torch.Tensor:
    """Completions (B, T) sampled from the policy (no gradient)."""
    with torch.no_grad():
        probs = torch.softmax(policy.hidden(prompt_ids) @ policy.head.weight.T, dim=-1)
        return torch.multinomial(probs.reshape(-1, V), 1, generator=generator).reshape(len(prompt_ids), T)


def task_rewards(tokens: torch.Tensor, prompt_ids: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """(B, 2): correctness (the share of the T-1 target digits hit) and format (ends with <eos>)."""
    correctness = (tokens[:, :-1] == want[prompt_ids]).float().mean(1)
    fmt = (tokens[:, -1] == EOS).float()
    return torch.stack([correctness, fmt], dim=1)


def run(steps: int = 80, seed: int = 0, prompts: int = 6, G: int = 8, T: int = 4, num_iterations: int = 2,
        beta: float = 0.02, lr: float = 0.02, verbose: bool = True) -> list[float]:
    torch.manual_seed(seed)
    policy = Policy(prompts, T)
    ref = copy.deepcopy(policy).requires_grad_(False)  # the reference model for the KL term
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    want = (torch.arange(prompts)[:, None] + torch.arange(1, T)[None, :]) % 10  # (prompts, T-1)
    history = []
    for step in range(steps):
        p = torch.arange(prompts).repeat_interleave(G)  # G consecutive completions per prompt
        tokens = sample(policy, p, T)  # generation
        with torch.no_grad():
            old_lp = policy.log_probs(p, tokens)
            ref_lp = ref.log_probs(p, tokens)
        rewards = task_rewards(tokens, p, want)
        adv = gst.group_advantages(rewards, G, reward_weights=[1.0, 0.5]).advantages
        mask = torch.ones(len(p), T, dtype=torch.bool)
        for _ in range(num_iterations):  # several updates per generation: ratios move, clipping acts
            loss, metrics = gst.grpo_loss(policy.log_probs(p, tokens), adv, mask, old_per_token_logps=old_lp,
                                          ref_per_token_logps=ref_lp, loss_type="grpo", beta=beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        total = float((rewards @ torch.tensor([1.0, 0.5])).mean())
        history.append(total)
        if verbose and (step % 10 == 0 or step == steps - 1):
            print(f"step {step:3d}  reward {total:.3f}  loss {loss.item():+.4f}  kl {metrics['kl'].item():.4f}  "
                  f"clip region {metrics['clip_ratio/region_mean'].item():.3f}")
    return history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    r = run(args.steps, args.seed)
    k = max(1, len(r) // 10)
    print(f"mean reward: first {k} steps {sum(r[:k]) / k:.3f}, last {k} steps {sum(r[-k:]) / k:.3f}")


if __name__ == "__main__":
    main()
