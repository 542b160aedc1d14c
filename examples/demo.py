"""grpo_swift demo: group advantages for a realistic GRPO batch.

4 prompts x 8 completions, two reward functions (correctness 0/1 and a format score in
[0, 1]), one completion whose rewards are both missing (NaN: unscorable), one prompt that
every completion got right (no reward spread: no learning signal).
    make demo            (or: python examples/demo.py)
"""
import numpy as np

import grpo_swift


def main() -> None:
    rng = np.random.default_rng(7)
    prompts, g = 4, 8
    correctness = rng.integers(0, 2, size=(prompts, g)).astype(np.float64)
    correctness[2] = 1.0  # prompt 2: every completion correct
    fmt = rng.uniform(0.0, 1.0, size=(prompts, g)).round(2)
    fmt[2] = 1.0
    rewards = np.stack([correctness.ravel(), fmt.ravel()], axis=1)
    rewards[13] = np.nan  # an unscorable completion
    weights = [1.0, 0.5]

    res = grpo_swift.group_advantages(rewards, g, reward_weights=weights)
    print(f"grpo_swift {grpo_swift.__version__}: group advantages, G={g}, weights={weights}, "
          f"scale_rewards='group' (TRL 1.16 default)\n")
    print(f"{'row':>4} {'prompt':>6} {'correct':>8} {'format':>7} {'reward':>7} {'mean':>7} "
          f"{'std':>7} {'advantage':>10}")
    for i in range(prompts * g):
        total = np.nansum(rewards[i] * weights) if not np.all(np.isnan(rewards[i])) else np.nan
        print(f"{i:4d} {i // g:6d} {rewards[i, 0]:8.0f} {rewards[i, 1]:7.2f} {total:7.2f} "
              f"{res.mean[i]:7.3f} {res.std[i]:7.3f} {res.advantages[i]:10.4f}")
    print(f"\nfrac_reward_zero_std = {res.frac_reward_zero_std:.3f}  (prompt 2 has no reward spread: "
          "its advantages are exactly 0)")
    print("per-group sum of advantages (centred, so ~0):",
          np.round(res.advantages.reshape(prompts, g).sum(axis=1), 12).tolist())
    print("\nWhy GRPO's loss starts at 0: on the first update the ratio is 1 and the advantages of "
          "each group sum to 0, so the 'grpo' policy loss -mean(A) is 0; its gradient is not.")


if __name__ == "__main__":
    main()
