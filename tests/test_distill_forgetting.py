"""Distillation toward the model as it was measurably reduces forgetting on a two-task toy (tiny model, < 30 s).

Task A: byte strings that count up through a 16-letter alphabet ("abcd..."); task B: strings that count down.
The model first learns A, then is fine-tuned on B, plainly or with distillation on the B rows (the teacher is the
A-trained model). Forgetting = increase of the held-out A loss.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain import RetentionConfig, build_tiny_model
from hf_retain.distill import DistillationMixin
from hf_retain.evaluation.loss import evaluate_loss


class DistilTrainer(DistillationMixin, Trainer):
    pass


def task_rows(step: int, n: int, seed: int, length: int = 24) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 16, (n,), generator=g)
    return [[3 + 97 + (int(s) + step * i) % 16 for i in range(length)] for s in starts]


def fit(model, rows, tmp_path, name, steps, retention=None, lr=3e-3):
    args = TrainingArguments(str(tmp_path / name), max_steps=steps, per_device_train_batch_size=16, learning_rate=lr,
                             lr_scheduler_type="constant", report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, seed=0, logging_steps=steps)
    trainer = DistilTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": rows,
                                                                                     "labels": rows}),
                            retention=retention or RetentionConfig())
    trainer.train()
    return model


def test_distillation_reduces_forgetting(tmp_path):
    torch.manual_seed(0)
    a_train, a_eval = task_rows(+1, 256, 0), task_rows(+1, 32, 1)
    b_train, b_eval = task_rows(-1, 256, 2), task_rows(-1, 32, 3)
    eval_a = Dataset.from_dict({"input_ids": a_eval})
    eval_b = Dataset.from_dict({"input_ids": b_eval})

    base = fit(build_tiny_model(seed=0, num_hidden_layers=2), a_train, tmp_path, "pre", 40)
    a_before = evaluate_loss(base, eval_a)
    b_before = evaluate_loss(base, eval_b)
    state = {k: v.clone() for k, v in base.state_dict().items()}

    def finetune(retention):
        model = build_tiny_model(seed=0, num_hidden_layers=2)
        model.load_state_dict(state)
        fit(model, b_train, tmp_path, "ft", 20, retention)
        return evaluate_loss(model, eval_a) - a_before, b_before - evaluate_loss(model, eval_b)

    plain_forgetting, plain_learning = finetune(RetentionConfig())
    distil_forgetting, distil_learning = finetune(RetentionConfig(distill_alpha=1.0))
    print(f"A loss before {a_before:.3f}; plain: forgetting {plain_forgetting:.3f} learning {plain_learning:.3f}; "
          f"distill: forgetting {distil_forgetting:.3f} learning {distil_learning:.3f}")
    assert plain_forgetting > 0.3  # the toy really forgets
    assert distil_forgetting < 0.7 * plain_forgetting  # distillation keeps much of task A
    assert distil_learning > 0.3 * plain_learning  # while still learning task B
