"""grpo_swift.torch.grpo_loss on bfloat16/float16 tensors (fp32 maths on the caller's 16-bit storage),
the zero-copy data path, and torch.compile with the inductor backend."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import requires_trl

torch = pytest.importorskip("torch")

import grpo_swift.torch as gst  # noqa: E402
from grpo_swift.torch import _loss as tloss  # noqa: E402

from test_torch_loss import spy_kernel_calls  # noqa: E402

# Liger-Kernel's tolerances for bfloat16 GRPO loss tests.
LOW_PRECISION_ATOL, LOW_PRECISION_RTOL = 5e-2, 5e-1
# Ours vs TRL's float32 maths on the same (rounded) inputs: the float32 parity tolerances of
# test_loss_trl_parity.py (loss atol, loss rtol, grad atol, grad rtol).
F32 = (1e-5, 1e-4, 1e-4, 1e-4)


def problem(seed: int, B: int = 8, T: int = 48):
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*s, generator=g)  # noqa: E731
    lp = -u(0.05, 3, B, T)
    return dict(lp=lp, old=lp - u(-0.3, 0.3, B, T), ref=lp + u(-0.5, 0.5, B, T), ent=u(0, 3, B, T),
                adv=torch.randn(B, generator=g), mask=(torch.rand(B, T, generator=g) > 0.2))


def trl32(p, opts):
    """TRL 1.16's _compute_loss in float32 (its autograd gradient) on p's values."""
    from _trl_reference import trl_loss
    n = lambda t: t.float().numpy()  # noqa: E731
    loss, g, gh, _ = trl_loss(n(p["lp"]), p["adv"].numpy(), p["mask"].numpy(), old_logps=n(p["old"]),
                              ref_logps=n(p["ref"]), entropies=n(p["ent"]), **opts)
    return loss, g, gh


@requires_trl
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("loss_type,level", [("dapo", "token"), ("grpo", "sequence"), ("sapo", "token"),
                                             ("cispo", "token"), ("luspo", "sequence")])
def test_low_precision_inputs_use_float32_maths(dtype, loss_type, level):
    p = problem(hash((loss_type, level)) % 1000)
    opts = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.04, entropy_coef=0.05,
                epsilon_high=1.2 if loss_type == "cispo" else 0.28)
    low = {k: (v.to(dtype) if v.is_floating_point() and k != "adv" else v) for k, v in p.items()}
    lp = low["lp"].clone().requires_grad_(True)
    ent = low["ent"].clone().requires_grad_(True)
    loss, _ = gst.grpo_loss(lp, low["adv"], low["mask"], old_per_token_logps=low["old"],
                            ref_per_token_logps=low["ref"], entropies=ent, **opts)
    loss.backward()
    assert loss.dtype == torch.float32 and lp.grad.dtype == dtype and ent.grad.dtype == dtype

    exact_loss, exact_g, exact_gh = trl32(p, opts)        # float32 maths on the original values
    rounded_loss, rounded_g, rounded_gh = trl32(low, opts)  # float32 maths on the rounded inputs
    # 1. Within Liger's low-precision tolerances of the float32 reference.
    A, R = LOW_PRECISION_ATOL, LOW_PRECISION_RTOL
    assert abs(loss.item() - exact_loss) <= A + R * abs(exact_loss)
    np.testing.assert_allclose(lp.grad.float().numpy(), exact_g, atol=A, rtol=R)
    np.testing.assert_allclose(ent.grad.float().numpy(), exact_gh, atol=A, rtol=R)
    # 2. The kernel's float32 gradient (before autograd rounds it to the input dtype) and loss are
    # TRL's float32 maths on the widened 16-bit values, to float32 precision.
    ints, floats = tloss._split_config(tloss.LossConfig.from_options("t", **opts)._native_args)
    kl, _, g32, gh32 = tloss._policy_loss_op(low["lp"], low["adv"], low["mask"], low["old"], low["ref"], None,
                                             low["ent"], None, None, ints, floats, True, "t")
    la, lr, ga, gr = F32
    assert g32.dtype == torch.float32 and kl.item() == loss.item()
    assert abs(loss.item() - rounded_loss) <= la + lr * abs(rounded_loss)
    np.testing.assert_allclose(g32.numpy(), rounded_g, atol=ga, rtol=gr)
    np.testing.assert_allclose(gh32.numpy(), rounded_gh, atol=ga, rtol=gr)
    assert torch.equal(lp.grad, g32.to(dtype)) and torch.equal(ent.grad, gh32.to(dtype))
    # 3. Hence our error is the error of rounding the inputs, not more (up to float32 noise).
    assert abs(loss.item() - exact_loss) <= abs(rounded_loss - exact_loss) + la + lr * abs(exact_loss)
    assert np.abs(g32.numpy() - exact_g).max() <= np.abs(rounded_g - exact_g).max() + ga + gr * np.abs(exact_g).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8])
def test_kernel_reads_the_callers_storage(monkeypatch, dtype, mask_dtype):
    p = problem(3)
    aux = torch.float64 if dtype == torch.float64 else torch.float32
    t = {k: v.to(dtype) for k, v in p.items() if k in ("lp", "old", "ref", "ent")}
    t["samp"] = t["old"] + 0.01
    adv, mask, isr = p["adv"].to(aux), p["mask"].to(mask_dtype), torch.ones(8, 48, dtype=aux)
    seen = spy_kernel_calls(monkeypatch)
    lp = t["lp"].clone().requires_grad_(True)
    loss, _ = gst.grpo_loss(lp, adv, mask, old_per_token_logps=t["old"], ref_per_token_logps=t["ref"],
                            sampling_logps=t["samp"], entropies=t["ent"], importance_sampling_ratio=isr,
                            off_policy_mask_threshold=0.5, beta=0.04)
    loss.backward()
    (call,) = seen
    assert call.path == "fast" and call.lp == lp.data_ptr()
    for k in ("old", "ref", "samp", "ent"):
        assert getattr(call, k) == t[k].data_ptr(), k
    assert call.adv == adv.data_ptr() and call.mask == mask.data_ptr() and call.isr == isr.data_ptr()
    assert lp.grad is not None and lp.grad.dtype == dtype
    if dtype == torch.float32:  # the kernel's gradient buffer itself became .grad
        assert lp.grad.data_ptr() == call.grad


def test_strided_and_int64_mask_inputs_are_copied_once_and_agree(monkeypatch):
    p = problem(4)
    wide = torch.stack([p["lp"], p["lp"] + 1], dim=2)[..., 0]  # non-contiguous view of the same values
    assert not wide.is_contiguous() and torch.equal(wide, p["lp"])
    a, _ = gst.grpo_loss(wide, p["adv"], p["mask"].long(), old_per_token_logps=p["old"])
    seen = spy_kernel_calls(monkeypatch)
    b, _ = gst.grpo_loss(p["lp"], p["adv"], p["mask"], old_per_token_logps=p["old"])
    c, _ = gst.grpo_loss(wide, p["adv"], p["mask"], old_per_token_logps=p["old"])
    assert a.item() == b.item() == c.item()
    assert seen[0].path == "fast" and seen[0].lp == p["lp"].data_ptr()
    assert seen[1].path == "python" and seen[1].lp != wide.data_ptr()  # the one contiguous copy


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="torch inductor needs a C++ compiler")
def test_compile_inductor_fullgraph_matches_eager():
    p = problem(5)
    lp0, ent0 = p["lp"].to(torch.bfloat16), p["ent"].to(torch.bfloat16)
    old, ref = p["old"].to(torch.bfloat16), p["ref"].to(torch.bfloat16)

    def step(lp, ent, n):
        logits_like = lp * 1.0  # an op before and after the custom op, as in a real step
        loss, m = gst.grpo_loss(logits_like, p["adv"], p["mask"], old_per_token_logps=old, ref_per_token_logps=ref,
                                entropies=ent, loss_type="dapo", beta=0.04, entropy_coef=0.1, num_items_in_batch=n)
        return loss * 0.5 + ent.float().mean() * 0.0, m["kl"]

    def run(fn):
        lp, ent = lp0.clone().requires_grad_(True), ent0.clone().requires_grad_(True)
        loss, kl = fn(lp, ent, torch.tensor(300.0))
        loss.backward()
        return loss, kl, lp.grad, ent.grad

    torch._dynamo.reset()
    eager = run(step)
    compiled = run(torch.compile(step, fullgraph=True))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_numpy_bfloat16_rounding_equals_torch():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(200_000, generator=g) * torch.logspace(-42, 38, 200_000)
    special = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 3.3895e38, 3.4e38, 1e-45, -1e-45, 1.0000001,
                            1.00390625, 1.005859375, 1.0078125, -2.00781250, float("nan")])
    x = torch.cat([x, special])
    ours = torch.from_numpy(tloss._to_bf16_bits(x.numpy()).view(np.int16)).view(torch.bfloat16)
    torch.testing.assert_close(ours, x.to(torch.bfloat16), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_eager_and_traced_backward_formulas_give_the_same_bits(dtype):
    g = torch.Generator().manual_seed(12)
    grad = torch.randn(64, 33, generator=g) * 1e-3
    for scale in (1.0, -2.5, 3e-7, 7.0e4):
        s = torch.tensor(scale, dtype=torch.float32)
        a, b = tloss._scale_eager(s, grad, dtype), tloss._scale(s, grad, dtype)
        assert a.dtype == b.dtype == dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))
    assert torch.equal(tloss._scale_eager(s, grad, torch.float32), tloss._scale(s, grad, torch.float32))
