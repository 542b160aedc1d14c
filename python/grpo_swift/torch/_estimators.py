"""The advantage estimators for torch tensors, as torch.library custom ops (torch.compile-safe).

    grpo_swift.torch.advantages(rewards, estimator="grpo", *, group_ids=None, num_generations=None,
                                **estimator_options)
    grpo_swift.torch.rloo_advantages(rewards, num_generations=None, *, group_ids=None, ...), and the
    other named shortcuts of grpo_swift (dr_grpo, opo, gpg, passk, reinforce_pp,
    reinforce_pp_baseline)
    grpo_swift.torch.zero_spread_groups(rewards, *, group_ids=None, num_generations=None, tolerance=0.0)
    grpo_swift.torch.informative_rows(...)

Same maths, options, defaults and kernels as the numpy functions of the same names (see
`grpo_swift._estimators`); the results are bitwise equal to theirs.

Accepted tensors (CPU only; another device is a TypeError saying to move it with .cpu()):
- rewards: float32 or float64, read in place when contiguous (one copy otherwise). The result has
  the rewards' dtype and is written by the kernel straight into the returned tensor. Rewards
  that require grad are refused (ValueError): no estimator here is differentiable, and silently
  detaching would give a zero gradient; pass rewards.detach().
- group_ids: an integer tensor (int8/16/32/64 or uint8; int64 is read in place) -- the form that
  works under torch.compile. String ids (verl's uids) are a numpy-level feature: in eager mode a
  list or numpy array of ints or strings is also accepted and converted once (np.unique), but
  under torch.compile pass an integer tensor (e.g. the inverse of np.unique computed outside).
- response_mask: bool or uint8 (read in place), or another integer/float dtype holding 0/1
  (converted); (N, T).
- lengths (opo): a float or integer tensor (cast to the rewards' dtype).

Under torch.compile(fullgraph=True) each call is one custom op in the graph (fake kernels give
the output shapes), so there is no graph break. Eager calls run the same implementation without
the dispatcher. `informative_rows` returns a data-dependent number of indices: inside a compiled
region it needs ``torch._dynamo.config.capture_dynamic_output_shape_ops = True`` (otherwise
dynamo breaks the graph there); `zero_spread_groups`, whose output has a fixed shape, does not.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np
import torch

from .. import _native
from .._estimators import (
    _OPTIONS,
    _TOKEN_LEVEL,
    ESTIMATORS,
    AdvantagesAndReturns,
    _check_lengths,
    _config,
    _group_ids,
    _grouping,
    _mask,
    _options,
    _reraise,
)
from .._validation import choice, real
from ._interop import buffer_of, check_tensor

__all__ = ["advantages", "dr_grpo_advantages", "rloo_advantages", "opo_advantages", "gpg_advantages",
           "passk_advantages", "reinforce_pp_advantages", "reinforce_pp_baseline_advantages",
           "zero_spread_groups", "informative_rows", "AdvantagesAndReturns"]

_REWARD_DTYPES = (torch.float32, torch.float64)
_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LENGTH_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float32, torch.float64,
                  torch.float16, torch.bfloat16)
_TENSOR_OPTIONS = ("response_mask", "lengths")
_N_INTS = 6  # the native config tuple: 6 ints, then 4 floats


# ---------------------------------------------------------------------------------- the ops
# Inputs arrive validated (dtypes, shapes, devices) from the wrappers below; what needs the
# data (mask values, length values, ids) is checked here, by the numpy layer's helpers.

def _call(fn: str, native, *args) -> None:
    try:
        native(*args)
    except (ValueError, TypeError) as exc:
        raise _reraise(exc, fn) from None


def _mask_buffer(mask: torch.Tensor, fn: str) -> np.ndarray:
    """(N, T) uint8 0/1 buffer: bool in place, uint8 in place after checking its values are 0/1,
    other dtypes checked and converted (the numpy layer's rules)."""
    if mask.dtype == torch.bool:
        return buffer_of(mask)
    return _mask(buffer_of(mask), mask.shape[0], fn)


def _estimator_advantages_impl(rewards: torch.Tensor, group_ids: Optional[torch.Tensor], num_generations: int,
                               lengths: Optional[torch.Tensor], response_mask: Optional[torch.Tensor],
                               config_ints: list[int], config_floats: list[float], fn: str) -> torch.Tensor:
    n = rewards.shape[0]
    lens = None
    if response_mask is not None:
        lens = _mask_buffer(response_mask, fn).sum(axis=1, dtype=np.int64).astype(buffer_of(rewards).dtype)
    elif lengths is not None:
        lens = buffer_of(lengths)
        _check_lengths(lens, n, fn)
    out = torch.empty(n, dtype=rewards.dtype)
    _call(fn, _native.estimator_advantages, buffer_of(rewards), None if group_ids is None else buffer_of(group_ids),
          num_generations, lens, (*config_ints, *config_floats), out.numpy())
    return out


def _token_advantages_impl(rewards: torch.Tensor, response_mask: torch.Tensor, group_ids: Optional[torch.Tensor],
                           num_generations: int, config_ints: list[int], config_floats: list[float],
                           with_returns: bool, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(tuple(response_mask.shape), dtype=rewards.dtype)
    ret = torch.empty(tuple(response_mask.shape) if with_returns else (0,), dtype=rewards.dtype)
    _call(fn, _native.token_advantages, buffer_of(rewards), _mask_buffer(response_mask, fn),
          None if group_ids is None else buffer_of(group_ids), num_generations, (*config_ints, *config_floats),
          out.numpy(), ret.numpy() if with_returns else None)
    return out, ret


def _zero_spread_impl(rewards: torch.Tensor, group_ids: Optional[torch.Tensor], num_generations: int,
                      tolerance: float, fn: str) -> torch.Tensor:
    out = torch.empty(rewards.shape[0], dtype=torch.bool)
    _call(fn, _native.zero_spread_groups, buffer_of(rewards), None if group_ids is None else buffer_of(group_ids),
          num_generations, tolerance, out.numpy())
    return out


_estimator_op = torch.library.custom_op("grpo_swift::estimator_advantages", _estimator_advantages_impl,
                                        mutates_args=(), device_types="cpu")
_token_op = torch.library.custom_op("grpo_swift::token_advantages", _token_advantages_impl,
                                    mutates_args=(), device_types="cpu")
_zero_spread_op = torch.library.custom_op("grpo_swift::zero_spread_groups", _zero_spread_impl,
                                          mutates_args=(), device_types="cpu")


@_estimator_op.register_fake
def _(rewards, group_ids, num_generations, lengths, response_mask, config_ints, config_floats, fn):
    return rewards.new_empty(rewards.shape[0])


@_token_op.register_fake
def _(rewards, response_mask, group_ids, num_generations, config_ints, config_floats, with_returns, fn):
    shape = tuple(response_mask.shape)
    return rewards.new_empty(shape), rewards.new_empty(shape if with_returns else (0,))


@_zero_spread_op.register_fake
def _(rewards, group_ids, num_generations, tolerance, fn):
    return rewards.new_empty(rewards.shape[0], dtype=torch.bool)


def _run_op(op, impl, *args):
    """The custom op while torch.compile traces (it is what goes into the graph); the same
    implementation without the dispatcher's Python overhead in eager mode."""
    if torch.compiler.is_compiling():
        return op(*args)
    return impl(*args)


# ------------------------------------------------------------------------------ validation

@functools.lru_cache(maxsize=256)
def _config_cached(fn: str, estimator: str, items: tuple) -> tuple[list[int], list[float]]:
    cfg = _config(fn, estimator, _options(fn, estimator, dict(items)))
    return list(cfg[:_N_INTS]), list(cfg[_N_INTS:])


@torch.compiler.assume_constant_result
def _native_config(fn: str, estimator: str, items: tuple) -> tuple[list[int], list[float]]:
    """Validated scalar options -> (ints, floats) of the native config; memoised, and a constant
    for torch.compile (the checks are plain Python on constants)."""
    try:
        return _config_cached(fn, estimator, items)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
        cfg = _config(fn, estimator, _options(fn, estimator, dict(items)))  # raises the argument's error
        return list(cfg[:_N_INTS]), list(cfg[_N_INTS:])


def _specialised(items: tuple, defaults: dict[str, Any]) -> tuple:
    """Under torch.compile(dynamic=True) dynamo turns float default arguments (epsilon=1e-4 of the
    shortcuts) into symbolic floats, which assume_constant_result cannot take: drop the options
    equal to their default (the comparison specialises them; the config fills the default in)."""
    return tuple((k, v) for k, v in items if not (type(v) is float and v == defaults[k]))


def _not_differentiable(t: torch.Tensor, fn: str, arg: str) -> None:
    if torch.is_grad_enabled() and t.requires_grad:
        raise ValueError(f"{fn}(): argument '{arg}' requires grad, but advantage estimators are not "
                         f"differentiable (the result would silently carry no gradient); pass {arg}.detach()")


def _rewards(rewards: Any, fn: str, ndim: tuple[int, ...]) -> torch.Tensor:
    r = check_tensor(rewards, fn, "rewards", dtypes=_REWARD_DTYPES, ndim=ndim)
    if r.shape[0] == 0:
        raise ValueError(f"{fn}(): argument 'rewards' must not be empty, got shape {tuple(r.shape)}")
    _not_differentiable(r, fn, "rewards")
    return r


def _ids(group_ids: Any, n: int, fn: str) -> torch.Tensor:
    """(n,) int64 tensor of ids: integer tensors as they are (int64 in place); in eager mode also
    lists / numpy arrays of ints or strings (the numpy layer's factorisation)."""
    if isinstance(group_ids, torch.Tensor):
        t = check_tensor(group_ids, fn, "group_ids", dtypes=_ID_DTYPES, ndim=(1,))
        if t.shape[0] != n:
            raise ValueError(f"{fn}(): argument 'group_ids' must have shape ({n},) (one id per row of "
                             f"'rewards'), got shape {tuple(t.shape)}")
        return t if t.dtype == torch.int64 else t.to(torch.int64)
    if torch.compiler.is_compiling():
        raise TypeError(f"{fn}(): under torch.compile argument 'group_ids' must be an integer tensor, got "
                        f"{type(group_ids).__name__}; string ids are a numpy-level feature: factorise them "
                        f"outside the compiled region (np.unique(ids, return_inverse=True))")
    return torch.from_numpy(_group_ids(group_ids, n, fn))


def _mask_tensor(mask: Any, n: int, fn: str) -> torch.Tensor:
    if mask is None:
        raise TypeError(f"{fn}(): argument 'response_mask' is required, got None")
    m = check_tensor(mask, fn, "response_mask", dtypes=_MASK_DTYPES, ndim=(2,))
    if m.shape[0] != n or m.shape[1] == 0:
        raise ValueError(f"{fn}(): argument 'response_mask' must have shape ({n}, T) with T >= 1, "
                         f"got shape {tuple(m.shape)}")
    _not_differentiable(m, fn, "response_mask")
    if m.dtype == torch.bfloat16:  # numpy sees bfloat16 as int16 bits: compare as float32
        m = m.float()
    return m


def _run(fn: str, estimator: str, rewards: Any, group_ids: Any, num_generations: Any, options: dict[str, Any]):
    unknown = set(options) - set(_OPTIONS[estimator])
    if unknown:
        _options(fn, estimator, options)  # raises the numpy layer's message
    scalars = tuple(sorted((k, v) for k, v in options.items() if k not in _TENSOR_OPTIONS))
    if torch.compiler.is_compiling():
        scalars = _specialised(scalars, _OPTIONS[estimator])
    ints, floats = _native_config(fn, estimator, scalars)
    r = _rewards(rewards, fn, (1, 2) if estimator == "reinforce_pp" else (1,))
    n = r.shape[0]
    ids, g = _grouping(n, group_ids, num_generations, fn, required=estimator != "reinforce_pp", convert=_ids)

    if estimator in _TOKEN_LEVEL:
        mask = _mask_tensor(options.get("response_mask"), n, fn)
        if r.dim() == 2 and r.shape != mask.shape:
            raise ValueError(f"{fn}(): 2-D 'rewards' (token-level) must have the shape of 'response_mask' "
                             f"{tuple(mask.shape)}, got {tuple(r.shape)}")
        with_returns = bool(options.get("return_returns", False))
        adv, ret = _run_op(_token_op, _token_advantages_impl, r, mask, ids, g, ints, floats, with_returns, fn)
        return AdvantagesAndReturns(adv, ret) if with_returns else adv

    mask = lengths = None
    if estimator == "opo":
        m, lens = options.get("response_mask"), options.get("lengths")
        if (m is None) == (lens is None):
            raise TypeError(f"{fn}(): opo needs exactly one of 'response_mask' and 'lengths', got "
                            f"{'both' if m is not None else 'neither'}")
        if m is not None:
            mask = _mask_tensor(m, n, fn)
        else:
            lengths = check_tensor(lens, fn, "lengths", dtypes=_LENGTH_DTYPES, ndim=(1,))
            if lengths.shape[0] != n:
                raise ValueError(f"{fn}(): argument 'lengths' must have shape ({n},), got {tuple(lengths.shape)}")
            _not_differentiable(lengths, fn, "lengths")
            lengths = lengths if lengths.dtype == r.dtype else lengths.to(r.dtype)
    return _run_op(_estimator_op, _estimator_advantages_impl, r, ids, g, lengths, mask, ints, floats, fn)


# ------------------------------------------------------------------------------ public API

def advantages(rewards: torch.Tensor, estimator: str = "grpo", *, group_ids=None, num_generations=None,
               **estimator_options):
    """`grpo_swift.advantages` for CPU tensors: the named estimator's advantages.

    Args:
        rewards: (N,) float32/float64 tensor (NaN = unscorable); for "reinforce_pp" also (N, T)
            token rewards.
        estimator: "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "opo", "gpg"
            or "passk".
        group_ids: (N,) integer tensor (rows with equal ids form a group); in eager mode also a list
            or numpy array of ints or strings.
        num_generations: groups are this many consecutive rows (exactly one of the two; neither
            for "reinforce_pp").
        **estimator_options: those of `grpo_swift.advantages` (response_mask and lengths as tensors).

    Returns:
        (N,) tensor, or (N, T) for the token-level estimators, of the rewards' dtype; for
        reinforce_pp with return_returns=True an AdvantagesAndReturns(advantages, returns) pair.
    """
    fn = "advantages"
    est = choice(estimator, fn, "estimator", ESTIMATORS)
    return _run(fn, est, rewards, group_ids, num_generations, estimator_options)


def dr_grpo_advantages(rewards, num_generations=None, *, group_ids=None, singleton="zero") -> torch.Tensor:
    """Dr.GRPO advantages r - mean(group) (no std division). See `advantages`."""
    return _run("dr_grpo_advantages", "dr_grpo", rewards, group_ids, num_generations, {"singleton": singleton})


def rloo_advantages(rewards, num_generations=None, *, group_ids=None, normalize_advantages=False, epsilon=1e-4,
                    singleton="zero") -> torch.Tensor:
    """RLOO leave-one-out advantages r_i - mean_{j != i} r_j (TRL's RLOOTrainer). See `advantages`."""
    return _run("rloo_advantages", "rloo", rewards, group_ids, num_generations,
                {"normalize_advantages": normalize_advantages, "epsilon": epsilon, "singleton": singleton})


def opo_advantages(rewards, num_generations=None, *, group_ids=None, response_mask=None, lengths=None,
                   singleton="raw") -> torch.Tensor:
    """OPO advantages r - sum(L r) / sum(L) with response lengths L (from response_mask or lengths)."""
    return _run("opo_advantages", "opo", rewards, group_ids, num_generations,
                {"response_mask": response_mask, "lengths": lengths, "singleton": singleton})


def gpg_advantages(rewards, num_generations=None, *, group_ids=None, alpha="informative", f_norm=1.0,
                   singleton="raw") -> torch.Tensor:
    """GPG advantages alpha (r - mean(group)) / f_norm. See `advantages`."""
    return _run("gpg_advantages", "gpg", rewards, group_ids, num_generations,
                {"alpha": alpha, "f_norm": f_norm, "singleton": singleton})


def passk_advantages(rewards, num_generations=None, *, group_ids=None, scale_rewards="group", epsilon=1e-6,
                     singleton="error") -> torch.Tensor:
    """GRPO pass@k advantages: only each group's best row, (r_max - r_second) / (std + eps)."""
    return _run("passk_advantages", "passk", rewards, group_ids, num_generations,
                {"scale_rewards": scale_rewards, "epsilon": epsilon, "singleton": singleton})


def reinforce_pp_advantages(rewards, response_mask, *, gamma=1.0, epsilon=1e-8, masked_tokens="carry",
                            return_returns=False):
    """REINFORCE++ token advantages (N, T); with return_returns=True an AdvantagesAndReturns pair
    (verl's advantages and un-whitened returns). See `grpo_swift.reinforce_pp_advantages`."""
    return _run("reinforce_pp_advantages", "reinforce_pp", rewards, None, None,
                {"response_mask": response_mask, "gamma": gamma, "epsilon": epsilon,
                 "masked_tokens": masked_tokens, "return_returns": return_returns})


def reinforce_pp_baseline_advantages(rewards, response_mask, num_generations=None, *, group_ids=None,
                                     epsilon=1e-8, singleton="raw") -> torch.Tensor:
    """REINFORCE++-baseline token advantages (N, T): r - mean(group), whitened over the batch."""
    return _run("reinforce_pp_baseline_advantages", "reinforce_pp_baseline", rewards, group_ids, num_generations,
                {"response_mask": response_mask, "epsilon": epsilon, "singleton": singleton})


@torch.compiler.assume_constant_result
def _tolerance(value: Any, fn: str) -> float:
    return real(value, fn, "tolerance", minimum=0.0)


def zero_spread_groups(rewards, *, group_ids=None, num_generations=None, tolerance: float = 0.0) -> torch.Tensor:
    """(N,) bool tensor: True for every row whose group has zero reward spread (DAPO dynamic
    sampling). See `grpo_swift.zero_spread_groups`."""
    return _zero_spread("zero_spread_groups", rewards, group_ids, num_generations, tolerance)


def _zero_spread(fn: str, rewards, group_ids, num_generations, tolerance) -> torch.Tensor:
    if torch.compiler.is_compiling() and type(tolerance) is float and tolerance == 0.0:
        tolerance = 0.0  # see _specialised
    tol = _tolerance(tolerance, fn)
    r = _rewards(rewards, fn, (1,))
    ids, g = _grouping(r.shape[0], group_ids, num_generations, fn, convert=_ids)
    return _run_op(_zero_spread_op, _zero_spread_impl, r, ids, g, tol, fn)


def informative_rows(rewards, *, group_ids=None, num_generations=None, tolerance: float = 0.0) -> torch.Tensor:
    """(K,) int64 tensor of the rows to keep under DAPO dynamic sampling (ascending): the rows of
    groups with non-zero reward spread. Its length depends on the data (see the module docstring
    for torch.compile)."""
    flags = _zero_spread("informative_rows", rewards, group_ids, num_generations, tolerance)
    return torch.nonzero(~flags).reshape(-1)

