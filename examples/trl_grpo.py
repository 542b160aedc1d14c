"""TRL's GRPOTrainer with grpo_swift's kernels: the one-line change, on a tiny in-process model.

    from grpo_swift.trl import SwiftGRPOTrainer as GRPOTrainer

Everything is built here, offline: a word-level tokenizer (the `tokenizers` library) and a
2-layer Qwen2 model with random weights (transformers). The prompts are a few words; two
reward functions, as in a real run: "says a" (how often the completion says "a", minus a
small length penalty) and "stops" (1 if the completion ends with <eos> before the length
limit). SwiftGRPOTrainer takes the same GRPOConfig as trl.GRPOTrainer and runs the
advantages, the log-probs (fused LM head) and the loss in Swift; TRL does the rest.

    python examples/trl_grpo.py [--steps 30] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from grpo_swift.trl import SwiftGRPOTrainer  # noqa: E402

WORDS = ["a", "b", "c", "d", "e", "x", "y", "z", "one", "two", "three"]


def tiny_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>")


def tiny_model(tokenizer, seed: int):
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = transformers.Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def says_a(completions, **kwargs):
    return [float(c.split().count("a")) - 0.05 * len(c.split()) for c in completions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    max_len = 8
    tokenizer = tiny_tokenizer()

    def stops(completion_ids, **kwargs):
        return [1.0 if tokenizer.eos_token_id in ids or len(ids) < max_len else 0.0 for ids in completion_ids]

    # A reference model (beta > 0) is built by TRL from the policy's path: save the tiny model.
    path = tempfile.mkdtemp(prefix="grpo_swift_tiny_")
    tiny_model(tokenizer, args.seed).save_pretrained(path)
    rng = np.random.default_rng(args.seed)
    prompts = [" ".join(rng.choice(WORDS, size=3)) for _ in range(16)]
    config = trl.GRPOConfig(
        output_dir=os.path.join(path, "out"), use_cpu=True, report_to="none", save_strategy="no",
        per_device_train_batch_size=8, num_generations=4, max_completion_length=max_len, max_steps=args.steps,
        learning_rate=5e-3, beta=0.04, loss_type="dapo", num_iterations=2, logging_steps=1, seed=args.seed,
        disable_tqdm=True, bf16=False, dataloader_num_workers=0, model_init_kwargs={"dtype": torch.float32})
    trainer = SwiftGRPOTrainer(model=path, reward_funcs=[says_a, stops], args=config,
                               train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer)
    trainer.remove_callback(transformers.PrinterCallback)  # we print our own table below
    trainer.train()

    logs = [h for h in trainer.state.log_history if "reward" in h]
    print(f"{'step':>4} {'reward':>7} {'says_a':>7} {'stops':>6} {'kl':>7} {'loss':>8}")
    for h in logs:
        print(f"{h['step']:4d} {h['reward']:7.3f} {h['rewards/says_a/mean']:7.3f} {h['rewards/stops/mean']:6.2f} "
              f"{h.get('kl', float('nan')):7.4f} {h['loss']:+8.4f}")
    r = [h["reward"] for h in logs]
    k = max(1, len(r) // 10)
    print(f"mean reward: first {k} steps {np.mean(r[:k]):.3f}, last {k} steps {np.mean(r[-k:]):.3f}")
    print("grpo_swift kernel calls:", dict(trainer.grpo_swift_calls))


if __name__ == "__main__":
    main()
