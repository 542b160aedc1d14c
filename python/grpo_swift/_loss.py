"""The GRPO policy loss of every TRL 1.16 variant, its gradient and TRL's metrics, in Swift.

`grpo_loss` (numpy) returns exactly what TRL 1.16's `GRPOTrainer._compute_loss` returns for
the same micro-batch, the gradient with respect to the log-probs (closed form, no autograd
graph) and the metrics TRL logs. `LossConfig` holds the hyper-parameters (one frozen object
the torch layer reuses); `_policy_loss_buffers` is the no-validation call used by layers
that bring their own validated buffers.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np

from . import _native
from ._validation import choice, float_array, integer, real

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo", "gmpo"]
ImportanceSamplingLevel = Literal["token", "sequence", "sequence_token"]
KLEstimator = Literal["k3", "k1", "k2", "abs", "k1+", "k3+", "abs+"]

# Orders are the C enums' (grpo_loss_type, grpo_importance_sampling_level, grpo_kl_estimator).
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo", "gmpo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence", "sequence_token")
KL_ESTIMATORS = ("k3", "k1", "k2", "abs", "k1+", "k3+", "abs+")
# verl's kl_penalty names for the same estimators (accepted, stored under our name).
_KL_ALIASES = {"low_var_kl": "k3", "kl": "k1", "mse": "k2", "low_var_kl+": "k3+", "kl+": "k1+"}
_CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")

# Order of the tuple returned by _native.policy_loss (grpo_loss_metrics in grpo_swift.h).
_METRIC_FIELDS = (
    "loss", "policy_loss", "policy_term", "kl_term", "entropy_term", "kl", "entropy",
    "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "clip_ratio/low_min",
    "clip_ratio/high_max", "cispo_clip_ratio", "vespo/phi_seq_mean", "num_tokens",
    "num_entropy_tokens", "num_off_policy_dropped", "pg_clipfrac_lower",
)


def _optional_real(value: Any, fn: str, arg: str, **kw) -> float | None:
    return None if value is None else real(value, fn, arg, **kw)


def _count(value: Any, fn: str, arg: str) -> float | None:
    """num_items_in_batch: a number, a numpy scalar or a 0-d tensor/array (TRL passes a tensor)."""
    if value is None:
        return None
    if not isinstance(value, numbers.Real) and hasattr(value, "shape") and tuple(value.shape) in ((), (1,)):
        try:
            value = value.item() if hasattr(value, "item") else value
        except Exception as exc:  # e.g. a tensor on the meta device
            raise TypeError(f"{fn}(): argument '{arg}' must be a number or a one-element CPU tensor/array "
                            f"({exc})") from None
    v = real(value, fn, arg)
    if v < 0:
        raise ValueError(f"{fn}(): argument '{arg}' must be >= 0, got {v}")
    return v


def _check_options(fn: str, o: dict[str, Any]) -> dict[str, Any]:
    """Validates and normalises the hyper-parameters; raises naming `fn` and the argument."""
    o = dict(o)
    o["loss_type"] = choice(o["loss_type"], fn, "loss_type", LOSS_TYPES)
    o["importance_sampling_level"] = choice(o["importance_sampling_level"], fn, "importance_sampling_level",
                                            IMPORTANCE_SAMPLING_LEVELS)
    for name in ("beta", "epsilon", "entropy_coef", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
                 "vespo_lambda_neg"):
        o[name] = real(o[name], fn, name)
    o["epsilon_high"] = _optional_real(o["epsilon_high"], fn, "epsilon_high")
    o["delta"] = _optional_real(o["delta"], fn, "delta")
    o["off_policy_mask_threshold"] = _optional_real(o["off_policy_mask_threshold"], fn,
                                                    "off_policy_mask_threshold", finite=False)
    if o["off_policy_mask_threshold"] is not None and math.isnan(o["off_policy_mask_threshold"]):
        raise ValueError(f"{fn}(): argument 'off_policy_mask_threshold' must not be NaN")
    for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
        o[name] = real(o[name], fn, name, minimum=0.0, strict_minimum=True)
    q = real(o["top_entropy_quantile"], fn, "top_entropy_quantile")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"{fn}(): argument 'top_entropy_quantile' must be in [0, 1], got {q}")
    o["top_entropy_quantile"] = q
    if not isinstance(o["use_bias_correction_kl"], (bool, np.bool_)):
        raise TypeError(f"{fn}(): argument 'use_bias_correction_kl' must be a bool, got "
                        f"{type(o['use_bias_correction_kl']).__name__}")
    o["use_bias_correction_kl"] = bool(o["use_bias_correction_kl"])
    o["num_processes"] = integer(o["num_processes"], fn, "num_processes", minimum=1)
    o["gradient_accumulation_steps"] = integer(o["gradient_accumulation_steps"], fn,
                                               "gradient_accumulation_steps", minimum=1)
    if o["steps_per_generation"] is not None:
        o["steps_per_generation"] = integer(o["steps_per_generation"], fn, "steps_per_generation", minimum=1)
    if o["max_completion_length"] is not None:
        o["max_completion_length"] = integer(o["max_completion_length"], fn, "max_completion_length", minimum=1)
    elif o["loss_type"] == "dr_grpo":
        raise ValueError(f"{fn}(): loss_type 'dr_grpo' normalises by max_completion_length: pass "
                         f"max_completion_length (TRL's GRPOConfig.max_completion_length)")
    o["num_items_in_batch"] = _count(o["num_items_in_batch"], fn, "num_items_in_batch")
    _check_extra_options(fn, o)
    o["entropy_threshold"] = _optional_real(o["entropy_threshold"], fn, "entropy_threshold", finite=False)
    if o["entropy_threshold"] is not None and q >= 1.0:
        raise ValueError(f"{fn}(): argument 'entropy_threshold' is used only by the high-entropy mask "
                         f"(top_entropy_quantile < 1), but top_entropy_quantile is {q}")
    return o


def _check_extra_options(fn: str, o: dict[str, Any]) -> None:
    """The issue-11 options: KL estimator and clamp, dual clip, GMPO's restrictions (in place)."""
    est = o["kl_estimator"]
    if isinstance(est, str) and est in _KL_ALIASES:
        est = _KL_ALIASES[est]
    if est == "k2+":
        raise ValueError(f"{fn}(): argument 'kl_estimator' 'k2+' would be k2 itself (value and gradient of "
                         f"k2): pass 'k2'")
    o["kl_estimator"] = choice(est, fn, "kl_estimator", KL_ESTIMATORS)
    if o["kl_clamp"] is not None:
        o["kl_clamp"] = real(o["kl_clamp"], fn, "kl_clamp", minimum=0.0, strict_minimum=True)
    if o["clip_ratio_c"] is not None:
        c = real(o["clip_ratio_c"], fn, "clip_ratio_c")
        if not c > 1.0:
            raise ValueError(f"{fn}(): argument 'clip_ratio_c' (dual-clip PPO) must be > 1 (verl uses 3.0), got {c}")
        if o["loss_type"] not in _CLIPPED:
            raise ValueError(f"{fn}(): argument 'clip_ratio_c' (dual-clip PPO) applies to the clipped loss types "
                             f"{', '.join(_CLIPPED)}; got loss_type {o['loss_type']!r}")
        o["clip_ratio_c"] = c
    if o["loss_type"] == "gmpo":
        if o["importance_sampling_level"] != "token":
            raise ValueError(f"{fn}(): loss_type 'gmpo' takes the geometric mean of token ratios: "
                             f"importance_sampling_level must be 'token', got {o['importance_sampling_level']!r}")
        for name, off in (("delta", None), ("off_policy_mask_threshold", None), ("use_bias_correction_kl", False)):
            if o[name] != off:
                raise ValueError(f"{fn}(): loss_type 'gmpo' does not use {name} (TRL's GMPOTrainer ignores it); "
                                 f"got {name}={o[name]!r}, expected {off!r}")


@dataclass(frozen=True)
class LossConfig:
    """Hyper-parameters of the GRPO policy loss, named as in TRL's GRPOConfig.

    The normalisation numbers mirror TRL 1.16's `_compute_loss` in training mode:
    `gradient_accumulation_steps` (TRL's current_gradient_accumulation_steps) divides every
    loss type; dapo/cispo/vespo divide by `max(num_items_in_batch, 1) / num_processes *
    gradient_accumulation_steps / steps_per_generation`, where `num_items_in_batch` is the
    number of active tokens of the whole generation batch over all processes (None: the
    tokens of this call) and `steps_per_generation` defaults to gradient_accumulation_steps;
    dr_grpo needs `max_completion_length`. For TRL's eval mode pass
    gradient_accumulation_steps=1 and steps_per_generation=1.

    Beyond TRL 1.16's GRPOTrainer: `loss_type="gmpo"` (TRL's experimental GMPOTrainer: clipping
    in log space with epsilon / epsilon_high, pass TRL's GMPOConfig default epsilon=0.4
    yourself), `importance_sampling_level="sequence_token"` (GSPO-token), `kl_estimator`
    ("k3" TRL's default, "k1", "k2", "abs", straight-through "k1+", "k3+", "abs+"; verl's names
    "low_var_kl", "kl", "mse" accepted), `kl_clamp` (clamp the per-token KL estimate to
    [-kl_clamp, kl_clamp]; verl uses 10 for k3; None: off, as TRL) and `clip_ratio_c` (verl's
    dual-clip PPO for the clipped loss types; None: off). See docs/guide.md.

    `entropy_threshold` (with top_entropy_quantile < 1) replaces the quantile of this call's
    valid entropies by a threshold the caller computed: in multi-process training TRL takes the
    quantile of the entropies of every process (`grpo_swift.distributed.entropy_threshold`).
    NaN selects no token (TRL's empty or NaN quantile).
    """

    loss_type: LossType = "dapo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    importance_sampling_level: ImportanceSamplingLevel = "token"
    use_bias_correction_kl: bool = False
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    max_completion_length: int | None = None
    num_items_in_batch: float | None = None
    num_processes: int = 1
    gradient_accumulation_steps: int = 1
    steps_per_generation: int | None = None
    off_policy_mask_threshold: float | None = None
    top_entropy_quantile: float = 1.0
    entropy_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    kl_clamp: float | None = None
    clip_ratio_c: float | None = None
    entropy_threshold: float | None = None

    def __post_init__(self) -> None:
        checked = _check_options("LossConfig", {n: getattr(self, n) for n in _FIELD_NAMES})
        for k, v in checked.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_native_args", self._native_tuple())

    @classmethod
    def from_options(cls, fn: str, **options: Any) -> "LossConfig":
        """Builds a config from keyword options, raising errors that name `fn`. Validated
        configs are cached (a loss call in a training loop pays for validation once)."""
        unknown = [k for k in options if k not in _FIELD_SET]
        if unknown:
            raise TypeError(f"{fn}(): unexpected keyword argument(s) {', '.join(map(repr, sorted(unknown)))}; "
                            f"valid options: {', '.join(sorted(_FIELD_NAMES))}")
        values = dict(_DEFAULTS)
        values.update(options)
        values["num_items_in_batch"] = _count(values["num_items_in_batch"], fn, "num_items_in_batch")
        try:
            key = tuple((type(values[n]), values[n]) for n in _FIELD_NAMES)
            hash(key)
        except TypeError:  # an unhashable (hence invalid) option: validate (uncached) to get the message
            return _build_config.__wrapped__(fn, tuple((None, values[n]) for n in _FIELD_NAMES))
        return _build_config(fn, key)

    def replace(self, **changes: Any) -> "LossConfig":
        """A copy with some options changed (validated)."""
        return dataclasses.replace(self, **changes)

    def _native_tuple(self) -> tuple:
        eh = self.epsilon if self.epsilon_high is None else self.epsilon_high
        return (
            LOSS_TYPES.index(self.loss_type), IMPORTANCE_SAMPLING_LEVELS.index(self.importance_sampling_level),
            int(self.use_bias_correction_kl), int(self.delta is not None),
            int(self.off_policy_mask_threshold is not None), self.beta, self.epsilon, eh,
            self.delta if self.delta is not None else 0.0,
            self.off_policy_mask_threshold if self.off_policy_mask_threshold is not None else 0.0,
            self.top_entropy_quantile, self.entropy_coef, self.sapo_temperature_pos,
            self.sapo_temperature_neg, self.vespo_k_pos, self.vespo_lambda_pos, self.vespo_k_neg,
            self.vespo_lambda_neg, -1.0 if self.num_items_in_batch is None else self.num_items_in_batch,
            self.kl_clamp if self.kl_clamp is not None else 0.0,
            self.clip_ratio_c if self.clip_ratio_c is not None else 0.0,
            self.num_processes, self.gradient_accumulation_steps, self.steps_per_generation or 0,
            self.max_completion_length or 0,
            KL_ESTIMATORS.index(self.kl_estimator), int(self.kl_clamp is not None), int(self.clip_ratio_c is not None),
            int(self.entropy_threshold is not None),
            self.entropy_threshold if self.entropy_threshold is not None else 0.0,
        )

    def logged_metrics(self, has_ref: bool, has_entropies: bool) -> tuple[str, ...]:
        """The TRL metric names this configuration logs (besides policy_loss)."""
        names = []
        if self.beta != 0.0 or has_ref:
            names.append("kl")
        if has_entropies:
            names.append("entropy")
        if self.loss_type in _CLIPPED or self.loss_type == "gmpo":
            names += ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                      "clip_ratio/low_min", "clip_ratio/high_max"]
            if self.clip_ratio_c is not None:
                names.append("pg_clipfrac_lower")
        elif self.loss_type == "cispo":
            names.append("cispo_clip_ratio")
        elif self.loss_type == "vespo":
            names.append("vespo/phi_seq_mean")
        return tuple(names)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(LossConfig))
_FIELD_SET = frozenset(_FIELD_NAMES)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LossConfig)}


@functools.lru_cache(maxsize=512)
def _build_config(fn: str, key: tuple) -> LossConfig:
    checked = _check_options(fn, {n: v for n, (_, v) in zip(_FIELD_NAMES, key)})
    cfg = object.__new__(LossConfig)
    for k, v in checked.items():
        object.__setattr__(cfg, k, v)
    object.__setattr__(cfg, "_native_args", cfg._native_tuple())
    return cfg


@dataclass(frozen=True)
class LossResult:
    """The result of one loss call.

    loss:           float, what TRL's `_compute_loss` returns for this micro-batch.
    grad:           (B, T) d loss / d logps (float32; float64 for float64 inputs), 0 at masked
                    positions; None when compute_grad=False.
    grad_entropies: (B, T) d loss / d entropies when entropy_coef != 0, else None.
    metrics:        TRL's metric names (kl, entropy, clip_ratio/..., cispo_clip_ratio,
                    vespo/phi_seq_mean, policy_loss) plus the decomposition of the loss:
                    policy_term + kl_term + entropy_term == loss, and num_tokens,
                    num_entropy_tokens, num_off_policy_dropped. "Why is my loss 0?": with
                    on-policy ratios and centred advantages policy_term is 0 for grpo while
                    the gradient is not; kl_term is 0 while the policy equals the reference.
    """

    loss: float
    grad: np.ndarray | None
    grad_entropies: np.ndarray | None
    metrics: Mapping[str, float]


def _policy_loss_buffers(fn: str, logps, old_logps, ref_logps, sampling_logps, entropies, advantages,
                         mask_u8, importance_sampling_ratio, config: LossConfig, out_grad,
                         out_grad_entropies) -> tuple[float, dict[str, float]]:
    """Calls the kernel on already-validated C-contiguous buffers (numpy arrays or any object
    with the buffer protocol; bfloat16 as int16 bits). Fills the caller's gradient buffers.
    Returns (loss, metrics) with the metrics TRL would log for `config` plus the extras."""
    values = _native.policy_loss(fn, logps, old_logps, ref_logps, sampling_logps, entropies, advantages,
                                 mask_u8, importance_sampling_ratio, config._native_args, out_grad,
                                 out_grad_entropies)
    allm = dict(zip(_METRIC_FIELDS, values))
    metrics = {k: allm[k] for k in config.logged_metrics(ref_logps is not None, entropies is not None)}
    for k in ("policy_loss", "policy_term", "kl_term", "entropy_term", "num_tokens", "num_entropy_tokens",
              "num_off_policy_dropped"):
        metrics[k] = allm[k]
    return allm["loss"], metrics


_NUMPY_FLOATS = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))



def _mask_u8(mask, fn: str, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        raise TypeError(f"{fn}(): argument 'mask' must be a (B, T) array of 0/1 (bool, int or float), got None")
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"{fn}(): argument 'mask' must be bool, integer or float 0/1, got dtype {m.dtype}")
    if m.shape != shape:
        raise ValueError(f"{fn}(): argument 'mask' must have shape {shape} like 'logps', got {m.shape}")
    if m.dtype == np.bool_:
        return np.ascontiguousarray(m).view(np.uint8)
    if m.dtype == np.uint8 and m.flags.c_contiguous and not (m > 1).any():
        return m
    bad = ~((m == 0) | (m == 1))
    if bad.any():
        raise ValueError(f"{fn}(): argument 'mask' must hold only 0 and 1, got {m[bad].flat[0]!r}")
    return np.ascontiguousarray(m, dtype=np.uint8)


def grpo_loss(
    logps,
    advantages,
    mask,
    *,
    old_logps=None,
    ref_logps=None,
    loss_type: LossType = "dapo",
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: ImportanceSamplingLevel = "token",
    use_bias_correction_kl: bool = False,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
    num_processes: int = 1,
    gradient_accumulation_steps: int = 1,
    steps_per_generation: int | None = None,
    importance_sampling_ratio=None,
    sampling_logps=None,
    off_policy_mask_threshold: float | None = None,
    entropies=None,
    top_entropy_quantile: float = 1.0,
    entropy_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    kl_clamp: float | None = None,
    clip_ratio_c: float | None = None,
    compute_grad: bool = True,
    entropy_threshold: float | None = None,
) -> LossResult:
    """The GRPO policy loss of TRL 1.16 (`GRPOTrainer._compute_loss`), its gradient and metrics.

    Args:
        logps: (B, T) per-token log-probs of the current policy; float32, float64 or float16.
            Every other (B, T) float input must have the same dtype.
        advantages: (B,), (B, 1) or (B, T) advantages (cast to float64 for float64 logps,
            else float32, as TRL keeps them).
        mask: (B, T) completion mask of 0/1 (bool, integer or float).
        old_logps: (B, T) log-probs of the policy that sampled; None: on-policy (ratio 1
            with gradient, TRL's `per_token_logps.detach()`).
        ref_logps: (B, T) reference log-probs; required when beta != 0.
        loss_type: "grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo" (TRL 1.16's
            GRPOTrainer) or "gmpo" (TRL 1.16's experimental GMPOTrainer: geometric mean of the
            token ratios clipped in log space to [-epsilon, epsilon_high]; token level, one
            advantage per row; TRL's GMPOConfig defaults epsilon to 0.4).
        beta, epsilon, epsilon_high, delta, importance_sampling_level, use_bias_correction_kl,
        sapo_temperature_pos/neg, vespo_k/lambda_pos/neg, off_policy_mask_threshold,
        top_entropy_quantile, entropy_coef: as in TRL's GRPOConfig.
        max_completion_length: required by dr_grpo.
        num_items_in_batch, num_processes, gradient_accumulation_steps, steps_per_generation:
            the normalisation of TRL's training step (see LossConfig).
        importance_sampling_ratio: vLLM IS ratio (B, T), (B, 1) or (B,); multiplies the
            per-token loss (not for vespo, which folds it into its weight).
        sampling_logps: (B, T) sampler log-probs for the off-policy mask (default old_logps;
            read only when off_policy_mask_threshold is set, as in TRL).
        entropies: (B, T) per-token entropies: needed for top_entropy_quantile < 1 and
            entropy_coef != 0; gives the `entropy` metric.
        importance_sampling_level: "token", "sequence" (GSPO) or "sequence_token" (GSPO-token:
            the sequence ratio's value, a token ratio's gradient).
        kl_estimator: per-token KL estimator of the beta term: "k3" (TRL's, default), "k1",
            "k2", "abs", or the straight-through "k1+", "k3+", "abs+" (value of X, gradient of
            k2); verl's names "low_var_kl", "kl", "mse" are accepted.
        kl_clamp: clamp of the per-token KL estimate to [-kl_clamp, kl_clamp] (verl: 10 for k3);
            None (default, TRL) does not clamp.
        clip_ratio_c: dual-clip PPO (verl's clip_ratio_c, > 1; verl's default 3.0) for the
            clipped loss types: for A < 0 the loss is capped at -A * clip_ratio_c; adds the
            metric pg_clipfrac_lower. None (default) is off.
        compute_grad: False skips the gradients.
        entropy_threshold: with top_entropy_quantile < 1, the high-entropy threshold computed by
            the caller instead of the quantile of this call's entropies (multi-process: see
            `grpo_swift.distributed.entropy_threshold`); NaN selects no token.

    Returns:
        LossResult(loss, grad, grad_entropies, metrics). Masked positions never affect the
        result, whatever they hold; a fully masked batch gives loss 0 and gradient 0.
    """
    fn = "grpo_loss"
    config = LossConfig.from_options(
        fn, loss_type=loss_type, beta=beta, epsilon=epsilon, epsilon_high=epsilon_high, delta=delta,
        importance_sampling_level=importance_sampling_level, use_bias_correction_kl=use_bias_correction_kl,
        sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
        vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
        vespo_lambda_neg=vespo_lambda_neg, max_completion_length=max_completion_length,
        num_items_in_batch=num_items_in_batch, num_processes=num_processes,
        gradient_accumulation_steps=gradient_accumulation_steps, steps_per_generation=steps_per_generation,
        off_policy_mask_threshold=off_policy_mask_threshold, top_entropy_quantile=top_entropy_quantile,
        entropy_coef=entropy_coef, kl_estimator=kl_estimator, kl_clamp=kl_clamp, clip_ratio_c=clip_ratio_c,
        entropy_threshold=entropy_threshold)
    return loss_with_config(logps, advantages, mask, config, old_logps=old_logps, ref_logps=ref_logps,
                            sampling_logps=sampling_logps, entropies=entropies,
                            importance_sampling_ratio=importance_sampling_ratio, compute_grad=compute_grad,
                            fn=fn)


def loss_with_config(logps, advantages, mask, config: LossConfig, *, old_logps=None, ref_logps=None,
                     sampling_logps=None, entropies=None, importance_sampling_ratio=None,
                     compute_grad: bool = True, fn: str = "loss_with_config") -> LossResult:
    """`grpo_loss` with the hyper-parameters given as one LossConfig."""
    if not isinstance(config, LossConfig):
        raise TypeError(f"{fn}(): argument 'config' must be a grpo_swift.LossConfig, got {type(config).__name__}")
    if not isinstance(compute_grad, (bool, np.bool_)):
        raise TypeError(f"{fn}(): argument 'compute_grad' must be a bool, got {type(compute_grad).__name__}")
    lp = float_array(logps, fn, "logps", ndim=(2,), dtypes=_NUMPY_FLOATS)
    B, T = lp.shape
    if B == 0:
        raise ValueError(f"{fn}(): argument 'logps' must have at least one row, got shape {lp.shape}")

    def bt(x, arg):
        if x is None:
            return None
        a = float_array(x, fn, arg, ndim=(2,), dtypes=_NUMPY_FLOATS, dtype=lp.dtype)
        if a.shape != lp.shape:
            raise ValueError(f"{fn}(): argument '{arg}' must have shape {lp.shape} like 'logps', got {a.shape}")
        return a

    old, ref, samp, ent = bt(old_logps, "old_logps"), bt(ref_logps, "ref_logps"), \
        bt(sampling_logps, "sampling_logps"), bt(entropies, "entropies")
    aux = np.float64 if lp.dtype == np.float64 else np.float32

    def rows(x, arg):
        a = float_array(x, fn, arg, ndim=(1, 2), dtypes=_NUMPY_FLOATS)
        ok = (a.ndim == 1 and a.shape[0] == B) or (a.ndim == 2 and a.shape[0] == B and a.shape[1] in (1, T))
        if not ok:
            raise ValueError(f"{fn}(): argument '{arg}' must have shape ({B},), ({B}, 1) or ({B}, {T}), "
                             f"got {a.shape}")
        return np.ascontiguousarray(a, dtype=aux)

    adv = rows(advantages, "advantages")
    isr = None if importance_sampling_ratio is None else rows(importance_sampling_ratio, "importance_sampling_ratio")
    m = _mask_u8(mask, fn, (B, T))
    if config.beta != 0.0 and ref is None:
        raise ValueError(f"{fn}(): ref_logps is required when beta != 0 (beta={config.beta}): the KL term "
                         f"needs the reference model's log-probs")
    if config.top_entropy_quantile < 1.0 and ent is None:
        raise ValueError(f"{fn}(): entropies are required when top_entropy_quantile < 1 "
                         f"(got {config.top_entropy_quantile})")
    if config.entropy_coef != 0.0 and ent is None:
        raise ValueError(f"{fn}(): entropies are required when entropy_coef != 0 (got {config.entropy_coef})")
    if config.loss_type == "vespo" and isr is not None and (isr.ndim == 1 or isr.shape[1] == 1) and T != 1:
        raise ValueError(f"{fn}(): VESPO loss requires `vllm_importance_sampling_mode` to be either "
                         f"'token_truncate' or 'token_mask': pass a per-token importance_sampling_ratio "
                         f"of shape ({B}, {T}), got ({B}, 1)")
    out = np.float64 if lp.dtype == np.float64 else np.float32
    grad = np.empty((B, T), dtype=out) if compute_grad else None
    grad_h = np.empty((B, T), dtype=out) if compute_grad and config.entropy_coef != 0.0 else None
    loss, metrics = _policy_loss_buffers(fn, lp, old, ref, samp, ent, adv, m, isr, config, grad, grad_h)
    return LossResult(loss, grad, grad_h, metrics)
