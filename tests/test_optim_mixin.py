"""OptimizerMixin: RetentionConfig.optimizer in a Trainer, mismatch mitigation, and Muon resume equivalence."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain.assets import build_tiny_model
from hf_retain.config import ConfigError, RetentionConfig
from hf_retain.lineage import LineageLookup, OptimizerInfo
from hf_retain.optim import MuonWithAdamW, OptimizerMixin


class OptTrainer(OptimizerMixin, Trainer):
    pass


def _patch_lineage(monkeypatch, name):
    import hf_retain.mixin as where

    info = None if name is None else OptimizerInfo(name=name, source="test")
    monkeypatch.setattr(where, "lookup_pretraining_optimizer", lambda model, **kw: LineageLookup(info=info))


def _args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], learning_rate=2e-3,
                    weight_decay=0.1, seed=0, logging_steps=1, disable_tqdm=True)
    settings.update(overrides)
    return TrainingArguments(**settings)


def _trainer(tmp_path, retention: RetentionConfig, **overrides) -> OptTrainer:
    return OptTrainer(model=build_tiny_model(num_hidden_layers=2), args=_args(tmp_path, **overrides),
                      retention=retention)


def test_off_is_a_strict_no_op(tmp_path):
    trainer = _trainer(tmp_path, RetentionConfig())
    opt = trainer.create_optimizer()
    plain = Trainer(model=build_tiny_model(num_hidden_layers=2), args=_args(tmp_path)).create_optimizer()
    assert type(opt) is type(plain) is torch.optim.AdamW
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == \
           [(g["lr"], g["weight_decay"]) for g in plain.param_groups]
    assert trainer.optimizer_choice is None


def test_muon_from_config_uses_training_arguments(tmp_path):
    trainer = _trainer(tmp_path, RetentionConfig(optimizer="muon", optimizer_kwargs={"adamw_lr": 1e-3}),
                       adam_beta2=0.95, adam_epsilon=1e-6)
    opt = trainer.create_optimizer()
    assert isinstance(opt, MuonWithAdamW)
    muon, adamw = opt.param_groups[0], opt.param_groups[1]
    assert (muon["lr"], muon["weight_decay"], muon["adjust_lr_fn"]) == (2e-3, 0.1, "match_rms_adamw")
    assert (adamw["lr"], adamw["betas"], adamw["eps"]) == (1e-3, (0.9, 0.95), 1e-6)
    assert trainer.optimizer_choice["optimizer"] == "muon" and trainer.optimizer_choice["built_by"] == "hf_retain"


def test_bad_config_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"\['momentum'\], which optimizer 'adamw' does not take"):
        _trainer(tmp_path, RetentionConfig(optimizer="adamw", optimizer_kwargs={"momentum": 0.9}))
    model = build_tiny_model(num_hidden_layers=2)
    with pytest.raises(ConfigError, match="keep one of them"):
        OptTrainer(model=model, args=_args(tmp_path), retention=RetentionConfig(optimizer="sgd"),
                   optimizers=(torch.optim.SGD(model.parameters(), lr=1e-3), None))


def test_mismatch_mitigation_scales_lr_and_weight_decay(tmp_path, monkeypatch, caplog):
    _patch_lineage(monkeypatch, "adamw")
    retention = RetentionConfig(optimizer="muon", mismatch_mitigation=True, mismatch_lr_scale=0.5,
                                mismatch_wd_scale=0.25, optimizer_kwargs={"adamw_lr": 1e-3})
    with caplog.at_level(logging.INFO, logger="hf_retain.optim.mixin"):
        opt = _trainer(tmp_path, retention).create_optimizer()
    assert "mismatch_mitigation scales LR by 0.5 and weight decay by 0.25" in caplog.text
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (1e-3, pytest.approx(0.025))
    assert opt.param_groups[1]["lr"] == 5e-4  # adamw_lr scaled too

    # Same family (Adam ~ AdamW): nothing changes. Trainer's own optimizer vs a Muon-pretrained model: scaled.
    _patch_lineage(monkeypatch, "adam")
    opt = _trainer(tmp_path, RetentionConfig(optimizer="adamw", mismatch_mitigation=True)).create_optimizer()
    assert {g["lr"] for g in opt.param_groups} == {2e-3}
    _patch_lineage(monkeypatch, "muon")
    trainer = _trainer(tmp_path, RetentionConfig(mismatch_mitigation=True))
    opt = trainer.create_optimizer()
    assert type(opt) is torch.optim.AdamW and {g["lr"] for g in opt.param_groups} == {1e-3}
    choice = trainer.optimizer_choice
    assert choice["mitigation_applied"] and choice["pretraining_optimizer"] == "muon"


def test_auto_follows_lineage_and_falls_back_to_args_optim(tmp_path, monkeypatch, caplog):
    _patch_lineage(monkeypatch, "muon")
    trainer = _trainer(tmp_path, RetentionConfig(optimizer="auto", optimizer_kwargs={"momentum": 0.9}))
    assert isinstance(trainer.create_optimizer(), MuonWithAdamW)
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9
    _patch_lineage(monkeypatch, None)
    with caplog.at_level(logging.WARNING, logger="hf_retain.optim.mixin"):
        trainer = _trainer(tmp_path, RetentionConfig(optimizer="auto", optimizer_kwargs={"momentum": 0.9}),
                           optim="sgd")
        opt = trainer.create_optimizer()
    assert type(opt) is torch.optim.SGD
    assert "auto fell back to TrainingArguments.optim=sgd" in caplog.text


def _dataset(rows: int = 64, length: int = 24) -> Dataset:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 259, (rows, length), generator=gen).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _train(tmp_path, name: str, max_steps: int, resume: str | None = None, save_steps: int = 10) -> OptTrainer:
    args = _args(tmp_path, output_dir=str(tmp_path / name), max_steps=20, save_steps=save_steps,
                 save_strategy="steps", per_device_train_batch_size=4, lr_scheduler_type="cosine", warmup_steps=3,
                 learning_rate=5e-3, dataloader_num_workers=0)
    trainer = OptTrainer(model=build_tiny_model(seed=0, num_hidden_layers=2), args=args, train_dataset=_dataset(),
                         retention=RetentionConfig(optimizer="muon", optimizer_kwargs={"adamw_lr": 2e-3}))
    if max_steps < 20:  # stop early but keep the 20-step schedule, as an interrupted run would
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= max_steps:
                    control.should_training_stop = True

        trainer.add_callback(Stop())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.slow
def test_resume_equivalence_20_steps_equals_10_plus_resume_plus_10(tmp_path):
    straight = _train(tmp_path, "straight", 20, save_steps=100)
    half = _train(tmp_path, "resumed", 10)
    checkpoint = os.path.join(tmp_path, "resumed", "checkpoint-10")
    assert os.path.isfile(os.path.join(checkpoint, "optimizer.pt"))
    with open(os.path.join(checkpoint, "optimizer_choice.json"), encoding="utf-8") as handle:
        assert json.load(handle)["optimizer"] == "muon"
    resumed = _train(tmp_path, "resumed", 20, resume=checkpoint)
    assert resumed.state.global_step == 20 and half.state.global_step == 10
    assert isinstance(resumed.optimizer.optimizer if hasattr(resumed.optimizer, "optimizer") else resumed.optimizer,
                      MuonWithAdamW)
    worst = 0.0
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        worst = max(worst, (a - b).abs().max().item())
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    start = build_tiny_model(seed=0, num_hidden_layers=2)
    moved = (straight.model.model.layers[0].mlp.up_proj.weight - start.model.layers[0].mlp.up_proj.weight).abs().max()
    assert moved > 1e-3, "training did not move the weights; the comparison would be vacuous"


def test_sft_trainer_composition_trains_with_muon(tmp_path, tiny_tokenizer):
    from trl import SFTConfig, SFTTrainer

    class MuonSFT(OptimizerMixin, SFTTrainer):
        pass

    dataset = Dataset.from_dict({"text": ["def f(x):\n    return x + 1\n"] * 8})
    trainer = MuonSFT(model=build_tiny_model(num_hidden_layers=2), processing_class=tiny_tokenizer,
                      train_dataset=dataset, retention=RetentionConfig(optimizer="muon"),
                      args=SFTConfig(str(tmp_path / "sft"), use_cpu=True, report_to=[], max_steps=2,
                                     per_device_train_batch_size=4, max_length=32, learning_rate=1e-3,
                                     save_strategy="no", logging_steps=1, disable_tqdm=True))
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, MuonWithAdamW)  # inside accelerate's wrapper
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 2 and all(loss == loss for loss in losses)


def test_muon_on_lora_without_opt_in_fails_at_construction(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_model(num_hidden_layers=2), LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="muon_lora"):
        OptTrainer(model=model, args=_args(tmp_path), retention=RetentionConfig(optimizer="muon"))
    trainer = OptTrainer(model=model, args=_args(tmp_path),
                         retention=RetentionConfig(optimizer="muon", optimizer_kwargs={"muon_lora": True}))
    assert isinstance(trainer.create_optimizer(), MuonWithAdamW)
