"""RetentionMixin: `retention=` reaches every mixin once; checkpoint hooks run on save and on resume."""

import json
import os

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain import RetentionConfig, RetentionTrainer
from hf_retain.mixin import REPLAY_MASK_KEY, RetentionMixin


class CountingMixin(RetentionMixin):
    """A stand-in for a method's mixin: it keeps a counter it must restore on resume."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = 0
        self.loaded_from = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.counter += 1
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def save_retention_state(self, checkpoint_dir):
        super().save_retention_state(checkpoint_dir)
        with open(os.path.join(checkpoint_dir, "counting.json"), "w") as handle:
            json.dump({"counter": self.counter}, handle)

    def load_retention_state(self, checkpoint_dir):
        super().load_retention_state(checkpoint_dir)
        with open(os.path.join(checkpoint_dir, "counting.json")) as handle:
            self.counter = json.load(handle)["counter"]
        self.loaded_from = checkpoint_dir


class CountingTrainer(CountingMixin, Trainer):
    pass


def dataset(rows=16):
    torch.manual_seed(0)
    ids = torch.randint(3, 259, (rows, 16))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist(),
                              REPLAY_MASK_KEY: [i % 2 == 0 for i in range(rows)]})


def args(tmp_path, steps):
    return TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, save_steps=2,
                             report_to=[], use_cpu=True, seed=0, remove_unused_columns=False, logging_steps=1)


def test_checkpoint_hooks_save_and_restore_state(tmp_path, tiny_model):
    trainer = CountingTrainer(model=tiny_model, args=args(tmp_path, 4), train_dataset=dataset(),
                              retention=RetentionConfig(ewc_lambda=1.0))
    assert trainer.retention.ewc_lambda == 1.0
    trainer.train()
    assert trainer.counter == 4
    saved = json.loads((tmp_path / "checkpoint-2" / "counting.json").read_text())
    assert saved == {"counter": 2}

    from hf_retain.assets import build_tiny_model

    resumed = CountingTrainer(model=build_tiny_model(seed=0, num_hidden_layers=2), args=args(tmp_path, 4),
                              train_dataset=dataset())
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.loaded_from.endswith("checkpoint-2")
    assert resumed.counter == 4  # 2 restored + 2 more steps


def test_resume_true_without_checkpoint_is_a_clear_error(tmp_path, tiny_model):
    trainer = RetentionTrainer(model=tiny_model, args=args(tmp_path / "empty", 1), train_dataset=dataset())
    with pytest.raises(ValueError, match="no checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_retention_must_be_a_config(tmp_path, tiny_model):
    with pytest.raises(TypeError, match="RetentionConfig"):
        RetentionTrainer(model=tiny_model, args=args(tmp_path, 1), retention={"ewc_lambda": 1.0})


def test_plain_retention_trainer_matches_plain_trainer(tmp_path):
    """A default RetentionConfig changes nothing: same losses as transformers' Trainer."""
    from hf_retain.assets import build_tiny_model

    data = dataset().remove_columns(REPLAY_MASK_KEY)
    runs = []
    for cls, kwargs in ((Trainer, {}), (RetentionTrainer, {"retention": RetentionConfig()})):
        trainer = cls(model=build_tiny_model(seed=0, num_hidden_layers=2), args=args(tmp_path / cls.__name__, 3),
                      train_dataset=data, **kwargs)
        trainer.train()
        runs.append([row["loss"] for row in trainer.state.log_history if "loss" in row])
    assert runs[0] == pytest.approx(runs[1], rel=1e-6)
