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
