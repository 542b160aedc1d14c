"""grpo_swift for PyTorch: autograd functions, nn.Modules and torch.compile-safe custom ops.

Tensors are handed to the Swift kernels without copies when they are contiguous CPU
tensors (float32, float64, float16, bfloat16); see `grpo_swift.torch._interop`.
"""
from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError("grpo_swift.torch needs PyTorch: pip install 'grpo-swift[torch]' (or pip install torch)") from exc

from ._advantages import group_advantages
from ._estimators import (
    AdvantagesAndReturns,
    advantages,
    dr_grpo_advantages,
    gpg_advantages,
    informative_rows,
    opo_advantages,
    passk_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    zero_spread_groups,
)
from ._fused_loss import FusedLinearGRPOLoss, fused_linear_grpo_loss
from ._logprobs import fused_log_probs, selective_log_softmax
from ._loss import GRPOLoss, LossMetrics, grpo_loss, loss_with_config

__all__ = ["group_advantages", "selective_log_softmax", "fused_log_probs", "grpo_loss", "loss_with_config", "GRPOLoss", "LossMetrics",
           "FusedLinearGRPOLoss", "fused_linear_grpo_loss",
           # advantage estimators (torch/_estimators.py)
           "advantages", "dr_grpo_advantages", "rloo_advantages", "opo_advantages", "gpg_advantages",
           "passk_advantages", "reinforce_pp_advantages", "reinforce_pp_baseline_advantages", "zero_spread_groups",
           "informative_rows", "AdvantagesAndReturns"]
