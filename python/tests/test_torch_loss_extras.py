"""The issue-11 loss options through the torch layer (grpo_swift.torch.grpo_loss / GRPOLoss) and
the fused linear loss: gradcheck in float64 where the gradient is the derivative of the value
(k1, k2, k3, abs, the KL clamp, dual clip, GMPO); autograd of the in-test reference for the
straight-through estimators and sequence_token, whose gradients are defined with stop-gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import grpo_swift
import grpo_swift.torch as gst
from grpo_swift.torch import _loss as tloss
from _extras_reference import reference_loss
from test_fused_loss import _BUDGETS, _composed, _old_ref, _problem, _rel


def tensors(seed, B=5, T=8, dtype=torch.float64, spread=0.5):
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(0.05, 3.0, (B, T))
    mask = np.zeros((B, T), bool)
    for i in range(B):
        if i != 1:
            mask[i, : int(rng.integers(2, T + 1))] = True
    t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
    return dict(lp=t(lp), old=t(lp - rng.uniform(-spread, spread, (B, T))), ref=t(lp + rng.uniform(-0.5, 0.5, (B, T))),
                ent=t(rng.uniform(0, 3, (B, T))), adv=t(rng.uniform(-1.5, 1.5, B)), mask=torch.tensor(mask))


GRADCHECK_CASES = [
    *[dict(loss_type="grpo", beta=0.3, kl_estimator=e) for e in ("k1", "k2", "k3", "abs")],
    *[dict(loss_type="dapo", beta=0.3, kl_estimator=e, importance_sampling_level="sequence",
           use_bias_correction_kl=True) for e in ("k1", "k2", "k3", "abs")],
    dict(loss_type="bnpo", beta=0.5, kl_estimator="k3", kl_clamp=0.04),
    dict(loss_type="luspo", beta=0.5, kl_estimator="k2", kl_clamp=0.02, use_bias_correction_kl=True),
    dict(loss_type="grpo", beta=0.04, clip_ratio_c=1.3),
    dict(loss_type="dapo", beta=0.04, clip_ratio_c=1.1, importance_sampling_level="sequence", delta=2.5),
    dict(loss_type="gmpo", epsilon=0.3),
    dict(loss_type="gmpo", epsilon=0.3, epsilon_high=0.35, beta=0.2, top_entropy_quantile=0.6, kl_estimator="abs"),
]


@pytest.mark.parametrize("opts", GRADCHECK_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_gradcheck(opts):
    p = tensors(3, spread=0.9 if "clip_ratio_c" in opts or opts["loss_type"] == "gmpo" else 0.5)

    def f(lp):
        return gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                             entropies=p["ent"], **opts)[0]

    lp = p["lp"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (lp,), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert lp.grad is None and f(lp).requires_grad


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("opts", [
    dict(loss_type="grpo", beta=0.3, kl_estimator="k1+"),
    dict(loss_type="dapo", beta=0.3, kl_estimator="k3+", kl_clamp=0.05, use_bias_correction_kl=True),
    dict(loss_type="bnpo", beta=0.3, kl_estimator="abs+", importance_sampling_level="sequence",
         use_bias_correction_kl=True),
    dict(loss_type="grpo", importance_sampling_level="sequence_token"),
    dict(loss_type="dapo", beta=0.1, importance_sampling_level="sequence_token", use_bias_correction_kl=True,
         kl_estimator="k3+", clip_ratio_c=1.2),
    dict(loss_type="sapo", importance_sampling_level="sequence_token", beta=0.1, kl_estimator="k2"),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_stop_gradient_options_match_reference_autograd(opts, dtype):
    """Straight-through estimators and GSPO-token: backward of grpo_swift.torch.grpo_loss equals
    autograd of the reference written from their definitions (float64 reference)."""
    p = tensors(8, dtype=dtype, spread=0.9)
    lp = p["lp"].clone().requires_grad_(True)
    loss, metrics = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"],
                                  ref_per_token_logps=p["ref"], **opts)
    (3.0 * loss).backward()
    x = p["lp"].double().clone().requires_grad_(True)
    o = dict(opts)
    ref_loss, ref_metrics = reference_loss(
        x, p["adv"].double(), p["mask"].double(), old=p["old"].double(), ref=p["ref"].double(),
        loss_type=o.pop("loss_type"), level=o.pop("importance_sampling_level", "token"),
        bias=o.pop("use_bias_correction_kl", False), **o)
    (3.0 * ref_loss).backward()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), **tol)
    torch.testing.assert_close(lp.grad.double(), x.grad, **tol)
    assert lp.grad.dtype == dtype
    for k, v in ref_metrics.items():
        assert float(metrics[k]) == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_module_and_numpy_agree_bitwise():
    p = tensors(5, dtype=torch.float32, spread=0.9)
    for opts in ({"loss_type": "gmpo", "beta": 0.1, "kl_estimator": "k3+"},
                 {"loss_type": "grpo", "importance_sampling_level": "sequence_token", "clip_ratio_c": 1.2},
                 {"loss_type": "dapo", "beta": 0.1, "kl_estimator": "abs", "kl_clamp": 0.1}):
        mod = gst.GRPOLoss(**opts)
        assert mod.config == grpo_swift.LossConfig(**opts)
        lp = p["lp"].clone().requires_grad_(True)
        loss, metrics = mod(lp, p["adv"], p["mask"], p["old"], p["ref"])
        loss.backward()
        r = grpo_swift.grpo_loss(p["lp"].numpy(), p["adv"].numpy(), p["mask"].numpy(), old_logps=p["old"].numpy(),
                                 ref_logps=p["ref"].numpy(), **opts)
        assert loss.item() == np.float32(r.loss)  # the torch loss is a float32 tensor
        assert np.array_equal(lp.grad.numpy(), r.grad)
        assert set(metrics) == set(r.metrics)
        for k, v in r.metrics.items():
            assert float(metrics[k]) == v, k
    assert "pg_clipfrac_lower" in gst.GRPOLoss(loss_type="bnpo", clip_ratio_c=2.0)(
        p["lp"], p["adv"], p["mask"], p["old"])[1]


def test_compile_with_new_options_matches_eager():
    """The config layout (16 floats, trailing ints, the dual-clip flag read inside the op) under
    torch.compile(fullgraph=True)."""
    p = tensors(6, dtype=torch.float32, spread=0.9)

    def step(lp):
        loss, m = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                                loss_type="dapo", beta=0.04, kl_estimator="k3+", kl_clamp=0.1, clip_ratio_c=1.2,
                                importance_sampling_level="sequence_token")
        return loss, m["pg_clipfrac_lower"] + m["kl"]

    def run(fn):
        lp = p["lp"].clone().requires_grad_(True)
        out = fn(lp)
        out[0].backward()
        return out + (lp.grad,)

    eager = run(step)
    compiled = run(torch.compile(step, fullgraph=True, backend="aot_eager"))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert eager[1] > 0


def test_config_layout_matches_native_tuple():
    cfg = grpo_swift.LossConfig(loss_type="gmpo", beta=0.2, kl_estimator="abs+", kl_clamp=3.0)
    ints, floats = tloss._split_config(cfg._native_args)
    # 16 doubles, then the appended entropy_threshold (issue 9).
    assert tloss._N_FLOATS == 16 and len(floats) == tloss._N_FLOATS + 1
    assert all(isinstance(v, float) for v in floats) and all(isinstance(v, int) for v in ints)
    assert tloss._join_config(ints, floats) == cfg._native_args
    thr = grpo_swift.LossConfig(top_entropy_quantile=0.5, entropy_threshold=0.25, clip_ratio_c=2.0)
    ti, tf = tloss._split_config(thr._native_args)
    assert tf[-1] == 0.25 and ti[-1] == 1 and ti[tloss._USE_CLIP_RATIO_C] == 1
    assert tloss._join_config(ti, tf) == thr._native_args
    assert floats[tloss._ENTROPY_COEF - tloss._N_LEAD_INTS] == cfg.entropy_coef
    assert ints[tloss._USE_CLIP_RATIO_C] == 0
    dual = grpo_swift.LossConfig(clip_ratio_c=2.0)
    assert tloss._split_config(dual._native_args)[0][tloss._USE_CLIP_RATIO_C] == 1


# ---------------------------------------------------------------- fused linear loss

FUSED_CASES = [
    dict(loss_type="gmpo", epsilon=0.4, beta=0.04),
    dict(loss_type="grpo", importance_sampling_level="sequence_token", beta=0.04, use_bias_correction_kl=True),
    dict(loss_type="dapo", beta=0.1, kl_estimator="k3+", kl_clamp=0.05),
    dict(loss_type="luspo", beta=0.04, clip_ratio_c=1.05, importance_sampling_level="sequence"),
    dict(loss_type="bnpo", beta=0.1, kl_estimator="abs", clip_ratio_c=1.1),
]


@pytest.mark.parametrize("schedule", ("3gemm-blocks-of-1", "3gemm-default", "4gemm"))
@pytest.mark.parametrize("opts", FUSED_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_fused_linear_loss_matches_composed_path(opts, schedule):
    """fused_linear_grpo_loss (both schedules; per-block gradient rescaling) equals
    fused_log_probs -> grpo_loss -> autograd for the new options."""
    hidden, weight, b, ids, mask, adv, rng = _problem(500 + FUSED_CASES.index(opts), bias=True)
    old, ref = _old_ref(rng, hidden, weight, b, ids)
    old = (old + rng.normal(0, 0.3, old.shape)).astype(np.float32)  # wider ratios: clipping and dual clip act
    budget = _BUDGETS[schedule](*ids.shape, *weight.shape[::-1])
    r = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old, ref_logps=ref,
                                          scratch_budget=budget, **opts)
    loss, gh, gw, gb, metrics = _composed(hidden, weight, b, ids, mask, adv, old, ref, opts)
    assert abs(r.loss - loss) <= 1e-5 * max(1.0, abs(loss))
    assert _rel(r.grad_hidden, gh) <= 1e-4 and _rel(r.grad_weight, gw) <= 1e-4 and _rel(r.grad_bias, gb) <= 1e-4
    for k, v in metrics.items():
        if k != "entropy":
            assert r.metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6, nan_ok=True), k
    assert np.abs(r.grad_weight).max() > 0


def test_fused_module_accepts_new_options():
    hidden, weight, b, ids, mask, adv, rng = _problem(77)
    old, ref = _old_ref(rng, hidden, weight, b, ids)
    mod = gst.FusedLinearGRPOLoss(beta=0.04, loss_type="gmpo", epsilon_low=0.4, epsilon_high=0.4,
                                  kl_estimator="k2")
    h = torch.tensor(hidden, requires_grad=True)
    loss, extra = mod(h, torch.tensor(weight), torch.tensor(ids), torch.tensor(mask), torch.tensor(adv),
                      ref_per_token_logps=torch.tensor(ref), old_per_token_logps=torch.tensor(old))
    loss.backward()
    r = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, old_logps=old, ref_logps=ref,
                                          loss_type="gmpo", beta=0.04, epsilon=0.4, epsilon_high=0.4,
                                          kl_estimator="k2")
    assert loss.item() == pytest.approx(r.loss, rel=1e-6)
    assert _rel(h.grad.numpy(), r.grad_hidden) <= 1e-5
    assert "clip_ratio/region_mean" in mod.last_metrics and len(extra) == 2
