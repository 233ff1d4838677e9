"""RegressionEarlyStoppingCallback on real (tiny) fine-tunes: stop, rollback, warn, patience, errors, logs, resume."""

import json
import logging
import math

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_retain import RetentionConfig
from hf_retain.callbacks.regression import RegressionEarlyStoppingCallback
from hf_retain.errors import SuiteError
from hf_retain.evaluation.evaluators import FunctionEvaluator, LossEvaluator
from hf_retain.evaluation.loss import evaluate_loss
from hf_retain.evaluation.results import SuiteResult
from hf_retain.evaluation.suite import RetentionSuite

GENERAL = ["The quick brown fox jumps over the lazy dog. " * 2 + str(i) for i in range(16)]
CODE = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 3 for i in range(64)]
DESTRUCTIVE_LR = 1e-2  # constant LR this high wrecks the tiny model's general loss within a few steps


@pytest.fixture(scope="module")
def code_dataset():
    from hf_retain.assets import load_tiny_tokenizer

    tok = load_tiny_tokenizer()
    ids = [tok(t, add_special_tokens=False)["input_ids"][:64] for t in CODE]
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def train(model, tokenizer, dataset, tmp_path, callbacks, *, steps=30, lr=DESTRUCTIVE_LR, resume=None, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=steps, learning_rate=lr, per_device_train_batch_size=8,
                  report_to=[], logging_steps=100, save_strategy="no", use_cpu=True, lr_scheduler_type="constant",
                  disable_tqdm=True, seed=0)
    values.update(overrides)
    trainer = Trainer(model=model, args=TrainingArguments(**values), train_dataset=dataset, callbacks=callbacks,
                      processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def general_suite():
    return RetentionSuite([LossEvaluator(GENERAL, name="general")])


def test_destructive_finetune_is_stopped_before_max_steps(tiny_model, tiny_tokenizer, code_dataset, tmp_path, caplog):
    guard = RegressionEarlyStoppingCallback(general_suite(), every_n_steps=2, action="stop")
    with caplog.at_level(logging.WARNING, logger="hf_retain.callbacks.regression"):
        trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard])
    assert guard.stopped_at is not None and trainer.state.global_step == guard.stopped_at < 30
    baseline = guard.baseline["results"][0]["score"]
    final = evaluate_loss(trainer.model, GENERAL, tiny_tokenizer)
    assert (final - baseline) / baseline > 0.02  # 'stop' keeps the regressed weights
    assert guard.history[-1]["regressed"] == ["general"] and guard.history[-1]["act"] == "stop"
    assert "Training stopped" in caplog.text and "'general'" in caplog.text


def test_rollback_ends_within_the_threshold_of_baseline(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    guard = RegressionEarlyStoppingCallback(general_suite(), every_n_steps=2, action="rollback")
    trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard])
    assert guard.stopped_at is not None and trainer.state.global_step < 30
    assert guard.restored_step == guard.best_step and guard.best_step < guard.stopped_at
    baseline = guard.baseline["results"][0]["score"]
    final = evaluate_loss(trainer.model, GENERAL, tiny_tokenizer)
    assert (final - baseline) / baseline <= 0.02
    # The restored weights are exactly those evaluated at best_step.
    at_best = {h["step"]: h["scores"]["general"] for h in guard.history}.get(guard.best_step, baseline)
    assert final == pytest.approx(at_best, rel=1e-6)


def test_warn_keeps_training(tiny_model, tiny_tokenizer, code_dataset, tmp_path, caplog):
    guard = RegressionEarlyStoppingCallback(general_suite(), every_n_steps=4, action="warn", check_at_end=False)
    with caplog.at_level(logging.WARNING, logger="hf_retain.callbacks.regression"):
        trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=12)
    assert trainer.state.global_step == 12 and guard.stopped_at is None
    assert any(h["act"] == "warn" for h in guard.history) and "training continues" in caplog.text


def scripted(scores, *, higher_is_better=True, name="scripted"):
    """A benchmark returning the next scripted value per call (an Exception instance is raised)."""
    calls = []

    def fn(model, tok):
        value = scores[min(len(calls), len(scores) - 1)]
        calls.append(value)
        if isinstance(value, Exception):
            raise value
        return value

    return FunctionEvaluator(fn, name=name, higher_is_better=higher_is_better), calls


def test_patience_waits_for_consecutive_regressions(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    # baseline 1.0; then: regressed, ok (resets), regressed, regressed -> stop at the 4th evaluation (step 8).
    evaluator, calls = scripted([1.0, 0.5, 1.0, 0.5, 0.5, 1.0])
    guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2, patience=2)
    trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=20, lr=1e-5)
    assert guard.stopped_at == 8 == trainer.state.global_step
    assert [h["act"] for h in guard.history] == ["none", "none", "none", "stop"]
    assert len(calls) == 5


def test_failing_benchmark_is_reported_and_training_continues(tiny_model, tiny_tokenizer, code_dataset, tmp_path,
                                                               caplog):
    evaluator, _ = scripted([1.0, 1.0, RuntimeError("eval server down"), 1.0])
    guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2, check_at_end=False)
    with caplog.at_level(logging.WARNING):
        trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=8, lr=1e-5)
    assert trainer.state.global_step == 8 and guard.stopped_at is None
    assert [h["errors"] for h in guard.history] == [[], ["scripted"], [], []]
    assert "eval server down" in caplog.text and "training continues" in caplog.text


def test_failing_benchmark_can_stop_training(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    evaluator, _ = scripted([1.0, 1.0, RuntimeError("eval server down"), 1.0])
    guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2, on_error="stop")
    trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=8, lr=1e-5)
    assert guard.stopped_at == 4 == trainer.state.global_step


def test_nan_score_is_a_regression_and_says_so(tiny_model, tiny_tokenizer, code_dataset, tmp_path, caplog):
    evaluator, _ = scripted([2.0, 2.0, math.nan], higher_is_better=False)
    guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2)
    with caplog.at_level(logging.WARNING, logger="hf_retain.callbacks.regression"):
        train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=10, lr=1e-5)
    assert guard.stopped_at == 4
    assert "NaN is treated as a regression" in caplog.text


def test_baseline_that_fails_or_is_nan_is_a_clear_error(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    for first, message in ((math.nan, "scored NaN on the model before training"),
                           (RuntimeError("no data"), "failed while measuring the baseline")):
        evaluator, _ = scripted([first])
        guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2)
        with pytest.raises(SuiteError, match=message):
            train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=2, lr=1e-5)


class Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_scores_and_deltas_reach_the_trainers_loggers(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    recorder = Recorder()  # registered before the guard, like the reporting integrations (wandb, tensorboard...)
    guard = RegressionEarlyStoppingCallback(general_suite(), every_n_steps=3, action="warn")
    trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [recorder, guard], steps=6, lr=1e-4)
    ours = [row for row in recorder.logs if "retention/general" in row]
    assert len(ours) == 3  # baseline, step 3, step 6
    assert "retention/general_delta" in ours[1] and ours[1]["retention/regressed"] == 0.0
    assert [row["step"] for row in guard.history] == [3, 6]
    # ... and the Trainer's log history (what trainer_state.json keeps) has them with their steps.
    assert [row["step"] for row in trainer.state.log_history if "retention/general" in row] == [0, 3, 6]


@pytest.mark.parametrize("every_n_steps", [1, 2, 3])
def test_training_loss_is_logged_at_every_logging_step_whatever_the_guard_cadence(
        tiny_model, tiny_tokenizer, code_dataset, tmp_path, every_n_steps):
    """The guard logs through the CallbackHandler, whose on_log clears control.should_log; the Trainer's own loss
    line of the same step must still be written."""
    guard = RegressionEarlyStoppingCallback(general_suite(), every_n_steps=every_n_steps, action="warn")
    trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=6, lr=1e-4, logging_steps=2)
    history = trainer.state.log_history
    assert [row["step"] for row in history if "loss" in row] == [2, 4, 6]
    guarded = list(range(every_n_steps, 7, every_n_steps))
    assert [row["step"] for row in history if "retention/general" in row] == [0, *guarded]


def test_stored_baseline_skips_the_baseline_evaluation(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    evaluator, calls = scripted([0.9])
    stored = SuiteResult.from_dict({"scripted": {"score": 1.0, "higher_is_better": True}})
    path = stored.save(tmp_path / "baseline.json")
    guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2, baseline=str(path))
    train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=4, lr=1e-5)
    assert len(calls) == 1 and guard.stopped_at == 2  # 0.9 vs stored 1.0 is a 10% regression


@pytest.mark.parametrize("restore_flag", [False, True])
def test_state_survives_resume(tiny_tokenizer, code_dataset, tmp_path, restore_flag):
    from hf_retain.assets import build_tiny_model

    values = [1.0, 1.0, 1.0, 1.0, 1.0]
    evaluator, calls = scripted(values)
    guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2, check_at_end=False)
    train(build_tiny_model(seed=0, num_hidden_layers=2), tiny_tokenizer, code_dataset, tmp_path, [guard], steps=4,
          lr=1e-5, save_strategy="steps", save_steps=4)
    assert len(calls) == 3  # baseline, step 2, step 4
    # A new process would build the suite and callback again, then resume.
    # 0.5 regresses against the stored baseline 1.0; had the baseline been re-measured it would be 0.5 (no stop).
    evaluator2, calls2 = scripted([0.5])
    guard2 = RegressionEarlyStoppingCallback(RetentionSuite([evaluator2]), every_n_steps=2, check_at_end=False)
    trainer = train(build_tiny_model(seed=0, num_hidden_layers=2), tiny_tokenizer, code_dataset, tmp_path, [guard2],
                    steps=8, lr=1e-5, save_strategy="steps", save_steps=4,
                    resume=str(tmp_path / "out" / "checkpoint-4"), restore_callback_states_from_checkpoint=restore_flag)
    live = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RegressionEarlyStoppingCallback))
    assert live.baseline["results"][0]["score"] == 1.0  # restored, not re-measured
    assert [h["step"] for h in live.history] == [2, 4, 6] and live.stopped_at == 6
    assert calls2 == [0.5]  # one evaluation after resume (step 6), none for a new baseline


def test_from_retention_config_and_suite_yaml(tmp_path):
    (tmp_path / "suite.yaml").write_text("benchmarks:\n  general:\n    type: loss\n    data: [some text, more]\n"
                                         "    threshold: 0.1\n", encoding="utf-8")
    cfg = RetentionConfig(regression_suite=str(tmp_path / "suite.yaml"), regression_threshold=0.05,
                          regression_relative=False, regression_every_n_steps=50, regression_patience=2,
                          regression_action="rollback")
    guard = RegressionEarlyStoppingCallback.from_retention_config(cfg)
    assert (guard.threshold, guard.relative, guard.every_n_steps, guard.patience, guard.action) == \
        (0.05, False, 50, 2, "rollback")
    assert guard._thresholds == {"general": 0.1} and guard.suite.names == ["general"]
    assert RegressionEarlyStoppingCallback.from_retention_config(RetentionConfig()) is None
    # transformers rebuilds callbacks from state()["args"] on resume; a file-based suite reloads from its path.
    rebuilt = RegressionEarlyStoppingCallback(**guard.state()["args"])
    assert rebuilt.suite.names == ["general"] and rebuilt.action == "rollback"


def test_bad_arguments_are_rejected():
    suite = RetentionSuite({"a": lambda m, t: 1.0})
    for kwargs, message in (({"action": "explode"}, "action"), ({"threshold": -1}, "threshold"),
                            ({"every_n_steps": 0}, "every_n_steps"), ({"patience": 0}, "patience"),
                            ({"on_error": "ignore"}, "on_error"), ({"per_benchmark_thresholds": {"b": 0.1}}, "b")):
        with pytest.raises(ValueError, match=message):
            RegressionEarlyStoppingCallback(suite, **kwargs)
    with pytest.raises(TypeError, match="RetentionSuite"):
        RegressionEarlyStoppingCallback([lambda m, t: 1.0])


def test_end_of_training_check_rolls_back_the_unchecked_tail(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    evaluator, calls = scripted([1.0, 1.0, 0.5])  # baseline, step 4 (in bounds), train end at step 6 (regressed)
    guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=4, action="rollback")
    trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=6, lr=1e-3)
    assert len(calls) == 3 and guard.stopped_at == 6 and guard.restored_step == 4
    at_step_4 = guard._snapshot
    assert all(torch.equal(p.detach().cpu(), at_step_4[n]) for n, p in trainer.model.named_parameters())


def test_build_trainer_wires_the_guard_from_retention_config(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    from hf_retain.trainer import build_trainer

    (tmp_path / "suite.yaml").write_text(
        "benchmarks:\n  general:\n    type: loss\n    data: " + json.dumps(GENERAL) + "\n", encoding="utf-8")
    retention = RetentionConfig(regression_suite=str(tmp_path / "suite.yaml"), regression_every_n_steps=2,
                                regression_action="rollback", consistency_policy="off", record_lineage=False)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=30, learning_rate=DESTRUCTIVE_LR,
                             per_device_train_batch_size=8, report_to=[], save_strategy="no", use_cpu=True,
                             lr_scheduler_type="constant", disable_tqdm=True, seed=0)
    trainer = build_trainer(tiny_model, args, retention=retention, train_dataset=code_dataset,
                            processing_class=tiny_tokenizer, sft=False)
    trainer.train()
    guard = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RegressionEarlyStoppingCallback))
    assert guard.stopped_at is not None and trainer.state.global_step < 30 and guard.restored_step is not None


def test_rollback_from_disk_holds_no_weights_in_memory(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    """rollback_store='disk': the in-bounds target is a safetensors file in output_dir (step in its metadata), nothing
    is held in RAM, and the rollback restores exactly the weights evaluated at best_step."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    guard = RegressionEarlyStoppingCallback(general_suite(), every_n_steps=2, action="rollback", rollback_store="disk")
    trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard])
    assert guard.stopped_at is not None and guard.restored_step == guard.best_step < guard.stopped_at
    assert guard._snapshot is None
    path = tmp_path / "out" / "retention_rollback" / "weights.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["step"] == str(guard.best_step)
    stored = load_file(str(path))
    assert all(torch.equal(p.detach().cpu(), stored[n]) for n, p in trainer.model.named_parameters())
    baseline = guard.baseline["results"][0]["score"]
    final = evaluate_loss(trainer.model, GENERAL, tiny_tokenizer)
    assert (final - baseline) / baseline <= 0.02
    with pytest.raises(ValueError, match="rollback_store"):
        RegressionEarlyStoppingCallback(general_suite(), rollback_store="gpu")


def test_disk_target_survives_resume_without_a_new_evaluation(tiny_model, tiny_tokenizer, code_dataset, tmp_path):
    """A resumed run with rollback_store='disk' finds its verified target on disk (no re-evaluation at resume) and
    rolls back to it."""
    evaluator, calls = scripted([1.0, 1.0, 1.0, 0.5])  # baseline, step 2, step 4 (in bounds); after resume: regressed
    guard = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2, action="rollback",
                                            rollback_store="disk", check_at_end=False)
    train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [guard], steps=4, lr=1e-3, save_strategy="steps",
          save_steps=4)
    assert guard.best_step == 4 and len(calls) == 3
    resumed = RegressionEarlyStoppingCallback(RetentionSuite([evaluator]), every_n_steps=2, action="rollback",
                                              rollback_store="disk", check_at_end=False)
    trainer = train(tiny_model, tiny_tokenizer, code_dataset, tmp_path, [resumed], steps=8, lr=1e-3,
                    save_strategy="no", resume=str(tmp_path / "out" / "checkpoint-4"))
    assert len(calls) == 4  # the resume did not evaluate again: the step-4 target was on disk
    assert resumed.stopped_at == 6 and resumed.restored_step == 4 and trainer.state.global_step == 6
