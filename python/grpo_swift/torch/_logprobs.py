"""Autograd functions for per-token log-probs and entropy (from logits, and the fused LM head).

    grpo_swift.torch.selective_log_softmax(logits, index, temperature=1.0, mask=None, return_entropy=False)
    grpo_swift.torch.fused_log_probs(hidden, weight, labels, bias=None, temperature=1.0, logit_scale=1.0,
                                     final_logit_softcapping=None)

Both are drop-in for TRL 1.16's `selective_log_softmax` / `entropy_from_logits` and
`ChunkedLogProbFunction` on CPU tensors; the backward runs in Swift. Inputs are handed to
the kernels without copies (bfloat16 logits as their bits). Gradients are returned in the
inputs' dtypes. Positions with a negative target (label -100) or mask 0 get log-prob 0 and
entropy 0 and no gradient.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _native
from .._logprobs import _temperature
from .._validation import real
from ._interop import buffer_of, check_tensor, dtype_code

_LOGIT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _row_buffer(g: torch.Tensor | None, dtype: torch.dtype) -> np.ndarray | None:
    if g is None:
        return None
    return buffer_of(g.detach().to(dtype).contiguous().reshape(-1))


class _SelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None, temperature: float):
        ctx.set_materialize_grads(False)
        v = logits.shape[-1]
        flat = logits.detach().reshape(-1, v)
        n = flat.shape[0]
        out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        lp = torch.empty(n, dtype=out_dtype)
        ent = torch.empty(n, dtype=out_dtype)
        lse = torch.empty(n, dtype=torch.float64)
        targets = index.reshape(-1)
        m = None if mask is None else buffer_of(mask.reshape(-1))
        _native.selective_log_softmax(buffer_of(flat), dtype_code(logits), buffer_of(targets), m, temperature,
                                      lp.numpy(), ent.numpy(), lse.numpy())
        ctx.save_for_backward(logits, index, mask, lse, ent)
        ctx.temperature = temperature
        lead = logits.shape[:-1]
        return lp.reshape(lead), ent.reshape(lead)

    @staticmethod
    def backward(ctx, grad_lp, grad_ent):
        logits, index, mask, lse, ent = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_lp is None and grad_ent is None):
            return None, None, None, None
        v = logits.shape[-1]
        flat = logits.detach().reshape(-1, v)
        row_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        grad = torch.empty(flat.shape, dtype=logits.dtype)
        _native.selective_log_softmax_backward(
            buffer_of(flat), dtype_code(logits), buffer_of(index.reshape(-1)),
            None if mask is None else buffer_of(mask.reshape(-1)), ctx.temperature, lse.numpy(),
            ent.numpy(), _row_buffer(grad_lp, row_dtype), _row_buffer(grad_ent, row_dtype),
            buffer_of(grad), dtype_code(grad))
        return grad.reshape(logits.shape), None, None, None


def _index_tensor(index, fn: str, shape, arg: str = "index") -> torch.Tensor:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{fn}(): argument '{arg}' must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{fn}(): argument '{arg}' must have an integer dtype, got "
                        f"{str(index.dtype).replace('torch.', '')}")
    if index.device.type != "cpu":
        raise TypeError(f"{fn}(): argument '{arg}' is on device '{index.device}', but grpo_swift kernels run on CPU")
    if tuple(index.shape) != tuple(shape):
        raise ValueError(f"{fn}(): argument '{arg}' must have shape {tuple(shape)}, got {tuple(index.shape)}")
    return index.detach().to(torch.int64).contiguous()


def _mask_tensor(mask, fn: str, shape) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{fn}(): argument 'mask' must be a torch.Tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{fn}(): argument 'mask' must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    return (mask.detach() != 0).to(torch.uint8).contiguous()


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0,
                          mask: torch.Tensor | None = None, *, return_entropy: bool = False):
    """TRL's `selective_log_softmax(logits, index, temperature, row_mask)` with autograd.

    logits: (..., V) float32/float64/bfloat16/float16 CPU tensor; index: (...) integer.
    Returns float32 log-probs (float64 for float64 logits) shaped like `index`, or
    ``(log_probs, entropy)`` with return_entropy=True (TRL's `selective_log_softmax_and_entropy`);
    both differentiable. The logits' gradient has the logits' dtype.
    """
    fn = "selective_log_softmax"
    logits = check_tensor(logits, fn, "logits", dtypes=_LOGIT_DTYPES)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{fn}(): argument 'logits' must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    lead = logits.shape[:-1]
    idx = _index_tensor(index, fn, lead)
    m = _mask_tensor(mask, fn, lead)
    tau = _temperature(temperature, fn)
    lp, ent = _SelectiveLogSoftmax.apply(logits, idx, m, tau)
    return (lp, ent) if return_entropy else lp


def _head_inputs(hidden, weight, bias):
    """Inputs as the kernels take them: all bfloat16 (passed as bits, no copy) when hidden,
    weight and bias are bfloat16; else float32 (a converted copy only for other dtypes)."""
    all_bf16 = hidden.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and (
        bias is None or bias.dtype == torch.bfloat16)
    dtype = torch.bfloat16 if all_bf16 else torch.float32
    h = hidden.detach().to(dtype).contiguous().reshape(-1, hidden.shape[-1])
    w = weight.detach().to(dtype).contiguous()
    b = None if bias is None else bias.detach().to(dtype).contiguous()
    return h, w, b


class _FusedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, logit_scale, softcap):
        ctx.set_materialize_grads(False)
        h, w, b = _head_inputs(hidden, weight, bias)
        n = h.shape[0]
        lp = torch.empty(n, dtype=torch.float32)
        ent = torch.empty(n, dtype=torch.float32)
        lse = torch.empty(n, dtype=torch.float64)
        targets = labels.reshape(-1)
        _native.fused_log_probs(buffer_of(h), buffer_of(w), None if b is None else buffer_of(b),
                                buffer_of(targets), temperature, logit_scale, softcap, 0, 0,
                                lp.numpy(), ent.numpy(), lse.numpy())
        ctx.save_for_backward(h, w, b, targets, lse, ent)
        ctx.args = (temperature, logit_scale, softcap)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.hidden_shape = hidden.shape
        lead = hidden.shape[:-1]
        return lp.reshape(lead), ent.reshape(lead)

    @staticmethod
    def backward(ctx, grad_lp, grad_ent):
        h, w, b, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if (grad_lp is None and grad_ent is None) or not (need_h or need_w or need_b):
            return None, None, None, None, None, None, None
        temperature, logit_scale, softcap = ctx.args
        gh = torch.empty(h.shape, dtype=torch.float32) if need_h else None
        gw = torch.empty(w.shape, dtype=torch.float32) if need_w else None
        gb = torch.empty(w.shape[0], dtype=torch.float32) if need_b and b is not None else None
        _native.fused_log_probs_backward(
            buffer_of(h), buffer_of(w), None if b is None else buffer_of(b), buffer_of(targets),
            temperature, logit_scale, softcap, 0, 0, lse.numpy(), ent.numpy(),
            _row_buffer(grad_lp, torch.float32), _row_buffer(grad_ent, torch.float32),
            None if gh is None else gh.numpy(), None if gw is None else gw.numpy(),
            None if gb is None else gb.numpy())
        hd, wd, bd = ctx.dtypes
        return (None if gh is None else gh.reshape(ctx.hidden_shape).to(hd),
                None if gw is None else gw.to(wd),
                None if gb is None else gb.to(bd), None, None, None, None)


def fused_log_probs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                    bias: torch.Tensor | None = None, temperature: float = 1.0, logit_scale: float = 1.0,
                    final_logit_softcapping: float | None = None):
    """TRL's `ChunkedLogProbFunction` (log-probs and entropy of the LM head) with autograd.

    hidden: (..., H); weight: (V, H); bias: (V,) or None -- float32, or all bfloat16 (handed
    over without a copy and widened per tile inside the kernel); other mixes are converted to
    float32 once. The kernels compute in float32. labels: (...) integer;
    negative (-100) = not scored. Returns float32 ``(log_probs, entropy)`` shaped like
    `labels`, both differentiable w.r.t. hidden, weight and bias (gradients in their dtypes,
    accumulated in float32). The (N, V) logits are never materialised.
    """
    fn = "fused_log_probs"
    hidden = check_tensor(hidden, fn, "hidden")
    weight = check_tensor(weight, fn, "weight", ndim=(2,))
    if hidden.dim() < 1:
        raise ValueError(f"{fn}(): argument 'hidden' must have shape (..., H), got a 0-d tensor")
    if weight.shape[1] != hidden.shape[-1] or weight.shape[0] < 1:
        raise ValueError(f"{fn}(): argument 'weight' must have shape (V, {hidden.shape[-1]}) to match 'hidden' "
                         f"{tuple(hidden.shape)}, got {tuple(weight.shape)}")
    if bias is not None:
        bias = check_tensor(bias, fn, "bias", ndim=(1,))
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{fn}(): argument 'bias' must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    lead = hidden.shape[:-1]
    idx = _index_tensor(labels, fn, lead, "labels")
    tau = _temperature(temperature, fn)
    scale = real(logit_scale, fn, "logit_scale")
    cap = 0.0 if final_logit_softcapping is None else real(final_logit_softcapping, fn, "final_logit_softcapping",
                                                            minimum=0.0, strict_minimum=True)
    return _FusedLogProbs.apply(hidden, weight, bias, idx, tau, scale, cap)
