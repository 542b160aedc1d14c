"""Independent torch references for the issue-11 loss options, written from the published formulas.

- KL estimators (Schulman 2020, "Approximating KL divergence"), with d = ref - lp, x = lp - ref:
  k1 = x, k2 = x^2 / 2, k3 = exp(d) - d - 1, abs = |x|; "X+" = k2 - sg(k2) + sg(X) (verl's
  straight-through); an optional clamp of the value to [-c, c] (torch.clamp).
- GSPO (Zheng et al. 2025): s_i = exp(mean_t(lp - old)); GSPO-token r_it = sg(s_i) exp(lp_t - sg(lp_t)).
- Dual-clip PPO (Ye et al. 2019): for A < 0, loss = min(ppo_clip_loss, -A c).
- GMPO (Zhao et al. 2025, arXiv 2507.20673): exp(mean over tokens of the sign-aware clipped log-ratio).

Aggregations as TRL 1.16 (GRPO_SPEC.md). Autograd of this code is the gradient reference; the code
shares nothing with grpo_swift (no import of it).
"""
from __future__ import annotations

import torch

ESTIMATORS = ("k3", "k1", "k2", "abs", "k1+", "k3+", "abs+")


def kl_estimate(lp: torch.Tensor, ref: torch.Tensor, estimator: str, clamp: float | None = None) -> torch.Tensor:
    x = lp - ref
    d = ref - lp
    base = estimator.rstrip("+")
    if base == "k1":
        value = x
    elif base == "k2":
        value = 0.5 * x * x
    elif base == "k3":
        value = torch.exp(d) - d - 1
    elif base == "abs":
        value = x.abs()
    else:
        raise ValueError(estimator)
    if clamp is not None:
        value = torch.clamp(value, -clamp, clamp)
    if estimator.endswith("+"):
        k2 = 0.5 * x * x
        return k2 - k2.detach() + value.detach()
    return value


def high_entropy_mask(ent: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    valid = ent[mask.bool()].float()
    thr = torch.quantile(valid, 1.0 - quantile)
    return (ent >= thr.to(ent.dtype)).to(ent.dtype)


def reference_loss(lp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *, old=None, ref=None, ent=None,
                   loss_type="dapo", level="token", beta=0.0, epsilon=0.2, epsilon_high=None, delta=None,
                   bias=False, kl_estimator="k3", kl_clamp=None, clip_ratio_c=None, top_entropy_quantile=1.0,
                   gradient_accumulation_steps=1, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05):
    """The loss (0-d tensor, differentiable w.r.t. lp) and a dict of metrics.

    adv: (B,). mask: (B, T) 0/1 float. old None: lp.detach(). Loss types: grpo, bnpo, dapo,
    luspo, cispo, sapo, gmpo (dapo's normaliser is this call's token count)."""
    m = mask.to(lp.dtype)
    eh = epsilon if epsilon_high is None else epsilon_high
    old = lp.detach() if old is None else old
    a = adv.to(lp.dtype)[:, None]
    lens = m.sum(-1, keepdim=True).clamp(min=1.0)
    log_ratio = lp - old
    emask = None if top_entropy_quantile >= 1.0 else high_entropy_mask(ent, mask, top_entropy_quantile)
    metrics = {}
    if loss_type == "gmpo":
        c = torch.clamp(log_ratio, -epsilon, eh)
        z = torch.where(a > 0, torch.minimum(log_ratio, c), torch.maximum(log_ratio, c))
        e = m if emask is None else m * emask
        coef = torch.exp((z * e).sum(-1) / e.sum(-1).clamp(min=1.0))
        row = -coef * a[:, 0]
        row = torch.where(m.sum(-1) > 0, row, torch.zeros_like(row))  # rows without tokens: 0 (documented)
        if beta != 0.0:
            kl = kl_estimate(lp, ref, kl_estimator, kl_clamp)
            row = row + beta * (kl * m).sum(-1) / lens[:, 0]
            metrics["kl"] = ((kl * m).sum() / m.sum().clamp(min=1.0)).item()
        low = ((log_ratio < -epsilon) & (a < 0)).to(lp.dtype)
        high = ((log_ratio > eh) & (a > 0)).to(lp.dtype)
        metrics["clip_ratio/low_mean"] = ((low * m).sum() / m.sum().clamp(min=1.0)).item()
        metrics["clip_ratio/high_mean"] = ((high * m).sum() / m.sum().clamp(min=1.0)).item()
        return row.mean() / gradient_accumulation_steps, metrics

    if level == "token":
        liw = log_ratio
    elif level == "sequence":
        liw = (log_ratio * m).sum(-1, keepdim=True) / lens
    elif level == "sequence_token":
        s = ((log_ratio * m).sum(-1, keepdim=True) / lens).detach()
        liw = lp - lp.detach() + s
    else:
        raise ValueError(level)
    r = torch.exp(liw)
    if loss_type in ("grpo", "bnpo", "dapo", "luspo"):
        c2 = torch.clamp(r, 1 - epsilon, 1 + eh)
        c1 = r if delta is None else torch.clamp(r, max=delta)
        per = -torch.min(c1 * a, c2 * a)
        if clip_ratio_c is not None:
            cap = -a * clip_ratio_c
            lower = ((per > cap) & (a < 0)).to(lp.dtype) * torch.ones_like(lp)
            metrics["pg_clipfrac_lower"] = ((lower * m).sum() / m.sum().clamp(min=1.0)).item()
            per = torch.where(a < 0, torch.min(per, cap), per)
    elif loss_type == "cispo":
        per = -torch.clamp(r, max=eh).detach() * a * lp
    elif loss_type == "sapo":
        tau = torch.where(a > 0, torch.tensor(sapo_temperature_pos), torch.tensor(sapo_temperature_neg)).to(lp.dtype)
        per = -(torch.sigmoid(tau * (r - 1)) * 4 / tau) * a
    else:
        raise ValueError(loss_type)
    per = per * torch.ones_like(lp)
    if emask is not None:
        per = per * emask
    if beta != 0.0:
        kl = kl_estimate(lp, ref, kl_estimator, kl_clamp)
        if bias:
            kl = kl * r
        metrics["kl"] = ((kl * m).sum() / m.sum().clamp(min=1.0)).item()
        per = per + beta * kl
    ga = gradient_accumulation_steps
    if loss_type in ("grpo", "sapo"):
        loss = ((per * m).sum(-1) / lens[:, 0]).mean() / ga
    elif loss_type == "bnpo":
        loss = (per * m).sum() / m.sum().clamp(min=1.0) / ga
    elif loss_type in ("dapo", "cispo"):
        loss = (per * m).sum() / m.sum().clamp(min=1.0)  # N = this call's tokens, S = GA
    else:  # luspo
        loss = (per * m).sum(-1).mean() / ga
    return loss, metrics
