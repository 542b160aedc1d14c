"""Worker processes of the multi-process tests (started by _dist_launch under torchrun or
accelerate launch). Not collected by pytest.

    python _dist_worker.py grads OUT_DIR       gradients after DDP all-reduce vs single process, every loss type
    python _dist_worker.py trainer OUT_DIR     SwiftGRPOTrainer and stock trl.GRPOTrainer, 3 steps each

Each rank writes OUT_DIR/<mode>-rank<r>.pt; pytest compares. A faulthandler watchdog
(GRPO_DIST_WATCHDOG seconds) exits the process on its own if it outlives its launcher's timeout.
"""
from __future__ import annotations

import faulthandler
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=float(os.environ.get("GRPO_DIST_COLLECTIVE_TIMEOUT", "120")))

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo", "gmpo")

# Global batch: 12 rows in groups of 4; rank 0 holds rows 0-5 (T = 7), rank 1 rows 6-11 (T = 5),
# so group 1 (rows 4-7) spans both ranks and the completion lengths differ per rank.
ROWS, G, H, V = 12, 4, 6, 11
T_RANK = (7, 5)

# name -> (options, gradient_accumulation_steps (micro-batches per rank))
CASES = {
    "token-beta": (dict(beta=0.04, epsilon_high=0.28), 1),
    "sequence-entropy": (dict(importance_sampling_level="sequence", top_entropy_quantile=0.6, entropy_coef=0.05,
                              delta=1.6), 1),
    "ga2-spg2-entropy": (dict(beta=0.02, top_entropy_quantile=0.5, entropy_coef=0.1, steps_per_generation=2), 2),
}


def runs(case: str, loss_type: str) -> bool:
    """Which (case, loss_type) pairs run. GMPO (TRL's experimental GMPOTrainer) is token level only
    and has no entropy bonus in TRL, so it runs in the token case, against GMPOTrainer."""
    return loss_type != "gmpo" or case == "token-beta"


class TinyPolicy(torch.nn.Module):
    """Per-token log-probs and entropies of labels under logits = x W^T: a stand-in for an LM head."""

    def __init__(self, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.weight = torch.nn.Parameter((torch.randn(V, H, generator=g, dtype=torch.float64) * 0.7).to(dtype))

    def forward(self, x, labels):
        logp = torch.log_softmax(x @ self.weight.t(), dim=-1)
        lp = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        ent = -(logp.exp() * logp).sum(-1)
        return lp, ent


def global_batch(dtype, seed):
    """The whole batch (every rank builds it identically), padded to T = max(T_RANK)."""
    g = torch.Generator().manual_seed(seed)
    T = max(T_RANK)
    x = torch.randn(ROWS, T, H, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, V, (ROWS, T), generator=g)
    mask = torch.zeros(ROWS, T, dtype=torch.int64)
    for i in range(ROWS):
        t_max = T_RANK[0] if i < ROWS // 2 else T_RANK[1]
        if i in (2, 9):
            continue  # one fully masked row per rank
        n = int(torch.randint(1, t_max + 1, (1,), generator=g))
        mask[i, :n] = 1
        if n > 2:
            mask[i, 1] = 0  # a hole
    old_shift = (torch.rand(ROWS, T, generator=g, dtype=torch.float64) - 0.5) * 0.6
    ref_shift = (torch.rand(ROWS, T, generator=g, dtype=torch.float64) - 0.5) * 0.4
    rewards = torch.randint(0, 4, (ROWS,), generator=g).to(torch.float64)
    rewards[8:12] = 2.0  # a group without reward spread
    return dict(x=x, labels=labels, mask=mask, old_shift=old_shift.to(dtype), ref_shift=ref_shift.to(dtype),
                rewards=rewards)


def rank_rows(rank):
    half = ROWS // 2
    return slice(rank * half, (rank + 1) * half), T_RANK[rank]


def micro_slices(rows: slice, ga: int):
    n = (rows.stop - rows.start) // ga
    return [slice(rows.start + k * n, rows.start + (k + 1) * n) for k in range(ga)]


def grads_main(out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    import grpo_swift.distributed as gsd
    import grpo_swift.torch as gst
    from _trl_reference import make_trainer

    # accelerate's own process group (gloo on CPU): TRL's gathers in the reference run through it.
    acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=TIMEOUT)])
    rank, W = acc.process_index, acc.num_processes
    assert W == 2 and dist.is_initialized() and dist.get_backend() == "gloo"
    results = {"world": W, "rank": rank, "cases": {}}

    data64 = global_batch(torch.float64, seed=11)
    # Advantages over the gathered rewards (group 1 spans the ranks), against one process.
    rows, T_r = rank_rows(rank)
    dadv = gsd.group_advantages(data64["rewards"][rows], G)
    single_adv = gst.group_advantages(data64["rewards"], G).advantages
    results["advantages"] = dict(local=dadv.advantages.clone(), expected=single_adv[rows].clone(),
                                 offset=dadv.offset, rows=dadv.rows)

    for dtype in (torch.float32, torch.float64):
        data = global_batch(dtype, seed=11)
        adv = single_adv.to(dtype if dtype == torch.float64 else torch.float32)
        for case, (opts, ga) in CASES.items():
            for loss_type in LOSS_TYPES:
                if not runs(case, loss_type):
                    continue
                options = dict(opts, loss_type=loss_type, max_completion_length=9, gradient_accumulation_steps=ga)
                if loss_type == "cispo":
                    options["epsilon_high"] = 1.1
                results["cases"][(str(dtype), case, loss_type)] = run_case(
                    acc, DDP, gsd, gst, make_trainer, data, adv, options, ga, rank, W, dtype)
    # An input error on one process raises on every process (no process is left in a collective).
    lp = torch.zeros(3, 4, requires_grad=True)
    bad_mask = torch.ones(3, 5 if rank == 1 else 4)
    try:
        gsd.grpo_loss(lp, torch.zeros(3), bad_mask, loss_type="dapo")
        results["error"] = None
    except (TypeError, ValueError, RuntimeError) as exc:
        results["error"] = (type(exc).__name__, str(exc))
    torch.save(results, os.path.join(out_dir, f"grads-rank{rank}.pt"))
    dist.barrier()


def run_case(acc, DDP, gsd, gst, make_trainer, data, adv, options, ga, rank, W, dtype):
    rows, T_r = rank_rows(rank)
    full_T = max(T_RANK)
    n_items = float(data["mask"].sum())  # the generation batch: every row of every rank

    def inputs(sl, T, model):
        lp, ent = model(data["x"][sl, :T], data["labels"][sl, :T])
        old = (lp.detach() + data["old_shift"][sl, :T])
        ref = (lp.detach() + data["ref_shift"][sl, :T])
        return lp, ent, old, ref, data["mask"][sl, :T], adv[sl]

    out = {}
    # 1. Single process, the union of the ranks' micro-batch k for k in 0..ga-1, grpo_swift.
    single = TinyPolicy(dtype)
    for k in range(ga):
        union = torch.cat([torch.arange(ROWS)[micro_slices(rank_rows(r)[0], ga)[k]] for r in range(W)])
        lp, ent, old, ref, m, a = inputs(union, full_T, single)
        loss, _ = gst.grpo_loss(lp, a, m, old_per_token_logps=old, ref_per_token_logps=ref, entropies=ent,
                                num_items_in_batch=n_items, **options)
        loss.backward()
        out.setdefault("single_loss", []).append(float(loss.detach()))
    out["single_grad"] = single.weight.grad.detach().clone()

    # 2. Two processes under DDP, grpo_swift.distributed in both normalisation modes.
    for mode in ("global", "trl"):
        model = DDP(TinyPolicy(dtype))
        losses, metrics = [], []
        for k, sl in enumerate(micro_slices(rows, ga)):
            ctx = model.no_sync() if k < ga - 1 else _null()
            with ctx:
                lp, ent, old, ref, m, a = inputs(sl, T_r, model)
                loss, met = gsd.grpo_loss(lp, a, m, old_per_token_logps=old, ref_per_token_logps=ref,
                                          entropies=ent, num_items_in_batch=n_items, normalization=mode,
                                          **options)
                loss.backward()
            losses.append(float(loss.detach()))
            metrics.append(met)
        out[f"ddp_{mode}_grad"] = model.module.weight.grad.detach().clone()
        out[f"ddp_{mode}_loss"] = losses
        out[f"ddp_{mode}_metrics"] = metrics

    # 3. TRL 1.16's own _compute_loss on this rank's rows, its gathers through accelerate, under DDP.
    trl_options = {k: v for k, v in options.items()}
    if options["loss_type"] == "gmpo":
        from trl.experimental.gmpo import GMPOTrainer
        trl_options["trainer_cls"] = GMPOTrainer
    trainer = make_trainer(accelerator=acc, **trl_options)
    model = DDP(TinyPolicy(dtype))
    losses, metrics = [], []
    for k, sl in enumerate(micro_slices(rows, ga)):
        ctx = model.no_sync() if k < ga - 1 else _null()
        with ctx:
            lp, ent, old, ref, m, a = inputs(sl, T_r, model)
            trainer._get_per_token_logps_and_entropies = lambda *args, _r=(lp, ent), **kw: (_r[0], _r[1], None)
            trainer._metrics["train"].clear()
            n = m.shape[0]
            batch = {"prompt_ids": torch.zeros((n, 1), dtype=torch.int64),
                     "prompt_mask": torch.ones((n, 1), dtype=torch.int64),
                     "completion_ids": torch.zeros((n, T_r), dtype=torch.int64), "completion_mask": m,
                     "advantages": a, "old_per_token_logps": old, "ref_per_token_logps": ref,
                     "num_items_in_batch": torch.tensor(n_items)}
            loss = trainer._compute_loss(None, batch)
            loss.backward()
            # GMPO: TRL adds -A_i / (B GA) for a row without valid tokens (its geometric mean of nothing
            # is exp(0) = 1); grpo_swift adds 0 there (a fully masked batch gives loss 0), documented in
            # docs/guide.md. Gradients are identical; the loss differs by this constant.
            empty = m.sum(-1) == 0
            shift = float(a[empty].sum()) / (n * ga) if options["loss_type"] == "gmpo" else 0.0
            out.setdefault("trl_empty_row_shift", []).append(shift)
        losses.append(float(loss.detach()))
        metrics.append({k2: v[-1] for k2, v in trainer._metrics["train"].items()})
    out["trl_ddp_grad"] = model.module.weight.grad.detach().clone()
    out["trl_ddp_loss"] = losses
    out["trl_ddp_metrics"] = metrics
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------
# Trainer runs


def trainer_main(out_dir: str) -> None:
    import trl_dist_common as common

    results = {}
    for name in common.DIST_CASES:
        for kind in ("stock", "swift"):
            res = common.run_case(name, kind)
            if res is not None:  # rank 0 returns the logs and parameters
                results[(name, kind)] = res
    rank = int(os.environ.get("RANK", "0"))
    torch.save(results, os.path.join(out_dir, f"trainer-rank{rank}.pt"))


if __name__ == "__main__":
    faulthandler.dump_traceback_later(float(os.environ.get("GRPO_DIST_WATCHDOG", "600")), exit=True)
    mode, out = sys.argv[1], sys.argv[2]
    {"grads": grads_main, "trainer": trainer_main}[mode](out)
