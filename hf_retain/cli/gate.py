"""`hf-retain gate`: fail CI when a candidate model forgets.

    hf-retain gate --baseline MODEL_A --candidate MODEL_B --suite suite.yaml --max-regression 0.02 [--report DIR]

Evaluates both models on the suite, prints a table, writes ``gate.json`` and ``gate.md`` into ``--report`` and exits
0 when every benchmark stayed within its bound, 1 when any regressed past it (a NaN score or a failing benchmark
counts as a regression), 2 when it cannot evaluate (usage error, missing or bad suite file, corrupt scores JSON,
a model that does not load). ``--baseline`` (or ``--candidate``) may be a scores JSON written by an earlier run
(``gate.json`` or `SuiteResult.save`), so CI evaluates only the candidate.

The decision itself is `hf_retain.evaluation.gate.run_gate`, which the pytest plugin uses too.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["register", "run"]


def _threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not name or not number >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must look like NAME=BOUND with BOUND >= 0, e.g. general_loss=0.05")
    return name, number


def _bound(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gate", help="fail (exit 1) when a candidate model regresses on a benchmark suite",
        description="Evaluate a baseline and a candidate model on a suite YAML and exit 1 when any benchmark "
                    "regressed past its bound, 0 otherwise, 2 when it cannot evaluate (usage error, missing or bad "
                    "suite, corrupt scores JSON, a model that does not load).",
    )
    parser.add_argument("--baseline", required=True,
                        help="baseline model (hub id, folder, builtin:...) or a scores JSON from an earlier gate run")
    parser.add_argument("--candidate", required=True,
                        help="candidate model (hub id, folder, builtin:...) or a scores JSON of the candidate")
    parser.add_argument("--suite", required=True, help="suite YAML (see hf_retain.RetentionSuite.from_config)")
    parser.add_argument("--max-regression", type=_bound, default=0.02,
                        help="largest allowed regression per benchmark (default 0.02 = 2%% of the baseline)")
    parser.add_argument("--absolute", action="store_true",
                        help="measure regression in score units instead of relative to the baseline")
    parser.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="NAME=BOUND",
                        help="per-benchmark bound overriding --max-regression (repeatable)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for both models (default: each model's own)")
    parser.add_argument("--report", default=None, metavar="DIR", help="write gate.json and gate.md into DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when the candidate passed, 1 when it regressed. An input the gate cannot evaluate raises a `RetentionError`
    (`SuiteError`, `ModelLoadError`), which `hf_retain.cli.main` prints as one paragraph with exit code 2: a broken
    input is never reported as a regression."""
    from hf_retain.evaluation.gate import run_gate

    report = run_gate(args.baseline, args.candidate, args.suite, max_regression=args.max_regression,
                      relative=not args.absolute, per_benchmark_thresholds=dict(args.threshold),
                      tokenizer=args.tokenizer, report_dir=args.report)
    print(report.table())
    for check in report.failures:
        print(f"  - {check.message}")
    if args.report:
        print(f"report written to {Path(args.report) / 'gate.json'} and gate.md")
    return report.exit_code
