"""Gradients of grpo_swift.torch.grpo_loss: torch.autograd.gradcheck in float64 for every loss type
whose gradient is the derivative of its value, and TRL 1.16's own autograd gradient for cispo and
vespo (whose stop-gradient factors make the gradient differ from the value's derivative)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from conftest import requires_trl

torch = pytest.importorskip("torch")

import grpo_swift.torch as gst  # noqa: E402

DIFFERENTIABLE = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "sapo"]


def problem(seed: int, B: int = 4, T: int = 6):
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    lp = -u(0.05, 3, B, T)
    # |log ratio| <= 0.35 with epsilon 0.2 / 0.28: both clipped and unclipped tokens.
    old = lp - u(-0.35, 0.35, B, T)
    ref = lp + u(-0.5, 0.5, B, T)
    ent = u(0, 3, B, T)
    adv = u(-1.5, 1.5, B)
    mask = (torch.rand(B, T, generator=g) > 0.25).to(torch.int64)
    mask[:, 0] = 1
    mask[-1, 3:] = 0
    # The vLLM IS ratio as TRL's pipeline builds it: 1 at padding (vespo sums its log over valid
    # tokens only, TRL over all T; the two agree on such input, see grpo_swift.h).
    isr = torch.where(mask.bool(), u(0.8, 1.2, B, T), 1.0)
    return dict(lp=lp, old=old, ref=ref, ent=ent, adv=adv, mask=mask, isr=isr)


def far_from_clip_boundaries(p, eps_low=0.2, eps_high=0.28, gap=1e-4) -> bool:
    """Finite differences with eps=1e-6 are only valid away from the kinks of the clipped loss."""
    r = torch.exp(p["lp"] - p["old"])
    return bool(((r - (1 - eps_low)).abs() > gap).all() and ((r - (1 + eps_high)).abs() > gap).all())


VARIANTS = {
    "beta+entropy_bonus": dict(beta=0.04, entropy_coef=0.1),
    "bias_corrected_kl+is_ratio": dict(beta=0.04, use_bias_correction_kl=True, isr=True),
    "per_row_is_ratio+beta": dict(beta=0.1, isr="row"),
    "delta+per_token_adv": dict(beta=0.04, delta=1.2, token_adv=True, entropy_coef=-0.05),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", DIFFERENTIABLE)
def test_gradcheck_float64(loss_type, level, variant):
    v = dict(VARIANTS[variant])
    if "delta" in v and loss_type == "sapo":
        v.pop("delta")
    p = problem(100 * DIFFERENTIABLE.index(loss_type) + 10 * list(VARIANTS).index(variant) + (level == "sequence"))
    assert far_from_clip_boundaries(p)
    use_old, use_isr, token_adv = v.pop("old", True), v.pop("isr", False), v.pop("token_adv", False)
    adv = p["adv"][:, None] * torch.linspace(0.5, 1.5, p["lp"].shape[1], dtype=torch.float64) if token_adv else p["adv"]
    opts = dict(loss_type=loss_type, importance_sampling_level=level, epsilon_high=0.28, max_completion_length=8,
                gradient_accumulation_steps=2, **v)
    coef = opts.get("entropy_coef", 0.0)
    isr = None if not use_isr else (p["isr"] if use_isr is True else p["isr"][:, :1])

    def f(lp, ent):
        loss, _ = gst.grpo_loss(lp, adv, p["mask"], old_per_token_logps=p["old"] if use_old else None,
                                ref_per_token_logps=p["ref"], entropies=ent,
                                importance_sampling_ratio=isr, **opts)
        return loss

    lp = p["lp"].clone().requires_grad_(True)
    ent = p["ent"].clone().requires_grad_(coef != 0.0)
    assert torch.autograd.gradcheck(f, (lp, ent), eps=1e-6, atol=1e-8, rtol=1e-6)
    # The gradient is not trivially zero (the check above would pass for a constant function).
    (g,) = torch.autograd.grad(f(lp, ent), lp)
    assert g.abs().max() > 1e-3


@requires_trl
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["cispo", "vespo"])
@pytest.mark.parametrize("variant", ["plain", "beta+entropy_bonus+is_ratio"])
def test_stop_gradient_losses_match_trl_autograd(loss_type, level, variant):
    from _trl_reference import trl_loss

    p = problem(7 + (level == "sequence") + 2 * (loss_type == "vespo"))
    extra = variant != "plain"
    opts = dict(loss_type=loss_type, importance_sampling_level=level,
                epsilon_high=1.1 if loss_type == "cispo" else 0.28,
                beta=0.04 if extra else 0.0, entropy_coef=0.1 if extra else 0.0, num_items_in_batch=30,
                gradient_accumulation_steps=2)
    isr = p["isr"] if extra else None
    lp = p["lp"].clone().requires_grad_(True)
    ent = p["ent"].clone().requires_grad_(extra)
    loss, _ = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                            entropies=ent, importance_sampling_ratio=isr, **opts)
    loss.backward()
    tl, tg, tgh, _ = trl_loss(p["lp"].numpy(), p["adv"].numpy(), p["mask"].numpy(), old_logps=p["old"].numpy(),
                              ref_logps=p["ref"].numpy(), entropies=p["ent"].numpy(),
                              importance_sampling_ratio=None if isr is None else isr.numpy(), **opts)
    assert abs(loss.item() - tl) <= 1e-12 + 1e-10 * abs(tl)
    np.testing.assert_allclose(lp.grad.numpy(), tg, rtol=1e-10, atol=1e-12)
    assert np.abs(tg).max() > 1e-3
    if extra:
        np.testing.assert_allclose(ent.grad.numpy(), tgh, rtol=1e-10, atol=1e-12)
    # The stop-gradient matters (and the check above is not vacuous): the derivative of the value
    # differs from this gradient.
    with pytest.raises(importlib.import_module("torch.autograd.gradcheck").GradcheckError):
        torch.autograd.gradcheck(
            lambda x: gst.grpo_loss(x, p["adv"], p["mask"], old_per_token_logps=p["old"],
                                    ref_per_token_logps=p["ref"], entropies=p["ent"], importance_sampling_ratio=isr,
                                    **opts)[0], (p["lp"].clone().requires_grad_(True),), eps=1e-6, atol=1e-8, rtol=1e-6)


@requires_trl
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", DIFFERENTIABLE + ["cispo", "vespo"])
def test_on_policy_gradient_matches_trl_autograd(loss_type, level):
    """Without old log-probs TRL uses old = per_token_logps.detach(): ratio 1 in value, with gradient."""
    from _trl_reference import trl_loss

    p = problem(50 + DIFFERENTIABLE.index(loss_type) if loss_type in DIFFERENTIABLE else 60)
    opts = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.04, entropy_coef=0.1,
                max_completion_length=8, gradient_accumulation_steps=2)
    lp = p["lp"].clone().requires_grad_(True)
    ent = p["ent"].clone().requires_grad_(True)
    loss, _ = gst.grpo_loss(lp, p["adv"], p["mask"], ref_per_token_logps=p["ref"], entropies=ent, **opts)
    loss.backward()
    tl, tg, tgh, _ = trl_loss(p["lp"].numpy(), p["adv"].numpy(), p["mask"].numpy(), ref_logps=p["ref"].numpy(),
                              entropies=p["ent"].numpy(), **opts)
    assert abs(loss.item() - tl) <= 1e-12 + 1e-10 * abs(tl)
    np.testing.assert_allclose(lp.grad.numpy(), tg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ent.grad.numpy(), tgh, rtol=1e-10, atol=1e-12)
    assert np.abs(tg).max() > 1e-3
