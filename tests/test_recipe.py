"""Recipes: parsed by TrlParser into four dataclasses; bad recipes fail before any model is loaded."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_retain.cli import main as cli_main
from hf_retain.data.loading import load_text_dataset
from hf_retain.errors import RecipeError
from hf_retain.models import resolve_model
from hf_retain.train import load_recipe

REPO = Path(__file__).resolve().parents[1]
# recipes/merge_*.yaml configure `hf-retain merge` (a merge config and its suite), not a training run.
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("merge_"))


def write(tmp_path, mapping, name="recipe.yaml"):
    mapping = {"use_cpu": True, **mapping}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    parsed = load_recipe(str(recipe))
    assert parsed.model.model_name_or_path
    assert parsed.data.dataset_name


def test_shipped_merge_recipes_are_valid():
    from hf_retain.evaluation.suite import check_suite_file
    from hf_retain.merging import load_merge_config

    config = load_merge_config(str(REPO / "recipes" / "merge_ties.yaml"))
    assert config.method == "ties" and len(config.models) == 2
    assert check_suite_file(REPO / "recipes" / "merge_suite.yaml")  # names its local data files


def test_quickstart_recipe_maps_keys_to_their_dataclasses():
    recipe = load_recipe(str(REPO / "recipes" / "quickstart.yaml"), ["--max_steps", "7"])
    assert recipe.model.model_name_or_path == "builtin:tiny-llama"
    assert recipe.data.dataset_name == "builtin:domain"
    assert recipe.training.max_steps == 7  # command-line override wins over the file
    assert recipe.retention.replay_ratio == 0.3 and recipe.retention.distill_on == "replay"


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, {"model_name_or_path": "builtin:tiny-llama", "replay_ration": 0.3})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "'replay_ration'" in message and path in message and "'replay_ratio'" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("learning_rate", "fast", "float"), ("max_steps", 1.5, "int"), ("replay_ratio", [0.3], "float"),
     ("use_peft", "yes", "bool")],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, key, value, expected):
    path = write(tmp_path, {"model_name_or_path": "builtin:tiny-llama", key: value})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert repr(key) in str(err.value) and expected in str(err.value) and path in str(err.value)


def test_invalid_retention_value_is_a_recipe_error(tmp_path):
    path = write(tmp_path, {"model_name_or_path": "builtin:tiny-llama", "ewc_lambda": -2.0})
    with pytest.raises(RecipeError, match=r"ewc_lambda=-2\.0"):
        load_recipe(path)


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: [unclosed", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid UTF-8 YAML"):
        load_recipe(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string", encoding="utf-8")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(str(scalar))


def test_model_and_dataset_paths_that_do_not_exist(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        resolve_model(str(tmp_path / "no-model"))
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(RecipeError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty-dir"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_text_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(RecipeError, match="builtin datasets"):
        load_text_dataset("builtin:poetry")


def test_offline_hub_id_not_in_cache_says_how_to_fix(monkeypatch, tmp_path):
    from trl import ModelConfig

    from hf_retain.models import load_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(RecipeError) as err:
        load_model(ModelConfig(model_name_or_path="someone/definitely-not-cached-model"))
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "hf download someone/definitely-not-cached-model" in message


def test_dataset_without_a_trainable_column(tmp_path):
    from trl import SFTConfig

    from hf_retain.train import _check_columns

    data = tmp_path / "rows.jsonl"
    data.write_text('{"body": "hello"}\n{"body": "world"}\n', encoding="utf-8")
    dataset = load_text_dataset(str(data))
    with pytest.raises(RecipeError) as err:
        _check_columns(dataset, SFTConfig(output_dir=str(tmp_path), use_cpu=True), str(data))
    assert "['body']" in str(err.value) and "dataset_text_field" in str(err.value)


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "demo"):
        assert command in out


def test_cli_dry_run_and_bad_recipe_exit_codes(tmp_path, capsys):
    assert cli_main(["train", str(REPO / "recipes" / "quickstart.yaml"), "--dry-run"]) == 0
    assert "is valid" in capsys.readouterr().out
    path = write(tmp_path, {"model_name_or_path": "builtin:tiny-llama", "lerning_rate": 1e-3})
    assert cli_main(["train", path, "--dry-run"]) == 2
    assert "'lerning_rate'" in capsys.readouterr().err


def test_module_entry_point_trains_and_saves(tmp_path):
    """`python -m hf_retain.train --config X` (what `accelerate launch -m` runs) trains and saves a model."""
    data = tmp_path / "domain.txt"
    data.write_text("\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(64)), encoding="utf-8")
    out = tmp_path / "out"
    path = write(tmp_path, {
        "model_name_or_path": "builtin:tiny-llama-init", "dataset_name": str(data), "output_dir": str(out),
        "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 32, "report_to": [], "use_cpu": True,
        "save_strategy": "no", "consistency_policy": "off",
    })
    proc = subprocess.run([sys.executable, "-m", "hf_retain.train", "--config", path], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_lora_distill_recipe_distils_toward_the_adapters_off_model(tmp_path):
    """recipes/sft_lora_distill.yaml: SFTTrainer wraps the model in LoRA, the teacher is that model with adapters
    disabled (no copy), and the distillation loss is logged, ~0 at the first step."""
    from hf_retain.train import run_recipe

    data = tmp_path / "domain.txt"
    data.write_text("\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(64)), encoding="utf-8")
    recipe = load_recipe(str(REPO / "recipes" / "sft_lora_distill.yaml"), [
        "--model_name_or_path", "builtin:tiny-llama-init", "--dataset_name", str(data), "--eval_strategy", "no",
        "--eval_dataset_name", "", "--output_dir", str(tmp_path / "out"), "--max_steps", "3", "--logging_steps", "1",
        "--save_strategy", "no", "--per_device_train_batch_size", "4", "--max_length", "32",
    ])
    trainer = run_recipe(recipe)
    assert trainer._distill_mode == "adapters" and trainer._distill_teacher is None
    logged = [row["distill_loss"] for row in trainer.state.log_history if "distill_loss" in row]
    assert len(logged) == 3 and logged[0] < 1e-6 < logged[-1]


def _dry_run(path, capsys) -> tuple[int, str]:
    code = cli_main(["train", path, "--dry-run"])
    captured = capsys.readouterr()
    return code, captured.err


BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "builtin:domain"}


def test_dry_run_catches_a_missing_regression_suite(tmp_path, capsys):
    missing = str(tmp_path / "no_suite.yaml")
    code, err = _dry_run(write(tmp_path, {**BASE, "regression_suite": missing}), capsys)
    assert code == 2 and "regression_suite" in err and missing in err and "Traceback" not in err


def test_dry_run_catches_a_missing_data_file_inside_the_suite(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("benchmarks:\n  general:\n    type: loss\n    data: general_heldout.jsonl\n", encoding="utf-8")
    code, err = _dry_run(write(tmp_path, {**BASE, "regression_suite": str(suite)}), capsys)
    assert code == 2 and "general_heldout.jsonl" in err and "does not exist" in err


@pytest.mark.parametrize("key", ["replay_dataset", "ewc_fisher_dataset", "dataset_name", "resume_from_checkpoint"])
def test_dry_run_catches_every_missing_local_file(tmp_path, capsys, key):
    missing = str(tmp_path / ("gone.jsonl" if key != "resume_from_checkpoint" else "checkpoint-7"))
    code, err = _dry_run(write(tmp_path, {**BASE, key: missing}), capsys)
    assert code == 2 and key in err and missing in err


def test_a_corrupt_suite_reaches_the_cli_as_a_clean_message(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("benchmarks: [unclosed\n", encoding="utf-8")
    code, err = _dry_run(write(tmp_path, {**BASE, "regression_suite": str(suite)}), capsys)
    assert code == 2 and err.startswith("error: ") and str(suite) in err and "Traceback" not in err


def test_resuming_from_a_missing_checkpoint_names_it(tmp_path, tiny_model):
    from datasets import Dataset
    from transformers import TrainingArguments

    from hf_retain import RetentionTrainer

    trainer = RetentionTrainer(model=tiny_model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]),
                               train_dataset=Dataset.from_dict({"input_ids": [[5, 6, 7]], "labels": [[5, 6, 7]]}))
    with pytest.raises(RecipeError, match=r"checkpoint-9.*is not a folder"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-9"))
