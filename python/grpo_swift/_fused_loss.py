"""The fused linear GRPO loss: last hidden states + LM head -> TRL 1.16's GRPO loss, metrics and
the gradients w.r.t. hidden, weight and bias, in one Swift call without the (N, V) logits.

`fused_linear_grpo_loss` (numpy, float32) equals `fused_log_probs` -> `grpo_loss` -> the fused
log-prob backward composed by hand (same maths), with the gradients formed inside the call.
3-GEMM schedule (float32, top_entropy_quantile == 1, one sequence's resident scratch within the
scratch budget): per block of whole sequences, logits by sgemm kept resident and folded chunk by
chunk while in cache (log-sum-exp, entropy; exp stored once), the loss kernel on the block
(normalisers fixed by the mask), the resident logits turned into d loss / d logits, grad_weight and
grad_hidden by sgemm over vocabulary groups. Otherwise the 4-GEMM schedule (logits recomputed in a
second pass). Extra memory: `fused_linear_loss_scratch_bytes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from . import _native
from ._logprobs import _temperature
from ._loss import _METRIC_FIELDS, LossConfig, _mask_u8
from ._validation import float_array, integer, real

_F32 = (np.dtype(np.float32),)


@dataclass(frozen=True)
class FusedLinearLossResult:
    """loss: float (TRL's `_compute_loss` value). grad_hidden (like hidden), grad_weight (V, H),
    grad_bias (V,) float32 or None. metrics: as `grpo_loss` (TRL's names plus the loss
    decomposition). log_probs / entropy: (B, T) float32 per-token values of the policy."""

    loss: float
    grad_hidden: np.ndarray | None
    grad_weight: np.ndarray | None
    grad_bias: np.ndarray | None
    metrics: Mapping[str, float]
    log_probs: np.ndarray
    entropy: np.ndarray


def _head_tuple(fn: str, temperature, logit_scale, final_logit_softcapping, tile_rows, tile_cols) -> tuple:
    tau = _temperature(temperature, fn)
    scale = real(logit_scale, fn, "logit_scale")
    cap = 0.0 if final_logit_softcapping is None else real(
        final_logit_softcapping, fn, "final_logit_softcapping", minimum=0.0, strict_minimum=True)
    return (tau, scale, cap, integer(tile_rows, fn, "tile_rows", minimum=0),
            integer(tile_cols, fn, "tile_cols", minimum=0))


def _targets_bt(ids, fn: str, arg: str, shape: tuple[int, int]) -> np.ndarray:
    if ids is None or isinstance(ids, (str, bytes, float)):
        raise TypeError(f"{fn}(): argument '{arg}' must be an integer array, got {type(ids).__name__}")
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{fn}(): argument '{arg}' must have an integer dtype, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{fn}(): argument '{arg}' must have shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a.reshape(-1), dtype=np.int64)


def _rows_or_tokens(x, fn: str, arg: str, B: int, T: int, aux) -> tuple[np.ndarray, int]:
    a = float_array(x, fn, arg, ndim=(1, 2))
    if a.ndim == 1 and a.shape[0] == B:
        cols = 1
    elif a.ndim == 2 and a.shape[0] == B and a.shape[1] in (1, T):
        cols = a.shape[1]
    else:
        raise ValueError(f"{fn}(): argument '{arg}' must have shape ({B},), ({B}, 1) or ({B}, {T}), got {a.shape}")
    return np.ascontiguousarray(a.reshape(-1), dtype=aux), cols


def _call(fn: str, B: int, T: int, hidden2d, weight, bias, targets, mask_u8, adv, adv_cols, old, ref, samp,
          ref_hidden, ref_weight, ref_bias, isr, isr_cols, config: LossConfig, head: tuple, out_gh, out_gw,
          out_gb, out_lp, out_ent, has_ref: bool, scratch_budget: int = 0) -> tuple[float, dict[str, float]]:
    """The kernel on already-validated buffers; returns (loss, metrics) as grpo_loss."""
    values = _native.fused_linear_loss(fn, B, T, hidden2d, weight, bias, targets, mask_u8, adv, adv_cols, old,
                                       ref, samp, ref_hidden, ref_weight, ref_bias, isr, isr_cols,
                                       config._native_args, head, out_gh, out_gw, out_gb, out_lp, out_ent,
                                       scratch_budget)
    allm = dict(zip(_METRIC_FIELDS, values))
    metrics = {k: allm[k] for k in config.logged_metrics(has_ref, True)}
    for k in ("policy_loss", "policy_term", "kl_term", "entropy_term", "num_tokens", "num_entropy_tokens",
              "num_off_policy_dropped"):
        metrics[k] = allm[k]
    return allm["loss"], metrics


def fused_linear_grpo_loss(hidden, weight, selected_token_ids, mask, advantages, *, bias=None, old_logps=None,
                           ref_logps=None, ref_hidden=None, ref_weight=None, ref_bias=None, sampling_logps=None,
                           importance_sampling_ratio=None, temperature: float = 1.0, logit_scale: float = 1.0,
                           final_logit_softcapping: float | None = None, compute_grad: bool = True,
                           tile_rows: int = 0, tile_cols: int = 0, scratch_budget: int = 0,
                           config: LossConfig | None = None, **options: Any) -> FusedLinearLossResult:
    """The GRPO loss of TRL 1.16 straight from the last hidden states (Liger's fused linear GRPO).

    Args:
        hidden: (B, T, H) or (B*T, H) float32 last hidden states of the completion tokens.
        weight: (V, H) float32 LM-head weight; bias: (V,) float32 or None.
        selected_token_ids: (B, T) integer completion token ids (any id, or -100, where mask is 0).
        mask: (B, T) 0/1 completion mask. advantages: (B,), (B, 1) or (B, T).
        old_logps, ref_logps, sampling_logps: (B, T) float32 or None (see `grpo_loss`).
        ref_hidden, ref_weight, ref_bias: the reference model's hidden states and LM head, used
            when ref_logps is None: reference log-probs computed inside under no grad.
        importance_sampling_ratio: vLLM IS ratio (B,), (B, 1) or (B, T).
        temperature, logit_scale, final_logit_softcapping: the LM head's options (TRL's names).
        compute_grad: False: loss and metrics only (one GEMM pass).
        scratch_budget: bytes of resident scratch for the 3-GEMM schedule (0 = default:
            min(256 MiB, half of the B*T x V logits), never an N x V buffer; a budget below one
            sequence's resident scratch, a little more than T x V x 4 (see
            fused_linear_loss_scratch_bytes), selects the 4-GEMM schedule, as do
            top_entropy_quantile < 1 and bfloat16).
        config: a LossConfig, or the loss options as keywords (loss_type, beta, epsilon, ...,
            exactly `grpo_loss`'s names).
    Returns:
        FusedLinearLossResult(loss, grad_hidden, grad_weight, grad_bias, metrics, log_probs, entropy).
    """
    fn = "fused_linear_grpo_loss"
    if config is None:
        config = LossConfig.from_options(fn, **options)
    elif options:
        raise TypeError(f"{fn}(): give either config= or loss options as keywords, not both "
                        f"(got {', '.join(sorted(options))})")
    elif not isinstance(config, LossConfig):
        raise TypeError(f"{fn}(): argument 'config' must be a grpo_swift.LossConfig, got {type(config).__name__}")
    if not isinstance(compute_grad, (bool, np.bool_)):
        raise TypeError(f"{fn}(): argument 'compute_grad' must be a bool, got {type(compute_grad).__name__}")
    head = _head_tuple(fn, temperature, logit_scale, final_logit_softcapping, tile_rows, tile_cols)
    budget = integer(scratch_budget, fn, "scratch_budget", minimum=0)
    ids = np.asarray(selected_token_ids) if selected_token_ids is not None else None
    if ids is None or ids.ndim != 2:
        raise ValueError(f"{fn}(): argument 'selected_token_ids' must be a (B, T) integer array, got "
                         f"{None if ids is None else ids.shape}")
    B, T = ids.shape
    if B == 0:
        raise ValueError(f"{fn}(): argument 'selected_token_ids' must have at least one row, got shape {ids.shape}")
    h = float_array(hidden, fn, "hidden", ndim=(2, 3), dtypes=_F32)
    if h.shape[:-1] not in ((B, T), (B * T,)):
        raise ValueError(f"{fn}(): argument 'hidden' must have shape ({B}, {T}, H) or ({B * T}, H) to match "
                         f"'selected_token_ids' {ids.shape}, got {h.shape}")
    H = h.shape[-1]
    w = float_array(weight, fn, "weight", ndim=(2,), dtypes=_F32)
    if w.shape[1] != H or w.shape[0] < 1 or H < 1:
        raise ValueError(f"{fn}(): argument 'weight' must have shape (V, {H}) with V >= 1, got {w.shape}")
    V = w.shape[0]

    def vec(x, arg, n):
        if x is None:
            return None
        a = float_array(x, fn, arg, ndim=(1,), dtypes=_F32)
        if a.shape[0] != n:
            raise ValueError(f"{fn}(): argument '{arg}' must have shape ({n},), got {a.shape}")
        return a

    def bt(x, arg):
        if x is None:
            return None
        a = float_array(x, fn, arg, ndim=(2,), dtypes=_F32)
        if a.shape != (B, T):
            raise ValueError(f"{fn}(): argument '{arg}' must have shape ({B}, {T}), got {a.shape}")
        return a

    b = vec(bias, "bias", V)
    targets = _targets_bt(ids, fn, "selected_token_ids", (B, T))
    m = _mask_u8(mask, fn, (B, T))
    adv, adv_cols = _rows_or_tokens(advantages, fn, "advantages", B, T, np.float32)
    isr, isr_cols = (None, 0) if importance_sampling_ratio is None else _rows_or_tokens(
        importance_sampling_ratio, fn, "importance_sampling_ratio", B, T, np.float32)
    old, ref, samp = bt(old_logps, "old_logps"), bt(ref_logps, "ref_logps"), bt(sampling_logps, "sampling_logps")
    rh = rw = rb = None
    if ref is None and (ref_hidden is not None or ref_weight is not None):
        if ref_hidden is None or ref_weight is None:
            raise ValueError(f"{fn}(): ref_hidden and ref_weight must be given together")
        rh = float_array(ref_hidden, fn, "ref_hidden", dtypes=_F32)
        if rh.shape != h.shape:
            raise ValueError(f"{fn}(): argument 'ref_hidden' must have the shape of 'hidden' {h.shape}, got {rh.shape}")
        rw = float_array(ref_weight, fn, "ref_weight", dtypes=_F32)
        if rw.shape != w.shape:
            raise ValueError(f"{fn}(): argument 'ref_weight' must have the shape of 'weight' {w.shape}, got {rw.shape}")
        rb = vec(ref_bias, "ref_bias", V)
    if config.beta != 0.0 and ref is None and rh is None:
        raise ValueError(f"{fn}(): beta != 0 (beta={config.beta}) needs ref_logps or ref_hidden/ref_weight")
    lp = np.empty((B, T), np.float32)
    ent = np.empty((B, T), np.float32)
    gh = np.empty(h.shape, np.float32) if compute_grad else None
    gw = np.empty(w.shape, np.float32) if compute_grad else None
    gb = np.empty(V, np.float32) if compute_grad and b is not None else None
    loss, metrics = _call(fn, B, T, h.reshape(-1, H), w, b, targets, m.reshape(-1), adv, adv_cols, old, ref, samp,
                          rh, rw, rb, isr, isr_cols, config, head, gh, gw, gb, lp, ent,
                          ref is not None or rh is not None, budget)
    return FusedLinearLossResult(loss, gh, gw, gb, metrics, lp, ent)


def fused_linear_loss_scratch_bytes(batch: int, length: int, hidden_size: int, vocab: int, *,
                                    bfloat16: bool = False, ref_from_hidden: bool = False,
                                    top_entropy_quantile: float = 1.0, scratch_budget: int = 0, tile_rows: int = 0,
                                    tile_cols: int = 0) -> int:
    """Bytes `fused_linear_grpo_loss` allocates besides its outputs (an upper bound) for a
    (batch, length) call: one block's resident scratch (<= scratch_budget, default min(256 MiB,
    half the logits): its logits with a row stride of V + 16, 3 statistics per 2048 vocabulary
    columns and 7 partial grad_hidden rows per row) for the 3-GEMM schedule, or one tile for the
    4-GEMM schedule, plus 24 (28 with ref_hidden) bytes per row; never batch x length x vocab
    beyond the budget. Comparing it with scratch_budget=1 (always the 4-GEMM schedule) tells which
    schedule a call takes."""
    fn = "fused_linear_loss_scratch_bytes"
    head = _head_tuple(fn, 1.0, 1.0, None, tile_rows, tile_cols)
    q = real(top_entropy_quantile, fn, "top_entropy_quantile")
    return _native.fused_linear_loss_scratch_bytes(
        integer(batch, fn, "batch", minimum=1), integer(length, fn, "length", minimum=0),
        integer(hidden_size, fn, "hidden_size", minimum=1), integer(vocab, fn, "vocab", minimum=1), head,
        _native.BF16 if bfloat16 else _native.F32, int(bool(ref_from_hidden)), int(q < 1.0),
        integer(scratch_budget, fn, "scratch_budget", minimum=0))
