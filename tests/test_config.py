"""RetentionConfig: defaults change nothing; bad values fail naming the field, the value and what is allowed."""

import pytest

from hf_retain import ConfigError, RetentionConfig


def test_defaults_turn_every_method_off():
    cfg = RetentionConfig()
    assert cfg.methods == []
    assert cfg.ewc_lambda == 0 and cfg.distill_alpha == 0 and cfg.replay_ratio == 0 and cfg.regression_suite is None


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"replay_ratio": 1.0, "replay_dataset": "g.jsonl"}, ["replay_ratio=1.0", "[0.0, 1.0)"]),
        ({"replay_ratio": -0.1, "replay_dataset": "g.jsonl"}, ["replay_ratio=-0.1", "[0.0, 1.0)"]),
        ({"ewc_lambda": -1.0}, ["ewc_lambda=-1.0", "[0.0, inf]"]),
        ({"distill_temperature": 0.0}, ["distill_temperature=0.0", "(0.0, inf]"]),
        ({"distill_divergence": "kl"}, ["distill_divergence='kl'", "forward_kl", "reverse_kl", "jsd"]),
        ({"consistency_policy": "loud"}, ["consistency_policy='loud'", "warn", "error", "off"]),
        ({"regression_action": "panic"}, ["regression_action='panic'", "rollback"]),
        ({"mismatch_lr_scale": 0.0}, ["mismatch_lr_scale=0.0", "(0.0, 1.0]"]),
        ({"ewc_fisher_samples": 0}, ["ewc_fisher_samples=0"]),
        ({"distill_alpha": float("nan")}, ["distill_alpha=nan", "must be a number"]),
        ({"ewc_lambda": "big"}, ["ewc_lambda='big'", "must be a number"]),
    ],
)
def test_bad_values_name_field_value_and_range(kwargs, fragments):
    with pytest.raises(ConfigError) as err:
        RetentionConfig(**kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_replay_distillation_needs_replay_and_offline_teacher_needs_a_path():
    with pytest.raises(ConfigError, match="replay_ratio"):
        RetentionConfig(distill_alpha=1.0, distill_on="replay")
    with pytest.raises(ConfigError, match="distill_teacher_path"):
        RetentionConfig(distill_alpha=1.0, distill_teacher="offline")


def test_replay_without_data_fails_when_the_trainer_is_built(tmp_path, tiny_model):
    """replay_ratio > 0 needs replay data: a replay_dataset, or a ready replay_buffer= passed to the trainer."""
    from transformers import TrainingArguments

    from hf_retain import RetentionTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(Exception, match="replay_dataset"):
        RetentionTrainer(model=tiny_model, args=args, retention=RetentionConfig(replay_ratio=0.3))


def test_recommended_mix_is_replay_plus_distillation_on_replayed_rows():
    cfg = RetentionConfig.recommended(replay_dataset="general.jsonl")
    assert cfg.replay_ratio == 0.3 and cfg.distill_alpha == 1.0 and cfg.distill_on == "replay"
    assert cfg.methods == ["distill[replay]", "replay[0.3 examples]"]
    assert RetentionConfig.recommended("g.jsonl", replay_ratio=0.5).replay_ratio == 0.5


def test_every_field_has_help():
    from dataclasses import fields

    for f in fields(RetentionConfig):
        assert f.metadata.get("help"), f"RetentionConfig.{f.name} has no help text"
