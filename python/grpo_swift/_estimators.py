"""Advantage estimators of the literature over explicit groups, computed in Swift.

`advantages(rewards, estimator, group_ids=... | num_generations=..., **options)` is the general
entry point; the `*_advantages` functions are thin named shortcuts. Groups are either given by
one id per row (`group_ids`: any integers, or strings such as verl's uids; rows with equal ids
form a group, in any order, of any size) or as `num_generations` consecutive rows.

NaN rewards mark unscorable rows: their advantage is 0 and they enter no statistic. Every
computation runs in float64; the result has the rewards' dtype (float64 for lists).

Estimators (r reward, mu/sd the group's mean and Bessel std over scorable rows, k their count):

============================  ==============================================  ==========  =========
estimator                      advantage                                       shape       singleton
============================  ==============================================  ==========  =========
grpo                           (r - mu) / (sd + eps); scale_rewards "batch":   (N,)        "zero"
                               batch std; "none": no division  [TRL 1.16]
dr_grpo                        r - mu  [Dr.GRPO; TRL scale_rewards="none"]     (N,)        "zero"
rloo                           r - mean of the other rows = (r - mu) k/(k-1);  (N,)        "zero"
                               normalize_advantages: batch z-score [TRL RLOO]
opo                            r - sum(L r)/sum(L), L response lengths [verl]  (N,)        "raw"
gpg                            alpha (r - mu) / f_norm, alpha = N/M  [GPG]     (N,)        "raw"
passk                          best row of each group: (r_max - r_2nd)/(sd+eps) (N,)       "error"
                               others 0  [verl grpo_passk]
reinforce_pp                   discounted returns, whitened over the batch's   (N, T)      n/a
                               kept tokens  [REINFORCE++, verl 0.9.1]
reinforce_pp_baseline          (r - mu) on kept tokens, whitened likewise      (N, T)      "raw"
============================  ==============================================  ==========  =========

Singleton groups (one scorable row) are where implementations disagree; `singleton` selects:
"zero" (advantage 0; excluded from batch statistics of advantages -- TRL's GRPOTrainer and
RLOOTrainer), "raw" (baseline 0, std 1: verl's compute_*_outcome_advantage), "error" (raise,
naming the group: verl's pass@k). The defaults above follow each estimator's reference
implementation (TRL where TRL has the estimator, verl otherwise).

REINFORCE++ returns R_t = r_t + gamma R_{t+1} are accumulated over kept tokens from each row's
last kept token backwards. A masked-out position inside a row (a tool observation of a
multi-turn rollout) passes the running return through unchanged with masked_tokens="carry"
(the default; verl 0.9.1) or restarts it at 0 with masked_tokens="reset" (verl before
verl-project/verl#7300); rewards at masked positions are ignored. `return_returns=True` also
returns R (un-whitened, 0 on masked positions and unscorable rows): verl's second output.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from . import _native
from ._validation import choice, float_array, integer, real

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "opo", "gpg", "passk")

_EST_CODE = {"grpo": 0, "dr_grpo": 0, "rloo": 1, "opo": 2, "gpg": 3, "passk": 4,
             "reinforce_pp": 5, "reinforce_pp_baseline": 6}
_SINGLETON = {"zero": 0, "raw": 1, "error": 2}
_SCALE = {"group": 0, "batch": 1, "none": 2}
_ALPHA = {"informative": 0, "nonzero": 1}
_MASKED = {"carry": 0, "reset": 1}
_TOKEN_LEVEL = ("reinforce_pp", "reinforce_pp_baseline")

# Accepted options and their defaults, per estimator.
_OPTIONS: dict[str, dict[str, Any]] = {
    "grpo": {"scale_rewards": "group", "epsilon": 1e-4, "singleton": "zero"},
    "dr_grpo": {"singleton": "zero"},
    "rloo": {"normalize_advantages": False, "epsilon": 1e-4, "singleton": "zero"},
    "opo": {"response_mask": None, "lengths": None, "singleton": "raw"},
    "gpg": {"alpha": "informative", "f_norm": 1.0, "singleton": "raw"},
    "passk": {"scale_rewards": "group", "epsilon": 1e-6, "singleton": "error"},
    "reinforce_pp": {"response_mask": None, "gamma": 1.0, "epsilon": 1e-8, "masked_tokens": "carry",
                     "return_returns": False},
    "reinforce_pp_baseline": {"response_mask": None, "epsilon": 1e-8, "singleton": "raw"},
}


class AdvantagesAndReturns(NamedTuple):
    """REINFORCE++ with ``return_returns=True``: the (N, T) advantages and the un-whitened
    discounted returns (verl's ``(advantages, returns)`` pair), both of the rewards' dtype."""
    advantages: Any
    returns: Any


def _group_ids(group_ids: Any, n: int, fn: str) -> np.ndarray:
    """(n,) int64 ids. Integer arrays are used as they are; strings/objects are factorised."""
    if isinstance(group_ids, (str, bytes)):
        raise TypeError(f"{fn}(): argument 'group_ids' must be a 1-D array of ids, got {type(group_ids).__name__}")
    if getattr(getattr(group_ids, "device", None), "type", "cpu") != "cpu":
        raise TypeError(f"{fn}(): argument 'group_ids' is on device '{group_ids.device}'; move it with .cpu() first")
    try:
        ids = np.asarray(group_ids)
    except Exception as exc:
        raise TypeError(f"{fn}(): argument 'group_ids' must be a 1-D array of ids ({exc})") from None
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"{fn}(): argument 'group_ids' must have shape ({n},) (one id per row of "
                         f"'rewards'), got shape {ids.shape}")
    kind = ids.dtype.kind
    if kind == "i" or (kind == "u" and ids.dtype.itemsize < 8):
        return np.ascontiguousarray(ids, dtype=np.int64)
    if kind in "uUSO":
        try:
            _, inverse = np.unique(ids, return_inverse=True)
        except TypeError as exc:
            raise TypeError(f"{fn}(): argument 'group_ids' must hold integers or strings, got "
                            f"unorderable values ({exc})") from None
        return np.ascontiguousarray(inverse.reshape(-1), dtype=np.int64)
    raise TypeError(f"{fn}(): argument 'group_ids' must hold integers or strings, got dtype {ids.dtype}")


def _grouping(n: int, group_ids: Any, num_generations: Any, fn: str, *, required: bool = True,
              convert=_group_ids):
    """(ids or None, G) with exactly one of them given (G = 1 when ids are given). `convert`
    turns the given ids into what the kernel call takes (the torch layer passes its own)."""
    if group_ids is not None and num_generations is not None:
        raise TypeError(f"{fn}(): pass exactly one of 'group_ids' and 'num_generations', got both")
    if group_ids is not None:
        return convert(group_ids, n, fn), 1
    if num_generations is not None:
        g = integer(num_generations, fn, "num_generations", minimum=1)
        if n % g:
            raise ValueError(f"{fn}(): the number of rows of 'rewards' ({n}) must be a multiple of "
                             f"num_generations ({g})")
        return None, g
    if required:
        raise TypeError(f"{fn}(): pass exactly one of 'group_ids' and 'num_generations', got neither")
    return None, 1


def _mask(response_mask: Any, shape0: int, fn: str) -> np.ndarray:
    """(N, T) uint8 0/1 mask from bool/int/float 0-1 values."""
    if response_mask is None:
        raise TypeError(f"{fn}(): argument 'response_mask' is required, got None")
    if getattr(getattr(response_mask, "device", None), "type", "cpu") != "cpu":
        raise TypeError(f"{fn}(): argument 'response_mask' is on device '{response_mask.device}'; "
                        f"move it with .cpu() first")
    try:
        m = np.asarray(response_mask)
    except Exception as exc:
        raise TypeError(f"{fn}(): argument 'response_mask' must be a 2-D array ({exc})") from None
    if m.dtype.kind not in "biuf":
        raise TypeError(f"{fn}(): argument 'response_mask' must be bool, integer or float, got dtype {m.dtype}")
    if m.ndim != 2 or m.shape[0] != shape0 or m.shape[1] == 0:
        raise ValueError(f"{fn}(): argument 'response_mask' must have shape ({shape0}, T) with T >= 1, "
                         f"got shape {m.shape}")
    if m.dtype == np.bool_:
        return np.ascontiguousarray(m).view(np.uint8)
    ok = (m == 0) | (m == 1)
    if not ok.all():
        bad = m[~ok].flat[0]
        raise ValueError(f"{fn}(): argument 'response_mask' must hold only 0 and 1, got {bad!r}")
    return np.ascontiguousarray(m, dtype=np.uint8)


def _reraise(exc: Exception, fn: str) -> Exception:
    """The native message names the private function: name the public one instead."""
    msg = str(exc)
    for private in ("estimator_advantages()", "token_advantages()", "zero_spread_groups()"):
        msg = msg.replace(private, f"{fn}()")
    return type(exc)(msg)


def _options(fn: str, estimator: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` completed with the estimator's defaults; unknown names raise a TypeError."""
    allowed = _OPTIONS[estimator]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(repr(k) for k in allowed) or "none"
        raise TypeError(f"{fn}(): estimator {estimator!r} got unexpected option(s) "
                        f"{', '.join(repr(k) for k in unknown)}; its options are {listed}")
    return {**allowed, **options}


def _flag(v: Any, fn: str, arg: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{fn}(): argument '{arg}' must be a bool, got {type(v).__name__}")
    return bool(v)


def _config(fn: str, estimator: str, opts: dict[str, Any]) -> tuple:
    """The native config tuple (estimator, singleton, scale_rewards, normalize, gpg_alpha_mode,
    masked_returns, epsilon, gamma, gpg_alpha, gpg_f_norm) from validated scalar options.
    Reads only scalar options (not response_mask / lengths), so the torch layer shares it."""
    allowed = _OPTIONS[estimator]
    singleton = 0
    if "singleton" in allowed:
        singleton = _SINGLETON[choice(opts["singleton"], fn, "singleton", tuple(_SINGLETON))]
    scale = 2 if estimator == "dr_grpo" else 0
    if "scale_rewards" in allowed:
        s = opts["scale_rewards"]
        s = "group" if s is True else "none" if s is False else s
        names = ("group", "batch", "none") if estimator == "grpo" else ("group", "none")
        scale = _SCALE[choice(s, fn, "scale_rewards", names)]
    epsilon = real(opts.get("epsilon", 0.0), fn, "epsilon", minimum=0.0)
    normalize = int(_flag(opts["normalize_advantages"], fn, "normalize_advantages")) \
        if "normalize_advantages" in allowed else 0
    gamma, masked = 1.0, 0
    if estimator == "reinforce_pp":
        gamma = real(opts["gamma"], fn, "gamma", minimum=0.0)
        if gamma > 1.0:
            raise ValueError(f"{fn}(): argument 'gamma' must be in [0, 1], got {gamma}")
        masked = _MASKED[choice(opts["masked_tokens"], fn, "masked_tokens", tuple(_MASKED))]
        _flag(opts["return_returns"], fn, "return_returns")
    alpha_mode, alpha, f_norm = 0, 1.0, 1.0
    if estimator == "gpg":
        a = opts["alpha"]
        if isinstance(a, str):
            alpha_mode = _ALPHA[choice(a, fn, "alpha", tuple(_ALPHA))]
        elif isinstance(a, numbers.Real) and not isinstance(a, bool):
            alpha_mode, alpha = 2, real(a, fn, "alpha", minimum=0.0, strict_minimum=True)
        else:
            raise TypeError(f"{fn}(): argument 'alpha' must be 'informative', 'nonzero' or a float, "
                            f"got {type(a).__name__}")
        f_norm = real(opts["f_norm"], fn, "f_norm", minimum=0.0, strict_minimum=True)
    return (_EST_CODE[estimator], singleton, scale, normalize, alpha_mode, masked, epsilon, gamma, alpha, f_norm)


def _check_lengths(lengths: np.ndarray, n: int, fn: str) -> None:
    if lengths.shape != (n,):
        raise ValueError(f"{fn}(): argument 'lengths' must have shape ({n},), got {lengths.shape}")
    if not np.all(np.isfinite(lengths)) or np.any(lengths < 0):
        raise ValueError(f"{fn}(): argument 'lengths' must be finite and >= 0")


def _run(fn: str, estimator: str, rewards: Any, group_ids: Any, num_generations: Any,
         options: dict[str, Any]):
    opts = _options(fn, estimator, options)
    token_level = estimator in _TOKEN_LEVEL
    r = float_array(rewards, fn, "rewards", ndim=(1, 2) if estimator == "reinforce_pp" else (1,))
    if r.shape[0] == 0:
        raise ValueError(f"{fn}(): argument 'rewards' must not be empty, got shape {r.shape}")
    n = r.shape[0]
    ids, g = _grouping(n, group_ids, num_generations, fn, required=estimator != "reinforce_pp")
    config = _config(fn, estimator, opts)

    if token_level:
        mask = _mask(opts["response_mask"], n, fn)
        if r.ndim == 2 and r.shape != mask.shape:
            raise ValueError(f"{fn}(): 2-D 'rewards' (token-level) must have the shape of 'response_mask' "
                             f"{mask.shape}, got {r.shape}")
        out = np.empty(mask.shape, dtype=r.dtype)
        ret = np.empty(mask.shape, dtype=r.dtype) if opts.get("return_returns") else None
        try:
            _native.token_advantages(r, mask, ids, g, config, out, ret)
        except (ValueError, TypeError) as exc:
            raise _reraise(exc, fn) from None
        return out if ret is None else AdvantagesAndReturns(out, ret)

    lengths = None
    if estimator == "opo":
        given_mask, given_len = opts["response_mask"] is not None, opts["lengths"] is not None
        if given_mask == given_len:
            raise TypeError(f"{fn}(): opo needs exactly one of 'response_mask' and 'lengths', got "
                            f"{'both' if given_mask else 'neither'}")
        if given_mask:
            lengths = _mask(opts["response_mask"], n, fn).sum(axis=1, dtype=np.int64).astype(r.dtype)
        else:
            lengths = np.ascontiguousarray(float_array(opts["lengths"], fn, "lengths", ndim=(1,)), dtype=r.dtype)
            _check_lengths(lengths, n, fn)
    out = np.empty(n, dtype=r.dtype)
    try:
        _native.estimator_advantages(r, ids, g, lengths, config, out)
    except (ValueError, TypeError) as exc:
        raise _reraise(exc, fn) from None
    return out


def advantages(rewards, estimator: str = "grpo", *, group_ids=None, num_generations=None,
               **estimator_options) -> np.ndarray:
    """Advantages of the named estimator (see the module docstring for the maths).

    Args:
        rewards: (N,) float32/float64 rewards, NaN = unscorable; for "reinforce_pp" also (N, T)
            token-level rewards (else the outcome reward sits on each row's last kept token).
        estimator: one of "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline",
            "opo", "gpg", "passk".
        group_ids: (N,) ids (integers or strings): rows with equal ids form a group.
        num_generations: groups are this many consecutive rows. Exactly one of group_ids and
            num_generations (neither is fine for "reinforce_pp", which has no groups).
        **estimator_options: per estimator --
            grpo: scale_rewards ("group", "batch", "none" or a bool), epsilon (1e-4), singleton;
            dr_grpo: singleton; rloo: normalize_advantages (False), epsilon (1e-4), singleton;
            opo: response_mask (N, T) or lengths (N,), singleton;
            gpg: alpha ("informative" = N / scorable rows of groups with spread, as in the GPG
            paper; "nonzero" = N / rows with a non-zero reward, as in verl; or a float),
            f_norm (1.0), singleton; passk: scale_rewards ("group" or "none"), epsilon (1e-6),
            singleton; reinforce_pp: response_mask (required), gamma (1.0), epsilon (1e-8, added
            to the variance), masked_tokens ("carry" or "reset", see the module docstring),
            return_returns (False); reinforce_pp_baseline: response_mask (required), epsilon
            (1e-8), singleton.

    Returns:
        (N,) advantages, or (N, T) for reinforce_pp and reinforce_pp_baseline (0 on masked
        tokens), with the rewards' dtype. reinforce_pp with return_returns=True: an
        AdvantagesAndReturns(advantages, returns) pair of (N, T) arrays.
    """
    fn = "advantages"
    est = choice(estimator, fn, "estimator", ESTIMATORS)
    return _run(fn, est, rewards, group_ids, num_generations, estimator_options)


def dr_grpo_advantages(rewards, num_generations=None, *, group_ids=None, singleton="zero") -> np.ndarray:
    """Dr.GRPO advantages r - mean(group) (no std division). See `advantages`."""
    return _run("dr_grpo_advantages", "dr_grpo", rewards, group_ids, num_generations, {"singleton": singleton})


def rloo_advantages(rewards, num_generations=None, *, group_ids=None, normalize_advantages=False,
                    epsilon=1e-4, singleton="zero") -> np.ndarray:
    """RLOO leave-one-out advantages r_i - mean_{j != i} r_j (TRL's RLOOTrainer). See `advantages`."""
    return _run("rloo_advantages", "rloo", rewards, group_ids, num_generations,
                {"normalize_advantages": normalize_advantages, "epsilon": epsilon, "singleton": singleton})


def opo_advantages(rewards, num_generations=None, *, group_ids=None, response_mask=None, lengths=None,
                   singleton="raw") -> np.ndarray:
    """OPO advantages r - sum(L r) / sum(L) with response lengths L. See `advantages`."""
    return _run("opo_advantages", "opo", rewards, group_ids, num_generations,
                {"response_mask": response_mask, "lengths": lengths, "singleton": singleton})


def gpg_advantages(rewards, num_generations=None, *, group_ids=None, alpha="informative", f_norm=1.0,
                   singleton="raw") -> np.ndarray:
    """GPG advantages alpha (r - mean(group)) / f_norm. See `advantages`."""
    return _run("gpg_advantages", "gpg", rewards, group_ids, num_generations,
                {"alpha": alpha, "f_norm": f_norm, "singleton": singleton})


def passk_advantages(rewards, num_generations=None, *, group_ids=None, scale_rewards="group", epsilon=1e-6,
                     singleton="error") -> np.ndarray:
    """GRPO pass@k advantages: only each group's best row, (r_max - r_second) / (std + eps)."""
    return _run("passk_advantages", "passk", rewards, group_ids, num_generations,
                {"scale_rewards": scale_rewards, "epsilon": epsilon, "singleton": singleton})


def reinforce_pp_advantages(rewards, response_mask, *, gamma=1.0, epsilon=1e-8, masked_tokens="carry",
                            return_returns=False):
    """REINFORCE++ token advantages (N, T): discounted returns whitened over the batch.

    With return_returns=True, an AdvantagesAndReturns(advantages, returns) pair (verl's two
    outputs). masked_tokens: "carry" (verl 0.9.1) or "reset"; see the module docstring."""
    return _run("reinforce_pp_advantages", "reinforce_pp", rewards, None, None,
                {"response_mask": response_mask, "gamma": gamma, "epsilon": epsilon,
                 "masked_tokens": masked_tokens, "return_returns": return_returns})


def reinforce_pp_baseline_advantages(rewards, response_mask, num_generations=None, *, group_ids=None,
                                     epsilon=1e-8, singleton="raw") -> np.ndarray:
    """REINFORCE++-baseline token advantages (N, T): r - mean(group), whitened over the batch."""
    return _run("reinforce_pp_baseline_advantages", "reinforce_pp_baseline", rewards, group_ids,
                num_generations, {"response_mask": response_mask, "epsilon": epsilon, "singleton": singleton})


def zero_spread_groups(rewards, *, group_ids=None, num_generations=None, tolerance: float = 0.0) -> np.ndarray:
    """(N,) bool: True for every row whose group has zero reward spread (DAPO dynamic sampling).

    A group has zero spread when fewer than 2 of its rows are scorable (non-NaN) or
    max - min <= tolerance over them; such a group gives every group-relative estimator
    advantages of 0. Note verl's DAPO filter keeps groups of a single row; here they count
    as zero spread (no relative signal).
    """
    fn = "zero_spread_groups"
    r = float_array(rewards, fn, "rewards", ndim=(1,))
    if r.shape[0] == 0:
        raise ValueError(f"{fn}(): argument 'rewards' must not be empty, got shape {r.shape}")
    tol = real(tolerance, fn, "tolerance", minimum=0.0)
    ids, g = _grouping(r.shape[0], group_ids, num_generations, fn)
    out = np.empty(r.shape[0], dtype=np.bool_)
    try:
        _native.zero_spread_groups(r, ids, g, tol, out)
    except (ValueError, TypeError) as exc:
        raise _reraise(exc, fn) from None
    return out


def informative_rows(rewards, *, group_ids=None, num_generations=None, tolerance: float = 0.0) -> np.ndarray:
    """(K,) int64 indices (ascending) of the rows to keep under DAPO dynamic sampling: the rows
    of groups with non-zero reward spread (see `zero_spread_groups`)."""
    try:
        mask = zero_spread_groups(rewards, group_ids=group_ids, num_generations=num_generations,
                                  tolerance=tolerance)
    except (ValueError, TypeError) as exc:
        raise type(exc)(str(exc).replace("zero_spread_groups()", "informative_rows()")) from None
    return np.flatnonzero(~mask).astype(np.int64)
