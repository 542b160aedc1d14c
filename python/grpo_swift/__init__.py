"""grpo_swift: fast, exact GRPO kernels written in Swift.

Everything a GRPO step needs after the model's backbone: group advantages, per-token
log-probs and entropy, the loss of every TRL 1.16 GRPO variant and its gradient.

Front doors: this module (numpy), `grpo_swift.torch` (autograd functions; needs torch),
`grpo_swift.trl` (a GRPOTrainer drop-in; needs trl).
"""
from __future__ import annotations

from ._blas import configure_openblas_coretype as _configure_openblas_coretype

_configure_openblas_coretype()  # must run before _native loads libopenblas (see _blas.py)

from . import _native  # noqa: E402
from ._advantages import AdvantagesResult, group_advantages  # noqa: E402
from ._loss import LossConfig, LossResult, grpo_loss, loss_with_config  # noqa: E402
from ._logprobs import (  # noqa: E402
    LogProbsResult,
    fused_log_probs,
    fused_log_probs_backward,
    fused_log_probs_forward,
    fused_log_probs_scratch_bytes,
    selective_log_softmax,
    selective_log_softmax_backward,
    selective_log_softmax_forward,
)
from ._estimators import (  # noqa: E402
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
from ._controllers import AdaptiveEntropyController, AdaptiveKLController  # noqa: E402
from ._fused_loss import (  # noqa: E402
    FusedLinearLossResult,
    fused_linear_grpo_loss,
    fused_linear_loss_scratch_bytes,
)

__version__ = "0.1.0"

__all__ = [
    "AdvantagesResult",
    "group_advantages",
    "LossConfig",
    "LossResult",
    "grpo_loss",
    "loss_with_config",
    "LogProbsResult",
    "selective_log_softmax",
    "selective_log_softmax_forward",
    "selective_log_softmax_backward",
    "fused_log_probs",
    "fused_log_probs_forward",
    "fused_log_probs_backward",
    "fused_log_probs_scratch_bytes",
    "advantages",
    "AdvantagesAndReturns",
    "dr_grpo_advantages",
    "rloo_advantages",
    "opo_advantages",
    "gpg_advantages",
    "passk_advantages",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "zero_spread_groups",
    "informative_rows",
    "AdaptiveKLController",
    "AdaptiveEntropyController",
    "FusedLinearLossResult",
    "fused_linear_grpo_loss",
    "fused_linear_loss_scratch_bytes",
    "get_num_threads",
    "set_num_threads",
    "__version__",
]


def get_num_threads() -> int:
    """The number of worker threads the kernels use.

    Initialised from the environment variable GRPO_SWIFT_NUM_THREADS, else the number of
    online CPUs. Results are bitwise identical for any thread count.
    """
    return _native.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of kernel worker threads (1 to 1024)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads(): argument 'n' must be an int, got {type(n).__name__}")
    _native.set_num_threads(n)
