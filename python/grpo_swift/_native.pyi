"""Type stubs of the private extension module grpo_swift._native."""
from typing import Any

ABI_VERSION: int
F32: int
F64: int
BF16: int
F16: int

def abi_version() -> int: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int, /) -> None: ...
def built_with_avx2() -> bool: ...
def group_advantages(
    rewards: Any, reward_weights: Any | None, num_generations: int, scale_rewards: int,
    aggregation: int, out_advantages: Any, out_mean: Any, out_std: Any, out_is_std_zero: Any, /
) -> None: ...
def selective_log_softmax(
    logits: Any, dtype: int, targets: Any, row_mask: Any | None, temperature: float,
    out_log_probs: Any, out_entropy: Any | None, out_logsumexp: Any | None, /
) -> None: ...
def selective_log_softmax_backward(
    logits: Any, dtype: int, targets: Any, row_mask: Any | None, temperature: float,
    logsumexp: Any | None, entropy: Any | None, grad_log_probs: Any | None, grad_entropy: Any | None,
    out_grad_logits: Any, grad_dtype: int, /
) -> None: ...
def fused_log_probs(
    hidden: Any, weight: Any, bias: Any | None, targets: Any, temperature: float, logit_scale: float,
    softcap: float, tile_rows: int, tile_cols: int, out_log_probs: Any, out_entropy: Any | None,
    out_logsumexp: Any | None, /
) -> None: ...
def fused_log_probs_backward(
    hidden: Any, weight: Any, bias: Any | None, targets: Any, temperature: float, logit_scale: float,
    softcap: float, tile_rows: int, tile_cols: int, logsumexp: Any, entropy: Any | None,
    grad_log_probs: Any | None, grad_entropy: Any | None, out_grad_hidden: Any | None,
    out_grad_weight: Any | None, out_grad_bias: Any | None, /
) -> None: ...
def fused_log_probs_scratch_bytes(
    n: int, hidden_size: int, vocab: int, temperature: float, logit_scale: float, softcap: float,
    tile_rows: int, tile_cols: int, dtype: int, /
) -> int: ...
def benchmark_sgemm_nt(a: Any, b: Any, out_c: Any, /) -> None: ...
def policy_loss(
    fn: str, logps: Any, old_logps: Any | None, ref_logps: Any | None, sampling_logps: Any | None,
    entropies: Any | None, advantages: Any, mask: Any, importance_sampling_ratio: Any | None,
    config: tuple, out_grad: Any | None, out_grad_entropies: Any | None, /
) -> tuple[float, ...]: ...
def torch_policy_loss(
    fn: str, logps: Any, old_logps: Any | None, ref_logps: Any | None, sampling_logps: Any | None,
    entropies: Any | None, advantages: Any, mask: Any, importance_sampling_ratio: Any | None,
    config: tuple, want_grad: bool, unlogged: tuple[int, int, int, int], registry: tuple, /
) -> tuple[Any, Any, Any | None, Any | None] | None: ...
def torch_fast_pointers() -> tuple[int, ...]: ...
def convert_f32(fn: str, src: Any, scale: float, out: Any, /) -> None: ...
def mask_u8(fn: str, arg: str, src: Any, out: Any, /) -> None: ...
def estimator_advantages(
    rewards: Any, group_ids: Any | None, num_generations: int, lengths: Any | None,
    config: tuple[int, int, int, int, int, int, float, float, float, float], out: Any, /
) -> None: ...
def token_advantages(
    rewards: Any, response_mask: Any, group_ids: Any | None, num_generations: int,
    config: tuple[int, int, int, int, int, int, float, float, float, float], out: Any, returns: Any | None, /
) -> None: ...
def zero_spread_groups(
    rewards: Any, group_ids: Any | None, num_generations: int, tolerance: float, out: Any, /
) -> None: ...
def fused_linear_loss(
    fn: str, batch: int, length: int, hidden: Any, weight: Any, bias: Any | None, targets: Any, mask: Any,
    advantages: Any, advantages_cols: int, old_logps: Any | None, ref_logps: Any | None,
    sampling_logps: Any | None, ref_hidden: Any | None, ref_weight: Any | None, ref_bias: Any | None,
    importance_sampling_ratio: Any | None, importance_sampling_ratio_cols: int, loss_config: tuple,
    head_config: tuple, out_grad_hidden: Any | None, out_grad_weight: Any | None, out_grad_bias: Any | None,
    out_log_probs: Any | None, out_entropy: Any | None, scratch_budget: int, /
) -> tuple[float, ...]: ...
def fused_linear_loss_scratch_bytes(
    batch: int, length: int, hidden_size: int, vocab: int, head_config: tuple, dtype: int, ref_from_hidden: int,
    top_entropy_quantile_below_one: int, scratch_budget: int, /
) -> int: ...
