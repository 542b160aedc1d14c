"""The GRPO policy loss for torch tensors: autograd, nn.Module and a torch.compile-safe custom op.

    grpo_swift.torch.grpo_loss(per_token_logps, advantages, completion_mask, *,
                               old_per_token_logps=None, ref_per_token_logps=None, entropies=None,
                               sampling_logps=None, importance_sampling_ratio=None, **options)
        -> (loss, metrics)
    grpo_swift.torch.GRPOLoss(config=None, **options)(per_token_logps, advantages, completion_mask, ...)

`options` are those of `grpo_swift.grpo_loss` (TRL's GRPOConfig names: loss_type, beta,
epsilon, ...; see `grpo_swift.LossConfig`). The loss is a 0-d tensor (float32; float64 for
float64 log-probs) that backpropagates into `per_token_logps` (and into `entropies` when
`entropy_coef != 0`) with the kernel's closed-form gradient, which the forward computes in the
same pass over the data and saves (a (B, T) float32 buffer: recomputing it in backward would
read every input a second time for nothing).

Data path: contiguous CPU tensors of float32, float64, bfloat16 or float16 are read in place
(bfloat16 as its bits, widened to float32 inside Swift; there is no `.float()` copy). A
non-contiguous tensor is made contiguous once. Advantages and the IS ratio are cast to float32
(float64 for float64 log-probs) when they have another dtype (a (B,) copy, as TRL keeps them).
The mask is read in place when it is bool or uint8 and converted to uint8 otherwise (TRL's
int64 completion_mask: one B*T-byte copy).

The kernel is registered as the custom op ``torch.ops.grpo_swift.policy_loss`` (fake/meta
kernel and autograd formula registered, `torch.library.opcheck` clean), which is what
``torch.compile(fullgraph=True)`` puts in the graph of a training step that calls `grpo_loss`:
no graph break. Eager calls run the same implementation and backward formula through a
`torch.autograd.Function`, which skips ~0.3 ms of dispatcher Python per call; the common eager
call (contiguous CPU tensors of the accepted dtypes, valid shapes) is validated and run by one C
function, `_native.torch_policy_loss`, on the tensors' storage, and everything else takes the
Python path below (same bits, documented copies and errors). Gradients are
first-order only (a double backward raises in eager mode). Metrics are a dict of 0-d float64
tensors (the op returns one metrics tensor; `.item()` them for logging): Python floats would
force a graph break under torch.compile.
"""
from __future__ import annotations

import functools
import math
import numbers
import types
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import _native
from .._loss import _METRIC_FIELDS, LOSS_TYPES, LossConfig
from ._interop import TORCH_REGISTRY, buffer_of, check_tensor, kernel_op

__all__ = ["grpo_loss", "loss_with_config", "GRPOLoss", "LossMetrics"]

# Layout of LossConfig._native_args: 5 int32 flags/enums, 16 doubles, 4 Py_ssize_t, 3 int32 (kl_estimator,
# use_kl_clamp, use_clip_ratio_c), then use_entropy_threshold (int32) and entropy_threshold (double).
# The op carries the ints and the doubles as two lists (_split_config / _join_config).
_N_LEAD_INTS, _N_FLOATS, _N_MID_INTS, _N_TAIL_INTS = 5, 16, 4, 4
_ENTROPY_COEF = 11          # index in _native_args
_NUM_ITEMS = 18             # index in _native_args (num_items_in_batch; < 0: this call's tokens)
_USE_CLIP_RATIO_C = 11      # index in the ints of _split_config (the dual-clip flag)
_NATIVE_DUAL_CLIP = _N_LEAD_INTS + _N_FLOATS + _N_MID_INTS + 2  # the same flag in _native_args
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                torch.float32, torch.float64, torch.bfloat16, torch.float16)


_CONFIG_CACHE: dict = {}


@torch.compiler.assume_constant_result
def _config_from_options(fn: str, items: tuple) -> LossConfig:
    """LossConfig.from_options, run once at trace time under torch.compile (its validation is
    plain Python on constants; dynamo would otherwise trace numpy scalar checks). Memoised on the
    few options a call passes (LossConfig.from_options keys its own cache on all 21 fields)."""
    try:
        key = (fn,) + tuple((k, type(v), v) for k, v in items)
        config = _CONFIG_CACHE.get(key)
    except TypeError:  # an unhashable (hence invalid) option: let LossConfig raise its message
        return LossConfig.from_options(fn, **dict(items))
    if config is None:
        config = LossConfig.from_options(fn, **dict(items))
        if len(_CONFIG_CACHE) < 256:
            _CONFIG_CACHE[key] = config
    return config


def _split_config(native_args: tuple) -> tuple[list[int], list[float]]:
    a = _N_LEAD_INTS
    b = a + _N_FLOATS
    c = b + _N_MID_INTS
    d = c + _N_TAIL_INTS
    return [*native_args[:a], *native_args[b:d]], [*native_args[a:b], native_args[d]]


def _join_config(ints: list[int], floats: list[float]) -> tuple:
    a = _N_LEAD_INTS
    return (*ints[:a], *floats[:_N_FLOATS], *ints[a:], floats[_N_FLOATS])


@functools.lru_cache(maxsize=64)
def _logged_indices(loss_type: int, beta: float, has_ref: bool, has_ent: bool, dual_clip: bool) -> frozenset[int]:
    view = types.SimpleNamespace(loss_type=LOSS_TYPES[loss_type], beta=beta, clip_ratio_c=1.0 if dual_clip else None)
    names = ("loss",) + LossConfig.logged_metrics(view, has_ref, has_ent) + _EXTRA_METRICS
    return frozenset(_METRIC_FIELDS.index(k) for k in names)


def _mask_u8(mask: torch.Tensor, fn: str) -> np.ndarray:
    """The (B, T) mask as a uint8 0/1 buffer: in place for bool/uint8 (the kernel rejects any
    byte other than 0/1), else converted in one pass after checking that it holds only 0 and 1
    (TRL's int64 completion_mask: one B*T-byte copy)."""
    if mask.dtype in (torch.bool, torch.uint8):
        return buffer_of(mask.contiguous())
    if mask.dtype in (torch.bfloat16, torch.float16):  # exact in float32, which the converter reads
        mask = mask.float()
    out = np.empty(tuple(mask.shape), dtype=np.uint8)
    _native.mask_u8(fn, "completion_mask", buffer_of(mask.contiguous()), out)
    return out


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even (torch's rounding, in numpy);
    NaN -> the quiet NaN 0x7FC0 (torch's vectorised path gives 0xFFFF: also a NaN)."""
    b = x.view(np.uint32)
    r = ((b + ((b >> 16) & 1) + np.uint32(0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = 0x7FC0
    return r


# Kept module-level (not inlined) so that tests can wrap them and see what each path reads: the
# Python path (numpy views of the tensors) and the C fast path (the tensors themselves; the storage
# addresses its kernel call used are in _native.torch_fast_pointers()).
def _call_fast(*args):
    return _native.torch_policy_loss(*args)


def _call_kernel(fn, lp, old, ref, samp, ent, adv, mask, isr, native_cfg, grad, grad_h):
    return _native.policy_loss(fn, lp, old, ref, samp, ent, adv, mask, isr, native_cfg, grad, grad_h)


@functools.lru_cache(maxsize=64)
def _unlogged(loss_type: int, beta: float, has_ref: bool, has_ent: bool, dual_clip: bool) -> np.ndarray:
    """Indices (into _METRIC_FIELDS) of the metrics this configuration does not log."""
    logged = _logged_indices(loss_type, beta, has_ref, has_ent, dual_clip)
    return np.array([i for i in range(len(_METRIC_FIELDS)) if i not in logged], dtype=np.intp)


def _unlogged_bits(config: LossConfig) -> tuple[int, int, int, int]:
    """For the C fast path: the metrics `config` does not log, as bit masks over _METRIC_FIELDS
    indexed by 2 * has_ref + has_ent (memoised on the frozen config object)."""
    bits = config.__dict__.get("_torch_unlogged_bits")
    if bits is None:
        native = config._native_args
        bits = tuple(sum(1 << int(i) for i in _unlogged(native[0], native[_N_LEAD_INTS], has_ref, has_ent,
                                                          bool(native[_NATIVE_DUAL_CLIP])))
                     for has_ref in (False, True) for has_ent in (False, True))
        object.__setattr__(config, "_torch_unlogged_bits", bits)
    return bits


def _run_kernel(fn: str, logps: torch.Tensor, old, ref, samp, ent, adv: torch.Tensor, mask, isr, native: tuple,
                grad: Optional[torch.Tensor], grad_h: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One kernel call on validated contiguous CPU tensors (`mask` may already be a uint8 buffer): fills
    `grad` / `grad_h` when given and returns (loss 0-d tensor, metrics (18,) float64 in _METRIC_FIELDS order).
    The metrics this configuration does not log (NaN from the kernel) are 0, so that outputs compare
    equal across runs (NaN != NaN); they never reach the user."""
    values = _call_kernel(fn, buffer_of(logps), None if old is None else buffer_of(old),
                          None if ref is None else buffer_of(ref), None if samp is None else buffer_of(samp),
                          None if ent is None else buffer_of(ent), buffer_of(adv),
                          mask if isinstance(mask, np.ndarray) else _mask_u8(mask, fn),
                          None if isr is None else buffer_of(isr), native,
                          None if grad is None else grad.numpy(), None if grad_h is None else grad_h.numpy())
    metrics = np.array(values)
    metrics[_unlogged(native[0], native[_N_LEAD_INTS], ref is not None, ent is not None,
                      bool(native[_NATIVE_DUAL_CLIP]))] = 0.0
    out_dtype = torch.float64 if logps.dtype == torch.float64 else torch.float32
    return torch.scalar_tensor(values[0], dtype=out_dtype), torch.from_numpy(metrics)


def _native_config(config_ints, config_floats, num_items_in_batch: Optional[torch.Tensor], fn: str) -> tuple:
    """The C config tuple from the op's int/float lists, with a tensor num_items_in_batch substituted."""
    native = _join_config(config_ints, config_floats)
    if num_items_in_batch is not None:
        native = native[:_NUM_ITEMS] + (_items_value(num_items_in_batch, fn),) + native[_NUM_ITEMS + 1:]
    return native


def _items_value(num_items_in_batch, fn: str) -> float:
    n = float(num_items_in_batch.item())
    if not n >= 0.0 or n == float("inf"):
        raise ValueError(f"{fn}(): argument 'num_items_in_batch' must be a finite number >= 0, got {n}")
    return n


def _policy_loss_impl(logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      old_logps: Optional[torch.Tensor], ref_logps: Optional[torch.Tensor],
                      sampling_logps: Optional[torch.Tensor], entropies: Optional[torch.Tensor],
                      importance_sampling_ratio: Optional[torch.Tensor],
                      num_items_in_batch: Optional[torch.Tensor], config_ints: list[int],
                      config_floats: list[float], compute_grad: bool, fn: str
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, metrics (18,) float64 in _METRIC_FIELDS order, grad (B,T) or (0,), grad_entropies
    (B,T) or (0,)). Inputs validated by the caller (dtypes, shapes, devices)."""
    native = _native_config(config_ints, config_floats, num_items_in_batch, fn)
    out_dtype = torch.float64 if logps.dtype == torch.float64 else torch.float32
    B, T = logps.shape
    grad = torch.empty((B, T) if compute_grad else (0,), dtype=out_dtype)
    with_h = compute_grad and config_floats[_ENTROPY_COEF - _N_LEAD_INTS] != 0.0
    grad_h = torch.empty((B, T) if with_h else (0,), dtype=out_dtype)
    loss, metrics = _run_kernel(fn, logps.contiguous(), _contiguous(old_logps), _contiguous(ref_logps),
                                _contiguous(sampling_logps), _contiguous(entropies), advantages.contiguous(),
                                mask.contiguous(), _contiguous(importance_sampling_ratio), native,
                                grad if compute_grad else None, grad_h if with_h else None)
    return loss, metrics, grad, grad_h


def _contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _policy_loss_fake(logps, advantages, mask, old_logps, ref_logps, sampling_logps, entropies,
                      importance_sampling_ratio, num_items_in_batch, config_ints, config_floats, compute_grad, fn):
    out_dtype = torch.float64 if logps.dtype == torch.float64 else torch.float32
    B, T = logps.shape
    with_h = compute_grad and config_floats[_ENTROPY_COEF - _N_LEAD_INTS] != 0.0
    return (logps.new_empty((), dtype=out_dtype), logps.new_empty((len(_METRIC_FIELDS),), dtype=torch.float64),
            logps.new_empty((B, T) if compute_grad else (0,), dtype=out_dtype),
            logps.new_empty((B, T) if with_h else (0,), dtype=out_dtype))


def _setup_context(ctx, inputs, output):
    _, metrics, grad, grad_h = output
    ctx.save_for_backward(grad, grad_h)
    ctx.logps_dtype = inputs[0].dtype
    ctx.entropies_dtype = None if inputs[6] is None else inputs[6].dtype
    ctx.compute_grad = inputs[11]
    ctx.mark_non_differentiable(metrics, grad, grad_h)
    ctx.set_materialize_grads(False)  # no (B, T) zero tensors for the outputs nobody differentiates


def _scale(g_loss: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """g_loss * grad (in grad's dtype), cast to `dtype`: torch ops, traceable (the op's formula)."""
    return (g_loss * grad).to(dtype)


def _scale_eager(g_loss: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The same product through numpy's single-threaded multiply (g_loss has grad's dtype: the
    same IEEE product), which does not wait on torch's intra-op thread pool on a busy machine."""
    g = grad.numpy()
    if dtype == grad.dtype:
        out = torch.empty(grad.shape, dtype=dtype)
        np.multiply(g, g.dtype.type(g_loss.item()), out=out.numpy())
        return out
    prod = g * g.dtype.type(g_loss.item())
    out = torch.empty(grad.shape, dtype=dtype)
    if dtype == torch.bfloat16:
        out.view(torch.int16).numpy().view(np.uint16)[...] = _to_bf16_bits(prod)
    elif dtype == torch.float16:
        out.numpy()[...] = prod  # IEEE round to nearest even, as torch
    else:
        return torch.from_numpy(prod).to(dtype)
    return out


def _backward(ctx, g_loss, g_metrics, g_grad, g_grad_h, scale=_scale):
    grad, grad_h = ctx.saved_tensors
    if ctx.compute_grad is False:
        raise RuntimeError("grpo_swift::policy_loss was called with compute_grad=False, so it has no gradient; "
                           "call grpo_swift.torch.grpo_loss, which sets it from autograd's needs")
    d_lp = d_ent = None
    if g_loss is None:
        return (None,) * 13
    if ctx.needs_input_grad[0]:
        d_lp = scale(g_loss, grad, ctx.logps_dtype)
    if ctx.needs_input_grad[6] and grad_h.numel() == grad.numel() and grad.numel() > 0:
        d_ent = scale(g_loss, grad_h, ctx.entropies_dtype)
    return d_lp, None, None, None, None, None, d_ent, None, None, None, None, None, None


_policy_loss_op = kernel_op("grpo_swift::policy_loss", _policy_loss_impl, _policy_loss_fake,
                            backward=_backward, setup_context=_setup_context)


class _PolicyLossFunction(torch.autograd.Function):
    """The op's implementation and autograd formula as an autograd.Function, with the op's
    arguments and outputs (a reference for tests; eager calls use `_EagerPolicyLoss`)."""

    @staticmethod
    def forward(ctx, *args):
        out = _policy_loss_impl(*args)
        _setup_context(ctx, args, out)
        return out

    # The saved gradient carries no graph: a double backward would silently miss the second
    # derivative, so it raises instead.
    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, g_metrics, g_grad, g_grad_h):
        return _backward(ctx, g_loss, g_metrics, g_grad, g_grad_h, scale=_scale_eager)


class _EagerCall(NamedTuple):
    """Everything an eager loss call needs besides the differentiable tensors (validated inputs)."""
    fn: str
    old: Optional[torch.Tensor]
    ref: Optional[torch.Tensor]
    samp: Optional[torch.Tensor]
    adv: torch.Tensor
    mask: Optional[np.ndarray]     # (B, T) uint8 0/1 buffer (a view of mask_tensor when it is bool/uint8), or
                                   # None: converted again from mask_tensor if backward has to recompute
    mask_tensor: torch.Tensor      # the caller's mask (kept with its version: an in-place change is detected)
    isr: Optional[torch.Tensor]
    native: tuple                  # the C config tuple
    with_h: bool                   # compute the entropy-bonus gradient


class _EagerPolicyLoss(torch.autograd.Function):
    """The eager path's autograd node. The kernel has already run (loss, metrics and the analytic
    gradient in one pass, before `apply`); backward hands that gradient buffer to autograd, so a
    training step pays for no copy: with an incoming gradient of 1 (`loss.backward()`) the buffer
    itself becomes `.grad` (AccumulateGrad adopts a tensor nobody else references), otherwise it is
    scaled in place. The buffer is handed out once; a second backward through the same graph
    (retain_graph=True, or gradcheck) recomputes the gradient from the inputs. Under torch.compile
    the custom op `grpo_swift::policy_loss` is used instead (see `loss_with_config`).

    The node keeps its inputs as plain references with their version counters, not through
    save_for_backward (which costs more than the kernel at small sizes): a backward after an input
    was modified in place raises, as torch's saved-tensor check does; saved-tensor hooks do not
    see these inputs (the node keeps the same tensors save_for_backward would keep).
    The metrics are not an output of the node (they carry no gradient)."""

    @staticmethod
    def forward(ctx, logps, entropies, call: _EagerCall, out: tuple):
        # out = (loss, metrics, grad, grad_h) from the kernel; the node keeps the gradients, not the
        # loss (the loss's grad_fn is this node: keeping it here would be a reference cycle).
        ctx.grads = (out[2], out[3])
        ctx.call = call
        ctx.inputs = (logps, entropies)
        ctx.versions = _versions(logps, entropies, call)
        ctx.set_materialize_grads(False)
        return out[0]

    @staticmethod
    def backward(ctx, g_loss):
        # The gradient carries no graph: a double backward (create_graph=True, the only case with
        # grad mode on here) would silently miss the second derivative, so once_differentiable
        # makes it raise; a plain backward skips that wrapper's no_grad context.
        if torch.is_grad_enabled():
            return _eager_backward_once(ctx, g_loss)
        return _eager_backward(ctx, g_loss)


# The arguments whose version counters the eager node checks, by their public names (in _versions' order).
_VERSIONED = ("per_token_logps", "entropies", "old_per_token_logps", "ref_per_token_logps", "sampling_logps",
              "advantages", "completion_mask", "importance_sampling_ratio")


def _versions(logps, entropies, call: _EagerCall) -> tuple:
    return (logps._version, None if entropies is None else entropies._version,
            *(None if t is None else t._version for t in (call.old, call.ref, call.samp, call.adv, call.mask_tensor,
                                                          call.isr)))


def _eager_backward(ctx, g_loss):
    if g_loss is None:
        return None, None, None, None
    logps, entropies = ctx.inputs
    call = ctx.call
    if _versions(logps, entropies, call) != ctx.versions:
        changed = [n for n, a, b in zip(_VERSIONED, ctx.versions, _versions(logps, entropies, call)) if a != b]
        raise RuntimeError(f"{call.fn}(): one of the variables needed for gradient computation has been modified "
                           f"by an inplace operation: {', '.join(changed)} changed after the loss was computed")
    grads = ctx.grads
    if grads is None:  # handed out by an earlier backward through this graph: recompute
        out_dtype = torch.float64 if logps.dtype == torch.float64 else torch.float32
        grads = (torch.empty(logps.shape, dtype=out_dtype),
                 torch.empty(logps.shape, dtype=out_dtype) if call.with_h else None)
        lp_c, ent_c = logps.contiguous(), None if entropies is None else entropies.contiguous()
        _run_kernel(call.fn, lp_c, _contiguous(call.old), _contiguous(call.ref), _contiguous(call.samp), ent_c,
                    call.adv.contiguous(),
                    call.mask if call.mask is not None else _mask_u8(call.mask_tensor, call.fn),
                    _contiguous(call.isr), call.native, *grads)
    ctx.grads = None
    grad, grad_h = grads
    d_lp = d_ent = None
    if ctx.needs_input_grad[0]:
        d_lp = _scale_owned(g_loss, grad, logps.dtype)
    if ctx.needs_input_grad[1] and grad_h is not None:
        d_ent = _scale_owned(g_loss, grad_h, entropies.dtype)
    return d_lp, d_ent, None, None


_eager_backward_once = once_differentiable(_eager_backward)


def _scale_owned(g_loss: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """g_loss * grad in `dtype` (the IEEE float product, then one rounding: the bits of `_scale`),
    where `grad` is a buffer nobody else holds: returned as it is for an incoming gradient of 1,
    else scaled in place; for a 16-bit dtype rounded into a new tensor by the Swift converter (one
    SIMD pass; numpy has no bfloat16 and is slow for float16)."""
    s = g_loss.item()
    if dtype != grad.dtype:
        if grad.dtype != torch.float32:
            return _scale_eager(g_loss, grad, dtype)
        out = torch.empty(grad.shape, dtype=dtype)
        _native.convert_f32("grpo_loss backward", grad.numpy(), s, buffer_of(out))
        return out
    if s != 1.0:
        g = grad.numpy()
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # IEEE results, as torch's
            np.multiply(g, g.dtype.type(s), out=g)
    return grad


def _constant(t, fn: str, arg: str) -> None:
    if torch.is_grad_enabled() and t.requires_grad:
        raise ValueError(f"{fn}(): argument '{arg}' requires grad, but grpo_swift treats it as a constant (the "
                         f"loss is differentiable only w.r.t. per_token_logps and entropies, as in TRL, which "
                         f"computes it under torch.no_grad()); pass {arg}.detach()")


def _check_bt(t, fn: str, arg: str, like: torch.Tensor) -> Optional[torch.Tensor]:
    if t is None:
        return None
    t = check_tensor(t, fn, arg, ndim=(2,))
    if t.dtype != like.dtype:
        raise TypeError(f"{fn}(): argument '{arg}' must have the dtype of 'per_token_logps' "
                        f"({str(like.dtype).replace('torch.', '')}), got {str(t.dtype).replace('torch.', '')}; "
                        f"cast it with {arg}.to(per_token_logps.dtype)")
    if t.shape != like.shape:
        raise ValueError(f"{fn}(): argument '{arg}' must have shape {tuple(like.shape)} like 'per_token_logps', "
                         f"got {tuple(t.shape)}")
    return t


def _check_rows(t, fn: str, arg: str, B: int, T: int, aux: torch.dtype) -> Optional[torch.Tensor]:
    if t is None:
        return None
    t = check_tensor(t, fn, arg, ndim=(1, 2))
    ok = (t.dim() == 1 and t.shape[0] == B) or (t.dim() == 2 and t.shape[0] == B and t.shape[1] in (1, T))
    if not ok:
        raise ValueError(f"{fn}(): argument '{arg}' must have shape ({B},), ({B}, 1) or ({B}, {T}), "
                         f"got {tuple(t.shape)}")
    _constant(t, fn, arg)
    return t if t.dtype == aux else t.to(aux)


_METRIC_INDEX = {k: i for i, k in enumerate(_METRIC_FIELDS)}
_EXTRA_METRICS = ("policy_loss", "policy_term", "kl_term", "entropy_term", "num_tokens", "num_entropy_tokens",
                  "num_off_policy_dropped")


def _metric_names(config: LossConfig, has_ref: bool, has_ent: bool) -> tuple[str, ...]:
    # Called through the class: under torch.compile the config may be a traced constant without a source.
    return LossConfig.logged_metrics(config, has_ref, has_ent) + _EXTRA_METRICS


def _eager_metric_names(config: LossConfig, has_ref: bool, has_ent: bool) -> tuple[str, ...]:
    """_metric_names, memoised on the (frozen, validated) config object itself."""
    cache = config.__dict__.get("_torch_metric_names")
    if cache is None:
        cache = {}
        object.__setattr__(config, "_torch_metric_names", cache)
    names = cache.get((has_ref, has_ent))
    if names is None:
        names = cache[(has_ref, has_ent)] = _metric_names(config, has_ref, has_ent)
    return names


class LossMetrics(Mapping[str, torch.Tensor]):
    """The metrics of one eager `grpo_loss` call: a read-only mapping from TRL's metric names (and
    grpo_swift's extras) to 0-d float64 tensors, backed by one (18,) float64 tensor (`vector`, in
    grpo_swift's metric order). A value's 0-d tensor is a view created when it is first read, so a
    training step that logs two metrics does not pay for thirteen tensor constructions.

    It behaves like the dict the loss returned before (`metrics["kl"].item()`, `"kl" in metrics`,
    iteration in a fixed order, `dict(metrics)`); `to_dict()` gives Python floats with one copy.
    Under torch.compile the loss returns a plain dict of the same tensors instead (a traced
    graph's outputs)."""

    __slots__ = ("vector", "_names", "_views")

    def __init__(self, vector: torch.Tensor, names: tuple[str, ...]) -> None:
        self.vector = vector
        self._names = names
        self._views: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        view = self._views.get(name)
        if view is None:
            if name not in self._names:
                raise KeyError(name)
            view = self._views[name] = self.vector[_METRIC_INDEX[name]]
        return view

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def to_dict(self) -> dict[str, float]:
        """The metrics as Python floats (one copy of the vector)."""
        values = self.vector.tolist()
        return {k: values[_METRIC_INDEX[k]] for k in self._names}

    def __repr__(self) -> str:
        return f"LossMetrics({self.to_dict()!r})"


def _items_override(num_items_in_batch: Any, fn: str) -> Any:
    """num_items_in_batch validated: None, a float, or a one-element CPU-or-other-device tensor."""
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(f"{fn}(): argument 'num_items_in_batch' must be a number or a one-element tensor, "
                             f"got shape {tuple(num_items_in_batch.shape)}")
        if num_items_in_batch.device.type == "meta":
            raise TypeError(f"{fn}(): argument 'num_items_in_batch' is a meta tensor (no value)")
        return num_items_in_batch
    n = num_items_in_batch
    if isinstance(n, bool) or not isinstance(n, numbers.Real):
        raise TypeError(f"{fn}(): argument 'num_items_in_batch' must be a number or a one-element tensor, "
                        f"got {type(n).__name__}")
    if not math.isfinite(n) or n < 0:
        raise ValueError(f"{fn}(): argument 'num_items_in_batch' must be a finite number >= 0, got {n}")
    return float(n)


def _eager_native(config: LossConfig, n_items: Any, fn: str) -> tuple:
    """The C config tuple of an eager call, with this call's num_items_in_batch (a float or a tensor)."""
    native = config._native_args
    if n_items is not None:
        n = n_items if isinstance(n_items, float) else _items_value(n_items, fn)
        native = native[:_NUM_ITEMS] + (n,) + native[_NUM_ITEMS + 1:]
    return native


def loss_with_config(per_token_logps: torch.Tensor, advantages: torch.Tensor, completion_mask: torch.Tensor,
                     config: LossConfig, *, old_per_token_logps: Optional[torch.Tensor] = None,
                     ref_per_token_logps: Optional[torch.Tensor] = None, entropies: Optional[torch.Tensor] = None,
                     sampling_logps: Optional[torch.Tensor] = None,
                     importance_sampling_ratio: Optional[torch.Tensor] = None,
                     num_items_in_batch: Any = None, compute_grad: bool = True,
                     fn: str = "loss_with_config") -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
    """`grpo_loss` with the hyper-parameters as one `grpo_swift.LossConfig`.

    num_items_in_batch (a number or a 0-d tensor, as TRL passes it) overrides
    config.num_items_in_batch for this call."""
    if not isinstance(config, LossConfig):
        raise TypeError(f"{fn}(): argument 'config' must be a grpo_swift.LossConfig, got {type(config).__name__}")
    n_items = _items_override(num_items_in_batch, fn)
    native = None  # the C config tuple of an eager call, made once
    if compute_grad is True and not torch.compiler.is_compiling():
        # The C fast path: the same checks and kernel call on the tensors' storage, ~10x less Python
        # per call. It declines (None) anything it would not pass through untouched, and the code
        # below then handles the call (conversions, copies) or raises its error.
        native = _eager_native(config, n_items, fn)
        out = _call_fast(fn, per_token_logps, old_per_token_logps, ref_per_token_logps, sampling_logps, entropies,
                         advantages, completion_mask, importance_sampling_ratio, native, torch.is_grad_enabled(),
                         _unlogged_bits(config), TORCH_REGISTRY)
        if out is not None:
            loss, mvec, grad, grad_h = out
            if grad is not None or grad_h is not None:
                call = _EagerCall(fn, old_per_token_logps, ref_per_token_logps, sampling_logps, advantages, None,
                                  completion_mask, importance_sampling_ratio, native, grad_h is not None)
                loss = _EagerPolicyLoss.apply(per_token_logps, entropies, call, out)
            return loss, LossMetrics(mvec, _eager_metric_names(config, ref_per_token_logps is not None,
                                                               entropies is not None))
    lp = check_tensor(per_token_logps, fn, "per_token_logps", ndim=(2,))
    B, T = lp.shape
    if B == 0:
        raise ValueError(f"{fn}(): argument 'per_token_logps' must have at least one row, got shape {tuple(lp.shape)}")
    old = _check_bt(old_per_token_logps, fn, "old_per_token_logps", lp)
    ref = _check_bt(ref_per_token_logps, fn, "ref_per_token_logps", lp)
    samp = _check_bt(sampling_logps, fn, "sampling_logps", lp)
    ent = _check_bt(entropies, fn, "entropies", lp)
    if old is not None:
        _constant(old, fn, "old_per_token_logps")
    if ref is not None:
        _constant(ref, fn, "ref_per_token_logps")
    if samp is not None:
        _constant(samp, fn, "sampling_logps")
    aux = torch.float64 if lp.dtype == torch.float64 else torch.float32
    if advantages is None:
        raise TypeError(f"{fn}(): argument 'advantages' must be a torch.Tensor, got None")
    adv = _check_rows(advantages, fn, "advantages", B, T, aux)
    isr = _check_rows(importance_sampling_ratio, fn, "importance_sampling_ratio", B, T, aux)
    mask = check_tensor(completion_mask, fn, "completion_mask", dtypes=_MASK_DTYPES, ndim=(2,))
    if mask.shape != lp.shape:
        raise ValueError(f"{fn}(): argument 'completion_mask' must have shape {tuple(lp.shape)} like "
                         f"'per_token_logps', got {tuple(mask.shape)}")
    if config.beta != 0.0 and ref is None:
        raise ValueError(f"{fn}(): ref_per_token_logps is required when beta != 0 (beta={config.beta}): the KL "
                         f"term needs the reference model's log-probs")
    if config.top_entropy_quantile < 1.0 and ent is None:
        raise ValueError(f"{fn}(): entropies are required when top_entropy_quantile < 1 "
                         f"(got {config.top_entropy_quantile})")
    if config.entropy_coef != 0.0 and ent is None:
        raise ValueError(f"{fn}(): entropies are required when entropy_coef != 0 (got {config.entropy_coef})")
    if config.loss_type == "vespo" and isr is not None and (isr.dim() == 1 or isr.shape[1] == 1) and T != 1:
        raise ValueError(f"{fn}(): VESPO loss requires `vllm_importance_sampling_mode` to be either "
                         f"'token_truncate' or 'token_mask': pass a per-token importance_sampling_ratio "
                         f"of shape ({B}, {T}), got {tuple(isr.shape)}")
    if not isinstance(compute_grad, bool):
        raise TypeError(f"{fn}(): argument 'compute_grad' must be a bool, got {type(compute_grad).__name__}")
    need = compute_grad and torch.is_grad_enabled() and (
        lp.requires_grad or (ent is not None and config.entropy_coef != 0.0 and ent.requires_grad))
    if not need:
        lp = lp.detach()
        ent = None if ent is None else ent.detach()
    if torch.compiler.is_compiling():
        # The custom op is what torch.compile puts in the graph (no graph break).
        ints, floats = _split_config(config._native_args)
        if isinstance(n_items, float):
            floats[_NUM_ITEMS - _N_LEAD_INTS] = n_items
            n_items = None
        elif n_items is not None:
            if n_items.device.type != "cpu":
                n_items = n_items.cpu()
            n_items = n_items.detach().reshape(()).to(torch.float64)
        loss, mvec, _, _ = _policy_loss_op(lp, adv, mask, old, ref, samp, ent, isr, n_items, ints, floats, need, fn)
        values = mvec.unbind(0)
        return loss, {k: values[_METRIC_INDEX[k]] for k in _metric_names(config, ref is not None, ent is not None)}
    # Eager: the same kernel without the dispatcher (a custom op call costs more Python than the
    # kernel takes at small sizes), through _EagerPolicyLoss when autograd needs the gradient.
    if native is None:
        native = _eager_native(config, n_items, fn)
    mask_buf = _mask_u8(mask, fn)
    if need:
        with_h = config.entropy_coef != 0.0
        out_dtype = torch.float64 if lp.dtype == torch.float64 else torch.float32
        grad = torch.empty(lp.shape, dtype=out_dtype)
        grad_h = torch.empty(lp.shape, dtype=out_dtype) if with_h else None
        loss, mvec = _run_kernel(fn, lp, old, ref, samp, ent, adv, mask_buf, isr, native, grad, grad_h)
        call = _EagerCall(fn, old, ref, samp, adv, mask_buf, mask, isr, native, with_h)
        loss = _EagerPolicyLoss.apply(lp, ent, call, (loss, mvec, grad, grad_h))
    else:
        loss, mvec = _run_kernel(fn, lp, old, ref, samp, ent, adv, mask_buf, isr, native, None, None)
    return loss, LossMetrics(mvec, _eager_metric_names(config, ref is not None, ent is not None))


def grpo_loss(per_token_logps: torch.Tensor, advantages: torch.Tensor, completion_mask: torch.Tensor, *,
              old_per_token_logps: Optional[torch.Tensor] = None, ref_per_token_logps: Optional[torch.Tensor] = None,
              entropies: Optional[torch.Tensor] = None, sampling_logps: Optional[torch.Tensor] = None,
              importance_sampling_ratio: Optional[torch.Tensor] = None, compute_grad: bool = True,
              **options: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
    """TRL 1.16's GRPO policy loss (`GRPOTrainer._compute_loss`) on torch tensors, differentiable.

    Args:
        per_token_logps: (B, T) float32/float64/bfloat16/float16 CPU tensor, usually requiring grad.
        advantages: (B,), (B, 1) or (B, T) float tensor (a constant: must not require grad).
        completion_mask: (B, T) 0/1 tensor (bool, integer or float).
        old_per_token_logps, ref_per_token_logps, sampling_logps: (B, T), the dtype of
            per_token_logps, constants (as TRL computes them under no_grad).
        entropies: (B, T) like per_token_logps; differentiable when entropy_coef != 0.
        importance_sampling_ratio: (B,), (B, 1) or (B, T) vLLM IS ratio (a constant).
        compute_grad: False returns a loss without autograd history (saves the gradient pass).
        **options: the hyper-parameters of `grpo_swift.grpo_loss` / `grpo_swift.LossConfig`
            (loss_type, beta, epsilon, epsilon_high, delta, importance_sampling_level, ...);
            num_items_in_batch may be a 0-d tensor (TRL passes one; under torch.compile pass a
            tensor: a Python number that changes every step is a new constant to the graph).

    Returns:
        (loss, metrics): loss a 0-d tensor (float32; float64 for float64 log-probs); metrics a dict
        of 0-d float64 tensors with TRL's logged names (kl, entropy, clip_ratio/..., ...) and
        policy_loss, policy_term, kl_term, entropy_term, num_tokens, num_entropy_tokens,
        num_off_policy_dropped (see `grpo_swift.LossResult`).
    """
    fn = "grpo_loss"
    n_items = options.pop("num_items_in_batch", None)
    config = _config_from_options(fn, tuple(options.items()))
    return loss_with_config(per_token_logps, advantages, completion_mask, config,
                            old_per_token_logps=old_per_token_logps, ref_per_token_logps=ref_per_token_logps,
                            entropies=entropies, sampling_logps=sampling_logps,
                            importance_sampling_ratio=importance_sampling_ratio, num_items_in_batch=n_items,
                            compute_grad=compute_grad, fn=fn)


class GRPOLoss(torch.nn.Module):
    """The GRPO policy loss as a module holding one frozen `grpo_swift.LossConfig`.

        loss_fn = GRPOLoss(LossConfig(loss_type="dapo", beta=0.04))   # or GRPOLoss(loss_type="dapo", beta=0.04)
        loss, metrics = loss_fn(per_token_logps, advantages, completion_mask,
                                old_per_token_logps=old, ref_per_token_logps=ref)

    forward accepts the tensors of `grpo_swift.torch.grpo_loss` and `num_items_in_batch` (a
    number or 0-d tensor that overrides the config's for this call, as TRL's changes per step).
    """

    def __init__(self, config: Optional[LossConfig] = None, **options: Any) -> None:
        super().__init__()
        if config is None:
            config = LossConfig.from_options("GRPOLoss", **options)
        elif options:
            raise TypeError(f"GRPOLoss(): pass either a LossConfig or keyword options, not both "
                            f"(got config and {', '.join(sorted(options))})")
        elif not isinstance(config, LossConfig):
            raise TypeError(f"GRPOLoss(): argument 'config' must be a grpo_swift.LossConfig, got "
                            f"{type(config).__name__}")
        self.config = config

    def forward(self, per_token_logps: torch.Tensor, advantages: torch.Tensor, completion_mask: torch.Tensor,
                old_per_token_logps: Optional[torch.Tensor] = None,
                ref_per_token_logps: Optional[torch.Tensor] = None, entropies: Optional[torch.Tensor] = None, *,
                sampling_logps: Optional[torch.Tensor] = None,
                importance_sampling_ratio: Optional[torch.Tensor] = None,
                num_items_in_batch: Any = None) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        return loss_with_config(per_token_logps, advantages, completion_mask, self.config,
                                old_per_token_logps=old_per_token_logps, ref_per_token_logps=ref_per_token_logps,
                                entropies=entropies, sampling_logps=sampling_logps,
                                importance_sampling_ratio=importance_sampling_ratio,
                                num_items_in_batch=num_items_in_batch, fn="GRPOLoss.forward")

    def extra_repr(self) -> str:
        return repr(self.config)
