"""Data-parallel GRPO on torch.distributed with grpo_swift (the loop of torch_grpo.py, in N processes).

    torchrun --nproc_per_node 2 examples/distributed_grpo.py [--steps 60]
    python examples/distributed_grpo.py                       # one process: the same code, no collectives

Each process samples its share of the global batch (prompts x G completions, split by rows: a
group of G completions may span processes), then:
    grpo_swift.distributed.group_advantages   gathers every process's rewards, computes the group
                                              advantages once, keeps this process's rows
    grpo_swift.distributed.grpo_loss          the loss of this process's rows, normalised so that
                                              DDP's gradient average equals the single-process
                                              gradient of the whole batch; metrics reduced over
                                              the processes as TRL logs them
DDP (gloo, CPU) averages the gradients. Process 0 prints the reduced metrics.
"""
from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.distributed as dist

import grpo_swift.distributed as gsd
import grpo_swift.torch as gst

# The task and the policy of torch_grpo.py (same directory): single-digit sums, an MLP policy whose
# log-probs come from grpo_swift.torch.fused_log_probs.
from torch_grpo import Policy, sample, task_rewards  # noqa: E402


def run(steps: int = 60, seed: int = 0, prompts: int = 6, G: int = 8, T: int = 4, beta: float = 0.02,
        lr: float = 0.02, verbose: bool = True) -> list[float]:
    rank, world = gsd.world()
    torch.manual_seed(seed)  # the same initial weights on every process (DDP also broadcasts rank 0's)
    policy = Policy(prompts, T)
    ref = copy.deepcopy(policy).requires_grad_(False)
    model = torch.nn.parallel.DistributedDataParallel(policy) if world > 1 else policy
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    want = (torch.arange(prompts)[:, None] + torch.arange(1, T)[None, :]) % 10
    rows = prompts * G
    if rows % world:
        raise SystemExit(f"the global batch ({rows} rows) must split evenly over {world} processes")
    mine = slice(rank * rows // world, (rank + 1) * rows // world)  # groups may span processes
    sampler = torch.Generator().manual_seed(seed * 1000 + rank)  # each process samples its own completions
    history = []
    for step in range(steps):
        p = torch.arange(prompts).repeat_interleave(G)[mine]
        tokens = sample(policy, p, T, generator=sampler)
        with torch.no_grad():
            ref_lp = ref(p, tokens)
        rewards = task_rewards(tokens, p, want)
        adv = gsd.group_advantages(rewards, G, reward_weights=[1.0, 0.5])
        mask = torch.ones(len(p), T, dtype=torch.bool)
        loss, metrics = gsd.grpo_loss(model(p, tokens), adv.advantages, mask, ref_per_token_logps=ref_lp,
                                      loss_type="grpo", beta=beta)
        opt.zero_grad()
        loss.backward()  # DDP all-reduces (averages) the gradients
        opt.step()
        total = float(gsd.gather_rows(rewards @ torch.tensor([1.0, 0.5]))[0].mean())  # the whole batch's mean
        history.append(total)
        if verbose and rank == 0 and (step % 10 == 0 or step == steps - 1):
            print(f"step {step:3d}  reward {total:.3f}  loss {loss.item():+.4f}  kl {metrics['kl']:.5f}  "
                  f"tokens {metrics['num_tokens']:.0f} over {world} process(es)")
    return history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("gloo")
    try:
        r = run(args.steps, args.seed)
        k = max(1, len(r) // 10)
        if gsd.world()[0] == 0:
            print(f"mean reward: first {k} steps {sum(r[:k]) / k:.3f}, last {k} steps {sum(r[-k:]) / k:.3f}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
