"""mix_datasets / CurriculumSchedule / CurriculumCallback / recipes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import Dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TRLCollator

from hf_retain import ConfigError, RetentionConfig
from hf_retain.callbacks.curriculum import CurriculumCallback, find_replay_collator
from hf_retain.replay import CurriculumSchedule, ReplayBuffer, ReplayCollator, ReplayColumnError, mix_datasets

REPO = Path(__file__).resolve().parents[1]


def corpora(n: int = 4000):
    domain = Dataset.from_dict({"text": ["d" * 30 for _ in range(n)]})
    general = Dataset.from_dict({"text": ["g" * 10 for _ in range(n)]})
    return domain, general


def test_mix_by_examples_and_tokens():
    domain, general = corpora()
    mixed = mix_datasets(domain, general, 0.3, seed=0)
    share = sum(t[0] == "g" for t in mixed["text"]) / len(mixed)
    assert abs(share - 0.3) < 0.02
    by_tokens = mix_datasets(domain, general, 0.3, seed=0, unit="tokens", stopping_strategy="all_exhausted")
    g_tokens = sum(len(t) for t in by_tokens["text"] if t[0] == "g")
    assert abs(g_tokens / sum(len(t) for t in by_tokens["text"]) - 0.3) < 0.02
    assert mix_datasets(domain, general, 0.0) is domain


def test_mix_streaming():
    domain, general = corpora(2000)
    mixed = mix_datasets(domain.to_iterable_dataset(), general.to_iterable_dataset(), 0.5, seed=1)
    texts = [row["text"] for row in mixed]
    assert abs(sum(t[0] == "g" for t in texts) / len(texts) - 0.5) < 0.03


def test_mix_errors_name_the_problem():
    domain, general = corpora(10)
    with pytest.raises(ReplayColumnError, match="'text'"):
        mix_datasets(domain, general.rename_column("text", "content"), 0.3)
    with pytest.raises(ReplayColumnError, match=r"'text'.*type"):
        mix_datasets(domain, Dataset.from_dict({"text": [1, 2]}), 0.3)
    with pytest.raises(ValueError, match="ratio"):
        mix_datasets(domain, general, 1.0)
    with pytest.raises(ValueError, match="stopping_strategy"):
        mix_datasets(domain, general, 0.3, stopping_strategy="never")


def test_curriculum_schedule_formats_and_boundaries():
    s = CurriculumSchedule([{"until": 0.3, "general": 0.8, "domain": 0.2}, {"until": 0.7, "replay_ratio": 0.5},
                            {"until": 1.0, "domain": 0.8}])
    assert [p.replay_ratio for p in s.phases] == pytest.approx([0.8, 0.5, 0.2])
    assert s.boundaries(100) == [30, 70]
    assert [s.ratio_at_step(k, 100) for k in (0, 29, 30, 69, 70, 100)] == pytest.approx([0.8, 0.8, 0.5, 0.5, 0.2, 0.2])


@pytest.mark.parametrize("phases, message", [
    ([], "non-empty"),
    ([{"until": 0.5, "replay_ratio": 0.3}], "end at 1.0"),
    ([{"until": 0.6, "replay_ratio": 0.3}, {"until": 0.5, "replay_ratio": 0.3}], "increasing"),
    ([{"until": 1.0, "replay_ratio": 1.0}], r"\[0, 1\)"),
    ([{"until": 1.0, "ratio": 0.2}], "unknown key"),
    ([{"replay_ratio": 0.2}], "needs 'until'"),
    ([{"until": 1.0, "general": 0.5, "domain": 0.4}], "add up to 1"),
    ([0.5], "mapping"),
])
def test_curriculum_validation(phases, message):
    with pytest.raises(ValueError, match=message):
        CurriculumSchedule(phases)
    with pytest.raises(ConfigError, match="curriculum"):
        RetentionConfig(curriculum=phases, replay_dataset="x.jsonl")


def test_callback_moves_the_collator_ratio():
    buffer = ReplayBuffer.from_dataset([{"input_ids": [3, 4]}], seed=0)
    collator = ReplayCollator(TRLCollator(pad_token_id=0), buffer, ratio=0.1, seed=0)
    loader = SimpleNamespace(collate_fn=SimpleNamespace(data_collator=collator))  # e.g. RemoveColumnsCollator
    assert find_replay_collator(loader) is collator
    cb = CurriculumCallback([{"until": 0.5, "replay_ratio": 0.6}, {"until": 1.0, "replay_ratio": 0.2}])
    state = SimpleNamespace(global_step=0, max_steps=10)
    cb.on_train_begin(None, state, None, train_dataloader=loader)
    assert collator.ratio == pytest.approx(0.6)
    for step, expected in ((4, 0.6), (5, 0.2), (10, 0.2)):
        state.global_step = step
        cb.on_step_end(None, state, None)
        assert collator.ratio == pytest.approx(expected)
    with pytest.raises(ValueError, match="no ReplayCollator"):
        CurriculumCallback([{"until": 1.0, "replay_ratio": 0.2}]).on_train_begin(
            None, state, None, train_dataloader=SimpleNamespace(collate_fn=TRLCollator(pad_token_id=0)))


def test_config_replay_rules():
    cfg = RetentionConfig(replay_ratio=0.3, distill_alpha=1.0, distill_on="replay")  # dataset may come as a buffer
    assert cfg.methods == ["distill[replay]", "replay[0.3 examples]"]
    assert RetentionConfig(curriculum=[{"until": 1.0, "replay_ratio": 0.2}], distill_alpha=1.0,
                           distill_on="replay").methods[-1] == "replay[curriculum examples]"
    with pytest.raises(ConfigError, match="replay_generate_tokens"):
        RetentionConfig(replay_generate_tokens=-1)


@pytest.mark.parametrize("recipe", ["sft_replay.yaml", "sft_replay_curriculum.yaml"])
def test_recipes_parse(recipe):
    from hf_retain.train import load_recipe

    parsed = load_recipe(str(REPO / "recipes" / recipe))
    assert parsed.retention.replay_dataset and parsed.retention.replay_capacity > 0
    if "curriculum" in recipe:
        schedule = CurriculumSchedule(parsed.retention.curriculum)
        assert parsed.training.lr_scheduler_type == "warmup_stable_decay"
        decay = parsed.training.lr_scheduler_kwargs["num_decay_steps"]
        # the domain-heavy (low replay) phase is the decay phase of the LR schedule
        assert schedule.boundaries(parsed.training.max_steps)[-1] == parsed.training.max_steps - decay
    else:
        assert parsed.retention.replay_ratio == pytest.approx(0.3)


def test_benchmark_smoke():
    import importlib.util

    spec = importlib.util.spec_from_file_location("replay_bench", REPO / "benchmarks" / "replay.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    throughput = bench.collator_throughput(rounds=1, batches=3, buffer_rows=100)
    steps = bench.step_time(rounds=1, steps=1, buffer_rows=100, layers=1)
    assert throughput["collate_time_ratio"] > 0 and throughput["replay_examples_per_s"] > 0
    assert steps["step_time_ratio"] > 0 and steps["base_step_s"] > 0
