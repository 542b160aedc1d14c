"""Advantage estimators: against independent float64 references written here from the
published formulas, hand-worked examples, and the edge cases (singletons, NaN, permutations)."""
from __future__ import annotations

import numpy as np
import pytest

import grpo_swift as gs

# ----------------------------------------------------------------------------- references


def _groups(ids):
    out: dict = {}
    for i, g in enumerate(ids):
        out.setdefault(g, []).append(i)
    return list(out.values())


def _ids(n, g):
    return np.arange(n) // g


def ref_grpo(r, ids, scale="group", eps=1e-4, singleton="zero"):
    a = np.zeros(len(r))
    ok = ~np.isnan(r)
    batch_sd = np.std(r[ok], ddof=1) if ok.sum() >= 2 else np.nan
    for rows in _groups(ids):
        v = [i for i in rows if ok[i]]
        if not v:
            continue
        x = r[v]
        if len(v) == 1:
            if singleton == "zero":
                continue
            mu, sd = 0.0, 1.0
        else:
            mu, sd = x.mean(), np.std(x, ddof=1)
        if scale == "batch":
            sd = batch_sd
        a[v] = x - mu if scale == "none" else (x - mu) / (sd + eps)
    return np.nan_to_num(a)


def ref_rloo(r, ids, normalize=False, eps=1e-4, singleton="zero"):
    a = np.full(len(r), np.nan)
    ok = ~np.isnan(r)
    for rows in _groups(ids):
        v = [i for i in rows if ok[i]]
        if len(v) == 1:
            if singleton == "raw":
                a[v[0]] = r[v[0]]
            continue
        for i in v:  # the literal leave-one-out mean
            a[i] = r[i] - np.mean([r[j] for j in v if j != i])
    if normalize:
        m = ~np.isnan(a)
        sd = np.std(a[m], ddof=1) if m.sum() >= 2 else np.nan
        a = (a - a[m].mean()) / (sd + eps)
    return np.nan_to_num(a)


def ref_opo(r, ids, lengths, singleton="raw"):
    a = np.zeros(len(r))
    ok = ~np.isnan(r)
    for rows in _groups(ids):
        v = [i for i in rows if ok[i]]
        if not v:
            continue
        if len(v) == 1:
            if singleton == "raw":
                a[v] = r[v]
            continue
        L = lengths[v]
        if L.sum() == 0:
            continue
        a[v] = r[v] - (L * r[v]).sum() / L.sum()
    return a


def ref_gpg(r, ids, alpha="informative", f_norm=1.0, singleton="raw"):
    n = len(r)
    ok = ~np.isnan(r)
    a = np.zeros(n)
    m_inf = 0
    for rows in _groups(ids):
        v = [i for i in rows if ok[i]]
        if not v:
            continue
        if len(v) >= 2 and r[v].max() > r[v].min():
            m_inf += len(v)
        if len(v) == 1:
            if singleton == "raw":
                a[v] = r[v] / f_norm
            continue
        a[v] = (r[v] - r[v].mean()) / f_norm
    if alpha == "informative":
        al = n / max(m_inf, 1)
    elif alpha == "nonzero":
        al = n / max(int(np.count_nonzero(r[ok])), 1)
    else:
        al = alpha
    return al * a


def ref_passk(r, ids, scale="group", eps=1e-6):
    a = np.zeros(len(r))
    ok = ~np.isnan(r)
    for rows in _groups(ids):
        v = [i for i in rows if ok[i]]
        if len(v) < 2:
            continue
        x = r[v]
        order = sorted(range(len(v)), key=lambda j: (-x[j], j))  # first maximum wins
        best, second = order[0], order[1]
        adv = x[best] - x[second]
        if scale == "group":
            adv /= np.std(x, ddof=1) + eps
        a[v[best]] = adv
    return a


def _whiten(values, keep, eps):
    out = np.zeros_like(values)
    x = values[keep]
    if x.size < 2:
        return out
    out[keep] = (x - x.mean()) / np.sqrt(np.var(x, ddof=1) + eps)
    return out


def ref_reinforce_pp(rewards, mask, gamma=1.0, eps=1e-8, masked="carry", returns=False):
    n, t = mask.shape
    tok = np.zeros((n, t))
    scorable = np.ones(n, bool)
    if rewards.ndim == 1:
        for i in range(n):
            kept = np.flatnonzero(mask[i])
            if kept.size:
                tok[i, kept[-1]] = rewards[i]
            scorable[i] = not np.isnan(rewards[i])
    else:
        for i in range(n):
            scorable[i] = not np.isnan(rewards[i][mask[i] != 0]).any()
            tok[i] = np.where(mask[i] != 0, rewards[i], 0.0)
    ret = np.zeros((n, t))
    for i in range(n):  # G_t = r_t + gamma G_{t+1} over kept tokens; a masked-out position
        g = 0.0         # passes G through ("carry") or restarts it ("reset")
        for j in reversed(range(t)):
            if not mask[i, j]:
                if masked == "reset":
                    g = 0.0
                continue
            g = tok[i, j] + gamma * g
            ret[i, j] = g
    keep = (mask != 0) & scorable[:, None]
    if returns:
        return np.where(keep, ret, 0.0)
    return _whiten(ret, keep, eps)


def ref_reinforce_pp_baseline(r, ids, mask, eps=1e-8, singleton="raw"):
    n, t = mask.shape
    a0 = np.full(n, np.nan)
    ok = ~np.isnan(r)
    for rows in _groups(ids):
        v = [i for i in rows if ok[i]]
        if not v:
            continue
        if len(v) == 1:
            if singleton == "raw":
                a0[v] = r[v]
            continue
        a0[v] = r[v] - r[v].mean()
    vals = np.repeat(np.nan_to_num(a0)[:, None], t, axis=1)
    keep = (mask != 0) & ~np.isnan(a0)[:, None]
    return _whiten(vals, keep, eps)


def _rewards(rng, n, nan_frac=0.1, binary=False):
    r = rng.integers(0, 2, n).astype(float) if binary else rng.normal(size=n)
    r[rng.random(n) < nan_frac] = np.nan
    return r


def _ragged_ids(rng, n):
    """Variable group sizes 1..6, ids shuffled and non-contiguous, arbitrary int64 values."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 7)))
    sizes[-1] -= sum(sizes) - n
    labels = rng.permutation(len(sizes)).astype(np.int64) * 7_919_000_003 - 10**12  # sparse, negative too
    ids = np.repeat(labels, [s for s in sizes])
    return ids[rng.permutation(n)]


def _mask(rng, n, t):
    lens = rng.integers(0, t + 1, n)
    return (np.arange(t)[None, :] < lens[:, None])


TOL = dict(rtol=1e-10, atol=1e-12)

# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("singleton", ["zero", "raw"])
def test_grpo_matches_reference_on_ragged_groups(rng, scale, singleton):
    r = _rewards(rng, 300)
    ids = _ragged_ids(rng, 300)
    got = gs.advantages(r, "grpo", group_ids=ids, scale_rewards=scale, singleton=singleton)
    np.testing.assert_allclose(got, ref_grpo(r, ids, scale, 1e-4, singleton), **TOL)


def test_dr_grpo_is_grpo_without_std(rng):
    r = _rewards(rng, 120)
    ids = _ragged_ids(rng, 120)
    got = gs.dr_grpo_advantages(r, group_ids=ids)
    np.testing.assert_allclose(got, ref_grpo(r, ids, "none"), **TOL)
    np.testing.assert_array_equal(got, gs.advantages(r, "grpo", group_ids=ids, scale_rewards="none"))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("singleton", ["zero", "raw"])
def test_rloo_matches_leave_one_out_reference(rng, normalize, singleton):
    r = _rewards(rng, 240)
    ids = _ragged_ids(rng, 240)
    got = gs.rloo_advantages(r, group_ids=ids, normalize_advantages=normalize, singleton=singleton)
    np.testing.assert_allclose(got, ref_rloo(r, ids, normalize, 1e-4, singleton), **TOL)


@pytest.mark.parametrize("singleton", ["zero", "raw"])
def test_opo_matches_reference(rng, singleton):
    r = _rewards(rng, 200)
    ids = _ragged_ids(rng, 200)
    mask = _mask(rng, 200, 9)
    lengths = mask.sum(1).astype(float)
    got = gs.opo_advantages(r, group_ids=ids, response_mask=mask, singleton=singleton)
    np.testing.assert_allclose(got, ref_opo(r, ids, lengths, singleton), **TOL)
    np.testing.assert_array_equal(got, gs.opo_advantages(r, group_ids=ids, lengths=lengths, singleton=singleton))


@pytest.mark.parametrize("alpha", ["informative", "nonzero", 0.7])
def test_gpg_matches_reference(rng, alpha):
    r = _rewards(rng, 240, binary=True)
    ids = _ragged_ids(rng, 240)
    got = gs.gpg_advantages(r, group_ids=ids, alpha=alpha, f_norm=1.5)
    np.testing.assert_allclose(got, ref_gpg(r, ids, alpha, 1.5), **TOL)


@pytest.mark.parametrize("scale", ["group", "none"])
def test_passk_matches_reference(rng, scale):
    r = np.round(_rewards(rng, 240), 1)  # ties happen
    ids = np.repeat(np.arange(40), 6)[rng.permutation(240)]
    got = gs.passk_advantages(r, group_ids=ids, scale_rewards=scale, singleton="zero")
    np.testing.assert_allclose(got, ref_passk(r, ids, scale), **TOL)


@pytest.mark.parametrize("masked", ["carry", "reset"])
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("token_level", [False, True])
def test_reinforce_pp_matches_reference(rng, gamma, token_level, masked):
    n, t = 40, 13
    mask = _mask(rng, n, t)
    mask[3, 2] = False  # a hole inside a response: the return is carried through it or restarts
    mask[7, 1:4] = [True, False, True]  # another, with kept tokens on both sides
    if token_level:
        r = rng.normal(size=(n, t))
        r[5, 1] = np.nan if mask[5, 1] else r[5, 1]
        r[~mask] = np.where(rng.random((~mask).sum()) < 0.5, np.nan, 100.0)  # ignored positions
    else:
        r = _rewards(rng, n)
    got = gs.reinforce_pp_advantages(r, mask, gamma=gamma, masked_tokens=masked)
    np.testing.assert_allclose(got, ref_reinforce_pp(r, mask, gamma, masked=masked), rtol=1e-9, atol=1e-10)
    assert np.all(got[~mask] == 0)
    both = gs.reinforce_pp_advantages(r, mask, gamma=gamma, masked_tokens=masked, return_returns=True)
    assert isinstance(both, gs.AdvantagesAndReturns)
    np.testing.assert_array_equal(both.advantages, got)
    np.testing.assert_allclose(both.returns, ref_reinforce_pp(r, mask, gamma, masked=masked, returns=True),
                               rtol=1e-12, atol=1e-12)
    if masked == "carry":
        np.testing.assert_array_equal(got, gs.reinforce_pp_advantages(r, mask, gamma=gamma))  # the default
        a, ret = gs.advantages(r, "reinforce_pp", gamma=gamma, response_mask=mask, return_returns=True)
        np.testing.assert_array_equal(a, got)
        np.testing.assert_array_equal(ret, both.returns)


def test_reinforce_pp_carry_and_reset_hand_worked():
    # One row, tokens [a, obs, obs, a, a], outcome reward 1 on the last kept token, gamma 0.5.
    mask = np.array([[1, 0, 0, 1, 1]], bool)
    carry = gs.reinforce_pp_advantages([1.0], mask, gamma=0.5, return_returns=True).returns
    reset = gs.reinforce_pp_advantages([1.0], mask, gamma=0.5, masked_tokens="reset", return_returns=True).returns
    np.testing.assert_array_equal(carry, [[0.25, 0, 0, 0.5, 1]])  # the observations take no discount
    np.testing.assert_array_equal(reset, [[0.0, 0, 0, 0.5, 1]])
    # float32 returns are the float64 returns rounded once
    r32 = gs.reinforce_pp_advantages(np.array([1 / 3], np.float32), mask, gamma=0.9, return_returns=True)
    assert r32.returns.dtype == np.float32 and r32.advantages.dtype == np.float32
    r64 = gs.reinforce_pp_advantages(np.array([np.float32(1 / 3)], np.float64), mask, gamma=0.9, return_returns=True)
    np.testing.assert_array_equal(r32.returns, r64.returns.astype(np.float32))


@pytest.mark.parametrize("singleton", ["zero", "raw"])
def test_reinforce_pp_baseline_matches_reference(rng, singleton):
    n, t = 90, 7
    r = _rewards(rng, n)
    ids = _ragged_ids(rng, n)
    mask = _mask(rng, n, t)
    got = gs.reinforce_pp_baseline_advantages(r, mask, group_ids=ids, singleton=singleton)
    np.testing.assert_allclose(got, ref_reinforce_pp_baseline(r, ids, mask, 1e-8, singleton),
                               rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- hand-worked


def test_hand_worked_examples():
    # RLOO: baselines (11/3, 10/3, 3, 2) for rewards (1, 2, 3, 6).
    np.testing.assert_allclose(gs.rloo_advantages([1.0, 2, 3, 6], 4), [-8 / 3, -4 / 3, 0, 4], rtol=1e-15)
    # OPO: b = (3*1 + 1*0) / 4.
    np.testing.assert_allclose(gs.opo_advantages([1.0, 0.0], 2, lengths=[3, 1]), [0.25, -0.75], rtol=1e-15)
    # GPG: groups (1, 0) and (1, 1); the paper's alpha = 4 rows / 2 informative = 2,
    # verl's alpha = 4 rows / 3 non-zero rewards.
    np.testing.assert_allclose(gs.gpg_advantages([1.0, 0, 1, 1], 2), [1, -1, 0, 0], rtol=1e-15)
    np.testing.assert_allclose(gs.gpg_advantages([1.0, 0, 1, 1], 2, alpha="nonzero"), [2 / 3, -2 / 3, 0, 0],
                               rtol=1e-15)
    # pass@k: only the best row, by the margin over the runner-up.
    np.testing.assert_allclose(gs.passk_advantages([0.2, 0.9, 0.5], 3, scale_rewards="none"), [0, 0.4, 0],
                               rtol=1e-14)
    np.testing.assert_array_equal(gs.passk_advantages([0.9, 0.2, 0.9], 3), [0, 0, 0])  # tied best
    # REINFORCE++, gamma 0.5: returns (0.5, 1) and (0, 0); mean 0.375, var 0.6875 / 3.
    got = gs.reinforce_pp_advantages([1.0, 0.0], np.ones((2, 2), bool), gamma=0.5)
    x = np.array([[0.5, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(got, (x - 0.375) / np.sqrt(0.6875 / 3 + 1e-8), rtol=1e-14)
    # GRPO singleton: 0 (TRL) or r / (1 + eps) (verl).
    assert gs.advantages([3.0], group_ids=[7])[0] == 0
    assert gs.advantages([3.0], group_ids=[7], singleton="raw")[0] == 3.0 / (1 + 1e-4)


# ----------------------------------------------------------------------------- edge cases

ROW_ESTIMATORS = [
    ("grpo", {}), ("dr_grpo", {}), ("rloo", {}), ("rloo", {"normalize_advantages": True}),
    ("opo", {"lengths": None}), ("gpg", {}), ("passk", {"singleton": "zero"}),
]


def _opts(name, opts, n, rng_len=None):
    o = dict(opts)
    if "lengths" in o:
        o["lengths"] = np.arange(n) % 5 + 1.0
    return o


@pytest.mark.parametrize("name,opts", ROW_ESTIMATORS)
def test_permuting_rows_permutes_advantages(rng, name, opts):
    n = 180
    r = _rewards(rng, n)
    ids = _ragged_ids(rng, n)
    o = _opts(name, opts, n)
    base = gs.advantages(r, name, group_ids=ids, **o)
    p = rng.permutation(n)
    if "lengths" in o:
        o["lengths"] = o["lengths"][p]
    permuted = gs.advantages(r[p], name, group_ids=ids[p], **o)
    np.testing.assert_allclose(permuted, base[p], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,opts", ROW_ESTIMATORS)
def test_relabelled_ids_give_identical_bits(rng, name, opts):
    n = 150
    r = _rewards(rng, n)
    ids = _ragged_ids(rng, n)
    o = _opts(name, opts, n)
    a = gs.advantages(r, name, group_ids=ids, **o)
    b = gs.advantages(r, name, group_ids=-3 * ids + 11, **o)
    c = gs.advantages(r, name, group_ids=[f"uid-{i}" for i in ids], **o)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("name,opts", ROW_ESTIMATORS)
def test_num_generations_equals_consecutive_ids(rng, name, opts):
    r = _rewards(rng, 96)
    o = _opts(name, opts, 96)
    np.testing.assert_array_equal(gs.advantages(r, name, num_generations=8, **o),
                                  gs.advantages(r, name, group_ids=_ids(96, 8), **o))


@pytest.mark.parametrize("name,opts", ROW_ESTIMATORS)
@pytest.mark.parametrize("value", [0.7, 0.1, 1e-300, 3.3e7])
def test_all_equal_groups_give_exact_zero(name, opts, value):
    r = np.full(12, value)
    o = _opts(name, opts, 12)
    assert np.all(gs.advantages(r, name, num_generations=4, **o) == 0)


@pytest.mark.parametrize("name,opts", ROW_ESTIMATORS)
def test_nan_rows_and_all_nan_groups(rng, name, opts):
    r = rng.normal(size=12)
    r[[1, 4, 5, 6, 7]] = np.nan  # group 1 (rows 4..7) all NaN
    o = _opts(name, opts, 12)
    a = gs.advantages(r, name, num_generations=4, **o)
    assert np.all(a[[1, 4, 5, 6, 7]] == 0)
    assert np.all(np.isfinite(a))
    # The NaN row is excluded, not counted as 0: same result as dropping it from its group.
    keep = [0, 2, 3, 8, 9, 10, 11]
    o2 = dict(o)
    if "lengths" in o2:
        o2["lengths"] = o["lengths"][keep]
    if name == "gpg":
        return  # alpha = N / M counts every row, NaN ones included: dropping rows changes N
    dropped = gs.advantages(r[keep], name, group_ids=_ids(12, 4)[keep], **o2)
    np.testing.assert_allclose(a[keep], dropped, rtol=1e-13, atol=1e-15)


def test_token_estimators_edge_cases(rng):
    mask = np.ones((4, 3), bool)
    # Identical rewards: REINFORCE++-baseline centres them to exactly 0 everywhere.
    assert np.all(gs.reinforce_pp_baseline_advantages(np.full(4, 0.7), mask, 2) == 0)
    # Fewer than 2 kept tokens: 0 everywhere, never NaN.
    one = np.zeros((4, 3), bool)
    one[2, 0] = True
    assert np.all(gs.reinforce_pp_advantages(rng.normal(size=4), one) == 0)
    assert np.all(gs.reinforce_pp_advantages(np.full(4, np.nan), mask) == 0)
    # NaN outcome: the row gets 0 and is excluded from the whitening.
    r = np.array([1.0, np.nan, 0.0, 2.0])
    got = gs.reinforce_pp_advantages(r, mask)
    assert np.all(got[1] == 0)
    np.testing.assert_allclose(got[[0, 2, 3]], gs.reinforce_pp_advantages(r[[0, 2, 3]], mask[:3]), rtol=1e-14)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grpo_equals_group_advantages_for_contiguous_groups(rng, scale, dtype):
    r = _rewards(rng, 64 * 8).astype(dtype)
    r[8:16] = np.nan
    r[16:24] = dtype(0.3)
    expected = gs.group_advantages(r, 8, scale_rewards=scale).advantages
    got = gs.advantages(r, "grpo", num_generations=8, scale_rewards=scale)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name,opts", ROW_ESTIMATORS)
def test_float32_close_to_float64(rng, name, opts):
    r = _rewards(rng, 128)
    o = _opts(name, opts, 128)
    a64 = gs.advantages(r, name, num_generations=8, **o)
    o32 = dict(o)
    if "lengths" in o32:
        o32["lengths"] = o["lengths"].astype(np.float32)
    a32 = gs.advantages(r.astype(np.float32), name, num_generations=8, **o32)
    assert a32.dtype == np.float32
    np.testing.assert_allclose(a32, a64, rtol=2e-6, atol=2e-6)


def test_results_do_not_depend_on_thread_count(rng):
    n, t = 40_000, 33
    r = _rewards(rng, n)
    ids = _ragged_ids(rng, n)
    mask = _mask(rng, n, t)
    before = gs.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            gs.set_num_threads(threads)
            outs.append([gs.advantages(r, "grpo", group_ids=ids, scale_rewards="batch"),
                         gs.rloo_advantages(r, group_ids=ids, normalize_advantages=True),
                         gs.reinforce_pp_advantages(r, mask, gamma=0.97),
                         gs.reinforce_pp_baseline_advantages(r, mask, group_ids=ids)])
        for other in outs[1:]:
            for x, y in zip(outs[0], other):
                np.testing.assert_array_equal(x, y)
    finally:
        gs.set_num_threads(before)


def test_inputs_are_not_mutated(rng):
    r = _rewards(rng, 32)
    ids = _ragged_ids(rng, 32)
    mask = _mask(rng, 32, 5)
    copies = (r.copy(), ids.copy(), mask.copy())
    for name in ("grpo", "rloo", "gpg", "dr_grpo"):
        gs.advantages(r, name, group_ids=ids)
    gs.opo_advantages(r, group_ids=ids, response_mask=mask)
    gs.reinforce_pp_advantages(r, mask)
    gs.reinforce_pp_baseline_advantages(r, mask, group_ids=ids)
    gs.zero_spread_groups(r, group_ids=ids)
    for a, b in zip(copies, (r, ids, mask)):
        np.testing.assert_array_equal(a, b)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    r = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    np.testing.assert_array_equal(gs.rloo_advantages(r, 2), gs.rloo_advantages(r.numpy(), 2))
    ids = torch.tensor([3, 3, 9, 9])
    np.testing.assert_array_equal(gs.rloo_advantages(r, group_ids=ids), gs.rloo_advantages(r.numpy(), 2))


@pytest.mark.parametrize("name,opts", ROW_ESTIMATORS)
def test_unsorted_contiguous_runs_equal_sorted_ids(rng, name, opts):
    # verl's layout: each uid's rows adjacent, uids in random order (the run fast path), versus
    # the same partition given by ascending ids, versus a partition whose runs repeat an id
    # (two runs of id 5: one group of 8 rows, handled by the sort path).
    r = _rewards(rng, 64)
    o = _opts(name, opts, 64)
    runs = np.repeat(rng.permutation(16) * 1000 - 7000, 4)
    np.testing.assert_array_equal(gs.advantages(r, name, group_ids=runs, **o),
                                  gs.advantages(r, name, num_generations=4, **o))
    split = np.repeat(np.arange(16), 4)
    split[[0, 1, 2, 3, 60, 61, 62, 63]] = 5
    split[20:24] = 99
    np.testing.assert_allclose(gs.advantages(r, name, group_ids=split, **o),
                               ref_for(name, o, r, split), rtol=1e-10, atol=1e-12)


def ref_for(name, o, r, ids):
    if name == "grpo":
        return ref_grpo(r, ids)
    if name == "dr_grpo":
        return ref_grpo(r, ids, "none")
    if name == "rloo":
        return ref_rloo(r, ids, o.get("normalize_advantages", False))
    if name == "opo":
        return ref_opo(r, ids, o["lengths"])
    if name == "gpg":
        return ref_gpg(r, ids)
    return ref_passk(r, ids)
