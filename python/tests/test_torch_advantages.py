"""grpo_swift.torch.group_advantages: equals the numpy API, compiles without graph breaks."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import grpo_swift  # noqa: E402
import grpo_swift.torch as gst  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_numpy_api(dtype):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(32, 2, generator=g, dtype=dtype)
    r[5, :] = float("nan")
    got = gst.group_advantages(r, 8, reward_weights=[1.0, 0.5], scale_rewards="batch")
    ref = grpo_swift.group_advantages(r.numpy(), 8, reward_weights=[1.0, 0.5], scale_rewards="batch")
    assert got.advantages.dtype == dtype and got.is_std_zero.dtype == torch.bool
    for a, b in zip(got, ref):
        assert a.numpy().tobytes() == b.tobytes()


def test_tensor_weights_and_requires_grad_input():
    r = torch.rand(8, 2, requires_grad=True)
    got = gst.group_advantages(r, 4, reward_weights=torch.tensor([2.0, 1.0]))
    ref = grpo_swift.group_advantages(r.detach().numpy(), 4, reward_weights=[2.0, 1.0])
    np.testing.assert_array_equal(got.advantages.numpy(), ref.advantages)


def test_compile_fullgraph_matches_eager():
    def step(r):
        out = gst.group_advantages(r, 4)
        return out.advantages * 2 + out.std

    r = torch.rand(16)
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(r), step(r), rtol=0, atol=0)


def test_opcheck():
    from grpo_swift.torch._advantages import _group_advantages_op
    r = torch.rand(8, 2, dtype=torch.float64)
    torch.library.opcheck(_group_advantages_op, (r, torch.tensor([1.0, 0.5], dtype=torch.float64), 4,
                                                 "group", "sum_then_normalize"))
    torch.library.opcheck(_group_advantages_op, (r[:, 0].contiguous(), None, 2, "none", "sum_then_normalize"))


def test_errors():
    with pytest.raises(TypeError, match=r"group_advantages\(\): argument 'rewards' is on device 'meta'.*run on CPU"):
        gst.group_advantages(torch.empty(8, device="meta"), 4)
    with pytest.raises(TypeError, match="'rewards' must have dtype float32, float64, got int64"):
        gst.group_advantages(torch.arange(8), 4)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        gst.group_advantages([1.0, 2.0], 2)
    with pytest.raises(ValueError, match="multiple of num_generations"):
        gst.group_advantages(torch.rand(7), 2)
