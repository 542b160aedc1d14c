"""Fused linear GRPO loss: parity with the composed path (fused_log_probs -> grpo_loss -> autograd),
with TRL 1.16's own loss on dense float64 logits, the Liger-style module, bf16, errors, memory."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import grpo_swift
from grpo_swift.torch import FusedLinearGRPOLoss, fused_linear_grpo_loss as torch_fused

from _trl_reference import trl_loss

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo")


def _problem(seed, B=4, T=7, H=24, V=53, bias=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((B, T, H)).astype(dtype)
    weight = (rng.standard_normal((V, H)) * 0.3).astype(dtype)
    b = (rng.standard_normal(V) * 0.5).astype(dtype) if bias else None
    ids = rng.integers(0, V, (B, T))
    mask = (rng.random((B, T)) < 0.8).astype(np.int64)
    mask[:, 0] = 1
    adv = rng.standard_normal(B).astype(np.float32)
    return hidden, weight, b, ids, mask, adv, rng


def _old_ref(rng, hidden, weight, b, ids):
    """Old/ref log-probs near the policy's (ratios around 1, some outside the clip range)."""
    lp = grpo_swift.fused_log_probs(hidden, weight, ids, bias=b, return_entropy=False)
    old = (lp + rng.normal(0, 0.15, lp.shape)).astype(np.float32)
    ref = (lp + rng.normal(0, 0.1, lp.shape)).astype(np.float32)
    return old, ref


def _options(loss_type, level, beta):
    o = dict(loss_type=loss_type, importance_sampling_level=level, beta=beta)
    if loss_type == "dr_grpo":
        o["max_completion_length"] = 7
    if loss_type == "cispo":
        o["epsilon_high"] = 1.1
    return o


def _composed(hidden, weight, b, ids, mask, adv, old, ref, opts, entropy_coef=0.0):
    """grpo_swift.torch.fused_log_probs -> grpo_swift.grpo_loss (numpy) -> torch autograd."""
    h = torch.tensor(hidden, requires_grad=True)
    w = torch.tensor(weight, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    lp, ent = grpo_swift.torch.fused_log_probs(h, w, torch.tensor(ids), bias=bt)
    r = grpo_swift.grpo_loss(lp.detach().numpy(), adv, mask, old_logps=old,
                             ref_logps=ref if opts.get("beta", 0) != 0 or ref is not None else None,
                             entropies=ent.detach().numpy(), entropy_coef=entropy_coef, **opts)
    outs, grads = [lp], [torch.tensor(r.grad)]
    if r.grad_entropies is not None:
        outs.append(ent)
        grads.append(torch.tensor(r.grad_entropies))
    torch.autograd.backward(outs, grads)
    return r.loss, h.grad.numpy(), w.grad.numpy(), None if bt is None else bt.grad.numpy(), r.metrics


# scratch_budget per schedule for (B, T, H, V): the default (min(256 MiB, half the logits)), the
# whole batch in one resident block, blocks of one / two sequences (computed from the schedule's
# scratch figure and asserted by _resident_budget), and too small for one sequence (4-GEMM).
_BUDGETS = {
    "3gemm-default": lambda B, T, H, V: 0,
    "3gemm-one-block": lambda B, T, H, V: _resident_budget(B, T, H, V, B),
    "3gemm-blocks-of-1": lambda B, T, H, V: _resident_budget(B, T, H, V, 1),
    "3gemm-blocks-of-2": lambda B, T, H, V: _resident_budget(B, T, H, V, 2),
    "4gemm": lambda B, T, H, V: 1,
}


def _rel(a, b):
    scale = max(float(np.abs(b).max()), 1e-30)
    return float(np.abs(np.asarray(a, np.float64) - b).max()) / scale


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ("token", "sequence"))
@pytest.mark.parametrize("beta", (0.0, 0.04))
@pytest.mark.parametrize("bias", (False, True))
@pytest.mark.parametrize("schedule", ("3gemm-default", "3gemm-one-block", "3gemm-blocks-of-1", "4gemm"))
def test_numpy_matches_composed_path(loss_type, level, beta, bias, schedule):
    hidden, weight, b, ids, mask, adv, rng = _problem(LOSS_TYPES.index(loss_type) * 8 + int(beta > 0) * 2 + bias,
                                                      bias=bias)
    old, ref = _old_ref(rng, hidden, weight, b, ids)
    opts = _options(loss_type, level, beta)
    budget = _BUDGETS[schedule](*ids.shape, *weight.shape[::-1])
    r = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old,
                                          ref_logps=ref if beta else None, scratch_budget=budget, **opts)
    loss, gh, gw, gb, metrics = _composed(hidden, weight, b, ids, mask, adv, old, ref if beta else None, opts)
    assert abs(r.loss - loss) <= 1e-5 * max(1.0, abs(loss))
    assert r.grad_hidden.shape == hidden.shape and r.grad_weight.shape == weight.shape
    assert _rel(r.grad_hidden, gh) <= 1e-4
    assert _rel(r.grad_weight, gw) <= 1e-4
    if bias:
        assert _rel(r.grad_bias, gb) <= 1e-4
    else:
        assert r.grad_bias is None
    for k, v in metrics.items():
        if k != "entropy":
            assert r.metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6, nan_ok=True), k
    # the gradient is not trivially zero
    assert np.abs(r.grad_hidden).max() > 0 and np.abs(r.grad_weight).max() > 0


_TINY_TILE = dict(tile_rows=1, tile_cols=16)  # a 4-GEMM tile smaller than any resident block below


def _resident_budget(B, T, H, V, sequences):
    """scratch_budget giving 3-GEMM blocks of `sequences` sequences, asserted through the scratch
    figure (with a tiny 4-GEMM tile, so that the figure is the resident block's whenever it applies)."""
    def f(b, budget):
        return grpo_swift.fused_linear_loss_scratch_bytes(b, T, H, V, scratch_budget=budget, **_TINY_TILE)
    tile4 = f(B, 1) - 24 * B * T  # the 4-GEMM schedule's tile
    one_seq = f(1, 1 << 40) - 24 * T  # one sequence's resident scratch
    assert one_seq > tile4
    budget = sequences * one_seq
    assert f(B, budget) == budget + 24 * B * T  # the 3-GEMM schedule, blocks of `sequences`
    assert f(B, one_seq - 1) == f(B, 1)  # below one sequence: the 4-GEMM schedule
    return budget


@pytest.mark.parametrize("variant", ("plain", "softcap", "entropy"))
@pytest.mark.parametrize("sequences", (1, 2))
def test_resident_schedule_many_chunks(variant, sequences):
    """V spanning 3 vocabulary chunks / backward groups of the 3-GEMM schedule (asserted), blocks of
    1 and 2 sequences, both backward variants (stored exp; recomputed with softcap or entropy)."""
    B, T, H, V = 5, 3, 16, 2 * 2048 + 50
    hidden, weight, b, ids, mask, adv, rng = _problem(70 + sequences, B=B, T=T, H=H, V=V, bias=variant != "entropy")
    old, ref = _old_ref(rng, hidden, weight, b, ids)
    budget = _resident_budget(B, T, H, V, sequences)
    opts = dict(loss_type="bnpo", beta=0.04)
    head = dict(temperature=0.8, logit_scale=1.2, final_logit_softcapping=3.0) if variant == "softcap" else {}
    ent = 0.2 if variant == "entropy" else 0.0
    r = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old, ref_logps=ref,
                                          entropy_coef=ent, scratch_budget=budget, **head, **opts, **_TINY_TILE)
    four = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old, ref_logps=ref,
                                             entropy_coef=ent, scratch_budget=1, **head, **opts)
    assert r.loss == pytest.approx(four.loss, rel=1e-6, abs=1e-7)
    for a, c in ((r.grad_hidden, four.grad_hidden), (r.grad_weight, four.grad_weight), (r.grad_bias, four.grad_bias)):
        if c is not None:
            assert _rel(a, c) <= 1e-5 and np.abs(c).max() > 0
    if not head:  # the composed autograd path (fused_log_probs -> grpo_loss) as the reference
        loss, gh, gw, gb, _ = _composed(hidden, weight, b, ids, mask, adv, old, ref, opts, entropy_coef=ent)
        assert abs(r.loss - loss) <= 1e-5 * max(1.0, abs(loss))
        assert _rel(r.grad_hidden, gh) <= 1e-4 and _rel(r.grad_weight, gw) <= 1e-4


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ("token", "sequence"))
def test_matches_trl_on_dense_float64_logits(loss_type, level):
    """Independent reference: dense float64 logits in torch, TRL 1.16's own _compute_loss, autograd."""
    hidden, weight, b, ids, mask, adv, rng = _problem(100 + LOSS_TYPES.index(loss_type), bias=True)
    old, ref = _old_ref(rng, hidden, weight, b, ids)
    beta = 0.04
    opts = _options(loss_type, level, beta)
    isr = np.exp(rng.normal(0, 0.1, (4, 7))).astype(np.float32) if loss_type == "vespo" else None
    r = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old, ref_logps=ref,
                                          importance_sampling_ratio=isr, temperature=0.7, **opts)
    h = torch.tensor(hidden, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    logits = (h @ w.T + bt) / 0.7
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(-1, torch.tensor(ids)[..., None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
    loss, g_lp, _, _ = trl_loss(lp.detach().numpy(), adv, mask, old_logps=old.astype(np.float64),
                                ref_logps=ref.astype(np.float64), entropies=ent.detach().numpy(),
                                importance_sampling_ratio=None if isr is None else isr.astype(np.float64), **opts)
    lp.backward(torch.tensor(g_lp))
    assert r.loss == pytest.approx(loss, rel=1e-4, abs=1e-5)
    assert _rel(r.grad_hidden, h.grad.numpy()) <= 1e-4
    assert _rel(r.grad_weight, w.grad.numpy()) <= 1e-4
    assert _rel(r.grad_bias, bt.grad.numpy()) <= 1e-4
    np.testing.assert_allclose(r.log_probs, lp.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r.entropy, ent.detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("schedule", ("3gemm-blocks-of-2", "4gemm"))
@pytest.mark.parametrize("quantile", (1.0, 0.5))
@pytest.mark.parametrize("loss_type", ("grpo", "bnpo", "dapo"))
def test_entropy_options(schedule, quantile, loss_type):
    hidden, weight, b, ids, mask, adv, rng = _problem(7, bias=True)
    old, ref = _old_ref(rng, hidden, weight, b, ids)
    opts = dict(loss_type=loss_type, top_entropy_quantile=quantile)
    r = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old, entropy_coef=0.01,
                                          scratch_budget=_BUDGETS[schedule](*ids.shape, *weight.shape[::-1]), **opts)
    loss, gh, gw, gb, _ = _composed(hidden, weight, b, ids, mask, adv, old, None, opts, entropy_coef=0.01)
    assert abs(r.loss - loss) <= 1e-5 * max(1.0, abs(loss))
    for a, e in ((r.grad_hidden, gh), (r.grad_weight, gw), (r.grad_bias, gb)):
        assert _rel(a, e) <= 1e-4
    assert r.metrics["entropy_term"] != 0.0


@pytest.mark.parametrize("schedule", ("3gemm-blocks-of-2", "4gemm"))
def test_head_options_softcap_scale_temperature(schedule):
    hidden, weight, b, ids, mask, adv, rng = _problem(11, bias=True)
    old, _ = _old_ref(rng, hidden, weight, b, ids)
    head = dict(temperature=0.8, logit_scale=1.7, final_logit_softcapping=3.0)
    r = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old, loss_type="grpo",
                                          importance_sampling_level="sequence",
                                          scratch_budget=_BUDGETS[schedule](*ids.shape, *weight.shape[::-1]), **head)
    h = torch.tensor(hidden, requires_grad=True)
    w = torch.tensor(weight, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    lp, ent = grpo_swift.torch.fused_log_probs(h, w, torch.tensor(ids), bias=bt, **head)
    ref = grpo_swift.grpo_loss(lp.detach().numpy(), adv, mask, old_logps=old, loss_type="grpo",
                               importance_sampling_level="sequence")
    lp.backward(torch.tensor(ref.grad))
    assert abs(r.loss - ref.loss) <= 1e-5 * max(1.0, abs(ref.loss))
    for a, e in ((r.grad_hidden, h.grad), (r.grad_weight, w.grad), (r.grad_bias, bt.grad)):
        assert _rel(a, e.numpy()) <= 1e-4


def test_ref_from_hidden_equals_ref_logps():
    hidden, weight, b, ids, mask, adv, rng = _problem(8, bias=True)
    rh = (hidden + rng.normal(0, 0.05, hidden.shape)).astype(np.float32)
    rw = (weight + rng.normal(0, 0.02, weight.shape)).astype(np.float32)
    rb = (b + 0.1).astype(np.float32)
    ref = grpo_swift.fused_log_probs(rh, rw, ids, bias=rb, return_entropy=False)
    a = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, ref_hidden=rh, ref_weight=rw,
                                          ref_bias=rb, beta=0.1)
    c = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, ref_logps=ref, beta=0.1)
    assert a.loss == c.loss and a.metrics["kl"] == c.metrics["kl"] and a.metrics["kl"] > 0
    np.testing.assert_array_equal(a.grad_weight, c.grad_weight)


def test_flat_hidden_and_compute_grad_false():
    hidden, weight, b, ids, mask, adv, _ = _problem(9)
    a = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, loss_type="grpo")
    c = grpo_swift.fused_linear_grpo_loss(hidden.reshape(-1, hidden.shape[-1]), weight, ids, mask, adv,
                                          loss_type="grpo")
    assert a.loss == c.loss and c.grad_hidden.shape == (hidden.shape[0] * hidden.shape[1], hidden.shape[2])
    np.testing.assert_array_equal(a.grad_hidden.reshape(c.grad_hidden.shape), c.grad_hidden)
    d = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, loss_type="grpo", compute_grad=False)
    assert d.loss == a.loss and d.grad_hidden is None and d.grad_weight is None


def test_inputs_not_mutated_and_thread_count_determinism():
    hidden, weight, b, ids, mask, adv, rng = _problem(10, B=6, T=9, H=40, V=301, bias=True)
    old, _ = _old_ref(rng, hidden, weight, b, ids)
    copies = [x.copy() for x in (hidden, weight, b, ids, mask, adv, old)]
    n0 = grpo_swift.get_num_threads()
    try:
        res = []
        for n in (1, 2, 3):
            grpo_swift.set_num_threads(n)
            res.append(grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old,
                                                         tile_rows=16, tile_cols=64, loss_type="bnpo"))
    finally:
        grpo_swift.set_num_threads(n0)
    res.append(grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old,
                                                 scratch_budget=1, loss_type="bnpo"))  # 4-GEMM
    np.testing.assert_allclose(res[-1].grad_weight, res[0].grad_weight, rtol=0,
                               atol=1e-5 * np.abs(res[0].grad_weight).max())
    res.pop()
    for n in (1, 3):
        grpo_swift.set_num_threads(n)
        try:
            res.append(grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, bias=b, old_logps=old,
                                                         scratch_budget=2 * 9 * 301 * 4, loss_type="bnpo"))
        finally:
            grpo_swift.set_num_threads(n0)
    np.testing.assert_array_equal(res[-1].grad_weight, res[-2].grad_weight)
    np.testing.assert_array_equal(res[-1].grad_hidden, res[-2].grad_hidden)
    res = res[:3]
    for r in res[1:]:
        assert r.loss == res[0].loss
        np.testing.assert_array_equal(r.grad_hidden, res[0].grad_hidden)
        np.testing.assert_array_equal(r.grad_weight, res[0].grad_weight)
        np.testing.assert_array_equal(r.grad_bias, res[0].grad_bias)
    for x, c in zip((hidden, weight, b, ids, mask, adv, old), copies):
        np.testing.assert_array_equal(x, c)


# ---- torch ---------------------------------------------------------------------------------


def _liger_inputs(seed, dtype=torch.float32, bias=True):
    hidden, weight, b, ids, mask, adv, rng = _problem(seed, bias=bias)
    old, ref = _old_ref(rng, hidden, weight, b, ids)
    B, T, H = hidden.shape
    x = torch.tensor(hidden.reshape(B * T, H)).to(dtype).requires_grad_()
    w = torch.tensor(weight).to(dtype).requires_grad_()
    bt = torch.tensor(b).to(dtype).requires_grad_() if bias else None
    return x, w, bt, torch.tensor(ids), torch.tensor(mask), torch.tensor(adv), torch.tensor(old), torch.tensor(ref)


@pytest.mark.parametrize("loss_type", ("grpo", "dapo", "bnpo", "dr_grpo", "cispo", "sapo"))
@pytest.mark.parametrize("level", ("token", "sequence"))
def test_torch_module_liger_signature(loss_type, level):
    x, w, b, ids, mask, adv, old, ref = _liger_inputs(20 + len(loss_type))
    kw = dict(max_completion_length=7) if loss_type == "dr_grpo" else {}
    if loss_type == "cispo":
        kw["epsilon_high"] = 1.1
    mod = FusedLinearGRPOLoss(beta=0.04, loss_type=loss_type, importance_sampling_level=level, temperature=0.9, **kw)
    loss, metrics = mod(x, w, ids, mask, adv, b, ref_per_token_logps=ref, old_per_token_logps=old)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and len(metrics) == 2
    (2.5 * loss).backward()
    # reference: composed torch path with the same options
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    lp, ent = grpo_swift.torch.fused_log_probs(x2.reshape(4, 7, -1), w2, ids, bias=b2, temperature=0.9)
    eh = kw.get("epsilon_high", 0.2)
    r = grpo_swift.grpo_loss(lp.detach().numpy(), adv.numpy(), mask.numpy(), old_logps=old.numpy(),
                             ref_logps=ref.numpy(), beta=0.04, loss_type=loss_type, importance_sampling_level=level,
                             epsilon_high=eh, max_completion_length=kw.get("max_completion_length"))
    (lp * torch.tensor(r.grad) * 2.5).sum().backward()
    assert float(loss.detach()) == pytest.approx(r.loss, rel=1e-5, abs=1e-6)
    assert _rel(x.grad.numpy(), x2.grad.numpy()) <= 1e-4
    assert _rel(w.grad.numpy(), w2.grad.numpy()) <= 1e-4
    assert _rel(b.grad.numpy(), b2.grad.numpy()) <= 1e-4
    assert float(metrics[0]) == pytest.approx(r.metrics["kl"], rel=1e-5)
    assert mod.last_metrics["policy_loss"] == pytest.approx(r.metrics["policy_loss"], rel=1e-5, abs=1e-7)


def test_torch_module_ref_input_is_ratio_and_no_ref():
    x, w, b, ids, mask, adv, old, ref = _liger_inputs(31)
    rx = (x.detach() + 0.05).clone()
    rw = (w.detach() * 0.98).clone()
    isr = torch.exp(torch.randn(4, 7, generator=torch.Generator().manual_seed(0)) * 0.1)
    mod = FusedLinearGRPOLoss(beta=0.1, loss_type="dapo")
    loss, metrics = mod(x, w, ids, mask, adv, b, old_per_token_logps=old, ref_input=rx, ref_weight=rw, ref_bias=b,
                        vllm_is_ratio=isr, num_items_in_batch=40)
    ref2 = grpo_swift.fused_log_probs(rx.reshape(4, 7, -1).numpy(), rw.numpy(), ids.numpy(), bias=b.detach().numpy(),
                                      return_entropy=False)
    lp = grpo_swift.fused_log_probs(x.detach().reshape(4, 7, -1).numpy(), w.detach().numpy(), ids.numpy(),
                                    bias=b.detach().numpy(), return_entropy=False)
    r = grpo_swift.grpo_loss(lp, adv.numpy(), mask.numpy(), old_logps=old.numpy(), ref_logps=ref2, beta=0.1,
                             importance_sampling_ratio=isr.numpy(), num_items_in_batch=40)
    assert float(loss.detach()) == pytest.approx(r.loss, rel=1e-5, abs=1e-7)
    assert float(metrics[0]) == pytest.approx(r.metrics["kl"], rel=1e-5)
    # no reference: Liger uses the policy itself (KL 0)
    nomod = FusedLinearGRPOLoss(beta=0.1, loss_type="dapo", use_ref_model=False)
    loss0, m0 = nomod(x, w, ids, mask, adv, b, old_per_token_logps=old)
    r0 = grpo_swift.grpo_loss(lp, adv.numpy(), mask.numpy(), old_logps=old.numpy())
    assert float(loss0) == pytest.approx(r0.loss, rel=1e-5, abs=1e-7) and float(m0[0]) == 0.0


def test_torch_keyword_form_and_no_grad():
    x, w, b, ids, mask, adv, old, _ = _liger_inputs(32)
    loss, metrics = torch_fused(x.reshape(4, 7, -1), w, ids, mask, adv, bias=b, old_logps=old, loss_type="luspo",
                                importance_sampling_level="sequence")
    loss.backward()
    assert x.grad is not None and w.grad is not None and b.grad is not None
    assert metrics["log_probs"].shape == (4, 7)
    with torch.no_grad():
        l2, _ = torch_fused(x, w, ids, mask, adv, bias=b, old_logps=old, loss_type="luspo",
                            importance_sampling_level="sequence")
    assert float(l2) == float(loss)


def test_torch_bf16_exact_widening_and_close_to_float32():
    """bf16 hidden/weight: the kernel widens them exactly to float32, so the result equals the
    float32 path on the bf16-rounded values, and is within a bf16-scale tolerance of float32."""
    x, w, b, ids, mask, adv, old, ref = _liger_inputs(33, bias=False)
    xb, wb = (t.detach().to(torch.bfloat16).requires_grad_() for t in (x, w))
    mod = FusedLinearGRPOLoss(beta=0.04, loss_type="grpo")
    lb, mb = mod(xb, wb, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old)
    lb.backward()
    assert xb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    xr, wr = (t.detach().to(torch.float32).requires_grad_() for t in (xb, wb))
    lr, _ = mod(xr, wr, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old)
    lr.backward()
    assert float(lb) == float(lr)  # exact widening: same float32 arithmetic
    torch.testing.assert_close(xb.grad, xr.grad.to(torch.bfloat16), rtol=0, atol=0)
    lf, mf = mod(x, w, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old)
    lf.backward()
    # bf16 vs float32 inputs: atol = rtol = 1e-1 (bf16 scale) ...
    torch.testing.assert_close(lb.float(), lf, atol=1e-1, rtol=1e-1)
    torch.testing.assert_close(xb.grad.float(), x.grad, atol=1e-1, rtol=1e-1)
    torch.testing.assert_close(wb.grad.float(), w.grad, atol=1e-1, rtol=1e-1)
    # ... and Liger-Kernel's own bf16 tolerances (test/chunked_loss/test_grpo_loss.py: atol 5e-2,
    # rtol 5e-1 on the loss, the metrics and the gradients), against the float32-input run.
    assert len(mb) == len(mf) == 2  # kl (beta != 0), clip ratio
    for ours, ref32 in ((lb.float(), lf), *zip(mb, mf), (xb.grad.float(), x.grad), (wb.grad.float(), w.grad)):
        torch.testing.assert_close(ours.float(), ref32.float(), atol=5e-2, rtol=5e-1)


# ---- Liger-Kernel's own LigerFusedLinearGRPOLoss (pure torch on CPU; liger-kernel is in the test extras) ----

_NO_LIGER = importlib.util.find_spec("liger_kernel") is None
_LIGER_SKIP = "liger-kernel is not installed (pip install liger-kernel; it is in grpo-swift's test extras)"


def _liger_pair(loss_type, level, beta, **kw):
    """Liger's module (eager: compiled=False) and ours, constructed with the same arguments."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    args = dict(beta=beta, loss_type=loss_type, importance_sampling_level=level, **kw)
    if loss_type == "dr_grpo":
        args["max_completion_length"] = 7
    if loss_type == "cispo":
        args["epsilon_high"] = 1.1  # cispo clips the ratio at epsilon_high itself (TRL and Liger)
    return LigerFusedLinearGRPOLoss(compiled=False, **args), FusedLinearGRPOLoss(**args)


def _run_both(theirs, ours, seed, bias, **call):
    """Both modules on the same (B, T, H) inputs; returns (loss, metrics, grads) of each."""
    x, w, b, ids, mask, adv, old, ref = _liger_inputs(seed, bias=bias)
    call.setdefault("old_per_token_logps", old)
    if call.pop("with_ref", True):
        call.setdefault("ref_per_token_logps", ref)
    out = []
    for mod in (theirs, ours):
        xi, wi = x.detach().reshape(4, 7, -1).clone().requires_grad_(), w.detach().clone().requires_grad_()
        bi = None if b is None else b.detach().clone().requires_grad_()
        loss, metrics = mod(xi, wi, ids, mask, adv, bi, **call)
        (1.5 * loss).backward()  # a non-unit incoming gradient
        out.append((loss.detach(), [float(m) for m in metrics],
                    [t.grad.numpy() for t in (xi, wi, bi) if t is not None]))
    return out


# Liger refuses sequence-level importance sampling for cispo/sapo/vespo (TRL 1.16 and grpo_swift
# accept it); Liger's luspo is the earlier TRL formula (per_token_loss * mask.sum(1)).mean(), which
# does not mask the per-token loss, while TRL 1.16 computes (per_token_loss * mask).sum(-1).mean():
# they agree only when the per-token loss is constant over each sequence (sequence level, beta 0).
def _liger_differs(loss_type, level, beta):
    return loss_type == "luspo" and (level == "token" or beta != 0)


@pytest.mark.skipif(_NO_LIGER, reason=_LIGER_SKIP)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ("token", "sequence"))
@pytest.mark.parametrize("beta", (0.0, 0.04))
def test_matches_liger_kernel(loss_type, level, beta):
    """Loss, metrics ([kl,] clip ratio) and gradients against liger_kernel's own module."""
    theirs, ours = _liger_pair(loss_type, level, beta, temperature=0.9)
    if level == "sequence" and loss_type in ("cispo", "sapo", "vespo"):
        with pytest.raises(ValueError, match="Sequence-level importance sampling is not supported"):
            _run_both(theirs, ours, 40, True)
        return
    seed = 40 + LOSS_TYPES.index(loss_type)
    (l1, m1, g1), (l2, m2, g2) = _run_both(theirs, ours, seed, bias=LOSS_TYPES.index(loss_type) % 2 == 0)
    if _liger_differs(loss_type, level, beta):
        assert abs(float(l1) - float(l2)) > 1e-4 * max(1.0, abs(float(l2)))  # documented, not noise
        return
    assert float(l2) == pytest.approx(float(l1), rel=1e-5, abs=1e-6)
    assert len(m1) == len(m2)
    # At sequence level Liger weights its clip ratio by tokens ((is_clipped * mask).sum() / mask.sum());
    # TRL 1.16 (and grpo_swift) count sequences (clipped sequences / B): compare the KL metric only.
    for a, b in zip(m1, m2 if level == "token" else m2[:-1]):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    for a, b in zip(g1, g2):
        assert _rel(b, a) <= 1e-4


@pytest.mark.skipif(_NO_LIGER, reason=_LIGER_SKIP)
@pytest.mark.parametrize("loss_type", ("grpo", "dapo", "bnpo", "cispo", "vespo"))
def test_matches_liger_kernel_options(loss_type):
    """delta, bias-corrected KL, the vLLM IS ratio, num_items_in_batch and a reference from
    (ref_input, ref_weight, ref_bias), against liger_kernel's module."""
    kw = dict(use_bias_correction_kl=True)
    if loss_type not in ("cispo", "vespo"):
        kw["delta"] = 1.3
    theirs, ours = _liger_pair(loss_type, "token", 0.1, **kw)
    x, w, b, *_ = _liger_inputs(60)
    g = torch.Generator().manual_seed(1)
    isr = torch.exp(torch.randn(4, 7, generator=g) * 0.1)
    # Padding holds ratio 1, as TRL's pipeline produces: for vespo, Liger and TRL 1.16 add log(ratio)
    # over all T positions, grpo_swift over valid tokens only (its documented deviation).
    isr[_liger_inputs(60)[4] == 0] = 1.0
    call = dict(ref_input=(x.detach() + 0.05).reshape(4, 7, -1), ref_weight=w.detach() * 0.98,
                ref_bias=b.detach(), vllm_is_ratio=isr, num_items_in_batch=40, with_ref=False)
    (l1, m1, g1), (l2, m2, g2) = _run_both(theirs, ours, 60, True, **call)
    assert float(l2) == pytest.approx(float(l1), rel=1e-5, abs=1e-6)
    for a, b_ in zip(m1, m2):
        assert b_ == pytest.approx(a, rel=1e-5, abs=1e-6)
    for a, b_ in zip(g1, g2):
        assert _rel(b_, a) <= 1e-4


@pytest.mark.skipif(_NO_LIGER, reason=_LIGER_SKIP)
def test_matches_liger_kernel_without_reference():
    """use_ref_model=False (or no reference given): both use the policy itself, KL 0."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    theirs = LigerFusedLinearGRPOLoss(beta=0.04, loss_type="grpo", use_ref_model=False, compiled=False)
    ours = FusedLinearGRPOLoss(beta=0.04, loss_type="grpo", use_ref_model=False)
    (l1, m1, g1), (l2, m2, g2) = _run_both(theirs, ours, 61, False, with_ref=False)
    assert float(l2) == pytest.approx(float(l1), rel=1e-5, abs=1e-6)
    assert m2 == pytest.approx(m1, rel=1e-5, abs=1e-6) and m2[0] == 0.0
    for a, b in zip(g1, g2):
        assert _rel(b, a) <= 1e-4


# ---- errors and memory ---------------------------------------------------------------------


def test_errors_name_function_and_argument():
    hidden, weight, b, ids, mask, adv, _ = _problem(50)
    f = grpo_swift.fused_linear_grpo_loss
    with pytest.raises(TypeError, match="fused_linear_grpo_loss.*'hidden'.*float32"):
        f(hidden.astype(np.float64), weight, ids, mask, adv)
    with pytest.raises(ValueError, match="'weight'"):
        f(hidden, weight[:, :-1], ids, mask, adv)
    with pytest.raises(ValueError, match="'hidden'"):
        f(hidden[:, :-1], weight, ids, mask, adv)
    with pytest.raises(ValueError, match="beta"):
        f(hidden, weight, ids, mask, adv, beta=0.1)
    with pytest.raises(ValueError, match="'advantages'"):
        f(hidden, weight, ids, mask, adv[:-1])
    bad = ids.copy()
    bad[0, 0] = weight.shape[0]
    with pytest.raises(ValueError, match="fused_linear_grpo_loss"):
        f(hidden, weight, bad, mask, adv)
    bad[0, 0] = -100  # mask[:, 0] == 1: a valid position must be scored
    with pytest.raises(ValueError, match="negative"):
        f(hidden, weight, bad, mask, adv)
    m2 = mask.copy()
    m2[0, 0] = 0
    bad[0, 0] = -100  # fine where masked
    r = f(hidden, weight, bad, m2, adv)
    assert np.isfinite(r.loss)
    with pytest.raises(TypeError, match="unexpected keyword"):
        f(hidden, weight, ids, mask, adv, loss_typo="grpo")
    with pytest.raises(TypeError, match="FusedLinearGRPOLoss.forward.*'_input'|hidden"):
        FusedLinearGRPOLoss()(torch.tensor(hidden).double().numpy(), torch.tensor(weight), torch.tensor(ids),
                              torch.tensor(mask), torch.tensor(adv))


def test_scratch_is_bounded_by_the_budget():
    f = grpo_swift.fused_linear_loss_scratch_bytes
    budget = 256 << 20
    for v in (32768, 151936):
        b3 = f(16, 128, 896, v)  # 3-GEMM schedule: resident blocks of whole sequences
        assert b3 <= min(budget, 16 * 128 * v * 2) + 2048 * (24 + 16)  # default: <= half the N x V logits
        assert b3 < 16 * 128 * v * 4
        b4 = f(16, 128, 896, v, scratch_budget=1)  # 4-GEMM schedule: one 1024 x 4096 tile
        assert b4 == f(16, 128, 896, v, top_entropy_quantile=0.5) == f(16, 128, 896, v, bfloat16=True) - \
            (1024 + 4096) * 896 * 4 - 4096 * 4
        assert b4 < 20 << 20
    # per-row vectors grow with N, the tile does not
    assert f(32, 128, 896, 32768, scratch_budget=1) - f(16, 128, 896, 32768, scratch_budget=1) == 2048 * 24


def test_scratch_budget_peak_memory():
    """The 3-GEMM schedule maps at most the budget: check the process's peak RSS growth."""
    import resource
    import subprocess
    import sys
    code = (
        "import numpy as np, resource, grpo_swift\n"
        "rng = np.random.default_rng(0); B, T, H, V = 8, 64, 64, 16384\n"
        "h = rng.standard_normal((B, T, H), dtype=np.float32); w = rng.standard_normal((V, H), dtype=np.float32)\n"
        "ids = rng.integers(0, V, (B, T)); m = np.ones((B, T), np.uint8); a = rng.standard_normal(B).astype(np.float32)\n"
        "grpo_swift.fused_linear_grpo_loss(h[:1], w, ids[:1], m[:1], a[:1], scratch_budget=T * V * 4)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "r = grpo_swift.fused_linear_grpo_loss(h, w, ids, m, a, scratch_budget=2 * T * V * 4)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grown_kib = int(out.stdout.strip())
    full_logits_kib = 8 * 64 * 16384 * 4 // 1024  # 32 MiB
    # budget 8 MiB (+ the 4 MiB grad_weight output, per-row vectors, allocator slack)
    assert grown_kib < full_logits_kib // 2, grown_kib
