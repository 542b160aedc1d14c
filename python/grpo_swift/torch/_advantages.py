"""group_advantages for torch tensors, as a torch.library custom op (torch.compile-safe)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .._advantages import _AGGREGATION_NAMES, AdvantagesResult, _scale_name, group_advantages as _np_group_advantages
from .._validation import choice, float_array, integer
from ._interop import buffer_of, call_kernel_op, check_tensor, kernel_op


def _group_advantages_impl(rewards: torch.Tensor, reward_weights: torch.Tensor | None, num_generations: int,
                           scale_rewards: str, multi_objective_aggregation: str
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    weights = None if reward_weights is None else buffer_of(reward_weights.to(rewards.dtype))
    res = _np_group_advantages(buffer_of(rewards), num_generations, scale_rewards=scale_rewards,
                               reward_weights=weights, multi_objective_aggregation=multi_objective_aggregation)
    return (torch.from_numpy(res.advantages), torch.from_numpy(res.mean), torch.from_numpy(res.std),
            torch.from_numpy(res.is_std_zero))


def _group_advantages_fake(rewards, reward_weights, num_generations, scale_rewards, multi_objective_aggregation):
    n = rewards.shape[0]
    return (rewards.new_empty(n), rewards.new_empty(n), rewards.new_empty(n),
            rewards.new_empty(n, dtype=torch.bool))


_group_advantages_op = kernel_op("grpo_swift::group_advantages", _group_advantages_impl, _group_advantages_fake)


def group_advantages(rewards: torch.Tensor, num_generations: int, *, scale_rewards="group",
                     reward_weights: Sequence[float] | torch.Tensor | None = None,
                     multi_objective_aggregation: str = "sum_then_normalize") -> AdvantagesResult:
    """`grpo_swift.group_advantages` for a (N,) or (N, F) float32/float64 CPU tensor.

    Returns an AdvantagesResult of tensors (advantages, mean, std of the rewards' dtype;
    is_std_zero bool). Works under torch.compile(fullgraph=True) (the custom op
    grpo_swift::group_advantages); eager calls run the same implementation without the
    dispatcher. Rewards carry no gradient.
    """
    fn = "group_advantages"
    rewards = check_tensor(rewards, fn, "rewards", dtypes=(torch.float32, torch.float64), ndim=(1, 2))
    # Validated here: the custom op's schema would reject a wrong type with a RuntimeError.
    num_generations = integer(num_generations, fn, "num_generations", minimum=2)
    choice(multi_objective_aggregation, fn, "multi_objective_aggregation", _AGGREGATION_NAMES)
    if isinstance(reward_weights, torch.Tensor):
        reward_weights = check_tensor(reward_weights, fn, "reward_weights",
                                      dtypes=(torch.float32, torch.float64), ndim=(1,))
    elif reward_weights is not None:
        reward_weights = torch.from_numpy(np.array(float_array(reward_weights, fn, "reward_weights", ndim=(1,)),
                                                   dtype=np.float32 if rewards.dtype == torch.float32 else np.float64))
    out = call_kernel_op(_group_advantages_op, _group_advantages_impl, rewards.detach(), reward_weights,
                         num_generations, _scale_name(scale_rewards), multi_objective_aggregation)
    return AdvantagesResult(*out)
