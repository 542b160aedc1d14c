"""Advantage-estimator API: DAPO zero-spread helpers, argument validation and error messages."""
from __future__ import annotations

import numpy as np
import pytest

import grpo_swift as gs


def test_zero_spread_groups_and_informative_rows():
    r = np.array([1.0, 1.0, 0.0, 1.0, np.nan, 2.0, np.nan, np.nan, 0.5, 0.5000001])
    ids = np.array([4, 4, 9, 9, 1, 1, 7, 7, 3, 3])
    z = gs.zero_spread_groups(r, group_ids=ids)
    # (1, 1) equal; (0, 1) spread; (NaN, 2) one scorable row; all NaN; (0.5, 0.5000001) spread.
    np.testing.assert_array_equal(z, [True, True, False, False, True, True, True, True, False, False])
    np.testing.assert_array_equal(gs.informative_rows(r, group_ids=ids), [2, 3, 8, 9])
    assert gs.informative_rows(r, group_ids=ids).dtype == np.int64
    z_tol = gs.zero_spread_groups(r, group_ids=ids, tolerance=1e-3)
    assert z_tol[8] and z_tol[9] and not z_tol[2]
    np.testing.assert_array_equal(gs.zero_spread_groups(r, num_generations=2), z)


def test_zero_spread_agrees_with_group_advantages_flag(rng):
    r = rng.integers(0, 2, 400).astype(float)
    z = gs.zero_spread_groups(r, num_generations=8)
    np.testing.assert_array_equal(z, gs.group_advantages(r, 8).is_std_zero)
    # Dropping zero-spread groups drops exactly the rows whose GRPO advantage is 0 by construction.
    keep = gs.informative_rows(r, num_generations=8)
    a = gs.advantages(r, num_generations=8)
    assert np.all(a[z] == 0) and np.all(a[keep] != 0)


def test_zero_spread_float32_and_permutation(rng):
    r = rng.integers(0, 3, 60).astype(np.float32)
    ids = np.repeat(np.arange(12), 5)
    p = rng.permutation(60)
    np.testing.assert_array_equal(gs.zero_spread_groups(r[p], group_ids=ids[p]),
                                  gs.zero_spread_groups(r, group_ids=ids)[p])


@pytest.mark.parametrize("call,exc,words", [
    (lambda: gs.advantages([1.0, 2.0], "ppo", num_generations=2), ValueError, ["advantages()", "'estimator'", "'ppo'"]),
    (lambda: gs.advantages([1.0, 2.0], "grpo"), TypeError, ["advantages()", "group_ids", "neither"]),
    (lambda: gs.advantages([1.0, 2.0], group_ids=[0, 0], num_generations=2), TypeError, ["both"]),
    (lambda: gs.advantages([1.0, 2.0], num_generations=2, gamma=0.9), TypeError, ["'grpo'", "'gamma'"]),
    (lambda: gs.advantages([1.0, 2.0, 3.0], num_generations=2), ValueError, ["multiple", "(3)"]),
    (lambda: gs.advantages([1.0, 2.0], num_generations=0), ValueError, ["num_generations", ">= 1"]),
    (lambda: gs.advantages([1.0, 2.0], group_ids=[0.5, 1.5]), TypeError, ["group_ids", "float64"]),
    (lambda: gs.advantages([1.0, 2.0], group_ids=[0, 0, 1]), ValueError, ["group_ids", "(2,)"]),
    (lambda: gs.advantages(np.array([1, 2]), num_generations=2), TypeError, ["rewards", "int64"]),
    (lambda: gs.advantages([[1.0, 2.0]], num_generations=1), ValueError, ["rewards", "1-D"]),
    (lambda: gs.advantages([], num_generations=1), ValueError, ["rewards", "empty"]),
    (lambda: gs.advantages([1.0, np.inf], num_generations=2), ValueError, ["advantages()", "finite"]),
    (lambda: gs.advantages([1.0, 2.0], num_generations=2, scale_rewards="std"), ValueError, ["scale_rewards"]),
    (lambda: gs.advantages([1.0, 2.0], num_generations=2, singleton="drop"), ValueError, ["singleton"]),
    (lambda: gs.advantages([1.0, 2.0], num_generations=2, epsilon=-1.0), ValueError, ["epsilon"]),
    (lambda: gs.passk_advantages([1.0, 2.0, 3.0], group_ids=[0, 0, 1]), ValueError,
     ["passk_advantages()", "group id 1", "single scorable row"]),
    (lambda: gs.passk_advantages([1.0, 2.0], 2, scale_rewards="batch"), ValueError, ["scale_rewards"]),
    (lambda: gs.passk_advantages([1.0, 2.0], 2, singleton="raw"), ValueError, ["passk_advantages()", "raw"]),
    (lambda: gs.rloo_advantages([1.0, 2.0], 2, normalize_advantages=1), TypeError, ["normalize_advantages"]),
    (lambda: gs.opo_advantages([1.0, 2.0], 2), TypeError, ["opo", "neither"]),
    (lambda: gs.opo_advantages([1.0, 2.0], 2, lengths=[1, -1]), ValueError, ["lengths", ">= 0"]),
    (lambda: gs.opo_advantages([1.0, 2.0], 2, lengths=[1, 2, 3]), ValueError, ["lengths", "(2,)"]),
    (lambda: gs.gpg_advantages([1.0, 2.0], 2, alpha="paper"), ValueError, ["alpha"]),
    (lambda: gs.gpg_advantages([1.0, 2.0], 2, alpha=0.0), ValueError, ["alpha", "> 0"]),
    (lambda: gs.gpg_advantages([1.0, 2.0], 2, f_norm=0), ValueError, ["f_norm"]),
    (lambda: gs.reinforce_pp_advantages([1.0, 2.0], np.ones((2, 3)), gamma=1.5), ValueError, ["gamma", "[0, 1]"]),
    (lambda: gs.reinforce_pp_advantages([1.0, 2.0], np.ones((3, 3))), ValueError, ["response_mask", "(2, T)"]),
    (lambda: gs.reinforce_pp_advantages([1.0, 2.0], np.full((2, 3), 0.5)), ValueError, ["response_mask", "0 and 1"]),
    (lambda: gs.reinforce_pp_advantages([1.0, 2.0], None), TypeError, ["response_mask", "required"]),
    (lambda: gs.reinforce_pp_advantages([1.0, 2.0], np.ones((2, 3)), masked_tokens="skip"), ValueError,
     ["masked_tokens", "'carry', 'reset'", "'skip'"]),
    (lambda: gs.reinforce_pp_advantages([1.0, 2.0], np.ones((2, 3)), return_returns=1), TypeError,
     ["return_returns", "bool", "int"]),
    (lambda: gs.advantages([1.0, 2.0], "reinforce_pp_baseline", num_generations=2, response_mask=np.ones((2, 3)),
                           return_returns=True), TypeError, ["unexpected option", "'return_returns'"]),
    (lambda: gs.advantages([1.0, 2.0], "grpo", num_generations=2, masked_tokens="carry"), TypeError,
     ["unexpected option", "'masked_tokens'"]),
    (lambda: gs.reinforce_pp_advantages(np.ones((2, 4)), np.ones((2, 3))), ValueError, ["rewards", "(2, 3)"]),
    (lambda: gs.reinforce_pp_baseline_advantages(np.ones((2, 3)), np.ones((2, 3)), 2), ValueError,
     ["rewards", "1-D"]),
    (lambda: gs.reinforce_pp_baseline_advantages([1.0, 2.0], np.ones((2, 3))), TypeError, ["neither"]),
    (lambda: gs.zero_spread_groups([1.0, 2.0], num_generations=2, tolerance=-1), ValueError, ["tolerance"]),
    (lambda: gs.informative_rows([1.0, 2.0]), TypeError, ["informative_rows()", "neither"]),
])
def test_errors_name_function_and_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_reinforce_pp_ignores_groups_but_validates_them():
    mask = np.ones((4, 2), bool)
    r = np.array([1.0, 0.0, 2.0, 1.0])
    base = gs.reinforce_pp_advantages(r, mask)
    np.testing.assert_array_equal(gs.advantages(r, "reinforce_pp", num_generations=2, response_mask=mask), base)
    with pytest.raises(ValueError, match="multiple"):
        gs.advantages(r, "reinforce_pp", num_generations=3, response_mask=mask)


def test_public_names_exported():
    for name in ("advantages", "rloo_advantages", "dr_grpo_advantages", "opo_advantages", "gpg_advantages",
                 "passk_advantages", "reinforce_pp_advantages", "reinforce_pp_baseline_advantages",
                 "zero_spread_groups", "informative_rows", "AdaptiveKLController", "AdaptiveEntropyController"):
        assert name in gs.__all__ and callable(getattr(gs, name))
