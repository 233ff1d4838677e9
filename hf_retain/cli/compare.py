"""`hf-retain compare`: side-by-side fine-tunes over rounds (see `hf_retain.compare`)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="side-by-side fine-tunes (optimizers, methods) over rounds, with a report",
        description="Run every arm on the recipe's tasks with identical data order, seeds and schedule; after each "
                    "round evaluate every arm on every task and on the general data. Arms: optimizer[+method[=v]]..., "
                    "e.g. adamw muon adamw+ewc adamw+replay=0.5+distill adamw+lr=3e-4.",
    )
    parser.add_argument("recipe", nargs="?", help="recipe YAML (with tasks and general_eval_dataset)")
    parser.add_argument("--arms", nargs="+", default=[], help="arm specs")
    parser.add_argument("--rounds", type=int, help="rounds to run (default: every task in the recipe)")
    parser.add_argument("--output", default="compare_out", help="folder for report.md, report.json and plots")
    parser.add_argument("--arm-only", metavar="ARM", help="run only this arm and write arm-<name>.json (merge later)")
    parser.add_argument("--merge", nargs="+", metavar="ARM_JSON",
                        help="merge arm-*.json files from separate --arm-only runs into one report")
    parser.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    import logging

    from hf_retain.compare import ArmSpecError, merge_arm_files, run_comparison
    from hf_retain.errors import RecipeError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.merge:
            comparison = merge_arm_files(args.merge, args.output)
        else:
            if not args.recipe or not (args.arms or args.arm_only):
                print("error: give a recipe and --arms (or --arm-only), or --merge ARM_JSON...", file=sys.stderr)
                return 2
            arms = [args.arm_only] if args.arm_only else args.arms
            comparison = run_comparison(args.recipe, arms, rounds=args.rounds, output_dir=args.output,
                                        overrides=list(args.overrides or []))
    except (ArmSpecError, RecipeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(comparison.to_markdown())
    return 0
