"""grpo_swift.trl: the patch helper, construction-time errors for unsupported options, the
option table, and the optional-extra import behaviour."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from test_trl_common import (  # noqa: F401
    ensure_torch_grpo_loss, make_dataset, make_model, make_tokenizer, pytestmark, reward_count_a, run)

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import grpo_swift.trl as gtrl  # noqa: E402
from grpo_swift.trl import SwiftGRPOTrainer, patch_grpo_trainer  # noqa: E402

ensure_torch_grpo_loss()


def _config(**kw):
    base = dict(output_dir="/tmp/grpo_swift_trl_api", use_cpu=True, report_to="none", per_device_train_batch_size=4,
                num_generations=4, max_completion_length=8, max_steps=1, save_strategy="no", disable_tqdm=True, bf16=False)
    base.update(kw)
    return trl.GRPOConfig(**base)


def _build(cls, model=None, **kw):
    tok = make_tokenizer()
    return cls(model=model if model is not None else make_model(tok), reward_funcs=[reward_count_a],
               args=_config(**kw), train_dataset=make_dataset(), processing_class=tok)


# ---------------------------------------------------------------------------- patch helper

def test_patch_helper_switches_plain_grpotrainer_and_undo_restores():
    original = {n: trl.GRPOTrainer.__dict__[n] for n in ("__init__", "_compute_loss", "_calculate_rewards",
                                                         "_generate_and_score_completions")}
    with patch_grpo_trainer() as handle:
        assert handle.active
        from trl import GRPOTrainer  # a script's own import sees the patched class

        patched = run(GRPOTrainer, steps=2, optim="sgd", learning_rate=0.05)
        t = patched["trainer"]
        assert type(t) is trl.GRPOTrainer
        assert t.grpo_swift_calls["loss"] == 2 and t.grpo_swift_calls["log_probs"] >= 2
        assert t.grpo_swift_calls["advantages"] == 2
        assert "grpo_swift/policy_term" in patched["logs"][0]
        with pytest.raises(RuntimeError, match="already patched"):
            patch_grpo_trainer()
    assert not handle.active
    for n, fn in original.items():
        assert trl.GRPOTrainer.__dict__[n] is fn, n
    stock = run(trl.GRPOTrainer, steps=2, optim="sgd", learning_rate=0.05)
    assert not hasattr(stock["trainer"], "grpo_swift_calls")
    assert "grpo_swift/policy_term" not in stock["logs"][0]
    # Same run through both paths: same completions and losses.
    assert stock["completions"] == patched["completions"]
    for a, b in zip(stock["logs"], patched["logs"]):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 + 1e-4 * abs(a["loss"])
    handle.undo()  # harmless twice


def test_patch_handle_undo_without_context_manager():
    handle = patch_grpo_trainer()
    try:
        t = _build(trl.GRPOTrainer)
        assert hasattr(t, "grpo_swift_calls")
    finally:
        handle.undo()
    assert not hasattr(_build(trl.GRPOTrainer), "grpo_swift_calls")


def test_subclass_forward_wrapped_and_generation_untouched():
    t = _build(SwiftGRPOTrainer)
    assert getattr(t.model.forward.__func__, "_grpo_swift_head", False)
    tok = make_tokenizer()
    ids = tok("a b c", return_tensors="pt").input_ids
    out = t.model(ids)  # a plain (non-fused) call still returns logits
    assert out.logits.shape[-1] == len(tok)


# ---------------------------------------------------------------------------- option table

def test_option_table_covers_every_grpoconfig_field():
    base = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)} - base
    assert fields == set(gtrl.OPTION_SUPPORT)
    assert set(gtrl.OPTION_SUPPORT.values()) <= {"swift", "trl", "raise"}


def test_unknown_option_raises(monkeypatch):
    table = dict(gtrl.OPTION_SUPPORT)
    del table["top_entropy_quantile"]
    monkeypatch.setattr(gtrl, "OPTION_SUPPORT", table)
    with pytest.raises(RuntimeError, match="top_entropy_quantile"):
        _build(SwiftGRPOTrainer)


def test_trl_version_is_checked(monkeypatch):
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    with pytest.raises(RuntimeError, match=r"trl==1\.16\.0"):
        _build(SwiftGRPOTrainer)


# ---------------------------------------------------------------------------- construction errors

def test_use_vllm_raises():
    with pytest.raises(ValueError, match=r"GRPOConfig\.use_vllm"):
        _build(SwiftGRPOTrainer, use_vllm=True)


def test_bf16_without_fp32_head_raises():
    with pytest.raises(ValueError, match=r"GRPOConfig\.bf16.*cast_lm_head_to_fp32"):
        _build(SwiftGRPOTrainer, bf16=True)
    # TRL's default config enables bf16 (autocast on CPU too): the same error, before any model work.
    with pytest.raises(ValueError, match=r"GRPOConfig\.bf16"):
        SwiftGRPOTrainer(model=make_model(make_tokenizer()), reward_funcs=[reward_count_a],
                         args=trl.GRPOConfig(output_dir="/tmp/grpo_swift_trl_api", use_cpu=True, report_to="none",
                                             per_device_train_batch_size=4, num_generations=4),
                         train_dataset=make_dataset(), processing_class=make_tokenizer())


def test_half_precision_lm_head_raises():
    tok = make_tokenizer()
    model = make_model(tok).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"GRPOConfig\.cast_lm_head_to_fp32"):
        _build(SwiftGRPOTrainer, model=model)


def test_moe_aux_loss_raises():
    tok = make_tokenizer()
    cfg = transformers.Qwen2MoeConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=32,
                                      moe_intermediate_size=16, shared_expert_intermediate_size=16,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      num_experts=2, num_experts_per_tok=1, router_aux_loss_coef=0.01,
                                      pad_token_id=0, eos_token_id=1)
    model = transformers.Qwen2MoeForCausalLM(cfg)
    with pytest.raises(ValueError, match=r"GRPOConfig\.router_aux_loss_coef"):
        _build(SwiftGRPOTrainer, model=model)


def test_invalid_loss_option_raises_before_training():
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        _build(SwiftGRPOTrainer, top_entropy_quantile=1.5)
    with pytest.raises(ValueError, match="sapo_temperature_neg"):
        _build(SwiftGRPOTrainer, loss_type="sapo", sapo_temperature_neg=0.0)


# ---------------------------------------------------------------------------- optional extra

def test_import_without_trl_says_what_to_install():
    code = ("import sys; sys.modules['trl'] = None\n"
            "import grpo_swift\n"
            "try:\n"
            "    import grpo_swift.trl\n"
            "except ImportError as e:\n"
            "    print('IMPORTERROR', e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORTERROR" in out.stdout and "pip install" in out.stdout and "trl==1.16.0" in out.stdout
