"""EWCMixin: exact penalty gradient once per optimizer step (any accumulation), logging, L2-SP, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_retain import EWCMixin, FisherError, FisherState, RetentionConfig, build_tiny_model, estimate_fisher
from hf_retain.ewc.fisher import trainable_parameters
from hf_retain.mixin import RetentionMixin

LAMBDA = 50.0


class EWCTrainer(EWCMixin, Trainer):
    pass


class PlainTrainer(RetentionMixin, Trainer):
    pass


def dataset(n: int = 8, length: int = 16, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (n, length), generator=gen).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, learning_rate=1.0,
                    optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], logging_steps=1,
                    save_strategy="no", seed=0, use_cpu=True, dataloader_drop_last=True)
    settings.update(overrides)
    return TrainingArguments(**settings)


def shifted_state(model, seed: int = 1) -> FisherState:
    """A Fisher on the tiny model's parameters with anchors moved away from the weights, so the penalty and its
    gradient are non-zero from step 0."""
    gen = torch.Generator().manual_seed(seed)
    params = trainable_parameters(model)
    fisher = {n: torch.rand(p.shape, generator=gen) for n, p in params.items()}
    anchor = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=gen) for n, p in params.items()}
    return FisherState(fisher, anchor, "empirical", 1)


def analytic(model, state: FisherState, lam: float) -> tuple[float, dict[str, torch.Tensor]]:
    value, grads = 0.0, {}
    for name, p in trainable_parameters(model).items():
        diff = p.detach() - state.anchor[name]
        value += float((state.fisher[name] * diff**2).sum()) * lam / 2
        grads[name] = lam * state.fisher[name] * diff
    return value, grads


@pytest.mark.parametrize("accumulation", [1, 3])
def test_penalty_gradient_exactly_once_per_step(tmp_path, accumulation):
    data = dataset(n=2 * accumulation)
    before = build_tiny_model(seed=0, num_hidden_layers=2)
    state = shifted_state(before)
    value, grads = analytic(before, state, LAMBDA)

    plain = PlainTrainer(model=build_tiny_model(seed=0, num_hidden_layers=2), train_dataset=data,
                         args=args(tmp_path / "p", gradient_accumulation_steps=accumulation))
    plain.train()
    ewc = EWCTrainer(model=build_tiny_model(seed=0, num_hidden_layers=2), train_dataset=data,
                     args=args(tmp_path / "e", gradient_accumulation_steps=accumulation),
                     retention=RetentionConfig(ewc_lambda=LAMBDA))
    ewc.set_fisher_state(state)
    ewc.train()
    # SGD with lr 1: the difference of the two updates is exactly minus the penalty gradient.
    plain_params, ewc_params = trainable_parameters(plain.model), trainable_parameters(ewc.model)
    for name, grad in grads.items():
        torch.testing.assert_close(plain_params[name] - ewc_params[name], grad, rtol=1e-3, atol=1e-6)
    ewc_log = next(row for row in ewc.state.log_history if "loss" in row)
    plain_log = next(row for row in plain.state.log_history if "loss" in row)
    # ewc_penalty is logged at the weights after the step
    assert ewc_log["ewc_penalty"] == pytest.approx(analytic(ewc.model, state, LAMBDA)[0], rel=1e-4)
    assert ewc_log["ewc_penalty"] != pytest.approx(value, rel=1e-3)
    assert ewc_log["loss"] == pytest.approx(plain_log["loss"], rel=1e-5)  # logged loss is the task loss


def test_noop_when_lambda_zero(tmp_path):
    data = dataset()
    runs = []
    for cls in (PlainTrainer, EWCTrainer):
        trainer = cls(model=build_tiny_model(seed=0, num_hidden_layers=2), train_dataset=data,
                      args=args(tmp_path / cls.__name__, max_steps=2, learning_rate=1e-3, optim="adamw_torch"))
        trainer.train()
        runs.append(trainer)
    assert runs[1].fisher_state is None
    for (n, a), b in zip(trainable_parameters(runs[0].model).items(), trainable_parameters(runs[1].model).values()):
        assert torch.equal(a, b), n
    assert not any("ewc_penalty" in row for row in runs[1].state.log_history)


def test_l2sp_anchors_at_train_begin(tmp_path):
    model = build_tiny_model(seed=0, num_hidden_layers=2)
    start = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
    trainer = EWCTrainer(model=model, train_dataset=dataset(), retention=RetentionConfig(ewc_lambda=1.0,
                         ewc_mode="l2sp"), args=args(tmp_path, max_steps=3, learning_rate=1e-2))
    trainer.train()
    penalties = [row["ewc_penalty"] for row in trainer.state.log_history if "ewc_penalty" in row]
    assert len(penalties) == 3 and 0.0 < penalties[0] < penalties[1]
    state = trainer.fisher_state
    assert state.method == "uniform" and not state.fisher
    for name, value in start.items():
        assert torch.equal(state.anchor[name], value)
    moved = sum(float(((p.detach() - start[n]) ** 2).sum()) for n, p in trainable_parameters(model).items()) / 2
    assert penalties[-1] == pytest.approx(moved, rel=1e-4)


def test_estimates_on_fisher_dataset_at_train_begin_and_resumes(tmp_path, tiny_tokenizer):
    texts = ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog.", "import os\nos.sep"]
    path = tmp_path / "general.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    retention = RetentionConfig(ewc_lambda=10.0, ewc_fisher_dataset=str(path), ewc_fisher_samples=3,
                                ewc_fisher_dtype="bfloat16")
    model = build_tiny_model(seed=0, num_hidden_layers=2)
    rows = [{"input_ids": ids, "labels": ids} for ids in tiny_tokenizer(texts)["input_ids"]]
    expected = estimate_fisher(model, rows)
    trainer = EWCTrainer(model=model, train_dataset=dataset(), processing_class=tiny_tokenizer,
                         retention=retention, args=args(tmp_path, max_steps=2, learning_rate=1e-3,
                                                        save_strategy="steps", save_steps=1))
    trainer.train()
    state = trainer.fisher_state
    assert state.num_samples == 3 and state.fisher["model.norm.weight"].dtype == torch.bfloat16
    for name, value in expected.fisher.items():
        torch.testing.assert_close(state.fisher[name].float(), value, rtol=1e-2, atol=1e-9)
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert FisherState.exists(checkpoint)
    # Resume: the state comes from the checkpoint, not from a new estimate (the dataset is gone).
    path.unlink()
    resumed = EWCTrainer(model=build_tiny_model(seed=0, num_hidden_layers=2), train_dataset=dataset(),
                         processing_class=tiny_tokenizer, retention=retention,
                         args=args(tmp_path, max_steps=2, learning_rate=1e-3))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, value in state.anchor.items():
        assert torch.equal(resumed.fisher_state.anchor[name], value)
        assert torch.equal(resumed.fisher_state.fisher[name], state.fisher[name])


def test_penalty_rejects_negative_lambda():
    from hf_retain import EWCPenalty

    model = torch.nn.Linear(2, 1)
    with pytest.raises(FisherError, match="lambda"):
        EWCPenalty(model, FisherState.uniform(model), lam=-1.0)


def test_fisher_from_other_model_names_parameter(tmp_path):
    other = build_tiny_model(seed=0, num_hidden_layers=2, intermediate_size=64)
    estimate_fisher(other, [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}]).save(tmp_path / "fisher")
    trainer = EWCTrainer(model=build_tiny_model(seed=0, num_hidden_layers=2), train_dataset=dataset(),
                         retention=RetentionConfig(ewc_lambda=1.0, ewc_fisher=str(tmp_path / "fisher")),
                         args=args(tmp_path))
    with pytest.raises(FisherError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight'.*different model"):
        trainer.train()


def test_fisher_from_training_data_with_trainer_collator(tmp_path):
    trainer = EWCTrainer(model=build_tiny_model(seed=0, num_hidden_layers=2), train_dataset=dataset(n=4),
                         retention=RetentionConfig(ewc_lambda=1.0, ewc_fisher_samples=4),
                         args=args(tmp_path, max_steps=1, learning_rate=1e-3))
    trainer.train()
    state = trainer.fisher_state
    assert state.num_samples == 4 and state.method == "empirical"
    assert sum(float(v.sum()) for v in state.fisher.values()) > 0


def test_fisher_from_variable_length_training_rows_without_tokenizer(tmp_path):
    rows = [list(range(3, 3 + n)) for n in (6, 9, 12, 7)]
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})
    trainer = EWCTrainer(model=build_tiny_model(seed=0, num_hidden_layers=2), train_dataset=data,
                         retention=RetentionConfig(ewc_lambda=1.0, ewc_fisher_samples=4),
                         args=args(tmp_path, max_steps=1, per_device_train_batch_size=1, learning_rate=1e-3))
    expected = estimate_fisher(build_tiny_model(seed=0, num_hidden_layers=2),
                               [{"input_ids": r, "labels": r} for r in rows])
    trainer.train()
    for name, value in expected.fisher.items():
        torch.testing.assert_close(trainer.fisher_state.fisher[name], value, rtol=1e-4, atol=1e-6 * float(value.max()))
