"""`hf-retain bench`: the retention benchmark (pretraining optimizer x fine-tuning optimizer x method)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="retention benchmark: forgetting vs learning per optimizer pair and method",
        description="Pretrain the tiny model on general text with each pretraining optimizer, fine-tune it on "
                    "domain text with each fine-tuning optimizer and method, and report forgetting (general loss "
                    "increase), learning (domain loss decrease), ratios to plain fine-tuning and the Pareto front.",
    )
    parser.add_argument("--output", default="bench_out", help="folder for report.json, report.md and plots")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (well under a minute)")
    parser.add_argument("--general-text", help="general corpus: a .txt (one example per line) or .jsonl file")
    parser.add_argument("--domain-text", help="domain corpus: a .txt (one example per line) or .jsonl file")
    parser.add_argument("--general-dataset", help="general corpus as a datasets name or folder (column 'text')")
    parser.add_argument("--domain-dataset", help="domain corpus as a datasets name or folder (column 'text')")
    parser.add_argument("--pretrain-steps", type=int)
    parser.add_argument("--finetune-steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--pretrain-optimizers", nargs="+", metavar="OPT", help="default: adamw muon")
    parser.add_argument("--finetune-optimizers", nargs="+", metavar="OPT", help="default: adamw muon")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="default: plain ewc l2sp distill replay replay+distill")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from hf_retain.bench import run_retention_benchmark, settings_from_args

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.general_text and args.general_dataset) or (args.domain_text and args.domain_dataset):
        print("error: give each corpus once: --general-text or --general-dataset, --domain-text or --domain-dataset")
        return 2
    report = run_retention_benchmark(
        args.output, settings_from_args(args),
        general_train=args.general_text or args.general_dataset, domain_train=args.domain_text or args.domain_dataset,
    )
    print()
    print(report.table())
    for key in [k for k in report.meta if k.startswith("pareto front")] + ["vs plain (same P and F)"]:
        print(f"\n{key}: {report.meta[key]}")
    print(f"\nreport written to {args.output}/report.md, report.json and report.png")
    return 0
