"""OptimizerConsistencyCallback and LineageCallback inside real (tiny) Trainer and SFTTrainer runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_retain import (
    LineageCallback,
    OptimizerConsistencyCallback,
    OptimizerMismatchError,
    RetentionConfig,
    read_pretraining_optimizer,
)
from hf_retain.callbacks.consistency import OptimizerMismatchWarning
from hf_retain.lineage import finetune_optimizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:transformers")


class _Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.arange(3 + i, 19 + i) % 250 + 3
        return {"input_ids": ids, "labels": ids.clone()}


class _Recorder(TrainerCallback):
    """Stands in for a report_to integration: records every on_log payload."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _args(tmp_path: Path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
                    report_to="none", logging_steps=1, save_steps=1, save_strategy="steps", learning_rate=1e-3,
                    disable_tqdm=True, dataloader_num_workers=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


def _pretrained_folder(tmp_path: Path, card: str) -> str:
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "README.md").write_text(card)
    return str(folder)


def test_warns_on_mismatch_logs_to_history_and_integrations(tmp_path: Path, tiny_model) -> None:
    base = _pretrained_folder(tmp_path, "## Pretraining\nWe pretrained this model with the Muon optimizer.\n")
    tiny_model.name_or_path = base
    recorder = _Recorder()
    callback = OptimizerConsistencyCallback(policy="warn")
    trainer = Trainer(tiny_model, args=_args(tmp_path, max_steps=1, save_strategy="no"), train_dataset=_Rows(),
                      callbacks=[recorder, callback])
    with pytest.warns(OptimizerMismatchWarning, match="pretrained with muon but you are fine-tuning with adamw"):
        trainer.train()
    assert callback.finding["status"] == "mismatch"
    assert "optimizer instance" in callback.finding["finetune_source"]
    entries = [e for e in trainer.state.log_history if "lineage/status" in e]
    assert entries and entries[0]["lineage/pretrain_optimizer"] == "muon" and entries[0]["step"] == 0
    assert any(log.get("lineage/optimizer_mismatch") == 1.0 for log in recorder.logs)


def test_error_policy_raises_before_first_step(tmp_path: Path, tiny_model) -> None:
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    callback = OptimizerConsistencyCallback(policy="error", pretrained="adafactor")
    trainer = Trainer(tiny_model, args=_args(tmp_path, save_strategy="no"), train_dataset=_Rows(),
                      callbacks=[callback])
    with pytest.raises(OptimizerMismatchError, match="what to do"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_match_and_off_and_user_optimizer(tmp_path: Path, tiny_model) -> None:
    sgd = torch.optim.SGD(tiny_model.parameters(), lr=0.01, momentum=0.9)
    callback = OptimizerConsistencyCallback(policy="error", pretrained="sgd")
    trainer = Trainer(tiny_model, args=_args(tmp_path, max_steps=1, save_strategy="no"), train_dataset=_Rows(),
                      optimizers=(sgd, None), callbacks=[callback])
    trainer.train()  # no raise: the user's SGD matches
    assert callback.finding["status"] == "match" and callback.finding["finetune_optimizer"] == "sgd"
    off = OptimizerConsistencyCallback(policy="off", pretrained="muon")
    Trainer(tiny_model, args=_args(tmp_path, max_steps=1, save_strategy="no"), train_dataset=_Rows(),
            callbacks=[off]).train()
    assert off.finding is None
    with pytest.raises(ValueError, match="policy"):
        OptimizerConsistencyCallback(policy="loud")


def test_adam_card_matches_adamw_trainer(tmp_path: Path, tiny_model) -> None:
    callback = OptimizerConsistencyCallback(policy="error", model_id=_pretrained_folder(
        tmp_path, "- optimizer: Adam with betas=(0.9,0.999) and epsilon=1e-08\n"))
    Trainer(tiny_model, args=_args(tmp_path, max_steps=1, save_strategy="no"), train_dataset=_Rows(),
            callbacks=[callback]).train()
    assert callback.finding["status"] == "match"


def test_unknown_pretraining_is_not_a_mismatch(tmp_path: Path, tiny_model) -> None:
    callback = OptimizerConsistencyCallback(policy="error")  # tiny model has no name_or_path
    Trainer(tiny_model, args=_args(tmp_path, max_steps=1, save_strategy="no"), train_dataset=_Rows(),
            callbacks=[callback]).train()
    assert callback.finding["status"] == "unknown"


def test_mitigation_scales_lr_and_weight_decay(tmp_path: Path, tiny_model) -> None:
    callback = OptimizerConsistencyCallback(policy="warn", pretrained="muon", mitigate=True,
                                            retention=RetentionConfig(mismatch_lr_scale=0.5, mismatch_wd_scale=0.1))
    trainer = Trainer(tiny_model, args=_args(tmp_path, max_steps=1, save_strategy="no", weight_decay=0.1,
                                             lr_scheduler_type="constant"),
                      train_dataset=_Rows(), callbacks=[callback])
    with pytest.warns(OptimizerMismatchWarning):
        trainer.train()
    groups = trainer.optimizer.param_groups
    assert groups[0]["lr"] == pytest.approx(5e-4) and groups[0]["weight_decay"] == pytest.approx(0.01)
    assert "mitigation" in callback.finding


def test_finetune_optimizer_sources(tmp_path: Path) -> None:
    args = _args(tmp_path, optim="adafactor")
    assert finetune_optimizer(args).name == "adafactor"
    assert finetune_optimizer(args, retention=RetentionConfig(optimizer="muon")).name == "muon"
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95]}},
          "train_micro_batch_size_per_gpu": 1}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))

    class _Args:
        deepspeed = str(path)
        optim = "adamw_torch"

    used = finetune_optimizer(_Args())
    assert (used.name, used.where, used.hyper["betas"]) == ("adamw", "DeepSpeed config optimizer section", (0.9, 0.95))

    class _Trainer:
        args = _args(tmp_path)
        optimizer = None
        optimizer_cls_and_kwargs = (torch.optim.Adagrad, {"lr": 0.1})

    assert finetune_optimizer(trainer=_Trainer()).name == "adagrad"


def test_lineage_round_trip_with_trainer(tmp_path: Path, tiny_model) -> None:
    base = _pretrained_folder(tmp_path, "- optimizer: Adafactor\n")
    tiny_model.name_or_path = base
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("---\nlicense: mit\ntags:\n- mine\n---\n# My fine-tune\n\nHand-written notes.\n")
    retention = RetentionConfig(ewc_lambda=10.0)
    args = _args(tmp_path, adam_beta1=0.8, adam_beta2=0.97, weight_decay=0.05, lr_scheduler_type="cosine")
    Trainer(tiny_model, args=args, train_dataset=_Rows(), callbacks=[LineageCallback(retention=retention)]).train()
    text = (out / "README.md").read_text()
    assert "Hand-written notes." in text and "license: mit" in text and "- mine" in text
    info = read_pretraining_optimizer(out)
    assert info is not None and info.source.startswith("hf_retain lineage block")
    assert (info.name, info.lr, info.betas, info.weight_decay, info.schedule) == ("adamw", 1e-3, (0.8, 0.97), 0.05,
                                                                                   "cosine")
    assert info.eps == pytest.approx(args.adam_epsilon)
    from hf_retain.lineage.card import split_front_matter

    meta, _ = split_front_matter(text)
    block = meta["hf_retain_lineage"]
    assert block["base_model_optimizer"]["name"] == "adafactor" and block["retention_methods"] == ["ewc"]
    assert block["optimizer"]["variant"] == str(getattr(args.optim, "value", args.optim))  # e.g. adamw_torch_fused
    assert read_pretraining_optimizer(out / "checkpoint-2").name == "adamw"


def test_lineage_with_sft_trainer(tmp_path: Path, tiny_model, tiny_tokenizer) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({"text": ["def f(x): return x + 1"] * 8})
    config = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
                       report_to="none", save_steps=1, save_strategy="steps", learning_rate=5e-4, optim="sgd",
                       max_length=32, disable_tqdm=True, dataloader_num_workers=0)
    consistency = OptimizerConsistencyCallback(policy="warn", pretrained="adamw")
    trainer = SFTTrainer(tiny_model, args=config, train_dataset=data, processing_class=tiny_tokenizer,
                         callbacks=[consistency, LineageCallback()])
    with pytest.warns(OptimizerMismatchWarning):
        trainer.train()
    info = read_pretraining_optimizer(tmp_path / "sft")
    assert info is not None and info.name == "sgd" and info.lr == 5e-4
