"""Property-based fuzzing (hypothesis) of the numpy-level kernels.

Every call either equals an independent float64 reference or raises TypeError/ValueError
naming the function; never a crash, a hang, or a NaN produced from masked data. CI runs a
small budget; `make fuzz` runs >= 20,000 cases (GRPO_FUZZ_EXAMPLES per property).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import grpo_swift  # noqa: E402

EXAMPLES = int(os.environ.get("GRPO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=list(HealthCheck))

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
special = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0])


def layouts(arr: np.ndarray, layout: str) -> np.ndarray:
    """The same values as a C-contiguous, strided (non-contiguous) or read-only array."""
    if layout == "strided":
        wide = np.repeat(arr[..., None], 2, axis=-1)
        out = wide[..., 0]
        assert not out.flags.c_contiguous or out.size <= 1
        return out
    if layout == "readonly":
        out = arr.copy()
        out.setflags(write=False)
        return out
    return arr


# ---- group advantages ---------------------------------------------------------------------

def ref_advantages(r: np.ndarray, g: int, scale: str) -> np.ndarray:
    """Float64 formula of TRL's sum_then_normalize advantages (independent of the kernel)."""
    x = r.reshape(-1, g)
    valid = ~np.isnan(x)
    cnt = valid.sum(axis=1, keepdims=True)
    with np.errstate(all="ignore"):
        mu = np.where(cnt > 0, np.nansum(x, axis=1, keepdims=True) / np.maximum(cnt, 1), np.nan)
        dev = np.where(valid, x - mu, 0.0)
        sd = np.where(cnt > 1, np.sqrt((dev ** 2).sum(axis=1, keepdims=True) / np.maximum(cnt - 1, 1)), np.nan)
        if scale == "batch":
            flat = r[~np.isnan(r)]
            sd = np.full_like(sd, np.std(flat, ddof=1) if flat.size > 1 else np.nan)
        a = x - mu
        if scale != "none":
            a = a / (sd + 1e-4)
    return np.nan_to_num(a, nan=0.0).ravel()


@FUZZ
@given(g=st.integers(2, 9), groups=st.integers(1, 6), scale=st.sampled_from(["group", "batch", "none"]),
       dtype=st.sampled_from([np.float32, np.float64]), layout=st.sampled_from(["c", "strided", "readonly"]),
       data=st.data())
def test_fuzz_group_advantages(g, groups, scale, dtype, layout, data):
    n = g * groups
    vals = data.draw(st.lists(st.one_of(finite, st.just(np.nan)), min_size=n, max_size=n))
    r = layouts(np.array(vals, dtype=dtype), layout)
    got = grpo_swift.group_advantages(r, g, scale_rewards=scale)
    assert got.advantages.dtype == dtype and np.all(np.isfinite(got.advantages))
    ref = ref_advantages(np.asarray(r, dtype=np.float64), g, scale)
    # Tolerance: float rounding relative to the reward magnitude over the spread (+1e-4).
    with np.errstate(all="ignore"):
        mag = np.nanmax(np.abs(np.asarray(r, dtype=np.float64)), initial=1.0)
    eps = np.finfo(dtype).eps
    tol = 64 * eps * (1 + mag / 1e-4)
    np.testing.assert_allclose(got.advantages, ref, rtol=64 * eps, atol=tol)


bad_values = st.one_of(
    st.none(), st.text(max_size=3), st.integers(), st.lists(st.integers(), max_size=4),
    st.builds(lambda n: np.arange(n), st.integers(0, 6)),
    st.builds(lambda n: np.ones(n, dtype=np.complex64), st.integers(0, 6)),
    st.builds(lambda n: np.ones((n, 1, 2)), st.integers(0, 3)),
    st.builds(lambda n: np.ones(n), st.integers(0, 7)),
)


@FUZZ
@given(rewards=bad_values, g=st.one_of(st.integers(-2, 5), st.floats(allow_nan=True), st.none(), st.text(max_size=2)))
def test_fuzz_group_advantages_bad_input_raises_cleanly(rewards, g):
    try:
        grpo_swift.group_advantages(rewards, g)
    except (TypeError, ValueError) as exc:
        assert "group_advantages" in str(exc)


# ---- policy loss --------------------------------------------------------------------------

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"]


@FUZZ
@given(b=st.integers(1, 5), t=st.integers(1, 9), loss_type=st.sampled_from(LOSS_TYPES),
       level=st.sampled_from(["token", "sequence"]), beta=st.sampled_from([0.0, 0.04]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31), junk=special,
       layout=st.sampled_from(["c", "strided", "readonly"]))
def test_fuzz_grpo_loss_masked_garbage_never_leaks(b, t, loss_type, level, beta, dtype, seed, junk, layout):
    rng = np.random.default_rng(seed)
    logps = -rng.exponential(1.0, size=(b, t))
    old = logps + rng.normal(0, 0.3, size=(b, t))
    ref = logps + rng.normal(0, 0.3, size=(b, t))
    adv = rng.normal(size=b)
    mask = rng.random((b, t)) < 0.7
    kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=beta, max_completion_length=t,
              num_items_in_batch=float(max(mask.sum(), 1)))
    clean = grpo_swift.grpo_loss(logps.astype(dtype), adv, mask, old_logps=old.astype(dtype),
                                 ref_logps=ref.astype(dtype), **kw)
    dirty_l, dirty_o, dirty_r = (np.where(mask, a, junk).astype(dtype) for a in (logps, old, ref))
    dirty = grpo_swift.grpo_loss(layouts(dirty_l, layout), adv, layouts(mask, layout),
                                 old_logps=layouts(dirty_o, layout), ref_logps=dirty_r, **kw)
    assert np.isfinite(clean.loss)
    assert dirty.loss == clean.loss
    assert np.array_equal(dirty.grad, clean.grad)
    assert np.all(dirty.grad[~mask] == 0.0)
    for k, v in clean.metrics.items():
        assert (np.isnan(v) and np.isnan(dirty.metrics[k])) or v == dirty.metrics[k], k


# Issue-11 options (KL estimators + clamp, GMPO, sequence_token, dual clip): same property.
LOSS_EXTRAS = [dict(loss_type="gmpo", epsilon=0.4), dict(loss_type="dapo", importance_sampling_level="sequence_token"),
               dict(loss_type="grpo", kl_estimator="k3+", kl_clamp=10.0), dict(loss_type="bnpo", kl_estimator="abs"),
               dict(loss_type="luspo", kl_estimator="k1", importance_sampling_level="sequence"),
               dict(loss_type="grpo", clip_ratio_c=1.5), dict(loss_type="dapo", clip_ratio_c=1.2, kl_estimator="k2")]


@FUZZ
@given(b=st.integers(1, 5), t=st.integers(1, 9), extra=st.sampled_from(range(len(LOSS_EXTRAS))),
       beta=st.sampled_from([0.0, 0.04]), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31),
       junk=special)
def test_fuzz_loss_extras_masked_garbage_never_leaks(b, t, extra, beta, dtype, seed, junk):
    rng = np.random.default_rng(seed)
    logps = -rng.exponential(1.0, size=(b, t))
    old = logps + rng.normal(0, 0.5, size=(b, t))
    ref = logps + rng.normal(0, 0.5, size=(b, t))
    adv = rng.normal(size=b)
    mask = rng.random((b, t)) < 0.7
    kw = dict(LOSS_EXTRAS[extra], beta=beta)
    clean = grpo_swift.grpo_loss(logps.astype(dtype), adv, mask, old_logps=old.astype(dtype),
                                 ref_logps=ref.astype(dtype), **kw)
    dirty_l, dirty_o, dirty_r = (np.where(mask, a, junk).astype(dtype) for a in (logps, old, ref))
    dirty = grpo_swift.grpo_loss(dirty_l, adv, mask, old_logps=dirty_o, ref_logps=dirty_r, **kw)
    assert np.isfinite(clean.loss)
    assert dirty.loss == clean.loss
    assert np.array_equal(dirty.grad, clean.grad)
    assert np.all(dirty.grad[~mask] == 0.0)
    if not mask.any():
        assert clean.loss == 0.0 and np.all(clean.grad == 0.0)
    for k, v in clean.metrics.items():
        assert (np.isnan(v) and np.isnan(dirty.metrics[k])) or v == dirty.metrics[k], k


@FUZZ
@given(logps=bad_values, adv=bad_values, mask=bad_values, loss_type=st.one_of(st.sampled_from(LOSS_TYPES), st.text(max_size=4)))
def test_fuzz_grpo_loss_bad_input_raises_cleanly(logps, adv, mask, loss_type):
    try:
        grpo_swift.grpo_loss(logps, adv, mask, loss_type=loss_type, max_completion_length=4)
    except (TypeError, ValueError) as exc:
        assert "grpo_loss" in str(exc)


# ---- log-probs ----------------------------------------------------------------------------

@FUZZ
@given(n=st.integers(1, 7), v=st.integers(1, 70), temp=st.sampled_from([0.6, 1.0, 1.7]),
       scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31), layout=st.sampled_from(["c", "strided", "readonly"]))
def test_fuzz_selective_log_softmax(n, v, temp, scale, dtype, seed, layout):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, v)) * scale).astype(dtype)
    idx = rng.integers(0, v, size=n)
    lp, ent = grpo_swift.selective_log_softmax(layouts(logits, layout), idx, temperature=temp, return_entropy=True)
    z = logits.astype(np.float64) / temp
    z -= z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    ref_lp = z[np.arange(n), idx] - lse
    p = np.exp(z - lse[:, None])
    ref_ent = lse - (p * z).sum(axis=1)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert np.all(lp <= 0)
    np.testing.assert_allclose(lp, ref_lp, rtol=tol, atol=tol * (1 + np.abs(z).max()))
    np.testing.assert_allclose(ent, ref_ent, rtol=1e-3 if dtype == np.float32 else 1e-9,
                               atol=tol * (1 + np.abs(z).max()))


@FUZZ
@given(n=st.integers(1, 9), h=st.integers(1, 12), v=st.integers(1, 90), seed=st.integers(0, 2**31),
       bias=st.booleans(), softcap=st.sampled_from([None, 5.0]))
def test_fuzz_fused_log_probs(n, h, v, seed, bias, softcap):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, h)).astype(np.float32)
    weight = rng.normal(0, 0.5, size=(v, h)).astype(np.float32)
    b = rng.normal(size=v).astype(np.float32) if bias else None
    labels = rng.integers(-1, v, size=n)  # -1: not scored
    lp, ent = grpo_swift.fused_log_probs(hidden, weight, labels, bias=b, final_logit_softcapping=softcap)
    z = hidden.astype(np.float64) @ weight.astype(np.float64).T + (0 if b is None else b)
    if softcap:
        z = softcap * np.tanh(z / softcap)
    z -= z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    ref = np.where(labels >= 0, z[np.arange(n), np.maximum(labels, 0)] - lse, 0.0)
    np.testing.assert_allclose(lp, ref, rtol=1e-4, atol=1e-4)
    assert np.all(ent[labels < 0] == 0)  # documented: not scored -> log-prob 0, entropy 0
    assert np.all(lp <= 0)
