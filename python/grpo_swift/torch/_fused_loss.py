"""Fused linear GRPO loss for PyTorch: hidden states + LM head -> (loss, metrics), gradients
computed in the forward (Swift, one call) and scaled by the incoming gradient in the backward.

    grpo_swift.torch.FusedLinearGRPOLoss(beta=0.04, ..., loss_type="dapo", ...)  # Liger's module
    loss, metrics = module(_input, lin_weight, selected_token_ids, attention_mask, advantages, bias=None,
                           ref_per_token_logps=None, old_per_token_logps=None, ref_input=None,
                           ref_weight=None, ref_bias=None, vllm_is_ratio=None, num_items_in_batch=None)
    grpo_swift.torch.fused_linear_grpo_loss(hidden, weight, selected_token_ids, mask, advantages, *,
                                            bias=None, old_logps=None, ref_logps=None, ..., loss options)

Same signature as Liger-Kernel's `LigerFusedLinearGRPOLoss` (swap the import). hidden/weight/bias
may be float32 or bfloat16 (both handed to the kernel without copies; float16/float64 are
converted to float32 once); all arithmetic is float32 and gradients come back in the inputs'
dtypes. The (N, V) logits are never materialised.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _native
from .._fused_loss import _call, _head_tuple
from .._loss import LossConfig, _count
from ._interop import buffer_of, check_tensor

_HEAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_ROW_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _kernel_view(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = t.detach()
    return t if t.dtype == dtype else t.to(dtype)


class _FusedLinearGRPO(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, payload):
        (fn, B, T, targets, mask_u8, adv, adv_cols, old, ref, samp, ref_h, ref_w, ref_b, isr, isr_cols, config,
         head, has_ref, holder) = payload
        kdt = torch.bfloat16 if (hidden.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and
                                 (bias is None or bias.dtype == torch.bfloat16)) else torch.float32
        h = _kernel_view(hidden, kdt).contiguous().reshape(-1, hidden.shape[-1])
        w = _kernel_view(weight, kdt).contiguous()
        b = None if bias is None else _kernel_view(bias, kdt).contiguous()
        rv = [None if x is None else _kernel_view(x, kdt).contiguous() for x in (ref_h, ref_w, ref_b)]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = torch.empty(h.shape, dtype=torch.float32) if need_h else None
        gw = torch.empty(w.shape, dtype=torch.float32) if need_w else None
        gb = torch.empty(w.shape[0], dtype=torch.float32) if need_b and b is not None else None
        lp = torch.empty(B * T, dtype=torch.float32)
        ent = torch.empty(B * T, dtype=torch.float32)

        def buf(x):
            return None if x is None else buffer_of(x)

        loss, metrics = _call(fn, B, T, buffer_of(h), buffer_of(w), buf(b), targets, mask_u8, adv, adv_cols, old,
                              ref, samp, buf(rv[0]), buf(rv[1]), buf(rv[2]), isr, isr_cols, config, head,
                              buf(gh), buf(gw), buf(gb), lp.numpy(), ent.numpy(), has_ref)
        holder["metrics"] = metrics
        holder["log_probs"] = lp.reshape(B, T)
        holder["entropy"] = ent.reshape(B, T)
        ctx.save_for_backward(gh, gw, gb)
        ctx.shapes = (hidden.shape, hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return torch.tensor(loss, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_loss):
        gh, gw, gb = ctx.saved_tensors
        hshape, hd, wd, bd = ctx.shapes
        s = grad_loss.to(torch.float32)
        unit = bool(s == 1)  # the usual loss.backward(): hand the stored gradients over without a copy

        def scaled(g, dtype, shape=None):
            if g is None:
                return None
            if not unit:
                g = g * s
            if shape is not None:
                g = g.reshape(shape)
            return g.to(dtype)

        return scaled(gh, hd, hshape), scaled(gw, wd), scaled(gb, bd), None


def _rows_or_tokens(x, fn, arg, B, T) -> tuple[np.ndarray, int]:
    t = check_tensor(x, fn, arg, dtypes=_ROW_DTYPES, ndim=(1, 2))
    if t.dim() == 1 and t.shape[0] == B:
        cols = 1
    elif t.dim() == 2 and t.shape[0] == B and t.shape[1] in (1, T):
        cols = t.shape[1]
    else:
        raise ValueError(f"{fn}(): argument '{arg}' must have shape ({B},), ({B}, 1) or ({B}, {T}), "
                         f"got {tuple(t.shape)}")
    return t.detach().to(torch.float32).contiguous().reshape(-1).numpy(), cols


def _bt(x, fn, arg, B, T) -> np.ndarray | None:
    if x is None:
        return None
    t = check_tensor(x, fn, arg, dtypes=_ROW_DTYPES, ndim=(2,))
    if tuple(t.shape) != (B, T):
        raise ValueError(f"{fn}(): argument '{arg}' must have shape ({B}, {T}), got {tuple(t.shape)}")
    return t.detach().to(torch.float32).contiguous().reshape(-1).numpy()


def _fused(fn: str, hidden, weight, selected_token_ids, mask, advantages, bias, old_logps, ref_logps, ref_hidden,
           ref_weight, ref_bias, sampling_logps, importance_sampling_ratio, config: LossConfig, head: tuple):
    hidden = check_tensor(hidden, fn, "hidden", dtypes=_HEAD_DTYPES, ndim=(2, 3))
    weight = check_tensor(weight, fn, "weight", dtypes=_HEAD_DTYPES, ndim=(2,))
    if not isinstance(selected_token_ids, torch.Tensor):
        raise TypeError(f"{fn}(): argument 'selected_token_ids' must be a torch.Tensor, got "
                        f"{type(selected_token_ids).__name__}")
    if selected_token_ids.dim() != 2 or selected_token_ids.dtype.is_floating_point or \
            selected_token_ids.dtype == torch.bool or selected_token_ids.is_complex():
        raise ValueError(f"{fn}(): argument 'selected_token_ids' must be a (B, T) integer tensor, got "
                         f"{tuple(selected_token_ids.shape)} {selected_token_ids.dtype}")
    if selected_token_ids.device.type != "cpu":
        raise TypeError(f"{fn}(): argument 'selected_token_ids' is on device '{selected_token_ids.device}', but "
                        f"grpo_swift kernels run on CPU")
    B, T = selected_token_ids.shape
    if B == 0:
        raise ValueError(f"{fn}(): argument 'selected_token_ids' must have at least one row")
    H = hidden.shape[-1]
    if tuple(hidden.shape[:-1]) not in ((B, T), (B * T,)):
        raise ValueError(f"{fn}(): argument 'hidden' must have shape ({B}, {T}, H) or ({B * T}, H) to match "
                         f"'selected_token_ids' {tuple(selected_token_ids.shape)}, got {tuple(hidden.shape)}")
    if weight.shape[1] != H or weight.shape[0] < 1 or H < 1:
        raise ValueError(f"{fn}(): argument 'weight' must have shape (V, {H}) with V >= 1, got {tuple(weight.shape)}")
    V = weight.shape[0]
    if bias is not None:
        bias = check_tensor(bias, fn, "bias", dtypes=_HEAD_DTYPES, ndim=(1,))
        if bias.shape[0] != V:
            raise ValueError(f"{fn}(): argument 'bias' must have shape ({V},), got {tuple(bias.shape)}")
    targets = selected_token_ids.detach().to(torch.int64).contiguous().reshape(-1).numpy()
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{fn}(): argument 'attention_mask' must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"{fn}(): argument 'attention_mask' must have shape ({B}, {T}), got {tuple(mask.shape)}")
    md = mask.detach()
    if md.dtype != torch.bool:
        bad = (md != 0) & (md != 1)
        if bool(bad.any()):
            raise ValueError(f"{fn}(): argument 'attention_mask' must hold only 0 and 1, got {md[bad][0].item()!r}")
    mask_u8 = md.to(torch.uint8).contiguous().reshape(-1).numpy()
    adv, adv_cols = _rows_or_tokens(advantages, fn, "advantages", B, T)
    isr, isr_cols = (None, 0) if importance_sampling_ratio is None else _rows_or_tokens(
        importance_sampling_ratio, fn, "vllm_is_ratio", B, T)
    old, ref, samp = (_bt(old_logps, fn, "old_per_token_logps", B, T), _bt(ref_logps, fn, "ref_per_token_logps", B, T),
                      _bt(sampling_logps, fn, "sampling_per_token_logps", B, T))
    rh = rw = rb = None
    if ref is None and (ref_hidden is not None or ref_weight is not None):
        if ref_hidden is None or ref_weight is None:
            raise ValueError(f"{fn}(): ref_input and ref_weight must be given together")
        rh = check_tensor(ref_hidden, fn, "ref_input", dtypes=_HEAD_DTYPES)
        rw = check_tensor(ref_weight, fn, "ref_weight", dtypes=_HEAD_DTYPES)
        if rh.numel() != B * T * H or rw.shape != weight.shape:
            raise ValueError(f"{fn}(): ref_input/ref_weight must have the shapes of the policy's "
                             f"({tuple(hidden.shape)}, {tuple(weight.shape)}), got {tuple(rh.shape)}, {tuple(rw.shape)}")
        if ref_bias is not None:
            rb = check_tensor(ref_bias, fn, "ref_bias", dtypes=_HEAD_DTYPES, ndim=(1,))
            if rb.shape[0] != V:
                raise ValueError(f"{fn}(): argument 'ref_bias' must have shape ({V},), got {tuple(rb.shape)}")
    has_ref = ref is not None or rh is not None
    if config.beta != 0.0 and not has_ref:
        raise ValueError(f"{fn}(): beta != 0 (beta={config.beta}) needs ref_per_token_logps or ref_input/ref_weight")
    holder: dict[str, Any] = {}
    payload = (fn, B, T, targets, mask_u8, adv, adv_cols, old, ref, samp, rh, rw, rb, isr, isr_cols, config, head,
               has_ref, holder)
    loss = _FusedLinearGRPO.apply(hidden, weight, bias, payload)
    return loss, holder


def fused_linear_grpo_loss(hidden: torch.Tensor, weight: torch.Tensor, selected_token_ids: torch.Tensor,
                           mask: torch.Tensor, advantages: torch.Tensor, *, bias: torch.Tensor | None = None,
                           old_logps=None, ref_logps=None, ref_hidden=None, ref_weight=None, ref_bias=None,
                           sampling_logps=None, importance_sampling_ratio=None, temperature: float = 1.0,
                           logit_scale: float = 1.0, final_logit_softcapping: float | None = None,
                           config: LossConfig | None = None, **options: Any):
    """TRL 1.16's GRPO loss from the last hidden states, differentiable w.r.t. hidden, weight, bias.

    hidden (B, T, H) or (B*T, H); weight (V, H); bias (V,) or None; selected_token_ids and mask
    (B, T); advantages (B,), (B, 1) or (B, T). Loss options as `grpo_swift.grpo_loss` (or
    config=LossConfig). Returns ``(loss, metrics)``: a 0-dim float32 tensor and a dict of floats
    (TRL's metric names, the loss decomposition, plus "log_probs"/"entropy" (B, T) tensors).
    """
    fn = "fused_linear_grpo_loss"
    if config is None:
        config = LossConfig.from_options(fn, **options)
    elif options:
        raise TypeError(f"{fn}(): give either config= or loss options as keywords, not both")
    elif not isinstance(config, LossConfig):
        raise TypeError(f"{fn}(): argument 'config' must be a grpo_swift.LossConfig, got {type(config).__name__}")
    head = _head_tuple(fn, temperature, logit_scale, final_logit_softcapping, 0, 0)
    loss, holder = _fused(fn, hidden, weight, selected_token_ids, mask, advantages, bias, old_logps, ref_logps,
                          ref_hidden, ref_weight, ref_bias, sampling_logps, importance_sampling_ratio, config, head)
    metrics = dict(holder["metrics"])
    metrics["log_probs"] = holder["log_probs"]
    metrics["entropy_per_token"] = holder["entropy"]
    return loss, metrics


class FusedLinearGRPOLoss(torch.nn.Module):
    """Drop-in for Liger-Kernel's `LigerFusedLinearGRPOLoss` on CPU (Swift kernel).

    Constructor: Liger's arguments (beta, compiled, use_ref_model, chunk_size, epsilon_low,
    epsilon_high, loss_type, max_completion_length, importance_sampling_level,
    sapo_temperature_pos/neg, temperature; `compiled` and `chunk_size` are accepted and
    ignored: the kernel tiles by itself) plus any other `grpo_swift.LossConfig` option by its
    TRL name (delta, use_bias_correction_kl, vespo_*, gradient_accumulation_steps, ...) and the
    LM head's logit_scale / final_logit_softcapping.

    forward(...) returns ``(loss, metrics)`` as Liger: metrics = [kl mean (only when beta != 0),
    clip ratio (TRL's clip_ratio/region_mean; cispo_clip_ratio for cispo; 0 for sapo/vespo)]
    as 0-dim tensors. Every metric by TRL's name is in `self.last_metrics` after a call. When no
    reference is given (or use_ref_model=False), the reference is the policy itself, as in
    Liger: the KL term and its gradient are 0.

    Tested against liger-kernel 0.8.5's own module for every loss type: equal results except where
    Liger departs from TRL 1.16 (luspo's aggregation, the sequence-level clip-ratio metric; Liger
    refuses sequence-level cispo/sapo/vespo), where this module follows TRL (docs/guide.md).
    """

    def __init__(self, beta: float = 0.04, compiled: bool = True, use_ref_model: bool = True, chunk_size: int = 1,
                 epsilon_low: float = 0.2, epsilon_high: float = 0.2, loss_type: str = "dapo",
                 max_completion_length: int | None = None, importance_sampling_level: str = "token",
                 sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05, temperature: float = 1.0,
                 logit_scale: float = 1.0, final_logit_softcapping: float | None = None, **options: Any):
        super().__init__()
        fn = "FusedLinearGRPOLoss"
        self.config = LossConfig.from_options(
            fn, beta=beta, epsilon=epsilon_low, epsilon_high=epsilon_high, loss_type=loss_type,
            max_completion_length=max_completion_length, importance_sampling_level=importance_sampling_level,
            sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg, **options)
        self.head = _head_tuple(fn, temperature, logit_scale, final_logit_softcapping, 0, 0)
        if not isinstance(use_ref_model, bool):
            raise TypeError(f"{fn}(): argument 'use_ref_model' must be a bool, got {type(use_ref_model).__name__}")
        self.use_ref_model = use_ref_model
        self.compiled = compiled
        self.chunk_size = chunk_size
        self.last_metrics: dict[str, float] = {}

    def forward(self, _input, lin_weight, selected_token_ids, attention_mask, advantages, bias=None,
                ref_per_token_logps=None, old_per_token_logps=None, ref_input=None, ref_weight=None, ref_bias=None,
                vllm_is_ratio=None, num_items_in_batch=None):
        fn = "FusedLinearGRPOLoss.forward"
        config = self.config
        if num_items_in_batch is not None:
            config = config.replace(num_items_in_batch=_count(num_items_in_batch, fn, "num_items_in_batch"))
        has_ref = self.use_ref_model and (ref_per_token_logps is not None or ref_input is not None)
        if not has_ref:
            ref_per_token_logps = ref_input = ref_weight = ref_bias = None
            if config.beta != 0.0:
                config = config.replace(beta=0.0)  # ref = stop_grad(policy): KL and its gradient are 0
        loss, holder = _fused(fn, _input, lin_weight, selected_token_ids, attention_mask, advantages, bias,
                              old_per_token_logps, ref_per_token_logps, ref_input, ref_weight, ref_bias, None,
                              vllm_is_ratio, config, self.head)
        m = holder["metrics"]
        self.last_metrics = dict(m)
        metrics = []
        if self.config.beta != 0.0:
            metrics.append(torch.tensor(m.get("kl", 0.0) if has_ref else 0.0, dtype=torch.float32))
        if config.loss_type == "cispo":
            clip = m["cispo_clip_ratio"]
        else:
            clip = m.get("clip_ratio/region_mean", 0.0)
        metrics.append(torch.tensor(clip if np.isfinite(clip) else 0.0, dtype=torch.float32))
        return loss, metrics
