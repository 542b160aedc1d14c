"""group_advantages: parity with TRL 1.16's GRPOTrainer advantage block, regressions, errors."""
from __future__ import annotations

import inspect
import os
import zlib
import itertools

import numpy as np
import pytest

import grpo_swift
from conftest import requires_trl

# GRPO_TEST_SEED varies the random parity batches (default fixed, so CI is reproducible).
SEED = int(os.environ.get("GRPO_TEST_SEED", "0"))

torch = pytest.importorskip("torch")


def trl_reference(rewards_per_func: np.ndarray, g: int, scale: str, agg: str, weights=None):
    """TRL 1.16's advantage block (GRPOTrainer._generate_and_score_completions), run in the
    input dtype, with TRL's own `nanstd`. test_reference_mirrors_trl_source checks that the
    statements below still appear in TRL's source.

    nanstd computes its Bessel factor count / (count - 1) from integer counts, which torch
    promotes to the *default* dtype (float32): on float64 rewards the factor would carry
    float32 rounding (~3e-8 relative). For the float64 comparison the default dtype is set
    to float64, so TRL's code runs entirely in float64."""
    from trl.trainer.utils import nanstd

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if rewards_per_func.dtype == np.float64 else torch.float32)
    try:
        return _trl_block(rewards_per_func, g, scale, agg, weights, nanstd)
    finally:
        torch.set_default_dtype(previous)


def _trl_block(rewards_per_func, g, scale, agg, weights, nanstd):

    rpf = torch.from_numpy(np.array(rewards_per_func, copy=True))
    if rpf.ndim == 1:
        rpf = rpf[:, None]
    num_funcs = rpf.shape[1]
    w = torch.ones(num_funcs, dtype=rpf.dtype) if weights is None else torch.tensor(weights, dtype=rpf.dtype)
    unscorable_mask = torch.isnan(rpf).all(dim=1)
    if agg == "sum_then_normalize":
        rewards = (rpf * w.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        mean_grouped = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
        if scale in ("group", "none"):
            std_rewards = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
        else:
            std_rewards = nanstd(rewards).expand_as(rewards)
        advantages = rewards - mean_grouped
        if scale != "none":
            advantages = advantages / (std_rewards + 1e-4)
        mean = mean_grouped
    else:
        grouped = rpf.view(-1, g, num_funcs)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, num_funcs)
        rewards = (reward_k * w.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        std_rewards = nanstd(rewards).expand_as(rewards)
        mean = torch.nanmean(rewards).expand_as(rewards)
        advantages = (rewards - mean) / (std_rewards + 1e-4)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return advantages.numpy(), mean.numpy(), std_rewards.numpy(), is_std_zero.numpy()


@requires_trl
def test_reference_mirrors_trl_source():
    from trl import GRPOTrainer

    src = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for stmt in [
        "unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)",
        "rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)",
        "rewards[unscorable_mask] = torch.nan",
        "mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)",
        "std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)",
        "std_rewards = nanstd(rewards).expand_as(rewards)",
        "advantages = advantages / (std_rewards + 1e-4)",
        "is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))",
        "mean_k = torch.nanmean(grouped, dim=1, keepdim=True)",
        "reward_k = (grouped - mean_k) / (std_k + 1e-4)",
        "advantages = (rewards - torch.nanmean(rewards)) / (std_rewards + 1e-4)",
        "advantages = torch.nan_to_num(advantages, nan=0.0)",
    ]:
        assert stmt in src, f"TRL's advantage block changed: {stmt!r} not found"


def random_rewards(rng, n, f, dtype, nan_pattern):
    kind = rng.integers(0, 3)
    if kind == 0:
        r = rng.normal(size=(n, f))
    elif kind == 1:  # binary correctness rewards: many zero-spread groups
        r = rng.integers(0, 2, size=(n, f)).astype(np.float64)
    else:  # mixed scales
        r = rng.normal(size=(n, f)) * rng.choice([1e-3, 1.0, 100.0])
    if nan_pattern == "scattered":
        r[rng.random((n, f)) < 0.15] = np.nan
    elif nan_pattern == "rows":
        r[rng.random(n) < 0.2, :] = np.nan
    elif nan_pattern == "group":
        r[: n // 4 if n >= 8 else 1, :] = np.nan
    return r.astype(dtype)


GRID = list(itertools.product(
    ["group", "batch", "none"], ["sum_then_normalize", "normalize_then_sum"],
    [None, "weights"], ["none", "scattered", "rows", "group"], [1, 3]))


@requires_trl
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale,agg,weights,nan_pattern,funcs", GRID)
def test_parity_with_trl(dtype, scale, agg, weights, nan_pattern, funcs):
    rng = np.random.default_rng(zlib.crc32(repr((scale, agg, weights, nan_pattern, funcs, SEED)).encode()))
    for g in (2, 4, 7, 16):
        n = g * int(rng.integers(1, 6))
        r = random_rewards(rng, n, funcs, dtype, nan_pattern)
        w = None if weights is None else rng.uniform(-1.0, 2.0, size=funcs).round(2).tolist()
        ref = trl_reference(r, g, scale, agg, w)
        got = grpo_swift.group_advantages(r if funcs > 1 else r[:, 0], g, scale_rewards=scale,
                                          reward_weights=w, multi_objective_aggregation=agg)
        assert got.advantages.dtype == dtype
        if dtype == np.float64:
            # Groups with zero reward spread: ours is exactly 0 (the mean is exact); TRL's mean
            # can be 1 ulp off, which its division by (0 + 1e-4) amplifies 1e4-fold.
            flat = (got.std == 0) & np.isfinite(ref[1])
            assert np.all(got.advantages[flat] == 0.0)
            ulp_noise = 1e4 * 4 * np.finfo(np.float64).eps * np.maximum(np.abs(ref[1][flat]), 1e-300)
            assert np.all(np.abs(ref[0][flat]) <= ulp_noise)
            np.testing.assert_allclose(got.advantages[~flat], ref[0][~flat], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got.mean, ref[1], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got.std, ref[2], rtol=1e-12, atol=1e-12)
        else:
            # float32: TRL rounds every intermediate to float32; we accumulate in float64 and
            # round once. So (1) ours equals TRL's code run in float64 on the same float32
            # inputs to 1e-6 relative, and (2) ours differs from TRL's float32 result by no
            # more than TRL's own float32 rounding error (|trl32 - trl64|) plus 1e-6 relative.
            # Absolute tolerances scale with the magnitude of what is summed: max|A| for the
            # advantages; the summed rewards (or z-scores) for the mean and std.
            ref64 = trl_reference(r.astype(np.float64), g, scale, agg, w)
            wv = np.ones(funcs) if w is None else np.abs(np.array(w))
            if agg == "sum_then_normalize":
                mag = float(np.nanmax(np.nansum(np.abs(r.reshape(n, funcs).astype(np.float64)) * wv, axis=1)))
            else:  # a group z-score is at most (g - 1) / sqrt(g) in magnitude
                mag = float(wv.sum() * (g - 1) / np.sqrt(g))
            amax = max(1.0, float(np.max(np.abs(ref64[0]), initial=0.0)))
            for ours, r32, r64, m in zip((got.advantages, got.mean, got.std), ref[:3], ref64[:3], (amax, mag, mag)):
                np.testing.assert_allclose(ours, r64, rtol=1e-6, atol=1e-6 * max(m, 1e-300))
                bound = np.abs(r32.astype(np.float64) - r64) + 1e-6 * (np.abs(r64) + m)
                diff = np.abs(ours.astype(np.float64) - r32.astype(np.float64))
                assert np.all((diff <= bound) | (np.isnan(ours) & np.isnan(r32))), (diff - bound).max()
        if dtype == np.float64:
            np.testing.assert_array_equal(got.is_std_zero, ref[3])


# ---- regressions -------------------------------------------------------------------------

def test_batch_std_differs_from_group_std():
    # Two groups with very different spreads: batch scaling must use the batch std
    # (TRL once divided by the group std in "batch" mode).
    r = np.array([0.0, 1.0, 0.0, 100.0])
    group = grpo_swift.group_advantages(r, 2, scale_rewards="group")
    batch = grpo_swift.group_advantages(r, 2, scale_rewards="batch")
    sd_batch = np.std(r, ddof=1)
    np.testing.assert_allclose(batch.std, sd_batch, rtol=1e-15)
    np.testing.assert_allclose(batch.advantages, (r - np.repeat([0.5, 50.0], 2)) / (sd_batch + 1e-4), rtol=1e-14)
    assert not np.allclose(group.advantages, batch.advantages)
    np.testing.assert_array_equal(batch.mean, [0.5, 0.5, 50.0, 50.0])  # mean stays per group


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_seven_equal_members_are_bitwise_equal(dtype):
    r = np.array([0.35] * 7 + [0.0], dtype=dtype)
    got = grpo_swift.group_advantages(r, 8).advantages
    assert len(set(got[:7].tobytes()[i:i + got.itemsize] for i in range(0, 7 * got.itemsize, got.itemsize))) == 1
    # the float64 formula, evaluated independently
    x = r.astype(np.float64)
    mu = sum(x.tolist()) / 8
    sd = (sum((v - mu) ** 2 for v in x.tolist()) / 7) ** 0.5
    expected = (x - mu) / (sd + 1e-4)
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(dtype), rtol=1e-15 if dtype == np.float64 else 1e-7)
    assert got[0] > 0 > got[7]


@pytest.mark.parametrize("value", [0.7, 0.1, 0.35, 1 / 3, -2.2, 1e-9, 123456.789])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_identical_rewards_give_exactly_zero(value, dtype, scale):
    r = np.full(21, value, dtype=dtype)  # three groups of 7
    got = grpo_swift.group_advantages(r, 7, scale_rewards=scale)
    assert np.all(got.advantages == 0.0), got.advantages
    assert np.all(got.is_std_zero)
    # numpy's own mean of 7 x 0.7 is not exactly 0.7: the naive formula is NOT zero
    naive = r.astype(np.float64) - np.mean(r.astype(np.float64)[:7])
    assert value != 0.7 or dtype != np.float64 or np.any(naive != 0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_nan_in_one_group_leaves_others_bit_identical(scale, rng):
    r = rng.normal(size=32)
    clean = grpo_swift.group_advantages(r, 8, scale_rewards=scale if scale != "batch" else "group")
    r2 = r.copy()
    r2[9] = np.nan
    dirty = grpo_swift.group_advantages(r2, 8, scale_rewards=scale if scale != "batch" else "group")
    others = np.r_[0:8, 16:32]
    assert clean.advantages[others].tobytes() == dirty.advantages[others].tobytes()
    assert dirty.advantages[9] == 0.0
    assert np.all(np.isfinite(dirty.advantages))


def test_permuting_groups_permutes_results(rng):
    g, groups = 4, 6
    r = rng.normal(size=(g * groups, 2))
    perm = rng.permutation(groups)
    rows = (perm[:, None] * g + np.arange(g)).ravel()
    for scale in ("group", "none", "batch"):
        for agg in ("sum_then_normalize", "normalize_then_sum"):
            a = grpo_swift.group_advantages(r, g, scale_rewards=scale, multi_objective_aggregation=agg)
            b = grpo_swift.group_advantages(r[rows], g, scale_rewards=scale, multi_objective_aggregation=agg)
            if scale == "batch" or agg == "normalize_then_sum":
                # a batch-wide statistic is summed in another order: equal to rounding
                np.testing.assert_allclose(b.advantages, a.advantages[rows], rtol=1e-13, atol=1e-13)
            else:
                assert b.advantages.tobytes() == a.advantages[rows].tobytes()


def test_unscorable_rows_get_zero_and_are_excluded():
    r = np.array([[1.0, np.nan], [np.nan, np.nan], [3.0, 1.0], [2.0, np.nan]])
    got = grpo_swift.group_advantages(r, 4, scale_rewards="none")
    # summed rewards: 1, NaN (unscorable), 4, 2 -> mean over valid = 7/3
    np.testing.assert_allclose(got.mean, 7 / 3)
    assert got.advantages[1] == 0.0
    np.testing.assert_allclose(got.advantages[[0, 2, 3]], np.array([1, 4, 2]) - 7 / 3)


def test_bool_and_list_inputs():
    got = grpo_swift.group_advantages([1, 0, 1, 1], 2, scale_rewards=True)
    assert got.advantages.dtype == np.float64
    assert grpo_swift.group_advantages([1, 0, 1, 1], 2, scale_rewards=False).advantages.tolist() == [0.5, -0.5, 0, 0]
    assert got.frac_reward_zero_std == 0.5


def test_inputs_are_not_mutated(rng):
    r = rng.normal(size=(16, 2)).astype(np.float32)
    r[3, 1] = np.nan
    w = np.array([0.5, 2.0], dtype=np.float32)
    before_r, before_w = r.copy(), w.copy()
    grpo_swift.group_advantages(r, 4, reward_weights=w, multi_objective_aggregation="normalize_then_sum")
    np.testing.assert_array_equal(r, before_r)
    np.testing.assert_array_equal(w, before_w)


def test_noncontiguous_and_readonly_inputs(rng):
    r = rng.normal(size=(8, 3))
    view = r[:, 1]  # strided
    ro = r.copy()
    ro.setflags(write=False)
    a = grpo_swift.group_advantages(view, 4).advantages
    b = grpo_swift.group_advantages(np.ascontiguousarray(view), 4).advantages
    assert a.tobytes() == b.tobytes()
    grpo_swift.group_advantages(ro, 4)


def test_thread_count_does_not_change_bits(rng):
    r = rng.normal(size=200_000)
    before = grpo_swift.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 4):
            grpo_swift.set_num_threads(t)
            outs.append(grpo_swift.group_advantages(r, 16, scale_rewards="batch").advantages.tobytes())
    finally:
        grpo_swift.set_num_threads(before)
    assert outs[0] == outs[1] == outs[2]


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad,exc,match", [
    (np.arange(4), TypeError, r"group_advantages\(\): argument 'rewards' must have dtype .*got int64"),
    (np.arange(4).astype(np.int32), TypeError, "int32"),
    (np.ones(4, dtype=np.complex128), TypeError, "complex128"),
    (np.array([1.0, None, 2.0, 3.0], dtype=object), TypeError, "object"),
    (np.ones(4, dtype=np.bool_), TypeError, "bool"),
    (np.ones(4, dtype=np.float16), TypeError, "float16"),
    (np.ones((2, 2, 2)), ValueError, r"'rewards' must be 1-D or 2-D, got shape \(2, 2, 2\)"),
    (np.float64(3.0), ValueError, "1-D or 2-D"),
    (np.ones(5), ValueError, r"multiple of num_generations \(2\)"),
    (np.ones(0), ValueError, "must not be empty"),
    (np.ones((4, 0)), ValueError, "must not be empty"),
    ("abcd", TypeError, "'rewards'"),
    (None, TypeError, "'rewards'"),
    ([[1.0, 2.0], [3.0]], TypeError, "'rewards'"),
])
def test_bad_rewards(bad, exc, match):
    with pytest.raises(exc, match=match):
        grpo_swift.group_advantages(bad, 2)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"num_generations": 1}, ValueError, "'num_generations' must be >= 2, got 1"),
    ({"num_generations": 2.0}, TypeError, "'num_generations' must be an int"),
    ({"num_generations": True}, TypeError, "'num_generations' must be an int"),
    ({"scale_rewards": "grup"}, ValueError, r"'scale_rewards' must be one of 'group', 'batch', 'none', got 'grup'"),
    ({"scale_rewards": None}, ValueError, "'scale_rewards'"),
    ({"multi_objective_aggregation": "sum"}, ValueError, "'sum_then_normalize', 'normalize_then_sum'"),
    ({"reward_weights": [1.0, 2.0, 3.0]}, ValueError, r"one weight per reward function \(2\), got 3"),
    ({"reward_weights": [1.0, float("nan")]}, ValueError, "must be finite"),
    ({"reward_weights": np.ones(2, dtype=np.int64)}, TypeError, "'reward_weights' must have dtype"),
    ({"reward_weights": [[1.0, 2.0]]}, ValueError, "'reward_weights' must be 1-D"),
])
def test_bad_options(kwargs, exc, match):
    args = {"num_generations": 2, **kwargs}
    g = args.pop("num_generations")
    with pytest.raises(exc, match=match):
        grpo_swift.group_advantages(np.ones((4, 2)), g, **args)


def test_gpu_like_tensor_is_refused():
    class FakeCuda:
        dtype = np.float32
        shape = (4,)

        class device:
            type = "cuda"

    with pytest.raises(TypeError, match="run on CPU"):
        grpo_swift.group_advantages(FakeCuda(), 2)


def test_native_layer_checks_buffers_itself():
    from grpo_swift import _native
    out = [np.empty(4) for _ in range(3)]
    z = np.empty(4, dtype=bool)
    with pytest.raises(TypeError, match="'rewards' must have dtype"):
        _native.group_advantages(np.ones((4, 1), dtype=np.int64), None, 2, 0, 0, *out, z)
    with pytest.raises(ValueError, match="'rewards' must be a C-contiguous"):
        _native.group_advantages(np.ones((4, 2))[:, :1], None, 2, 0, 0, *out, z)
    with pytest.raises(ValueError, match="'out_advantages' must be a C-contiguous writable"):
        ro = np.empty(4)
        ro.setflags(write=False)
        _native.group_advantages(np.ones((4, 1)), None, 2, 0, 0, ro, out[1], out[2], z)
    with pytest.raises(ValueError, match="scale_rewards must be 0 .group., 1 .batch. or 2"):
        _native.group_advantages(np.ones((4, 1)), None, 2, 9, 0, *out, z)
    with pytest.raises(ValueError, match="output buffers must have 4 elements"):
        _native.group_advantages(np.ones((4, 1)), None, 2, 0, 0, np.empty(3), out[1], out[2], z)
