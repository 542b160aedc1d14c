"""grpo_loss: argument validation (errors name the function and the argument), LossConfig,
inputs never mutated, dtype handling, thread-count determinism, the buffer-level entry."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

import grpo_swift
from grpo_swift import LossConfig, grpo_loss
from grpo_swift._loss import _policy_loss_buffers


def inputs(B=4, T=7, dtype=np.float32, seed=0):
    r = np.random.default_rng(seed)
    lp = (-r.uniform(0.1, 2, (B, T))).astype(dtype)
    old = (lp - r.uniform(-0.3, 0.3, (B, T))).astype(dtype)
    ref = (lp + r.uniform(-0.3, 0.3, (B, T))).astype(dtype)
    ent = r.uniform(0, 2, (B, T)).astype(dtype)
    adv = r.normal(size=B).astype(np.float32)
    mask = r.uniform(size=(B, T)) > 0.3
    mask[:, 0] = True
    return lp, old, ref, ent, adv, mask


ARRAYS = ["old_logps", "ref_logps", "sampling_logps", "entropies"]


@pytest.mark.parametrize("arg", ARRAYS)
def test_shape_mismatch_names_the_argument(arg):
    lp, old, ref, ent, adv, mask = inputs()
    bad = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=rf"grpo_loss\(\): argument '{arg}' must have shape \(4, 7\)"):
        grpo_loss(lp, adv, mask, beta=0.04, **{"ref_logps": ref, arg: bad})


def test_other_shape_mismatches():
    lp, old, ref, ent, adv, mask = inputs()
    with pytest.raises(ValueError, match=r"grpo_loss\(\): argument 'advantages' must have shape \(4,\)"):
        grpo_loss(lp, adv[:3], mask)
    with pytest.raises(ValueError, match=r"argument 'advantages' must have shape"):
        grpo_loss(lp, np.zeros((4, 5), np.float32), mask)
    with pytest.raises(ValueError, match=r"grpo_loss\(\): argument 'mask' must have shape \(4, 7\)"):
        grpo_loss(lp, adv, mask[:, :5])
    with pytest.raises(ValueError, match=r"argument 'importance_sampling_ratio' must have shape"):
        grpo_loss(lp, adv, mask, importance_sampling_ratio=np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"argument 'logps' must be 2-D"):
        grpo_loss(lp[0], adv, mask)
    with pytest.raises(ValueError, match=r"at least one row"):
        grpo_loss(np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros((0, 3), bool))


def test_wrong_dtypes():
    lp, old, ref, ent, adv, mask = inputs()
    with pytest.raises(TypeError, match=r"grpo_loss\(\): argument 'logps' must have dtype"):
        grpo_loss(lp.astype(np.int32), adv, mask)
    with pytest.raises(TypeError, match=r"argument 'old_logps' must have dtype float32 \(the dtype of the other"):
        grpo_loss(lp, adv, mask, old_logps=old.astype(np.float64))
    with pytest.raises(TypeError, match=r"argument 'advantages' must have dtype"):
        grpo_loss(lp, adv.astype(np.int64), mask)
    with pytest.raises(TypeError, match=r"argument 'mask' must be bool, integer or float"):
        grpo_loss(lp, adv, mask.astype(np.complex64))
    with pytest.raises(ValueError, match=r"argument 'mask' must hold only 0 and 1"):
        grpo_loss(lp, adv, mask.astype(np.int64) * 2)
    with pytest.raises(TypeError, match=r"argument 'use_bias_correction_kl' must be a bool"):
        grpo_loss(lp, adv, mask, use_bias_correction_kl="yes")


def test_unknown_choices_list_the_valid_ones():
    lp, old, ref, ent, adv, mask = inputs()
    with pytest.raises(ValueError, match=r"argument 'loss_type' must be one of 'grpo', 'bnpo', 'dr_grpo', "
                                         r"'dapo', 'luspo', 'cispo', 'sapo', 'vespo', 'gmpo', got 'ppo'"):
        grpo_loss(lp, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match=r"argument 'importance_sampling_level' must be one of 'token', "
                                         r"'sequence', 'sequence_token', got 'batch'"):
        grpo_loss(lp, adv, mask, importance_sampling_level="batch")


def test_missing_requirements():
    lp, old, ref, ent, adv, mask = inputs()
    with pytest.raises(ValueError, match=r"ref_logps is required when beta != 0"):
        grpo_loss(lp, adv, mask, beta=0.04)
    with pytest.raises(ValueError, match=r"loss_type 'dr_grpo' normalises by max_completion_length"):
        grpo_loss(lp, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match=r"entropies are required when top_entropy_quantile < 1"):
        grpo_loss(lp, adv, mask, top_entropy_quantile=0.2)
    with pytest.raises(ValueError, match=r"entropies are required when entropy_coef != 0"):
        grpo_loss(lp, adv, mask, entropy_coef=0.01)


@pytest.mark.parametrize("arg,value", [
    ("gradient_accumulation_steps", 0), ("num_processes", 0), ("steps_per_generation", 0),
    ("max_completion_length", 0), ("num_items_in_batch", -1.0), ("sapo_temperature_pos", 0.0),
    ("top_entropy_quantile", 1.5), ("beta", float("nan")),
])
def test_non_positive_normalisers_and_bad_values(arg, value):
    lp, old, ref, ent, adv, mask = inputs()
    kw = {arg: value}
    if arg == "beta":
        kw["ref_logps"] = ref
    with pytest.raises(ValueError, match=rf"grpo_loss\(\): argument '{arg}'"):
        grpo_loss(lp, adv, mask, **kw)


def test_inputs_are_not_mutated():
    lp, old, ref, ent, adv, mask = inputs()
    lp[~mask] = np.nan
    ref[~mask] = np.inf
    isr = np.full(lp.shape, 1.1, np.float32)
    args = [lp, old, ref, ent, adv, mask, isr]
    copies = [a.copy() for a in args]
    res = grpo_loss(lp, adv, mask, old_logps=old, ref_logps=ref, entropies=ent, sampling_logps=old,
                    importance_sampling_ratio=isr, beta=0.04, off_policy_mask_threshold=0.1,
                    top_entropy_quantile=0.5, entropy_coef=0.1, loss_type="grpo")
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)
    assert np.isfinite(res.loss) and np.all(np.isfinite(res.grad))


def test_mask_kinds_agree():
    lp, old, ref, ent, adv, mask = inputs()
    results = [grpo_loss(lp, adv, m, old_logps=old).loss
               for m in (mask, mask.astype(np.uint8), mask.astype(np.int64), mask.astype(np.float32), mask.tolist())]
    assert len(set(results)) == 1


def test_dtypes_and_outputs():
    for dtype, out in ((np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float32)):
        lp, old, ref, ent, adv, mask = inputs(dtype=dtype)
        res = grpo_loss(lp, adv, mask, old_logps=old, ref_logps=ref, beta=0.04)
        assert res.grad.dtype == out and res.grad.shape == lp.shape
        assert res.grad_entropies is None
    f64 = grpo_loss(*[x.astype(np.float64) for x in inputs()[:1]], inputs()[4], inputs()[5]).loss
    f32 = grpo_loss(inputs()[0], inputs()[4], inputs()[5]).loss
    assert abs(f64 - f32) < 1e-6


def test_compute_grad_false_and_metrics_decomposition():
    lp, old, ref, ent, adv, mask = inputs()
    res = grpo_loss(lp, adv, mask, old_logps=old, ref_logps=ref, beta=0.04, entropies=ent, entropy_coef=0.1,
                    compute_grad=False)
    assert res.grad is None and res.grad_entropies is None
    m = res.metrics
    assert abs(m["policy_term"] + m["kl_term"] + m["entropy_term"] - res.loss) < 1e-12
    assert m["num_tokens"] == mask.sum()
    assert {"kl", "entropy", "clip_ratio/low_mean", "policy_loss"} <= set(m)


def test_loss_config_is_frozen_validated_and_reusable():
    cfg = LossConfig(loss_type="grpo", beta=0.04)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 0.1
    with pytest.raises(ValueError, match=r"LossConfig\(\): argument 'loss_type' must be one of"):
        LossConfig(loss_type="nope")
    with pytest.raises(TypeError, match=r"grpo_loss\(\): unexpected keyword argument"):
        LossConfig.from_options("grpo_loss", betta=0.1)
    assert cfg.replace(beta=0.0).beta == 0.0 and cfg.beta == 0.04
    lp, old, ref, ent, adv, mask = inputs()
    a = grpo_swift.loss_with_config(lp, adv, mask, cfg, old_logps=old, ref_logps=ref)
    b = grpo_loss(lp, adv, mask, old_logps=old, ref_logps=ref, loss_type="grpo", beta=0.04)
    assert a.loss == b.loss and np.array_equal(a.grad, b.grad)


def test_buffer_entry_fills_caller_buffers():
    lp, old, ref, ent, adv, mask = inputs()
    cfg = LossConfig(loss_type="dapo", beta=0.04)
    grad = np.full(lp.shape, 7.0, np.float32)
    loss, metrics = _policy_loss_buffers("custom", lp, old, ref, None, None, adv, mask.view(np.uint8), None, cfg,
                                         grad, None)
    ref_res = grpo_loss(lp, adv, mask, old_logps=old, ref_logps=ref, beta=0.04)
    assert loss == ref_res.loss and np.array_equal(grad, ref_res.grad)
    with pytest.raises(TypeError, match=r"custom\(\): argument 'out_grad'"):
        _policy_loss_buffers("custom", lp, old, ref, None, None, adv, mask.view(np.uint8), None, cfg,
                             grad.astype(np.float64), None)


def test_thread_count_and_concurrency_do_not_change_bits():
    lp, old, ref, ent, adv, mask = inputs(B=300, T=129, seed=3)
    kw = dict(old_logps=old, ref_logps=ref, beta=0.04, entropies=ent, top_entropy_quantile=0.4, entropy_coef=0.1)
    n0 = grpo_swift.get_num_threads()
    try:
        grpo_swift.set_num_threads(1)
        one = grpo_loss(lp, adv, mask, **kw)
        grpo_swift.set_num_threads(3)
        three = grpo_loss(lp, adv, mask, **kw)
    finally:
        grpo_swift.set_num_threads(n0)
    assert one.loss == three.loss and np.array_equal(one.grad, three.grad)
    out = [None] * 4

    def work(i):
        out[i] = grpo_loss(lp, adv, mask, **kw)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.loss == one.loss and np.array_equal(o.grad, one.grad) for o in out)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "sapo", "vespo"])
def test_float16_inputs_equal_float32_of_the_same_values(loss_type):
    lp, old, ref, ent, adv, mask = inputs(B=6, T=21, seed=4)
    h = [x.astype(np.float16) for x in (lp, old, ref)]
    kw = dict(loss_type=loss_type, beta=0.04, importance_sampling_level="sequence")
    a = grpo_loss(h[0], adv, mask, old_logps=h[1], ref_logps=h[2], **kw)
    b = grpo_loss(*[x.astype(np.float32) for x in h[:1]], adv, mask, old_logps=h[1].astype(np.float32),
                  ref_logps=h[2].astype(np.float32), **kw)
    assert a.grad.dtype == np.float32
    assert abs(a.loss - b.loss) <= 1e-6 * max(1.0, abs(b.loss))
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
