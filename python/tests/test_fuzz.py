"""Property-based fuzzing (hypothesis) of the numpy-level kernels.

Every call either equals an independent float64 reference or raises TypeError/ValueError
naming the function; never a crash, a hang, or a NaN produced from masked data. CI runs a
small budget; `make fuzz` runs >= 20,000 cases (GRPO_FUZZ_EXAMPLES per property).
"""
from __future__ import annotations

import os
import warnings

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


# ---- advantage estimators -----------------------------------------------------------------

from test_estimators import (  # noqa: E402  (independent float64 references of the formulas)
    ref_gpg, ref_grpo, ref_opo, ref_passk, ref_reinforce_pp, ref_reinforce_pp_baseline, ref_rloo,
)

ROW_ESTIMATOR_NAMES = ["grpo", "dr_grpo", "rloo", "opo", "gpg", "passk"]


@st.composite
def grouped_rewards(draw, max_rows: int = 40):
    """(rewards float64 with NaN, ids or None, num_generations or None, magnitude)."""
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3, 1e6]))
    if draw(st.booleans()):
        g = draw(st.integers(1, 8))
        n = g * draw(st.integers(1, max(1, max_rows // g)))
        ids = None
    else:
        n = draw(st.integers(1, max_rows))
        g = None
        labels = draw(st.lists(st.integers(-3, 7), min_size=n, max_size=n))  # random sizes, singletons
        ids = np.array(labels, dtype=np.int64) * draw(st.sampled_from([1, 1_000_003, -(2**40)]))
    vals = draw(st.lists(st.one_of(st.floats(-1, 1, allow_nan=False), st.just(np.nan), st.just(0.5)),
                         min_size=n, max_size=n))
    return np.array(vals) * scale, ids, g, scale


def _estimator_tol(dtype, n: int, mag: float, eps_div: float) -> dict:
    """Float64 arithmetic inside for both dtypes; float32 results rounded once at the end."""
    return dict(rtol=4 * np.finfo(dtype).eps, atol=64 * np.finfo(np.float64).eps * max(n, 1) * (1 + mag / eps_div)
                + (4 * np.finfo(dtype).eps if dtype == np.float32 else 0.0))


@FUZZ
@given(case=grouped_rewards(), estimator=st.sampled_from(ROW_ESTIMATOR_NAMES),
       singleton=st.sampled_from(["zero", "raw", "error"]), scale_rewards=st.sampled_from(["group", "batch", "none"]),
       normalize=st.booleans(), alpha=st.sampled_from(["informative", "nonzero", 0.7]),
       dtype=st.sampled_from([np.float32, np.float64]), layout=st.sampled_from(["c", "strided", "readonly"]),
       data=st.data())
def test_fuzz_estimators(case, estimator, singleton, scale_rewards, normalize, alpha, dtype, layout, data):
    r64, ids, g, mag = case
    n = r64.shape[0]
    r = layouts(r64.astype(dtype), layout)
    r_ref = r64.astype(dtype).astype(np.float64)
    rows = ids if ids is not None else np.arange(n) // g
    grouping = {"group_ids": ids} if ids is not None else {"num_generations": g}
    opts: dict = {}
    eps_div = 1.0
    lengths = None
    if estimator == "grpo":
        opts = {"scale_rewards": scale_rewards, "singleton": singleton}
        eps_div = 1e-4
    elif estimator == "dr_grpo":
        opts = {"singleton": singleton}
    elif estimator == "rloo":
        opts = {"normalize_advantages": normalize, "singleton": singleton}
        eps_div = 1e-4 if normalize else 1.0
    elif estimator == "opo":
        lengths = np.array(data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), dtype=np.float64)
        opts = {"lengths": layouts(lengths, layout), "singleton": singleton}
    elif estimator == "gpg":
        opts = {"alpha": alpha, "singleton": singleton}
    else:
        opts = {"scale_rewards": "group" if scale_rewards == "batch" else scale_rewards, "singleton": singleton}
        eps_div = 1e-6
    try:
        got = grpo_swift.advantages(r, estimator, **grouping, **opts)
    except ValueError as exc:
        # singleton="error" refuses a group with one scorable row, naming it; pass@k has no "raw"
        # singleton; nothing else may fail.
        msg = str(exc)
        assert msg.startswith("advantages(): "), msg
        assert (singleton == "error" and "single scorable row" in msg) or (
            estimator == "passk" and singleton == "raw" and "singleton" in msg), msg
        return
    assert got.dtype == dtype and got.shape == (n,)
    assert np.all(np.isfinite(got))
    if singleton == "error":
        singleton = "zero"  # no singleton group occurred: every choice gives the same result
    s = singleton
    with np.errstate(all="ignore"), warnings.catch_warnings():  # the references' empty means (all-NaN)
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = _row_reference(estimator, r_ref, rows, s, scale_rewards, normalize, alpha, opts, lengths)
    np.testing.assert_allclose(got, ref, **_estimator_tol(dtype, n, mag, eps_div))


def _row_reference(estimator, r_ref, rows, s, scale_rewards, normalize, alpha, opts, lengths):
    if estimator == "grpo":
        ref = ref_grpo(r_ref, rows, scale_rewards, 1e-4, s)
    elif estimator == "dr_grpo":
        ref = ref_grpo(r_ref, rows, "none", 1e-4, s)
    elif estimator == "rloo":
        ref = ref_rloo(r_ref, rows, normalize, 1e-4, s)
    elif estimator == "opo":
        ref = ref_opo(r_ref, rows, lengths, s)
    elif estimator == "gpg":
        ref = ref_gpg(r_ref, rows, alpha, 1.0, s)
    else:
        ref = ref_passk(r_ref, rows, opts["scale_rewards"], 1e-6)
    return ref


@FUZZ
@given(n=st.integers(1, 12), t=st.integers(1, 7), token_level=st.booleans(), baseline=st.booleans(),
       gamma=st.sampled_from([0.0, 0.5, 1.0]), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(["c", "strided", "readonly"]), junk=special, seed=st.integers(0, 2**31),
       mask_kind=st.sampled_from(["bool", "int64", "float32"]))
def test_fuzz_token_estimators(n, t, token_level, baseline, gamma, dtype, layout, junk, seed, mask_kind):
    """REINFORCE++ (outcome or token rewards) and REINFORCE++-baseline against the references;
    NaN/inf/1e30 in masked token positions never reach the result."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n, t)) < 0.7
    mask[rng.random(n) < 0.2] = False  # whole rows masked out
    r = rng.normal(size=n)
    r[rng.random(n) < 0.15] = np.nan
    m = layouts(mask.astype(mask_kind), layout)
    if baseline:
        g = int(rng.integers(1, n + 1))
        ids = rng.integers(0, g, size=n)
        got = grpo_swift.reinforce_pp_baseline_advantages(layouts(r.astype(dtype), layout), m, group_ids=ids)
        ref = ref_reinforce_pp_baseline(r.astype(dtype).astype(np.float64), ids, mask)
    elif token_level:
        tok = rng.normal(size=(n, t))
        clean = grpo_swift.reinforce_pp_advantages(tok.astype(dtype), m, gamma=gamma)
        dirty_tok = np.where(mask, tok, junk).astype(dtype)
        got = grpo_swift.reinforce_pp_advantages(layouts(dirty_tok, layout), m, gamma=gamma)
        assert got.tobytes() == clean.tobytes()  # masked garbage is ignored, bit for bit
        ref = ref_reinforce_pp(tok.astype(dtype).astype(np.float64), mask, gamma)
    else:
        got = grpo_swift.reinforce_pp_advantages(layouts(r.astype(dtype), layout), m, gamma=gamma)
        ref = ref_reinforce_pp(r.astype(dtype).astype(np.float64), mask, gamma)
    assert got.shape == (n, t) and got.dtype == dtype and np.all(np.isfinite(got))
    assert np.all(got[~mask] == 0)
    np.testing.assert_allclose(got, ref, **_estimator_tol(dtype, n * t, 3.0 * t, 1e-4))


@FUZZ
@given(case=grouped_rewards(), tolerance=st.sampled_from([0.0, 1e-9, 0.3]), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(["c", "strided", "readonly"]))
def test_fuzz_zero_spread_groups_and_informative_rows(case, tolerance, dtype, layout):
    r64, ids, g, mag = case
    n = r64.shape[0]
    r = layouts(r64.astype(dtype), layout)
    rv = r64.astype(dtype).astype(np.float64)
    rows = ids if ids is not None else np.arange(n) // g
    grouping = {"group_ids": ids} if ids is not None else {"num_generations": g}
    tol = tolerance * mag
    got = grpo_swift.zero_spread_groups(r, tolerance=tol, **grouping)
    keep = grpo_swift.informative_rows(r, tolerance=tol, **grouping)
    expect = np.zeros(n, dtype=bool)
    for label in np.unique(rows):
        members = np.flatnonzero(rows == label)
        v = rv[members][~np.isnan(rv[members])]
        expect[members] = v.size < 2 or (v.max() - v.min()) <= tol
    assert got.dtype == np.bool_ and np.array_equal(got, expect)
    assert keep.dtype == np.int64 and np.array_equal(keep, np.flatnonzero(~expect))


ESTIMATOR_FUNCS = {
    "advantages": lambda r, g, kw: grpo_swift.advantages(r, **kw, num_generations=g),
    "dr_grpo_advantages": lambda r, g, kw: grpo_swift.dr_grpo_advantages(r, g, **kw),
    "rloo_advantages": lambda r, g, kw: grpo_swift.rloo_advantages(r, g, **kw),
    "opo_advantages": lambda r, g, kw: grpo_swift.opo_advantages(r, g, **kw),
    "gpg_advantages": lambda r, g, kw: grpo_swift.gpg_advantages(r, g, **kw),
    "passk_advantages": lambda r, g, kw: grpo_swift.passk_advantages(r, g, **kw),
    "reinforce_pp_advantages": lambda r, g, kw: grpo_swift.reinforce_pp_advantages(r, g, **kw),
    "reinforce_pp_baseline_advantages": lambda r, g, kw: grpo_swift.reinforce_pp_baseline_advantages(r, g, **kw),
    "zero_spread_groups": lambda r, g, kw: grpo_swift.zero_spread_groups(r, num_generations=g, **kw),
    "informative_rows": lambda r, g, kw: grpo_swift.informative_rows(r, group_ids=g, **kw),
}
bad_options = st.dictionaries(
    st.sampled_from(["estimator", "singleton", "scale_rewards", "epsilon", "normalize_advantages", "alpha", "f_norm",
                     "gamma", "lengths", "response_mask", "group_ids", "tolerance", "bogus"]),
    st.one_of(bad_values, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5), st.booleans()),
    max_size=3)


@FUZZ
@given(fn=st.sampled_from(sorted(ESTIMATOR_FUNCS)), rewards=bad_values,
       g=st.one_of(st.integers(-2, 5), st.none(), st.text(max_size=2), bad_values, st.floats(allow_nan=True)),
       options=bad_options)
def test_fuzz_estimators_bad_input_raises_cleanly(fn, rewards, g, options):
    try:
        ESTIMATOR_FUNCS[fn](rewards, g, options)
    except (TypeError, ValueError) as exc:
        assert f"{fn}()" in str(exc), f"{fn}: {exc!r}"


# ---- fused linear GRPO loss ---------------------------------------------------------------

def _fused_reference(h, w, b, ids, mask, adv, old, ref, temperature, opts):
    """Float64 logits -> log-probs (masked rows skipped), the loss and d loss / d lp from the
    float64 loss kernel (fuzzed against TRL's formulas above), chained by hand into the LM head."""
    n = ids.size
    H = h.shape[-1]
    x = h.reshape(n, H).astype(np.float64)
    scored = mask.reshape(-1).astype(bool)
    x = np.where(scored[:, None], x, 0.0)  # masked rows carry no gradient (their values are garbage)
    z = (x @ w.astype(np.float64).T + (0.0 if b is None else b.astype(np.float64))) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    tgt = np.where(scored, ids.reshape(-1), 0)
    lp = np.log(p[np.arange(n), tgt])
    lp = np.where(scored, lp, 0.0).reshape(mask.shape)
    res = grpo_swift.grpo_loss(lp, adv.astype(np.float64), mask, old_logps=None if old is None else old.astype(np.float64),
                               ref_logps=None if ref is None else ref.astype(np.float64), **opts)
    g = np.where(scored, res.grad.reshape(-1), 0.0)
    onehot = np.zeros_like(p)
    onehot[np.arange(n), tgt] = 1.0
    G = g[:, None] * (onehot - p) / temperature  # d loss / d logits
    return res.loss, (G @ w.astype(np.float64)).reshape(h.shape), G.T @ x, G.sum(axis=0), lp


@FUZZ
@given(b=st.integers(1, 4), t=st.integers(0, 6), h=st.integers(1, 12), v=st.integers(1, 40),
       loss_type=st.sampled_from(LOSS_TYPES), level=st.sampled_from(["token", "sequence"]),
       beta=st.sampled_from([0.0, 0.04]), bias=st.booleans(), temperature=st.sampled_from([0.7, 1.0]),
       scale=st.sampled_from([1e-3, 1.0, 8.0]), budget=st.sampled_from([0, 64]), junk=special,
       junk_hidden=st.booleans(), seed=st.integers(0, 2**31),
       layout=st.sampled_from(["c", "strided", "readonly"]))
def test_fuzz_fused_linear_grpo_loss(b, t, h, v, loss_type, level, beta, bias, temperature, scale, budget, junk,
                                     junk_hidden, seed, layout):
    """Equals a float64 reference (loss within 1e-4, gradients within 1e-3 of their scale);
    garbage (NaN/inf/1e30 and any token id) at masked positions -- in old/ref log-probs, and in the
    hidden states -- never reaches the loss or the gradients."""
    rng = np.random.default_rng(seed)
    hid = (rng.normal(size=(b, t, h)) * scale).astype(np.float32)
    wt = rng.normal(0, 0.5, size=(v, h)).astype(np.float32)
    bs = rng.normal(0, 0.5, size=v).astype(np.float32) if bias else None
    ids = rng.integers(0, v, size=(b, t))
    mask = rng.random((b, t)) < 0.75
    adv = rng.normal(size=b).astype(np.float32)
    # old/ref near the policy's log-probs, so that ratios and clipping are exercised
    _, _, _, _, lp0 = _fused_reference(hid, wt, bs, ids, np.ones((b, t), bool), adv, None, None, temperature,
                                       dict(loss_type="dapo"))
    old = (lp0 + rng.normal(0, 0.2, size=(b, t))).astype(np.float32)
    ref = (lp0 + rng.normal(0, 0.2, size=(b, t))).astype(np.float32) if beta else None
    opts = dict(loss_type=loss_type, importance_sampling_level=level, beta=beta, max_completion_length=max(t, 1))
    call = dict(temperature=temperature, scratch_budget=budget, **opts)
    clean = grpo_swift.fused_linear_grpo_loss(hid, wt, ids, mask, adv, bias=bs, old_logps=old, ref_logps=ref, **call)
    # the same with garbage at masked positions
    d_ids = np.where(mask, ids, rng.choice([-100, 0, v - 1], size=(b, t)))
    d_old = np.where(mask, old, junk).astype(np.float32)
    d_ref = None if ref is None else np.where(mask, ref, junk).astype(np.float32)
    d_hid = np.where(mask[..., None], hid, junk).astype(np.float32) if junk_hidden else hid
    dirty = grpo_swift.fused_linear_grpo_loss(layouts(d_hid, layout), layouts(wt, layout), d_ids, layouts(mask, layout),
                                              adv, bias=bs, old_logps=layouts(d_old, layout), ref_logps=d_ref, **call)
    if not junk_hidden:  # identical arithmetic: identical bits (== lets +0 equal -0)
        assert dirty.loss == clean.loss or (np.isnan(dirty.loss) and np.isnan(clean.loss))
        for a, c in ((dirty.grad_hidden, clean.grad_hidden), (dirty.grad_weight, clean.grad_weight),
                     (dirty.grad_bias, clean.grad_bias)):
            assert (a is None and c is None) or np.array_equal(a, c)
    loss, gh, gw, gb, lp64 = _fused_reference(hid, wt, bs, ids, mask, adv, old, ref, temperature, opts)
    for res in (clean, dirty):
        assert np.isfinite(res.loss) and np.all(np.isfinite(res.grad_weight)) and np.all(np.isfinite(res.grad_hidden))
        assert np.all(res.grad_hidden[~mask] == 0)
        # The log-probs at float32 accuracy (as test_fuzz_fused_log_probs), and the loss maths on them:
        # the float64 loss kernel at our float32 log-probs within 1e-4.
        np.testing.assert_allclose(res.log_probs[mask], lp64[mask], rtol=1e-4, atol=1e-4)
        at_ours = grpo_swift.grpo_loss(res.log_probs.astype(np.float64), adv.astype(np.float64), mask,
                                       old_logps=old.astype(np.float64),
                                       ref_logps=None if ref is None else ref.astype(np.float64), **opts).loss
        np.testing.assert_allclose(res.loss, at_ours, rtol=1e-4, atol=1e-5)
        # Against the float64 reference: 1e-4, plus what the float32 rounding of the log-probs alone
        # propagates into the float64 loss, |L64(lp32) - L64(lp64)|. Found by this fuzzer: with |lp| ~ 35
        # (scale 8, temperature 0.7) vespo's lp-weighted value, whose phi depends on exp of the
        # log-ratio, turns one ulp of lp (3.8e-6) into ~1e-4 of the loss; the composed float32 path
        # fused_log_probs -> grpo_loss gives the same loss bits as the fused kernel there.
        assert abs(res.loss - loss) <= 1e-5 + 1e-4 * abs(loss) + abs(at_ours - loss), (res.loss, loss, at_ours)
        for got, want in ((res.grad_hidden, gh), (res.grad_weight, gw)) + (((res.grad_bias, gb),) if bias else ()):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * (1 + np.abs(want).max(initial=0)))


@FUZZ
@given(hidden=bad_values, weight=bad_values, ids=bad_values, mask=bad_values, adv=bad_values,
       options=st.dictionaries(st.sampled_from(["loss_type", "beta", "temperature", "scratch_budget", "tile_rows",
                                                "bias", "old_logps", "final_logit_softcapping", "bogus"]),
                               st.one_of(bad_values, st.floats(allow_nan=True, allow_infinity=True),
                                         st.text(max_size=4)), max_size=2))
def test_fuzz_fused_linear_grpo_loss_bad_input_raises_cleanly(hidden, weight, ids, mask, adv, options):
    try:
        grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, **options)
    except (TypeError, ValueError) as exc:
        assert "fused_linear_grpo_loss()" in str(exc), repr(exc)
