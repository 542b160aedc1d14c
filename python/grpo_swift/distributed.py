"""Multi-process (data-parallel) GRPO on torch.distributed: the cross-process parts, exactly.

    import grpo_swift.distributed as gsd

    adv = gsd.group_advantages(local_rewards, num_generations=8).advantages   # this process's rows
    loss, metrics = gsd.grpo_loss(per_token_logps, adv, completion_mask, loss_type="dapo", ...)
    loss.backward()                                  # DDP averages the gradients over processes

Launch with ``torchrun --nproc_per_node N script.py`` (or ``accelerate launch --multi_gpu
--num_processes N``: on a machine without GPUs plain ``accelerate launch --num_processes N``
starts ONE process) and ``torch.distributed.init_process_group("gloo")``: the kernels run on
CPU, so the collectives here exchange CPU tensors (gloo or mpi; not nccl). Without an
initialised process group every function works as a single process and runs no collective.

What crosses processes (a few numbers per call, never the (B, T) tensors except the entropies
for the high-entropy quantile):

* Advantages. Rewards are all-gathered (in rank order; ranks may hold different row counts),
  the Swift kernel computes the advantages of the whole batch, and each process keeps its own
  rows. Groups are ``num_generations`` consecutive rows of the gathered batch, so a group may
  span processes (TRL's RepeatSampler does that when per_device_train_batch_size <
  num_generations). Every process computes the same numbers bit for bit.
* Loss normalisers. ``num_processes`` is the world size W and ``num_items_in_batch`` N the
  number of active tokens over every process (TRL's ``gather(mask.sum()).sum()``: computed here
  when not given; pass it explicitly for a generation batch split into several micro-batches).
  Each process computes the loss of its own rows; DDP's all-reduce then AVERAGES the gradients.
  Per loss type, with TRL 1.16's formulas (GA = gradient_accumulation_steps, S =
  steps_per_generation):

  ===================  ====================================  ===================================
  loss_type            this process's loss                   after DDP's average
  ===================  ====================================  ===================================
  dapo, cispo, vespo   sum(l m) / (max(N,1) / W * GA / S)    sum over all processes / (N GA/S):
                                                             the single-process value
  grpo, sapo, gmpo     mean over its rows / GA               the single-process value when every
  dr_grpo              sum(l m) / (B_r max_len) / GA         process holds the same number of
  luspo                mean of its row sums / GA             rows B_r (TRL always does)
  bnpo                 sum(l m) / its own tokens / GA        the MEAN OF PER-PROCESS token means,
  entropy bonus        coef * its own token mean / GA        not the single-process token mean
  ===================  ====================================  ===================================

  ``normalization="trl"`` reproduces TRL 1.16's multi-process run exactly (that table).
  ``normalization="global"`` (the default) rescales this process's loss so that the averaged
  gradient (and the mean of the processes' losses) equals the single-process result of the
  union of every process's rows for EVERY loss type, the entropy bonus included, also with
  different row or token counts per process: grpo/sapo/gmpo/dr_grpo/luspo by W B_r / B, bnpo by
  W T_r / T, the entropy bonus by W E_r / E (B, T, E the row, token and high-entropy-token
  counts over all processes; the scale of the policy+KL part and of the entropy part are applied
  to their own gradients). With gradient accumulation each call is one micro-batch: the
  reference is one process holding the union of the processes' k-th micro-batches, with the
  same GA and S (TRL's single-process bnpo also normalises each micro-batch by its own
  tokens). The two modes differ only for bnpo, the entropy bonus and uneven row counts;
  dapo/cispo/vespo are already global in TRL.
* High-entropy mask (top_entropy_quantile < 1): TRL's ``get_high_entropy_mask`` takes
  ``torch.quantile`` of the valid entropies gathered from every process; so does
  `entropy_threshold`, whose value the kernel then uses (LossConfig.entropy_threshold) instead
  of the quantile of this process's entropies alone.
* Metrics, reduced as TRL 1.16's ``_compute_loss`` logs them: kl, entropy, the clip ratios,
  cispo_clip_ratio, vespo/phi_seq_mean and pg_clipfrac_lower are global means weighted by each process's count
  (tokens, or rows for sequence-level ratios and per-row vespo weights); clip_ratio/low_min and
  high_max are the nanmin / nanmax over every process's per-sequence values; policy_loss is the
  nanmean of the processes' values; policy_term / kl_term / entropy_term are means over
  processes (the value DDP's average realises); num_tokens, num_entropy_tokens and
  num_off_policy_dropped are sums. The reduced metrics are Python floats, equal on every process.

Failure handling: every collective here carries an "ok" flag, so an input error on one process
is raised on every process (the failing one raises its own TypeError/ValueError, the others a
RuntimeError naming it) instead of leaving the others blocked in a collective.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np

try:
    import torch
    import torch.distributed as dist
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError("grpo_swift.distributed needs PyTorch (torch.distributed): pip install 'grpo-swift[torch]' "
                      "(or pip install torch)") from exc

from ._advantages import AdvantagesResult
from ._loss import LossConfig
from .torch import _loss as _tloss
from .torch import group_advantages as _torch_group_advantages

__all__ = [
    "world",
    "gather_rows",
    "global_token_count",
    "entropy_threshold",
    "group_advantages",
    "DistributedAdvantages",
    "grpo_loss",
    "reduce_metrics",
    "METRIC_REDUCTIONS",
]

Normalization = Literal["global", "trl"]

# How each metric of grpo_swift.torch.grpo_loss is reduced over processes (TRL 1.16's logging).
#   "weighted": global mean weighted by the process's count (tokens, or rows: see _count_kind)
#   "nanmin" / "nanmax": over the processes' values (each already a min/max over its sequences)
#   "nanmean": mean over processes ignoring NaN (TRL: gather(policy_loss).nanmean())
#   "mean": mean over processes (the loss decomposition: what DDP's gradient average realises)
#   "sum": total over processes (counts)
METRIC_REDUCTIONS: dict[str, str] = {
    "kl": "weighted", "entropy": "weighted",
    "clip_ratio/low_mean": "weighted", "clip_ratio/high_mean": "weighted", "clip_ratio/region_mean": "weighted",
    "clip_ratio/low_min": "nanmin", "clip_ratio/high_max": "nanmax",
    "cispo_clip_ratio": "weighted", "vespo/phi_seq_mean": "weighted", "pg_clipfrac_lower": "weighted",
    "policy_loss": "nanmean", "loss": "mean", "policy_term": "mean", "kl_term": "mean", "entropy_term": "mean",
    "num_tokens": "sum", "num_entropy_tokens": "sum", "num_off_policy_dropped": "sum",
}

_NORMALIZATIONS = ("global", "trl")


# ---------------------------------------------------------------------------------------------
# Process-group plumbing


def world(group: Optional[dist.ProcessGroup] = None) -> tuple[int, int]:
    """(rank, world_size) of this process in `group` (default: the world); (0, 1) when
    torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _check_backend(fn: str, group) -> None:
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        raise ValueError(f"grpo_swift.distributed.{fn}(): the process group uses the nccl backend, which cannot "
                         f"exchange the CPU tensors the grpo_swift kernels work on; pass a gloo group "
                         f"(torch.distributed.new_group(backend='gloo')) as group=")


def _all_gather(t: torch.Tensor, group, W: int) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(W)]
    dist.all_gather(out, t.contiguous(), group=group)
    return out


def _exchange(fn: str, values: Sequence[float] | None, size: int, group, W: int, rank: int,
              error: BaseException | None) -> torch.Tensor:
    """All-gathers one float64 vector of `size` values per process, with an ok flag in front.
    Raises on every process when any process reports an error (its own error on that process).
    Returns the (W, size) matrix."""
    vec = torch.full((size + 1,), math.nan, dtype=torch.float64)
    vec[0] = 0.0 if error is not None else 1.0
    if error is None and values is not None:
        vec[1:] = torch.as_tensor(values, dtype=torch.float64)
    rows = torch.stack(_all_gather(vec, group, W))
    failed = [r for r in range(W) if rows[r, 0].item() != 1.0]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"grpo_swift.distributed.{fn}(): process(es) {failed} of {W} raised an error (see their "
                           f"output); this process (rank {rank}) stops too instead of waiting in a collective")
    return rows[:, 1:]


def _as_tensor(x: Any, fn: str, arg: str) -> tuple[torch.Tensor, bool]:
    """(tensor, was_numpy). numpy arrays and array-likes become CPU tensors (zero-copy when possible)."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise TypeError(f"grpo_swift.distributed.{fn}(): argument '{arg}' is on device '{x.device}', but the "
                            f"grpo_swift kernels run on CPU; move it with {arg}.cpu()")
        return x.detach(), False
    try:
        a = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - reported with the argument's name
        raise TypeError(f"grpo_swift.distributed.{fn}(): argument '{arg}' must be a tensor or an array, got "
                        f"{type(x).__name__}") from exc
    if a.dtype.kind not in "biuf":
        raise TypeError(f"grpo_swift.distributed.{fn}(): argument '{arg}' must hold numbers, got dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a)), True


_DTYPE_CODES = {torch.float32: 1, torch.float64: 2, torch.float16: 3, torch.bfloat16: 4, torch.int64: 5,
                torch.int32: 6, torch.bool: 7, torch.uint8: 8, torch.int8: 9, torch.int16: 10}
_MAX_NDIM = 6


def _gather_rows(fn: str, arg: str, t: torch.Tensor, group, W: int, rank: int) -> tuple[torch.Tensor, list[int]]:
    """All-gathers `t` along dim 0 in rank order; ranks may hold different row counts, the other
    dims and the dtype must agree (checked on every process from one exchange of the shapes, so
    a mismatch raises everywhere). Returns (gathered, rows per rank)."""
    error = None
    desc = [0.0] * (2 + _MAX_NDIM)
    if t.dim() > _MAX_NDIM or t.dim() == 0 or t.dtype not in _DTYPE_CODES:
        error = ValueError(f"grpo_swift.distributed.{fn}(): argument '{arg}' must be a 1-D to {_MAX_NDIM}-D tensor "
                           f"of a numeric dtype, got shape {tuple(t.shape)} dtype {t.dtype}")
    else:
        desc = [float(_DTYPE_CODES[t.dtype]), float(t.dim())] + [float(s) for s in t.shape] + \
               [0.0] * (_MAX_NDIM - t.dim())
    shapes = _exchange(fn, desc, 2 + _MAX_NDIM, group, W, rank, error)
    ref = shapes[0]
    for r in range(W):
        if not (torch.equal(shapes[r, :2], ref[:2]) and torch.equal(shapes[r, 3:], ref[3:])):
            raise ValueError(f"grpo_swift.distributed.{fn}(): argument '{arg}' must have the same dtype and the same "
                             f"dims after the first on every process; process 0 has {_describe(ref)}, process {r} "
                             f"has {_describe(shapes[r])}")
    rows = [int(shapes[r, 2].item()) for r in range(W)]
    padded = t.new_zeros((max(rows), *t.shape[1:]))
    padded[:t.shape[0]] = t
    parts = _all_gather(padded, group, W)
    return torch.cat([p[:n] for p, n in zip(parts, rows)], dim=0), rows


def _describe(row: torch.Tensor) -> str:
    code, nd = int(row[0].item()), int(row[1].item())
    names = {v: k for k, v in _DTYPE_CODES.items()}
    return f"shape {tuple(int(s) for s in row[2:2 + nd].tolist())} dtype {names.get(code, '?')}"


def gather_rows(x: Any, *, group: Optional[dist.ProcessGroup] = None) -> tuple[Any, int]:
    """All-gathers `x` (a tensor or array, rows along dim 0) from every process, in rank order.

    Processes may hold different numbers of rows; the other dims must agree. Returns
    (all_rows, offset): all_rows[offset : offset + len(x)] are this process's rows. numpy in,
    numpy out. Without torch.distributed: (x, 0).
    """
    fn = "gather_rows"
    rank, W = world(group)
    t, was_numpy = _as_tensor(x, fn, "x")
    if W == 1:
        return x, 0
    _check_backend(fn, group)
    full, rows = _gather_rows(fn, "x", t, group, W, rank)
    offset = sum(rows[:rank])
    return (full.numpy() if was_numpy else full), offset


def global_token_count(mask: Any, *, group: Optional[dist.ProcessGroup] = None) -> float:
    """The number of active tokens (mask != 0) over every process: TRL's num_items_in_batch
    (``accelerator.gather(mask.sum()).sum()``) for the batch `mask` belongs to."""
    fn = "global_token_count"
    t, _ = _as_tensor(mask, fn, "mask")
    local = float((t != 0).sum().item())
    rank, W = world(group)
    if W == 1:
        return local
    _check_backend(fn, group)
    return float(_exchange(fn, [local], 1, group, W, rank, None)[:, 0].sum().item())


def entropy_threshold(entropies: torch.Tensor, mask: torch.Tensor, top_entropy_quantile: float, *,
                      group: Optional[dist.ProcessGroup] = None) -> float:
    """TRL 1.16's ``get_high_entropy_mask`` threshold: ``torch.quantile`` (float32, linear) at
    ``1 - top_entropy_quantile`` of the valid entropies gathered from every process.

    Returns a float (NaN when no process has a valid token: TRL's mask is then all False, and
    NaN selects no token in the kernel). Pass it as ``entropy_threshold=`` to grpo_loss.
    """
    fn = "entropy_threshold"
    rank, W = world(group)
    if W > 1:
        _check_backend(fn, group)
    error, local = None, None
    try:
        q = _quantile_arg(fn, top_entropy_quantile)
        local = _valid_entropies(fn, entropies, mask)
    except (TypeError, ValueError) as exc:
        error = exc
    if W == 1:
        if error is not None:
            raise error
        return _quantile(fn, local, q)
    counts = _exchange(fn, [0.0 if local is None else float(local.numel())], 1, group, W, rank, error)
    return _quantile(fn, _gather_valid(fn, local, counts[:, 0], group, W), q)


def _quantile_arg(fn: str, q: Any) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= float(q) < 1.0:
        raise ValueError(f"grpo_swift.distributed.{fn}(): argument 'top_entropy_quantile' must be a number in "
                         f"[0, 1) (1 disables the high-entropy mask), got {q!r}")
    return float(q)


def _valid_entropies(fn: str, entropies: Any, mask: Any) -> torch.Tensor:
    ent, _ = _as_tensor(entropies, fn, "entropies")
    m, _ = _as_tensor(mask, fn, "mask")
    if ent.dim() != 2 or ent.shape != m.shape:
        raise ValueError(f"grpo_swift.distributed.{fn}(): 'entropies' and 'mask' must be (B, T) tensors of one "
                         f"shape, got {tuple(ent.shape)} and {tuple(m.shape)}")
    if not ent.is_floating_point():
        raise TypeError(f"grpo_swift.distributed.{fn}(): argument 'entropies' must be a float tensor, got "
                        f"{ent.dtype}")
    return ent[m.bool()].float()  # exactly TRL: entropies[mask.bool()].float()


def _gather_valid(fn: str, local: torch.Tensor, counts: torch.Tensor, group, W: int) -> torch.Tensor:
    n = [int(c) for c in counts.tolist()]
    padded = torch.zeros(max(max(n), 1), dtype=torch.float32)
    padded[:local.numel()] = local
    parts = _all_gather(padded, group, W)
    return torch.cat([p[:k] for p, k in zip(parts, n)])


def _quantile(fn: str, values: torch.Tensor, q: float) -> float:
    if values.numel() == 0:
        return math.nan
    try:
        return float(torch.quantile(values, 1.0 - q).item())
    except RuntimeError as exc:  # torch.quantile refuses more than 2**24 values
        raise ValueError(f"grpo_swift.distributed.{fn}(): torch.quantile over {values.numel()} entropies failed "
                         f"({exc}); TRL's get_high_entropy_mask has the same limit") from exc


# ---------------------------------------------------------------------------------------------
# Advantages


@dataclasses.dataclass(frozen=True)
class DistributedAdvantages:
    """Advantages computed over every process's rewards.

    advantages: this process's rows (same type as the rewards given: tensor or numpy).
    offset:     index of this process's first row in the gathered batch.
    rows:       rows per process (rank order).
    result:     the AdvantagesResult of the whole gathered batch (advantages, mean, std,
                is_std_zero; `frac_reward_zero_std` is TRL's logged metric), equal on every process.
    """

    advantages: Any
    offset: int
    rows: tuple[int, ...]
    result: AdvantagesResult


def group_advantages(rewards: Any, num_generations: int, *, scale_rewards="group", reward_weights=None,
                     multi_objective_aggregation: str = "sum_then_normalize",
                     group: Optional[dist.ProcessGroup] = None) -> DistributedAdvantages:
    """`grpo_swift.group_advantages` over the rewards of every process (TRL 1.16's
    _generate_and_score_completions: gather, compute, keep this process's slice).

    rewards: this process's (n_r,) or (n_r, F) float32/float64 rewards (tensor or numpy); the
    gathered batch (rank order) must hold whole groups of `num_generations` consecutive rows, but a
    group may span processes. Every process computes identical advantages.
    """
    fn = "group_advantages"
    rank, W = world(group)
    t, was_numpy = _as_tensor(rewards, fn, "rewards")
    if W > 1:
        _check_backend(fn, group)
        full, rows = _gather_rows(fn, "rewards", t, group, W, rank)
    else:
        full, rows = t, [t.shape[0] if t.dim() else 0]
    res = _torch_group_advantages(full, num_generations, scale_rewards=scale_rewards, reward_weights=reward_weights,
                                  multi_objective_aggregation=multi_objective_aggregation)
    offset = sum(rows[:rank])
    local = res.advantages[offset:offset + rows[rank]]
    if was_numpy:
        res = AdvantagesResult(*(x.numpy() for x in res))
        local = res.advantages[offset:offset + rows[rank]]
    return DistributedAdvantages(local, offset, tuple(rows), res)


# ---------------------------------------------------------------------------------------------
# Loss


class _GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies by box[slot] (set after the forward, once the
    global counts are known)."""

    @staticmethod
    def forward(ctx, x, box, slot):
        ctx.box, ctx.slot = box, slot
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.box[ctx.slot], None, None


class _WithValue(torch.autograd.Function):
    """Returns `value` as the output while passing the gradient through to `loss` unchanged."""

    @staticmethod
    def forward(ctx, loss, value):
        return value.clone()

    @staticmethod
    def backward(ctx, g):
        return g, None


def _count_kind(config: LossConfig, per_token_advantages: bool) -> dict[str, str]:
    """Which count weights each 'weighted' metric: 'tokens' or 'rows' (TRL's global_masked_mean
    averages a (B, 1) tensor over rows, a (B, T) tensor over valid tokens)."""
    seq = config.importance_sampling_level == "sequence" and not per_token_advantages
    ratio = "rows" if seq else "tokens"
    return {"kl": "tokens", "entropy": "tokens", "clip_ratio/low_mean": ratio, "clip_ratio/high_mean": ratio,
            "clip_ratio/region_mean": ratio, "cispo_clip_ratio": ratio,
            "vespo/phi_seq_mean": "tokens" if per_token_advantages else "rows",
            "pg_clipfrac_lower": "tokens"}  # dual clip (verl): a token mean at every level


def _reduce(names: Sequence[str], table: torch.Tensor, kinds: Mapping[str, str]) -> dict[str, float]:
    """table: (W, len(names) + 2): each process's metric values, then its rows and tokens."""
    W = table.shape[0]
    rows, tokens = table[:, -2], table[:, -1]
    out = {}
    for j, name in enumerate(names):
        col = table[:, j]
        how = METRIC_REDUCTIONS[name]
        if how == "weighted":
            cnt = rows if kinds[name] == "rows" else tokens
            total = sum(float(col[r]) * float(cnt[r]) for r in range(W) if float(cnt[r]) > 0)
            out[name] = total / max(float(cnt.sum()), 1.0)
        elif how in ("nanmin", "nanmax"):
            vals = [float(v) for v in col.tolist() if not math.isnan(v)]
            out[name] = (min(vals) if how == "nanmin" else max(vals)) if vals else math.nan
        elif how == "nanmean":
            vals = [float(v) for v in col.tolist() if not math.isnan(v)]
            out[name] = sum(vals) / len(vals) if vals else math.nan
        elif how == "mean":
            out[name] = float(col.sum()) / W
        else:  # sum
            out[name] = float(col.sum())
    return out


def reduce_metrics(metrics: Mapping[str, Any], config: LossConfig, *, batch_size: int,
                   per_token_advantages: bool = False,
                   group: Optional[dist.ProcessGroup] = None) -> dict[str, float]:
    """Reduces the metrics of one `grpo_swift.torch.grpo_loss` call over every process as TRL
    1.16's _compute_loss logs them (see the module doc and METRIC_REDUCTIONS). One all_gather.

    metrics: the dict grpo_loss returned on this process (0-d tensors or floats; it must hold
    num_tokens); config: the LossConfig of the call; batch_size: this process's rows B_r;
    per_token_advantages: True when the advantages were (B, T).
    Returns Python floats, identical on every process.
    """
    fn = "reduce_metrics"
    if not isinstance(config, LossConfig):
        raise TypeError(f"grpo_swift.distributed.{fn}(): argument 'config' must be a grpo_swift.LossConfig, got "
                        f"{type(config).__name__}")
    names = sorted(metrics)
    unknown = [n for n in names if n not in METRIC_REDUCTIONS]
    if unknown:
        raise ValueError(f"grpo_swift.distributed.{fn}(): no cross-process reduction is defined for metric(s) "
                         f"{unknown}; known: {sorted(METRIC_REDUCTIONS)}")
    if "num_tokens" not in metrics:
        raise ValueError(f"grpo_swift.distributed.{fn}(): 'metrics' must hold num_tokens (the token count weights "
                         f"the token means), got keys {names}")
    local = [_float(metrics[n]) for n in names] + [float(batch_size), _float(metrics["num_tokens"])]
    rank, W = world(group)
    if W == 1:
        return {n: local[j] for j, n in enumerate(names)}
    _check_backend(fn, group)
    table = _exchange(fn, local, len(local), group, W, rank, None)
    return _reduce(names, table, _count_kind(config, per_token_advantages))


def _float(v: Any) -> float:
    return float(v.item() if isinstance(v, torch.Tensor) else v)


def grpo_loss(per_token_logps: torch.Tensor, advantages: torch.Tensor, completion_mask: torch.Tensor, *,
              old_per_token_logps: Optional[torch.Tensor] = None,
              ref_per_token_logps: Optional[torch.Tensor] = None, entropies: Optional[torch.Tensor] = None,
              sampling_logps: Optional[torch.Tensor] = None,
              importance_sampling_ratio: Optional[torch.Tensor] = None,
              normalization: Normalization = "global", reduce: bool = True,
              group: Optional[dist.ProcessGroup] = None, **options: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """`grpo_swift.torch.grpo_loss` on this process's rows of a data-parallel batch.

    Fills in the cross-process numbers and returns (loss, metrics):

    * num_processes = the world size (an explicit different value raises);
    * num_items_in_batch = the active tokens over every process unless given (give it for a
      generation batch split into several micro-batches: `global_token_count` of its mask);
    * with top_entropy_quantile < 1, entropy_threshold = `entropy_threshold` over every process
      (TRL's gathered quantile) unless given;
    * normalization: "global" (default) -- after DDP averages the gradients, they (and the mean
      of the processes' losses) equal the single-process result of the union of the rows, for
      every loss type and the entropy bonus; "trl" -- TRL 1.16's per-process normalisers exactly
      (bnpo and the entropy bonus normalise by this process's tokens). See the module doc.
    * reduce: metrics reduced over processes as TRL logs them (Python floats, equal on every
      process; see `reduce_metrics`); False: this process's metrics as 0-d tensors.

    The loss is this process's 0-d tensor: call backward() on it inside DDP (or all-reduce the
    gradients as their mean). Without torch.distributed this is grpo_swift.torch.grpo_loss
    (plus float metrics when reduce=True). Collectives: at most three small all_gathers per call.
    """
    fn = "grpo_loss"
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"grpo_swift.distributed.{fn}(): argument 'normalization' must be one of "
                         f"{', '.join(map(repr, _NORMALIZATIONS))}, got {normalization!r}")
    if not isinstance(reduce, bool):
        raise TypeError(f"grpo_swift.distributed.{fn}(): argument 'reduce' must be a bool, got {type(reduce).__name__}")
    rank, W = world(group)
    if W > 1:
        _check_backend(fn, group)

    # Phase 1 (local): validate what the collectives need. Errors travel in the first exchange.
    error = None
    config = None
    stats = [0.0, 0.0, 0.0]
    valid_ent = None
    n_items = options.pop("num_items_in_batch", None)
    try:
        given_w = options.pop("num_processes", W)
        if isinstance(given_w, bool) or not isinstance(given_w, int) or given_w != W:
            raise ValueError(f"grpo_swift.distributed.{fn}(): num_processes is the world size {W} here; got "
                             f"{given_w!r}")
        config = LossConfig.from_options(f"grpo_swift.distributed.{fn}", num_processes=W, **options)
        if not isinstance(per_token_logps, torch.Tensor) or per_token_logps.dim() != 2:
            raise TypeError(f"grpo_swift.distributed.{fn}(): argument 'per_token_logps' must be a (B, T) "
                            f"torch.Tensor, got {_shape_of(per_token_logps)}")
        if not isinstance(completion_mask, torch.Tensor) or completion_mask.shape != per_token_logps.shape:
            raise ValueError(f"grpo_swift.distributed.{fn}(): argument 'completion_mask' must be a tensor of shape "
                             f"{tuple(per_token_logps.shape)}, got {_shape_of(completion_mask)}")
        B = per_token_logps.shape[0]
        stats = [float(B), float((completion_mask != 0).sum().item()), 0.0]
        if config.top_entropy_quantile < 1.0 and config.entropy_threshold is None:
            if entropies is None:
                raise ValueError(f"grpo_swift.distributed.{fn}(): entropies are required when top_entropy_quantile "
                                 f"< 1 (got {config.top_entropy_quantile})")
            valid_ent = _valid_entropies(fn, entropies, completion_mask)
            stats[2] = float(valid_ent.numel())
    except (TypeError, ValueError) as exc:
        error = exc

    if W == 1:  # one process: the kernel takes the quantile of this call's entropies itself
        if error is not None:
            raise error
        return _local_loss(per_token_logps, advantages, completion_mask, config, n_items, old_per_token_logps,
                           ref_per_token_logps, entropies, sampling_logps, importance_sampling_ratio, reduce,
                           W, rank, group, fn, normalization)

    header = _exchange(fn, stats, 3, group, W, rank, error)
    if n_items is None:
        n_items = float(header[:, 1].sum().item())  # TRL's gather(mask.sum()).sum()
    if valid_ent is not None:
        thr = _quantile(fn, _gather_valid(fn, valid_ent, header[:, 2], group, W), config.top_entropy_quantile)
        config = config.replace(entropy_threshold=thr)
    return _local_loss(per_token_logps, advantages, completion_mask, config, n_items, old_per_token_logps,
                       ref_per_token_logps, entropies, sampling_logps, importance_sampling_ratio, reduce, W, rank,
                       group, fn, normalization)


def _shape_of(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__


def _policy_scale(loss_type: str, W: int, rows: float, all_rows: float, tokens: float, all_tokens: float) -> float:
    """normalization="global": the factor that turns one process's TRL-normalised policy+KL loss
    into its share of the single-process loss of the union of the rows (see the module doc)."""
    if loss_type in ("dapo", "cispo", "vespo"):
        return 1.0  # max(N,1)/W * GA/S with the global N: already global
    if loss_type == "bnpo":
        return W * max(tokens, 1.0) / max(all_tokens, 1.0)
    return W * rows / all_rows  # grpo, sapo, dr_grpo, luspo: means over rows


def _entropy_scale(W: int, ent_tokens: float, all_ent_tokens: float) -> float:
    return W * max(ent_tokens, 1.0) / max(all_ent_tokens, 1.0)


_SCALED = (("policy_loss", 0), ("policy_term", 0), ("kl_term", 0), ("entropy_term", 1))


def _local_loss(lp, advantages, mask, config, n_items, old, ref, ent, samp, isr, reduce, W, rank, group, fn,
                normalization):
    """The kernel call on this process's rows, then (W > 1) one exchange of the metrics and counts."""
    box = [1.0, 1.0]
    rescale = W > 1 and normalization == "global"
    error = None
    loss = metrics = None
    try:
        lp_in, ent_in = lp, ent
        if rescale and torch.is_grad_enabled():
            if lp.requires_grad:
                lp_in = _GradScale.apply(lp, box, 0)
            if isinstance(ent, torch.Tensor) and ent.requires_grad and config.entropy_coef != 0.0:
                ent_in = _GradScale.apply(ent, box, 1)
        loss, metrics = _tloss.loss_with_config(
            lp_in, advantages, mask, config, old_per_token_logps=old, ref_per_token_logps=ref, entropies=ent_in,
            sampling_logps=samp, importance_sampling_ratio=isr, num_items_in_batch=n_items,
            fn=f"grpo_swift.distributed.{fn}")
    except (TypeError, ValueError) as exc:
        error = exc
    if W == 1:
        if error is not None:
            raise error
        return loss, ({k: _float(v) for k, v in metrics.items()} if reduce else metrics)

    # One exchange: every metric (NaN when this configuration does not report it), rows, tokens.
    names = sorted(n for n in METRIC_REDUCTIONS if n != "loss")
    local = None
    if error is None:
        local = [_float(metrics[n]) if n in metrics else math.nan for n in names] + \
                [float(lp.shape[0]), _float(metrics["num_tokens"])]
    table = _exchange(fn, local, len(names) + 2, group, W, rank, error)
    if rescale:
        col = {n: j for j, n in enumerate(names)}
        rows, tokens, ent_tokens = table[:, -2], table[:, -1], table[:, col["num_entropy_tokens"]]
        all_rows, all_tokens, all_ent = float(rows.sum()), float(tokens.sum()), float(ent_tokens.sum())
        scales = [(_policy_scale(config.loss_type, W, float(rows[r]), all_rows, float(tokens[r]), all_tokens),
                   _entropy_scale(W, float(ent_tokens[r]), all_ent)) for r in range(W)]
        table = table.clone()
        for r, sc in enumerate(scales):  # every process's share of the single-process metrics
            for n, k in _SCALED:
                table[r, col[n]] *= sc[k]
        box[0], box[1] = scales[rank]
        s_p, s_e = scales[rank]
        if s_p != 1.0 or (s_e != 1.0 and config.entropy_coef != 0.0):
            value = s_p * (_float(metrics["policy_term"]) + _float(metrics["kl_term"])) + \
                s_e * _float(metrics["entropy_term"])
            loss = _WithValue.apply(loss, torch.tensor(value, dtype=loss.dtype))
            metrics = dict(metrics)
            for n, k in _SCALED:
                metrics[n] = metrics[n] * scales[rank][k]
    if not reduce:
        return loss, metrics
    per_token_adv = advantages.dim() == 2 and advantages.shape[1] != 1 and lp.shape[1] != 1
    reduced = _reduce(names, table, _count_kind(config, per_token_adv))
    return loss, {k: reduced[k] for k in metrics}
