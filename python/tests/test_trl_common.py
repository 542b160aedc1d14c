"""Shared helpers for the TRL drop-in tests: a tiny in-process causal LM, a dataset, a
deterministic reward, and a runner that trains a GRPOTrainer for a few CPU steps.

Everything is built offline (HF_HUB_OFFLINE=1): the tokenizer comes from the `tokenizers`
library, the model from a transformers Qwen2 config.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed")

if importlib.util.find_spec("trl") is not None:
    import numpy as np  # noqa: E402
    import torch  # noqa: E402
    import transformers  # noqa: E402
    from datasets import Dataset  # noqa: E402
    from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

    import grpo_swift  # noqa: E402
    import grpo_swift.torch as gs_torch  # noqa: E402

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "x", "y", "z", "one", "two", "three", "four", "five"]


def ensure_torch_grpo_loss() -> bool:
    """Until grpo_swift.torch.grpo_loss (branch `torch`) is merged, tests install a stand-in:
    a small autograd Function around the numpy `grpo_swift.loss_with_config` (closed-form
    gradients from the Swift kernel). Returns True when the stand-in was installed."""
    if hasattr(gs_torch, "grpo_loss"):
        return False

    class _Loss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, lp, ent, adv, mask, old, ref, samp, isr, config, sink):
            def np_(t):
                return None if t is None else t.detach().contiguous().numpy()

            res = grpo_swift.loss_with_config(np_(lp), np_(adv), np_(mask), config, old_logps=np_(old),
                                              ref_logps=np_(ref), sampling_logps=np_(samp), entropies=np_(ent),
                                              importance_sampling_ratio=np_(isr))
            sink.append(res.metrics)
            g = torch.from_numpy(res.grad)
            ge = None if res.grad_entropies is None else torch.from_numpy(res.grad_entropies)
            ctx.save_for_backward(g, ge)
            return torch.tensor(res.loss, dtype=lp.dtype)

        @staticmethod
        def backward(ctx, grad_out):
            g, ge = ctx.saved_tensors
            gl = g * grad_out
            gent = None if ge is None else ge * grad_out
            return gl, gent, None, None, None, None, None, None, None, None

    def grpo_loss(per_token_logps, advantages, completion_mask, *, old_per_token_logps=None,
                  ref_per_token_logps=None, entropies=None, importance_sampling_ratio=None, sampling_logps=None,
                  **options):
        config = grpo_swift.LossConfig.from_options("grpo_loss", **options)
        sink = []
        if config.entropy_coef == 0.0 and entropies is not None:
            entropies = entropies.detach()
        loss = _Loss.apply(per_token_logps, entropies, advantages, completion_mask, old_per_token_logps,
                           ref_per_token_logps, sampling_logps, importance_sampling_ratio, config, sink)
        return loss, sink[0]

    gs_torch.grpo_loss = grpo_loss
    return True


def make_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>")


def make_model(tokenizer, *, hidden=48, layers=2, vocab_size=None, seed=0, tie=False):
    cfg = transformers.Qwen2Config(
        vocab_size=vocab_size or len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=tie, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def make_dataset(n=8):
    rng = np.random.default_rng(7)
    prompts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)))) for _ in range(n)]
    return Dataset.from_dict({"prompt": prompts})


def reward_count_a(completions, **kwargs):
    """Deterministic: how often the words 'a' or 'one' occur, minus a length penalty."""
    out = []
    for c in completions:
        toks = c.split()
        out.append(float(sum(t in ("a", "one") for t in toks)) - 0.05 * len(toks))
    return out


def reward_distinct(completions, **kwargs):
    return [float(len(set(c.split()))) / 4.0 for c in completions]


def run(trainer_cls, steps=3, *, seed=0, model_kwargs=None, reward_funcs=None, ref=False, **config):
    """Trains `trainer_cls` for `steps` optimizer steps; returns everything a parity test compares."""
    import trl

    tokenizer = make_tokenizer()
    model = make_model(tokenizer, seed=seed, **(model_kwargs or {}))
    seen = []

    def recorded(completions, **kwargs):
        seen.append(list(completions))
        return reward_count_a(completions, **kwargs)

    funcs = [recorded] + list(reward_funcs or [])
    defaults = dict(output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "grpo_swift_trl_test"),
                    use_cpu=True, report_to="none", per_device_train_batch_size=4, num_generations=4,
                    max_completion_length=8, max_steps=steps, logging_steps=1, save_strategy="no",
                    learning_rate=1e-2, seed=seed, temperature=1.0, disable_tqdm=True, bf16=False,
                    dataloader_num_workers=0)
    defaults.update(config)
    if defaults.get("beta", 0.0) != 0.0:
        # TRL builds the reference model from the policy's path: save the tiny model first.
        import tempfile

        path = tempfile.mkdtemp(prefix="grpo_swift_tiny_")
        model.save_pretrained(path)
        model = path
        defaults.setdefault("model_init_kwargs", {"dtype": torch.float32})
    args = trl.GRPOConfig(**defaults)
    trainer = trainer_cls(model=model, reward_funcs=funcs, args=args, train_dataset=make_dataset(),
                          processing_class=tokenizer)
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"logs": logs, "params": params, "completions": seen, "trainer": trainer}


def test_tiny_model_builds_offline():
    tok = make_tokenizer()
    ids = tok("a b one", return_tensors="pt").input_ids
    model = make_model(tok)
    out = model(ids)
    assert out.logits.shape == (1, 3, len(tok))
