"""Adaptive KL and entropy coefficient controllers: update rules, closed-loop behaviour,
state round-trips, validation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import grpo_swift as gs


def test_kl_update_rule_by_hand():
    c = gs.AdaptiveKLController(init_kl_coef=1.0, target_kl=1.0, horizon=100)
    # e = 1.1 / 1 - 1 = 0.1; beta *= 1 + 0.1 * 10 / 100.
    assert c.update(1.1, 10) == pytest.approx(1.01, rel=1e-15)
    # Proportional error clipped at +0.2 and -0.2.
    c = gs.AdaptiveKLController(2.0, 1.0, 100)
    assert c.update(50.0, 10) == pytest.approx(2.0 * 1.02, rel=1e-15)
    c = gs.AdaptiveKLController(2.0, 1.0, 100)
    assert c.update(0.0, 10) == pytest.approx(2.0 * 0.98, rel=1e-15)
    # On target: unchanged.
    c = gs.AdaptiveKLController(0.3, 6.0, 10_000)
    assert c.update(6.0, 256) == 0.3


def test_kl_controller_drives_simulated_kl_to_target():
    # A policy whose KL falls as the penalty grows: KL(beta) = 1.2 / beta, so the fixed point
    # of the controller is beta* = 1.2 / target = 0.2, from a start 2x too small.
    target = 6.0
    c = gs.AdaptiveKLController(init_kl_coef=0.1, target_kl=target, horizon=10_000)
    kls = []
    for _ in range(3000):
        kl = 1.2 / c.value
        kls.append(kl)
        c.update(kl, n_steps=256)
    assert abs(kls[0] - target) / target > 0.9
    assert abs(kls[-1] - target) / target < 0.01
    assert c.value == pytest.approx(0.2, rel=0.01)
    # The distance to the target never grows.
    d = np.abs(np.array(kls) - target)
    assert np.all(np.diff(d) <= 1e-12)


def test_kl_state_round_trip():
    a = gs.AdaptiveKLController(0.05, 3.0, 500)
    for kl in (1.0, 5.0, 2.0):
        a.update(kl, 7)
    state = json.loads(json.dumps(a.state_dict()))
    b = gs.AdaptiveKLController(1.0, 1.0, 1)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    for kl in (4.0, 0.5, 3.3):
        assert a.update(kl, 7) == b.update(kl, 7)


@pytest.mark.parametrize("call,exc,words", [
    (lambda: gs.AdaptiveKLController(0.1, 0.0, 10), ValueError, ["target_kl", "> 0"]),
    (lambda: gs.AdaptiveKLController(0.1, 1.0, 0), ValueError, ["horizon"]),
    (lambda: gs.AdaptiveKLController(-0.1, 1.0, 10), ValueError, ["init_kl_coef"]),
    (lambda: gs.AdaptiveKLController(0.1, 1.0, 10).update(float("nan"), 1), ValueError, ["current_kl"]),
    (lambda: gs.AdaptiveKLController(0.1, 1.0, 10).update(1.0, 50), ValueError, ["n_steps", "positive"]),
    (lambda: gs.AdaptiveKLController(0.1, 1.0, 10).update(1.0, 1.5), TypeError, ["n_steps"]),
    (lambda: gs.AdaptiveKLController(0.1, 1.0, 10).load_state_dict({"value": 1.0}), ValueError, ["target"]),
    (lambda: gs.AdaptiveEntropyController(entropy_coef_min=1.0, entropy_coef_max=0.5), ValueError, ["min"]),
    (lambda: gs.AdaptiveEntropyController(entropy_coef_delta=-1), ValueError, ["entropy_coef_delta"]),
    (lambda: gs.AdaptiveEntropyController().step(), ValueError, ["step()", "observe"]),
    (lambda: gs.AdaptiveEntropyController().observe(1.0, -2), ValueError, ["num_tokens"]),
    (lambda: gs.AdaptiveEntropyController().load_state_dict({"entropy_coef": 0.1}), ValueError,
     ["last_world_entropy"]),
    (lambda: gs.AdaptiveEntropyController().load_state_dict(
        {"entropy_coef": 0.1, "last_world_entropy": 1.0, "beta": 2}), ValueError, ["beta"]),
])
def test_controller_errors(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_entropy_controller_trl_semantics_by_hand():
    c = gs.AdaptiveEntropyController(0.01, entropy_target=0.5, entropy_coef_min=0.0, entropy_coef_max=0.02,
                                     entropy_coef_delta=0.005)
    # No measurement yet: TRL starts _last_world_entropy at inf, so no bonus is applied.
    assert c.applied_coef == 0.0
    # A window of two micro-batches: token-weighted mean (0.2*10 + 1.0*30) / 40 = 0.8 > target.
    c.observe(0.2 * 10, 10)
    c.observe(1.0 * 30, 30)
    assert c.step() == pytest.approx(0.005)
    assert c.last_entropy == pytest.approx(0.8)
    assert c.applied_coef == 0.0  # entropy above target: the bonus is off
    # Low entropy: coefficient rises, capped at max; the bonus applies.
    assert c.update(0.1) == pytest.approx(0.01)
    assert c.applied_coef == pytest.approx(0.01)
    assert c.update(0.5) == pytest.approx(0.015)  # == target counts as low (<=)
    assert c.update(0.1) == pytest.approx(0.02)
    assert c.update(0.1) == pytest.approx(0.02)
    # High entropy: falls, floored at min.
    for _ in range(10):
        c.update(3.0)
    assert c.entropy_coef == 0.0 and c.applied_coef == 0.0


def test_entropy_controller_settles_around_target():
    # Simulated policy: entropy falls with training and rises with the bonus.
    c = gs.AdaptiveEntropyController(0.0, entropy_target=1.0, entropy_coef_delta=0.01)
    h = 3.0
    hs = []
    for _ in range(2000):
        coef = c.applied_coef
        h = max(0.0, h - 0.01 + 0.5 * coef)
        hs.append(h)
        c.update(h)
    tail = np.array(hs[-500:])
    assert abs(tail.mean() - 1.0) < 0.1 and tail.min() > 0.7


def test_entropy_state_round_trip_mid_window_and_trl_format():
    a = gs.AdaptiveEntropyController(0.1, entropy_target=0.3)
    a.update(0.2)
    a.observe(1.5, 10)  # pending window
    state = json.loads(json.dumps(a.state_dict()))
    b = gs.AdaptiveEntropyController()
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    b.observe(0.5, 5)
    a.observe(0.5, 5)
    assert a.step() == b.step() and a.last_entropy == b.last_entropy
    # TRL's entropy_ctrl_state.json holds only these two keys (inf before any measurement).
    trl_state = json.loads(json.dumps({"entropy_coef": 0.07, "last_world_entropy": float("inf")}))
    c = gs.AdaptiveEntropyController(0.0, entropy_target=0.3)
    c.load_state_dict(trl_state)
    assert c.entropy_coef == 0.07 and math.isinf(c.last_entropy) and c.applied_coef == 0.0
    assert c.entropy_target == 0.3
