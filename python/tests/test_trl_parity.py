"""Stock trl.GRPOTrainer vs grpo_swift's SwiftGRPOTrainer: same seed, same completions, same
3 training steps on CPU -> same per-step loss, grad norm, logged metrics and final parameters.

Parameters are compared after SGD steps: with Adam, a parameter whose true gradient is exactly
zero (e.g. the k_proj bias, by softmax shift invariance) receives +-lr updates driven by
rounding noise, which no two implementations share; one AdamW case compares everything but
the parameters whose gradient is such noise (|update| differing only there is checked).
"""
from __future__ import annotations

import math

import pytest

from test_trl_common import (  # noqa: F401
    ensure_torch_grpo_loss, make_model, make_tokenizer, pytestmark, reward_distinct, run)

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")

from grpo_swift.trl import SwiftGRPOTrainer  # noqa: E402

ensure_torch_grpo_loss()

_SKIP_KEYS = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "epoch", "step"}


def _close(a, b, rtol, atol):
    return abs(a - b) <= atol + rtol * abs(b)


def compare(stock, swift, *, params=True):
    assert stock["completions"], "the reward function saw no completions"
    assert stock["completions"] == swift["completions"], "the two runs generated different completions"
    t = swift["trainer"]
    assert t.grpo_swift_calls["loss"] > 0 and t.grpo_swift_calls["log_probs"] > 0
    assert t.grpo_swift_calls["advantages"] > 0
    assert len(stock["logs"]) == len(swift["logs"]) > 0
    for step, (a, b) in enumerate(zip(stock["logs"], swift["logs"])):
        assert _close(b["loss"], a["loss"], 1e-4, 1e-5), (step, "loss", a["loss"], b["loss"])
        assert _close(b["grad_norm"], a["grad_norm"], 1e-4, 0.0), (step, "grad_norm", a["grad_norm"], b["grad_norm"])
        missing = set(a) - set(b)
        assert not missing, f"metrics TRL logs but SwiftGRPOTrainer does not: {missing}"
        extra = {k for k in set(b) - set(a) if not k.startswith("grpo_swift/")}
        assert not extra, f"unexpected metrics: {extra}"
        for k in a:
            if k in _SKIP_KEYS or not isinstance(a[k], float):
                continue
            if a[k] is None or (isinstance(a[k], float) and math.isnan(a[k])):
                assert b[k] is None or math.isnan(b[k]), (step, k)
                continue
            assert _close(b[k], a[k], 1e-4, 1e-5), (step, k, a[k], b[k])
        for k in ("grpo_swift/policy_term", "grpo_swift/kl_term", "grpo_swift/entropy_term"):
            assert k in b
    if params:
        for name, p in stock["params"].items():
            diff = (p - swift["params"][name]).abs().max().item()
            assert diff <= 1e-5, (name, diff)


CASES = {
    "dr_grpo": dict(loss_type="dr_grpo"),
    "dapo-ga2": dict(loss_type="dapo", gradient_accumulation_steps=2, per_device_train_batch_size=2),
    "luspo-seq": dict(loss_type="luspo", importance_sampling_level="sequence", num_iterations=2),
    "cispo-iter2": dict(loss_type="cispo", num_iterations=2, epsilon_high=1.02),
    "sapo-iter2": dict(loss_type="sapo", num_iterations=2),
    "vespo-iter2": dict(loss_type="vespo", num_iterations=2),
    "grpo-beta-biaskl": dict(loss_type="grpo", beta=0.1, use_bias_correction_kl=True, num_iterations=2),
    "bnpo-beta-seq": dict(loss_type="bnpo", beta=0.05, importance_sampling_level="sequence", num_iterations=2),
    "dapo-spg2-delta": dict(loss_type="dapo", steps_per_generation=2, per_device_train_batch_size=2, delta=1.03,
                            epsilon_high=0.02, epsilon=0.01, learning_rate=0.3),
    "grpo-entropy": dict(loss_type="grpo", top_entropy_quantile=0.5, entropy_coef=0.05),
    "dapo-adaptive-entropy": dict(loss_type="dapo", use_adaptive_entropy=True, entropy_coef=0.02,
                                  entropy_target=5.0, entropy_coef_delta=0.01, gradient_accumulation_steps=2,
                                  per_device_train_batch_size=2),
    # Threshold 1e-4, not 0: at the first iteration of a generation the sequence KL is old - current,
    # which is exactly 0 only when both passes round identically. TRL shuffles the generation batch
    # between its old-log-prob pass and training, so a row sits at another position in the LM-head
    # GEMM; torch's GEMM happens to give such a row the same bits, OpenBLAS's Zen sgemm does not
    # (a row's rounding depends on its position mod 12; see "Determinism" in the guide), and
    # a threshold of 0 would then compare the sign of +-1e-7 rounding noise. The second iteration's
    # KLs (0.02-0.15) are far above 1e-4, so the mask still decides real rows.
    "offpolicy-mask": dict(loss_type="dapo", num_iterations=2, off_policy_mask_threshold=1e-4),
    "rewards-batch-trunc": dict(loss_type="grpo", scale_rewards="batch", mask_truncated_completions=True,
                                reward_weights=[1.0, 0.5], per_device_train_batch_size=8),
    "rewards-gdpo": dict(loss_type="bnpo", multi_objective_aggregation="normalize_then_sum",
                         reward_weights=[0.7, 1.3], per_device_train_batch_size=8),
    "temp-fp32head": dict(loss_type="dr_grpo", temperature=0.7, cast_lm_head_to_fp32=True, scale_rewards="none"),
}
_TWO_REWARDS = {"rewards-batch-trunc", "rewards-gdpo"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_sgd(case):
    cfg = dict({"optim": "sgd", "learning_rate": 0.05}, **CASES[case])
    extra = [reward_distinct] if case in _TWO_REWARDS else None
    stock = run(trl.GRPOTrainer, reward_funcs=extra, **cfg)
    swift = run(SwiftGRPOTrainer, reward_funcs=extra, **cfg)
    compare(stock, swift)
    # The parameters moved (a comparison of unchanged parameters would prove nothing).
    init = make_model(make_tokenizer()).state_dict()
    assert (stock["params"]["lm_head.weight"] - init["lm_head.weight"]).abs().max().item() > 1e-4


def test_parity_adamw_default_optimizer():
    stock = run(trl.GRPOTrainer, loss_type="dapo", beta=0.02, num_iterations=2, learning_rate=1e-3)
    swift = run(SwiftGRPOTrainer, loss_type="dapo", beta=0.02, num_iterations=2, learning_rate=1e-3)
    compare(stock, swift, params=False)
    for name, p in stock["params"].items():
        if name.endswith("k_proj.bias"):
            continue  # true gradient is 0: Adam normalises rounding noise (see the module doc)
        diff = (p - swift["params"][name]).abs().max().item()
        assert diff <= 1e-5, (name, diff)


def test_kl_metric_and_terms_visible():
    out = run(SwiftGRPOTrainer, loss_type="grpo", beta=0.1, num_iterations=2, optim="sgd", learning_rate=0.05)
    logs = out["logs"]
    for h in logs:
        assert "kl" in h and "grpo_swift/kl_term" in h and "grpo_swift/policy_term" in h
    # First step: policy == reference, so KL (and its term) are 0; afterwards the policy has moved.
    assert abs(logs[0]["kl"]) < 1e-6
    assert logs[-1]["kl"] > 0 and logs[-1]["grpo_swift/kl_term"] > 0
