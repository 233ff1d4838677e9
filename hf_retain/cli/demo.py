"""`hf-retain demo`: pretrain the embedded tiny model, fine-tune it plainly and with retention, print the report."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="offline demo on the embedded tiny model (a few minutes on 2 CPU cores)",
        description="Pretrain the embedded tiny model on standard-library prose, fine-tune it on standard-library "
                    "code plainly and with hf_retain's retention methods, and report forgetting and learning.",
    )
    parser.add_argument("--output", default="hf_retain_demo", help="folder for the report and runs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers not meaningful)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from hf_retain.demo import run_demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_demo(args.output, quick=args.quick)
    print()
    print(report.table())
    print(f"\nreport written to {args.output}/report.md, report.json and report.png")
    return 0
