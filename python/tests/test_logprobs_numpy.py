"""grpo_swift.selective_log_softmax / fused_log_probs (numpy API): float64 references, edge
cases, backward against torch autograd in float64, in-place backward, thread-count
determinism, errors."""
from __future__ import annotations

import numpy as np
import pytest

import grpo_swift


def ref_log_softmax(x: np.ndarray, tau: float) -> np.ndarray:
    z = x.astype(np.float64) / tau
    m = z.max(-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))


def ref_lp_entropy(x, t, tau=1.0, mask=None):
    ls = ref_log_softmax(x, tau)
    tt = np.where(t < 0, 0, t)
    lp = np.take_along_axis(ls, tt[..., None], -1)[..., 0]
    ent = -(np.exp(ls) * np.where(np.isfinite(ls), ls, 0)).sum(-1)
    keep = t >= 0 if mask is None else (t >= 0) & (mask != 0)
    return np.where(keep, lp, 0.0), np.where(keep, ent, 0.0)


@pytest.mark.parametrize("tau", [0.6, 1.0])
@pytest.mark.parametrize("shape", [(1, 5), (3, 7), (2, 3, 2049), (4, 4103)])
def test_float64_matches_log_softmax_gather(rng, tau, shape):
    x = rng.normal(scale=3, size=shape)
    t = rng.integers(0, shape[-1], size=shape[:-1])
    lp, ent = grpo_swift.selective_log_softmax(x, t, temperature=tau, return_entropy=True)
    rlp, rent = ref_lp_entropy(x, t, tau)
    assert lp.dtype == np.float64 and lp.shape == shape[:-1]
    np.testing.assert_allclose(lp, rlp, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ent, rent, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_inputs(rng, dtype):
    x = (rng.normal(scale=4, size=(6, 1001))).astype(dtype)
    t = rng.integers(0, 1001, size=6)
    lp, ent = grpo_swift.selective_log_softmax(x, t, temperature=0.7, return_entropy=True)
    rlp, rent = ref_lp_entropy(x.astype(np.float64), t, 0.7)
    assert lp.dtype == np.float32
    np.testing.assert_allclose(lp, rlp, atol=1e-5)
    np.testing.assert_allclose(ent, rent, atol=1e-5)


def test_extreme_and_negative_logits():
    v = 37
    rows = np.stack([
        np.where(np.arange(v) % 2 == 0, 1e4, -1e4),
        -1000.0 - 0.37 * np.arange(v),
        np.where(np.arange(v) % 3 == 0, -np.inf, 0.1 * np.arange(v)),
    ])
    t = np.array([2, 5, 4])
    for dtype in (np.float64, np.float32):
        lp, ent = grpo_swift.selective_log_softmax(rows.astype(dtype), t, return_entropy=True)
        rlp, rent = ref_lp_entropy(rows.astype(dtype).astype(np.float64), t)
        tol = 1e-10 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(lp, rlp, atol=tol)
        np.testing.assert_allclose(ent, rent, atol=tol)
        assert np.all(lp <= 0) and np.all(np.isfinite(lp))


def test_log_probs_nonpositive_and_entropy_shift_invariant(rng):
    x = rng.normal(scale=10, size=(64, 333)).astype(np.float32)
    t = rng.integers(0, 333, size=64)
    lp, ent = grpo_swift.selective_log_softmax(x, t, return_entropy=True)
    lp2, ent2 = grpo_swift.selective_log_softmax(x + np.float32(250.0), t, return_entropy=True)
    assert np.all(lp <= 0)
    np.testing.assert_allclose(ent2, ent, atol=2e-4)
    np.testing.assert_allclose(lp2, lp, atol=2e-4)


def test_unscored_positions_are_zero(rng):
    x = rng.normal(size=(4, 20))
    t = np.array([1, -100, 3, 4])
    mask = np.array([True, True, False, True])
    lp, ent = grpo_swift.selective_log_softmax(x, t, mask=mask, return_entropy=True)
    assert lp[1] == 0 and ent[1] == 0 and lp[2] == 0 and ent[2] == 0
    rlp, rent = ref_lp_entropy(x, t, mask=mask)
    np.testing.assert_allclose(lp, rlp, atol=1e-12)
    g = grpo_swift.selective_log_softmax_backward(x, t, np.ones(4), np.ones(4), mask=mask)
    assert np.all(g[1:3] == 0) and np.any(g[0] != 0)


@pytest.mark.parametrize("tau", [0.6, 1.0])
def test_backward_float64_matches_torch_autograd(rng, tau):
    torch = pytest.importorskip("torch")
    x = rng.normal(scale=2, size=(5, 3, 67))
    t = rng.integers(0, 67, size=(5, 3))
    t[0, 1] = -100
    gl, gh = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    f = grpo_swift.selective_log_softmax_forward(x, t, temperature=tau)
    g = grpo_swift.selective_log_softmax_backward(x, t, gl, gh, logsumexp=f.logsumexp, entropy=f.entropy,
                                                  temperature=tau)
    g_recomputed = grpo_swift.selective_log_softmax_backward(x, t, gl, gh, temperature=tau)
    xt = torch.tensor(x, requires_grad=True)
    ls = torch.log_softmax(xt / tau, -1)
    keep = torch.tensor(t >= 0)
    lp = ls.gather(-1, torch.tensor(np.maximum(t, 0))[..., None])[..., 0] * keep
    ent = -(ls.exp() * ls).sum(-1) * keep
    (lp * torch.tensor(gl) + ent * torch.tensor(gh)).sum().backward()
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g_recomputed, g, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f.logsumexp[0, 0], np.log(np.exp(x[0, 0] / tau).sum()), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_inplace_backward_equals_out_of_place(rng, dtype):
    x = rng.normal(size=(7, 515)).astype(dtype)
    t = rng.integers(0, 515, size=7)
    gl, gh = rng.normal(size=7), rng.normal(size=7)
    out = np.empty_like(x)  # the logits' own dtype
    ref = grpo_swift.selective_log_softmax_backward(x, t, gl, gh, temperature=0.9, out=out)
    y = x.copy()
    res = grpo_swift.selective_log_softmax_backward(y, t, gl, gh, temperature=0.9, inplace=True)
    assert res is y
    np.testing.assert_array_equal(y, ref)
    # The input is untouched without inplace.
    x2 = x.copy()
    grpo_swift.selective_log_softmax_backward(x2, t, gl, gh)
    np.testing.assert_array_equal(x2, x)


def test_thread_count_does_not_change_bits(rng):
    x = rng.normal(size=(67, 3001)).astype(np.float32)
    t = rng.integers(0, 3001, size=67)
    # Fused: 600 rows and 2100-column tiles give several sub-GEMM tasks per tile.
    h = rng.normal(size=(600, 48)).astype(np.float32)
    w = rng.normal(size=(2500, 48)).astype(np.float32)
    b = rng.normal(size=2500).astype(np.float32)
    tt = rng.integers(0, 2500, size=600)
    before = grpo_swift.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            grpo_swift.set_num_threads(n)
            f = grpo_swift.fused_log_probs_forward(h, w, tt, bias=b, final_logit_softcapping=5.0, tile_cols=2100)
            gr = grpo_swift.fused_log_probs_backward(h, w, tt, np.ones(600), np.ones(600), logsumexp=f.logsumexp,
                                                     entropy=f.entropy, bias=b, final_logit_softcapping=5.0,
                                                     tile_cols=2100)
            results.append((grpo_swift.selective_log_softmax(x, t, return_entropy=True),
                            grpo_swift.selective_log_softmax_backward(x, t, np.ones(67), np.ones(67)), f, gr))
    finally:
        grpo_swift.set_num_threads(before)
    first = results[0]
    for other in results[1:]:
        for a, b_ in zip(first[0] + (first[1],) + tuple(first[2]) + first[3], other[0] + (other[1],)
                         + tuple(other[2]) + other[3]):
            assert a.tobytes() == b_.tobytes()


def test_fused_matches_logits_path(rng):
    h = rng.normal(size=(3, 11, 32)).astype(np.float32)
    w = (rng.normal(size=(517, 32)) * 0.3).astype(np.float32)
    b = rng.normal(size=517).astype(np.float32)
    t = rng.integers(0, 517, size=(3, 11))
    t[1, 4] = -100
    lp, ent = grpo_swift.fused_log_probs(h, w, t, bias=b, temperature=0.7, logit_scale=0.5,
                                         final_logit_softcapping=20.0)
    logits = 20.0 * np.tanh((h.astype(np.float64) @ w.T.astype(np.float64) + b) * 0.5 / 20.0)
    rlp, rent = ref_lp_entropy(logits, t, 0.7)
    assert lp.shape == (3, 11) and lp.dtype == np.float32
    np.testing.assert_allclose(lp, rlp, atol=2e-5)
    np.testing.assert_allclose(ent, rent, atol=2e-5)
    assert lp[1, 4] == 0 and ent[1, 4] == 0


def test_errors():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="selective_log_softmax.*targets\\[1\\] = 3"):
        grpo_swift.selective_log_softmax(x, np.array([0, 3]))
    with pytest.raises(ValueError, match="'temperature'"):
        grpo_swift.selective_log_softmax(x, np.array([0, 1]), temperature=0.0)
    with pytest.raises(TypeError, match="'index'"):
        grpo_swift.selective_log_softmax(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="'index' must have shape \\(2,\\)"):
        grpo_swift.selective_log_softmax(x, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="'logits'"):
        grpo_swift.selective_log_softmax(np.zeros((2, 3), np.int32), np.array([0, 1]))
    with pytest.raises(ValueError, match="'mask'"):
        grpo_swift.selective_log_softmax(x, np.array([0, 1]), mask=np.ones(3))
    with pytest.raises(ValueError, match="inplace"):
        grpo_swift.selective_log_softmax_backward(x.tolist(), np.array([0, 1]), np.ones(2), inplace=True)
    with pytest.raises(ValueError, match="'entropy'"):
        grpo_swift.selective_log_softmax_backward(x, np.array([0, 1]), None, np.ones(2), logsumexp=np.zeros(2))
    h, w = np.zeros((2, 4), np.float32), np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match="fused_log_probs.*'weight'"):
        grpo_swift.fused_log_probs(h, np.zeros((5, 3), np.float32), np.array([0, 1]))
    with pytest.raises(TypeError, match="fused_log_probs.*'hidden'"):
        grpo_swift.fused_log_probs(h.astype(np.float64), w, np.array([0, 1]))
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        grpo_swift.fused_log_probs(h, w, np.array([0, 1]), final_logit_softcapping=-1.0)
    with pytest.raises(ValueError, match="targets\\[0\\] = 5"):
        grpo_swift.fused_log_probs(h, w, np.array([5, 1]))
    with pytest.raises(ValueError, match="'bias'"):
        grpo_swift.fused_log_probs(h, w, np.array([0, 1]), bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="need_bias"):
        grpo_swift.fused_log_probs_backward(h, w, np.array([0, 1]), np.ones(2), logsumexp=np.zeros(2),
                                            need_bias=True)
    # Size overflow is reported before anything is allocated.
    with pytest.raises((OverflowError, ValueError), match="overflow"):
        grpo_swift.fused_log_probs_scratch_bytes(2**62, 4096, 2)
