"""Property-based fuzzing (hypothesis) of the torch layer (grpo_swift.torch).

Random shapes (0- and 1-sized dimensions), dtypes (float32/float64/bfloat16/float16),
non-contiguous tensors, tensors that require grad, NaN/+-inf in masked and unmasked positions,
extreme magnitudes, wrong types. Every call either equals its reference -- float64 torch
autograd for the log-prob kernels, the numpy API (fuzzed against independent formulas in
test_fuzz.py) on the same values for the losses and advantages -- or raises TypeError/ValueError
naming the function; never a crash, a hang, or a NaN produced from masked data.
CI runs a small budget; `make fuzz` runs GRPO_FUZZ_EXAMPLES per property.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import grpo_swift  # noqa: E402
import grpo_swift.torch as gt  # noqa: E402
from test_fuzz import FUZZ, LOSS_TYPES, special  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# Relative tolerance of a value computed in float32 (float64 for float64) and returned in `dtype`.
ROUND = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def noncontiguous(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as a non-contiguous tensor: every other element of a wider buffer, or a
    transposed copy transposed back."""
    if how == "strided" and t.dim() >= 1:
        wide = torch.repeat_interleave(t.detach(), 2, dim=-1)
        out = wide[..., ::2]
    elif how == "transposed" and t.dim() >= 2:
        out = t.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
    else:
        return t.detach().clone()
    assert torch.equal(out, t.detach()) or t.numel() == 0 or torch.isnan(t).any()
    return out


def _rows_to_f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


# ---- policy loss --------------------------------------------------------------------------

@FUZZ
@given(b=st.integers(1, 4), t=st.integers(1, 8), dtype=st.sampled_from(DTYPES), loss_type=st.sampled_from(LOSS_TYPES),
       level=st.sampled_from(["token", "sequence"]), beta=st.sampled_from([0.0, 0.04]),
       mask_dtype=st.sampled_from([torch.bool, torch.uint8, torch.int64, torch.float32]),
       layout=st.sampled_from(["c", "strided", "transposed"]), junk=special, seed=st.integers(0, 2**31))
def test_fuzz_torch_grpo_loss(b, t, dtype, loss_type, level, beta, mask_dtype, layout, junk, seed):
    """Equals the numpy API on the same (widened) values -- loss and gradient bit for bit, the
    gradient rounded to the input dtype -- and garbage at masked positions changes nothing."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = lp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.2
    ref = lp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.2
    adv = torch.randn(b, generator=g)
    mask = torch.rand(b, t, generator=g) < 0.7
    lp, old, ref = (x.to(dtype) for x in (lp, old, ref))
    kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=beta, max_completion_length=t)
    leaf = noncontiguous(lp, layout).requires_grad_()
    d_old = torch.where(mask, old, torch.tensor(junk, dtype=torch.float64).to(dtype))
    d_ref = torch.where(mask, ref, torch.tensor(junk, dtype=torch.float64).to(dtype))
    loss, metrics = gt.grpo_loss(leaf, adv, noncontiguous(mask.to(mask_dtype), layout),
                                 old_per_token_logps=noncontiguous(d_old, layout),
                                 ref_per_token_logps=d_ref if beta else None, **kw)
    loss.backward()
    assert leaf.grad.dtype == dtype and torch.all(leaf.grad[~mask] == 0)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    want = grpo_swift.grpo_loss(lp.to(torch.float64).numpy().astype(np_dtype), adv.numpy(), mask.numpy(),
                                old_logps=old.to(torch.float64).numpy().astype(np_dtype),
                                ref_logps=ref.to(torch.float64).numpy().astype(np_dtype) if beta else None, **kw)
    assert np.isfinite(want.loss)
    assert float(loss.detach()) == float(np.asarray(want.loss, dtype=np_dtype))
    assert torch.equal(leaf.grad, torch.from_numpy(want.grad).to(dtype))
    for k, v in metrics.items():
        w = want.metrics[k]
        assert (np.isnan(w) and torch.isnan(v)) or float(v) == w, k


# ---- selective log-softmax ----------------------------------------------------------------

@FUZZ
@given(lead=st.lists(st.integers(0, 3), min_size=1, max_size=2), v=st.integers(1, 50), dtype=st.sampled_from(DTYPES),
       temp=st.sampled_from([0.6, 1.0, 1.7]), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
       layout=st.sampled_from(["c", "strided", "transposed"]), index_dtype=st.sampled_from([torch.int64, torch.int32]),
       use_mask=st.booleans(), junk=special, seed=st.integers(0, 2**31))
def test_fuzz_torch_selective_log_softmax(lead, v, dtype, temp, scale, layout, index_dtype, use_mask, junk, seed):
    """Log-probs, entropies and the logits' gradient against float64 torch autograd; rows with
    label -100 or mask 0 give 0, 0 and a zero gradient even when their logits are NaN/inf."""
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, v)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    idx = torch.randint(0, v, tuple(lead), generator=g)
    skip = torch.rand(tuple(lead), generator=g) < 0.25
    mask = None
    if use_mask:
        mask = (~skip).to(torch.int64)
    else:
        idx = torch.where(skip, torch.full_like(idx, -100), idx)
    x = torch.where(skip[..., None], torch.tensor(junk, dtype=torch.float64).to(dtype), x)
    leaf = noncontiguous(x, layout).requires_grad_()
    lp, ent = gt.selective_log_softmax(leaf, idx.to(index_dtype), temperature=temp, mask=mask, return_entropy=True)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert lp.shape == tuple(lead) and lp.dtype == out_dtype and ent.dtype == out_dtype
    w_lp = torch.randn(tuple(lead), generator=g, dtype=torch.float64)
    w_ent = torch.randn(tuple(lead), generator=g, dtype=torch.float64)
    (lp.double() * w_lp + ent.double() * w_ent).sum().backward()
    grad = leaf.grad
    assert grad.dtype == dtype and grad.shape == shape
    # masked / unscored rows: exactly zero, never NaN
    assert torch.all(lp[skip] == 0) and torch.all(ent[skip] == 0) and torch.all(grad[skip] == 0)
    keep = ~skip
    if not keep.any():
        return
    xr = x.detach().to(torch.float64)[keep].requires_grad_()
    z = xr / temp
    logp = torch.log_softmax(z, dim=-1)
    r_lp = logp.gather(-1, idx[keep][:, None]).squeeze(-1)
    r_ent = -(logp.exp() * logp).sum(-1)
    (r_lp * w_lp[keep] + r_ent * w_ent[keep]).sum().backward()
    zmax = float(z.detach().abs().max())
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(lp[keep].double().detach().numpy(), r_lp.detach().numpy(), rtol=tol,
                               atol=tol * (1 + zmax))
    np.testing.assert_allclose(ent[keep].double().detach().numpy(), r_ent.detach().numpy(),
                               rtol=1e-9 if dtype == torch.float64 else 1e-3, atol=tol * (1 + zmax))
    want = xr.grad
    got = grad[keep].double()
    gscale = float(want.abs().max()) + 1e-30
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=ROUND[dtype], atol=ROUND[dtype] * gscale + tol * (1 + zmax))


# ---- fused LM head ------------------------------------------------------------------------

HEAD_DTYPES = ["f32", "f64", "bf16", "f16", "mixed"]


@FUZZ
@given(lead=st.lists(st.integers(0, 4), min_size=1, max_size=2), h=st.integers(1, 10), v=st.integers(1, 40),
       kind=st.sampled_from(HEAD_DTYPES), bias=st.booleans(), temp=st.sampled_from([0.7, 1.0]),
       softcap=st.sampled_from([None, 4.0]), logit_scale=st.sampled_from([1.0, 0.5]),
       layout=st.sampled_from(["c", "strided", "transposed"]), junk=special, seed=st.integers(0, 2**31))
def test_fuzz_torch_fused_log_probs(lead, h, v, kind, bias, temp, softcap, logit_scale, layout, junk, seed):
    """Against float64 torch autograd on the values the kernel reads (float32, or bfloat16 read
    exactly); unscored rows (-100) with NaN/inf hidden states give 0, 0 and no gradient anywhere."""
    g = torch.Generator().manual_seed(seed)
    dt = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16,
          "mixed": torch.bfloat16}[kind]
    hid = torch.randn((*lead, h), generator=g, dtype=torch.float64).to(dt)
    w = (torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5).to(torch.float32 if kind == "mixed" else dt)
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.3).to(dt) if bias else None
    labels = torch.randint(0, v, tuple(lead), generator=g)
    skip = torch.rand(tuple(lead), generator=g) < 0.3
    labels = torch.where(skip, torch.full_like(labels, -100), labels)
    hid = torch.where(skip[..., None], torch.tensor(junk, dtype=torch.float64).to(dt), hid)
    hl = noncontiguous(hid, layout).requires_grad_()
    wl = noncontiguous(w, layout).requires_grad_()
    bl = None if b is None else b.clone().requires_grad_()
    lp, ent = gt.fused_log_probs(hl, wl, labels, bias=bl, temperature=temp, logit_scale=logit_scale,
                                 final_logit_softcapping=softcap)
    assert lp.shape == tuple(lead) and lp.dtype == torch.float32
    wl_lp = torch.randn(tuple(lead), generator=g, dtype=torch.float64)
    wl_ent = torch.randn(tuple(lead), generator=g, dtype=torch.float64)
    (lp.double() * wl_lp + ent.double() * wl_ent).sum().backward()
    assert torch.all(lp[skip] == 0) and torch.all(ent[skip] == 0)
    for leaf in (hl, wl) + ((bl,) if bl is not None else ()):
        assert leaf.grad.dtype == leaf.dtype and torch.all(torch.isfinite(leaf.grad)), "NaN leaked from masked rows"
    assert torch.all(hl.grad[skip] == 0)
    # reference: what the kernel reads (all-bfloat16 as is, anything else converted to float32)
    all_bf16 = kind == "bf16"

    def kernel_values(t):
        return t.detach().to(torch.bfloat16 if all_bf16 else torch.float32).to(torch.float64)

    keep = ~skip
    hr = torch.where(skip[..., None], 0.0, kernel_values(hid)).requires_grad_()  # skipped rows: no gradient
    wr = kernel_values(w).requires_grad_()
    br = None if b is None else kernel_values(b).requires_grad_()
    y = (hr @ wr.T + (0 if br is None else br)) * logit_scale
    if softcap:
        y = softcap * torch.tanh(y / softcap)
    logp = torch.log_softmax(y / temp, dim=-1)
    r_lp = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    r_ent = -(logp.exp() * logp).sum(-1)
    r_lp = torch.where(keep, r_lp, 0.0)
    r_ent = torch.where(keep, r_ent, 0.0)
    (r_lp * wl_lp + r_ent * wl_ent).sum().backward()
    np.testing.assert_allclose(lp.detach().double().numpy(), r_lp.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ent.detach().double().numpy(), r_ent.detach().numpy(), rtol=1e-3, atol=1e-4)
    for got, want in ((hl.grad, hr.grad), (wl.grad, wr.grad)) + (((bl.grad, br.grad),) if bl is not None else ()):
        tol = max(ROUND[got.dtype], 1e-4)
        np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=tol,
                                   atol=tol * (1 + (float(want.abs().max()) if want.numel() else 0.0)))


# ---- group advantages ---------------------------------------------------------------------

@FUZZ
@given(g=st.integers(2, 6), groups=st.integers(1, 5), funcs=st.sampled_from([0, 1, 3]),
       dtype=st.sampled_from([torch.float32, torch.float64]), scale=st.sampled_from(["group", "batch", "none"]),
       layout=st.sampled_from(["c", "strided", "transposed"]), seed=st.integers(0, 2**31))
def test_fuzz_torch_group_advantages(g, groups, funcs, dtype, scale, layout, seed):
    """Bit for bit the numpy API's result (also for non-contiguous tensors and NaN rewards)."""
    gen = torch.Generator().manual_seed(seed)
    n = g * groups
    shape = (n,) if funcs == 0 else (n, funcs)
    r = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    r[torch.rand(shape, generator=gen) < 0.15] = float("nan")
    got = gt.group_advantages(noncontiguous(r, layout), g, scale_rewards=scale)
    want = grpo_swift.group_advantages(r.numpy(), g, scale_rewards=scale)
    for a, b in zip(got, want):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# ---- advantage estimators -----------------------------------------------------------------

ROW_ESTIMATORS = ["grpo", "dr_grpo", "rloo", "opo", "gpg", "passk"]


@FUZZ
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5), estimator=st.sampled_from(ROW_ESTIMATORS),
       dtype=st.sampled_from([torch.float32, torch.float64]), singleton=st.sampled_from(["zero", "raw", "error"]),
       layout=st.sampled_from(["c", "strided"]), nan_share=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 2**31))
def test_fuzz_torch_estimators(sizes, estimator, dtype, singleton, layout, nan_share, seed):
    """grpo_swift.torch.advantages / zero_spread_groups / informative_rows over shuffled explicit group
    ids of variable sizes (singletons included) and NaN rewards: bit for bit the numpy API's result,
    or the same error (TypeError/ValueError naming the function) -- e.g. pass@k's singleton refusal."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    ids = ids[torch.randperm(len(ids), generator=gen)]
    n = len(ids)
    r = torch.randint(0, 3, (n,), generator=gen).to(torch.float64) / 2  # ties and zero-spread groups
    r[torch.rand(n, generator=gen) < nan_share] = float("nan")
    r = r.to(dtype)
    opts = {"singleton": singleton}
    if estimator == "opo":
        opts["lengths"] = torch.randint(0, 6, (n,), generator=gen).to(dtype)
    if estimator == "passk" and singleton == "raw":
        opts["singleton"] = "zero"
    np_opts = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    try:
        want = grpo_swift.advantages(r.numpy(), estimator, group_ids=ids.numpy(), **np_opts)
    except ValueError as exc:
        with pytest.raises(ValueError) as info:
            gt.advantages(noncontiguous(r, layout), estimator, group_ids=ids, **opts)
        assert "advantages(" in str(info.value), info.value
        return
    got = gt.advantages(noncontiguous(r, layout), estimator, group_ids=ids, **opts)
    assert got.dtype == dtype and np.asarray(got).tobytes() == np.asarray(want).tobytes()
    z = gt.zero_spread_groups(noncontiguous(r, layout), group_ids=ids)
    assert np.array_equal(z.numpy(), grpo_swift.zero_spread_groups(r.numpy(), group_ids=ids.numpy()))
    rows = gt.informative_rows(r, group_ids=ids)
    assert np.array_equal(rows.numpy(), grpo_swift.informative_rows(r.numpy(), group_ids=ids.numpy()))


# ---- fused linear GRPO loss ---------------------------------------------------------------

@FUZZ
@given(b=st.integers(1, 3), t=st.integers(1, 5), h=st.integers(1, 8), v=st.integers(1, 30),
       kind=st.sampled_from(["f32", "f64", "f16", "bf16"]), loss_type=st.sampled_from(LOSS_TYPES),
       beta=st.sampled_from([0.0, 0.04]), bias=st.booleans(), module=st.booleans(), junk=special,
       layout=st.sampled_from(["c", "strided", "transposed"]), seed=st.integers(0, 2**31))
def test_fuzz_torch_fused_linear_grpo_loss(b, t, h, v, kind, loss_type, beta, bias, module, junk, layout, seed):
    """FusedLinearGRPOLoss / fused_linear_grpo_loss equal the numpy API on the values the kernel
    reads (float32 bit for bit; bfloat16 within float32 rounding of the other schedule), gradients
    back in the inputs' dtypes; garbage at masked positions (hidden, old/ref log-probs) is ignored."""
    g = torch.Generator().manual_seed(seed)
    dt = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}[kind]
    hid = torch.randn(b, t, h, generator=g, dtype=torch.float64).to(dt)
    w = (torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5).to(dt)
    bs = (torch.randn(v, generator=g, dtype=torch.float64) * 0.3).to(dt) if bias else None
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) < 0.75
    adv = torch.randn(b, generator=g)
    old = -torch.rand(b, t, generator=g) * 3
    ref = old + torch.randn(b, t, generator=g) * 0.1
    junk_t = torch.tensor(junk, dtype=torch.float64)
    d_hid = torch.where(mask[..., None], hid, junk_t.to(dt))
    d_old = torch.where(mask, old, junk_t.float())
    d_ref = torch.where(mask, ref, junk_t.float())
    hl = noncontiguous(d_hid, layout).requires_grad_()
    wl = noncontiguous(w, layout).requires_grad_()
    bl = None if bs is None else bs.clone().requires_grad_()
    if module:
        fn = gt.FusedLinearGRPOLoss(beta=beta, loss_type=loss_type, max_completion_length=t)
        loss, _ = fn(hl, wl, ids, mask, adv, bias=bl, old_per_token_logps=d_old,
                     ref_per_token_logps=d_ref if beta else None)
    else:
        loss, _ = gt.fused_linear_grpo_loss(hl, wl, ids, mask, adv, bias=bl, old_logps=d_old,
                                            ref_logps=d_ref if beta else None, beta=beta, loss_type=loss_type,
                                            max_completion_length=t)
    loss.backward()
    for leaf in (hl, wl) + ((bl,) if bl is not None else ()):
        assert leaf.grad.dtype == dt and torch.all(torch.isfinite(leaf.grad)), "NaN leaked from masked rows"
    assert torch.all(hl.grad[~mask] == 0)
    kdt = torch.bfloat16 if kind == "bf16" else torch.float32

    def f32(x):
        return None if x is None else x.detach().to(kdt).to(torch.float32).numpy()

    want = grpo_swift.fused_linear_grpo_loss(
        np.where(mask.numpy()[..., None], f32(hid), 0.0).astype(np.float32), f32(w), ids.numpy(), mask.numpy(),
        adv.numpy(), bias=f32(bs), old_logps=old.numpy(), ref_logps=ref.numpy() if beta else None, beta=beta,
        loss_type=loss_type, max_completion_length=t)
    # Bit for bit unless the kernel took another path than the reference: bfloat16 (its own
    # schedule) or non-finite garbage in masked hidden rows (left out of the grad_weight GEMM,
    # which splits it: other rounding).
    exact = kind != "bf16" and bool(torch.isfinite(junk_t.to(dt)))
    rtol = 0 if exact else 1e-4
    np.testing.assert_allclose(float(loss.detach()), np.float32(want.loss), rtol=rtol, atol=0 if exact else 1e-5)
    for got, ref_g in ((hl.grad, want.grad_hidden), (wl.grad, want.grad_weight)) + (
            ((bl.grad, want.grad_bias),) if bl is not None else ()):
        expected = torch.from_numpy(np.ascontiguousarray(ref_g)).reshape(got.shape)
        if exact:
            assert torch.equal(got, expected.to(dt))
        else:
            tol = max(ROUND[dt], 1e-4)
            np.testing.assert_allclose(got.double().numpy(), expected.double().numpy(), rtol=tol,
                                       atol=tol * (1 + float(expected.abs().max())))


# ---- wrong types, shapes, dtypes, devices ---------------------------------------------------

bad_tensors = st.one_of(
    st.none(), st.text(max_size=3), st.integers(), st.floats(allow_nan=True), st.lists(st.floats(), max_size=3),
    st.builds(lambda n: np.ones(n, dtype=np.float32), st.integers(0, 4)),
    st.builds(lambda n, d: torch.ones(n, dtype=d), st.integers(0, 4),
              st.sampled_from([torch.int64, torch.bool, torch.complex64, torch.float32, torch.bfloat16])),
    st.builds(lambda a, c: torch.ones(a, c), st.integers(0, 3), st.integers(0, 3)),
    st.builds(lambda a: torch.ones(a, 2, 3), st.integers(0, 2)),
    st.builds(lambda n: torch.ones(n, device="meta"), st.integers(0, 3)),
    st.just(torch.tensor(1.0)),
)

TORCH_FUNCS = {
    "grpo_loss": lambda a, b, c, kw: gt.grpo_loss(a, b, c, **kw),
    "selective_log_softmax": lambda a, b, c, kw: gt.selective_log_softmax(a, b, mask=c, **kw),
    "fused_log_probs": lambda a, b, c, kw: gt.fused_log_probs(a, b, c, **kw),
    "group_advantages": lambda a, b, c, kw: gt.group_advantages(a, b, **kw),
    "fused_linear_grpo_loss": lambda a, b, c, kw: gt.fused_linear_grpo_loss(a, b, c, c, a, **kw),
    "FusedLinearGRPOLoss.forward": lambda a, b, c, kw: gt.FusedLinearGRPOLoss()(a, b, c, c, a, **kw),
    "advantages": lambda a, b, c, kw: gt.advantages(a, "rloo", group_ids=c, **kw),
    "reinforce_pp_advantages": lambda a, b, c, kw: gt.reinforce_pp_advantages(a, c, **kw),
    "zero_spread_groups": lambda a, b, c, kw: gt.zero_spread_groups(a, group_ids=c, **kw),
}


@FUZZ
@given(fn=st.sampled_from(sorted(TORCH_FUNCS)), a=bad_tensors, b=st.one_of(bad_tensors, st.integers(-1, 4)),
       c=bad_tensors,
       kw=st.dictionaries(st.sampled_from(["temperature", "bias", "loss_type", "beta", "scale_rewards",
                                           "old_per_token_logps", "num_items_in_batch"]),
                          st.one_of(bad_tensors, st.text(max_size=4)), max_size=2))
def test_fuzz_torch_bad_input_raises_cleanly(fn, a, b, c, kw):
    if fn == "FusedLinearGRPOLoss.forward":
        kw = {k: v for k, v in kw.items() if k in ("bias", "num_items_in_batch")}
    if fn in ("advantages", "reinforce_pp_advantages", "zero_spread_groups"):
        kw = {}
    if fn in ("selective_log_softmax", "fused_log_probs", "group_advantages"):
        kw = {k: v for k, v in kw.items() if k in ("temperature", "bias", "scale_rewards")}
        if fn != "fused_log_probs":
            kw.pop("bias", None)
        if fn != "group_advantages":
            kw.pop("scale_rewards", None)
        else:
            kw.pop("temperature", None)
    try:
        TORCH_FUNCS[fn](a, b, c, kw)
    except (TypeError, ValueError) as exc:
        assert f"{fn}(" in str(exc) or f"{fn.split('.')[0]}(" in str(exc), f"{fn}: {exc!r}"
