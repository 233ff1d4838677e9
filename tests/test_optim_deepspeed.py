"""The DeepSpeed route, without launching DeepSpeed: config section, refusals, and the per-shape LR rule."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from transformers import Trainer, TrainingArguments

from hf_retain.assets import build_tiny_model
from hf_retain.config import ConfigError, RetentionConfig
from hf_retain.optim import OptimizerMixin, deepspeed_muon_config, deepspeed_param_groups
from hf_retain.optim.deepspeed import check_deepspeed_hparams, deepspeed_muon_tags

pytest.importorskip("deepspeed")


class OptTrainer(OptimizerMixin, Trainer):
    pass


def _trainer_with_fake_deepspeed(tmp_path, retention: RetentionConfig, ds_config: dict) -> OptTrainer:
    trainer = OptTrainer(model=build_tiny_model(num_hidden_layers=2), retention=retention,
                         args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], learning_rate=1e-3))
    plugin = SimpleNamespace(hf_ds_config=SimpleNamespace(config=ds_config), deepspeed_config=ds_config,
                             zero_stage=3)
    trainer.accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
    return trainer


def test_config_section_is_written_before_deepspeed_starts(tmp_path):
    config: dict = {"zero_optimization": {"stage": 3}}
    trainer = _trainer_with_fake_deepspeed(tmp_path, RetentionConfig(optimizer="muon"), config)
    trainer._configure_deepspeed_optimizer()
    assert config["optimizer"]["type"] == "Muon"
    assert config["optimizer"]["params"]["lr"] == 1e-3  # equals args (HF checks), real LRs go per group
    assert config["zero_optimization"] == {"stage": 3, "reduce_scatter": False}
    trainer._configure_deepspeed_optimizer()  # a second train() call is fine


def test_deepspeed_config_naming_an_optimizer_is_refused(tmp_path):
    config = {"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}
    trainer = _trainer_with_fake_deepspeed(tmp_path, RetentionConfig(optimizer="muon"), config)
    with pytest.raises(ConfigError, match=r"names an optimizer \('AdamW'\).*Remove the 'optimizer' section"):
        trainer._configure_deepspeed_optimizer()


def test_settings_deepspeed_cannot_honour_are_refused():
    check_deepspeed_hparams({"momentum": 0.9, "ns_steps": 5, "ns_method": "gram"})
    with pytest.raises(ValueError, match="fixes nesterov=True"):
        check_deepspeed_hparams({"nesterov": False})
    with pytest.raises(ValueError, match="fixes ns_steps=5"):
        check_deepspeed_hparams({"ns_steps": 3})
    with pytest.raises(ValueError, match="does not take"):
        check_deepspeed_hparams({"foo": 1})


def test_per_shape_groups_reproduce_torch_lr_and_decay():
    model = build_tiny_model(num_hidden_layers=2)
    tags = deepspeed_muon_tags(model)
    assert not tags["model.embed_tokens.weight"] and tags["model.layers.0.mlp.up_proj.weight"]
    lr, wd = 1e-3, 0.1
    groups = deepspeed_param_groups(model, lr=lr, weight_decay=wd, adamw_lr=3e-4)
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups][:2] == ["adamw", "adamw_no_decay"]
    assert by_name["adamw"]["lr"] == 3e-4 and by_name["adamw_no_decay"]["weight_decay"] == 0.0
    square, tall = by_name["muon_128x128"], by_name["muon_384x128"]
    assert square["lr"] == pytest.approx(lr * 0.2 * math.sqrt(128))
    # DeepSpeed multiplies a tall matrix's update by sqrt(384/128); the group LR divides it back out.
    assert tall["lr"] == pytest.approx(lr * 0.2 * math.sqrt(384) / math.sqrt(3))
    for group in (square, tall, by_name["muon_128x384"]):
        assert group["lr"] * group["weight_decay"] == pytest.approx(lr * wd)  # torch decays by lr * wd
    original = {g["name"]: g["lr"] for g in deepspeed_param_groups(model, lr=0.02, weight_decay=0.0,
                                                                   adjust_lr_fn="original")}
    assert original["muon_384x128"] == pytest.approx(0.02) and original["muon_128x384"] == pytest.approx(0.02)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_config_helper_for_plain_trainers():
    config = deepspeed_muon_config(lr=0.02, adam_lr=3e-4, weight_decay=0.01, zero_stage=2)
    assert config == {"optimizer": {"type": "Muon", "params": {
        "lr": 0.02, "weight_decay": 0.01, "momentum": 0.95, "betas": [0.9, 0.999], "eps": 1e-8,
        "ns_method": "standard", "adam_lr": 3e-4}}}


def test_mismatch_mitigation_scales_deepspeed_muon_groups_like_scaled_settings(tmp_path, monkeypatch):
    import hf_retain.mixin
    from hf_retain.lineage import LineageLookup, OptimizerInfo

    monkeypatch.setattr(hf_retain.mixin, "lookup_pretraining_optimizer",
                        lambda model, **kw: LineageLookup(info=OptimizerInfo(name="adamw", source="test")))
    retention = RetentionConfig(optimizer="muon", mismatch_mitigation=True, mismatch_lr_scale=0.5,
                                mismatch_wd_scale=0.25, optimizer_kwargs={"adamw_lr": 4e-4})
    trainer = _trainer_with_fake_deepspeed(tmp_path, retention, {"zero_optimization": {"stage": 3}})
    trainer.args.weight_decay = 0.1
    trainer._configure_deepspeed_optimizer()
    dummy = SimpleNamespace()
    trainer._fill_deepspeed_groups(dummy, trainer.model)
    expected = deepspeed_param_groups(trainer.model, lr=5e-4, weight_decay=0.025, adamw_lr=2e-4)
    assert trainer.optimizer_choice["mitigation_applied"]
    assert [g["name"] for g in dummy.params] == [g["name"] for g in expected]
    assert [g["lr"] for g in dummy.params] == pytest.approx([g["lr"] for g in expected])
    assert [g["weight_decay"] for g in dummy.params] == pytest.approx([g["weight_decay"] for g in expected])
