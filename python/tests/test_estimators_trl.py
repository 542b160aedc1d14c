"""RLOO and GRPO estimators against TRL 1.16's trainer semantics.

TRL computes RLOO advantages inline in RLOOTrainer._generate_and_score_completions (no function
to call): the test re-states that block's torch operations (nan-aware leave-one-out baseline over
scorable siblings, optional batch z-score with TRL's own `nanstd`, NaN -> 0) and compares.
"""
from __future__ import annotations

import numpy as np
import pytest

import grpo_swift as gs
from conftest import requires_trl


def _nanstd_f64(x):
    """TRL's nanstd with its Bessel factor count / (count - 1) in float64 (TRL divides two
    integer tensors, which torch does in float32: a relative error up to ~6e-8)."""
    import torch

    ok = ~torch.isnan(x)
    n = int(ok.sum())
    if n < 2:
        return torch.tensor(float("nan"), dtype=x.dtype)
    m = torch.nanmean(x)
    return torch.sqrt(torch.nanmean((x - m) ** 2) * (n / (n - 1)))


def _trl_rloo(rewards: np.ndarray, g: int, normalize: bool, exact_bessel: bool = False) -> np.ndarray:
    import torch
    from trl.trainer.utils import nanstd as trl_nanstd

    nanstd = _nanstd_f64 if exact_bessel else trl_nanstd

    r = torch.tensor(rewards, dtype=torch.float64)
    grouped = r.view(-1, g)
    counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    if g > 1:
        adv = r - ((total - grouped) / (counts - 1)).view(-1)
    else:
        adv = torch.zeros_like(r)
    if normalize:
        adv = (adv - torch.nanmean(adv)) / (nanstd(adv) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0).numpy()


@requires_trl
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("g", [1, 2, 4, 8])
def test_rloo_matches_trl(rng, normalize, g):
    r = rng.normal(size=32 * g)
    r[rng.random(r.size) < 0.15] = np.nan
    r[:g] = np.nan  # an all-NaN group
    if g >= 2:
        r[g:2 * g] = np.nan
        r[g] = 1.5  # a group with a single scorable row
    got = gs.rloo_advantages(r, g, normalize_advantages=normalize)
    # TRL's own nanstd: equal up to its float32 Bessel factor (relative 6e-8 at most).
    np.testing.assert_allclose(got, _trl_rloo(r, g, normalize), rtol=1e-7, atol=1e-12)
    # The same block with the factor in float64: equal to rounding.
    np.testing.assert_allclose(got, _trl_rloo(r, g, normalize, exact_bessel=True), rtol=1e-12, atol=1e-12)


@requires_trl
def test_rloo_binary_rewards_match_trl(rng):
    r = rng.integers(0, 2, 64 * 4).astype(float)
    np.testing.assert_allclose(gs.rloo_advantages(r, 4), _trl_rloo(r, 4, False), rtol=1e-12, atol=1e-12)
