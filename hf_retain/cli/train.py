"""`hf-retain train RECIPE [--dry-run] [--key value ...]`: run a recipe in this process (the same path as
`python -m hf_retain.train --config RECIPE` under `accelerate launch`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train from a recipe YAML",
        description="Train from a recipe YAML: keys of trl.ModelConfig, DataArguments, trl.SFTConfig and "
                    "hf_retain.RetentionConfig. Extra `--key value` pairs override the file.",
    )
    parser.add_argument("recipe", help="path of the recipe YAML (e.g. recipes/quickstart.yaml)")
    parser.add_argument("--dry-run", action="store_true",
                        help="parse and validate the recipe, print the settings, load no model or data")
    parser.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from hf_retain.distributed import end_distributed
    from hf_retain.train import check_recipe_files, load_recipe, run_recipe

    recipe = load_recipe(args.recipe, list(getattr(args, "overrides", None) or []))
    if args.dry_run:
        check_recipe_files(recipe)
        print(f"recipe {args.recipe} is valid")
        print(f"  model:     {recipe.model.model_name_or_path} (peft: {recipe.model.use_peft})")
        print(f"  data:      {recipe.data.dataset_name} -> eval {recipe.data.eval_dataset_name}")
        print(f"  training:  max_steps={recipe.training.max_steps} lr={recipe.training.learning_rate} "
              f"optim={recipe.training.optim} output_dir={recipe.training.output_dir}")
        print(f"  retention: {', '.join(recipe.retention.methods) or 'none (plain fine-tuning)'}")
        return 0
    run_recipe(recipe)
    end_distributed()
    return 0
