"""Seconds per optimizer step: stock trl.GRPOTrainer (the anchor) vs grpo_swift's SwiftGRPOTrainer.

    python python/benchmarks/bench_trl_step.py [--quick] [--steps N] [--rounds R] [--loss-type dapo]

A tiny Qwen2 causal LM built in-process (vocabulary V = 32768, hidden H = 256, 2 layers), a
word-level tokenizer from the `tokenizers` library, an in-memory dataset and a deterministic
reward; CPU, float32, no vLLM, HF_HUB_OFFLINE=1. Both trainers run the same seeded steps in
this process (generation included: it is part of every optimizer step). Per-step wall and
process-CPU times are reported as the minimum and the median over the measured steps (each
run's first step excluded) of interleaved rounds. The script also checks
that both runs saw the same completions and logged the same losses and grad norms.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from _harness import machine, quick  # noqa: E402

V, H, LAYERS = 32768, 256, 2


_TOKENIZERS: dict[int, object] = {}


def build(vocab_size: int, hidden: int):
    import torch
    import transformers

    tokenizer = _TOKENIZERS.get(vocab_size) or _tokenizer(vocab_size)
    _TOKENIZERS[vocab_size] = tokenizer
    cfg = transformers.Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=0,
                                   eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return tokenizer, model


def _tokenizer(vocab_size: int):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for i in range(vocab_size - 3):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>")


def reward(completions, **kwargs):
    """Deterministic: the fraction of words whose index is even, minus a small length term."""
    out = []
    for c in completions:
        words = c.split()
        even = sum(1 for w in words if w[1:].isdigit() and int(w[1:]) % 2 == 0)
        out.append(even / max(len(words), 1) - 0.001 * len(words))
    return out


def run(trainer_cls, *, steps: int, vocab_size: int, hidden: int, prompt_len: int, completion_len: int,
        batch: int, loss_type: str):
    import numpy as np
    import transformers
    import trl
    from datasets import Dataset

    tokenizer, model = build(vocab_size, hidden)
    rng = np.random.default_rng(3)
    prompts = [" ".join(f"w{j}" for j in rng.integers(0, vocab_size - 3, size=prompt_len)) for _ in range(64)]
    times: list[float] = []
    cpu: list[float] = []
    seen: list[list[str]] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            cpu.append(time.process_time() - self.c0)

    def scored(completions, **kw):
        seen.append(list(completions))
        return reward(completions, **kw)

    args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_trl_"), use_cpu=True, bf16=False,
                          report_to="none", per_device_train_batch_size=batch, num_generations=4,
                          max_completion_length=completion_len, max_steps=steps, logging_steps=1,
                          save_strategy="no", learning_rate=1e-4, seed=0, disable_tqdm=True, loss_type=loss_type,
                          generation_kwargs={"min_new_tokens": completion_len})
    trainer = trainer_cls(model=model, reward_funcs=[scored], args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                          callbacks=[Clock()])
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return times, cpu, logs, seen, trainer


def model_call_only(*, vocab_size: int, hidden: int, prompt_len: int, completion_len: int, batch: int,
                    repeats: int):
    """The part of a step the drop-in replaces most: the training forward+backward through TRL's
    fused LM head (ChunkedLogProbFunction) vs the grpo_swift head, same backbone, interleaved."""
    import collections

    import torch
    from trl.trainer.utils import add_fused_lm_head

    from grpo_swift.trl import _install_swift_head

    _, stock = build(vocab_size, hidden)
    _, swift = build(vocab_size, hidden)
    for m in (stock, swift):
        add_fused_lm_head(m, outputs=("log_probs", "entropy"))
    _install_swift_head(swift, collections.Counter())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab_size, (batch, prompt_len + completion_len), generator=g)
    labels = ids.clone()
    labels[:, :prompt_len] = -100

    def call(m):
        out = m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
        (out.log_probs.sum() + 0.01 * out.entropy.sum()).backward()
        m.zero_grad(set_to_none=True)

    times = {"stock": [], "swift": []}
    for m in (stock, swift):
        call(m)  # warm-up
    for _ in range(repeats):
        for name, m in (("stock", stock), ("swift", swift)):
            t0 = time.perf_counter()
            call(m)
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--loss-type", default="dapo")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()
    import trl

    import grpo_swift.torch as gs_torch
    if not hasattr(gs_torch, "grpo_loss"):
        print("bench_trl_step: grpo_swift.torch.grpo_loss is missing in this build (needs the torch layer's loss)")
        return 1
    from grpo_swift.trl import SwiftGRPOTrainer

    vocab, hidden, steps, plen, clen, rounds = V, H, a.steps, a.prompt_len, a.completion_len, a.rounds
    if quick() or a.quick:
        vocab, hidden, steps, plen, clen, rounds = 2048, 64, 2, 8, 8, 1
    kw = dict(steps=steps, vocab_size=vocab, hidden=hidden, prompt_len=plen, completion_len=clen, batch=a.batch,
              loss_type=a.loss_type)
    print(f"machine: {machine()}")
    print(f"model: Qwen2 V={vocab} H={hidden} layers={LAYERS}; batch {a.batch} (4 generations/prompt), "
          f"{clen} completion tokens, {plen}-token prompts, loss_type={a.loss_type}, {steps} steps (first = warm-up)")
    # Interleaved rounds (stock, swift, stock, swift, ...): a machine shared with other work
    # slows whichever run happens to overlap it; the minimum over steps is the least disturbed.
    t_stock, c_stock, t_swift, c_swift = [], [], [], []
    same, worst_loss, worst_gn, calls = True, 0.0, 0.0, {}
    for _ in range(rounds):
        ts, cs_, logs_stock, seen_stock, _ = run(trl.GRPOTrainer, **kw)
        tw, cw_, logs_swift, seen_swift, trainer = run(SwiftGRPOTrainer, **kw)
        t_stock += ts[1:] or ts
        c_stock += cs_[1:] or cs_
        t_swift += tw[1:] or tw
        c_swift += cw_[1:] or cw_
        same = same and seen_stock == seen_swift
        worst_loss = max([worst_loss] + [abs(x["loss"] - y["loss"]) for x, y in zip(logs_stock, logs_swift)])
        worst_gn = max([worst_gn] + [abs(x["grad_norm"] - y["grad_norm"]) / max(abs(x["grad_norm"]), 1e-30)
                                     for x, y in zip(logs_stock, logs_swift)])
        calls = dict(trainer.grpo_swift_calls)
    print(f"same completions: {same}; max |loss diff| {worst_loss:.2e}; max rel grad-norm diff {worst_gn:.2e}; "
          f"swift calls (last run) {calls}")
    print("wall s/step is what a user sees; process CPU s/step (all threads) is less sensitive to other load;")
    print(f"{rounds} interleaved round(s), first step of each run excluded")
    print(f"{'trainer':<28}{'wall min':>10}{'wall median':>13}{'CPU min':>10}{'CPU median':>12}")
    for name, t, c in (("trl.GRPOTrainer (anchor)", t_stock, c_stock), ("SwiftGRPOTrainer", t_swift, c_swift)):
        print(f"{name:<28}{min(t):>10.3f}{statistics.median(t):>13.3f}{min(c):>10.3f}{statistics.median(c):>12.3f}")
    print(f"{'speed-up (stock / swift)':<28}{min(t_stock) / min(t_swift):>9.2f}x"
          f"{statistics.median(t_stock) / statistics.median(t_swift):>12.2f}x"
          f"{min(c_stock) / min(c_swift):>9.2f}x{statistics.median(c_stock) / statistics.median(c_swift):>11.2f}x")
    print("per-step wall (s): stock " + " ".join(f"{t:.2f}" for t in t_stock) + " | swift "
          + " ".join(f"{t:.2f}" for t in t_swift))
    ratio = statistics.median(t_stock) / statistics.median(t_swift)
    print(f"TRL GRPO step, Qwen2 V={vocab} H={hidden}, batch {a.batch}, {clen} completion tokens, "
          f"loss_type={a.loss_type}")
    print(f"  goal >= 1.3x faster per optimizer step (median wall) with the same metrics: "
          f"{'MET' if ratio >= 1.3 and same else 'NOT MET'} ({ratio:.2f}x; same completions {same}, "
          f"max |loss diff| {worst_loss:.1e}, max rel grad-norm diff {worst_gn:.1e})")
    mc = model_call_only(vocab_size=vocab, hidden=hidden, prompt_len=plen, completion_len=clen, batch=a.batch,
                         repeats=2 if quick() or a.quick else 5)
    print(f"\ntraining model call only (backbone + LM head log-probs/entropy, forward + backward), "
          f"{len(mc['stock'])} interleaved repeats")
    print(f"{'head':<28}{'wall min':>10}{'wall median':>13}")
    for name, label in (("stock", "TRL ChunkedLogProbFunction"), ("swift", "grpo_swift fused head")):
        print(f"{label:<28}{min(mc[name]):>10.3f}{statistics.median(mc[name]):>13.3f}")
    print(f"{'speed-up (stock / swift)':<28}{min(mc['stock']) / min(mc['swift']):>9.2f}x"
          f"{statistics.median(mc['stock']) / statistics.median(mc['swift']):>12.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
