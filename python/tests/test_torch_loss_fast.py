"""The C fast path of grpo_swift.torch's eager loss call (_native.torch_policy_loss): on every input
it takes, the same bits as the Python path (loss, metrics, gradients); it declines everything the
Python path would copy, convert or reject, which then gives the documented result or error."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import grpo_swift  # noqa: E402
import grpo_swift.torch as gst  # noqa: E402
from grpo_swift.torch import _loss as tloss  # noqa: E402

from test_torch_loss import options, problem, spy_kernel_calls  # noqa: E402

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo", "gmpo"]


def _python_path(monkeypatch) -> None:
    monkeypatch.setattr(tloss, "_call_fast", lambda *args: None)


def _run(p, kw, grads: tuple[bool, bool], call_kw):
    lp = p["lp"].clone().requires_grad_(grads[0])
    ent = None if p.get("ent") is None else p["ent"].clone().requires_grad_(grads[1])
    loss, metrics = gst.grpo_loss(lp, p["adv"], p["mask"], entropies=ent, **call_kw, **kw)
    if loss.requires_grad:
        loss.backward()
    return (loss.detach().clone(), metrics.vector.clone(), None if lp.grad is None else lp.grad.clone(),
            None if ent is None or ent.grad is None else ent.grad.clone(), list(metrics))


def _bits(t):
    return None if t is None else (t.dtype, tuple(t.shape), t.view(torch.uint8).numpy().tobytes()
                                   if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes())


def _same_bits(a, b) -> None:
    for x, y in zip(a[:4], b[:4]):
        assert _bits(x) == _bits(y)
    assert a[4] == b[4]


CASES = [
    # (loss_type, dtype, mask dtype, advantages shape, inputs, options, (lp requires grad, ent requires grad))
    *[(lt, torch.float32, torch.bool, "B", "old ref ent", dict(beta=0.04, entropy_coef=0.05), (True, True))
      for lt in LOSS_TYPES],
    *[(lt, torch.float64, torch.int64, "B1", "old ref samp" + (" isr" if lt != "vespo" else ""),
       dict(beta=0.04, off_policy_mask_threshold=0.1,
            importance_sampling_level="sequence"), (True, False)) for lt in LOSS_TYPES if lt != "gmpo"],
    *[(lt, dt, md, "BT", "old ent isrT", dict(top_entropy_quantile=0.6, gradient_accumulation_steps=2), (True, False))
      for lt, dt, md in [("dapo", torch.bfloat16, torch.uint8), ("cispo", torch.float16, torch.float32),
                         ("vespo", torch.bfloat16, torch.int32), ("sapo", torch.float16, torch.float64)]],
    ("grpo", torch.float32, torch.int8, "B", "ent", dict(entropy_coef=-0.1), (False, True)),  # only ent needs grad
    ("bnpo", torch.float32, torch.int16, "B", "", {}, (False, False)),  # nothing requires grad
    ("dapo", torch.float32, torch.bool, "B", "old ref", dict(beta=0.04, kl_estimator="k2", clip_ratio_c=3.0),
     (True, False)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{str(c[1])[6:]}-{str(c[2])[6:]}-{c[3]}")
def test_fast_path_is_taken_and_equals_the_python_path_bitwise(monkeypatch, case):
    loss_type, dtype, mask_dtype, adv_shape, inputs, extra, grads = case
    p = problem(40, B=6, T=11)
    aux = torch.float64 if dtype == torch.float64 else torch.float32
    q = dict(lp=p["lp"].to(dtype), mask=p["mask"].to(mask_dtype),
             ent=p["ent"].to(dtype) if "ent" in inputs.split() else None,
             adv={"B": p["adv"], "B1": p["adv"][:, None], "BT": p["adv"][:, None].expand(6, 11).contiguous()}
             [adv_shape].to(aux))
    call_kw = {}
    for name, key in (("old", "old_per_token_logps"), ("ref", "ref_per_token_logps"), ("samp", "sampling_logps")):
        if name in inputs.split():
            call_kw[key] = p[name].to(dtype)
    if "isr" in inputs.split():
        call_kw["importance_sampling_ratio"] = p["isr"][:, :1].to(aux)
    if "isrT" in inputs.split():
        call_kw["importance_sampling_ratio"] = p["isr"].to(aux)
    kw = options(loss_type, **extra)
    if loss_type == "dr_grpo":
        kw["max_completion_length"] = 11
    seen = spy_kernel_calls(monkeypatch)
    fast = _run(q, kw, grads, call_kw)
    assert [c.path for c in seen] == ["fast"]
    _python_path(monkeypatch)
    seen = spy_kernel_calls(monkeypatch)
    slow = _run(q, kw, grads, call_kw)
    assert [c.path for c in seen] == ["python"]
    _same_bits(fast, slow)
    assert fast[2] is not None or not grads[0]


def test_fast_path_under_no_grad_and_with_a_parameter(monkeypatch):
    p = problem(41)
    seen = spy_kernel_calls(monkeypatch)
    w = torch.nn.Parameter(p["lp"].clone())
    loss, _ = gst.grpo_loss(w, p["adv"], p["mask"], old_per_token_logps=p["old"])
    loss.backward()
    with torch.no_grad():  # constants that require grad are fine without grad mode
        gst.grpo_loss(w, p["adv"].requires_grad_(), p["mask"], old_per_token_logps=p["old"].requires_grad_())
    assert [c.path for c in seen] == ["fast", "fast"] and seen[0].grad == w.grad.data_ptr() and seen[1].grad == 0


class _Sub(torch.Tensor):
    pass


DECLINED = {
    "strided logps": lambda q: q.update(lp=torch.stack([q["lp"], q["lp"]], 2)[..., 0]),
    "tensor subclass": lambda q: q.update(lp=q["lp"].as_subclass(_Sub)),
    "negated view": lambda q: q.update(old=torch._neg_view(-q["old"])),
    "bfloat16 mask": lambda q: q.update(mask=q["mask"].bfloat16()),
    "float64 advantages for float32 logps": lambda q: q.update(adv=q["adv"].double()),
    "empty rows": lambda q: q.update(lp=q["lp"][:, :0], old=q["old"][:, :0], mask=q["mask"][:, :0]),
}


@pytest.mark.parametrize("name", list(DECLINED))
def test_declined_inputs_take_the_python_path_with_the_same_result(monkeypatch, name):
    p = problem(42)
    q = dict(lp=p["lp"], old=p["old"], adv=p["adv"], mask=p["mask"])
    DECLINED[name](q)
    seen = spy_kernel_calls(monkeypatch)
    lp = q["lp"].detach().requires_grad_(True)
    loss, metrics = gst.grpo_loss(lp, q["adv"], q["mask"], old_per_token_logps=q["old"])
    loss.backward()
    assert [c.path for c in seen] == ["python"]
    ref = grpo_swift.grpo_loss(*(np.ascontiguousarray(torch.as_tensor(q[k]).float().numpy())
                                 for k in ("lp", "adv", "mask")), old_logps=q["old"].resolve_neg().float().numpy())
    assert loss.item() == np.float32(ref.loss)
    assert np.array_equal(lp.grad.float().numpy(), ref.grad)


ERRORS = [
    ("a constant requiring grad", dict(old=lambda p: p["old"].requires_grad_()), ValueError,
     "argument 'old_per_token_logps' requires grad"),
    ("beta without ref", dict(opts=dict(beta=0.1)), ValueError, "ref_per_token_logps is required when beta"),
    ("entropy bonus without entropies", dict(opts=dict(entropy_coef=0.1)), ValueError, "entropies are required"),
    ("mask value 2", dict(mask=lambda p: p["mask"] * 2), ValueError, "argument 'completion_mask' must hold only 0"),
    ("float mask value 0.5", dict(mask=lambda p: p["mask"].float() * 0.5), ValueError,
     "argument 'completion_mask' must hold only 0"),
    ("shape mismatch", dict(old=lambda p: p["old"][:, :-1]), ValueError, "argument 'old_per_token_logps' must have"),
    ("dtype mismatch", dict(old=lambda p: p["old"].double()), TypeError, "must have the dtype of 'per_token_logps'"),
    ("meta tensor", dict(lp=lambda p: p["lp"].to("meta")), TypeError, "is on device 'meta'"),
    ("integer logps", dict(lp=lambda p: p["lp"].long()), TypeError, "argument 'per_token_logps' must have dtype"),
    ("advantages rows", dict(adv=lambda p: p["adv"][:-1]), ValueError, "argument 'advantages' must have shape"),
    ("vespo per-sequence IS ratio", dict(opts=dict(loss_type="vespo"), isr=lambda p: p["isr"][:, 0]), ValueError,
     "VESPO loss requires"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_errors_are_the_python_paths(monkeypatch, case):
    _, change, exc, message = case
    p = problem(43)
    q = {k: change[k](p) if k in change else p[k] for k in ("lp", "old", "adv", "mask")}
    isr = change["isr"](p) if "isr" in change else None
    before = {k: v.clone() for k, v in q.items()}
    seen = spy_kernel_calls(monkeypatch)
    with pytest.raises(exc, match=message) as fast:
        gst.grpo_loss(q["lp"], q["adv"], q["mask"], old_per_token_logps=q["old"], importance_sampling_ratio=isr,
                      **change.get("opts", {}))
    assert seen == []  # nothing ran
    _python_path(monkeypatch)
    with pytest.raises(exc) as slow:
        gst.grpo_loss(q["lp"], q["adv"], q["mask"], old_per_token_logps=q["old"], importance_sampling_ratio=isr,
                      **change.get("opts", {}))
    assert str(fast.value) == str(slow.value) and str(fast.value).startswith("grpo_loss(): ")
    for k, v in q.items():  # no input mutated
        if v.device.type == "cpu":
            assert torch.equal(v, before[k]), k


def test_kernel_errors_raise_from_the_fast_path(monkeypatch):
    p = problem(44)
    mask = p["mask"].to(torch.uint8)
    mask[0, 0] = 3  # uint8 is read in place; the kernel rejects the byte
    seen = spy_kernel_calls(monkeypatch)
    with pytest.raises(ValueError, match=r"^grpo_loss\(\): .*mask"):
        gst.grpo_loss(p["lp"], p["adv"], mask, old_per_token_logps=p["old"])
    assert len(seen) == 0  # the spy records successful fast calls only
    with pytest.raises(ValueError, match=r"max_completion_length"):
        gst.grpo_loss(p["lp"], p["adv"], p["mask"], loss_type="dr_grpo")


def test_fast_path_is_thread_safe_and_deterministic():
    import concurrent.futures

    p = problem(45, B=16, T=300)
    kw = dict(old_per_token_logps=p["old"], ref_per_token_logps=p["ref"], beta=0.04, loss_type="dapo")

    def one(_):
        lp = p["lp"].clone().requires_grad_(True)
        loss, m = gst.grpo_loss(lp, p["adv"], p["mask"], **kw)
        loss.backward()
        return loss.item(), m.vector.numpy().tobytes(), lp.grad.numpy().tobytes()

    want = one(0)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for got in pool.map(one, range(64)):
            assert got == want


def test_every_combination_of_optional_inputs(monkeypatch):
    p = problem(46)
    names = ("old_per_token_logps", "ref_per_token_logps", "sampling_logps", "entropies",
             "importance_sampling_ratio")
    values = (p["old"], p["ref"], p["samp"], p["ent"], p["isr"])
    for present in itertools.product((False, True), repeat=len(names)):
        call_kw = {n: v for n, v, on in zip(names, values, present) if on}
        kw = dict(beta=0.04 if present[1] else 0.0, top_entropy_quantile=0.5 if present[3] else 1.0)
        out = []
        for fast in (True, False):
            if not fast:
                _python_path(monkeypatch)
            lp = p["lp"].clone().requires_grad_(True)
            loss, m = gst.grpo_loss(lp, p["adv"], p["mask"], **call_kw, **kw)
            loss.backward()
            out.append((loss.item(), m.vector.numpy().tobytes(), list(m), lp.grad.numpy().tobytes()))
        monkeypatch.undo()
        assert out[0] == out[1], present


def test_the_graph_is_freed_without_the_garbage_collector(monkeypatch):
    # The node keeps the gradient buffers and the inputs, never the loss (whose grad_fn is the node):
    # dropping the loss frees the buffers by reference counting alone.
    import gc
    import weakref

    p = problem(47)
    buffers = []
    fast = tloss._call_fast

    def keep(*args):
        out = fast(*args)
        buffers.append(weakref.ref(out[2]))  # the gradient buffer
        return out

    monkeypatch.setattr(tloss, "_call_fast", keep)
    gc.disable()
    try:
        lp = p["lp"].clone().requires_grad_(True)
        loss, metrics = gst.grpo_loss(lp, p["adv"], p["mask"], old_per_token_logps=p["old"])
        del metrics
        assert all(b() is not None for b in buffers)
        del loss
        assert len(buffers) == 1 and buffers[0]() is None
    finally:
        gc.enable()


def test_an_input_modified_in_place_before_backward_raises():
    p = problem(48)
    for name in ("old", "adv", "mask"):
        q = {k: p[k].clone() for k in ("lp", "old", "adv", "mask")}
        lp = q["lp"].requires_grad_(True)
        loss, _ = gst.grpo_loss(lp, q["adv"], q["mask"], old_per_token_logps=q["old"])
        q[name].mul_(1)  # bumps the version counter
        with pytest.raises(RuntimeError, match=r"modified by an inplace operation: " +
                           {"old": "old_per_token_logps", "adv": "advantages", "mask": "completion_mask"}[name] +
                           " changed"):
            loss.backward()
