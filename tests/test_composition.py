"""The mixin contract: methods compose additively, any mixin order trains the same, a wrong order fails at
construction, and the config's callbacks are added once by the trainer itself."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_retain import (
    LineageCallback,
    MixinOrderError,
    OptimizerConsistencyCallback,
    RegressionEarlyStoppingCallback,
    RetentionConfig,
    RetentionSFTTrainer,
    RetentionTrainer,
)
from hf_retain.assets import build_tiny_model
from hf_retain.callbacks.curriculum import CurriculumCallback
from hf_retain.distill.mixin import DistillationMixin
from hf_retain.ewc.fisher import FisherState
from hf_retain.ewc.mixin import EWCMixin
from hf_retain.optim.mixin import OptimizerMixin
from hf_retain.replay.mixin import ReplayMixin


class GradientCapture(TrainerCallback):
    """Keeps the gradient of the first optimizer step, before it is applied."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def rows(n: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (n, 12), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    build_tiny_model(seed=1, num_hidden_layers=1).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "general.jsonl"
    rows(16, seed=7).to_json(str(path), lines=True)
    return str(path)


def first_step(tmp_path, cls: type, *, ewc: bool, distill: bool, teacher_dir: str, replay_file: str):
    """Loss and gradient of one optimizer step of a fresh model on the same batch (replay on in every run)."""
    retention = RetentionConfig(
        replay_ratio=0.5, replay_dataset=replay_file, consistency_policy="off", record_lineage=False,
        ewc_lambda=50.0 if ewc else 0.0, ewc_mode="l2sp",
        distill_alpha=0.7 if distill else 0.0, distill_on="replay", distill_teacher="path",
        distill_teacher_path=teacher_dir,
    )
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, seed=0, logging_steps=1, max_grad_norm=0.0, save_strategy="no",
                             learning_rate=1e-3, remove_unused_columns=False)
    model = build_tiny_model(seed=0, num_hidden_layers=1)
    capture = GradientCapture()
    trainer = cls(model=model, args=args, train_dataset=rows(8, seed=0), retention=retention, callbacks=[capture])
    if ewc:  # anchor away from the current weights, so the penalty has a gradient at the first step
        anchors = FisherState.uniform(model).anchor
        noise = torch.Generator().manual_seed(3)  # not the global RNG, which drives data order and replay draws
        state = FisherState({}, {n: a + 0.05 * torch.randn(a.shape, generator=noise) for n, a in anchors.items()},
                            "uniform", 0)
        trainer.set_fisher_state(state)
    trainer.train()
    loss = next(row["loss"] for row in trainer.state.log_history if "loss" in row)
    return loss, capture.grads


def test_ewc_distillation_and_replay_add_up(tmp_path, teacher_dir, replay_file):
    """Trained together, the loss and the gradient are the replay-only run's plus each method's own term."""
    run = {(e, d): first_step(tmp_path / f"{e}{d}", RetentionTrainer, ewc=e, distill=d, teacher_dir=teacher_dir,
                              replay_file=replay_file) for e in (False, True) for d in (False, True)}
    (base_loss, base_g), (ewc_loss, ewc_g) = run[False, False], run[True, False]
    (dis_loss, dis_g), (both_loss, both_g) = run[False, True], run[True, True]
    assert ewc_loss == pytest.approx(base_loss, rel=1e-6)  # EWC adds its gradient, not to the reported loss
    assert dis_loss > base_loss + 1e-3  # the teacher differs from the student: distillation adds a real term
    assert both_loss == pytest.approx(base_loss + (dis_loss - base_loss), rel=1e-5)
    for name, g in both_g.items():
        expected = base_g[name] + (ewc_g[name] - base_g[name]) + (dis_g[name] - base_g[name])
        assert torch.allclose(g, expected, rtol=1e-4, atol=1e-6), name
    assert any((ewc_g[n] - base_g[n]).abs().max() > 1e-4 for n in base_g)  # EWC's gradient term is there


class ReversedTrainer(ReplayMixin, DistillationMixin, EWCMixin, OptimizerMixin, Trainer):
    """The ready composition's mixins in reverse order."""


class ShuffledTrainer(DistillationMixin, ReplayMixin, OptimizerMixin, EWCMixin, Trainer):
    pass


@pytest.mark.parametrize("cls", [ReversedTrainer, ShuffledTrainer])
def test_any_mixin_order_trains_the_same(tmp_path, cls, teacher_dir, replay_file):
    ours = first_step(tmp_path / "ours", RetentionTrainer, ewc=True, distill=True, teacher_dir=teacher_dir,
                      replay_file=replay_file)
    theirs = first_step(tmp_path / "theirs", cls, ewc=True, distill=True, teacher_dir=teacher_dir,
                        replay_file=replay_file)
    assert theirs[0] == pytest.approx(ours[0], rel=1e-6)
    for name, g in ours[1].items():
        assert torch.allclose(theirs[1][name], g, rtol=1e-5, atol=1e-7), name


def test_a_mixin_right_of_the_trainer_fails_at_construction(tmp_path):
    class Wrong(Trainer, EWCMixin):
        pass

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(MixinOrderError, match=r"class Wrong\(EWCMixin, Trainer\)"):
        Wrong(model=build_tiny_model(num_hidden_layers=1), args=args)


def _callback_types(trainer) -> list[type]:
    return [type(cb) for cb in trainer.callback_handler.callbacks]


def test_retention_config_callbacks_are_added_once(tmp_path, tiny_tokenizer, replay_file):
    suite = tmp_path / "suite.yaml"
    suite.write_text("benchmarks:\n  general:\n    type: loss\n    data: [some text, more text]\n")
    retention = RetentionConfig(consistency_policy="warn", record_lineage=True, regression_suite=str(suite),
                                regression_every_n_steps=1, replay_dataset=replay_file,
                                curriculum=[{"until": 1.0, "replay_ratio": 0.25}])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    mine = LineageCallback(retention=retention)
    trainer = RetentionSFTTrainer(model=build_tiny_model(num_hidden_layers=1), args=args, retention=retention,
                                  train_dataset=Dataset.from_dict({"text": ["some text"] * 4}),
                                  processing_class=tiny_tokenizer, callbacks=[mine])
    types = _callback_types(trainer)
    for cls in (OptimizerConsistencyCallback, LineageCallback, RegressionEarlyStoppingCallback, CurriculumCallback):
        assert types.count(cls) == 1, cls
    assert any(cb is mine for cb in trainer.callback_handler.callbacks)  # the user's own instance is kept

    off = RetentionConfig(consistency_policy="off", record_lineage=False)
    plain = RetentionSFTTrainer(model=build_tiny_model(num_hidden_layers=1), args=args, retention=off,
                                train_dataset=Dataset.from_dict({"text": ["some text"] * 4}),
                                processing_class=tiny_tokenizer)
    assert not {OptimizerConsistencyCallback, LineageCallback, RegressionEarlyStoppingCallback,
                CurriculumCallback} & set(_callback_types(plain))


def test_a_user_composed_trainer_gets_the_same_callbacks(tmp_path):
    class MyTrainer(EWCMixin, Trainer):
        pass

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MyTrainer(model=build_tiny_model(num_hidden_layers=1), args=args, retention=RetentionConfig())
    types = _callback_types(trainer)
    assert OptimizerConsistencyCallback in types and LineageCallback in types
