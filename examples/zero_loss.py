"""Why is my GRPO loss zero? Every number in docs/zero_loss.md comes from this script.

    python examples/zero_loss.py

A batch of 3 prompts x G=4 completions of different lengths, scored 0/1, at the first
update of a generation: the old policy IS the current one (old_logps=None: ratio 1, TRL's
`per_token_logps.detach()`) and the policy still equals the reference. It prints, for each
loss_type, the loss grpo_swift computes next to its closed form, the gradient, and what
happens when no group has any reward spread. `results()` returns the numbers (the tests
assert them).
"""
from __future__ import annotations

import numpy as np

import grpo_swift

G = 4
MAX_LEN = 8
LENGTHS = np.array([3, 5, 8, 2, 6, 4, 7, 1, 5, 8, 3, 2])  # completion lengths L_i
# Each group is half right, so each group's advantages are +x and -x and sum to exactly 0.0
# in floating point too.
REWARDS = np.array([1, 0, 1, 0,    # prompt 0
                    0, 1, 1, 0,    # prompt 1
                    1, 1, 0, 0],   # prompt 2
                   dtype=np.float64)
# Unbalanced groups: the advantages sum to 0 only up to rounding (about 1e-16 in float64).
REWARDS_UNBALANCED = np.array([1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0], dtype=np.float64)


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    B = len(LENGTHS)
    mask = np.arange(MAX_LEN)[None, :] < LENGTHS[:, None]
    logps = np.where(mask, -rng.uniform(0.05, 3.0, size=(B, MAX_LEN)), 0.0)  # float64 log-probs
    return logps, mask


def results() -> dict:
    logps, mask = batch()
    B = len(LENGTHS)
    L = mask.sum(1).astype(np.float64)
    N = L.sum()
    adv = grpo_swift.group_advantages(REWARDS[:, None], G).advantages  # TRL's defaults: scale_rewards="group"
    out: dict = {"advantages": adv, "group_sums": adv.reshape(-1, G).sum(1), "lengths": L}

    # closed forms at ratio 1 with beta = 0 (l_it = -A_i on every active token)
    s = float(np.sum(adv * L))  # sum_i A_i L_i
    closed = {
        "grpo": -float(np.mean(adv)),  # mean_i [ sum_t(-A_i) / L_i ]
        "bnpo": -s / N,
        "dr_grpo": -s / (B * MAX_LEN),
        "dapo": -s / N,  # N = num_items_in_batch (here: the batch's active tokens)
        "luspo": -s / B,
    }
    out["closed"] = closed
    out["loss"], out["grad_norm"], out["grad"] = {}, {}, {}
    for lt in closed:
        r = grpo_swift.grpo_loss(logps, adv, mask, loss_type=lt, beta=0.0, max_completion_length=MAX_LEN)
        out["loss"][lt] = r.loss
        out["grad_norm"][lt] = float(np.linalg.norm(r.grad))
        out["grad"][lt] = r.grad
    # the other variants at ratio 1. sapo: l = -(4/tau) sigmoid(0) A = -2 A / tau(A), with a
    # different temperature for A > 0 and A < 0. cispo and vespo: l = -w A logp with w = 1
    # (cispo: min(r, epsilon_high) = 1; vespo: phi(log w = 0) = 1), normalised like dapo.
    tau = np.where(adv > 0, 1.0, 1.05)  # TRL's sapo_temperature_pos / _neg defaults
    A_lp = float(np.sum(adv[:, None] * logps * mask))
    out["other_closed"] = {"sapo": float(np.mean(-2.0 * adv / tau)), "cispo": -A_lp / N, "vespo": -A_lp / N}
    out["other_loss"] = {lt: grpo_swift.grpo_loss(logps, adv, mask, loss_type=lt, epsilon_high=5.0 if lt == "cispo"
                                                  else None).loss for lt in out["other_closed"]}

    # the grpo gradient is REINFORCE: -A_i / (L_i B) on each active token
    out["grpo_grad_closed"] = np.where(mask, -adv[:, None] / (L[:, None] * B), 0.0)

    # unbalanced groups: the loss is 0 only up to the rounding of the advantages' sum
    au = grpo_swift.group_advantages(REWARDS_UNBALANCED[:, None], G).advantages
    r = grpo_swift.grpo_loss(logps, au, mask, loss_type="grpo")
    out["unbalanced"] = {"loss": r.loss, "group_sums": au.reshape(-1, G).sum(1), "grad_norm": float(np.linalg.norm(r.grad))}

    # the same step with beta = 0.04 and the reference equal to the policy: KL = 0, loss unchanged
    r = grpo_swift.grpo_loss(logps, adv, mask, loss_type="grpo", beta=0.04, ref_logps=logps.copy())
    out["beta_loss"], out["beta_kl"] = r.loss, r.metrics["kl"]

    # a later update: the policy has moved (old != current) and away from the reference
    rng = np.random.default_rng(1)
    moved = np.where(mask, logps + rng.normal(0, 0.1, logps.shape), 0.0)
    r = grpo_swift.grpo_loss(moved, adv, mask, old_logps=logps, ref_logps=logps, loss_type="grpo", beta=0.04)
    out["later"] = {k: r.metrics[k] for k in ("policy_term", "kl_term", "kl")}
    out["later"]["loss"] = r.loss

    # no group has any reward spread: advantages exactly 0 -> loss AND gradient exactly 0
    flat = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.float64)
    a0 = grpo_swift.group_advantages(flat[:, None], G)
    r = grpo_swift.grpo_loss(logps, a0.advantages, mask, loss_type="grpo")
    out["flat"] = {"frac_reward_zero_std": a0.frac_reward_zero_std, "loss": r.loss,
                   "grad_max_abs": float(np.abs(r.grad).max()), "adv_max_abs": float(np.abs(a0.advantages).max())}
    return out


def main() -> None:
    r = results()
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    print("rewards:        ", REWARDS.astype(int).tolist())
    print("lengths L_i:    ", r["lengths"].astype(int).tolist())
    print("advantages A_i: ", np.round(r["advantages"], 4).tolist())
    print("sum of A_i per group:", [f"{x:.1e}" for x in r["group_sums"]])
    print("\nratio 1 (first update), beta = 0:")
    print(f"{'loss_type':>9} {'grpo_swift loss':>16} {'closed form':>12} {'grad norm':>10}")
    for lt, c in r["closed"].items():
        print(f"{lt:>9} {r['loss'][lt]:16.6g} {c + 0.0:12.6g} {r['grad_norm'][lt]:10.4f}")
    print(f"grpo loss == 0.0 exactly: {r['loss']['grpo'] == 0.0}")
    for lt, c in r["other_closed"].items():
        print(f"{lt:>9} {r['other_loss'][lt]:16.6g} {c:12.6g}   (not 0: see the doc)")
    dev = np.max(np.abs(r["grad"]["grpo"] - r["grpo_grad_closed"]))
    print(f"grpo gradient vs -A_i / (L_i B): max abs difference {dev:.1e}")
    u = r["unbalanced"]
    print(f"unbalanced rewards {REWARDS_UNBALANCED.astype(int).tolist()}: group sums of A "
          f"{[f'{x:.1e}' for x in u['group_sums']]}, "
          f"grpo loss {u['loss']:.1e}, grad norm {u['grad_norm']:.4f}")
    print(f"\nbeta = 0.04, reference == policy: loss {r['beta_loss']:g}, kl {r['beta_kl']:g}")
    lt = r["later"]
    print(f"a later update (policy moved): loss {lt['loss']:.6f} = policy term {lt['policy_term']:.6f} "
          f"+ kl term {lt['kl_term']:.6f} (kl {lt['kl']:.6f})")
    f = r["flat"]
    print(f"\nno reward spread in any group: frac_reward_zero_std {f['frac_reward_zero_std']:.1f}, "
          f"max |A| {f['adv_max_abs']:.1f}, loss {f['loss']:.1f}, max |grad| {f['grad_max_abs']:.1f}")


if __name__ == "__main__":
    main()
