"""grpo_swift.grpo_loss beyond TRL 1.16's GRPOTrainer: KL estimators (and their clamp), GMPO,
importance_sampling_level="sequence_token" (GSPO-token) and dual-clip PPO (clip_ratio_c).

References, each independent of grpo_swift:
- _extras_reference: torch code written from the published formulas (autograd = gradient);
- TRL 1.16's own code: trl.experimental.gmpo.GMPOTrainer._compute_loss for GMPO; for
  sequence_token, GRPOTrainer._compute_loss at token level with the old log-probs shifted to
  lp - log s_i (constants to TRL), whose log-ratio lp_t - sg(lp_t) + log s_i is exactly
  GSPO-token's (TRL 1.16 dropped its own trl.experimental.gspo_token, which computed the same);
- verl's own kl_penalty and compute_policy_loss_vanilla (dual clip), loaded from the installed
  verl wheel (see _verl_reference; skipped with a reason when verl is absent).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import warnings

with warnings.catch_warnings():  # TRL warns on any import from trl.experimental
    warnings.simplefilter("ignore")
    from trl.experimental.gmpo import GMPOTrainer

import grpo_swift
from _extras_reference import ESTIMATORS, reference_loss
from _trl_reference import trl_loss
import _verl_reference

VERL = _verl_reference.load()
needs_verl = pytest.mark.skipif(VERL is None, reason="verl is not installed (scripts/setup.sh installs it --no-deps)")


def problem(seed, B=6, T=9, dtype=np.float64, spread=0.4, gap=0.5):
    """Uneven lengths with holes, row 1 fully masked, row 0 full; mixed-sign advantages."""
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(0.05, 3.0, (B, T))
    old = lp - rng.uniform(-spread, spread, (B, T))
    ref = lp + rng.uniform(-gap, gap, (B, T))
    ent = rng.uniform(0.0, 3.0, (B, T))
    adv = rng.uniform(-1.5, 1.5, B)
    mask = np.zeros((B, T), np.int64)
    for i in range(B):
        if i == 1:
            continue
        n = T if i == 0 else int(rng.integers(2, T + 1))
        mask[i, :n] = rng.random(n) > 0.15
        mask[i, 0] = 1
    cast = lambda x: x.astype(dtype)  # noqa: E731
    return cast(lp), cast(old), cast(ref), cast(ent), adv.astype(dtype), mask


def reference(lp, adv, mask, **kw):
    """(loss, grad, metrics) of _extras_reference in float64 on the given values."""
    t = lambda x: None if x is None else torch.tensor(np.asarray(x, np.float64))  # noqa: E731
    x = torch.tensor(np.asarray(lp, np.float64), requires_grad=True)
    loss, metrics = reference_loss(x, t(adv), t(mask), old=t(kw.pop("old", None)), ref=t(kw.pop("ref", None)),
                                   ent=t(kw.pop("ent", None)), **kw)
    loss.backward()
    return loss.item(), x.grad.numpy(), metrics


def ours(lp, adv, mask, old=None, ref=None, ent=None, level="token", bias=False, **kw):
    return grpo_swift.grpo_loss(lp, adv, mask, old_logps=old, ref_logps=ref, entropies=ent,
                                importance_sampling_level=level, use_bias_correction_kl=bias, **kw)


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("dtype", (np.float64, np.float32))
@pytest.mark.parametrize("level", ("token", "sequence", "sequence_token"))
@pytest.mark.parametrize("clamp", (None, 0.15))
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_kl_estimators_match_reference(estimator, clamp, level, dtype):
    for bias, loss_type in ((False, "grpo"), (True, "dapo")):
        lp, old, ref, ent, adv, mask = problem(ESTIMATORS.index(estimator) * 7 + (clamp is not None), dtype=dtype)
        opts = dict(loss_type=loss_type, beta=0.3, kl_estimator=estimator, kl_clamp=clamp)
        r = ours(lp, adv, mask, old=old, ref=ref, level=level, bias=bias, **opts)
        loss, grad, metrics = reference(lp, adv, mask, old=old, ref=ref, level=level, bias=bias, **opts)
        np.testing.assert_allclose(r.loss, loss, **tol(dtype))
        np.testing.assert_allclose(r.grad, grad, **tol(dtype))
        np.testing.assert_allclose(r.metrics["kl"], metrics["kl"], **tol(dtype))
        assert r.grad.dtype == (np.float64 if dtype == np.float64 else np.float32)


def test_verl_names_are_aliases():
    lp, old, ref, ent, adv, mask = problem(3)
    for alias, name in (("low_var_kl", "k3"), ("kl", "k1"), ("mse", "k2"), ("low_var_kl+", "k3+"), ("kl+", "k1+")):
        a = ours(lp, adv, mask, old=old, ref=ref, beta=0.1, kl_estimator=alias)
        b = ours(lp, adv, mask, old=old, ref=ref, beta=0.1, kl_estimator=name)
        assert a.loss == b.loss and np.array_equal(a.grad, b.grad)
        assert grpo_swift.LossConfig(kl_estimator=alias).kl_estimator == name


def test_default_is_trl_k3_bit_for_bit():
    """kl_estimator="k3" without a clamp is the default path: identical bits, float32 (SIMD path)
    and float64, every level TRL has."""
    for dtype in (np.float32, np.float64):
        lp, old, ref, ent, adv, mask = problem(11, dtype=dtype)
        for level in ("token", "sequence"):
            a = ours(lp, adv, mask, old=old, ref=ref, ent=ent, level=level, beta=0.04, bias=True)
            b = ours(lp, adv, mask, old=old, ref=ref, ent=ent, level=level, beta=0.04, bias=True, kl_estimator="k3",
                     kl_clamp=None, clip_ratio_c=None)
            assert a.loss == b.loss and np.array_equal(a.grad, b.grad)
            assert a.metrics == b.metrics


@pytest.mark.parametrize("dtype", (np.float64, np.float32))
@pytest.mark.parametrize("sign", (1.0, -1.0))
def test_large_gap_with_verl_clamp(sign, dtype):
    """|ref - lp| up to 60: k3 is astronomically large (float32: inf beyond ~88) unclamped; with
    kl_clamp=10 (verl's) value and gradient stay finite: 10 with gradient 0 for k3, and k2's
    gradient x for k3+."""
    lp, old, ref, ent, adv, mask = problem(5, dtype=dtype)
    ref = (lp + sign * np.linspace(20, 60, lp.size).reshape(lp.shape)).astype(dtype)
    zero = np.zeros_like(adv)
    for est in ("k3", "k3+"):
        r = ours(lp, zero, mask, ref=ref, loss_type="bnpo", beta=1.0, kl_estimator=est, kl_clamp=10.0)
        assert np.isfinite(r.loss) and np.isfinite(r.grad).all()
        assert r.metrics["kl"] == pytest.approx(10.0, rel=1e-6)
        n = mask.sum()
        expected = np.where(mask == 1, 0.0 if est == "k3" else (lp - ref) / n, 0.0)
        np.testing.assert_allclose(r.grad, expected, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------- verl's own code


@needs_verl
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("name", ("k1", "k2", "k3", "abs", "k1+", "k3+", "abs+", "low_var_kl", "kl", "mse"))
def test_kl_estimators_match_verl(name, dtype):
    """verl.trainer.ppo.core_algos.kl_penalty per token (value and autograd gradient) against our
    kernel (bnpo, zero advantages, beta 1: loss = token mean of the estimate). verl clamps
    low_var_kl/k3 (and k3+'s value) to [-10, 10]: ours with kl_clamp=10, which is the same
    function (verl's extra clamp of d to [-20, 20] cannot change a value already clamped at 10)."""
    rng = np.random.default_rng(7)
    B, T = 5, 12
    npd = np.float64 if dtype == torch.float64 else np.float32
    lp = -rng.uniform(0.05, 3, (B, T)).astype(npd)
    gaps = np.concatenate([rng.uniform(-0.7, 0.7, B * T - 8), [-60, -25, -12, -0.05, 0.03, 11, 21, 45]])
    ref = (lp + rng.permutation(gaps).reshape(B, T)).astype(npd)
    mask = (rng.random((B, T)) > 0.2).astype(np.int64)
    ours_name = {"low_var_kl": "k3", "kl": "k1", "mse": "k2"}.get(name, name)
    clamp = 10.0 if ours_name.startswith("k3") else None
    if ours_name in ("k2", "k1", "abs", "k1+", "abs+"):
        ref = np.clip(ref, lp - 8, lp + 8).astype(npd)  # verl does not clamp these: keep float32 exact enough
    r = ours(lp, np.zeros(B, npd), mask, ref=ref, loss_type="bnpo", beta=1.0, kl_estimator=ours_name, kl_clamp=clamp)
    x = torch.tensor(lp, requires_grad=True)
    kl = VERL.kl_penalty(x, torch.tensor(ref), name)
    m = torch.tensor(mask, dtype=dtype)
    (kl * m).sum().backward()
    n = mask.sum()
    t = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(r.metrics["kl"], float((kl.detach() * m).sum() / n), **t)
    np.testing.assert_allclose(r.grad * n, x.grad.numpy() * mask, **t)


@needs_verl
def test_verl_straight_through_names_work_in_installed_verl():
    """What we found: at verl commit b178a3cd (2026-01-29, 0.8.0.dev) kl_penalty("k3+") raised
    NotImplementedError (the "+" reached kl_penalty_forward); the installed release (0.9.1) strips
    the suffix first. This pins the installed behaviour the parity test above relies on."""
    x = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5, -0.5], dtype=torch.float64)
    v = VERL.kl_penalty(x, ref, "k3+")
    d = ref - x.detach()
    assert torch.allclose(v, torch.exp(d) - d - 1)
    v.sum().backward()
    assert torch.allclose(x.grad, x.detach() - ref)  # k2's gradient


@needs_verl
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("c", (1.5, 3.0))
@pytest.mark.parametrize("per_token_adv", (False, True))
def test_dual_clip_matches_verl(c, per_token_adv, dtype):
    """verl's compute_policy_loss_vanilla (token-mean aggregation = our dapo with N = this call's
    tokens): loss, autograd gradient and pg_clipfrac_lower; log-ratios within verl's [-20, 20]
    clamp; ratios straddling c within 1e-9 included."""
    rng = np.random.default_rng(int(c * 10) + per_token_adv)
    B, T = 6, 10
    npd = np.float64 if dtype == torch.float64 else np.float32
    lp = -rng.uniform(0.05, 3, (B, T))
    lr = rng.uniform(-1.5, 1.5, (B, T))
    if dtype == torch.float64:  # ratios within 1e-9 of c and of the clip bounds (float32 would round onto them)
        lr[0, :4] = [np.log(c) + 1e-9, np.log(c) - 1e-9, np.log(0.8) - 1e-9, np.log(1.28) + 1e-9]
    old = (lp - lr).astype(npd)
    lp = lp.astype(npd)
    adv = rng.uniform(-1.5, 1.5, (B, T) if per_token_adv else B).astype(npd)
    adv[0] = -np.abs(adv[0])
    mask = (rng.random((B, T)) > 0.2).astype(np.int64)
    mask[0, :4] = 1
    r = ours(lp, adv, mask, old=old, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, clip_ratio_c=c)
    x = torch.tensor(lp, requires_grad=True)
    a = torch.tensor(adv if per_token_adv else np.repeat(adv[:, None], T, 1))
    cfg = VERL.ActorConfig(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=c)
    loss, metrics = VERL.compute_policy_loss_vanilla(torch.tensor(old), x, a, torch.tensor(mask, dtype=dtype),
                                                     "token-mean", cfg)
    loss.backward()
    t = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(r.loss, loss.item(), **t)
    np.testing.assert_allclose(r.grad, x.grad.numpy(), **t)
    # verl's masked_mean divides by (sum + 1e-8), in the input dtype.
    np.testing.assert_allclose(r.metrics["pg_clipfrac_lower"], metrics["actor/pg_clipfrac_lower"],
                               rtol=1e-8 if dtype == torch.float64 else 1e-6)
    assert r.metrics["pg_clipfrac_lower"] > 0


# ---------------------------------------------------------------- dual clip


@pytest.mark.parametrize("loss_type", ("grpo", "bnpo", "dapo", "luspo"))
@pytest.mark.parametrize("level", ("token", "sequence", "sequence_token"))
def test_dual_clip_matches_reference(loss_type, level):
    for dtype in (np.float64, np.float32):
        lp, old, ref, ent, adv, mask = problem(31, dtype=dtype, spread=1.3)
        c = 1.8 if level == "token" else 1.05  # sequence ratios (geometric means) stay nearer 1
        opts = dict(loss_type=loss_type, beta=0.05, clip_ratio_c=c, epsilon_high=0.28, delta=3.5)
        r = ours(lp, adv, mask, old=old, ref=ref, level=level, bias=True, **opts)
        loss, grad, metrics = reference(lp, adv, mask, old=old, ref=ref, level=level, bias=True, **opts)
        np.testing.assert_allclose(r.loss, loss, **tol(dtype))
        np.testing.assert_allclose(r.grad, grad, **tol(dtype))
        np.testing.assert_allclose(r.metrics["pg_clipfrac_lower"], metrics["pg_clipfrac_lower"], rtol=1e-12)
        assert r.metrics["pg_clipfrac_lower"] > 0


def test_dual_clip_metric_only_when_enabled_and_boundaries():
    lp, old, ref, ent, adv, mask = problem(2)
    assert "pg_clipfrac_lower" not in ours(lp, adv, mask, old=old).metrics
    # A < 0 everywhere, huge ratios: every token is capped at -A c, the gradient is 0.
    neg = -np.abs(adv) - 0.1
    r = ours(lp, neg, mask, old=lp - 3.0, clip_ratio_c=3.0, loss_type="bnpo")
    assert r.metrics["pg_clipfrac_lower"] == 1.0
    assert np.all(r.grad == 0)
    expected = float((-neg[:, None] * 3.0 * mask).sum() / mask.sum())
    assert r.loss == pytest.approx(expected, rel=1e-12)
    # A > 0: dual clip never acts.
    pos = np.abs(adv) + 0.1
    a = ours(lp, pos, mask, old=lp - 3.0, clip_ratio_c=3.0)
    b = ours(lp, pos, mask, old=lp - 3.0)
    assert a.loss == b.loss and np.array_equal(a.grad, b.grad) and a.metrics["pg_clipfrac_lower"] == 0


# ---------------------------------------------------------------- sequence_token


@pytest.mark.parametrize("loss_type", ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo"))
@pytest.mark.parametrize("dtype", (np.float64, np.float32))
def test_sequence_token_matches_trl_token_level_with_shifted_old(loss_type, dtype):
    """GSPO-token through TRL 1.16's own _compute_loss: token level with old = lp - log s_i."""
    variants = [dict(beta=0.0), dict(beta=0.04, use_bias_correction_kl=True, delta=1.6),
                dict(beta=0.04, top_entropy_quantile=0.6, off_policy_mask_threshold=0.05, importance_sampling_ratio=1)]
    for k, v in enumerate(variants):
        lp, old, ref, ent, adv, mask = problem(100 + k, dtype=dtype)
        samp = (old + np.random.default_rng(k).uniform(-0.2, 0.2, old.shape)).astype(dtype)
        opts = dict(loss_type=loss_type, max_completion_length=9, epsilon_high=1.2 if loss_type == "cispo" else 0.28)
        if loss_type not in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
            v = {key: val for key, val in v.items() if key != "delta"}
        v = dict(v)
        isr = np.exp(np.random.default_rng(k).normal(0, 0.1, lp.shape)).astype(dtype) \
            if v.pop("importance_sampling_ratio", None) else None
        bias = v.pop("use_bias_correction_kl", False)
        r = ours(lp, adv, mask, old=old, ref=ref, ent=ent, level="sequence_token", bias=bias, sampling_logps=samp,
                 importance_sampling_ratio=isr, **opts, **v)
        w = mask.astype(np.float64)
        logs = ((lp.astype(np.float64) - old) * w).sum(1) / np.maximum(w.sum(1), 1)
        shifted = (lp - logs[:, None]).astype(dtype)
        loss, grad, _, metrics = trl_loss(lp, adv, mask, old_logps=shifted, ref_logps=ref, sampling_logps=samp,
                                          entropies=ent, importance_sampling_ratio=isr, importance_sampling_level="token",
                                          use_bias_correction_kl=bias, **opts, **v)
        t = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r.loss, loss, **t)
        np.testing.assert_allclose(r.grad, grad, **t)
        for name, value in metrics.items():
            if name in r.metrics:
                assert r.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("loss_type", ("grpo", "dapo", "luspo", "sapo", "cispo"))
def test_sequence_token_matches_formula_reference(loss_type):
    """Independent GSPO-token reference sg(s_i) exp(lp - sg(lp)), uneven lengths, a fully masked row."""
    for dtype in (np.float64, np.float32):
        lp, old, ref, ent, adv, mask = problem(7, dtype=dtype)
        opts = dict(loss_type=loss_type, beta=0.04, epsilon_high=1.2 if loss_type == "cispo" else 0.28)
        r = ours(lp, adv, mask, old=old, ref=ref, level="sequence_token", bias=True, **opts)
        loss, grad, _ = reference(lp, adv, mask, old=old, ref=ref, level="sequence_token", bias=True, **opts)
        np.testing.assert_allclose(r.loss, loss, **tol(dtype))
        np.testing.assert_allclose(r.grad, grad, **tol(dtype))
        assert np.all(r.grad[1] == 0)  # the fully masked row


def test_sequence_token_equals_gspo_unless_advantages_vary_per_token():
    """The GSPO paper (and TRL's former gspo_token docs): with one advantage per sequence
    GSPO-token's gradient equals GSPO's; it differs once A_it varies along the sequence."""
    lp, old, ref, ent, adv, mask = problem(9)
    for loss_type in ("grpo", "dapo", "sapo"):
        seq = ours(lp, adv, mask, old=old, level="sequence", loss_type=loss_type)
        st = ours(lp, adv, mask, old=old, level="sequence_token", loss_type=loss_type)
        assert st.loss == pytest.approx(seq.loss, rel=1e-14)
        np.testing.assert_allclose(st.grad, seq.grad, rtol=1e-12, atol=1e-16)
        adv_t = adv[:, None] * np.linspace(0.5, 1.5, lp.shape[1])[None, :]
        seq = ours(lp, adv_t, mask, old=old, level="sequence", loss_type=loss_type)
        st = ours(lp, adv_t, mask, old=old, level="sequence_token", loss_type=loss_type)
        assert st.loss == pytest.approx(seq.loss, rel=1e-14)
        assert not np.allclose(st.grad, seq.grad)
        np.testing.assert_allclose(st.grad.sum(1), seq.grad.sum(1), rtol=1e-12, atol=1e-16)


# ---------------------------------------------------------------- GMPO


def _gmpo_trl(lp, adv, mask, old, ref, ent, beta, quantile, ga, eps, eps_high):
    return trl_loss(lp, adv, mask, old_logps=old, ref_logps=ref if beta else None, entropies=ent, beta=beta,
                    epsilon=eps, epsilon_high=eps_high, top_entropy_quantile=quantile,
                    gradient_accumulation_steps=ga, trainer_cls=GMPOTrainer)


@pytest.mark.parametrize("dtype", (np.float64, np.float32))
@pytest.mark.parametrize("beta", (0.0, 0.04))
@pytest.mark.parametrize("quantile", (1.0, 0.6))
@pytest.mark.parametrize("old_given", (True, False))
def test_gmpo_matches_trl_experimental_trainer(old_given, quantile, beta, dtype):
    """TRL 1.16's trl.experimental.gmpo.GMPOTrainer._compute_loss (its own code, autograd):
    loss, gradient, kl / entropy / clip-ratio metrics. Row 1 has no valid token: TRL adds the
    constant -A_1 / (B GA) for it (exp(0) = 1), we add 0 (documented); gradients agree."""
    for eps, eps_high, ga in ((0.4, None, 1), (0.3, 0.5, 2)):
        lp, old, ref, ent, adv, mask = problem(50 + int(beta * 100) + int(quantile * 10), dtype=dtype, spread=0.7)
        old_arg = old if old_given else None
        r = ours(lp, adv, mask, old=old_arg, ref=ref if beta else None, ent=ent, loss_type="gmpo", beta=beta,
                 epsilon=eps, epsilon_high=eps_high, top_entropy_quantile=quantile, gradient_accumulation_steps=ga)
        loss, grad, _, metrics = _gmpo_trl(lp, adv, mask, old_arg, ref, ent, beta, quantile, ga, eps, eps_high)
        empty = mask.sum(1) == 0
        assert empty.sum() == 1
        adjusted = loss + float(adv[empty].astype(np.float64).sum()) / (len(adv) * ga)
        t = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(r.loss, adjusted, **t)
        np.testing.assert_allclose(r.grad, grad, **t)
        assert set(metrics) == {"entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                                "clip_ratio/low_min", "clip_ratio/high_max"} | ({"kl"} if beta else set())
        for name, value in metrics.items():
            assert r.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
        if old_given:
            assert metrics["clip_ratio/region_mean"] > 0


@needs_verl
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_gmpo_matches_verl_geo_mean(dtype):
    """verl's compute_policy_loss_geo_mean (GMPO, its own code) is the same objective without KL and
    without TRL's entropy mask: per-row advantages, mean over rows. It divides by (L + 1e-8)
    where TRL (and we) divide by max(L, 1), hence rtol 1e-7; a row without tokens gives 0 there
    too. (Its pg_clipfrac metrics count clipping differently from TRL's clip_ratio: not compared.)"""
    npd = np.float64 if dtype == torch.float64 else np.float32
    lp, old, ref, ent, adv, mask = problem(81, dtype=npd, spread=0.8)
    r = ours(lp, adv, mask, old=old, loss_type="gmpo", epsilon=0.3, epsilon_high=0.45)
    x = torch.tensor(lp, requires_grad=True)
    a = torch.tensor(np.repeat(adv[:, None], lp.shape[1], 1))
    cfg = VERL.ActorConfig(clip_ratio=0.3, clip_ratio_low=0.3, clip_ratio_high=0.45)
    loss, _ = VERL.compute_policy_loss_geo_mean(torch.tensor(old), x, a, torch.tensor(mask, dtype=dtype),
                                                "token-mean", cfg)
    loss.backward()
    t = dict(rtol=1e-7, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(r.loss, loss.item(), **t)
    np.testing.assert_allclose(r.grad, x.grad.numpy(), **t)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gmpo_with_kl_estimators_matches_reference(estimator):
    for dtype in (np.float64, np.float32):
        lp, old, ref, ent, adv, mask = problem(60, dtype=dtype, spread=0.7)
        opts = dict(loss_type="gmpo", beta=0.2, epsilon=0.4, kl_estimator=estimator, kl_clamp=0.2,
                    top_entropy_quantile=0.7, gradient_accumulation_steps=3)
        r = ours(lp, adv, mask, old=old, ref=ref, ent=ent, **opts)
        loss, grad, metrics = reference(lp, adv, mask, old=old, ref=ref, ent=ent, **opts)
        np.testing.assert_allclose(r.loss, loss, **tol(dtype))
        np.testing.assert_allclose(r.grad, grad, **tol(dtype))
        for k in ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean"):
            np.testing.assert_allclose(r.metrics[k], metrics[k], rtol=1e-6)


def test_gmpo_fully_masked_and_garbage():
    lp, old, ref, ent, adv, mask = problem(70)
    zero = np.zeros_like(mask)
    r = ours(lp, adv, zero, old=old, ref=ref, ent=ent, loss_type="gmpo", beta=0.1, entropy_coef=0.2,
             top_entropy_quantile=0.5)
    assert r.loss == 0.0 and np.all(r.grad == 0) and np.all(r.grad_entropies == 0)
    dirty = [x.copy() for x in (lp, old, ref, ent)]
    for k, x in enumerate(dirty):
        x[mask == 0] = (np.nan, np.inf, -np.inf, np.nan)[k]
    a = ours(lp, adv, mask, old=old, ref=ref, ent=ent, loss_type="gmpo", beta=0.1, top_entropy_quantile=0.5)
    b = ours(*dirty[:1], adv, mask, old=dirty[1], ref=dirty[2], ent=dirty[3], loss_type="gmpo", beta=0.1,
             top_entropy_quantile=0.5)
    assert a.loss == b.loss and np.array_equal(a.grad, b.grad) and a.metrics == b.metrics


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(kl_estimator="k4"), r"argument 'kl_estimator' must be one of 'k3', 'k1', 'k2', 'abs', 'k1\+', 'k3\+', "
                              r"'abs\+', got 'k4'"),
    (dict(kl_estimator="k2+"), r"'k2\+' would be k2 itself"),
    (dict(kl_estimator=3), r"argument 'kl_estimator' must be one of"),
    (dict(kl_clamp=0.0), r"argument 'kl_clamp' must be > 0"),
    (dict(kl_clamp=float("inf")), r"argument 'kl_clamp' must be finite"),
    (dict(kl_clamp="10"), r"argument 'kl_clamp' must be a float, got str"),
    (dict(clip_ratio_c=1.0), r"argument 'clip_ratio_c' \(dual-clip PPO\) must be > 1 \(verl uses 3.0\), got 1.0"),
    (dict(clip_ratio_c=float("nan")), r"argument 'clip_ratio_c' must be finite"),
    (dict(clip_ratio_c=3.0, loss_type="cispo"), r"applies to the clipped loss types grpo, bnpo, dr_grpo, dapo, "
                                                r"luspo; got loss_type 'cispo'"),
    (dict(loss_type="gmpo", importance_sampling_level="sequence"), r"importance_sampling_level must be 'token'"),
    (dict(loss_type="gmpo", delta=2.0), r"loss_type 'gmpo' does not use delta"),
    (dict(loss_type="gmpo", use_bias_correction_kl=True), r"does not use use_bias_correction_kl"),
    (dict(loss_type="gmpo", off_policy_mask_threshold=0.1), r"does not use off_policy_mask_threshold"),
])
def test_invalid_options(kwargs, message):
    lp, old, ref, ent, adv, mask = problem(1)
    with pytest.raises((ValueError, TypeError), match=message):
        grpo_swift.grpo_loss(lp, adv, mask, old_logps=old, **kwargs)
    with pytest.raises((ValueError, TypeError), match=message.replace("grpo_loss", "LossConfig")):
        grpo_swift.LossConfig(**kwargs)


def test_gmpo_input_errors_name_the_function():
    lp, old, ref, ent, adv, mask = problem(1)
    with pytest.raises(ValueError, match=r"grpo_loss\(\): loss_type 'gmpo' weights each sequence's geometric-mean "
                                         r"ratio by one advantage"):
        grpo_swift.grpo_loss(lp, np.ones_like(lp), mask, old_logps=old, loss_type="gmpo")
    with pytest.raises(ValueError, match=r"grpo_loss\(\): loss_type 'gmpo' does not apply an importance_sampling_ratio"):
        grpo_swift.grpo_loss(lp, adv, mask, old_logps=old, loss_type="gmpo", importance_sampling_ratio=np.ones(6))
    # inputs are never modified
    before = [x.copy() for x in (lp, old, adv)]
    grpo_swift.grpo_loss(lp, adv, mask, old_logps=old, loss_type="gmpo")
    for x, y in zip(before, (lp, old, adv)):
        assert np.array_equal(x, y)
