"""grpo_swift.torch estimators: bitwise equal to the numpy API, no copies, torch.compile(fullgraph=True)
without graph breaks, torch.library.opcheck clean, errors that name the function and the argument."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import grpo_swift as gs  # noqa: E402
import grpo_swift.torch as gst  # noqa: E402
from grpo_swift.torch import _estimators as te  # noqa: E402

N, T = 48, 9


def _ragged_ids(rng, n):
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 7)))
    sizes[-1] -= sum(sizes) - n
    labels = rng.permutation(len(sizes)).astype(np.int64) * 7919 - 10**9
    return np.repeat(labels, sizes)[rng.permutation(n)]


def _batch(seed, dtype):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=N)
    r[rng.random(N) < 0.1] = np.nan
    r[:4] = 0.5  # an all-equal group under num_generations=4
    ids = _ragged_ids(rng, N)
    mask = np.arange(T)[None, :] < rng.integers(0, T + 1, N)[:, None]
    mask[5, 3] = False  # a hole inside a response
    return r.astype(dtype), ids, mask


# (estimator, options) -- every estimator and the options that change its path
CASES = [
    ("grpo", {}), ("grpo", {"scale_rewards": "batch"}), ("grpo", {"scale_rewards": "none", "singleton": "raw"}),
    ("dr_grpo", {}), ("rloo", {}), ("rloo", {"normalize_advantages": True, "singleton": "raw"}),
    ("opo", {"response_mask": True}), ("opo", {"lengths": True}), ("gpg", {}), ("gpg", {"alpha": "nonzero"}),
    ("gpg", {"alpha": 2.5, "f_norm": 3.0}), ("passk", {"singleton": "zero"}),
    ("passk", {"scale_rewards": "none", "singleton": "zero"}),
    ("reinforce_pp", {"response_mask": True, "gamma": 0.9}),
    ("reinforce_pp", {"response_mask": True, "masked_tokens": "reset"}),
    ("reinforce_pp_baseline", {"response_mask": True}),
]


def _np_and_torch_options(opts, mask, lengths):
    np_o, t_o = dict(opts), dict(opts)
    if opts.get("response_mask"):
        np_o["response_mask"], t_o["response_mask"] = mask, torch.from_numpy(mask)
    if opts.get("lengths"):
        np_o["lengths"], t_o["lengths"] = lengths.astype(np.float64), torch.from_numpy(lengths)  # int64 tensor
    return np_o, t_o


def _same_bits(a, b):
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in CASES])
@pytest.mark.parametrize("grouping", ["ids", "consecutive"])
def test_bitwise_equal_to_numpy_api(name, opts, dtype, grouping):
    r, ids, mask = _batch(1, dtype)
    lengths = mask.sum(1)
    np_o, t_o = _np_and_torch_options(opts, mask, lengths)
    if name == "passk":  # pass@k needs >= 2 scorable rows per group: no NaN here
        r = np.nan_to_num(r, nan=0.25).astype(dtype)
    if grouping == "ids":
        np_g, t_g = {"group_ids": ids}, {"group_ids": torch.from_numpy(ids)}
    else:
        np_g = t_g = {"num_generations": 4}
    if name == "reinforce_pp":
        np_g = t_g = {}
    want = gs.advantages(r, name, **np_g, **np_o)
    got = gst.advantages(torch.from_numpy(r), name, **t_g, **t_o)
    assert isinstance(got, torch.Tensor)
    _same_bits(got, want)


def test_shortcuts_equal_the_general_entry_point():
    r, ids, mask = _batch(2, np.float64)
    rt, it, mt = torch.from_numpy(r), torch.from_numpy(ids), torch.from_numpy(mask)
    full = np.nan_to_num(r)
    pairs = [
        (gst.dr_grpo_advantages(rt, group_ids=it), gs.dr_grpo_advantages(r, group_ids=ids)),
        (gst.rloo_advantages(rt, 4, normalize_advantages=True), gs.rloo_advantages(r, 4, normalize_advantages=True)),
        (gst.opo_advantages(rt, group_ids=it, response_mask=mt), gs.opo_advantages(r, group_ids=ids, response_mask=mask)),
        (gst.gpg_advantages(rt, 4, alpha="nonzero"), gs.gpg_advantages(r, 4, alpha="nonzero")),
        (gst.passk_advantages(torch.from_numpy(full), 4), gs.passk_advantages(full, 4)),
        (gst.reinforce_pp_advantages(rt, mt, gamma=0.8), gs.reinforce_pp_advantages(r, mask, gamma=0.8)),
        (gst.reinforce_pp_baseline_advantages(rt, mt, group_ids=it),
         gs.reinforce_pp_baseline_advantages(r, mask, group_ids=ids)),
        (gst.zero_spread_groups(rt, group_ids=it, tolerance=0.1), gs.zero_spread_groups(r, group_ids=ids, tolerance=0.1)),
        (gst.informative_rows(rt, num_generations=4), gs.informative_rows(r, num_generations=4)),
    ]
    for got, want in pairs:
        _same_bits(got, want)
    assert gst.zero_spread_groups(rt, num_generations=4).dtype == torch.bool
    assert gst.informative_rows(rt, num_generations=4).dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", ["carry", "reset"])
def test_reinforce_pp_returns_and_token_rewards(dtype, masked):
    r, _, mask = _batch(3, np.float64)
    tok = np.random.default_rng(4).normal(size=(N, T))
    tok[~mask] = 100.0  # ignored
    for rewards in (r, tok):
        want = gs.reinforce_pp_advantages(rewards.astype(np.float32 if dtype == torch.float32 else np.float64), mask,
                                          gamma=0.95, masked_tokens=masked, return_returns=True)
        got = gst.reinforce_pp_advantages(torch.from_numpy(rewards).to(dtype), torch.from_numpy(mask), gamma=0.95,
                                          masked_tokens=masked, return_returns=True)
        assert isinstance(got, gst.AdvantagesAndReturns)
        _same_bits(got.advantages, want.advantages)
        _same_bits(got.returns, want.returns)


def test_mask_dtypes_and_string_ids_in_eager_mode():
    r, ids, mask = _batch(5, np.float64)
    rt = torch.from_numpy(r)
    want = gs.reinforce_pp_baseline_advantages(r, mask, group_ids=ids)
    for m in (torch.from_numpy(mask), torch.from_numpy(mask).to(torch.uint8), torch.from_numpy(mask).long(),
              torch.from_numpy(mask).float(), torch.from_numpy(mask).to(torch.bfloat16)):
        _same_bits(gst.reinforce_pp_baseline_advantages(rt, m, group_ids=torch.from_numpy(ids)), want)
    for t_ids in (torch.from_numpy(ids - ids.min()).to(torch.int32), ids, list(ids)):
        _same_bits(gst.reinforce_pp_baseline_advantages(rt, torch.from_numpy(mask), group_ids=t_ids), want)
    uids = np.array([f"uid-{i}" for i in ids], dtype=object)  # verl's uids
    _same_bits(gst.rloo_advantages(rt, group_ids=uids), gs.rloo_advantages(r, group_ids=ids))
    _same_bits(gst.rloo_advantages(rt, group_ids=list(uids)), gs.rloo_advantages(r, group_ids=uids))


def test_no_copies_and_inputs_untouched(monkeypatch):
    r, ids, mask = _batch(6, np.float32)
    rt, it, mt = torch.from_numpy(r.copy()), torch.from_numpy(ids.copy()), torch.from_numpy(mask.copy())
    seen = {}

    def spy(name, real):
        def call(*args):
            seen[name] = [a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a for a in args]
            return real(*args)
        return call

    for name in ("estimator_advantages", "token_advantages", "zero_spread_groups"):
        monkeypatch.setattr(te._native, name, spy(name, getattr(te._native, name)))
    out = gst.rloo_advantages(rt, group_ids=it)
    assert seen["estimator_advantages"][0] == rt.data_ptr() and seen["estimator_advantages"][1] == it.data_ptr()
    assert seen["estimator_advantages"][5] == out.data_ptr()  # written straight into the result
    both = gst.reinforce_pp_advantages(rt, mt, return_returns=True)
    args = seen["token_advantages"]
    assert args[0] == rt.data_ptr() and args[1] == mt.data_ptr()  # bool mask read in place
    assert args[5] == both.advantages.data_ptr() and args[6] == both.returns.data_ptr()
    flags = gst.zero_spread_groups(rt, num_generations=4)
    assert seen["zero_spread_groups"][0] == rt.data_ptr() and seen["zero_spread_groups"][4] == flags.data_ptr()
    np.testing.assert_array_equal(rt.numpy(), r)
    np.testing.assert_array_equal(it.numpy(), ids)
    np.testing.assert_array_equal(mt.numpy(), mask)
    # a strided view is made contiguous once and gives the contiguous result
    wide = torch.from_numpy(np.stack([r, r], 1))
    _same_bits(gst.rloo_advantages(wide[:, 1], group_ids=it), gs.rloo_advantages(r, group_ids=ids))


# ---------------------------------------------------------------------------- torch.compile

def _compile(f):
    torch._dynamo.reset()
    return torch.compile(f, fullgraph=True, backend="aot_eager")


def test_compile_fullgraph_row_estimators():
    r, ids, mask = _batch(7, np.float32)
    rt, it, mt = torch.from_numpy(r), torch.from_numpy(ids), torch.from_numpy(mask)

    def step(r, ids, mask):
        a = gst.advantages(r, "grpo", num_generations=4, scale_rewards="batch")
        b = gst.rloo_advantages(r, group_ids=ids, normalize_advantages=True)
        c = gst.opo_advantages(r, group_ids=ids, response_mask=mask)
        d = gst.opo_advantages(r, group_ids=ids, lengths=mask.sum(1))
        z = gst.zero_spread_groups(r, group_ids=ids)
        return a * 2 + b, c, d, z

    got, want = _compile(step)(rt, it, mt), step(rt, it, mt)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def test_compile_fullgraph_token_estimators_and_returns():
    r, ids, mask = _batch(8, np.float64)
    rt, it, mt = torch.from_numpy(r), torch.from_numpy(ids), torch.from_numpy(mask)

    def step(r, ids, mask):
        a, ret = gst.reinforce_pp_advantages(r, mask, gamma=0.9, return_returns=True)
        b = gst.reinforce_pp_baseline_advantages(r, mask, group_ids=ids)
        return (a + b).sum(), ret

    got, want = _compile(step)(rt, it, mt), step(rt, it, mt)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dynamic", [None, True])
def test_compile_dynamic_shapes(dynamic):
    def step(r, mask):
        return (gst.rloo_advantages(r, 4), gst.zero_spread_groups(r, num_generations=4),
                gst.reinforce_pp_advantages(r, mask, gamma=0.5), gst.advantages(r, "gpg", num_generations=4, f_norm=2.0))

    torch._dynamo.reset()
    f = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for n in (8, 16, 28):
        r = torch.randn(n, dtype=torch.float64)
        mask = torch.rand(n, 5) < 0.7
        got = f(r, mask)
        want = (gs.rloo_advantages(r.numpy(), 4), gs.zero_spread_groups(r.numpy(), num_generations=4),
                gs.reinforce_pp_advantages(r.numpy(), mask.numpy(), gamma=0.5),
                gs.advantages(r.numpy(), "gpg", num_generations=4, f_norm=2.0))
        for g, w in zip(got, want):
            _same_bits(g, w)


def test_compile_informative_rows_needs_dynamic_output_shapes():
    r = torch.tensor([1.0, 1, 0, 1, 2, 2])
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        got = _compile(lambda r: gst.informative_rows(r, num_generations=2))(r)
    _same_bits(got, gs.informative_rows(r.numpy(), num_generations=2))


def test_compile_errors():
    r = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"passk_advantages\(\).*singleton"):
        _compile(lambda r: gst.passk_advantages(r, group_ids=torch.tensor([0, 0, 1])))(r)
    with pytest.raises(Exception, match="string ids are a numpy-level feature"):
        _compile(lambda r: gst.rloo_advantages(r, group_ids=["a", "a", "b"]))(r)


def test_opcheck():
    r, ids, mask = _batch(9, np.float64)
    r = np.nan_to_num(r)
    rt, it = torch.from_numpy(r), torch.from_numpy(ids)
    mt = torch.from_numpy(mask).to(torch.uint8)
    ints, floats = te._native_config("advantages", "rloo", (("normalize_advantages", True),))
    torch.library.opcheck(te._estimator_op, (rt, it, 1, None, None, ints, floats, "advantages"))
    ints, floats = te._native_config("advantages", "opo", ())
    torch.library.opcheck(te._estimator_op, (rt, None, 4, None, mt, ints, floats, "advantages"))
    torch.library.opcheck(te._estimator_op, (rt, None, 4, mt.sum(1).double(), None, ints, floats, "advantages"))
    ints, floats = te._native_config("advantages", "reinforce_pp", (("gamma", 0.9),))
    torch.library.opcheck(te._token_op, (rt, mt, None, 1, ints, floats, True, "advantages"))
    torch.library.opcheck(te._token_op, (rt.float(), mt, None, 1, ints, floats, False, "advantages"))
    ints, floats = te._native_config("advantages", "reinforce_pp_baseline", ())
    torch.library.opcheck(te._token_op, (rt, mt, it, 1, ints, floats, False, "advantages"))
    torch.library.opcheck(te._zero_spread_op, (rt, it, 1, 0.0, "zero_spread_groups"))
    torch.library.opcheck(te._zero_spread_op, (rt.float(), None, 4, 0.5, "zero_spread_groups"))


# ------------------------------------------------------------------------------------ errors

R = torch.tensor([1.0, 2.0, 3.0, 5.0])
M = torch.ones(4, 3, dtype=torch.bool)

ERRORS = [
    (lambda: gst.rloo_advantages(torch.empty(4, device="meta"), 2), TypeError,
     ["rloo_advantages()", "'rewards'", "device 'meta'", "run on CPU", ".cpu()"]),
    (lambda: gst.rloo_advantages(torch.arange(4), 2), TypeError, ["'rewards'", "float32, float64", "int64"]),
    (lambda: gst.rloo_advantages(R.half(), 2), TypeError, ["'rewards'", "float16"]),
    (lambda: gst.rloo_advantages([1.0, 2.0], 2), TypeError, ["'rewards'", "torch.Tensor", "list"]),
    (lambda: gst.rloo_advantages(R.reshape(2, 2), 2), ValueError, ["'rewards'", "1-D", "(2, 2)"]),
    (lambda: gst.rloo_advantages(torch.empty(0), 2), ValueError, ["'rewards'", "empty"]),
    (lambda: gst.rloo_advantages(R.clone().requires_grad_(), 2), ValueError,
     ["'rewards'", "requires grad", "not differentiable", "detach()"]),
    (lambda: gst.rloo_advantages(R, 3), ValueError, ["multiple of num_generations"]),
    (lambda: gst.rloo_advantages(R), TypeError, ["exactly one of 'group_ids' and 'num_generations'", "neither"]),
    (lambda: gst.rloo_advantages(R, 2, group_ids=torch.tensor([0, 0, 1, 1])), TypeError, ["both"]),
    (lambda: gst.rloo_advantages(R, group_ids=torch.tensor([0.0, 0, 1, 1])), TypeError,
     ["'group_ids'", "int64", "float32"]),
    (lambda: gst.rloo_advantages(R, group_ids=torch.tensor([True, True, False, False])), TypeError,
     ["'group_ids'", "bool"]),
    (lambda: gst.rloo_advantages(R, group_ids=torch.tensor([0, 0, 1])), ValueError, ["'group_ids'", "(4,)", "(3,)"]),
    (lambda: gst.rloo_advantages(R, group_ids=torch.zeros(4, dtype=torch.long, device="meta")), TypeError,
     ["'group_ids'", "meta"]),
    (lambda: gst.rloo_advantages(R, 2, singleton="drop"), ValueError, ["'singleton'", "'zero'", "'drop'"]),
    (lambda: gst.advantages(R, "ppo", num_generations=2), ValueError, ["'estimator'", "'grpo'", "'ppo'"]),
    (lambda: gst.advantages(R, "grpo", num_generations=2, gamma=0.9), TypeError,
     ["advantages()", "unexpected option", "'gamma'"]),
    (lambda: gst.advantages(R, "grpo", num_generations=2, epsilon=[1]), TypeError, ["'epsilon'", "float", "list"]),
    (lambda: gst.passk_advantages(R, group_ids=torch.tensor([0, 0, 0, 1])), ValueError,
     ["passk_advantages()", "singleton"]),
    (lambda: gst.opo_advantages(R, 2), TypeError, ["opo", "response_mask", "lengths", "neither"]),
    (lambda: gst.opo_advantages(R, 2, lengths=torch.tensor([1.0, -1, 2, 2])), ValueError,
     ["opo_advantages()", "'lengths'", ">= 0"]),
    (lambda: gst.opo_advantages(R, 2, lengths=torch.tensor([1.0, 2])), ValueError, ["'lengths'", "(4,)"]),
    (lambda: gst.opo_advantages(R, 2, lengths=[1, 2, 3, 4]), TypeError, ["'lengths'", "torch.Tensor"]),
    (lambda: gst.reinforce_pp_advantages(R, None), TypeError, ["'response_mask'", "required"]),
    (lambda: gst.reinforce_pp_advantages(R, M[:3]), ValueError, ["'response_mask'", "(4, T)", "(3, 3)"]),
    (lambda: gst.reinforce_pp_advantages(R, torch.full((4, 3), 2, dtype=torch.uint8)), ValueError,
     ["reinforce_pp_advantages()", "'response_mask'", "0 and 1"]),
    (lambda: gst.reinforce_pp_advantages(R, torch.full((4, 3), 0.5)), ValueError, ["'response_mask'", "0 and 1"]),
    (lambda: gst.reinforce_pp_advantages(R, M.to("meta")), TypeError, ["'response_mask'", "meta"]),
    (lambda: gst.reinforce_pp_advantages(R, M.float().requires_grad_()), ValueError,
     ["'response_mask'", "requires grad"]),
    (lambda: gst.reinforce_pp_advantages(R, M, gamma=1.5), ValueError, ["'gamma'", "[0, 1]"]),
    (lambda: gst.reinforce_pp_advantages(R, M, masked_tokens="skip"), ValueError, ["'masked_tokens'", "'carry'"]),
    (lambda: gst.reinforce_pp_advantages(R, M, return_returns="yes"), TypeError, ["'return_returns'", "bool"]),
    (lambda: gst.reinforce_pp_advantages(torch.ones(4, 2), M), ValueError, ["'rewards'", "(4, 3)", "(4, 2)"]),
    (lambda: gst.reinforce_pp_advantages(torch.tensor([1.0, float("inf"), 0, 0]), M), ValueError,
     ["reinforce_pp_advantages()", "inf"]),
    (lambda: gst.reinforce_pp_baseline_advantages(R, M), TypeError, ["neither"]),
    (lambda: gst.zero_spread_groups(R, num_generations=2, tolerance=-1.0), ValueError, ["'tolerance'", ">= 0"]),
    (lambda: gst.informative_rows(R), TypeError, ["informative_rows()", "neither"]),
    (lambda: gst.informative_rows(R.double().requires_grad_(), num_generations=2), ValueError,
     ["informative_rows()", "requires grad"]),
]


@pytest.mark.parametrize("call,exc,words", ERRORS)
def test_errors_name_function_and_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_requires_grad_is_fine_without_grad_mode():
    r = R.clone().requires_grad_()
    with torch.no_grad():
        _same_bits(gst.rloo_advantages(r, 2), gs.rloo_advantages(R.numpy(), 2))
