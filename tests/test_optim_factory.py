"""create_optimizer names, hyperparameter checks, ``auto`` via the lineage reader, and the plain-Trainer helper."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from hf_retain.assets import build_tiny_model
from hf_retain.config import ConfigError, RetentionConfig
from hf_retain.lineage import LineageLookup, OptimizerInfo
from hf_retain.optim import (
    OPTIMIZER_NAMES,
    MuonWithAdamW,
    create_optimizer,
    deepspeed_muon_config,
    optimizer_cls_and_kwargs,
)


def _patch_lineage(monkeypatch, name):
    import hf_retain.optim.factory as where

    info = None if name is None else OptimizerInfo(name=name, source="test")
    monkeypatch.setattr(where, "lookup_pretraining_optimizer", lambda model, **kw: LineageLookup(info=info))


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                      ("sgd", torch.optim.SGD), ("muon", MuonWithAdamW)])
def test_each_name_builds_its_optimizer(name, cls):
    model = build_tiny_model(num_hidden_layers=2)
    opt = create_optimizer(model, name, lr=1e-3, weight_decay=0.1)
    assert type(opt) is cls
    decays = sorted({g["weight_decay"] for g in opt.param_groups})
    assert decays == [0.0, 0.1]  # norms and biases are not decayed (Trainer's rule)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))


def test_adafactor_is_transformers_with_a_fixed_lr():
    from transformers.optimization import Adafactor

    opt = create_optimizer(build_tiny_model(num_hidden_layers=2), "Adafactor", lr=1e-3)
    assert isinstance(opt, Adafactor)
    assert opt.param_groups[0]["relative_step"] is False and opt.param_groups[0]["lr"] == 1e-3


def test_bad_input_is_named():
    model = build_tiny_model(num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"valid names are \['adamw', 'adam', 'adafactor', 'sgd', 'muon', 'auto'\]"):
        create_optimizer(model, "lion", lr=1e-3)
    with pytest.raises(ValueError, match=r"does not take \['momentum'\].*betas"):
        create_optimizer(model, "adamw", lr=1e-3, momentum=0.9)
    with pytest.raises(ValueError, match=r"does not take \['betas2'\]"):
        create_optimizer(model, "muon", lr=1e-3, betas2=0.9)
    with pytest.raises(ValueError, match="must be a number"):
        create_optimizer(model, "adamw", lr="big")
    with pytest.raises(ValueError, match="has none trainable"):
        create_optimizer(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)), "muon", lr=1e-3)
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        create_optimizer(model, "muon", lr=1e-3, adjust_lr_fn="sqrt")
    with pytest.raises(ConfigError, match="optimizer='lion'"):
        RetentionConfig(optimizer="lion")
    with pytest.raises(ValueError, match="ns_method"):
        deepspeed_muon_config(lr=1e-3, ns_method="svd")


def test_config_names_match_the_factory():
    for name in OPTIMIZER_NAMES:
        assert RetentionConfig(optimizer=name.upper()).optimizer == name


def test_muon_under_deepspeed_refuses_the_torch_path(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match="DeepSpeed's native Muon"):
        create_optimizer(build_tiny_model(num_hidden_layers=2), "muon", lr=1e-3)


@pytest.mark.parametrize("found,expected", [("muon", MuonWithAdamW), ("adafactor", "Adafactor"),
                                            (None, torch.optim.SGD), ("other:lion", torch.optim.SGD)])
def test_auto_uses_the_lineage_reader_or_falls_back(monkeypatch, caplog, found, expected):
    _patch_lineage(monkeypatch, found)
    with caplog.at_level(logging.INFO, logger="hf_retain.optim.factory"):
        opt = create_optimizer(build_tiny_model(num_hidden_layers=2), "auto", lr=1e-3, fallback="sgd", momentum=0.9)
    if isinstance(expected, str):
        assert type(opt).__name__ == expected
    else:
        assert type(opt) is expected
    text = caplog.text
    if found in (None, "other:lion"):
        assert "fallback" in text and ("found no pretraining optimizer" in text or "does not provide" in text)
    else:
        assert f"auto -> {found}" in text


def test_plain_trainer_and_sft_trainer_take_the_helper(tmp_path):
    from transformers import Trainer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    cls_kwargs = optimizer_cls_and_kwargs("muon", lr=0.02, weight_decay=0.01, adjust_lr_fn="original")
    trainer = Trainer(model=build_tiny_model(num_hidden_layers=2), optimizer_cls_and_kwargs=cls_kwargs,
                      args=TrainingArguments(str(tmp_path / "t"), use_cpu=True, report_to=[]))
    opt = trainer.create_optimizer()
    assert isinstance(opt, MuonWithAdamW) and opt.param_groups[0]["lr"] == 0.02

    from datasets import Dataset

    from hf_retain.assets import load_tiny_tokenizer

    sft = SFTTrainer(model=build_tiny_model(num_hidden_layers=2), optimizer_cls_and_kwargs=cls_kwargs,
                     processing_class=load_tiny_tokenizer(), train_dataset=Dataset.from_dict({"text": ["ab"] * 4}),
                     args=SFTConfig(str(tmp_path / "s"), use_cpu=True, report_to=[], max_length=16))
    assert isinstance(sft.create_optimizer(), MuonWithAdamW)
    with pytest.raises(ValueError, match="does not take"):
        optimizer_cls_and_kwargs("muon", lr=0.02, beta=0.9)


def test_auto_with_the_real_lineage_reader():
    lineage = pytest.importorskip("hf_retain.lineage")
    if not hasattr(lineage, "read_pretraining_optimizer"):
        pytest.skip("lineage reader not built yet")
    model = build_tiny_model(num_hidden_layers=2)
    model.name_or_path = "moonshotai/Moonlight-16B-A3B"  # a Muon-pretrained family the reader knows offline
    info = lineage.read_pretraining_optimizer(model)
    expected = info.name if info is not None and info.name in ("adamw", "adam", "adafactor", "sgd", "muon") \
        else "adamw"
    opt = create_optimizer(model, "auto", lr=1e-3)
    assert type(opt).__name__ == {"adamw": "AdamW", "adam": "Adam", "adafactor": "Adafactor", "sgd": "SGD",
                                  "muon": "MuonWithAdamW"}[expected]
