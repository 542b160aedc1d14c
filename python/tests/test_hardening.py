"""Hardening of every public kernel (numpy API, estimators, fused linear loss, torch layer): real
concurrency (the GIL is released), no leaks, bitwise determinism across kernel thread counts,
inputs never mutated, size products that overflow refused and more than 2^31 elements per call handled.

Sizes are bounded so this file runs in a few minutes; GRPO_HARDENING_SCALE=10 runs the full
budgets of issue 10 (8 threads x 1000 calls, 100,000 calls per kernel for the leak check;
`make hardening` does).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Callable

import numpy as np
import pytest

import grpo_swift
from conftest import has_module

SCALE = float(os.environ.get("GRPO_HARDENING_SCALE", "1"))
HAS_TORCH = has_module("torch")


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, t, v, g = 6, 24, 97, 4
    logps = -rng.exponential(1.0, size=(b, t)).astype(np.float32)
    mask = rng.random((b, t)) < 0.8
    mask[2] = False  # a fully masked row
    rewards1 = rng.normal(size=b * g)
    rewards1[5] = np.nan  # an unscorable row (its group keeps 3 scorable rows)
    ids = rng.permutation(np.repeat(np.arange(b), g)).astype(np.int64)  # shuffled groups
    tok_mask = rng.random((b * g, t)) < 0.85
    tok_mask[:, 0] = True
    return {
        "rewards": rng.normal(size=(b * g, 2)),
        "rewards1": rewards1,
        "rewards_f32": rng.normal(size=b * g).astype(np.float32),
        "group_ids": ids,
        "lengths": tok_mask.sum(axis=1).astype(np.float64),
        "tok_mask": tok_mask,
        "tok_rewards": rng.normal(size=(b * g, t)),
        "logps": logps,
        "old": (logps + rng.normal(0, 0.1, size=(b, t))).astype(np.float32),
        "ref": (logps + rng.normal(0, 0.1, size=(b, t))).astype(np.float32),
        "adv": rng.normal(size=b).astype(np.float32),
        "mask": mask,
        "logits": rng.normal(0, 3, size=(b * t, v)).astype(np.float32),
        "index": rng.integers(0, v, size=b * t),
        "hidden": rng.normal(size=(b * t, 16)).astype(np.float32),
        "weight": rng.normal(0, 0.3, size=(v, 16)).astype(np.float32),
        "bias": rng.normal(0, 0.1, size=v).astype(np.float32),
        "ids_bt": rng.integers(0, v, size=(b, t)),
    }


def _loss_out(r) -> tuple:
    return (np.float64(r.loss), r.grad, np.array(sorted(r.metrics.items()), dtype=object)[:, 1].astype(np.float64))


def _fused_out(r) -> tuple:
    return (np.float64(r.loss), r.grad_hidden, r.grad_weight, r.grad_bias, r.log_probs, r.entropy,
            np.array([r.metrics[k] for k in sorted(r.metrics)], dtype=np.float64))


def _numpy_kernels(x: dict) -> list[tuple[str, Callable[[], tuple]]]:
    """(name, callable returning a tuple of arrays) for every numpy-level kernel."""
    gs = grpo_swift
    n_items = float(x["mask"].sum())
    return [
        ("group_advantages", lambda: tuple(gs.group_advantages(x["rewards"], 4, scale_rewards="batch"))),
        ("grpo_loss", lambda: _loss_out(gs.grpo_loss(
            x["logps"], x["adv"], x["mask"], old_logps=x["old"], ref_logps=x["ref"], beta=0.04,
            loss_type="dapo", num_items_in_batch=n_items))),
        ("grpo_loss_sequence", lambda: _loss_out(gs.grpo_loss(
            x["logps"], x["adv"], x["mask"], old_logps=x["old"], loss_type="grpo",
            importance_sampling_level="sequence"))),
        ("selective_log_softmax", lambda: tuple(gs.selective_log_softmax(
            x["logits"], x["index"], temperature=0.7, return_entropy=True))),
        ("fused_log_probs", lambda: tuple(np.asarray(a) for a in gs.fused_log_probs(
            x["hidden"], x["weight"], x["index"], temperature=0.9)[:2])),
        # estimators (explicit shuffled group ids and consecutive groups)
        ("advantages_grpo_batch", lambda: (gs.advantages(x["rewards1"], "grpo", group_ids=x["group_ids"],
                                                         scale_rewards="batch"),)),
        ("dr_grpo_advantages", lambda: (gs.dr_grpo_advantages(x["rewards1"], 4),)),
        ("rloo_advantages", lambda: (gs.rloo_advantages(x["rewards1"], group_ids=x["group_ids"],
                                                        normalize_advantages=True),)),
        ("opo_advantages", lambda: (gs.opo_advantages(x["rewards_f32"], 4, lengths=x["lengths"]),)),
        ("gpg_advantages", lambda: (gs.gpg_advantages(x["rewards1"], group_ids=x["group_ids"]),)),
        ("passk_advantages", lambda: (gs.passk_advantages(x["rewards_f32"], 4),)),
        ("reinforce_pp_advantages", lambda: (gs.reinforce_pp_advantages(x["tok_rewards"], x["tok_mask"],
                                                                        gamma=0.9),)),
        ("reinforce_pp_baseline_advantages", lambda: (gs.reinforce_pp_baseline_advantages(
            x["rewards1"], x["tok_mask"], group_ids=x["group_ids"]),)),
        ("zero_spread_groups", lambda: (gs.zero_spread_groups(x["rewards1"], group_ids=x["group_ids"]),
                                        gs.informative_rows(x["rewards_f32"], num_generations=4))),
        # fused linear loss: the 3-GEMM (resident) and the 4-GEMM schedule
        ("fused_linear_grpo_loss", lambda: _fused_out(gs.fused_linear_grpo_loss(
            x["hidden"], x["weight"], x["ids_bt"], x["mask"], x["adv"], bias=x["bias"], old_logps=x["old"],
            ref_logps=x["ref"], beta=0.04, loss_type="dapo"))),
        ("fused_linear_grpo_loss_4gemm", lambda: _fused_out(gs.fused_linear_grpo_loss(
            x["hidden"], x["weight"], x["ids_bt"], x["mask"], x["adv"], old_logps=x["old"], loss_type="grpo",
            temperature=0.8, scratch_budget=64))),
    ]


def _torch_inputs(x: dict) -> dict:
    """Torch twins of the numpy inputs: float32 and bfloat16 leaves that require grad."""
    import torch

    t = {k: torch.from_numpy(np.array(v)) for k, v in x.items()}
    out = {k: v for k, v in t.items() if v.dtype in (torch.int64, torch.bool, torch.float64)}
    for k in ("logps", "old", "ref", "adv"):
        out[k] = t[k]
    for k in ("logps", "logits", "hidden", "weight", "bias"):
        out[k + "_g"] = t[k].clone().requires_grad_()
        out[k + "_bf16"] = t[k].to(torch.bfloat16).requires_grad_()
    return out


def _tensor_bits(*ts) -> tuple:
    import torch

    out = []
    for v in ts:
        if isinstance(v, Mapping):  # dicts and grpo_swift.torch.LossMetrics
            out.extend(_tensor_bits(*[v[k] for k in sorted(v)]))
        elif isinstance(v, (list, tuple)):
            out.extend(_tensor_bits(*v))
        elif isinstance(v, torch.Tensor):
            out.append(v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().copy())
        else:
            out.append(np.asarray(v, dtype=np.float64))
    return tuple(out)


def _torch_kernels(x: dict) -> list[tuple[str, Callable[[], tuple]]]:
    """Forward + backward of every grpo_swift.torch entry point (gradients through
    torch.autograd.grad: nothing accumulates into shared leaves across threads)."""
    import torch

    import grpo_swift.torch as gt

    t = _torch_inputs(x)
    grad = torch.autograd.grad

    def loss(dtype_key):
        lp = t[dtype_key]
        old = t["old"].to(lp.dtype)
        ref = t["ref"].to(lp.dtype)
        value, metrics = gt.grpo_loss(lp, t["adv"], t["mask"], old_per_token_logps=old, ref_per_token_logps=ref,
                                      beta=0.04, loss_type="dapo")
        return _tensor_bits(value, grad(value, lp), metrics)

    def sls(key):
        logits = t[key]
        lp, ent = gt.selective_log_softmax(logits.reshape(6, 24, -1), t["index"].reshape(6, 24), temperature=0.7,
                                           return_entropy=True)
        return _tensor_bits(lp, ent, grad(lp.sum() + 0.5 * ent.sum(), logits))

    def flp(suffix):
        h, w, b = t["hidden" + suffix], t["weight" + suffix], t["bias" + suffix]
        lp, ent = gt.fused_log_probs(h, w, t["index"], bias=b, temperature=0.9)
        return _tensor_bits(lp, ent, grad(lp.sum() + 0.3 * ent.sum(), (h, w, b)))

    def fused_module(suffix):
        h, w = t["hidden" + suffix], t["weight" + suffix]
        module = gt.FusedLinearGRPOLoss(beta=0.04, loss_type="dapo")
        value, metrics = module(h, w, t["ids_bt"], t["mask"], t["adv"], ref_per_token_logps=t["ref"],
                                old_per_token_logps=t["old"])
        return _tensor_bits(value, metrics, grad(value, (h, w)))

    def fused_fn():
        h, w, b = t["hidden_g"], t["weight_g"], t["bias_g"]
        value, metrics = gt.fused_linear_grpo_loss(h, w, t["ids_bt"], t["mask"], t["adv"], bias=b,
                                                   old_logps=t["old"], loss_type="grpo",
                                                   importance_sampling_level="sequence")
        return _tensor_bits(value, metrics["log_probs"], metrics["entropy_per_token"], grad(value, (h, w, b)))

    return [
        ("torch_grpo_loss", lambda: loss("logps_g")),
        ("torch_grpo_loss_bf16", lambda: loss("logps_bf16")),
        ("torch_selective_log_softmax", lambda: sls("logits_g")),
        ("torch_selective_log_softmax_bf16", lambda: sls("logits_bf16")),
        ("torch_fused_log_probs", lambda: flp("_g")),
        ("torch_fused_log_probs_bf16", lambda: flp("_bf16")),
        ("torch_group_advantages", lambda: _tensor_bits(tuple(gt.group_advantages(t["rewards"], 4)))),
        ("torch_FusedLinearGRPOLoss", lambda: fused_module("_g")),
        ("torch_FusedLinearGRPOLoss_bf16", lambda: fused_module("_bf16")),
        ("torch_fused_linear_grpo_loss", fused_fn),
        # the estimator front doors (grpo_swift.torch.advantages and friends)
        ("torch_advantages_rloo", lambda: _tensor_bits(gt.advantages(
            t["rewards1"], "rloo", group_ids=t["group_ids"], normalize_advantages=True))),
        ("torch_gpg_advantages", lambda: _tensor_bits(gt.gpg_advantages(t["rewards1"], group_ids=t["group_ids"]))),
        ("torch_reinforce_pp_advantages", lambda: _tensor_bits(gt.reinforce_pp_advantages(
            t["tok_rewards"], t["tok_mask"], gamma=0.9, return_returns=True))),
        ("torch_zero_spread_groups", lambda: _tensor_bits(
            gt.zero_spread_groups(t["rewards1"], group_ids=t["group_ids"]),
            gt.informative_rows(t["rewards1"], num_generations=4))),
    ]


def _all_kernels() -> list[tuple[str, Callable[[], tuple]]]:
    x = _inputs()
    return _numpy_kernels(x) + (_torch_kernels(x) if HAS_TORCH else [])


KERNELS = _all_kernels()
IDS = [k[0] for k in KERNELS]


def _bits(out) -> bytes:
    return b"".join(np.ascontiguousarray(a).tobytes() for a in out if a is not None)


@pytest.mark.parametrize("name,call", KERNELS, ids=IDS)
def test_concurrent_python_threads_are_bitwise_equal(name, call):
    expected = _bits(call())
    calls = max(20, int(100 * SCALE))
    errors: list[str] = []

    def worker():
        try:
            for _ in range(calls):
                if _bits(call()) != expected:
                    errors.append("mismatch")
                    return
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    assert not any(th.is_alive() for th in threads), "a worker hung"
    assert not errors, errors[:3]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.skipif(os.environ.get("GRPO_SWIFT_SANITIZE") == "1",
                    reason="AddressSanitizer's quarantine holds freed memory: RSS is not a leak signal")
@pytest.mark.parametrize("name,call", KERNELS, ids=IDS)
def test_no_memory_growth(name, call):
    # Torch kernels: 1/5 of the calls in the normal suite (each is a forward + backward through
    # autograd, ~10x a numpy call); the full budget (SCALE=10) runs 100,000 calls of every kernel.
    calls = int(10000 * SCALE) if SCALE >= 10 or not name.startswith("torch_") else int(2000 * SCALE)
    for _ in range(max(200, calls // 20)):  # warm-up: allocator pools, lazily initialised state
        call()
    before = _rss_bytes()
    for _ in range(calls):
        call()
    growth = _rss_bytes() - before
    assert growth < 1 << 20, f"RSS grew by {growth} bytes over {calls} calls"


@pytest.mark.parametrize("name,call", KERNELS, ids=IDS)
def test_thread_count_does_not_change_bits(name, call):
    before = grpo_swift.get_num_threads()
    try:
        results = []
        for n in (1, 2, 4):
            grpo_swift.set_num_threads(n)
            results.append(_bits(call()))
    finally:
        grpo_swift.set_num_threads(before)
    assert results[0] == results[1] == results[2]


def test_numpy_inputs_are_never_mutated():
    """Every numpy kernel on one set of inputs (made read-only as well): the bytes are unchanged."""
    x = _inputs(1)
    snapshot = {k: v.copy() for k, v in x.items()}
    for v in x.values():
        v.setflags(write=False)
    for _, call in _numpy_kernels(x):
        call()
    for k, v in snapshot.items():
        assert x[k].tobytes() == v.tobytes(), f"input '{k}' was mutated"


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_inputs_are_never_mutated():
    """Every torch kernel, forward and backward (including .backward() into leaves that require
    grad): no input tensor's bytes change, and gradients land only in .grad."""
    import torch

    x = _inputs(2)
    t = _torch_inputs(x)
    snapshot = {k: v.detach().clone() for k, v in t.items()}
    kernels = _torch_kernels(x)
    # _torch_kernels built its own tensors from x: run them, then the same entry points on `t`.
    for _, call in kernels:
        call()
    import grpo_swift.torch as gt

    lp, _ = gt.grpo_loss(t["logps_bf16"], t["adv"], t["mask"], old_per_token_logps=t["old"].bfloat16(),
                         loss_type="bnpo")
    lp.backward()
    a, b = gt.selective_log_softmax(t["logits_g"], t["index"], return_entropy=True)
    (a.sum() + b.sum()).backward()
    a, b = gt.fused_log_probs(t["hidden_bf16"], t["weight_bf16"], t["index"], bias=t["bias_bf16"])
    (a.sum() + b.sum()).backward()
    value, _ = gt.FusedLinearGRPOLoss(beta=0.0)(t["hidden_g"], t["weight_g"], t["ids_bt"], t["mask"], t["adv"],
                                              bias=t["bias_g"])
    value.backward()
    gt.group_advantages(t["rewards"], 4)
    gt.advantages(t["rewards1"], "opo", group_ids=t["group_ids"], lengths=t["lengths"])
    gt.reinforce_pp_baseline_advantages(t["rewards1"], t["tok_mask"], group_ids=t["group_ids"])
    gt.informative_rows(t["rewards1"], group_ids=t["group_ids"])
    for k, v in snapshot.items():
        now = t[k].detach()
        assert now.dtype == v.dtype and torch.equal(now.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), \
            f"input '{k}' was mutated"
    for k in ("logps_bf16", "logits_g", "hidden_bf16", "weight_bf16", "bias_bf16", "hidden_g", "weight_g", "bias_g"):
        assert t[k].grad is not None and t[k].grad.shape == t[k].shape, k
    # the kernels' own tensors (built from x) are unchanged too
    for k, v in _inputs(2).items():
        assert x[k].tobytes() == v.tobytes(), f"numpy input '{k}' was mutated"


# -- sizes ---------------------------------------------------------------------------------------

def test_size_products_that_overflow_are_refused_before_allocation():
    # Products of sizes beyond int64 are refused with the product named, nothing allocated.
    for call in (lambda: grpo_swift.fused_log_probs_scratch_bytes(2**62, 4096, 2),
                 lambda: grpo_swift.fused_linear_loss_scratch_bytes(2**62, 4, 896, 151936),
                 lambda: grpo_swift.fused_linear_loss_scratch_bytes(2**30, 2**30, 1, 1)):
        with pytest.raises((OverflowError, ValueError), match="overflow"):
            call()


def test_more_than_2_31_logits_in_one_call_are_handled():
    """The fused LM head over N x V = (2^15 + 97) x 2^16 > 2^31 logits (never materialised; H = 1),
    forward and backward: every row equals its closed form, so no 32-bit index wraps.
    logits_ij = s_i * j / V: the log-sum-exp over j is a geometric series and d lp_i / d s_i =
    (y_i - E[j]) / V. The slopes repeat with period 97 rows and the labels are spread, so a
    wrapped row or column offset shows. About 10 s on 2 cores."""
    n, v = 2**15 + 97, 2**16
    assert n * v > 2**31
    rows = np.arange(n, dtype=np.float64)
    s = ((rows % 97) - 48.0) / 8.0          # slopes in [-6, 6] (0 included)
    y = ((rows * 40503) % v).astype(np.int64)
    hidden = s.astype(np.float32)[:, None]
    weight = (np.arange(v, dtype=np.float64) / v).astype(np.float32)[:, None]  # exact: j / 2^16
    fwd = grpo_swift.fused_log_probs_forward(hidden, weight, y)
    step = s / v                             # logits_ij = step_i * j
    with np.errstate(divide="ignore", invalid="ignore"):
        q, qv = np.expm1(step), np.expm1(step * v)   # e^step - 1, e^(step V) - 1
        lse = np.where(step == 0, np.log(v), np.log(qv / q))
        # E[j] under p_j ~ e^(step j): q'/(1-q') - V q'^V / (1 - q'^V) with q' = e^step
        mean_j = np.where(step == 0, (v - 1) / 2, (q + 1) / -q - v * (qv + 1) / -qv)
    np.testing.assert_allclose(fwd.log_probs, s * (y / v) - lse, rtol=0, atol=2e-3)
    np.testing.assert_allclose(fwd.logsumexp, lse, rtol=0, atol=2e-3)
    g_hidden, g_weight, _ = grpo_swift.fused_log_probs_backward(hidden, weight, y, np.ones(n, np.float32),
                                                                logsumexp=fwd.logsumexp)
    np.testing.assert_allclose(g_hidden[:, 0], (y - mean_j) / v, rtol=0, atol=2e-3)
    assert g_weight.shape == (v, 1) and np.isfinite(g_weight).all()
