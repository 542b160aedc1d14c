"""Parity with TRL 1.16 on CPU in float32: `selective_log_softmax_and_entropy` (log-probs and
entropy from logits) and `ChunkedLogProbFunction` (the fused LM head), forward and backward.

Tolerances: log-probs 1e-5 and entropy 1e-4 absolute; gradients 1e-4 relative to the
gradient's scale (max |ours - TRL| <= 1e-4 max |TRL|).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from trl.kernels.chunked_logprob import ChunkedLogProbFunction  # noqa: E402
from trl.trainer.utils import selective_log_softmax_and_entropy  # noqa: E402

import grpo_swift  # noqa: E402
import grpo_swift.torch as gst  # noqa: E402


def assert_rel(ours: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    ours, ref = ours.double(), ref.double()
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def trl_logits_path(logits, index, tau, mask=None):
    return selective_log_softmax_and_entropy(logits, index, temperature=tau, row_mask=mask)


def make_logits(kind: str, n: int, v: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, v, generator=g) * 3
    if kind == "large":
        x = torch.where(torch.rand(n, v, generator=g) < 0.5, torch.full_like(x, 1e4), torch.full_like(x, -1e4)) + x
    elif kind == "negative":
        x = -1000 - x.abs()
    return x


@pytest.mark.parametrize("tau", [0.6, 1.0])
@pytest.mark.parametrize("kind", ["normal", "large", "negative"])
@pytest.mark.parametrize("n,v", [(1, 7), (37, 1031), (8, 4099)])
def test_logits_path_matches_trl(tau, kind, n, v):
    g = torch.Generator().manual_seed(n * v)
    x = make_logits(kind, n, v, g)
    idx = torch.randint(0, v, (n,), generator=g)
    gl, gh = torch.randn(n, generator=g), torch.randn(n, generator=g)

    xr = x.clone().requires_grad_(True)
    rlp, rent = trl_logits_path(xr, idx, tau)
    (rlp * gl + rent * gh).sum().backward()

    xo = x.clone().requires_grad_(True)
    lp, ent = gst.selective_log_softmax(xo, idx, tau, return_entropy=True)
    (lp * gl + ent * gh).sum().backward()

    # The same TRL code in float64 is the exact answer: we must be within the stated
    # tolerances of it for every kind of logits (plus 2 ulp of the float32 output itself:
    # with logits of +-1e4 a log-prob can be -3e4, whose ulp is 2e-3).
    eps = torch.finfo(torch.float32).eps
    xd = x.double().requires_grad_(True)
    dlp, dent = trl_logits_path(xd, idx, tau)
    (dlp * gl.double() + dent * gh.double()).sum().backward()
    torch.testing.assert_close(lp.double(), dlp.detach(), rtol=2 * eps, atol=1e-5)
    torch.testing.assert_close(ent.double(), dent.detach(), rtol=2 * eps, atol=1e-4)
    assert_rel(xo.grad, xd.grad, 1e-4, "grad logits vs float64")
    assert (lp <= 0).all()
    # TRL in float32: it divides the logits by tau and takes their logsumexp in float32, so
    # its own error grows like ulp(max|logits| / tau) (2e-3 at 1e4, 1e-4 at 1e3); ours does
    # not (we subtract the max first and keep logsumexp in float64).
    trl_err = 4 * eps * (x.abs().max().item() / tau)
    torch.testing.assert_close(lp, rlp.detach(), rtol=0, atol=max(1e-5, trl_err))
    torch.testing.assert_close(ent, rent.detach(), rtol=0, atol=max(1e-4, trl_err))
    assert_rel(xo.grad, xr.grad, max(1e-4, trl_err), "grad logits vs TRL float32")


def test_logits_path_row_mask_and_bf16():
    g = torch.Generator().manual_seed(3)
    n, v = 16, 2001
    x = torch.randn(n, v, generator=g) * 2
    idx = torch.randint(0, v, (n,), generator=g)
    mask = (torch.rand(n, generator=g) > 0.3).long()
    rlp, rent = trl_logits_path(x, idx, 0.8, mask)
    lp, ent = gst.selective_log_softmax(x, idx, 0.8, mask, return_entropy=True)
    torch.testing.assert_close(lp, rlp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, rent, rtol=0, atol=1e-4)
    assert (lp[mask == 0] == 0).all() and (ent[mask == 0] == 0).all()

    # bfloat16 logits: we compute in float32 from the exact bf16 values; TRL's float32 path
    # on the same values is the reference. The gradient comes back as bfloat16.
    xb = x.to(torch.bfloat16)
    xbr = xb.float().requires_grad_(True)
    rlp, rent = trl_logits_path(xbr, idx, 0.8)
    (rlp + 0.5 * rent).sum().backward()
    xo = xb.clone().requires_grad_(True)
    lp, ent = gst.selective_log_softmax(xo, idx, 0.8, return_entropy=True)
    (lp + 0.5 * ent).sum().backward()
    assert lp.dtype == torch.float32 and xo.grad.dtype == torch.bfloat16
    torch.testing.assert_close(lp, rlp.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, rent.detach(), rtol=0, atol=1e-4)
    # bf16 rounding of the gradient: relative 2^-8.
    assert_rel(xo.grad.float(), xbr.grad, 2 ** -8, "bf16 grad logits")


def run_trl_fused(h, w, b, labels, tau, softcap, scale, gl, gh, chunk=256):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    b = None if b is None else b.clone().requires_grad_(True)
    mask = labels != -100
    lp, ent, *_ = ChunkedLogProbFunction.apply(h, w, b, labels.clamp(min=0), tau, chunk, softcap, scale,
                                               ("entropy",))
    lp, ent = lp.masked_fill(~mask, 0), ent.masked_fill(~mask, 0)
    (lp * gl + ent * gh).sum().backward()
    return lp.detach(), ent.detach(), h.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("tau", [0.6, 1.0])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("softcap,scale", [(None, 1.0), (30.0, 1.0), (None, 0.37), (5.0, 2.0)])
def test_fused_matches_chunked_logprob(tau, bias, softcap, scale):
    g = torch.Generator().manual_seed(11)
    n, hsz, v = 37, 24, 1031  # not multiples of any tile size
    h = torch.randn(n, hsz, generator=g)
    w = torch.randn(v, hsz, generator=g) * 0.3
    b = torch.randn(v, generator=g) if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    labels[5] = -100
    gl, gh = torch.randn(n, generator=g), torch.randn(n, generator=g)
    rlp, rent, rgh, rgw, rgb = run_trl_fused(h, w, b, labels, tau, softcap, scale, gl, gh)

    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    bb = None if b is None else b.clone().requires_grad_(True)
    lp, ent = gst.fused_log_probs(hh, ww, labels, bias=bb, temperature=tau, logit_scale=scale,
                                  final_logit_softcapping=softcap)
    (lp * gl + ent * gh).sum().backward()
    torch.testing.assert_close(lp, rlp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, rent, rtol=0, atol=1e-4)
    assert (lp <= 0).all() and lp[5] == 0 and ent[5] == 0
    assert_rel(hh.grad, rgh, 1e-4, "grad hidden")
    assert_rel(ww.grad, rgw, 1e-4, "grad weight")
    if bias:
        assert_rel(bb.grad, rgb, 1e-4, "grad bias")
    assert (hh.grad[5] == 0).all()


@pytest.mark.parametrize("case", ["single_row", "large", "negative", "bf16"])
def test_fused_edge_cases(case):
    g = torch.Generator().manual_seed(12)
    n, hsz, v = (1, 16, 333) if case == "single_row" else (9, 16, 333)
    h = torch.randn(n, hsz, generator=g)
    w = torch.randn(v, hsz, generator=g) * 0.3
    b = torch.randn(v, generator=g)
    if case == "large":
        h = h * 2000  # logits of order +-1e4
    if case == "negative":
        b = b - 5000
    labels = torch.randint(0, v, (n,), generator=g)
    gl, gh = torch.ones(n), torch.full((n,), 0.5)
    hh, ww, bb = (t.clone() for t in (h, w, b))
    if case == "bf16":
        hh, ww, bb = hh.to(torch.bfloat16), ww.to(torch.bfloat16), bb.to(torch.bfloat16)
        h, w, b = hh.float(), ww.float(), bb.float()  # TRL in float32 on the same values
    rlp, rent, rgh, rgw, rgb = run_trl_fused(h, w, b, labels, 1.0, None, 1.0, gl, gh)
    hh, ww, bb = (t.clone().requires_grad_(True) for t in (hh, ww, bb))
    lp, ent = gst.fused_log_probs(hh, ww, labels, bias=bb)
    (lp * gl + ent * gh).sum().backward()
    # Float32 logits of magnitude L are rounded to ulp(L) / 2 by the GEMM and the bias add in
    # both implementations (in different orders), so they can differ by ~ulp(L) per logit:
    # 1e-3 at L = 1e4, 5e-4 at L = 5e3. Both log-probs inherit it.
    logits = h.double() @ w.double().T + b.double()
    logit_err = 4 * torch.finfo(torch.float32).eps * logits.abs().max().item()
    atol_lp, atol_ent = max(1e-5, logit_err), max(1e-4, logit_err)
    torch.testing.assert_close(lp, rlp, rtol=0, atol=atol_lp)
    torch.testing.assert_close(ent, rent, rtol=0, atol=atol_ent)
    assert (lp <= 0).all()
    if case == "bf16":
        assert hh.grad.dtype == torch.bfloat16
        assert_rel(hh.grad.float(), rgh, 2 ** -8, "bf16 grad hidden")
        assert_rel(ww.grad.float(), rgw, 2 ** -8, "bf16 grad weight")
    else:
        # Softmax probabilities inherit the logits' rounding as a relative error (see above).
        tol = max(1e-4, logit_err)
        assert_rel(hh.grad, rgh, tol, "grad hidden")
        assert_rel(ww.grad, rgw, tol, "grad weight")
        assert_rel(bb.grad, rgb, tol, "grad bias")


def test_no_grad_inference_matches_forward():
    g = torch.Generator().manual_seed(13)
    h, w = torch.randn(20, 8, generator=g), torch.randn(100, 8, generator=g)
    labels = torch.randint(0, 100, (20,), generator=g)
    lp, ent = grpo_swift.fused_log_probs(h.numpy(), w.numpy(), labels.numpy())
    tlp, tent = gst.fused_log_probs(h, w, labels)
    np.testing.assert_array_equal(lp, tlp.numpy())
    np.testing.assert_array_equal(ent, tent.numpy())


def test_torch_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="selective_log_softmax.*'index'"):
        gst.selective_log_softmax(x, torch.zeros(2))
    with pytest.raises(ValueError, match="'index' must have shape"):
        gst.selective_log_softmax(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="'logits'"):
        gst.selective_log_softmax(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="fused_log_probs.*'weight'"):
        gst.fused_log_probs(torch.zeros(2, 4), torch.zeros(5, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="'labels'"):
        gst.fused_log_probs(torch.zeros(2, 4), torch.zeros(5, 4), [0, 1])


def test_fused_bf16_inputs_equal_float32_path_on_same_values():
    # bf16 hidden/weight/bias go to the kernel as bits and are widened exactly per tile: the
    # results are the float32 path's bits on the widened values (gradients then rounded to bf16).
    g = torch.Generator().manual_seed(14)
    h = torch.randn(300, 24, generator=g).to(torch.bfloat16)
    w = (torch.randn(700, 24, generator=g) * 0.3).to(torch.bfloat16)
    b = torch.randn(700, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 700, (300,), generator=g)
    outs = []
    for dtype in (torch.bfloat16, torch.float32):
        hh, ww, bb = (t.detach().clone().to(dtype).requires_grad_(True) for t in (h, w, b))
        lp, ent = gst.fused_log_probs(hh, ww, labels, bias=bb, temperature=0.7, final_logit_softcapping=8.0)
        (lp + 0.3 * ent).sum().backward()
        outs.append((lp, ent, hh.grad.to(torch.bfloat16), ww.grad.to(torch.bfloat16), bb.grad.to(torch.bfloat16)))
    for a, c in zip(*outs):
        assert torch.equal(a, c)
    assert outs[0][2].dtype == torch.bfloat16
    assert grpo_swift.fused_log_probs_scratch_bytes(300, 24, 700, bfloat16=True) > \
        grpo_swift.fused_log_probs_scratch_bytes(300, 24, 700)
