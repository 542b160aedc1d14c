"""Group-relative advantages (TRL 1.16 GRPOTrainer semantics), computed in Swift."""
from __future__ import annotations

from typing import Literal, NamedTuple, Sequence, Union

import numpy as np

from . import _native
from ._validation import choice, float_array, integer

ScaleRewards = Union[Literal["group", "batch", "none"], bool]
Aggregation = Literal["sum_then_normalize", "normalize_then_sum"]

_SCALE = {"group": 0, "batch": 1, "none": 2}
_AGGREGATION = {"sum_then_normalize": 0, "normalize_then_sum": 1}
_AGGREGATION_NAMES = tuple(_AGGREGATION)
_SCALE_NAMES = tuple(_SCALE)


class AdvantagesResult(NamedTuple):
    """Per-row advantages and the statistics they were normalised with.

    advantages:  (N,) the advantage of each completion (0 for unscorable rows).
    mean:        (N,) the baseline subtracted (the group's nanmean; for normalize_then_sum the
                 batch mean of the summed z-scores).
    std:         (N,) the std divided by (plus 1e-4): group or batch nanstd (NaN when a
                 group has fewer than 2 valid rewards).
    is_std_zero: (N,) bool, std == 0 (within torch.isclose's tolerance): the group has no
                 reward spread, so its completions carry no learning signal. TRL logs its
                 mean as `frac_reward_zero_std`.
    """

    advantages: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    is_std_zero: np.ndarray

    @property
    def frac_reward_zero_std(self) -> float:
        """Fraction of rows whose group has zero reward spread (TRL's metric)."""
        z = self.is_std_zero  # numpy or (grpo_swift.torch) a bool tensor, whose .mean() torch refuses
        n = z.numel() if hasattr(z, "numel") else z.size
        return float(z.sum()) / n if n else 0.0


def _scale_name(scale_rewards: ScaleRewards) -> str:
    if scale_rewards is True:
        return "group"
    if scale_rewards is False:
        return "none"
    return choice(scale_rewards, "group_advantages", "scale_rewards", _SCALE_NAMES)


def group_advantages(
    rewards,
    num_generations: int,
    *,
    scale_rewards: ScaleRewards = "group",
    reward_weights: Sequence[float] | np.ndarray | None = None,
    multi_objective_aggregation: Aggregation = "sum_then_normalize",
) -> AdvantagesResult:
    """Group-relative advantages exactly as TRL 1.16's GRPOTrainer computes them.

    Args:
        rewards: (N,) or (N, F) float32/float64 array-like, one column per reward function;
            NaN marks a missing reward. A row whose rewards are all NaN is unscorable and
            gets advantage 0 (it is excluded from its group's statistics).
        num_generations: G >= 2; groups are G consecutive rows; N must be a multiple of G.
        scale_rewards: "group" (divide by the group std + 1e-4), "batch" (by the whole-batch
            std + 1e-4; the mean stays per group), "none" (no division); True = "group",
            False = "none".
        reward_weights: (F,) weights of the reward functions (default all 1).
        multi_objective_aggregation: "sum_then_normalize" (weighted nansum, then the group
            normalisation) or "normalize_then_sum" (GDPO: per-function group z-scores,
            weighted nansum, then a batch z-score; `scale_rewards` does not apply).

    Returns:
        AdvantagesResult with numpy arrays of the rewards' dtype (float64 for lists).

    The std is two-pass and Bessel-corrected over valid entries; a group of identical
    rewards gives advantages of exactly 0. All arithmetic runs in float64.
    """
    fn = "group_advantages"
    r = float_array(rewards, fn, "rewards", ndim=(1, 2))
    g = integer(num_generations, fn, "num_generations", minimum=2)
    scale = _scale_name(scale_rewards)
    agg = choice(multi_objective_aggregation, fn, "multi_objective_aggregation", _AGGREGATION_NAMES)
    if r.size == 0:
        raise ValueError(f"{fn}(): argument 'rewards' must not be empty, got shape {r.shape}")
    if r.shape[0] % g:
        raise ValueError(f"{fn}(): the number of rows of 'rewards' ({r.shape[0]}) must be a multiple "
                         f"of num_generations ({g})")
    num_funcs = 1 if r.ndim == 1 else r.shape[1]
    w = None
    if reward_weights is not None:
        # A few weights: cast to the rewards' dtype (TRL keeps them as float32 too).
        w = np.ascontiguousarray(float_array(reward_weights, fn, "reward_weights", ndim=(1,)), dtype=r.dtype)
        if w.shape[0] != num_funcs:
            raise ValueError(f"{fn}(): argument 'reward_weights' must have one weight per reward "
                             f"function ({num_funcs}), got {w.shape[0]}")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{fn}(): argument 'reward_weights' must be finite, got {w.tolist()}")
    n = r.shape[0]
    out = np.empty((3, n), dtype=r.dtype)  # one allocation: advantages, mean, std
    zero = np.empty(n, dtype=np.bool_)
    adv, mean, std = out[0], out[1], out[2]  # indexing: half the cost of unpacking the rows
    _native.group_advantages(r, w, g, _SCALE[scale], _AGGREGATION[agg], adv, mean, std, zero)
    return AdvantagesResult(adv, mean, std, zero)
