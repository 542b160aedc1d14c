"""Runs trl==1.16.0's own GRPOTrainer._compute_loss on synthetic per-token inputs.

No TRL maths is re-typed here: a GRPOTrainer is created with ``__new__`` and given only the
attributes ``_compute_loss`` reads; ``_get_per_token_logps_and_entropies`` is replaced by a
function returning our leaf tensors (with requires_grad), so torch autograd gives TRL's
gradient with respect to the log-probs and the entropies.
"""

from __future__ import annotations

import types
from collections import defaultdict

import numpy as np
import torch
from trl.trainer.grpo_trainer import GRPOTrainer


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def make_trainer(
    *,
    loss_type="dapo",
    beta=0.0,
    epsilon=0.2,
    epsilon_high=None,
    delta=None,
    importance_sampling_level="token",
    use_bias_correction_kl=False,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    vespo_k_pos=2.0,
    vespo_lambda_pos=3.0,
    vespo_k_neg=3.0,
    vespo_lambda_neg=2.0,
    max_completion_length=None,
    num_processes=1,
    gradient_accumulation_steps=1,
    steps_per_generation=None,
    off_policy_mask_threshold=None,
    top_entropy_quantile=1.0,
    entropy_coef=0.0,
    use_vllm=False,
    accelerator=None,
    trainer_cls=GRPOTrainer,
):
    """A GRPOTrainer holding only what `_compute_loss` reads. `accelerator`: a real
    accelerate.Accelerator for multi-process runs (its gathers and reductions are TRL's); by
    default a single-process stand-in with `num_processes`. trainer_cls: GRPOTrainer or a
    subclass overriding _compute_loss (e.g. TRL's experimental GMPOTrainer, which reads the same
    attributes)."""
    trainer = trainer_cls.__new__(trainer_cls)
    if accelerator is None:
        accelerator = _Accelerator()
        accelerator.num_processes = num_processes
    trainer.accelerator = accelerator
    trainer.model = types.SimpleNamespace(training=True)
    trainer.loss_type = loss_type
    trainer.beta = beta
    trainer.epsilon_low = epsilon
    trainer.epsilon_high = epsilon_high if epsilon_high is not None else epsilon
    trainer.importance_sampling_level = importance_sampling_level
    trainer.off_policy_mask_threshold = off_policy_mask_threshold
    trainer.top_entropy_quantile = top_entropy_quantile
    trainer.entropy_coef = entropy_coef
    trainer.use_adaptive_entropy = False
    trainer._entropy_bonus_enabled = entropy_coef != 0.0
    trainer.aux_loss_enabled = False
    trainer.max_completion_length = max_completion_length
    trainer.current_gradient_accumulation_steps = gradient_accumulation_steps
    trainer.use_vllm = use_vllm
    trainer.vllm_importance_sampling_correction = use_vllm
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.args = types.SimpleNamespace(
        use_bias_correction_kl=use_bias_correction_kl,
        delta=delta,
        sapo_temperature_pos=sapo_temperature_pos,
        sapo_temperature_neg=sapo_temperature_neg,
        vespo_k_pos=vespo_k_pos,
        vespo_lambda_pos=vespo_lambda_pos,
        vespo_k_neg=vespo_k_neg,
        vespo_lambda_neg=vespo_lambda_neg,
        steps_per_generation=steps_per_generation if steps_per_generation is not None else gradient_accumulation_steps,
    )
    return trainer


def trl_loss(
    logps,
    advantages,
    mask,
    *,
    old_logps=None,
    ref_logps=None,
    sampling_logps=None,
    entropies=None,
    importance_sampling_ratio=None,
    num_items_in_batch=None,
    **options,
):
    """Returns (loss: float, grad_logps: ndarray, grad_entropies: ndarray | None, metrics: dict)."""
    entropy_coef = options.get("entropy_coef", 0.0)
    dtype = torch.float64 if np.asarray(logps).dtype == np.float64 else torch.float32
    B, T = np.asarray(logps).shape
    lp = torch.tensor(np.asarray(logps), dtype=dtype, requires_grad=True)
    ent_given = entropies is not None
    ent_np = np.asarray(entropies) if ent_given else np.ones((B, T))
    ent = torch.tensor(ent_np, dtype=dtype, requires_grad=True)

    trainer = make_trainer(use_vllm=importance_sampling_ratio is not None, **options)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (lp, ent, None)

    m = torch.tensor(np.asarray(mask), dtype=torch.int64)
    inputs = {
        "prompt_ids": torch.zeros((B, 1), dtype=torch.int64),
        "prompt_mask": torch.ones((B, 1), dtype=torch.int64),
        "completion_ids": torch.zeros((B, T), dtype=torch.int64),
        "completion_mask": m,
        "advantages": torch.tensor(np.asarray(advantages), dtype=torch.float32 if dtype == torch.float32 else dtype),
        "num_items_in_batch": torch.tensor(
            float(np.asarray(mask).sum()) if num_items_in_batch is None else float(num_items_in_batch)
        ),
    }
    t = lambda x: torch.tensor(np.asarray(x), dtype=dtype)  # noqa: E731
    if old_logps is not None:
        inputs["old_per_token_logps"] = t(old_logps)
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = t(ref_logps)
    if sampling_logps is not None:
        inputs["sampling_per_token_logps"] = t(sampling_logps)
    if importance_sampling_ratio is not None:
        inputs["importance_sampling_ratio"] = t(importance_sampling_ratio)

    loss = trainer._compute_loss(None, inputs)
    grad_lp = np.zeros((B, T), dtype=lp.dtype == torch.float64 and np.float64 or np.float32)
    grad_ent = None
    if loss.requires_grad:
        loss.backward()
        if lp.grad is not None:
            grad_lp = lp.grad.numpy().copy()
        if ent_given and entropy_coef != 0.0:
            grad_ent = ent.grad.numpy().copy() if ent.grad is not None else np.zeros((B, T))
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    if not ent_given:
        metrics.pop("entropy", None)
    return float(loss.detach()), grad_lp, grad_ent, metrics
