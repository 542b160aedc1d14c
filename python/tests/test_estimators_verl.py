"""The estimators against verl 0.9.1's own code (verl.trainer.ppo.core_algos, run on CPU), and the
verl semantics on hand-worked examples (those run without verl too).

Where verl's semantics differ from grpo_swift's defaults, and the option that reproduces verl:

- Singleton groups (one row): verl's GRPO, GPG, OPO, RLOO and REINFORCE++-baseline use baseline 0
  and std 1 (singleton="raw"); grpo_swift's defaults for grpo / dr_grpo / rloo follow TRL
  ("zero"). verl's compute_rloo_vectorized_outcome_advantage gives singletons 0 instead
  (singleton="zero"): verl's two RLOO implementations disagree. pass@k raises in verl and here
  (singleton="error").
- GRPO: verl's epsilon is 1e-6 (TRL's 1e-4): pass epsilon=1e-6; norm_adv_by_std_in_grpo=False
  is dr_grpo (scale_rewards="none"). verl's singleton std is a float32 torch.tensor(1.0), so its
  1 + 1e-6 is rounded to float32 even for float64 rewards (~5e-8 relative, checked exactly below). compute_grpo_vectorized_outcome_advantage takes its
  statistics in float32 even for float64 rewards (compared at float32 accuracy).
- GPG: verl's alpha = N / (rows with a non-zero reward) -- alpha="nonzero" (the default,
  "informative", is the GPG paper's N / rows of groups with reward spread); verl forms alpha in
  float32 even for float64 rewards (int / tensor = reciprocal times N: up to ~1.2e-7 relative),
  which alpha=<that float> reproduces exactly (checked below).
- REINFORCE++: masked-out positions inside a row carry the return (masked_tokens="carry", the
  default; verl before verl-project/verl#7300 reset it: masked_tokens="reset"). verl returns
  (advantages, returns): return_returns=True. verl's whitening divides by mask.sum() + 1e-8, which
  shifts its mean by mean 1e-8 / n (whitened: ~1e-11 absolute here; compared at 1e-9), and raises
  when fewer than 2 tokens are kept; grpo_swift returns 0.
- NaN rewards (unscorable rows) are a grpo_swift extension: verl has none (a NaN poisons its group).
- All-equal groups: grpo_swift's group mean is clamped to the group's [min, max], so the
  advantages are exactly 0; verl's torch.mean can be 1 ulp off, which its (std + 1e-6)
  denominator amplifies ~1e6-fold.
- OPO with every length of a group 0: verl divides 0 by 0 (NaN); grpo_swift gives 0.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import grpo_swift as gs

torch = pytest.importorskip("torch")

from _verl import verl_core_algos  # noqa: E402


@pytest.fixture(scope="module")
def core():
    return verl_core_algos()


# ------------------------------------------------------------------------------------- data

def _batch(seed: int, n: int = 96, t: int = 11, binary: bool = False):
    """Rewards, shuffled string uids with group sizes 1..6 (singletons and all-equal groups
    included), and a response mask with variable lengths (a few empty rows)."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 7)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] == 0:
        sizes.pop()
    labels = np.repeat(np.arange(len(sizes)), sizes)
    r = rng.integers(0, 2, n).astype(float) if binary else np.round(rng.normal(size=n), 3)
    first = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    for g in range(0, len(sizes), 5):  # every fifth group: all rewards equal (exactly representable)
        r[labels == g] = [0.5, 1.0, -2.0, 0.0][g % 4]
    perm = rng.permutation(n)  # groups scattered through the batch, ids are strings (verl's uids)
    uids = np.array([f"uid-{7919 * lab % 1009}" for lab in labels], dtype=object)[perm]
    r = r[perm]
    lens = rng.integers(0, t + 1, n)
    lens[first[:2]] = 0
    mask = np.arange(t)[None, :] < lens[:, None]
    return r, uids, mask


def _token_rewards(r: np.ndarray, mask: np.ndarray, dtype) -> torch.Tensor:
    """verl's token_level_rewards: the outcome on the last kept token (the first column when the
    row keeps none; the sum over tokens, which is all that verl's outcome estimators read, is r)."""
    tok = np.zeros(mask.shape)
    last = np.where(mask.any(1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), 0)
    tok[np.arange(len(r)), last] = r
    return torch.tensor(tok, dtype=dtype)


def _per_token(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return a[:, None] * mask


TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}
# verl's masked_whiten divides sums by mask.sum() + 1e-8: whitened values move by ~1e-11
WHITENED = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: TOL[torch.float32]}
NP = {torch.float64: np.float64, torch.float32: np.float32}
DTYPES = [torch.float64, torch.float32]


def _verl_gpg_alpha(r: np.ndarray) -> float:
    """verl's alpha: `bsz / m.clamp(min=1)` with m a 0-d int64 tensor -- Python's int / tensor is
    m.reciprocal() * bsz in float32 (two float32 roundings, up to ~1.2e-7 relative)."""
    return float(len(r) / torch.count_nonzero(torch.from_numpy(r)).clamp(min=1))


def _cfg(**kw):
    return types.SimpleNamespace(**kw)


# ------------------------------------------------------------------------- verl parity tests

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("norm", [True, False])
def test_grpo(core, dtype, binary, norm):
    r, uids, mask = _batch(1 + binary, binary=binary)
    r = r.astype(NP[dtype])
    m = torch.tensor(mask, dtype=dtype)
    adv, ret = core.compute_grpo_outcome_advantage(_token_rewards(r, mask, dtype), m, uids, epsilon=1e-6,
                                                   norm_adv_by_std_in_grpo=norm)
    ours = gs.advantages(r, "grpo" if norm else "dr_grpo", group_ids=uids, singleton="raw",
                         **({"epsilon": 1e-6} if norm else {}))
    if norm and dtype == torch.float64:
        # verl's singleton std is torch.tensor(1.0), float32: its 1 + 1e-6 is rounded to float32
        np.testing.assert_allclose(_per_token(ours, mask), adv.numpy(), rtol=1e-7, atol=1e-12)
        single = np.array([(uids == u).sum() == 1 for u in uids])
        f32 = float(np.float32(1.0) + np.float32(1e-6))
        ours = np.where(single, ours * (1 + 1e-6) / f32, ours)
    np.testing.assert_allclose(_per_token(ours, mask), adv.numpy(), **TOL[dtype])
    assert torch.equal(adv, ret)


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_vectorized(core, norm):
    # verl's vectorised GRPO takes its group statistics in float32 even for float64 rewards.
    r, uids, mask = _batch(3)
    m = torch.tensor(mask, dtype=torch.float64)
    adv, _ = core.compute_grpo_vectorized_outcome_advantage(_token_rewards(r, mask, torch.float64), m, uids,
                                                            epsilon=1e-6, norm_adv_by_std_in_grpo=norm)
    ours = gs.advantages(r, "grpo" if norm else "dr_grpo", group_ids=uids, singleton="raw",
                         **({"epsilon": 1e-6} if norm else {}))
    np.testing.assert_allclose(_per_token(ours, mask), adv.numpy(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_rloo(core, dtype, binary):
    r, uids, mask = _batch(4 + binary, binary=binary)
    r = r.astype(NP[dtype])
    m = torch.tensor(mask, dtype=dtype)
    tok = _token_rewards(r, mask, dtype)
    adv, _ = core.compute_rloo_outcome_advantage(tok, m, uids)
    np.testing.assert_allclose(_per_token(gs.rloo_advantages(r, group_ids=uids, singleton="raw"), mask),
                               adv.numpy(), **TOL[dtype])
    # verl's vectorised RLOO gives singleton groups 0 (its loop version gives them r)
    vec, _ = core.compute_rloo_vectorized_outcome_advantage(tok, m, uids)
    np.testing.assert_allclose(_per_token(gs.rloo_advantages(r, group_ids=uids, singleton="zero"), mask),
                               vec.numpy(), **TOL[dtype])
    singles = [i for i, u in enumerate(uids) if (uids == u).sum() == 1 and mask[i].any() and r[i] != 0]
    assert singles and not torch.allclose(adv[singles], vec[singles])  # the two verl versions disagree


@pytest.mark.parametrize("dtype", DTYPES)
def test_opo(core, dtype):
    r, uids, mask = _batch(6)
    r = r.astype(NP[dtype])
    for u in set(uids):  # verl divides 0 by 0 when a group's lengths all are 0: keep one kept token
        rows = np.flatnonzero(uids == u)
        if not mask[rows].any():
            mask[rows[0], 0] = True
    m = torch.tensor(mask, dtype=dtype)
    adv, _ = core.compute_opo_outcome_advantage(_token_rewards(r, mask, dtype), m, uids)
    ours = gs.opo_advantages(r, group_ids=uids, response_mask=mask)
    np.testing.assert_allclose(_per_token(ours, mask), adv.numpy(), **TOL[dtype])
    np.testing.assert_array_equal(ours, gs.opo_advantages(r, group_ids=uids, lengths=mask.sum(1).astype(float)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("f_norm", [1.0, 2.5])
def test_gpg(core, dtype, f_norm):
    r, uids, mask = _batch(7, binary=True)
    r = r.astype(NP[dtype])
    m = torch.tensor(mask, dtype=dtype)
    adv, _ = core.compute_gpg_outcome_advantage(_token_rewards(r, mask, dtype), m, uids, f_norm=f_norm)
    ours = gs.gpg_advantages(r, group_ids=uids, alpha="nonzero", f_norm=f_norm)
    np.testing.assert_allclose(_per_token(ours, mask), adv.numpy(), **(TOL[dtype] if dtype == torch.float32 else
                                                                       dict(rtol=1e-7, atol=1e-12)))
    if dtype == torch.float64:  # the whole difference is verl's float32 alpha = N / M
        n, nonzero = len(r), int(np.count_nonzero(r))
        alpha64 = n / nonzero
        alpha32 = _verl_gpg_alpha(r)
        fixed = gs.gpg_advantages(r, group_ids=uids, alpha=alpha32, f_norm=f_norm)
        np.testing.assert_allclose(_per_token(fixed, mask), adv.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours * (alpha32 / alpha64), fixed, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [True, False])
def test_passk(core, dtype, norm):
    r, uids, mask = _batch(8)
    keep = np.array([(uids == u).sum() >= 2 for u in uids])  # verl refuses singleton groups
    r, uids, mask = r[keep].astype(NP[dtype]), uids[keep], mask[keep]
    m = torch.tensor(mask, dtype=dtype)
    adv, _ = core.compute_grpo_passk_outcome_advantage(_token_rewards(r, mask, dtype), m, uids, epsilon=1e-6,
                                                       config={"norm_adv_by_std_in_grpo": norm})
    ours = gs.passk_advantages(r, group_ids=uids, scale_rewards="group" if norm else "none")
    np.testing.assert_allclose(_per_token(ours, mask), adv.numpy(), **TOL[dtype])


def test_passk_singleton_raises_in_both(core):
    r = np.array([1.0, 0.0, 0.5])
    uids = np.array(["a", "a", "b"], dtype=object)
    mask = np.ones((3, 2), bool)
    with pytest.raises(ValueError, match="at least 2 samples"):
        core.compute_grpo_passk_outcome_advantage(_token_rewards(r, mask, torch.float64),
                                                  torch.ones(3, 2, dtype=torch.float64), uids, config={})
    with pytest.raises(ValueError, match="passk_advantages"):
        gs.passk_advantages(r, group_ids=uids)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("holes", [False, True])
def test_reinforce_pp(core, dtype, gamma, holes):
    r, _, mask = _batch(9)
    rng = np.random.default_rng(10)
    if holes:  # multi-turn: observation spans (mask 0) inside responses
        mask[rng.random(mask.shape) < 0.25] = False
    tok = rng.normal(size=mask.shape).astype(NP[dtype])
    tok[rng.random(mask.shape) < 0.5] = 0.0
    m = torch.tensor(mask, dtype=dtype)
    adv, ret = core.compute_reinforce_plus_plus_outcome_advantage(torch.tensor(tok), m, config=_cfg(gamma=gamma))
    ours = gs.reinforce_pp_advantages(tok, mask, gamma=gamma, return_returns=True)
    np.testing.assert_allclose(ours.returns, ret.numpy(), **TOL[dtype])
    np.testing.assert_allclose(ours.advantages, adv.numpy(), **WHITENED[dtype])
    # outcome rewards (N,) on the last kept token == verl's token-level input built the same way
    out = gs.reinforce_pp_advantages(r.astype(NP[dtype]), mask, gamma=gamma)
    adv1, _ = core.compute_reinforce_plus_plus_outcome_advantage(_token_rewards(r.astype(NP[dtype]), mask, dtype), m,
                                                                 config=_cfg(gamma=gamma))
    np.testing.assert_allclose(out, adv1.numpy(), **WHITENED[dtype])
    if holes and gamma == 1.0:  # the pre-#7300 behaviour is a different answer here
        reset = gs.reinforce_pp_advantages(tok, mask, gamma=gamma, masked_tokens="reset")
        assert not np.allclose(reset, adv.numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reinforce_pp_baseline(core, dtype):
    r, uids, mask = _batch(11)
    r = r.astype(NP[dtype])
    m = torch.tensor(mask, dtype=dtype)
    adv, ret = core.compute_reinforce_plus_plus_baseline_outcome_advantage(_token_rewards(r, mask, dtype), m, uids)
    ours = gs.reinforce_pp_baseline_advantages(r, mask, group_ids=uids)  # singleton "raw" by default
    np.testing.assert_allclose(ours, adv.numpy(), **WHITENED[dtype])
    assert torch.equal(adv, ret)


def test_permuted_rows_and_relabelled_ids(core):
    r, uids, mask = _batch(12)
    perm = np.random.default_rng(13).permutation(len(r))
    relabel = {u: f"x{i}" for i, u in enumerate(sorted(set(uids), reverse=True))}
    ids2 = np.array([relabel[u] for u in uids[perm]], dtype=object)
    single = np.array([(uids == u).sum() == 1 for u in uids])
    r[single] = 0.0  # singletons give 0 here: verl's float32 (1 + eps) for them is checked in test_grpo
    m, m2 = torch.tensor(mask, dtype=torch.float64), torch.tensor(mask[perm], dtype=torch.float64)
    tok, tok2 = _token_rewards(r, mask, torch.float64), _token_rewards(r[perm], mask[perm], torch.float64)
    for fn, est, opts in [(core.compute_grpo_outcome_advantage, "grpo", {"epsilon": 1e-6, "singleton": "raw"}),
                          (core.compute_rloo_outcome_advantage, "rloo", {"singleton": "raw"}),
                          (core.compute_gpg_outcome_advantage, "gpg", {"alpha": _verl_gpg_alpha(r)})]:
        base = gs.advantages(r, est, group_ids=uids, **opts)
        relabelled = np.array([relabel[u] for u in uids], dtype=object)
        assert gs.advantages(r, est, group_ids=relabelled, **opts).tobytes() == base.tobytes()  # same bits
        moved = gs.advantages(r[perm], est, group_ids=ids2, **opts)  # new order inside groups: rounding only
        np.testing.assert_allclose(moved, base[perm], rtol=1e-13, atol=1e-15)
        v, _ = fn(tok, m, uids)
        v2, _ = fn(tok2, m2, ids2)
        np.testing.assert_allclose(v2.numpy(), v.numpy()[perm], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_per_token(moved, mask[perm]), v2.numpy(), rtol=1e-12, atol=1e-12)


def test_all_equal_groups(core):
    # 0.1 is not representable: verl's group mean of three 0.1 can be 1 ulp off 0.1, and its
    # (std + 1e-6) denominator amplifies that ~1e6-fold; ours are exactly 0.
    r = np.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    uids = np.array(list("aaabbbcccc"), dtype=object)
    mask = np.ones((10, 3), bool)
    ours = gs.advantages(r, "grpo", group_ids=uids, epsilon=1e-6, singleton="raw")
    assert np.all(ours == 0.0)
    adv, _ = core.compute_grpo_outcome_advantage(_token_rewards(r, mask, torch.float64),
                                                 torch.ones(10, 3, dtype=torch.float64), uids)
    assert np.abs(adv.numpy()).max() <= 1e6 * np.spacing(1.0)  # verl: 0 up to an amplified ulp
    for est in ("rloo", "dr_grpo", "gpg", "opo"):
        o = {"response_mask": mask} if est == "opo" else {}
        assert np.all(gs.advantages(r, est, group_ids=uids, **o) == 0.0), est


def test_adaptive_kl_controller(core):
    ours = gs.AdaptiveKLController(init_kl_coef=0.05, target_kl=0.02, horizon=1000)
    theirs = core.AdaptiveKLController(init_kl_coef=0.05, target_kl=0.02, horizon=1000)
    for kl, n in [(0.5, 64), (0.001, 64), (0.021, 128), (0.0, 32), (0.03, 256)]:
        ours.update(kl, n)
        theirs.update(kl, n)
        assert ours.value == pytest.approx(float(theirs.value), rel=1e-15)


# --------------------------------------------- verl semantics, hand-worked (verl not needed)

def test_verl_semantics_hand_worked():
    # Groups: a = (1, 0, 1), b = (0.5) singleton. verl GRPO: a's mean 2/3, std 1/sqrt(3);
    # b -> 0.5 / (1 + 1e-6). RLOO: a -> (1 - 0.5, 0 - 1, 1 - 0.5); b -> 0.5.
    r = np.array([1.0, 0.0, 1.0, 0.5])
    ids = np.array(["a", "a", "a", "b"])
    sd = np.sqrt(1 / 3)
    np.testing.assert_allclose(gs.advantages(r, "grpo", group_ids=ids, epsilon=1e-6, singleton="raw"),
                               [(1 / 3) / (sd + 1e-6), (-2 / 3) / (sd + 1e-6), (1 / 3) / (sd + 1e-6), 0.5 / (1 + 1e-6)],
                               rtol=1e-14)
    np.testing.assert_allclose(gs.rloo_advantages(r, group_ids=ids, singleton="raw"), [0.5, -1, 0.5, 0.5], rtol=1e-14)
    # GPG (verl): alpha = 4 rows / 3 non-zero rewards; the singleton keeps alpha * r.
    np.testing.assert_allclose(gs.gpg_advantages(r, group_ids=ids, alpha="nonzero"),
                               [4 / 3 * (1 / 3), 4 / 3 * (-2 / 3), 4 / 3 * (1 / 3), 4 / 3 * 0.5], rtol=1e-14)
    # OPO: a's lengths (1, 2, 3): baseline (1*1 + 2*0 + 3*1) / 6 = 2/3.
    np.testing.assert_allclose(gs.opo_advantages(r, group_ids=ids, lengths=[1.0, 2, 3, 4]),
                               [1 / 3, -2 / 3, 1 / 3, 0.5], rtol=1e-14)
    # REINFORCE++ (verl 0.9.1): [a, obs, a] with reward 1 at the end, gamma 0.5 -> returns (0.5, 0, 1).
    both = gs.reinforce_pp_advantages([1.0], np.array([[1, 0, 1]]), gamma=0.5, return_returns=True)
    np.testing.assert_array_equal(both.returns, [[0.5, 0, 1]])
    s = np.sqrt(((0.5 - 0.75) ** 2 + (1 - 0.75) ** 2) / 1 + 1e-8)
    np.testing.assert_allclose(both.advantages, [[-0.25 / s, 0, 0.25 / s]], rtol=1e-14)


def test_hand_worked_examples_against_verl(core):
    # The hand-worked numbers above, from verl's own functions.
    r = np.array([1.0, 0.0, 1.0, 0.5])
    ids = np.array(["a", "a", "a", "b"], dtype=object)
    lengths = np.array([1, 2, 3, 4])
    mask = np.arange(4)[None, :] < lengths[:, None]
    m = torch.tensor(mask, dtype=torch.float64)
    tok = _token_rewards(r, mask, torch.float64)
    sd = np.sqrt(1 / 3)
    want = {
        core.compute_grpo_outcome_advantage: [(1 / 3) / (sd + 1e-6), (-2 / 3) / (sd + 1e-6), (1 / 3) / (sd + 1e-6),
                                              0.5 / (1 + 1e-6)],
        core.compute_rloo_outcome_advantage: [0.5, -1, 0.5, 0.5],
        core.compute_gpg_outcome_advantage: [4 / 3 * (1 / 3), 4 / 3 * (-2 / 3), 4 / 3 * (1 / 3), 4 / 3 * 0.5],
        core.compute_opo_outcome_advantage: [1 / 3, -2 / 3, 1 / 3, 0.5],
    }
    for fn, w in want.items():
        adv, _ = fn(tok, m, ids)
        np.testing.assert_allclose(adv.numpy(), _per_token(np.array(w), mask), rtol=1e-7, atol=1e-12)
    adv, ret = core.compute_reinforce_plus_plus_outcome_advantage(torch.tensor([[0.0, 0, 1]], dtype=torch.float64),
                                                                  torch.tensor([[1.0, 0, 1]], dtype=torch.float64),
                                                                  config=_cfg(gamma=0.5))
    np.testing.assert_array_equal(ret.numpy(), [[0.5, 0, 1]])
