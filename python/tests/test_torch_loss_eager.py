"""The eager fast path of grpo_swift.torch.grpo_loss (issue 4's speed work): the same bits as the
custom op, the gradient buffer handed to autograd without a copy, a second backward through the
same graph recomputed (retain_graph, autograd.grad twice) and never aliased, lazily built metrics,
one-pass mask conversion and float32 -> bf16/f16 gradient rounding in native code, and the
shared custom-op helper's eager/compiled dispatch for group_advantages."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import grpo_swift  # noqa: E402
import grpo_swift.torch as gst  # noqa: E402
from grpo_swift import _native  # noqa: E402
from grpo_swift.torch import _loss as tloss  # noqa: E402

from test_torch_loss import options, problem, spy_kernel_calls  # noqa: E402

CASES = [
    dict(loss_type="dapo", beta=0.04),
    dict(loss_type="grpo", beta=0.04, entropy_coef=0.1, importance_sampling_level="sequence"),
    dict(loss_type="cispo", epsilon_high=1.1, entropy_coef=-0.05, top_entropy_quantile=0.5),
    dict(loss_type="sapo", off_policy_mask_threshold=0.05, use_bias_correction_kl=True, beta=0.1),
    dict(loss_type="vespo", gradient_accumulation_steps=2),
]


def _op_reference(p, opts, dtype, scale):
    """The custom op (what torch.compile runs) and its registered autograd formula."""
    cfg = grpo_swift.LossConfig(**options(**opts))
    ints, floats = tloss._split_config(cfg._native_args)
    lp = p["lp"].to(dtype).requires_grad_(True)
    ent = p["ent"].to(dtype).requires_grad_(True)
    isr = torch.ones(p["lp"].shape, dtype=p["adv"].dtype) if opts["loss_type"] == "vespo" else None
    loss, metrics, _, _ = tloss._policy_loss_op(lp, p["adv"], p["mask"], p["old"].to(dtype), p["ref"].to(dtype),
                                                p["samp"].to(dtype), ent, isr, None, ints, floats, True, "t")
    (loss * scale).backward()
    return loss, metrics, lp.grad, ent.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("scale", [1.0, -2.5])
def test_eager_path_equals_the_custom_op_bitwise(case, dtype, scale):
    p = problem(20 + case, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    opts = CASES[case]
    ref = _op_reference(p, opts, dtype, scale)
    lp = p["lp"].to(dtype).requires_grad_(True)
    ent = p["ent"].to(dtype).requires_grad_(True)
    isr = torch.ones(p["lp"].shape, dtype=p["adv"].dtype) if opts["loss_type"] == "vespo" else None
    loss, metrics = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"].to(dtype),
                                  ref_per_token_logps=p["ref"].to(dtype), sampling_logps=p["samp"].to(dtype),
                                  entropies=ent, importance_sampling_ratio=isr, **options(**opts))
    (loss * scale).backward()
    assert loss.dtype == ref[0].dtype and loss.item() == ref[0].item()
    for k in metrics:
        assert metrics[k].item() == ref[1][tloss._METRIC_INDEX[k]].item() or np.isnan(metrics[k].item()), k
    assert lp.grad.dtype == dtype and torch.equal(lp.grad, ref[2])
    if ref[3] is None:
        assert ent.grad is None
    else:
        assert ent.grad.dtype == dtype and torch.equal(ent.grad, ref[3])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in a)


def test_gradient_buffer_becomes_grad_without_a_copy(monkeypatch):
    p = problem(30)
    seen = spy_kernel_calls(monkeypatch)
    lp = p["lp"].clone().requires_grad_(True)
    loss, _ = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                            beta=0.04)
    loss.backward()
    assert len(seen) == 1 and lp.grad.data_ptr() == seen[0].grad
    # A second micro-batch accumulates into that buffer (it is lp.grad now, owned by autograd).
    loss, _ = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                            beta=0.04)
    first = lp.grad.clone()
    loss.backward()
    assert lp.grad.data_ptr() == seen[0].grad and torch.equal(lp.grad, 2 * first)


def test_second_backward_recomputes_and_never_aliases(monkeypatch):
    p = problem(31)
    kw = dict(old_per_token_logps=p["old"], ref_per_token_logps=p["ref"], entropies=None, beta=0.04,
              loss_type="bnpo")
    seen = spy_kernel_calls(monkeypatch)
    lp = p["lp"].clone().requires_grad_(True)
    loss, _ = gst.grpo_loss(lp, p["adv"], p["mask"], **kw)
    (g1,) = torch.autograd.grad(loss, lp, retain_graph=True)
    assert g1.data_ptr() == seen[0].grad
    expected = g1.clone()
    g1.mul_(100.0)  # the caller owns g1: changing it must not change the next backward
    (g2,) = torch.autograd.grad(loss * 2.0, lp, retain_graph=True)
    assert len(seen) == 2 and g2.data_ptr() != seen[0].grad  # recomputed by a second kernel call
    assert torch.equal(g2, 2.0 * expected)
    # retain_graph + .backward() twice accumulates exactly twice the gradient.
    lp2 = p["lp"].clone().requires_grad_(True)
    loss2, _ = gst.grpo_loss(lp2, p["adv"], p["mask"], **kw)
    loss2.backward(retain_graph=True)
    loss2.backward()
    assert torch.equal(lp2.grad, 2.0 * expected)
    # An input modified in place between two backward passes is detected (torch's saved-tensor check).
    lp3 = p["lp"].clone().requires_grad_(True)
    old = p["old"].clone()
    loss3, _ = gst.grpo_loss(lp3, p["adv"], p["mask"], old_per_token_logps=old, loss_type="bnpo")
    loss3.backward(retain_graph=True)
    old.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss3.backward()


def test_metrics_are_a_lazy_mapping_equal_to_the_numpy_api():
    p = problem(32)
    kw = options("dapo", beta=0.04, entropy_coef=0.1)
    lp = p["lp"].clone().requires_grad_(True)
    loss, metrics = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"],
                                  ref_per_token_logps=p["ref"], entropies=p["ent"], **kw)
    ref = grpo_swift.grpo_loss(p["lp"].numpy(), p["adv"].numpy(), p["mask"].numpy(), old_logps=p["old"].numpy(),
                               ref_logps=p["ref"].numpy(), entropies=p["ent"].numpy(), **kw)
    assert isinstance(metrics, Mapping) and isinstance(metrics, gst.LossMetrics)
    assert list(metrics) == list(ref.metrics) and len(metrics) == len(ref.metrics)
    assert "kl" in metrics and "vespo/phi_seq_mean" not in metrics
    assert metrics.vector.shape == (len(tloss._METRIC_FIELDS),) and metrics.vector.dtype == torch.float64
    for k, v in ref.metrics.items():
        t = metrics[k]
        assert t.shape == () and t.dtype == torch.float64 and metrics[k] is t, k
        assert t.item() == v or (np.isnan(v) and np.isnan(t.item())), k
    assert _same(metrics.to_dict(), ref.metrics) and dict(metrics).keys() == ref.metrics.keys()
    assert "clip_ratio/low_mean" in repr(metrics)
    with pytest.raises(KeyError):
        metrics["cispo_clip_ratio"]
    assert not metrics["kl"].requires_grad
    loss.backward()


@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.float32,
                                        torch.float64, torch.bfloat16, torch.float16])
def test_mask_conversion_in_one_native_pass(mask_dtype):
    p = problem(33)
    mask = p["mask"].to(mask_dtype)
    a, _ = gst.grpo_loss(p["lp"], p["adv"], mask, old_per_token_logps=p["old"])
    b, _ = gst.grpo_loss(p["lp"], p["adv"], p["mask"].bool(), old_per_token_logps=p["old"])
    assert a.item() == b.item()
    bad = mask.clone()
    bad[2, 3] = 2
    with pytest.raises(ValueError, match=r"grpo_loss\(\): argument 'completion_mask' must hold only 0 and 1, got 2"):
        gst.grpo_loss(p["lp"], p["adv"], bad)
    if mask_dtype.is_floating_point:
        bad[2, 3] = 0.5
        with pytest.raises(ValueError, match="must hold only 0 and 1, got 0.5"):
            gst.grpo_loss(p["lp"], p["adv"], bad)
        bad[2, 3] = float("nan")
        with pytest.raises(ValueError, match="must hold only 0 and 1, got nan"):
            gst.grpo_loss(p["lp"], p["adv"], bad)
    if mask_dtype == torch.int64:
        bad[2, 3] = -1
        with pytest.raises(ValueError, match="got -1"):
            gst.grpo_loss(p["lp"], p["adv"], bad)


def test_native_mask_u8_errors():
    out = np.empty(4, dtype=np.uint8)
    with pytest.raises(TypeError, match="must be an integer, bool, float32 or float64 mask"):
        _native.mask_u8("f", "m", np.zeros(4, dtype=np.complex64), out)
    with pytest.raises(ValueError, match="'out' must hold 4 elements"):
        _native.mask_u8("f", "m", np.zeros(4, dtype=np.int64), np.empty(3, dtype=np.uint8))
    _native.mask_u8("f", "m", np.array([0, 1, -0.0, 1.0]), out)
    assert out.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_native_convert_equals_torch_rounding(dtype):
    g = torch.Generator().manual_seed(34)
    x = torch.randn(4099, generator=g) * torch.logspace(-30, 30, 4099)
    x[:12] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 3.3895e38, 65504.0, 65520.0, 1e-45, 6e-8,
                           1.00390625, 1.005859375, -2.0078125])
    for scale in (1.0, -2.5, 3e-7):
        s = torch.tensor(scale, dtype=torch.float32)
        want = tloss._scale(s, x, dtype)  # the custom op's traceable formula
        out = torch.empty(x.shape, dtype=dtype)
        _native.convert_f32("t", x.numpy(), scale, tloss.buffer_of(out))
        assert torch.equal(out, want) or torch.equal(out.isnan(), want.isnan())
        assert torch.equal(out[~want.isnan()], want[~want.isnan()])
        grad = x.clone()
        got = tloss._scale_owned(s, grad, dtype)
        assert got.dtype == dtype and torch.equal(got[~want.isnan()], want[~want.isnan()])
    with pytest.raises(TypeError, match="'out' must be a float32, float16 or bfloat16 buffer"):
        _native.convert_f32("t", x.numpy(), 1.0, np.empty(4099))
    with pytest.raises(ValueError, match="of 4099 elements"):
        _native.convert_f32("t", x.numpy(), 1.0, np.empty(5, dtype=np.float32))


def test_group_advantages_eager_skips_the_dispatcher_with_the_same_bits(monkeypatch):
    from grpo_swift.torch import _advantages as tadv

    r = torch.rand(16, 2, generator=torch.Generator().manual_seed(35), dtype=torch.float64)
    w = torch.tensor([1.0, 0.5], dtype=torch.float64)
    via_op = tadv._group_advantages_op(r, w, 4, "group", "sum_then_normalize")
    calls = []
    monkeypatch.setattr(tadv, "_group_advantages_op", lambda *a: calls.append(a))
    eager = gst.group_advantages(r, 4, reward_weights=w)
    assert calls == []  # eager calls never go through the custom op
    for a, b in zip(eager, via_op):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_module_and_no_grad_paths_share_the_eager_kernel(monkeypatch):
    p = problem(36)
    seen = spy_kernel_calls(monkeypatch)
    mod = gst.GRPOLoss(loss_type="dapo", beta=0.04)
    lp = p["lp"].clone().requires_grad_(True)
    a, ma = mod(lp, p["adv"], p["mask"], p["old"], p["ref"])
    a.backward()
    with torch.no_grad():
        b, mb = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                              beta=0.04)
    assert seen[0].grad != 0 and seen[1].grad == 0 and a.item() == b.item()
    assert _same(ma.to_dict(), mb.to_dict()) and lp.grad.data_ptr() == seen[0].grad
