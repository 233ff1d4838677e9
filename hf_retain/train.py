"""The recipe runner: one YAML -> model, tokenizer, data, trainer -> train -> save.

A recipe is one flat YAML mapping whose keys are fields of four dataclasses, parsed with TRL's `TrlParser` exactly
as TRL's own scripts do: TRL's `ModelConfig` (model and LoRA), `DataArguments` (datasets), TRL's `SFTConfig`
(training) and `RetentionConfig` (everything hf_retain adds). Run it with any launcher:

    python -m hf_retain.train --config recipes/quickstart.yaml
    accelerate launch -m hf_retain.train --config recipes/sft_replay.yaml
    hf-retain train recipes/quickstart.yaml [--dry-run] [--max_steps 10 ...]

Before any model is loaded, `load_recipe` rejects an unknown key or a value of the wrong type, naming the key and
the file. Model and dataset names may be hub ids, local paths, or ``builtin:`` names (`resolve_model`,
`load_text_dataset`), which need no network.

Example:
    >>> from hf_retain.train import load_recipe
    >>> recipe = load_recipe("recipes/quickstart.yaml")          # doctest: +SKIP
    >>> recipe.retention.replay_ratio                            # doctest: +SKIP
    0.3
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_retain.config import RetentionConfig
from hf_retain.constants import BUILTIN_PREFIX
from hf_retain.data.loading import DATA_FILE_SUFFIXES, load_text_dataset
from hf_retain.distributed import end_distributed
from hf_retain.errors import RecipeError, RetentionError
from hf_retain.evaluation.suite import check_suite_file
from hf_retain.hub import looks_like_path
from hf_retain.models import load_model, load_tokenizer
from hf_retain.trainer import build_trainer

logger = logging.getLogger(__name__)

__all__ = ["DataArguments", "Recipe", "check_recipe_files", "load_recipe", "main", "recipe_local_files", "run_recipe",
           "save_final_model"]

# Suffixes of the local files a recipe may name: data files and suite YAMLs.
_LOCAL_SUFFIXES = (*DATA_FILE_SUFFIXES, ".yaml", ".yml")
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; refuse anything larger than 1 MiB unread




@dataclass
class DataArguments:
    """Which data to train and evaluate on (TRL's `ScriptArguments` fields, plus local-file friendly ones)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Training data: a hub id, a local folder (saved Dataset or data files), a .txt/.json/.jsonl/"
                          ".csv/.parquet file, or 'builtin:general' / 'builtin:domain' (offline stdlib corpora)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Evaluation data (same forms as dataset_name); None: no evaluation set."}
    )
    dataset_test_split: str = field(default="eval", metadata={"help": "Split of eval_dataset_name to evaluate on."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation rows."})
    tasks: list[Any] | None = field(
        default=None,
        metadata={"help": "For `hf-retain compare`: the sequence of fine-tuning tasks, one per round; each a dataset "
                          "name or a mapping {name, dataset_name, eval_dataset_name, train_split, eval_split}."},
    )
    general_eval_dataset: str | None = field(
        default=None,
        metadata={"help": "General held-out data whose loss measures forgetting (compare, bench), e.g. "
                          "builtin:general."},
    )
    general_eval_split: str = field(default="eval", metadata={"help": "Split of general_eval_dataset."})


@dataclass
class Recipe:
    """A parsed, validated recipe: what `run_recipe` needs, nothing loaded yet."""

    model: Any  # trl.ModelConfig
    data: DataArguments
    training: Any  # trl.SFTConfig
    retention: RetentionConfig
    path: str | None = None


def _dataclass_types() -> tuple[type, ...]:
    from trl import ModelConfig, SFTConfig

    return (ModelConfig, DataArguments, SFTConfig, RetentionConfig)


# ---- validation ------------------------------------------------------------------------------------------------
def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a dataclass field's type hint; hints we cannot judge accept anything."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {m.value for m in hint} or value in hint.__members__
    return True


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _validate_keys(config: dict[str, Any], path: str) -> None:
    known: dict[str, tuple[type, Any]] = {}
    for cls in _dataclass_types():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                known.setdefault(f.name, (cls, hints.get(f.name, Any)))
    for key, value in config.items():
        if key == "env":
            continue
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(
                f"Unknown key {key!r} in recipe {path}.{hint} Recipe keys are fields of trl.ModelConfig, "
                "hf_retain.train.DataArguments, trl.SFTConfig and hf_retain.RetentionConfig; "
                "`hf-retain train --help` lists them."
            )
        owner, hint = known[key]
        if not _type_ok(value, hint):
            raise RecipeError(
                f"Key {key!r} in recipe {path} has value {value!r} of type {type(value).__name__}, but "
                f"{owner.__name__}.{key} expects {_describe(hint)}. Fix the value in the YAML."
            )


def _read_recipe_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"Recipe file {path} does not exist. Pass the path of a YAML recipe, e.g. "
                          "recipes/quickstart.yaml in the hf_retain repository.")
    if file.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"Recipe file {path} is larger than {MAX_RECIPE_BYTES} bytes; a recipe is a short YAML "
                          "mapping of settings. Check that you passed the right file.")
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"Recipe file {path} is not valid UTF-8 YAML: {err}. Fix the syntax and retry.") from err
    if not isinstance(config, dict):
        raise RecipeError(f"Recipe file {path} must hold a YAML mapping of key: value settings, got "
                          f"{type(config).__name__}.")
    return config


def load_recipe(path: str, overrides: Sequence[str] = ()) -> Recipe:
    """Parse and validate a recipe (no model or data is loaded). ``overrides`` are ``--key value`` pairs that win
    over the file, as on the command line."""
    from trl import TrlParser

    config = _read_recipe_yaml(path)
    _validate_keys(config, path)
    parser = TrlParser(_dataclass_types())
    try:
        model_args, data_args, training_args, retention = parser.parse_args_and_config(
            ["--config", path, *overrides]
        )
    except ValueError as err:  # RetentionConfig's ConfigError, or TrainingArguments' own checks
        raise RecipeError(f"Recipe {path}: {err}") from err
    except SystemExit as err:  # argparse reports a bad override and exits; keep the process alive for callers
        raise RecipeError(f"Recipe {path}: could not parse the command-line overrides {list(overrides)}.") from err
    return Recipe(model=model_args, data=data_args, training=training_args, retention=retention, path=path)


# ---- data checks -----------------------------------------------------------------------------------------------
def _check_columns(dataset: Any, training: Any, name: str) -> None:
    columns = set(dataset.column_names)
    usable = {training.dataset_text_field, "messages", "prompt", "input_ids"}
    if not columns & usable:
        raise RecipeError(
            f"Dataset {name} has columns {sorted(columns)}, none of which SFT can train on: it needs the text column "
            f"named by dataset_text_field (now {training.dataset_text_field!r}), or 'messages', or 'prompt'/"
            "'completion', or pre-tokenised 'input_ids'. Set dataset_text_field to your text column."
        )


def recipe_local_files(recipe: Recipe) -> dict[str, str]:
    """``{recipe key: path}`` for every local file or folder the recipe names (hub ids and builtins excluded)."""
    data, retention, training = recipe.data, recipe.retention, recipe.training
    named: dict[str, Any] = {
        "model_name_or_path": recipe.model.model_name_or_path, "dataset_name": data.dataset_name,
        "eval_dataset_name": data.eval_dataset_name, "general_eval_dataset": data.general_eval_dataset,
        "replay_dataset": retention.replay_dataset, "ewc_fisher": retention.ewc_fisher,
        "ewc_fisher_dataset": retention.ewc_fisher_dataset, "distill_teacher_path": retention.distill_teacher_path,
        "regression_suite": retention.regression_suite,
    }
    if isinstance(training.resume_from_checkpoint, str) and training.resume_from_checkpoint not in ("True", "False"):
        named["resume_from_checkpoint"] = training.resume_from_checkpoint
    for i, task in enumerate(data.tasks or []):
        task = task if isinstance(task, dict) else {"dataset_name": task}
        for key in ("dataset_name", "eval_dataset_name"):
            named[f"tasks[{i}].{key}"] = task.get(key)
    return {key: value for key, value in named.items() if isinstance(value, str) and value
            and not value.startswith(BUILTIN_PREFIX)
            and (looks_like_path(value, _LOCAL_SUFFIXES) or Path(value).expanduser().exists())}


def check_recipe_files(recipe: Recipe) -> None:
    """Raise `RecipeError` naming the first local file the recipe names that does not exist, and the suite files
    of ``regression_suite`` (so `--dry-run` catches a typo before any model is loaded)."""
    for key, value in recipe_local_files(recipe).items():
        if not Path(value).expanduser().exists():
            raise RecipeError(f"Recipe {recipe.path}: {key}={value!r} does not exist (relative paths are resolved from "
                              f"{Path.cwd()}). Fix the path, or use a hub id or a builtin: name.")
    suite = recipe.retention.regression_suite
    if suite:
        for data_file in check_suite_file(suite):
            if not data_file.exists():
                raise RecipeError(f"Recipe {recipe.path}: regression_suite {suite} names the data file {data_file}, "
                                  "which does not exist. Fix the path in the suite YAML (relative paths are resolved "
                                  "from the suite's folder).")


# ---- running -----------------------------------------------------------------------------------------------------
def run_recipe(recipe: Recipe, *, callbacks: Sequence[Any] = (), model: Any = None) -> Any:
    """Load everything a recipe names, train, save; returns the trainer (its model is the trained model)."""
    from trl import get_peft_config

    check_recipe_files(recipe)
    data, training = recipe.data, recipe.training
    if not data.dataset_name:
        raise RecipeError(f"Recipe {recipe.path} sets no dataset_name. Add e.g. `dataset_name: builtin:domain`.")
    train_dataset = load_text_dataset(data.dataset_name, data.dataset_train_split, data.dataset_config,
                                      max_samples=data.max_train_samples)
    _check_columns(train_dataset, training, data.dataset_name)
    eval_dataset = None
    if data.eval_dataset_name:
        eval_dataset = load_text_dataset(data.eval_dataset_name, data.dataset_test_split, data.dataset_config,
                                         max_samples=data.max_eval_samples)
        _check_columns(eval_dataset, training, data.eval_dataset_name)
    tokenizer = load_tokenizer(recipe.model.model_name_or_path)
    if model is None:
        model = load_model(recipe.model)
    trainer = build_trainer(
        model, training, retention=recipe.retention, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer, callbacks=list(callbacks), peft_config=get_peft_config(recipe.model),
    )
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    save_final_model(trainer, training.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training.output_dir)
    return trainer


def save_final_model(trainer: Any, output_dir: str) -> None:
    """Save loadable weights at the end of a run, whatever the back-end.

    Under ZeRO-3, `Trainer.save_model` writes only a DeepSpeed checkpoint unless the DeepSpeed config asks to gather
    weights on save; a recipe's output must load with `from_pretrained`, so we ask for the gather here.
    """
    engine = getattr(trainer, "deepspeed", None) if trainer.is_deepspeed_enabled else None
    if engine is not None and engine.zero_optimization_stage() == 3:
        # DeepSpeed reads this flag from its parsed config (engine.zero_gather_16bit_weights_on_model_save()).
        engine._config.zero_config.gather_16bit_weights_on_model_save = True
    trainer.save_model(output_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hf_retain.train --config RECIPE [--key value ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        print("usage: python -m hf_retain.train --config RECIPE.yaml [--key value ...]", file=sys.stderr)
        return 2
    index = args.index("--config")
    path = args[index + 1]
    overrides = args[:index] + args[index + 2:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        recipe = load_recipe(path, overrides)
        run_recipe(recipe)
        end_distributed()
    except RetentionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
