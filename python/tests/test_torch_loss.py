"""grpo_swift.torch.grpo_loss / GRPOLoss: equals the numpy API bit for bit, autograd, zero copy,
torch.compile(fullgraph=True) without graph breaks, opcheck, and clear errors."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import grpo_swift  # noqa: E402
import grpo_swift.torch as gst  # noqa: E402
from grpo_swift import _native  # noqa: E402
from grpo_swift.torch import _loss as tloss  # noqa: E402

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"]


def problem(seed: int = 0, B: int = 5, T: int = 9, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    lp = -u(0.05, 3, B, T)
    old = lp - u(-0.35, 0.35, B, T)
    ref = lp + u(-0.5, 0.5, B, T)
    samp = old + u(-0.3, 0.3, B, T)
    ent = u(0, 3, B, T)
    adv = u(-1.5, 1.5, B)
    mask = (torch.rand(B, T, generator=g) > 0.2).to(torch.int64)
    mask[:, 0] = 1
    if B > 2:
        mask[1] = 0  # a fully masked row
    isr = torch.exp(torch.clamp((old - samp) * mask, -1, 1))
    aux = torch.float64 if dtype == torch.float64 else torch.float32
    return dict(lp=lp.to(dtype), old=old.to(dtype), ref=ref.to(dtype), samp=samp.to(dtype), ent=ent.to(dtype),
                adv=adv.to(aux), mask=mask, isr=isr.to(aux))


class KernelCall(NamedTuple):
    """One policy-loss kernel call seen by spy_kernel_calls: which path made it and the storage
    addresses it read and wrote (0 for an absent input or gradient)."""
    path: str  # "fast" (the C fast path on the tensors) or "python" (numpy views)
    lp: int
    old: int
    ref: int
    samp: int
    ent: int
    adv: int
    mask: int
    isr: int
    grad: int
    grad_h: int


def _address(a) -> int:
    return 0 if a is None else a.__array_interface__["data"][0]


def spy_kernel_calls(monkeypatch) -> list[KernelCall]:
    """Records every kernel call grpo_swift.torch's loss makes, by either path."""
    seen: list[KernelCall] = []
    fast, python = tloss._call_fast, tloss._call_kernel

    def spy_fast(*args):
        out = fast(*args)
        if out is not None:  # taken (None: declined, the Python path follows)
            seen.append(KernelCall("fast", *_native.torch_fast_pointers()))
        return out

    def spy_python(fn, *buffers):
        seen.append(KernelCall("python", *(_address(b) for b in buffers[:8]), _address(buffers[9]),
                               _address(buffers[10])))
        return python(fn, *buffers)

    monkeypatch.setattr(tloss, "_call_fast", spy_fast)
    monkeypatch.setattr(tloss, "_call_kernel", spy_python)
    return seen


def options(loss_type: str, **kw):
    o = dict(loss_type=loss_type, max_completion_length=9 if loss_type == "dr_grpo" else None)
    o.update(kw)
    return o


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_equals_numpy_api_bitwise_float32(loss_type, level):
    p = problem(1)
    kw = options(loss_type, beta=0.04, importance_sampling_level=level, entropy_coef=0.05,
                 gradient_accumulation_steps=2, off_policy_mask_threshold=0.05)
    lp = p["lp"].clone().requires_grad_(True)
    ent = p["ent"].clone().requires_grad_(True)
    loss, metrics = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                                  entropies=ent, sampling_logps=p["samp"], importance_sampling_ratio=p["isr"], **kw)
    loss.backward()
    ref = grpo_swift.grpo_loss(p["lp"].numpy(), p["adv"].numpy(), p["mask"].numpy(), old_logps=p["old"].numpy(),
                               ref_logps=p["ref"].numpy(), entropies=p["ent"].numpy(),
                               sampling_logps=p["samp"].numpy(), importance_sampling_ratio=p["isr"].numpy(), **kw)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == np.float32(ref.loss)
    assert lp.grad.dtype == torch.float32 and lp.grad.numpy().tobytes() == ref.grad.tobytes()
    assert ent.grad.numpy().tobytes() == ref.grad_entropies.tobytes()
    assert set(metrics) == set(ref.metrics)
    for k, v in ref.metrics.items():
        assert metrics[k].dtype == torch.float64 and metrics[k].shape == ()
        assert metrics[k].item() == v or (np.isnan(v) and np.isnan(metrics[k].item())), k


def test_module_holds_one_frozen_config_and_equals_function():
    p = problem(2)
    cfg = grpo_swift.LossConfig(loss_type="grpo", beta=0.04, epsilon_high=0.28)
    mod = gst.GRPOLoss(cfg)
    assert mod.config is cfg and "epsilon_high=0.28" in repr(mod)
    assert gst.GRPOLoss(loss_type="grpo", beta=0.04, epsilon_high=0.28).config == cfg
    with pytest.raises(Exception):
        mod.config.beta = 1.0  # frozen
    lp1 = p["lp"].clone().requires_grad_(True)
    lp2 = p["lp"].clone().requires_grad_(True)
    l1, m1 = mod(lp1, p["adv"], p["mask"], p["old"], p["ref"])
    l2, m2 = gst.grpo_loss(lp2, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                           loss_type="grpo", beta=0.04, epsilon_high=0.28)
    (l1 * 3).backward()
    (l2 * 3).backward()
    assert l1.item() == l2.item() and torch.equal(lp1.grad, lp2.grad)
    assert {k: v.item() for k, v in m1.items()} == {k: v.item() for k, v in m2.items()}
    with pytest.raises(TypeError, match="either a LossConfig or keyword options"):
        gst.GRPOLoss(cfg, beta=0.1)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        gst.GRPOLoss(betta=0.1)


def test_incoming_gradient_scales_the_kernel_gradient():
    p = problem(3)
    lp = p["lp"].clone().requires_grad_(True)
    loss, _ = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], loss_type="bnpo")
    (g,) = torch.autograd.grad(loss * -2.5, lp)
    ref = grpo_swift.grpo_loss(p["lp"].numpy(), p["adv"].numpy(), p["mask"].numpy(), old_logps=p["old"].numpy(),
                               loss_type="bnpo")
    np.testing.assert_array_equal(g.numpy(), np.float32(-2.5) * ref.grad)


def test_num_items_in_batch_tensor_or_number():
    p = problem(4)
    kw = dict(old_per_token_logps=p["old"], loss_type="dapo", gradient_accumulation_steps=2)
    a, _ = gst.grpo_loss(p["lp"], p["adv"], p["mask"], num_items_in_batch=torch.tensor(37), **kw)
    b, _ = gst.grpo_loss(p["lp"], p["adv"], p["mask"], num_items_in_batch=37.0, **kw)
    c, _ = gst.loss_with_config(p["lp"], p["adv"], p["mask"],
                                grpo_swift.LossConfig(loss_type="dapo", gradient_accumulation_steps=2,
                                                      num_items_in_batch=37), old_per_token_logps=p["old"])
    ref = grpo_swift.grpo_loss(p["lp"].numpy(), p["adv"].numpy(), p["mask"].numpy(), old_logps=p["old"].numpy(),
                               loss_type="dapo", gradient_accumulation_steps=2, num_items_in_batch=37)
    assert a.item() == b.item() == c.item() == np.float32(ref.loss)
    with pytest.raises(ValueError, match="'num_items_in_batch' must be a finite number >= 0"):
        gst.grpo_loss(p["lp"], p["adv"], p["mask"], num_items_in_batch=torch.tensor(-1.0), **kw)
    with pytest.raises(ValueError, match="'num_items_in_batch' must be a finite number >= 0"):
        gst.grpo_loss(p["lp"], p["adv"], p["mask"], num_items_in_batch=float("nan"), **kw)


def test_no_grad_and_compute_grad_false_skip_the_gradient(monkeypatch):
    p = problem(5)
    seen = spy_kernel_calls(monkeypatch)
    lp = p["lp"].clone().requires_grad_(True)
    with torch.no_grad():
        l1, _ = gst.grpo_loss(lp, p["adv"], p["mask"])
    l2, _ = gst.grpo_loss(lp, p["adv"], p["mask"], compute_grad=False)
    l3, _ = gst.grpo_loss(lp, p["adv"], p["mask"])
    assert [c.grad != 0 for c in seen] == [False, False, True]
    assert [c.path for c in seen] == ["fast", "python", "fast"]  # compute_grad=False: the Python path
    assert not l1.requires_grad and not l2.requires_grad and l3.requires_grad
    assert l1.item() == l2.item() == l3.item()


def test_compile_fullgraph_matches_eager():
    p = problem(6)
    mod = gst.GRPOLoss(loss_type="grpo", beta=0.04, entropy_coef=0.1)

    def step(lp, ent, n):
        loss, m = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                                entropies=ent, loss_type="dapo", beta=0.04, entropy_coef=0.1, num_items_in_batch=n)
        loss2, m2 = mod(lp, p["adv"], p["mask"], p["old"], p["ref"], ent)
        return 2 * loss + loss2, m["kl"] + m2["clip_ratio/region_mean"]

    def run(fn):  # the compiled graph's backward is the AOTAutograd-compiled one
        lp = p["lp"].clone().requires_grad_(True)
        ent = p["ent"].clone().requires_grad_(True)
        out = fn(lp, ent, torch.tensor(40.0))
        out[0].backward()
        return out, lp.grad, ent.grad

    eager = run(step)
    compiled = run(torch.compile(step, fullgraph=True, backend="aot_eager"))
    for a, b in zip(eager[0] + eager[1:], compiled[0] + compiled[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def bad(lp):
        return gst.grpo_loss(lp, p["adv"], p["mask"], beta=0.1)[0]

    # Validation runs at trace time: dynamo reports our message (inside its own exception type).
    with pytest.raises(Exception, match="ref_per_token_logps is required when beta != 0"):
        torch.compile(bad, fullgraph=True, backend="aot_eager")(p["lp"])


def test_eager_function_path_equals_the_custom_op():
    """Eager calls run the op's implementation through autograd.Function (less Python overhead);
    torch.compile uses the registered custom op: both give the same bits."""
    p = problem(9)
    cfg = grpo_swift.LossConfig(loss_type="grpo", beta=0.04, entropy_coef=0.1, importance_sampling_level="sequence")
    ints, floats = tloss._split_config(cfg._native_args)
    outs = []
    for call in (tloss._policy_loss_op, tloss._PolicyLossFunction.apply):
        lp = p["lp"].clone().requires_grad_(True)
        ent = p["ent"].clone().requires_grad_(True)
        loss, metrics, _, _ = call(lp, p["adv"], p["mask"], p["old"], p["ref"], None, ent, None, None, ints, floats,
                                   True, "t")
        (loss * 0.75).backward()
        outs.append((loss, metrics, lp.grad, ent.grad))
    for a, b in zip(*outs):
        assert a.dtype == b.dtype and a.detach().numpy().tobytes() == b.detach().numpy().tobytes()


def test_opcheck():
    p = problem(7, dtype=torch.float64)
    for cfg, with_ent in ((grpo_swift.LossConfig(loss_type="grpo", beta=0.04, entropy_coef=0.1), True),
                          (grpo_swift.LossConfig(loss_type="cispo", importance_sampling_level="sequence"), False)):
        ints, floats = tloss._split_config(cfg._native_args)
        lp = p["lp"].clone().requires_grad_(True)
        ent = p["ent"].clone().requires_grad_(with_ent)
        torch.library.opcheck(tloss._policy_loss_op, (lp, p["adv"], p["mask"], p["old"], p["ref"], None, ent, None,
                                                      None, ints, floats, True, "grpo_loss"))
        torch.library.opcheck(tloss._policy_loss_op, (lp.detach(), p["adv"], p["mask"].bool(), None, p["ref"],
                                                      p["samp"], p["ent"], p["isr"],
                                                      torch.tensor(30.0, dtype=torch.float64),
                                                      ints, floats, False, "grpo_loss"))


def test_errors():
    p = problem(8)
    lp, adv, mask = p["lp"], p["adv"], p["mask"]
    f = gst.grpo_loss
    with pytest.raises(TypeError, match=r"grpo_loss\(\): argument 'per_token_logps' is on device 'meta'.*run on CPU"):
        f(lp.to("meta"), adv, mask)
    with pytest.raises(TypeError, match=r"argument 'old_per_token_logps' is on device 'meta'.*\.cpu\(\)"):
        f(lp, adv, mask, old_per_token_logps=p["old"].to("meta"))
    with pytest.raises(TypeError, match="'per_token_logps' must have dtype float32, float64, bfloat16, float16, "
                                        "got int64"):
        f(lp.long(), adv, mask)
    with pytest.raises(TypeError, match="'advantages' must have dtype .* got int64"):
        f(lp, adv.long(), mask)
    with pytest.raises(TypeError, match="'completion_mask' must have dtype"):
        f(lp, adv, mask.to(torch.complex64))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        f(lp.numpy(), adv, mask)
    with pytest.raises(TypeError, match="'ref_per_token_logps' must have the dtype of 'per_token_logps'"):
        f(lp, adv, mask, ref_per_token_logps=p["ref"].double(), beta=0.1)
    with pytest.raises(ValueError, match=r"'old_per_token_logps' must have shape \(5, 9\) like 'per_token_logps', "
                                         r"got \(5, 8\)"):
        f(lp, adv, mask, old_per_token_logps=p["old"][:, :8])
    with pytest.raises(ValueError, match=r"'advantages' must have shape \(5,\), \(5, 1\) or \(5, 9\), got \(4,\)"):
        f(lp, adv[:4], mask)
    with pytest.raises(ValueError, match=r"'completion_mask' must have shape \(5, 9\)"):
        f(lp, adv, mask[:, :3])
    with pytest.raises(ValueError, match="'per_token_logps' must be 2-D"):
        f(lp[0], adv, mask)
    with pytest.raises(ValueError, match="'advantages' requires grad.*constant.*advantages.detach"):
        f(lp, adv.clone().requires_grad_(True), mask)
    with pytest.raises(ValueError, match="'ref_per_token_logps' requires grad"):
        f(lp, adv, mask, ref_per_token_logps=p["ref"].clone().requires_grad_(True), beta=0.1)
    with pytest.raises(ValueError, match="'completion_mask' must hold only 0 and 1, got 2"):
        f(lp, adv, mask * 2)
    bad = mask.to(torch.uint8) * 2
    with pytest.raises(ValueError, match="mask"):
        f(lp, adv, bad)
    with pytest.raises(ValueError, match="ref_per_token_logps is required when beta != 0"):
        f(lp, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="entropies are required when entropy_coef != 0"):
        f(lp, adv, mask, entropy_coef=0.1)
    with pytest.raises(ValueError, match="argument 'loss_type' must be one of"):
        f(lp, adv, mask, loss_type="ppo")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        f(lp, adv, mask, epsilon_hi=0.3)
    with pytest.raises(ValueError, match="at least one row"):
        f(lp[:0], adv[:0], mask[:0])
    with pytest.raises(TypeError, match="'config' must be a grpo_swift.LossConfig"):
        gst.loss_with_config(lp, adv, mask, {"loss_type": "grpo"})
    # Inputs are never modified.
    snap = {k: v.clone() for k, v in p.items()}
    gst.grpo_loss(lp, adv, mask, old_per_token_logps=p["old"], ref_per_token_logps=p["ref"], beta=0.1)
    for k, v in p.items():
        assert torch.equal(v, snap[k]), k


def test_double_backward_raises_instead_of_a_silent_zero():
    p = problem(10)
    lp = p["lp"].clone().requires_grad_(True)
    loss, _ = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"])
    (g,) = torch.autograd.grad(loss, lp, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        g.sum().backward()
