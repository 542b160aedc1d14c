"""TRL drop-in: `trl.GRPOTrainer` with its GRPO maths running on the grpo_swift kernels.

    from grpo_swift.trl import SwiftGRPOTrainer as GRPOTrainer   # the one-line change

or, for a script that constructs `trl.GRPOTrainer` itself,

    from grpo_swift.trl import patch_grpo_trainer
    with patch_grpo_trainer():          # or: handle = patch_grpo_trainer(); ...; handle.undo()
        trainer = trl.GRPOTrainer(...)
        trainer.train()

Parity target: trl==1.16.0 exactly (checked at construction). What is replaced, and where:

* Per-token log-probs and entropies. TRL's `add_fused_lm_head` replaces `model.forward`; a
  call with `fused_lm_head=True` runs the backbone and then `ChunkedLogProbFunction` on every
  position. After TRL's constructor, the policy's and the reference model's forward are
  wrapped once more: a fused call runs the same backbone, then
  `grpo_swift.torch.fused_log_probs` (hidden states and LM-head weight; the logits are never
  materialised) on the scored positions only. The temperature, logit scale, softcap, backbone
  attribute and `cast_lm_head_to_fp32` handling are read from TRL's own patched forward (its
  closure), so both paths use identical settings. Calls without `fused_lm_head` (generation)
  go to TRL's forward unchanged. TRL's `_get_per_token_logps_and_entropies` (batching,
  multimodal inputs) is untouched.
* The loss. `_compute_loss` has no narrower seam, so it is overridden as a whole: the model
  call is TRL's (`_get_per_token_logps_and_entropies`), the maths (ratios, clipping, every
  loss_type, KL, off-policy and high-entropy masks, entropy bonus, aggregation) is one
  `grpo_swift.torch.grpo_loss` call, and the entropy-coefficient controller and metrics follow
  TRL 1.16's `_compute_loss`.
* Advantages. TRL's advantage block sits in the middle of `_generate_and_score_completions`
  (no seam). The rewards are captured from `_calculate_rewards` (a narrow seam), TRL's method
  runs unchanged, then `output["advantages"]`, the logged `advantages` column and
  `frac_reward_zero_std` are replaced by `grpo_swift.torch.group_advantages` of the same
  rewards (TRL's own few-float computation still runs and is discarded).

Multi-process (``torchrun --nproc_per_node N``, or ``accelerate launch --multi_gpu --num_processes
N`` -- without GPUs, plain ``accelerate launch --num_processes N`` starts one process -- with the
gloo backend on CPU): TRL gathers the rewards (every process computes the advantages of the
whole batch and keeps its rows: groups may span processes) and the token count
num_items_in_batch; each process computes the loss of its rows with TRL's per-process
normalisers (`grpo_swift.distributed.grpo_loss` with normalization="trl"); the high-entropy
quantile is taken over every process's entropies (as TRL's get_high_entropy_mask does) and the
metrics are reduced across processes exactly as TRL 1.16 logs them. DDP averages the gradients.
Results equal stock TRL's multi-process run.

Everything else (generation, rewards, logging, checkpoints, accelerate) is TRL's. Every
GRPOConfig option is classified in `OPTION_SUPPORT`; options that cannot be honoured raise a
ValueError naming the option at construction. `trainer.grpo_swift_calls` counts the Swift
calls ("log_probs", "loss", "advantages"; "log_probs_trl" counts fused calls left to TRL).
Extra metrics are logged under `grpo_swift/` (policy_term, kl_term, entropy_term, num_tokens,
num_off_policy_dropped): "why is my loss 0" is visible in the logs.
"""
from __future__ import annotations

try:
    import trl as _trl
    from trl.trainer import grpo_trainer as _grpo_module
    from trl.trainer.grpo_trainer import GRPOTrainer as _TRLGRPOTrainer
    from trl.trainer.utils import FusedCausalLMOutput as _FusedCausalLMOutput
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "grpo_swift.trl needs TRL 1.16.0 (and PyTorch): pip install 'grpo-swift[trl]' "
        "(or pip install trl==1.16.0)") from _exc

import collections
import contextlib
import dataclasses
import functools
import inspect
import types
from typing import Any

import torch
import transformers

from . import distributed as _gs_dist
from . import torch as _gs_torch
from ._loss import LossConfig

__all__ = ["SwiftGRPOTrainer", "patch_grpo_trainer", "GRPOTrainerPatch", "OPTION_SUPPORT", "TRL_VERSION"]

TRL_VERSION = "1.16.0"

# Every GRPO-specific GRPOConfig field of trl 1.16.0 (the fields TrainingArguments does not
# have), with how grpo_swift treats it:
#   "swift": feeds the Swift maths (log-probs, loss, advantages), parity-tested;
#   "trl":   consumed only by TRL code that runs unchanged (generation, logging, model setup);
#   "raise": not supported; raises at construction when set to a non-default value (see
#            _check_config for the exact conditions).
OPTION_SUPPORT: dict[str, str] = {
    # loss maths
    "loss_type": "swift", "beta": "swift", "epsilon": "swift", "epsilon_high": "swift", "delta": "swift",
    "importance_sampling_level": "swift", "use_bias_correction_kl": "swift", "sapo_temperature_pos": "swift",
    "sapo_temperature_neg": "swift", "vespo_k_pos": "swift", "vespo_lambda_pos": "swift",
    "vespo_k_neg": "swift", "vespo_lambda_neg": "swift", "max_completion_length": "swift",
    "off_policy_mask_threshold": "swift", "top_entropy_quantile": "swift", "entropy_coef": "swift",
    "use_adaptive_entropy": "swift", "entropy_target": "swift", "entropy_coef_delta": "swift",
    "entropy_coef_min": "swift", "entropy_coef_max": "swift", "num_iterations": "swift",
    "steps_per_generation": "swift", "generation_batch_size": "swift",
    # advantages
    "scale_rewards": "swift", "reward_weights": "swift", "multi_objective_aggregation": "swift",
    "num_generations": "swift", "num_generations_eval": "swift", "mask_truncated_completions": "swift",
    # log-probs
    "temperature": "swift", "cast_lm_head_to_fp32": "swift",
    # TRL code that runs unchanged
    "disable_dropout": "trl", "model_init_kwargs": "trl", "trust_remote_code": "trl",
    "chat_template_kwargs": "trl", "shuffle_dataset": "trl", "pad_to_multiple_of": "trl",
    "generation_kwargs": "trl", "top_p": "trl", "top_k": "trl", "min_p": "trl", "repetition_penalty": "trl",
    "cache_implementation": "trl", "use_transformers_paged": "trl", "use_transformers_continuous_batching": "trl",
    "transformers_continuous_batching_config": "trl", "ds3_gather_for_generation": "trl",
    "max_tool_calling_iterations": "trl", "sync_ref_model": "trl", "ref_model_mixup_alpha": "trl",
    "ref_model_sync_steps": "trl", "log_completions": "trl", "log_completions_hub_repo": "trl",
    "num_completions_to_print": "trl", "log_unique_prompts": "trl", "log_multimodal": "trl",
    # MoE auxiliary loss: raises when an aux loss would be added (see _check_trainer)
    "router_aux_loss_coef": "raise",
    # vLLM: grpo_swift runs on CPU without vLLM; use_vllm=True raises, the rest is then unused
    "use_vllm": "raise", "vllm_mode": "trl", "vllm_model_impl": "trl", "vllm_structured_outputs_regex": "trl",
    "vllm_server_base_url": "trl", "vllm_server_host": "trl", "vllm_server_port": "trl",
    "vllm_server_timeout": "trl", "vllm_group_port": "trl", "vllm_gpu_memory_utilization": "trl",
    "vllm_max_model_length": "trl", "vllm_tensor_parallel_size": "trl", "vllm_enable_sleep_mode": "trl",
    "vllm_importance_sampling_correction": "trl", "vllm_importance_sampling_mode": "trl",
    "vllm_importance_sampling_cap": "trl", "vllm_importance_sampling_clip_min": "trl",
    "vllm_importance_sampling_clip_max": "trl",
}

# Inputs of _compute_loss that TRL forwards to the model call (multimodal fields).
_MODEL_INPUT_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                     "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")

# TRL 1.16's originals, saved at import (before any patch).
_TRL = {name: _TRLGRPOTrainer.__dict__[name]
        for name in ("__init__", "_compute_loss", "_generate_and_score_completions", "_calculate_rewards")}


def _fail(option: str, message: str) -> ValueError:
    return ValueError(f"grpo_swift.trl: GRPOConfig.{option}: {message}")


def _check_trl_version() -> None:
    if getattr(_trl, "__version__", None) != TRL_VERSION:
        raise RuntimeError(
            f"grpo_swift.trl overrides GRPOTrainer internals of trl=={TRL_VERSION} exactly, but trl "
            f"{getattr(_trl, '__version__', '?')} is installed; install trl=={TRL_VERSION}")


def _grpo_fields() -> set[str]:
    base = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    return {f.name for f in dataclasses.fields(_trl.GRPOConfig)} - base


def _loss_config(args, *, beta: float, epsilon_low: float, epsilon_high: float, max_completion_length,
                 entropy_coef: float, gradient_accumulation_steps: int, steps_per_generation: int) -> LossConfig:
    return LossConfig.from_options(
        "SwiftGRPOTrainer", loss_type=args.loss_type, beta=beta, epsilon=epsilon_low, epsilon_high=epsilon_high,
        delta=args.delta, importance_sampling_level=args.importance_sampling_level,
        use_bias_correction_kl=bool(args.use_bias_correction_kl), sapo_temperature_pos=args.sapo_temperature_pos,
        sapo_temperature_neg=args.sapo_temperature_neg, vespo_k_pos=args.vespo_k_pos,
        vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg, vespo_lambda_neg=args.vespo_lambda_neg,
        max_completion_length=max_completion_length, num_processes=1,
        gradient_accumulation_steps=gradient_accumulation_steps, steps_per_generation=steps_per_generation,
        off_policy_mask_threshold=args.off_policy_mask_threshold, top_entropy_quantile=args.top_entropy_quantile,
        entropy_coef=entropy_coef)


def _check_config(args) -> None:
    """Checks a GRPOConfig before TRL's constructor runs; raises ValueError naming the option."""
    _check_trl_version()
    unknown = sorted(_grpo_fields() - OPTION_SUPPORT.keys())
    if unknown:
        raise RuntimeError(f"grpo_swift.trl: GRPOConfig has option(s) {unknown} that grpo_swift does not know; "
                           f"this build supports trl=={TRL_VERSION} only")
    if args is None:
        return
    if args.use_vllm:
        raise _fail("use_vllm", "grpo_swift.trl runs generation with transformers on CPU; vLLM (and its importance "
                                "sampling correction) is not supported. Set use_vllm=False.")
    if (args.bf16 or args.fp16) and not args.cast_lm_head_to_fp32:
        name = "bf16" if args.bf16 else "fp16"
        raise _fail(name, f"{name}=True computes TRL's LM head in half precision while the grpo_swift kernels "
                          f"compute it in float32, so results would differ; set cast_lm_head_to_fp32=True (the "
                          f"head then runs in float32 on both paths) or {name}=False.")
    try:
        _loss_config(args, beta=args.beta, epsilon_low=args.epsilon,
                     epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
                     max_completion_length=args.max_completion_length, entropy_coef=args.entropy_coef,
                     gradient_accumulation_steps=max(1, args.gradient_accumulation_steps),
                     steps_per_generation=args.steps_per_generation or max(1, args.gradient_accumulation_steps))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"grpo_swift.trl: unsupported GRPOConfig: {exc}") from exc


def _closure(fn) -> dict[str, Any]:
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    if code is None:
        return {}
    return {name: cell.cell_contents for name, cell in zip(code.co_freevars, cells)}


_TRL_HEAD_VARS = ("original_forward", "temperature", "cast_lm_head_to_fp32", "outputs", "final_logit_softcapping",
                  "logit_scale", "backbone_attr", "text_config")


def _install_swift_head(model, counters: collections.Counter) -> None:
    """Wraps the forward TRL's `add_fused_lm_head` installed on `model` (see the module doc)."""
    trl_forward = model.forward
    func = getattr(trl_forward, "__func__", None)
    if getattr(func, "_grpo_swift_head", False):
        return  # already wrapped (e.g. the policy and the reference are the same object)
    settings = _closure(func)
    missing = [n for n in _TRL_HEAD_VARS if n not in settings]
    if func is None or getattr(getattr(func, "__code__", None), "co_name", "") != "_fused_forward" or missing:
        raise RuntimeError(
            f"grpo_swift.trl: {type(model).__name__}.forward is not trl {TRL_VERSION}'s fused LM head "
            f"(add_fused_lm_head); cannot install the grpo_swift log-prob path (missing {missing})")
    temperature = float(settings["temperature"])
    cast_fp32 = bool(settings["cast_lm_head_to_fp32"])
    want_entropy = "entropy" in settings["outputs"]
    if any(o not in ("log_probs", "entropy") for o in settings["outputs"]):
        raise RuntimeError(f"grpo_swift.trl: fused LM head outputs {settings['outputs']} are not supported")
    softcap = settings["final_logit_softcapping"]
    logit_scale = float(settings["logit_scale"])
    backbone_attr = settings["backbone_attr"]
    text_config = settings["text_config"]

    def _swift_fused_forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None,
                             num_items_in_batch=None, **kwargs):
        if not fused_lm_head or kwargs.get("output_router_logits") or getattr(text_config, "output_router_logits",
                                                                                False):
            if fused_lm_head:  # MoE router logits: TRL's path computes the aux loss
                counters["log_probs_trl"] += 1
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = getattr(self, backbone_attr)(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        head = self.get_output_embeddings()
        weight, bias = head.weight, head.bias
        if hidden.device.type != "cpu" or weight.device.type != "cpu":
            raise RuntimeError("grpo_swift.trl: the fused LM head runs on CPU tensors only")
        labels = labels.to(weight.device)
        mask = labels != -100
        if cast_fp32:
            hidden = hidden.float()
        ctx = torch.autocast("cpu", enabled=False) if cast_fp32 else contextlib.nullcontext()
        with ctx:
            lp, ent = _gs_torch.fused_log_probs(hidden[mask], weight, labels[mask], bias=bias,
                                                temperature=temperature, logit_scale=logit_scale,
                                                final_logit_softcapping=softcap)
        counters["log_probs"] += 1
        log_probs = lp.new_zeros(mask.shape).masked_scatter(mask, lp)
        entropy = ent.new_zeros(mask.shape).masked_scatter(mask, ent) if want_entropy else None
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return _FusedCausalLMOutput(loss=-log_probs.sum() / denom, log_probs=log_probs, entropy=entropy,
                                    label_mask=mask)

    _swift_fused_forward._grpo_swift_head = True
    model.forward = types.MethodType(functools.wraps(func)(_swift_fused_forward), model)
    model.forward.__func__._grpo_swift_head = True


def _head_model(model):
    from accelerate.utils import is_peft_model  # noqa: PLC0415 - the helper TRL uses
    return model.get_base_model() if is_peft_model(model) else model


def _check_trainer(trainer) -> None:
    """Checks made after TRL's constructor (the model, the accelerator)."""
    if trainer.accelerator.device.type != "cpu":
        raise _fail("use_cpu", f"the grpo_swift kernels run on CPU; the trainer's device is "
                               f"{trainer.accelerator.device}. Set use_cpu=True.")
    if trainer.aux_loss_enabled:
        raise _fail("router_aux_loss_coef", "the MoE load-balancing auxiliary loss is not supported by "
                                            "grpo_swift.trl; set router_aux_loss_coef=0.0")
    for name, model in (("model", trainer.model), ("ref_model", trainer.ref_model)):
        if model is None:
            continue
        head = _head_model(model).get_output_embeddings()
        if head is None or getattr(head, "weight", None) is None:
            raise ValueError(f"grpo_swift.trl: {name} has no output embeddings (LM head) to fuse")
        if head.weight.dtype != torch.float32:
            raise _fail("cast_lm_head_to_fp32", f"the {name}'s LM head is {head.weight.dtype}; TRL would compute "
                                                f"it in that dtype while grpo_swift computes in float32. Set "
                                                f"cast_lm_head_to_fp32=True or load the model in float32.")


def _setup(trainer) -> None:
    if not hasattr(_gs_torch, "grpo_loss"):
        raise RuntimeError("grpo_swift.trl needs grpo_swift.torch.grpo_loss, which this build of grpo_swift lacks")
    _check_trainer(trainer)
    trainer.grpo_swift_calls = collections.Counter()
    _install_swift_head(_head_model(trainer.model), trainer.grpo_swift_calls)
    if trainer.ref_model is not None:
        _install_swift_head(_head_model(trainer.ref_model), trainer.grpo_swift_calls)
    trainer._grpo_swift_rewards = None


def _bound_args(args, kwargs) -> Any:
    try:
        bound = inspect.signature(_TRL["__init__"]).bind_partial(None, *args, **kwargs)
    except TypeError:
        return None  # TRL's constructor reports the bad call
    return bound.arguments.get("args")


# ---------------------------------------------------------------------------------------------
# The overridden methods (shared by the subclass and the patch)

def _swift_init(self, *args, **kwargs):
    _check_config(_bound_args(args, kwargs))
    _TRL["__init__"](self, *args, **kwargs)
    _check_config(self.args)  # TRL may have built a default config
    _setup(self)


def _swift_calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
    rewards = _TRL["_calculate_rewards"](self, inputs, prompts, completions, completion_ids_list)
    self._grpo_swift_rewards = rewards
    return rewards


def _swift_generate_and_score_completions(self, inputs):
    self._grpo_swift_rewards = None
    output = _TRL["_generate_and_score_completions"](self, inputs)
    rewards = self._grpo_swift_rewards
    if rewards is None:
        raise RuntimeError("grpo_swift.trl: TRL's _generate_and_score_completions did not call _calculate_rewards")
    self._grpo_swift_rewards = None
    mode = "train" if self.model.training else "eval"
    num_generations = self.num_generations if mode == "train" else self.num_generations_eval
    res = _gs_torch.group_advantages(
        rewards.detach().cpu().contiguous(), num_generations, scale_rewards=self.scale_rewards,
        reward_weights=self.reward_weights.detach().cpu().to(rewards.dtype),
        multi_objective_aggregation=self.multi_objective_aggregation)
    self.grpo_swift_calls["advantages"] += 1
    all_adv = res.advantages
    n_local = output["advantages"].shape[0]
    start = self.accelerator.process_index * n_local
    old = output["advantages"]
    output["advantages"] = all_adv[start:start + n_local].to(device=old.device, dtype=old.dtype)
    # Replace what TRL logged from its own computation of the same quantities.
    logged = self._logs["advantages"]
    for _ in range(min(len(all_adv), len(logged))):
        logged.pop()
    logged.extend(all_adv.tolist())
    zero_std = self._metrics[mode]["frac_reward_zero_std"]
    if zero_std:
        zero_std[-1] = res.is_std_zero.float().mean().item()
    return output


def _swift_compute_loss(self, model, inputs):
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    logits_to_keep = completion_ids.size(1)
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

    # The model call is TRL's; the fused head inside it is grpo_swift's (see _install_swift_head).
    per_token_logps, entropies, _ = self._get_per_token_logps_and_entropies(
        model, input_ids, attention_mask, logits_to_keep, compute_entropy=True,
        compute_aux_loss=self.aux_loss_enabled, **{k: inputs.get(k) for k in _MODEL_INPUT_KEYS})

    mode = "train" if self.model.training else "eval"
    training = mode == "train"
    ga = self.current_gradient_accumulation_steps if training else 1
    spg = self.args.steps_per_generation if training else 1

    # Entropy bonus coefficient: the value fixed at the end of the previous optimizer step; with the adaptive
    # controller it is gated by the last measured world entropy (TRL 1.16 semantics).
    coef = 0.0
    if self._entropy_bonus_enabled:
        coef = self.entropy_coef
        if self.use_adaptive_entropy and not self._last_world_entropy <= self.args.entropy_target:
            coef = 0.0

    config = _loss_config(self.args, beta=self.beta, epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high,
                          max_completion_length=self.max_completion_length, entropy_coef=coef,
                          gradient_accumulation_steps=ga, steps_per_generation=spg)
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(LossConfig)}
    options["num_items_in_batch"] = inputs["num_items_in_batch"]
    options["num_processes"] = self.accelerator.num_processes
    # One process: grpo_swift.torch.grpo_loss. Several: each process's rows with TRL's per-process normalisers,
    # the high-entropy quantile over every process and the metrics reduced as TRL logs them (see
    # grpo_swift.distributed; normalization="trl" is TRL 1.16 exactly).
    loss, metrics = _gs_dist.grpo_loss(
        per_token_logps, inputs["advantages"], mask,
        old_per_token_logps=inputs.get("old_per_token_logps"),
        ref_per_token_logps=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
        entropies=entropies, sampling_logps=inputs.get("sampling_per_token_logps"), normalization="trl",
        reduce=True, **options)
    self.grpo_swift_calls["loss"] += 1

    log = self._metrics[mode]
    if self._entropy_bonus_enabled:
        log["policy_loss"].append(metrics["policy_loss"])
        if self.use_adaptive_entropy and training:
            self._grpo_swift_entropy_window(entropies, mask)
        if training and self.accelerator.sync_gradients:
            log["entropy_coef"].append(self.entropy_coef)
    if self.beta != 0.0:
        log["kl"].append(metrics["kl"])
    log["entropy"].append(metrics["entropy"])
    if self.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "clip_ratio/low_min",
                     "clip_ratio/high_max"):
            log[name].append(metrics[name])
    elif self.loss_type == "cispo":
        log["cispo_clip_ratio"].append(metrics["cispo_clip_ratio"])
    elif self.loss_type == "vespo":
        log["vespo/phi_seq_mean"].append(metrics["vespo/phi_seq_mean"])
    for name in ("policy_term", "kl_term", "entropy_term", "num_tokens", "num_off_policy_dropped"):
        if name in metrics:
            log[f"grpo_swift/{name}"].append(metrics[name])
    return loss


def _swift_entropy_window(self, entropies, mask):
    """The adaptive entropy controller of TRL 1.16: accumulate the window's entropy sum and token count over the
    tokens the bonus acts on; at the optimizer-step boundary move the coefficient by entropy_coef_delta."""
    with torch.no_grad():
        eff = mask.float()
        if self.top_entropy_quantile < 1.0:
            eff = eff * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile).float()
        stats = torch.stack([(entropies.detach() * eff).sum(), eff.sum()])
    self._entropy_window_stats = stats if self._entropy_window_stats is None else self._entropy_window_stats + stats
    if not self.accelerator.sync_gradients:
        return
    total = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
    world = (total[0] / total[1].clamp(min=1.0)).item()
    a = self.args
    if world <= a.entropy_target:
        self.entropy_coef = min(self.entropy_coef + a.entropy_coef_delta, a.entropy_coef_max)
    else:
        self.entropy_coef = max(self.entropy_coef - a.entropy_coef_delta, a.entropy_coef_min)
    self._last_world_entropy = world
    self._entropy_window_stats = None


_OVERRIDES = {
    "_compute_loss": _swift_compute_loss,
    "_generate_and_score_completions": _swift_generate_and_score_completions,
    "_calculate_rewards": _swift_calculate_rewards,
    "_grpo_swift_entropy_window": _swift_entropy_window,
}


class SwiftGRPOTrainer(_TRLGRPOTrainer):
    """`trl.GRPOTrainer` (trl==1.16.0) whose log-probs, loss and advantages run in grpo_swift.

    Same constructor and behaviour as `trl.GRPOTrainer`; see the module documentation for what
    is replaced. Raises ValueError at construction for options it cannot honour.
    `grpo_swift_calls` counts the Swift calls.
    """

    @functools.wraps(_TRL["__init__"])
    def __init__(self, *args, **kwargs):
        _swift_init(self, *args, **kwargs)

    _compute_loss = _swift_compute_loss
    _generate_and_score_completions = _swift_generate_and_score_completions
    _calculate_rewards = _swift_calculate_rewards
    _grpo_swift_entropy_window = _swift_entropy_window


class GRPOTrainerPatch:
    """Handle returned by `patch_grpo_trainer()`: `undo()` restores TRL's methods (also on
    leaving a `with` block). Trainers constructed while patched keep the Swift path."""

    def __init__(self) -> None:
        self._saved: dict[str, Any] | None = None

    def _apply(self) -> None:
        cls = _TRLGRPOTrainer
        if getattr(cls, "_grpo_swift_patched", False):
            raise RuntimeError("patch_grpo_trainer(): trl.GRPOTrainer is already patched; undo the first patch")
        _check_trl_version()
        marker = object()
        self._saved = {name: cls.__dict__.get(name, marker) for name in (*_OVERRIDES, "__init__")}
        self._marker = marker

        @functools.wraps(_TRL["__init__"])
        def __init__(trainer, *args, **kwargs):
            _swift_init(trainer, *args, **kwargs)

        cls.__init__ = __init__
        for name, fn in _OVERRIDES.items():
            setattr(cls, name, fn)
        cls._grpo_swift_patched = True

    @property
    def active(self) -> bool:
        return self._saved is not None

    def undo(self) -> None:
        """Restores trl.GRPOTrainer's own methods. Calling it twice is harmless."""
        if self._saved is None:
            return
        cls = _TRLGRPOTrainer
        for name, fn in self._saved.items():
            if fn is self._marker:
                delattr(cls, name)
            else:
                setattr(cls, name, fn)
        del cls._grpo_swift_patched
        self._saved = None

    def __enter__(self) -> "GRPOTrainerPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()


def patch_grpo_trainer() -> GRPOTrainerPatch:
    """Makes `trl.GRPOTrainer` (every import of it: the class itself is patched) use the
    grpo_swift path, exactly like SwiftGRPOTrainer. Returns a handle whose `undo()` restores
    TRL's methods; the handle is also a context manager."""
    patch = GRPOTrainerPatch()
    patch._apply()
    return patch


# The module the patch targets, for introspection in tests.
_patched_module = _grpo_module
