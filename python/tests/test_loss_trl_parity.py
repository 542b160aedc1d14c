"""grpo_loss against trl==1.16.0's own GRPOTrainer._compute_loss (run through a stub, see
_trl_reference.py): loss, gradient (TRL's autograd), entropy gradient and logged metrics.

Grid, per (dtype, loss_type, importance_sampling_level) test: the full product of
beta {0, 0.04} x delta {None, 1.5} (clipped types) x bias-corrected KL {off, on} (beta > 0) x
old_logps {None, given} x IS ratio {none, token (B,T), sequence (B,1)} x off-policy mask
{off, 0.02} x entropy mask {1.0, 0.6} x entropy bonus {0, 0.1}, with per-token advantages
(B,T) on every third case. Inputs: scattered random masks with a fully masked row,
mixed-sign advantages, GA=2, W=2, steps_per_generation=4. About 7,500 cases in ~20 s.
Separate tests cover ratios exactly on clip boundaries, a fully masked batch and large
log-prob gaps. Combinations TRL refuses are refused with TRL's reason.
"""
from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest

import grpo_swift
from conftest import requires_trl

torch = pytest.importorskip("torch")
pytestmark = requires_trl

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"]
CLIPPED = {"grpo", "bnpo", "dr_grpo", "dapo", "luspo"}
TRL_METRICS = ["kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
               "clip_ratio/low_min", "clip_ratio/high_max", "cispo_clip_ratio", "vespo/phi_seq_mean",
               "policy_loss"]


def trl_loss(*args, **kwargs):
    from _trl_reference import trl_loss as ref
    return ref(*args, **kwargs)


def problem(seed: int, dtype, B: int = 6, T: int = 11):
    r = np.random.default_rng(seed)
    lp = -r.uniform(0.05, 3, (B, T))
    old = lp - r.uniform(-0.35, 0.35, (B, T))
    ref = lp + r.uniform(-0.5, 0.5, (B, T))
    samp = old + r.uniform(-0.3, 0.3, (B, T))
    ent = r.uniform(0, 3, (B, T))
    adv = r.uniform(-1.5, 1.5, B)
    adv_tok = r.uniform(-1.5, 1.5, (B, T))
    mask = (r.uniform(size=(B, T)) > 0.2).astype(np.int64)
    mask[:, 0] = 1
    mask[1] = 0  # a fully masked row
    # The vLLM IS ratio as TRL builds it: exp((old - sampling) * mask), 1 at padding.
    isr = np.exp(np.clip((old - samp) * mask, -1, 1))
    isr_seq = np.exp(0.1 * np.log(isr).sum(1, keepdims=True))
    c = lambda x: np.ascontiguousarray(x, dtype=dtype)  # noqa: E731
    return {k: (c(v) if k != "mask" else v) for k, v in dict(
        lp=lp, old=old, ref=ref, samp=samp, ent=ent, adv=adv, adv_tok=adv_tok, mask=mask, isr=isr,
        isr_seq=isr_seq).items()}


def tolerances(dtype):
    # (loss atol, loss rtol, grad atol, grad rtol)
    return (1e-5, 1e-4, 1e-4, 1e-4) if dtype == np.float32 else (1e-10, 1e-10, 1e-10, 1e-10)


def compare(ours: grpo_swift.LossResult, ref, dtype, label: str) -> list[str]:
    tl, tg, tgh, tm = ref
    la, lr, ga, gr = tolerances(dtype)
    bad = []
    if not abs(ours.loss - tl) <= la + lr * abs(tl):
        bad.append(f"loss {ours.loss!r} vs TRL {tl!r}")
    if not np.allclose(ours.grad, tg, atol=ga, rtol=gr):
        bad.append(f"grad max|diff| {np.abs(ours.grad - tg).max():.3g}")
    if tgh is not None and not np.allclose(ours.grad_entropies, tgh, atol=ga, rtol=gr):
        bad.append(f"grad_entropies max|diff| {np.abs(ours.grad_entropies - tgh).max():.3g}")
    for k in TRL_METRICS:
        if k not in tm:
            continue
        if k not in ours.metrics:
            bad.append(f"metric {k} missing")
            continue
        v, w = tm[k], ours.metrics[k]
        # TRL counts clipped tokens with .float(): those ratios are float32 even for float64 inputs.
        ma, mr = (1e-6, 1e-6) if "clip_ratio" in k and dtype == np.float64 else (la, lr)
        if not ((np.isnan(v) and np.isnan(w)) or abs(v - w) <= ma + mr * abs(v)):
            bad.append(f"metric {k}: {w!r} vs TRL {v!r}")
    return [f"{label}: {b}" for b in bad]


VESPO_REASON = "VESPO loss requires `vllm_importance_sampling_mode` to be either 'token_truncate' or 'token_mask'"


def test_vespo_refusal_reason_is_trls():
    from trl.trainer import grpo_trainer
    src = inspect.getsource(grpo_trainer.GRPOTrainer.__init__)
    assert "VESPO loss requires `vllm_importance_sampling_mode` to be either 'token_truncate' or \"" in src
    assert "\"'token_mask'. Got:" in src


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_parity_grid(dtype, loss_type, level):
    failures, n = [], 0
    grid = itertools.product([0.0, 0.04], [None, 1.5], [False, True], [False, True], [None, "token", "sequence"],
                             [None, 0.02], [1.0, 0.6], [0.0, 0.1])
    for beta, delta, bias, old_given, isr_kind, opm, top_q, coef in grid:
        if bias and beta == 0.0:
            continue
        if delta is not None and loss_type not in CLIPPED:
            continue
        n += 1
        p = problem(1000 * LOSS_TYPES.index(loss_type) + 10 * n + (level == "sequence"), dtype)
        adv = p["adv_tok"] if n % 3 == 0 else p["adv"]
        isr = None if isr_kind is None else (p["isr"] if isr_kind == "token" else p["isr_seq"])
        kw = dict(old_logps=p["old"] if old_given else None, ref_logps=p["ref"] if beta else None,
                  sampling_logps=p["samp"] if opm is not None else None, entropies=p["ent"],
                  importance_sampling_ratio=isr, loss_type=loss_type, beta=beta,
                  epsilon_high=1.1 if loss_type == "cispo" else 0.28, delta=delta,
                  importance_sampling_level=level, use_bias_correction_kl=bias, max_completion_length=16,
                  num_items_in_batch=50, num_processes=2, gradient_accumulation_steps=2, steps_per_generation=4,
                  off_policy_mask_threshold=opm, top_entropy_quantile=top_q, entropy_coef=coef)
        label = (f"beta={beta} delta={delta} bias={bias} old={old_given} isr={isr_kind} opm={opm} "
                 f"top_q={top_q} coef={coef} adv={adv.shape}")
        if loss_type == "vespo" and isr_kind == "sequence":
            # TRL's __init__ refuses this (sequence_* IS modes with vespo); so do we, with its reason.
            with pytest.raises(ValueError, match="VESPO loss requires `vllm_importance_sampling_mode`"):
                grpo_swift.grpo_loss(p["lp"], adv, p["mask"], **kw)
            continue
        ours = grpo_swift.grpo_loss(p["lp"], adv, p["mask"], **kw)
        failures += compare(ours, trl_loss(p["lp"], adv, p["mask"], **kw), dtype, label)
    assert n > 20
    assert not failures, f"{len(failures)} mismatches of {n} cases:\n" + "\n".join(failures[:15])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_ratios_exactly_on_clip_boundaries(dtype, loss_type):
    """old == logps gives ratio exactly 1; epsilon = 0 (cispo: epsilon_high = 1) and delta = 1
    put it on every boundary, where torch.clamp passes no gradient and torch.min splits ties."""
    failures = []
    for level, use_delta in itertools.product(["token", "sequence"], [False, True]):
        if use_delta and loss_type not in CLIPPED:
            continue
        p = problem(7, dtype)
        kw = dict(old_logps=p["lp"].copy(), ref_logps=p["ref"], beta=0.04, loss_type=loss_type, epsilon=0.0,
                  epsilon_high=1.0 if loss_type == "cispo" else 0.0, delta=1.0 if use_delta else None,
                  importance_sampling_level=level, max_completion_length=16)
        ours = grpo_swift.grpo_loss(p["lp"], p["adv"], p["mask"], **kw)
        failures += compare(ours, trl_loss(p["lp"], p["adv"], p["mask"], **kw), dtype, f"{level} delta={use_delta}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_fully_masked_batch(loss_type):
    p = problem(3, np.float32)
    mask = np.zeros_like(p["mask"])
    kw = dict(old_logps=p["old"], ref_logps=p["ref"], beta=0.04, loss_type=loss_type, entropies=p["ent"],
              entropy_coef=0.1, max_completion_length=16)
    ours = grpo_swift.grpo_loss(p["lp"], p["adv"], mask, **kw)
    ref = trl_loss(p["lp"], p["adv"], mask, **kw)
    assert ours.loss == 0.0 and ref[0] == 0.0
    assert not ours.grad.any() and not ours.grad_entropies.any()
    assert not compare(ours, ref, np.float32, "all masked")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_large_reference_gap_is_finite_like_trl(loss_type):
    """|logps - ref| = 50: exp(50) is finite in float32, so TRL's loss is finite and so is ours."""
    for sign in (1.0, -1.0):
        p = problem(5, np.float32)
        ref = (p["lp"] + 50 * sign).astype(np.float32)
        kw = dict(old_logps=p["old"], ref_logps=ref, beta=0.04, loss_type=loss_type, max_completion_length=16)
        ours = grpo_swift.grpo_loss(p["lp"], p["adv"], p["mask"], **kw)
        tl, tg, _, _ = trl_loss(p["lp"], p["adv"], p["mask"], **kw)
        assert np.isfinite(tl) and np.isfinite(ours.loss)
        assert np.all(np.isfinite(ours.grad))
        assert abs(ours.loss - tl) <= 1e-4 * abs(tl)
        np.testing.assert_allclose(ours.grad, tg, rtol=1e-4, atol=1e-4)


def test_on_policy_grpo_loss_is_zero_but_gradient_is_not():
    """The question users ask most: ratio 1, centred advantages, beta 0 -> loss 0 (TRL too),
    gradient -A_i / (L_i B)."""
    B, T = 4, 6
    lp = -np.random.default_rng(0).uniform(0.1, 2, (B, T))
    adv = np.array([1.0, -1.0, 0.5, -0.5])
    mask = np.zeros((B, T), dtype=bool)
    lens = [2, 6, 3, 4]
    for i, L in enumerate(lens):
        mask[i, :L] = True
    ours = grpo_swift.grpo_loss(lp, adv, mask, loss_type="grpo")
    assert ours.loss == 0.0 and trl_loss(lp, adv, mask.astype(np.int64), loss_type="grpo")[0] == 0.0
    expected = np.where(mask, -adv[:, None] / (np.array(lens)[:, None] * B), 0.0)
    np.testing.assert_allclose(ours.grad, expected, rtol=1e-15, atol=0)
    assert ours.metrics["policy_term"] == 0.0 and ours.metrics["kl_term"] == 0.0
