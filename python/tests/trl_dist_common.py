"""Multi-process TRL runs for test_distributed.py: the same tiny in-process Qwen2 model, tokenizer,
dataset and reward as test_trl_common, trained for 3 steps by stock trl.GRPOTrainer or
SwiftGRPOTrainer in 1 process or in each of the processes of a torchrun / accelerate launch.

Comparing a 2-process run with a 1-process run needs the same completions in both, but TRL
samples each process's completions with that process's RNG (seeded per process). So every run
here samples with `deterministic_generation`: each completion is generated on its own, with a
generator seeded by its row's index in the GLOBAL generation batch (process offset + local row)
and the generation count -- the same completion whatever the process layout. The stock and the
Swift runs use it alike; the comparison of stock and Swift 2-process runs would hold without it.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import torch

import test_trl_common as common

STEPS = 3

# name -> (GRPOConfig options for the 2-process run, per_device_train_batch_size of the 2-process run,
#          whether a 1-process run with the same global batch gives the same losses and parameters).
# A 1-process run uses per_device_train_batch_size * 2. TRL's bnpo and its entropy bonus normalise by each
# process's own tokens, so those runs equal stock TRL's 2-process run but not a 1-process run.
DIST_CASES = {
    # per_device 2 < num_generations 4: every group spans the two processes.
    "dapo-split-beta": (dict(loss_type="dapo", beta=0.04), 2, True),
    "grpo-ga2-iter2": (dict(loss_type="grpo", gradient_accumulation_steps=2, num_iterations=2), 4, True),
    # The adaptive entropy coefficient (its window reduced over the processes) on the gathered high-entropy mask.
    "bnpo-adaptive-entropy-quantile": (dict(loss_type="bnpo", top_entropy_quantile=0.5, use_adaptive_entropy=True,
                                            entropy_coef=0.05, entropy_target=5.0, entropy_coef_delta=0.01), 4, False),
}


def deterministic_generation(trainer, seed: int) -> None:
    """Replaces trainer.model.generate (the module TRL unwraps for generation) by per-row sampling
    with a generator seeded by the row's global index; see the module doc."""
    model = trainer.model
    original = model.generate
    pad_id = trainer.processing_class.pad_token_id
    state = {"calls": 0}

    def generate(input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        n = input_ids.shape[0]
        offset = trainer.accelerator.process_index * n
        rows = []
        for i in range(n):
            ids = input_ids[i][attention_mask[i].bool()].unsqueeze(0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + state["calls"] * 10_007 + offset + i)
                out = original(input_ids=ids, attention_mask=torch.ones_like(ids),
                               generation_config=generation_config, **kwargs)
            rows.append(out[0, ids.shape[1]:])
        state["calls"] += 1
        width = max(len(r) for r in rows)
        completions = torch.full((n, width), pad_id, dtype=input_ids.dtype)
        for i, r in enumerate(rows):
            completions[i, :len(r)] = r
        return torch.cat([input_ids, completions], dim=1)

    model.generate = generate


def run_case(name: str, kind: str, *, processes: int | None = None) -> dict | None:
    """Trains case `name` with kind "stock" (trl.GRPOTrainer) or "swift" (SwiftGRPOTrainer).

    processes: None = the current torch.distributed world (inside a launch); 1 = a 1-process run
    with the 2-process run's global batch. Returns the logs, parameters and completions on the
    main process, None on the others."""
    import trl

    from grpo_swift.trl import SwiftGRPOTrainer

    options, per_device, _ = DIST_CASES[name]
    world = int(os.environ.get("WORLD_SIZE", "1")) if processes is None else processes
    tokenizer = common.make_tokenizer()
    model = common.make_model(tokenizer, seed=0)
    seen = []

    def recorded(completions, **kwargs):
        seen.append(list(completions))
        return common.reward_count_a(completions, **kwargs)

    cfg = dict(output_dir=os.path.join(tempfile.gettempdir(), f"grpo_swift_dist_{name}_{kind}"), use_cpu=True,
               report_to="none", per_device_train_batch_size=per_device * (2 // world), num_generations=4,
               max_completion_length=8, max_steps=STEPS, logging_steps=1, save_strategy="no", optim="sgd",
               learning_rate=0.05, seed=0, temperature=1.0, disable_tqdm=True, bf16=False, dataloader_num_workers=0,
               ddp_timeout=120)
    cfg.update(options)
    if cfg.get("beta", 0.0) != 0.0:
        cfg["model_init_kwargs"] = {"dtype": torch.float32}
    args = trl.GRPOConfig(**cfg)
    _ = args.device  # sets up the process group under a launcher
    rank = torch.distributed.get_rank() if world > 1 else 0
    path = None
    if cfg.get("beta", 0.0) != 0.0:
        # TRL builds the reference model from the policy's path; transformers saves on rank 0 only.
        holder = [tempfile.mkdtemp(prefix="grpo_swift_dist_model_") if rank == 0 else None]
        if world > 1:
            torch.distributed.broadcast_object_list(holder, src=0)
        path = holder[0]
        if rank == 0:
            model.save_pretrained(path)
        if world > 1:
            torch.distributed.barrier()
        model = path
    trainer_cls = trl.GRPOTrainer if kind == "stock" else SwiftGRPOTrainer
    try:
        trainer = trainer_cls(model=model, reward_funcs=[recorded], args=args, train_dataset=common.make_dataset(),
                              processing_class=tokenizer)
    finally:
        if path is not None:
            if world > 1:
                torch.distributed.barrier()
            if rank == 0:
                shutil.rmtree(path, ignore_errors=True)
    assert trainer.accelerator.num_processes == world, (trainer.accelerator.num_processes, world)
    deterministic_generation(trainer, seed=0)
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    completions = seen
    if world > 1:
        # Every process's completions (TRL gathers the rewards, each process scores its own rows).
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, seen)
        completions = [sum((g[step] for g in gathered), []) for step in range(len(seen))]
        # DDP keeps the parameters equal on every process: the main process checks.
        all_params = [None] * world
        torch.distributed.all_gather_object(all_params, {k: v for k, v in params.items()})
        for other in all_params[1:]:
            for k, v in other.items():
                assert torch.equal(v, params[k]), f"parameter {k} differs between processes"
    if not trainer.accelerator.is_main_process:
        return None
    return {"logs": [h for h in trainer.state.log_history if "loss" in h], "params": params,
            "completions": completions, "world": world,
            "calls": dict(getattr(trainer, "grpo_swift_calls", {}))}
