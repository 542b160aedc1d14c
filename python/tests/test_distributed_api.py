"""grpo_swift.distributed in one process (no torch.distributed: no collective runs), the
metric-reduction rules, and the caller-given high-entropy threshold (LossConfig.entropy_threshold)
that multi-process training needs. The 2-process behaviour is tested in test_distributed.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import grpo_swift  # noqa: E402
import grpo_swift.distributed as gsd  # noqa: E402
import grpo_swift.torch as gst  # noqa: E402
from grpo_swift._loss import LOSS_TYPES  # noqa: E402


def problem(seed=0, B=6, T=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64).mul(3).to(dtype)
    old = lp + (torch.rand(B, T, generator=g, dtype=torch.float64).to(dtype) - 0.5) * 0.5
    ref = lp + (torch.rand(B, T, generator=g, dtype=torch.float64).to(dtype) - 0.5) * 0.3
    ent = torch.rand(B, T, generator=g, dtype=torch.float64).mul(3).to(dtype)
    mask = torch.rand(B, T, generator=g) < 0.75
    mask[1] = False
    adv = torch.randn(B, generator=g).to(torch.float32 if dtype != torch.float64 else dtype)
    return dict(lp=lp, old=old, ref=ref, ent=ent, mask=mask, adv=adv)


def test_not_initialised_means_one_process():
    assert gsd.world() == (0, 1)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_one_process_grpo_loss_is_grpo_swift_torch(loss_type):
    p = problem(1)
    opts = dict(loss_type=loss_type, beta=0.04, max_completion_length=9, top_entropy_quantile=0.6, entropy_coef=0.05,
                epsilon_high=1.1 if loss_type == "cispo" else 0.28)
    outs = []
    for fn in (gst.grpo_loss, gsd.grpo_loss):
        lp, ent = p["lp"].clone().requires_grad_(True), p["ent"].clone().requires_grad_(True)
        loss, metrics = fn(lp, p["adv"], p["mask"], old_per_token_logps=p["old"], ref_per_token_logps=p["ref"],
                           entropies=ent, **opts)
        loss.backward()
        outs.append((loss.detach(), lp.grad, ent.grad, metrics))
    (l0, g0, h0, m0), (l1, g1, h1, m1) = outs
    assert torch.equal(l0, l1) and torch.equal(g0, g1) and torch.equal(h0, h1)
    assert set(m0) == set(m1) and all(isinstance(v, float) for v in m1.values())
    for k, v in m0.items():
        assert v.item() == m1[k] or (math.isnan(v.item()) and math.isnan(m1[k])), k
    # reduce=False: the metric tensors of grpo_swift.torch.grpo_loss.
    _, raw = gsd.grpo_loss(p["lp"], p["adv"], p["mask"], reduce=False, normalization="trl", **dict(opts, beta=0.0,
                                                                                                  entropy_coef=0.0,
                                                                                                  top_entropy_quantile=1.0))
    assert all(isinstance(v, torch.Tensor) for v in raw.values())


def test_one_process_helpers():
    r = np.array([1.0, 2.0, 3.0, 5.0, 0.0, 0.0])
    res = gsd.group_advantages(r, 2)
    assert isinstance(res.advantages, np.ndarray) and res.offset == 0 and res.rows == (6,)
    np.testing.assert_array_equal(res.advantages, grpo_swift.group_advantages(r, 2).advantages)
    assert res.result.frac_reward_zero_std == pytest.approx(1 / 3)
    t = torch.tensor(r)
    tres = gsd.group_advantages(t, 2, scale_rewards="batch")
    assert isinstance(tres.advantages, torch.Tensor)
    assert torch.equal(tres.advantages, gst.group_advantages(t, 2, scale_rewards="batch").advantages)
    assert tres.result.frac_reward_zero_std == 0.0  # one batch std, not zero
    assert gsd.group_advantages(t, 2).result.frac_reward_zero_std == pytest.approx(1 / 3)  # bool tensors too
    x = np.arange(6.0)
    assert gsd.gather_rows(x) == (x, 0)
    p = problem(2)
    assert gsd.global_token_count(p["mask"]) == float(p["mask"].sum())


def test_entropy_threshold_is_trls_quantile():
    p = problem(3)
    q = 0.4
    thr = gsd.entropy_threshold(p["ent"], p["mask"], q)
    assert thr == torch.quantile(p["ent"][p["mask"]].float(), 1 - q).item()
    assert math.isnan(gsd.entropy_threshold(p["ent"], torch.zeros_like(p["mask"]), q))
    # Given to the kernel, it reproduces the kernel's own quantile bit for bit.
    own = gst.grpo_loss(p["lp"], p["adv"], p["mask"], entropies=p["ent"], top_entropy_quantile=q, loss_type="grpo")
    ext = gst.grpo_loss(p["lp"], p["adv"], p["mask"], entropies=p["ent"], top_entropy_quantile=q, loss_type="grpo",
                        entropy_threshold=thr)
    assert torch.equal(own[0], ext[0])
    assert {k: v.item() for k, v in own[1].items()} == {k: v.item() for k, v in ext[1].items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_entropy_threshold_option_in_the_kernel(dtype):
    rng = np.random.default_rng(4)
    B, T = 5, 8
    lp = -rng.exponential(size=(B, T)).astype(dtype)
    ent = rng.uniform(0, 3, (B, T)).astype(dtype)
    mask = rng.random((B, T)) < 0.8
    adv = rng.normal(size=B)
    opts = dict(loss_type="dapo", top_entropy_quantile=0.5, entropy_coef=0.1, entropies=ent)
    own = grpo_swift.grpo_loss(lp, adv, mask, **opts)
    q = float(torch.quantile(torch.from_numpy(ent[mask]).float(), 0.5))
    ext = grpo_swift.grpo_loss(lp, adv, mask, entropy_threshold=q, **opts)
    assert own.loss == ext.loss and np.array_equal(own.grad, ext.grad)
    assert np.array_equal(own.grad_entropies, ext.grad_entropies)
    # A higher threshold keeps fewer tokens; NaN keeps none (TRL's empty or NaN quantile).
    hi = grpo_swift.grpo_loss(lp, adv, mask, entropy_threshold=2.5, **opts)
    assert hi.metrics["num_entropy_tokens"] == float(((ent >= dtype(2.5)) & mask).sum())
    none = grpo_swift.grpo_loss(lp, adv, mask, entropy_threshold=float("nan"), **opts)
    assert none.metrics["num_entropy_tokens"] == 0 and not none.grad.any()
    # The fused linear loss reads the same config field.
    H, V = 6, 9
    hidden = rng.normal(size=(B, T, H)).astype(np.float32)
    weight = rng.normal(size=(V, H)).astype(np.float32)
    ids = rng.integers(0, V, (B, T))
    fopts = dict(loss_type="dapo", top_entropy_quantile=0.5)
    fo = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv.astype(np.float32), **fopts)
    thr = float(torch.quantile(torch.from_numpy(fo.entropy[mask]).float(), 0.5))
    fe = grpo_swift.fused_linear_grpo_loss(hidden, weight, ids, mask, adv.astype(np.float32),
                                           entropy_threshold=thr, **fopts)
    assert fo.loss == fe.loss and np.array_equal(fo.grad_hidden, fe.grad_hidden)


def test_entropy_threshold_errors():
    with pytest.raises(ValueError, match="entropy_threshold.*top_entropy_quantile"):
        grpo_swift.LossConfig(entropy_threshold=0.5)
    with pytest.raises(TypeError, match="entropy_threshold"):
        grpo_swift.LossConfig(top_entropy_quantile=0.5, entropy_threshold="0.5")
    assert grpo_swift.LossConfig(top_entropy_quantile=0.5, entropy_threshold=float("inf")).entropy_threshold == math.inf


def test_errors_name_the_function_and_argument():
    p = problem(5)
    with pytest.raises(ValueError, match=r"grpo_swift.distributed.grpo_loss\(\).*normalization"):
        gsd.grpo_loss(p["lp"], p["adv"], p["mask"], normalization="local")
    with pytest.raises(TypeError, match="reduce"):
        gsd.grpo_loss(p["lp"], p["adv"], p["mask"], reduce="yes")
    with pytest.raises(ValueError, match="num_processes is the world size 1"):
        gsd.grpo_loss(p["lp"], p["adv"], p["mask"], num_processes=2)
    with pytest.raises(TypeError, match="per_token_logps"):
        gsd.grpo_loss(p["lp"].numpy(), p["adv"], p["mask"])
    with pytest.raises(ValueError, match="completion_mask"):
        gsd.grpo_loss(p["lp"], p["adv"], p["mask"][:, :3])
    with pytest.raises(TypeError, match="unexpected keyword"):
        gsd.grpo_loss(p["lp"], p["adv"], p["mask"], los_type="dapo")
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        gsd.entropy_threshold(p["ent"], p["mask"], 1.0)
    with pytest.raises(ValueError, match="entropies"):
        gsd.entropy_threshold(p["ent"], p["mask"][:, :2], 0.5)
    with pytest.raises(TypeError, match="rewards"):
        gsd.group_advantages(["a", "b"], 2)
    with pytest.raises(TypeError, match="config"):
        gsd.reduce_metrics({"num_tokens": 1.0}, {"loss_type": "dapo"}, batch_size=1)
    with pytest.raises(ValueError, match="no cross-process reduction"):
        gsd.reduce_metrics({"num_tokens": 1.0, "my_metric": 2.0}, grpo_swift.LossConfig(), batch_size=1)


def test_every_metric_has_a_cross_process_reduction():
    """A metric the loss can report must have a reduction (a new metric fails here, not in a 2-process run)."""
    p = problem(6)
    for loss_type in LOSS_TYPES:
        for level in ("token", "sequence", "sequence_token"):
            if loss_type == "gmpo" and level != "token":
                continue  # GMPO is token level only (a ValueError)
            extra = dict(clip_ratio_c=3.0) if loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo") else {}
            _, metrics = gst.grpo_loss(p["lp"], p["adv"], p["mask"], ref_per_token_logps=p["ref"], entropies=p["ent"],
                                       loss_type=loss_type, beta=0.1, importance_sampling_level=level,
                                       max_completion_length=9, entropy_coef=0.1, **extra)
            assert set(metrics) <= set(gsd.METRIC_REDUCTIONS), set(metrics) - set(gsd.METRIC_REDUCTIONS)


def test_reduction_rules_follow_trl_logging():
    """The 2-process reduction on a made-up table, against TRL 1.16's formulas written out: global_masked_mean
    (sum of x over every process's tokens -- or rows for (B, 1) tensors -- over the total count), nanmin / nanmax
    of the gathered per-sequence values, nanmean of the processes' policy_loss."""
    names = sorted(n for n in gsd.METRIC_REDUCTIONS if n != "loss")
    col = {n: j for j, n in enumerate(names)}
    table = torch.full((2, len(names) + 2), math.nan, dtype=torch.float64)
    table[:, -2] = torch.tensor([3.0, 5.0])    # rows
    table[:, -1] = torch.tensor([10.0, 30.0])  # tokens
    table[:, col["kl"]] = torch.tensor([0.2, 0.4])
    table[:, col["clip_ratio/low_mean"]] = torch.tensor([0.1, 0.3])
    table[:, col["vespo/phi_seq_mean"]] = torch.tensor([1.0, 2.0])
    table[:, col["clip_ratio/low_min"]] = torch.tensor([math.nan, 0.25])
    table[:, col["clip_ratio/high_max"]] = torch.tensor([0.5, 0.75])
    table[:, col["policy_loss"]] = torch.tensor([1.0, math.nan])
    table[:, col["policy_term"]] = torch.tensor([1.0, 3.0])
    table[:, col["num_tokens"]] = torch.tensor([10.0, 30.0])
    for level, per_token_adv, ratio_count in (("token", False, (10, 30)), ("sequence", False, (3, 5)),
                                              ("sequence", True, (10, 30))):
        cfg = grpo_swift.LossConfig(importance_sampling_level=level)
        out = gsd._reduce(names, table, gsd._count_kind(cfg, per_token_adv))
        assert out["kl"] == pytest.approx((0.2 * 10 + 0.4 * 30) / 40)
        a, b = ratio_count
        assert out["clip_ratio/low_mean"] == pytest.approx((0.1 * a + 0.3 * b) / (a + b))
        phi_count = (10, 30) if per_token_adv else (3, 5)
        assert out["vespo/phi_seq_mean"] == pytest.approx((1.0 * phi_count[0] + 2.0 * phi_count[1]) / sum(phi_count))
        assert out["clip_ratio/low_min"] == 0.25 and out["clip_ratio/high_max"] == 0.75
        assert out["policy_loss"] == 1.0 and out["policy_term"] == 2.0 and out["num_tokens"] == 40.0


def test_import_without_torch_says_what_to_install():
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import grpo_swift\n"
            "try:\n"
            "    import grpo_swift.distributed\n"
            "except ImportError as e:\n"
            "    print('IMPORTERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORTERROR" in out.stdout and "pip install" in out.stdout and "torch.distributed" in out.stdout
