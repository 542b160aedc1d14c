"""Per-token log-probs and entropy (TRL 1.16 `selective_log_softmax`, `entropy_from_logits`,
`ChunkedLogProbFunction`), forward and backward, computed in Swift.

Maths, per position (V = vocabulary, tau = temperature, y = the target token):
    z = logits / tau,  lse = logsumexp(z),  log_prob = z[y] - lse  (<= 0),
    entropy = lse - sum_v softmax(z)_v z_v  (shift-invariant).
Positions that are not scored -- a negative target (TRL's label -100) or mask == 0 -- get
log_prob = 0 and entropy = 0 and no gradient, exactly what TRL returns for them after its
``masked_fill(~mask, 0)``. A target >= V is a ValueError.

All arithmetic is float32 (float64 for float64 logits); `logsumexp` is always float64 so a
backward from it is as accurate as a recomputation.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _native
from ._validation import float_array, integer, real

_LOGIT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
_DTYPE_CODE = {np.dtype(np.float32): _native.F32, np.dtype(np.float64): _native.F64,
               np.dtype(np.float16): _native.F16}


class LogProbsResult(NamedTuple):
    """Forward outputs, shaped like the targets.

    log_probs: float32 (float64 for float64 inputs), <= 0, 0 where not scored.
    entropy:   same dtype, 0 where not scored.
    logsumexp: float64 logsumexp(logits / temperature) per position (0 where not scored):
               what the backward needs; keep it instead of the logits' softmax.
    """

    log_probs: np.ndarray
    entropy: np.ndarray
    logsumexp: np.ndarray


def _targets(index, func: str, arg: str, shape: tuple[int, ...]) -> np.ndarray:
    if index is None or isinstance(index, (str, bytes, float)):
        raise TypeError(f"{func}(): argument '{arg}' must be an integer array, got {type(index).__name__}")
    arr = np.asarray(index)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{func}(): argument '{arg}' must have an integer dtype, got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{func}(): argument '{arg}' must have shape {shape} (the logits' leading "
                         f"dimensions), got {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{func}(): argument '{arg}' has values beyond int64")
    return np.ascontiguousarray(arr.reshape(-1), dtype=np.int64)


def _mask(mask, func: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{func}(): argument 'mask' must be a bool or numeric array, got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{func}(): argument 'mask' must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr.reshape(-1) != 0).view(np.uint8)


def _temperature(t, func: str) -> float:
    return real(t, func, "temperature", minimum=0.0, strict_minimum=True)


def _logits(logits, func: str) -> np.ndarray:
    x = float_array(logits, func, "logits", dtypes=_LOGIT_DTYPES)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"{func}(): argument 'logits' must have shape (..., V) with V >= 1, got {x.shape}")
    return x


def _forward_raw(buf: np.ndarray, code: int, targets: np.ndarray, mask: np.ndarray | None,
                 temperature: float, need_entropy: bool, need_lse: bool):
    n = buf.shape[0]
    out_dtype = np.float64 if code == _native.F64 else np.float32
    lp = np.empty(n, dtype=out_dtype)
    ent = np.empty(n, dtype=out_dtype) if need_entropy else None
    lse = np.empty(n, dtype=np.float64) if need_lse else None
    _native.selective_log_softmax(buf, code, targets, mask, temperature, lp, ent, lse)
    return lp, ent, lse


def selective_log_softmax_forward(logits, index, *, temperature: float = 1.0, mask=None) -> LogProbsResult:
    """Log-probs, entropies and the float64 logsumexp (for `selective_log_softmax_backward`).

    Args:
        logits: (..., V) float32, float64 or float16 array (bfloat16 through grpo_swift.torch).
        index: (...) integer targets; negative = not scored.
        temperature: > 0; the logits are divided by it.
        mask: (...) bool/0-1 or None; 0 = not scored.
    """
    fn = "selective_log_softmax_forward"
    x = _logits(logits, fn)
    lead = x.shape[:-1]
    t = _targets(index, fn, "index", lead)
    m = _mask(mask, fn, lead)
    tau = _temperature(temperature, fn)
    lp, ent, lse = _forward_raw(x.reshape(-1, x.shape[-1]), _DTYPE_CODE[x.dtype], t, m, tau, True, True)
    return LogProbsResult(lp.reshape(lead), ent.reshape(lead), lse.reshape(lead))


def selective_log_softmax(logits, index, *, temperature: float = 1.0, return_entropy: bool = False, mask=None):
    """TRL's `selective_log_softmax` (and `entropy_from_logits` with return_entropy=True).

    ``log_softmax(logits / temperature).gather(-1, index)`` in one streaming pass per row,
    without materialising the softmax. Returns the log-probs shaped like `index`
    (float32; float64 for float64 logits), or ``(log_probs, entropy)``. Nothing is kept for
    a backward: this is also the no-grad entry point for old/ref policy log-probs.

    Args:
        logits: (..., V) float32, float64 or float16 array.
        index: (...) integer targets; negative (e.g. -100) = not scored: log-prob 0, entropy 0.
        temperature: > 0.
        return_entropy: also return the entropy of softmax(logits / temperature).
        mask: (...) or None; positions where it is 0 are not scored (TRL's `row_mask`).
    """
    fn = "selective_log_softmax"
    x = _logits(logits, fn)
    lead = x.shape[:-1]
    t = _targets(index, fn, "index", lead)
    m = _mask(mask, fn, lead)
    tau = _temperature(temperature, fn)
    if not isinstance(return_entropy, bool):
        raise TypeError(f"{fn}(): argument 'return_entropy' must be a bool, got {type(return_entropy).__name__}")
    lp, ent, _ = _forward_raw(x.reshape(-1, x.shape[-1]), _DTYPE_CODE[x.dtype], t, m, tau, return_entropy, False)
    if return_entropy:
        return lp.reshape(lead), ent.reshape(lead)
    return lp.reshape(lead)


def _row_input(x, func: str, arg: str, shape: tuple[int, ...], dtype) -> np.ndarray | None:
    if x is None:
        return None
    arr = float_array(x, func, arg, dtypes=(np.dtype(np.float32), np.dtype(np.float64)))
    if arr.shape != shape:
        raise ValueError(f"{func}(): argument '{arg}' must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr.reshape(-1), dtype=dtype)


def selective_log_softmax_backward(logits, index, grad_log_probs=None, grad_entropy=None, *, logsumexp=None,
                                   entropy=None, temperature: float = 1.0, mask=None, out=None,
                                   inplace: bool = False) -> np.ndarray:
    """Gradient of ``sum(grad_log_probs * log_probs + grad_entropy * entropy)`` w.r.t. the logits.

    Args:
        logits, index, temperature, mask: as given to the forward.
        grad_log_probs, grad_entropy: (...) upstream gradients, or None (= zeros).
        logsumexp: (...) float64 from `selective_log_softmax_forward`, or None to recompute.
        entropy: (...) from the forward; needed with grad_entropy when logsumexp is given.
        out: optional (..., V) float32 array (or the logits' dtype) to write into.
        inplace: write the gradient over `logits` itself (same dtype; saves an (N, V)
            buffer). `logits` must then be a writable C-contiguous array; it is destroyed.
    Returns the gradient array (`out`, `logits` when inplace, else a new float32 array;
    float64 for float64 logits).
    """
    fn = "selective_log_softmax_backward"
    if inplace and not (isinstance(logits, np.ndarray) and logits.flags.c_contiguous and logits.flags.writeable
                        and logits.dtype in _LOGIT_DTYPES):
        raise ValueError(f"{fn}(): inplace=True needs 'logits' to be a writable C-contiguous float32, float64 "
                         f"or float16 ndarray")
    x = _logits(logits, fn)
    lead = x.shape[:-1]
    v = x.shape[-1]
    t = _targets(index, fn, "index", lead)
    m = _mask(mask, fn, lead)
    tau = _temperature(temperature, fn)
    code = _DTYPE_CODE[x.dtype]
    row_dtype = np.float64 if code == _native.F64 else np.float32
    gl = _row_input(grad_log_probs, fn, "grad_log_probs", lead, row_dtype)
    gh = _row_input(grad_entropy, fn, "grad_entropy", lead, row_dtype)
    ent = _row_input(entropy, fn, "entropy", lead, row_dtype)
    lse = None
    if logsumexp is not None:
        lse = float_array(logsumexp, fn, "logsumexp")
        if lse.shape != lead:
            raise ValueError(f"{fn}(): argument 'logsumexp' must have shape {lead}, got {lse.shape}")
        lse = np.ascontiguousarray(lse.reshape(-1), dtype=np.float64)
        if gh is not None and ent is None:
            raise ValueError(f"{fn}(): argument 'entropy' (from the forward) is required with 'grad_entropy' "
                             f"when 'logsumexp' is given")
    if inplace:
        if out is not None:
            raise ValueError(f"{fn}(): give either out= or inplace=True, not both")
        out = x
        gcode = code
    elif out is None:
        out = np.empty(x.shape, dtype=row_dtype)
        gcode = _native.F64 if code == _native.F64 else _native.F32
    else:
        if not isinstance(out, np.ndarray) or out.shape != x.shape or not out.flags.c_contiguous:
            raise ValueError(f"{fn}(): argument 'out' must be a C-contiguous ndarray of shape {x.shape}")
        if out.dtype not in (np.dtype(row_dtype), x.dtype):
            raise TypeError(f"{fn}(): argument 'out' must have dtype {np.dtype(row_dtype)} or {x.dtype}, "
                            f"got {out.dtype}")
        gcode = _DTYPE_CODE[out.dtype]
    _native.selective_log_softmax_backward(x.reshape(-1, v), code, t, m, tau, lse, ent, gl, gh,
                                           out.reshape(-1, v), gcode)
    return out


# ---- fused LM head -------------------------------------------------------------------------


class _HeadArgs(NamedTuple):
    hidden: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    targets: np.ndarray
    lead: tuple[int, ...]
    temperature: float
    logit_scale: float
    softcap: float
    tile_rows: int
    tile_cols: int


def _head_args(fn, hidden, weight, labels, bias, temperature, logit_scale, final_logit_softcapping,
               tile_rows, tile_cols) -> _HeadArgs:
    f32 = (np.dtype(np.float32),)
    h = float_array(hidden, fn, "hidden", dtypes=f32)
    if h.ndim < 1:
        raise ValueError(f"{fn}(): argument 'hidden' must have shape (..., H), got {h.shape}")
    w = float_array(weight, fn, "weight", dtypes=f32, ndim=(2,))
    if w.shape[1] != h.shape[-1] or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"{fn}(): argument 'weight' must have shape (V, {h.shape[-1]}) with V >= 1 to match "
                         f"'hidden' {h.shape}, got {w.shape}")
    b = None
    if bias is not None:
        b = float_array(bias, fn, "bias", dtypes=f32, ndim=(1,))
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"{fn}(): argument 'bias' must have shape ({w.shape[0]},), got {b.shape}")
    lead = h.shape[:-1]
    t = _targets(labels, fn, "labels", lead)
    tau = _temperature(temperature, fn)
    scale = real(logit_scale, fn, "logit_scale")
    cap = 0.0
    if final_logit_softcapping is not None:
        cap = real(final_logit_softcapping, fn, "final_logit_softcapping", minimum=0.0, strict_minimum=True)
    tr = integer(tile_rows, fn, "tile_rows", minimum=0)
    tc = integer(tile_cols, fn, "tile_cols", minimum=0)
    return _HeadArgs(h.reshape(-1, h.shape[-1]), w, b, t, lead, tau, scale, cap, tr, tc)


def fused_log_probs_forward(hidden, weight, labels, *, bias=None, temperature: float = 1.0,
                            logit_scale: float = 1.0, final_logit_softcapping: float | None = None,
                            tile_rows: int = 0, tile_cols: int = 0) -> LogProbsResult:
    """`fused_log_probs` that also returns the float64 logsumexp the backward needs."""
    a = _head_args("fused_log_probs_forward", hidden, weight, labels, bias, temperature, logit_scale,
                   final_logit_softcapping, tile_rows, tile_cols)
    n = a.hidden.shape[0]
    lp = np.empty(n, np.float32)
    ent = np.empty(n, np.float32)
    lse = np.empty(n, np.float64)
    _native.fused_log_probs(a.hidden, a.weight, a.bias, a.targets, a.temperature, a.logit_scale, a.softcap,
                            a.tile_rows, a.tile_cols, lp, ent, lse)
    return LogProbsResult(lp.reshape(a.lead), ent.reshape(a.lead), lse.reshape(a.lead))


def fused_log_probs(hidden, weight, labels, *, bias=None, temperature: float = 1.0, logit_scale: float = 1.0,
                    final_logit_softcapping: float | None = None, return_entropy: bool = True):
    """Log-probs (and entropy) of `labels` under the LM head, without the (N, V) logits.

    logits = (hidden @ weight.T + bias) * logit_scale, then ``c * tanh(logits / c)`` when
    final_logit_softcapping = c is given, then / temperature -- TRL's
    ``ChunkedLogProbFunction``. Tiles of the logits go through OpenBLAS sgemm and are folded
    into online per-row statistics; the scratch memory is bounded (see
    `fused_log_probs_scratch_bytes`). Nothing is kept for a backward: this is the no-grad
    entry point for old/ref policy log-probs.

    Args:
        hidden: (..., H) float32.  weight: (V, H) float32.  bias: (V,) float32 or None.
        labels: (...) integer targets; negative (e.g. -100) = not scored: log-prob 0, entropy 0.
    Returns float32 ``(log_probs, entropy)`` shaped like `labels`, or only log_probs when
    return_entropy is False.
    """
    if not isinstance(return_entropy, bool):
        raise TypeError(f"fused_log_probs(): argument 'return_entropy' must be a bool, got "
                        f"{type(return_entropy).__name__}")
    a = _head_args("fused_log_probs", hidden, weight, labels, bias, temperature, logit_scale,
                   final_logit_softcapping, 0, 0)
    n = a.hidden.shape[0]
    lp = np.empty(n, np.float32)
    ent = np.empty(n, np.float32) if return_entropy else None
    _native.fused_log_probs(a.hidden, a.weight, a.bias, a.targets, a.temperature, a.logit_scale, a.softcap,
                            0, 0, lp, ent, None)
    if return_entropy:
        return lp.reshape(a.lead), ent.reshape(a.lead)
    return lp.reshape(a.lead)


def fused_log_probs_backward(hidden, weight, labels, grad_log_probs=None, grad_entropy=None, *, logsumexp,
                             entropy=None, bias=None, temperature: float = 1.0, logit_scale: float = 1.0,
                             final_logit_softcapping: float | None = None, need_hidden: bool = True,
                             need_weight: bool = True, need_bias: bool | None = None, tile_rows: int = 0,
                             tile_cols: int = 0):
    """Gradients of ``sum(grad_log_probs * log_probs + grad_entropy * entropy)`` of the fused head.

    Recomputes each logits tile, turns it into the logits gradient in place, and accumulates
    float32 gradients: returns ``(grad_hidden, grad_weight, grad_bias)`` (float32; None for
    the ones not requested; grad_bias defaults to requested when `bias` is given).
    `logsumexp` (and `entropy` with grad_entropy) come from `fused_log_probs_forward`.
    """
    fn = "fused_log_probs_backward"
    a = _head_args(fn, hidden, weight, labels, bias, temperature, logit_scale, final_logit_softcapping,
                   tile_rows, tile_cols)
    lse = float_array(logsumexp, fn, "logsumexp")
    if lse.shape != a.lead:
        raise ValueError(f"{fn}(): argument 'logsumexp' must have shape {a.lead}, got {lse.shape}")
    lse = np.ascontiguousarray(lse.reshape(-1), dtype=np.float64)
    gl = _row_input(grad_log_probs, fn, "grad_log_probs", a.lead, np.float32)
    gh = _row_input(grad_entropy, fn, "grad_entropy", a.lead, np.float32)
    ent = _row_input(entropy, fn, "entropy", a.lead, np.float32)
    if gh is not None and ent is None:
        raise ValueError(f"{fn}(): argument 'entropy' (from the forward) is required with 'grad_entropy'")
    if need_bias is None:
        need_bias = a.bias is not None
    if need_bias and a.bias is None:
        raise ValueError(f"{fn}(): need_bias=True but no 'bias' was given")
    n, h = a.hidden.shape
    v = a.weight.shape[0]
    g_hidden = np.empty((n, h), np.float32) if need_hidden else None
    g_weight = np.empty((v, h), np.float32) if need_weight else None
    g_bias = np.empty(v, np.float32) if need_bias else None
    _native.fused_log_probs_backward(a.hidden, a.weight, a.bias, a.targets, a.temperature, a.logit_scale,
                                     a.softcap, a.tile_rows, a.tile_cols, lse, ent, gl, gh, g_hidden, g_weight,
                                     g_bias)
    if g_hidden is not None:
        g_hidden = g_hidden.reshape(*a.lead, h)
    return g_hidden, g_weight, g_bias


def fused_log_probs_scratch_bytes(n: int, hidden_size: int, vocab: int, *, tile_rows: int = 0,
                                  tile_cols: int = 0, bfloat16: bool = False) -> int:
    """Bytes of scratch one fused forward or backward call allocates for these sizes.

    min(n, tile_rows) x min(vocab, tile_cols) float32 plus 16 bytes per tile row: bounded
    independently of n and vocab (16 MiB + 16 KiB with the default 1024 x 4096 tiles).
    With bfloat16 inputs (grpo_swift.torch) add the float32 copies of one row block of
    hidden, one vocabulary slice of weight and of bias. Outputs and gradients are not
    included (they are the caller's arrays).
    """
    fn = "fused_log_probs_scratch_bytes"
    return _native.fused_log_probs_scratch_bytes(integer(n, fn, "n", minimum=0),
                                                 integer(hidden_size, fn, "hidden_size", minimum=1),
                                                 integer(vocab, fn, "vocab", minimum=1), 1.0, 1.0, 0.0,
                                                 integer(tile_rows, fn, "tile_rows", minimum=0),
                                                 integer(tile_cols, fn, "tile_cols", minimum=0),
                                                 _native.BF16 if bfloat16 else _native.F32)
